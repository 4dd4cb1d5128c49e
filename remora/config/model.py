"""Typed model of the Istio resources Remora reads.

Field names are Istio's, in snake_case here and camelCase on the wire (msgspec renames
them), so `msgspec.convert(spec_dict, VirtualServiceSpec)` both parses and rejects unknown
fields with a JSON-path error. Durations stay as Istio strings ("1.5s", "100ms") in the
model; `remora.config.duration.parse_duration` turns them into seconds where they are used.
Semantic rules (regexes compile, weights add up, subsets exist) live in the loader. Telemetry,
PeerAuthentication and AuthorizationPolicy are in model_policy.py; RequestAuthentication,
Gateway and Sidecar in model_jwt.py, model_gateway.py and model_sidecar.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Generic, Iterator, TypeVar

import msgspec

from remora.config.model_base import Spec
from remora.config.model_load_balancer import (  # noqa: F401 (re-exported: callers import them from here)
    ConsistentHashLB, HTTPCookie, LoadBalancerSettings, LocalityDistribute, LocalityFailover,
    LocalityLoadBalancerSetting, Maglev, RingHash,
)

if TYPE_CHECKING:
    from remora.config.model_gateway import GatewaySpec
    from remora.config.model_policy import AuthorizationPolicySpec, PeerAuthenticationSpec, TelemetrySpec
    from remora.config.model_sidecar import SidecarSpec
    from remora.config.model_jwt import RequestAuthenticationSpec

# ---- shared ---------------------------------------------------------------------------

class StringMatch(Spec):
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None


class PortSelector(Spec):
    number: int | None = None


class Percent(Spec):
    value: float = 0.0


class TelemetrySelector(Spec):
    """Istio's type.v1beta1.WorkloadSelector: labels the sidecar's workload must carry."""

    match_labels: dict[str, str] = {}


class WorkloadSelector(Spec):
    labels: dict[str, str] = {}


# ---- ServiceEntry / WorkloadEntry ----------------------------------------------------

class ServicePort(Spec):
    number: int
    protocol: str | None = None
    name: str | None = None
    target_port: int | None = None


class WorkloadEntrySpec(Spec):
    address: str | None = None
    ports: dict[str, int] = {}
    labels: dict[str, str] = {}
    network: str | None = None
    locality: str | None = None
    weight: int | None = None
    service_account: str | None = None


class ServiceEntrySpec(Spec):
    hosts: list[str] = []
    addresses: list[str] = []
    ports: list[ServicePort] = []
    location: str | None = None
    resolution: str | None = None
    endpoints: list[WorkloadEntrySpec] = []
    workload_selector: WorkloadSelector | None = None
    export_to: list[str] = []
    subject_alt_names: list[str] = []


# ---- VirtualService -------------------------------------------------------------------

class HTTPMatchRequest(Spec):
    name: str | None = None
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: dict[str, StringMatch] = {}
    port: int | None = None
    source_labels: dict[str, str] = {}
    gateways: list[str] = []
    query_params: dict[str, StringMatch] = {}
    ignore_uri_case: bool = False
    without_headers: dict[str, StringMatch] = {}
    source_namespace: str | None = None
    stat_prefix: str | None = None


class Destination(Spec):
    host: str
    subset: str | None = None
    port: PortSelector | None = None


class HeaderOperations(Spec):
    set: dict[str, str] = {}
    add: dict[str, str] = {}
    remove: list[str] = []


class Headers(Spec):
    request: HeaderOperations | None = None
    response: HeaderOperations | None = None


class HTTPRouteDestination(Spec):
    destination: Destination
    weight: int | None = None
    headers: Headers | None = None


class RegexRewrite(Spec):
    match: str
    rewrite: str


class HTTPRewrite(Spec):
    uri: str | None = None
    authority: str | None = None
    uri_regex_rewrite: RegexRewrite | None = None


class CorsPolicy(Spec):
    allow_origins: list[StringMatch] = []
    allow_origin: list[str] = []          # deprecated: exact origins
    allow_methods: list[str] = []
    allow_headers: list[str] = []
    expose_headers: list[str] = []
    max_age: str | None = None
    allow_credentials: bool | None = None
    unmatched_preflights: str | None = None   # FORWARD (default) | IGNORE


class HTTPMirrorPolicy(Spec):
    destination: Destination
    percentage: Percent | None = None


class HTTPRedirect(Spec):
    uri: str | None = None
    authority: str | None = None
    port: int | None = None
    derive_port: str | None = None      # FROM_PROTOCOL_DEFAULT | FROM_REQUEST_PORT
    scheme: str | None = None
    redirect_code: int | None = None


class HTTPBody(Spec):
    string: str | None = None
    bytes: str | None = None            # base64, as in Istio's proto JSON


class HTTPDirectResponse(Spec):
    status: int = 0
    body: HTTPBody | None = None


class HTTPRetry(Spec):
    attempts: int = 0
    per_try_timeout: str | None = None
    retry_on: str | None = None
    retry_remote_localities: bool | None = None


class FaultDelay(Spec):
    fixed_delay: str | None = None
    percentage: Percent | None = None
    percent: int | None = None


class FaultAbort(Spec):
    http_status: int | None = None
    grpc_status: str | None = None
    percentage: Percent | None = None


class HTTPFaultInjection(Spec):
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


class HTTPRoute(Spec):
    name: str | None = None
    match: list[HTTPMatchRequest] = []
    route: list[HTTPRouteDestination] = []
    redirect: HTTPRedirect | None = None
    direct_response: HTTPDirectResponse | None = None
    mirror: Destination | None = None
    mirrors: list[HTTPMirrorPolicy] = []
    mirror_percentage: Percent | None = None
    cors_policy: CorsPolicy | None = None
    rewrite: HTTPRewrite | None = None
    timeout: str | None = None
    retries: HTTPRetry | None = None
    fault: HTTPFaultInjection | None = None
    headers: Headers | None = None


class L4MatchAttributes(Spec):
    destination_subnets: list[str] = []
    port: int | None = None
    source_labels: dict[str, str] = {}
    gateways: list[str] = []
    source_namespace: str | None = None


class RouteDestination(Spec):
    destination: Destination
    weight: int | None = None


class TLSMatchAttributes(Spec):
    sni_hosts: list[str] = []
    destination_subnets: list[str] = []
    port: int | None = None
    source_labels: dict[str, str] = {}
    gateways: list[str] = []
    source_namespace: str | None = None


class TLSRoute(Spec):
    match: list[TLSMatchAttributes] = []
    route: list[RouteDestination] = []


class TCPRoute(Spec):
    match: list[L4MatchAttributes] = []
    route: list[RouteDestination] = []


class VirtualServiceSpec(Spec):
    hosts: list[str] = []
    gateways: list[str] = []
    http: list[HTTPRoute] = []
    tls: list[TLSRoute] = []
    tcp: list[TCPRoute] = []
    export_to: list[str] = []


# ---- DestinationRule -----------------------------------------------------------------

class TCPKeepalive(Spec):
    probes: int | None = None
    time: str | None = None
    interval: str | None = None


class TCPSettings(Spec):
    max_connections: int | None = None
    connect_timeout: str | None = None
    tcp_keepalive: TCPKeepalive | None = None
    max_connection_duration: str | None = None
    idle_timeout: str | None = None


class HTTPSettings(Spec):
    http1_max_pending_requests: int | None = None
    http2_max_requests: int | None = None
    max_requests_per_connection: int | None = None
    max_retries: int | None = None
    idle_timeout: str | None = None
    h2_upgrade_policy: str | None = None
    use_client_protocol: bool | None = None
    max_concurrent_streams: int | None = None


class ConnectionPoolSettings(Spec):
    tcp: TCPSettings | None = None
    http: HTTPSettings | None = None


class OutlierDetection(Spec):
    consecutive_errors: int | None = None
    # rename="camel" would spell this consecutive5XxErrors; Istio's name is consecutive5xxErrors.
    consecutive_5xx_errors: int | None = msgspec.field(default=None, name="consecutive5xxErrors")
    consecutive_gateway_errors: int | None = None
    consecutive_local_origin_failures: int | None = None
    split_external_local_origin_errors: bool | None = None
    interval: str | None = None
    base_ejection_time: str | None = None
    max_ejection_percent: int | None = None
    min_health_percent: int | None = None


class ClientTLSSettings(Spec):
    mode: str | None = None
    client_certificate: str | None = None
    private_key: str | None = None
    ca_certificates: str | None = None
    credential_name: str | None = None
    subject_alt_names: list[str] = []
    sni: str | None = None
    insecure_skip_verify: bool | None = None


class PortTrafficPolicy(Spec):
    port: PortSelector | None = None
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None


class TrafficPolicy(Spec):
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None
    port_level_settings: list[PortTrafficPolicy] = []


class Subset(Spec):
    name: str
    labels: dict[str, str] = {}
    traffic_policy: TrafficPolicy | None = None


class DestinationRuleSpec(Spec):
    host: str
    traffic_policy: TrafficPolicy | None = None
    subsets: list[Subset] = []
    export_to: list[str] = []
    # Istio's type.v1beta1.WorkloadSelector ({matchLabels: ...}), not the ServiceEntry's {labels}.
    workload_selector: TelemetrySelector | None = None


# ---- resources and the whole set ---------------------------------------------------------

S = TypeVar("S")


@dataclass(frozen=True)
class Resource(Generic[S]):
    """One parsed YAML document: its identity, where it came from, and its typed spec."""

    kind: str
    name: str
    namespace: str
    spec: S
    source: str = "<memory>"
    api_version: str = "networking.istio.io/v1"
    # The document as written, for a kind served as another (a Kubernetes Service is served
    # as the ServiceEntry Istio makes of it, `spec`, and pushed and shown as itself).
    written: dict | None = None

    @cached_property   # a frozen dataclass: made once, in the instance's __dict__
    def ref(self) -> str:
        """Identity as errors and dumps print it: Kind/namespace/name."""
        return f"{self.kind}/{self.namespace}/{self.name}"

    @cached_property
    def order(self) -> tuple[str, str, str]:
        """(kind, namespace, name): how versions and dumps sort resources."""
        return (self.kind, self.namespace, self.name)

    def document(self) -> dict:
        """The resource as an Istio YAML document (camelCase), loadable again as it is."""
        if self.written is not None:
            return self.written
        return {"apiVersion": self.api_version, "kind": self.kind,
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": msgspec.to_builtins(self.spec)}


@dataclass(frozen=True)
class MeshConfig:
    """A complete, validated set of resources: the unit that is swapped atomically."""

    service_entries: tuple[Resource[ServiceEntrySpec], ...] = ()
    workload_entries: tuple[Resource[WorkloadEntrySpec], ...] = ()
    virtual_services: tuple[Resource[VirtualServiceSpec], ...] = ()
    destination_rules: tuple[Resource[DestinationRuleSpec], ...] = ()
    telemetries: tuple[Resource[TelemetrySpec], ...] = ()
    peer_authentications: tuple[Resource[PeerAuthenticationSpec], ...] = ()
    authorization_policies: tuple[Resource[AuthorizationPolicySpec], ...] = ()
    request_authentications: tuple[Resource[RequestAuthenticationSpec], ...] = ()
    gateways: tuple[Resource[GatewaySpec], ...] = ()
    sidecars: tuple[Resource[SidecarSpec], ...] = ()
    version: str = "0"
    warnings: tuple[str, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())   # info lines (non-mesh kinds skipped)
    skipped: tuple[str, ...] = field(default=())  # Kind/namespace/name of mesh kinds skipped (Gateway, ...)

    def resources(self) -> Iterator[Resource]:
        """Every resource of every kind, kind by kind."""
        for group in (self.service_entries, self.workload_entries, self.virtual_services,
                      self.destination_rules, self.telemetries, self.peer_authentications,
                      self.authorization_policies, self.request_authentications, self.gateways,
                      self.sidecars):
            yield from group
