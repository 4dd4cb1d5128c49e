"""Metadata exchange between sidecars: who is on the other side of a request.

Istio's sidecars tell each other who they are in `x-envoy-peer-metadata` headers, so that
both ends can label their metrics with the other side's workload. Remora does the same
with one header, `x-remora-peer-metadata`:

- The outbound sidecar adds its own metadata to requests for in-mesh services only
  (ServiceEntry `location: MESH_INTERNAL`); a MESH_EXTERNAL host never sees it.
- The inbound sidecar reads and strips it (the app never sees it), labels its
  `reporter="destination"` metrics with those `source_*` values, and answers with its own
  metadata on the response, which the outbound sidecar reads and strips in turn to fill
  `destination_*`. A request that came without the header gets none back.
- The value is `namespace=..,workload=..,app=..,version=..,service_account=..` with each
  value percent-encoded; unknown keys are ignored, so a newer peer can add some. Values
  longer than 253 bytes or not printable ASCII make the whole header count as absent.
- Nothing in it is trusted for security: principals come from mTLS peer certificates
  only (until mTLS exists they are "unknown"), never from this header.
- Cardinality is bounded: each worker remembers at most MAX_PEERS distinct header values;
  past that, new values are reported as an unknown peer instead of creating new series.
"""
from __future__ import annotations

from urllib.parse import quote, unquote_to_bytes

from remora.proxy.security.identity import UNKNOWN, WorkloadIdentity

HEADER = b"x-remora-peer-metadata"
MAX_PEERS = 1024          # distinct header values remembered per worker
MAX_VALUE = 253           # longest accepted value (a DNS name's limit)
_KEYS = ("namespace", "workload", "app", "version", "service_account")


class PeerMetadata:
    """The other side of a request, as its sidecar describes itself (or unknown).

    Instances are interned per worker (PeerCache), so metric series can key on identity.
    """

    __slots__ = ("namespace", "workload", "app", "version", "service_account")

    def __init__(self, namespace: str = UNKNOWN, workload: str = UNKNOWN, app: str = UNKNOWN,
                 version: str = UNKNOWN, service_account: str = UNKNOWN) -> None:
        self.namespace = namespace
        self.workload = workload
        self.app = app
        self.version = version
        self.service_account = service_account

    def as_tuple(self) -> tuple[str, str, str, str, str]:
        return (self.namespace, self.workload, self.app, self.version, self.service_account)

    def __repr__(self) -> str:
        return "PeerMetadata(%s)" % ", ".join(f"{k}={v!r}" for k, v in zip(_KEYS, self.as_tuple()))


UNKNOWN_PEER = PeerMetadata()


def local_metadata(identity: WorkloadIdentity) -> PeerMetadata:
    """What this sidecar says about itself."""
    return PeerMetadata(identity.namespace, identity.workload_name, identity.app,
                        identity.version, identity.service_account)


def encode(peer: PeerMetadata) -> bytes:
    """The header value for `peer` (computed once per sidecar, sent as precomputed bytes)."""
    return ",".join(f"{k}={quote(v, safe='')}" for k, v in zip(_KEYS, peer.as_tuple())).encode()


def header_line(peer: PeerMetadata) -> bytes:
    """The whole header line, ready to append to a request head."""
    return HEADER + b": " + encode(peer) + b"\r\n"


def decode(value: bytes) -> PeerMetadata | None:
    """Parse a header value; None when it is malformed (the peer then counts as unknown)."""
    fields: dict[str, str] = {}
    for item in value.split(b","):
        key, sep, raw = item.strip().partition(b"=")
        if not sep:
            return None
        text = unquote_to_bytes(raw)
        if len(text) > MAX_VALUE or not all(0x20 <= c < 0x7F for c in text):
            return None
        name = key.decode("latin-1")
        if name in _KEYS:
            fields[name] = text.decode("ascii") or UNKNOWN
    if not fields:
        return None
    return PeerMetadata(**fields)


class PeerCache:
    """Header value -> interned PeerMetadata, bounded to MAX_PEERS values per worker."""

    __slots__ = ("known", "limit", "overflow")

    def __init__(self, limit: int = MAX_PEERS) -> None:
        self.known: dict[bytes, PeerMetadata] = {}
        self.limit = limit
        self.overflow = 0          # header values refused because the cache was full

    def get(self, value: bytes | None) -> PeerMetadata:
        if value is None:
            return UNKNOWN_PEER
        peer = self.known.get(value)
        if peer is not None:
            return peer
        if len(self.known) >= self.limit:
            self.overflow += 1
            return UNKNOWN_PEER
        peer = self.known[value] = decode(value) or UNKNOWN_PEER
        return peer
