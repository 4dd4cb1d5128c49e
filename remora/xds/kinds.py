"""Kind names as people type them: `vs`, `VirtualServices`, `virtualservice` -> VirtualService.

The REST API and the CLI accept the same spellings kubectl accepts for Istio's kinds
(singular, plural, short name, any case), so `remora get vs` works like `kubectl get vs`.
"""
from __future__ import annotations

from remora.config.kinds import STORED_KINDS

SHORT_NAMES: dict[str, str] = {
    "ServiceEntry": "se",
    "WorkloadEntry": "we",
    "VirtualService": "vs",
    "DestinationRule": "dr",
    "Telemetry": "telemetry",
    "PeerAuthentication": "pa",
    "AuthorizationPolicy": "ap",
    "RequestAuthentication": "ra",
    "Gateway": "gw",
    "Sidecar": "sidecar",
    "Service": "svc",   # Kubernetes core/v1
}

_SPELLINGS: dict[str, str] = {}
for _kind in STORED_KINDS:
    # ServiceEntry -> ServiceEntries, Telemetry -> Telemetries
    plural = _kind[:-1] + "ies" if _kind.endswith("y") and _kind[-2] not in "aeiou" else _kind + ("es" if _kind.endswith("s") else "s")
    for _spelling in (_kind, plural, SHORT_NAMES[_kind]):
        _SPELLINGS[_spelling.lower()] = _kind


class UnknownKind(ValueError):
    """A kind name that is none of the supported kinds' spellings."""


def resolve_kind(text: str) -> str:
    """The canonical kind for a spelling; raise UnknownKind listing what is accepted."""
    kind = _SPELLINGS.get(text.strip().lower())
    if kind is None:
        accepted = ", ".join(f"{k} ({SHORT_NAMES[k]})" for k in STORED_KINDS)
        shown = repr(text) if len(text) <= 40 else f"{text[:40]!r}... ({len(text)} characters)"
        raise UnknownKind(f"unknown kind {shown}: use one of {accepted}, singular or plural, any case")
    return kind
