"""Kubernetes object names: what `metadata.name` and `metadata.namespace` may be.

Rules (Kubernetes' apimachinery validation, which the API server applies to Istio's CRDs):
- metadata.name of every Istio kind is a DNS-1123 subdomain: at most 253 characters,
  lowercase alphanumerics, '-' and '.', starting and ending with an alphanumeric.
- metadata.namespace is a DNS-1123 label: at most 63 characters, lowercase alphanumerics
  and '-', starting and ending with an alphanumeric (so never '/', '.' or '..').

The control server keys resources by `Kind/namespace/name` and persists them; these rules
are what keeps `a/b`, `../../etc/passwd` or a 10,000-character name out of that key space.
Messages copy Kubernetes' wording and never echo more than a short prefix of the value.
"""
from __future__ import annotations

import re

SUBDOMAIN_MAX = 253
LABEL_MAX = 63
_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_LABEL_RE = re.compile(_LABEL)
_SUBDOMAIN_RE = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_SHOWN = 40   # characters of a bad value quoted in a message


def shown(value: str) -> str:
    """The value quoted for a message, cut to a short prefix (a name can be 10,000 characters)."""
    if len(value) <= _SHOWN:
        return repr(value)
    return f"{value[:_SHOWN]!r}... ({len(value)} characters)"


def subdomain_problem(value: str) -> str | None:
    """Why `value` is not a DNS-1123 subdomain (metadata.name), or None if it is one."""
    if len(value) > SUBDOMAIN_MAX:
        return f"{shown(value)}: must be no more than {SUBDOMAIN_MAX} characters"
    if not _SUBDOMAIN_RE.fullmatch(value):
        return (f"{shown(value)}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric character "
                "(e.g. 'example.com')")
    return None


def label_problem(value: str) -> str | None:
    """Why `value` is not a DNS-1123 label (metadata.namespace), or None if it is one."""
    if len(value) > LABEL_MAX:
        return f"{shown(value)}: must be no more than {LABEL_MAX} characters"
    if not _LABEL_RE.fullmatch(value):
        return (f"{shown(value)}: a lowercase RFC 1123 label must consist of lower case alphanumeric "
                "characters or '-', and must start and end with an alphanumeric character "
                "(e.g. 'my-name', or '123-abc')")
    return None


def identity_problems(namespace: str, name: str) -> list[tuple[str, str]]:
    """(field path, message) for each part of an object's identity that Kubernetes would refuse."""
    problems = []
    if (message := label_problem(namespace)) is not None:
        problems.append(("metadata.namespace", message))
    if (message := subdomain_problem(name)) is not None:
        problems.append(("metadata.name", message))
    return problems


def shown_part(value: str, limit: int = SUBDOMAIN_MAX) -> str:
    """A namespace (limit 63) or name as printed in `Kind/namespace/name`: quoted and cut when it
    is too long or holds '/', so that the reference stays readable and unambiguous."""
    return shown(value) if len(value) > limit or "/" in value else value


def shown_ref(kind: str, namespace: str, name: str) -> str:
    """`Kind/namespace/name` for a message (see shown_part)."""
    return f"{kind}/{shown_part(namespace, LABEL_MAX)}/{shown_part(name)}"
