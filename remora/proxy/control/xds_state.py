"""What a sidecar holds from the control stream, per resource type, and the ACK/NACK rule.

Rules this module keeps (no I/O here; the stream and the disk live elsewhere):

- Per type (clusters, endpoints, routes, policies) the sidecar holds the last *accepted* resources
  and their version. A push replaces its type as a whole (state of the world).
- A push is accepted only if the whole config it leads to builds: the held resources of
  the OTHER types plus the pushed ones, validated by the same loader as YAML files, with
  lenient references (a route may name a host whose cluster arrives in the next push).
- Accepted: the new resources and version are held; the answer is an ACK (the pushed
  version, the push's nonce). Refused: nothing held changes; the answer is a NACK (the
  version still held, the push's nonce, error_detail = why).
- The sidecar serves once every type has been accepted at least once (Envoy's initial
  fetch), or from the start when its resources came from a disk snapshot.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from remora.config.loader import build_mesh_config
from remora.config.model import MeshConfig
from remora.wire import protocol

Document = tuple[dict, str]      # (Istio document, source) as build_mesh_config takes them

FROM_CONTROL = "control"
FROM_DISK = "disk snapshot"


class PushRejected(ValueError):
    """A push that cannot be held as it is (before any config is built from it)."""


@dataclass
class HeldType:
    """One resource type: what is held and the last exchange about it."""

    version: str = ""                     # "" until something was accepted
    resources: list[dict] = field(default_factory=list)
    origin: str | None = None             # FROM_CONTROL / FROM_DISK once held
    store_revision: int = 0               # the pushing replica's store revision (replicas over etcd)
    last_nonce: str = ""
    last_ack_at: float | None = None
    last_nack_at: float | None = None
    last_error: str | None = None

    def status(self) -> dict[str, Any]:
        """The operator's view of this type (admin /config_dump)."""
        return {"version": self.version, "resources": len(self.resources), "origin": self.origin,
                "last_nonce": self.last_nonce, "last_ack": _iso(self.last_ack_at),
                "last_nack": _iso(self.last_nack_at), "last_error": self.last_error}


@dataclass
class Candidate:
    """A push turned into the whole config it would lead to, not yet held."""

    type_url: str
    version: str
    nonce: str
    resources: list[dict]
    config: MeshConfig
    documents: list[Document]
    store_revision: int = 0


