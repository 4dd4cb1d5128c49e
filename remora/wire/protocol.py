"""The messages of the sidecar <-> control-server stream (xDS semantics, JSON on a WebSocket).

One WebSocket per sidecar at `STREAM_PATH`, text frames, one JSON message per frame,
discriminated by "type". The flow copies Envoy's aggregated xDS (ADS):

1. The sidecar sends `Hello` with its `Node` (identity, labels, inbound address). The
   server registers the workload (an auto-registered WorkloadEntry) while it is connected.
2. The sidecar sends one `DiscoveryRequest` per resource type it subscribes to, with the
   version it already holds ("" if none) and an empty nonce.
3. The server answers each with a `DiscoveryResponse`: the full set of that type's
   resources the sidecar needs (state of the world, not a delta), a `version_info` and a
   fresh `nonce`. Later changes are pushed the same way, unasked, types in `TYPE_ORDER`.
4. After trying to apply a response the sidecar sends a `DiscoveryRequest` for that type
   with `response_nonce` = the response's nonce and
   - ACK: `version_info` = the response's version, no `error_detail`;
   - NACK: `version_info` = the version it still holds (the previous one), and
     `error_detail` saying why it refused.
   The server records both, and never resends a NACKed version: it pushes that type to the
   sidecar again only when the type's content changes to a new version.
5. A request whose nonce is not the latest one the server sent for that type is stale
   (the sidecar answered an older push) and is ignored, as in xDS.
6. Introspection (`remora proxy-config`, like istioctl reaching any proxy): the server may
   send a sidecar that lists `config_dump` in `Node.capabilities` a `ConfigDumpRequest`; the
   sidecar answers on the same stream with a `ConfigDumpResponse` holding what its admin
   server shows at those paths (only `INTROSPECTION_PATHS`). So the admin server stays on
   loopback in a pod or a compose namespace, and the operator needs only the control server.

Resources are Istio documents (apiVersion, kind, metadata, spec in camelCase) exactly as
`Resource.document()` writes them, so the sidecar validates and compiles them with the
same loader that reads YAML files.
"""
from __future__ import annotations

from typing import Any, Union

import msgspec

STREAM_PATH = "/v1/xds"

CLUSTERS = "clusters"     # ServiceEntry, Kubernetes Service, DestinationRule (Envoy: CDS)
ENDPOINTS = "endpoints"   # WorkloadEntry, static and auto-registered (Envoy: EDS)
ROUTES = "routes"         # VirtualService (Envoy: LDS/RDS)
POLICIES = "policies"     # Telemetry, PeerAuthentication, AuthorizationPolicy, RequestAuthentication
# The order the server pushes types in after a change (Envoy's ADS order: clusters before
# the endpoints that fill them, both before the routes that point at them; policies last).
TYPE_ORDER: tuple[str, ...] = (CLUSTERS, ENDPOINTS, ROUTES, POLICIES)
TYPE_KINDS: dict[str, tuple[str, ...]] = {
    CLUSTERS: ("ServiceEntry", "Service", "DestinationRule"),   # Service: Kubernetes core/v1
    ENDPOINTS: ("WorkloadEntry",),
    ROUTES: ("VirtualService", "Gateway", "Sidecar"),
    POLICIES: ("Telemetry", "PeerAuthentication", "AuthorizationPolicy", "RequestAuthentication"),
}
KIND_TYPE: dict[str, str] = {kind: type_url for type_url, kinds in TYPE_KINDS.items() for kind in kinds}
CONFIG_DUMP = "config_dump"   # the capability a sidecar announces to answer ConfigDumpRequest
# The largest frame the server reads from a sidecar: requests are small, a config dump is the
# one large thing a sidecar sends, and one that would not fit is answered with an error instead.
MAX_SIDECAR_FRAME = 4 << 20
# The only admin paths a sidecar answers over the stream: read-only views of its config.
INTROSPECTION_PATHS: tuple[str, ...] = ("/config_dump", "/clusters?format=json")


class Node(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A sidecar as it introduces itself."""

    id: str                                  # unique per running sidecar
    namespace: str = "default"
    service: str | None = None               # the service it serves, if any
    service_account: str = "default"
    workload: str = "unknown"
    labels: dict[str, str] = {}
    trust_domain: str = "cluster.local"
    inbound: str | None = None               # "host:port" peers dial (its inbound listener)
    app_port: int | None = None              # the app's port behind the inbound listener
    admin: str | None = None                 # "host:port" of its admin server
    mtls: bool = False                       # it has a workload certificate source (--token / --cert-dir)
    remora_version: str = ""
    started_at: float = 0.0                  # when the sidecar process started (Unix time)
    capabilities: list[str] = []             # optional protocol features it supports (CONFIG_DUMP)
    locality: str = ""                       # --locality region/zone/subzone (its WorkloadEntry's)


class Hello(msgspec.Struct, tag="hello", kw_only=True):
    node: Node


class DiscoveryRequest(msgspec.Struct, tag="request", kw_only=True, omit_defaults=True):
    type_url: str
    version_info: str = ""
    response_nonce: str = ""
    error_detail: str | None = None

    @property
    def is_nack(self) -> bool:
        return self.error_detail is not None


class DiscoveryResponse(msgspec.Struct, tag="response", kw_only=True):
    type_url: str
    version_info: str
    nonce: str
    resources: list[dict[str, Any]]
    # Replicas over etcd: the store revision the pushing replica's config reflects (0: no
    # shared store). A sidecar refuses a push older than what it holds, so moving to a
    # replica that is behind never takes it back (xds_client.handle).
    store_revision: int = 0


class ConfigDumpRequest(msgspec.Struct, tag="config_dump_request", kw_only=True):
    """Server -> sidecar: send what your admin server shows at these paths."""

    request_id: str
    paths: list[str]


class ConfigDumpResponse(msgspec.Struct, tag="config_dump_response", kw_only=True, omit_defaults=True):
    """Sidecar -> server: path -> the admin server's JSON answer, or why it could not."""

    request_id: str
    documents: dict[str, Any] = {}
    error: str | None = None


class StreamError(msgspec.Struct, tag="error", kw_only=True):
    """The server refuses the stream (bad hello, duplicate node id); it closes after this."""

    message: str


Message = Union[Hello, DiscoveryRequest, DiscoveryResponse, ConfigDumpRequest, ConfigDumpResponse, StreamError]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Message)


class ProtocolError(ValueError):
    """A frame that is not a valid stream message."""


def encode(message: Message) -> str:
    """One message as the text of one WebSocket frame."""
    return _encoder.encode(message).decode()


def decode(data: str | bytes) -> Message:
    """Parse one frame; raise ProtocolError naming what is wrong."""
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as error:
        raise ProtocolError(f"invalid stream message: {error}") from None
    except msgspec.DecodeError as error:
        raise ProtocolError(f"stream frame is not JSON: {error}") from None