class XdsState:
    """The per-type resources a sidecar holds, and the rule that decides ACK or NACK."""

    def __init__(self) -> None:
        self.types: dict[str, HeldType] = {t: HeldType() for t in protocol.TYPE_ORDER}

    # -- building ---------------------------------------------------------------------------
    def documents(self, replacing: tuple[str, str, list[dict]] | None = None) -> list[Document]:
        """Every held document with its source ("xds:<type>@<version>"), in TYPE_ORDER;
        `replacing=(type, version, resources)` puts a pushed type in place of the held one."""
        docs: list[Document] = []
        for type_url, held in self.types.items():
            version, resources = held.version, held.resources
            if replacing is not None and replacing[0] == type_url:
                version, resources = replacing[1], replacing[2]
            source = f"xds:{type_url}@{version}"
            docs.extend((resource, source) for resource in resources)
        return docs

    def candidate(self, response: protocol.DiscoveryResponse) -> Candidate:
        """Build the config a push leads to; raise PushRejected or ConfigError if it cannot be."""
        if response.type_url not in self.types:
            raise PushRejected(f"unknown resource type {response.type_url!r} "
                               f"(this sidecar subscribes to {', '.join(protocol.TYPE_ORDER)})")
        check_kinds(response.type_url, response.resources)
        docs = self.documents((response.type_url, response.version_info, response.resources))
        config = build_mesh_config(docs, strict_references=False)
        return Candidate(response.type_url, response.version_info, response.nonce,
                         response.resources, config, docs, response.store_revision)

    def build(self) -> MeshConfig:
        """The config of everything held (at boot from a disk snapshot)."""
        return build_mesh_config(self.documents(), strict_references=False)

    # -- deciding -----------------------------------------------------------------------------
    def accept(self, candidate: Candidate, now: float | None = None) -> protocol.DiscoveryRequest:
        """Hold the candidate's resources; return the ACK."""
        held = self.types[candidate.type_url]
        held.version, held.resources, held.origin = candidate.version, candidate.resources, FROM_CONTROL
        held.store_revision = candidate.store_revision
        held.last_nonce = candidate.nonce
        held.last_ack_at = time.time() if now is None else now
        held.last_error = None
        return protocol.DiscoveryRequest(type_url=candidate.type_url, version_info=candidate.version,
                                         response_nonce=candidate.nonce)

    def accept_unchanged(self, response: protocol.DiscoveryResponse, now: float | None = None
                         ) -> protocol.DiscoveryRequest:
        """ACK a push of the version already held (same content: the version is its hash)."""
        held = self.types[response.type_url]
        held.origin = FROM_CONTROL
        held.last_nonce = response.nonce
        held.last_ack_at = time.time() if now is None else now
        held.last_error = None
        return protocol.DiscoveryRequest(type_url=response.type_url, version_info=held.version,
                                         response_nonce=response.nonce)

    def older_than_held(self, response: protocol.DiscoveryResponse) -> str | None:
        """Why a push is older than what is held (a replica behind the one this came from), or None."""
        held = self.types.get(response.type_url)
        if held is None or not response.store_revision or response.store_revision >= held.store_revision:
            return None
        return (f"older than the config held: store revision {response.store_revision} < {held.store_revision} "
                "(this replica is behind; it pushes again once it has caught up)")

    def reject(self, response: protocol.DiscoveryResponse, error: str,
               now: float | None = None) -> protocol.DiscoveryRequest:
        """Keep what is held; return the NACK (the version still held, and why)."""
        held = self.types.get(response.type_url)
        version = ""
        if held is not None:
            held.last_nonce = response.nonce
            held.last_nack_at = time.time() if now is None else now
            held.last_error = error
            version = held.version
        return protocol.DiscoveryRequest(type_url=response.type_url, version_info=version,
                                         response_nonce=response.nonce, error_detail=error)

    def subscriptions(self) -> list[protocol.DiscoveryRequest]:
        """One request per type, with the version held ("" if none): sent on (re)connect."""
        return [protocol.DiscoveryRequest(type_url=t, version_info=self.types[t].version)
                for t in protocol.TYPE_ORDER]

    @property
    def complete(self) -> bool:
        """Every type has been accepted (or restored) at least once: safe to serve."""
        return all(held.origin is not None for held in self.types.values())

    def versions_text(self) -> str:
        """`clusters@v1 endpoints@v1 routes@-` for one-line logs."""
        return " ".join(f"{t}@{h.version or '-'}" for t, h in self.types.items())

    # -- disk snapshot -----------------------------------------------------------------------
    def to_snapshot(self) -> dict[str, Any]:
        """The held resources and versions, as written to disk."""
        return {t: {"version": h.version, "resources": h.resources}
                for t, h in self.types.items() if h.origin is not None}

    def restore(self, snapshot: dict[str, Any], where: str) -> None:
        """Hold a snapshot read from disk; raise ValueError naming what is malformed."""
        if not isinstance(snapshot, dict):
            raise ValueError(f"{where}: expected a mapping of resource types")
        restored: dict[str, HeldType] = {}
        for type_url, entry in snapshot.items():
            if type_url not in self.types:
                raise ValueError(f"{where}: unknown resource type {type_url!r}")
            if not isinstance(entry, dict) or not isinstance(entry.get("version"), str) \
                    or not isinstance(entry.get("resources"), list):
                raise ValueError(f"{where}: {type_url}: expected {{version: str, resources: list}}")
            check_kinds(type_url, entry["resources"])
            restored[type_url] = HeldType(entry["version"], entry["resources"], FROM_DISK)
        self.types.update(restored)


def check_kinds(type_url: str, resources: list) -> None:
    """Every resource of a type must be one of that type's kinds (a ServiceEntry is not a route)."""
    allowed = protocol.TYPE_KINDS[type_url]
    for index, resource in enumerate(resources):
        kind = resource.get("kind") if isinstance(resource, dict) else None
        if kind not in allowed:
            shown = repr(kind) if kind is not None else f"a {type(resource).__name__} without kind"
            raise PushRejected(f"{type_url} resource {index}: {shown} does not belong to "
                               f"{type_url} (expected {' or '.join(allowed)})")


def _iso(stamp: float | None) -> str | None:
    return None if stamp is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
