"""Clusters: the endpoints behind one (service, port, subset), their policy and counters.

Cluster names follow Istio's Envoy naming, `outbound|<port>|<subset>|<fqdn>` and
`inbound|<port>||`, so stats and admin output read the same as in an Istio mesh.
Endpoint objects carry the per-endpoint counters the balancers and /clusters read; their
connection pools and circuit breakers live in a per-worker `PoolRegistry` keyed by cluster
name and address, so compiling a new config version never drops warm connections.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import msgspec

from remora.config.duration import parse_duration
from remora.config.model import (
    DestinationRuleSpec, MeshConfig, Resource, ServiceEntrySpec, TrafficPolicy, WorkloadEntrySpec,
)
from remora.config.mesh_rules import destination_rules_for, outbound_cluster_name as cluster_name
from remora.config.names import qualify_host
from remora.config.protocols import declared_protocol, upstream_http2
from remora.config.traffic_policy import SNAKE_CASE, TYPED, merge_sources, merge_traffic_policy
from remora.proxy.upstream.balancer import Balancer, make_balancer
from remora.proxy.telemetry.counters import Counters, status_names
from remora.proxy.upstream.tls_origination import Origination, origination_for
from remora.proxy.upstream.upstream_tls import DISABLE, SecureNaming, endpoint_tls_mode

DEFAULT_CONNECT_TIMEOUT = 10.0   # Istio's connectTimeout default
DEFAULT_IDLE_TIMEOUT = 3600.0    # Istio's connectionPool.http.idleTimeout default
DEFAULT_TCP_IDLE_TIMEOUT = 3600.0   # Istio's connectionPool.tcp.idleTimeout (Envoy tcp_proxy) default


class ClusterStats(Counters):
    """Envoy's cluster counters for one cluster in one worker (plain integers)."""

    __slots__ = (
        "upstream_rq_total", "upstream_rq_active", "upstream_cx_total",
        "upstream_cx_connect_fail", "upstream_cx_connect_timeout",
        "upstream_rq_pending_total", "upstream_rq_retry",
        "upstream_rq_retry_success", "upstream_cx_none_healthy", "upstream_rq_timeout",
        "upstream_rq_rx_reset", "upstream_cx_protocol_error", "upstream_cx_overflow",
        "upstream_rq_pending_overflow", "upstream_rq_retry_overflow", "retry_or_shadow_abandoned",
        "upstream_rq_per_try_timeout", "upstream_cx_max_duration_reached",
    )
    STATUS_NAMES = status_names("upstream_rq")


GAUGE_STATS = frozenset({"upstream_rq_active", "upstream_cx_active", "upstream_rq_pending_active"})


class Endpoint:
    """One upstream address in one cluster, with what the balancer and admin read."""

    __slots__ = ("host", "port", "labels", "weight", "key", "active_requests",
                 "total_requests", "errors", "ejected", "pool", "service_account", "tls_mode",
                 "h2_pool", "locality", "priority", "configured_weight", "joined_at")

    def __init__(self, host: str, port: int, labels: dict[str, str], weight: int = 1,
                 service_account: str | None = None, locality: str | None = None) -> None:
        self.host = host
        self.port = port
        self.labels = labels
        self.weight = max(1, weight)
        self.configured_weight = self.weight   # `weight` is this, or less while it warms up (slow_start.py)
        self.joined_at = 0.0      # loop time its address joined the cluster (carried across versions)
        self.key = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.active_requests = 0
        self.total_requests = 0
        self.errors = 0
        self.ejected = False
        self.pool = None  # set by the worker's PoolRegistry
        self.h2_pool = None   # useClientProtocol clusters: the pool for requests that came over HTTP/2
        self.service_account = service_account
        self.tls_mode = DISABLE   # ISTIO_MUTUAL (mTLS, upstream_tls), SIMPLE / MUTUAL (tls_origination)
        self.locality = locality or ""   # region/zone/subzone (WorkloadEntry.locality)
        self.priority = 0         # locality failover level (upstream/locality.py); 0 without it


@dataclass(frozen=True)
class HashPolicy:
    """Which request attribute a consistent-hash balancer keys on."""

    header: bytes | None = None
    cookie: bytes | None = None
    query_param: bytes | None = None
    source_ip: bool = False

    def key(self, head) -> bytes | str | None:
        """The request attribute (of a RequestHead) a ring-hash balancer keys on, or None."""
        if self.header is not None:
            return head.header(self.header)
        if self.cookie is not None:
            cookies = head.header(b"cookie") or b""
            for part in cookies.split(b";"):
                name, _, value = part.strip().partition(b"=")
                if name == self.cookie:
                    return value
            return None
        if self.query_param is not None:
            from urllib.parse import parse_qsl
            return dict(parse_qsl(head.query())).get(self.query_param)
        return head.peer_ip if self.source_ip else None


class Cluster:
    """A named set of endpoints with its load balancer and connection settings."""

    __slots__ = ("name", "service", "port", "subset", "endpoints", "balancer", "stats",
                 "connect_timeout", "idle_timeout", "tcp_idle_timeout", "max_connection_duration",
                 "lb_policy", "hash_policy",
                 "traffic_policy", "circuit", "detector", "tcp_keepalive", "telemetry", "naming",
                 "origination", "http2", "max_streams", "client_protocol", "warmup", "locality_args")

    def __init__(self, name: str, service: str, port: int, subset: str | None,
                 endpoints: list[Endpoint], policy: TrafficPolicy | None) -> None:
        self.name = name
        self.service = service
        self.port = port
        self.subset = subset
        self.endpoints = endpoints
        self.traffic_policy = policy
        lb = policy.load_balancer if policy else None
        self.balancer: Balancer = make_balancer(lb, endpoints)
        self.lb_policy = _lb_name(lb)
        self.hash_policy = _hash_policy(lb)
        self.stats = ClusterStats()
        pool = policy.connection_pool if policy else None
        tcp = pool.tcp if pool else None
        http = pool.http if pool else None
        self.connect_timeout = _seconds(tcp and tcp.connect_timeout, DEFAULT_CONNECT_TIMEOUT)
        self.idle_timeout = _seconds(http and http.idle_timeout, DEFAULT_IDLE_TIMEOUT)
        # TCP-proxied connections with no byte either way this long are closed (0: never).
        self.tcp_idle_timeout = _seconds(tcp and tcp.idle_timeout, DEFAULT_TCP_IDLE_TIMEOUT)
        self.max_connection_duration = _seconds(tcp and tcp.max_connection_duration, 0.0)
        # Slow start window (0: none); Envoy and Istio have it for these two policies only.
        self.warmup = (_seconds(lb and lb.warmup_duration_secs, 0.0)
                       if self.lb_policy in ("ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN", "UNSPECIFIED") else 0.0)
        self.locality_args: tuple = (None, None)   # what apply_locality was given, to rebuild with
        ka = tcp.tcp_keepalive if tcp is not None else None
        self.tcp_keepalive = (None if ka is None else
                              (ka.time and parse_duration(ka.time), ka.interval and parse_duration(ka.interval),
                               ka.probes))
        self.circuit = None   # the worker's Circuit for this cluster name (set per snapshot)
        self.detector = None  # its OutlierDetector (set per snapshot, needs the loop's clock)
        self.telemetry = None # its istio_metrics.ServiceTags (set per snapshot)
        self.naming: SecureNaming | None = None   # whom its mTLS endpoints may be (secure naming)
        self.origination: Origination | None = None   # DR tls SIMPLE / MUTUAL (tls_origination)
        # HTTP/2 upstream (config/protocols.py: GRPC/HTTP2 port, h2UpgradePolicy UPGRADE); set
        # by the builder that knows the port's protocol. max_streams: maxConcurrentStreams.
        self.http2 = False
        self.max_streams = (http and http.max_concurrent_streams) or 0
        # useClientProtocol: a request goes upstream in the HTTP version it came in with
        # (each endpoint then has an HTTP/2 pool too, Endpoint.h2_pool).
        self.client_protocol = bool(http and http.use_client_protocol)

    def pick(self, hash_key: bytes | None = None, exclude=()) -> Endpoint | None:
        """Choose an endpoint with the cluster's policy (None when it has none)."""
        return self.balancer.pick(hash_key, exclude)

    def pick_elsewhere(self, hash_key: bytes | None, tried) -> Endpoint | None:
        """A retry with retryRemoteLocalities: another locality level than the tried
        endpoints' when the balancer has levels (upstream/locality.py), else `pick`."""
        other = getattr(self.balancer, "pick_elsewhere", None)
        return other(hash_key, tried) if other is not None else self.balancer.pick(hash_key, tried)


def _seconds(text: str | None, default: float) -> float:
    return parse_duration(text) if text else default


def _lb_name(lb) -> str:
    if lb is None:
        return "ROUND_ROBIN"
    if lb.consistent_hash is not None:
        return "MAGLEV" if lb.consistent_hash.maglev else "RING_HASH"
    return lb.simple or "ROUND_ROBIN"


def _hash_policy(lb) -> HashPolicy | None:
    ch = lb.consistent_hash if lb else None
    if ch is None:
        return None
    return HashPolicy(
        header=ch.http_header_name.lower().encode() if ch.http_header_name else None,
        cookie=ch.http_cookie.name.encode() if ch.http_cookie else None,
        query_param=ch.http_query_parameter_name.encode() if ch.http_query_parameter_name else None,
        source_ip=bool(ch.use_source_ip),
    )


def merge_policy(base: TrafficPolicy | None, override: TrafficPolicy | None, port: int) -> TrafficPolicy | None:
    """The effective policy of the cluster for (subset, port): Istio's merge (config/traffic_policy.py)."""
    merged = merge_traffic_policy(base, override, port, TYPED)
    if not merged:
        return None
    return msgspec.structs.replace(TrafficPolicy(), **{SNAKE_CASE[k]: v for k, v in merged.items()})


def tls_path(spec: DestinationRuleSpec | None, subset: str | None, port: int) -> str:
    """The field path of the `tls` block merge_policy picks for (subset, port), for errors."""
    subset_policy, subset_where = None, ""
    for i, s in enumerate(spec.subsets if spec else ()):
        if s.name == subset:
            subset_policy, subset_where = s.traffic_policy, f"spec.subsets[{i}].trafficPolicy"
    found = merge_sources(spec.traffic_policy if spec else None, subset_policy, port, TYPED,
                          "spec.trafficPolicy", subset_where).get("tls")
    return found.where if found is not None else "spec.trafficPolicy.tls"


@dataclass
class ServiceInfo:
    """A mesh service as the router sees it: its FQDN, ports and clusters by (port, subset)."""

    fqdn: str
    namespace: str
    ports: dict[int, str]                                  # number -> protocol
    clusters: dict[tuple[int, str | None], Cluster]


def build_clusters(config: MeshConfig, workload=None) -> dict[str, ServiceInfo]:
    """Compile every ServiceEntry (and DestinationRule subsets) into clusters, by service FQDN.

    `workload` (a WorkloadIdentity: namespace and labels) decides which DestinationRules with
    a workloadSelector apply; without it, none of those do.
    """
    rules = applicable_rules(config, workload)
    services: dict[str, ServiceInfo] = {}
    for se in config.service_entries:
        for host in se.spec.hosts:
            fqdn = qualify_host(host, se.namespace)
            info = services.setdefault(fqdn, ServiceInfo(fqdn, se.namespace, {}, {}))
            for port in se.spec.ports:
                info.ports[port.number] = (port.protocol or "HTTP").upper()
                endpoints = _endpoints(se, config, host, port)
                _add_port_clusters(info, port.number, endpoints, rule_for(rules, fqdn),
                                   se.spec.subject_alt_names,
                                   declared_protocol(port.protocol, port.name))
    # Hosts known only from a DestinationRule still get (empty) clusters, so routes to
    # them answer 503 UH rather than failing to compile.
    for fqdn, dr in rules.items():
        if fqdn not in services and not fqdn.startswith("*"):
            info = services.setdefault(fqdn, ServiceInfo(fqdn, dr.namespace, {80: "HTTP"}, {}))
            _add_port_clusters(info, 80, [], dr)
    return services


def applicable_rules(config: MeshConfig, workload=None) -> dict[str, Resource[DestinationRuleSpec]]:
    """The DestinationRule per host for this sidecar (mesh_rules.destination_rules_for)."""
    chosen = destination_rules_for(
        config.destination_rules,
        lambda dr: (qualify_host(dr.spec.host, dr.namespace), dr.namespace,
                    None if dr.spec.workload_selector is None else dr.spec.workload_selector.match_labels),
        None if workload is None else (workload.namespace, workload.labels))
    return {qualify_host(dr.spec.host, dr.namespace): dr for dr in chosen}


def rule_for(rules: dict[str, Resource[DestinationRuleSpec]], fqdn: str):
    """The DestinationRule for a host: exact host first, then the longest matching wildcard."""
    rule = rules.get(fqdn)
    if rule is not None:
        return rule
    best = None
    for host, candidate in rules.items():
        if host.startswith("*") and fqdn.endswith(host[1:]) and (best is None or len(host) > len(best[0])):
            best = (host, candidate)
    return best[1] if best else None


def _add_port_clusters(info: ServiceInfo, port: int, endpoints: list, dr, se_sans=(),
                       protocol: str | None = "HTTP") -> None:
    base = dr.spec.traffic_policy if dr else None
    # Secure naming is per service: every endpoint's account, whichever subset it is in.
    accounts = [e.service_account for e in endpoints]
    clusters = [Cluster(cluster_name(port, None, info.fqdn), info.fqdn, port, None,
                        [_copy(e) for e in endpoints], merge_policy(base, None, port))]
    for subset in (dr.spec.subsets if dr else ()):
        members = [_copy(e) for e in endpoints
                   if all(e.labels.get(k) == v for k, v in subset.labels.items())]
        clusters.append(Cluster(cluster_name(port, subset.name, info.fqdn), info.fqdn, port, subset.name,
                                members, merge_policy(base, subset.traffic_policy, port)))
    for cluster in clusters:
        info.clusters[(port, cluster.subset)] = cluster
        policy = cluster.traffic_policy
        dr_sans = policy.tls.subject_alt_names if policy is not None and policy.tls is not None else ()
        cluster.naming = SecureNaming(info.namespace, accounts, [*se_sans, *dr_sans])
        cluster.origination = origination_for(policy.tls if policy is not None else None, se_sans, dr,
                                              tls_path(dr.spec if dr else None, cluster.subset, port))
        for ep in cluster.endpoints:
            ep.tls_mode = endpoint_tls_mode(policy, ep.labels)
        http = (policy.connection_pool.http if policy is not None and policy.connection_pool
                else None)
        # useClientProtocol: `http2` is the HTTP/1.1 side; the router picks per request.
        cluster.http2 = upstream_http2(protocol, http and http.h2_upgrade_policy)
        if cluster.client_protocol:
            cluster.http2 = False


def empty_service(fqdn: str, namespace: str, ports=(80,)) -> ServiceInfo:
    """A service with no endpoints (a route target nothing registered yet)."""
    info = ServiceInfo(fqdn, namespace, {p: "HTTP" for p in ports}, {})
    for p in ports:
        _add_port_clusters(info, p, [], None)
    return info


def _copy(e: Endpoint) -> Endpoint:
    return Endpoint(e.host, e.port, e.labels, e.weight, e.service_account, e.locality)


def _endpoints(se: Resource[ServiceEntrySpec], config: MeshConfig, host: str, port) -> list[Endpoint]:
    specs: list[WorkloadEntrySpec] = list(se.spec.endpoints)
    selector = se.spec.workload_selector
    if selector is not None:
        specs += [we.spec for we in config.workload_entries
                  if we.namespace == se.namespace
                  and all(we.spec.labels.get(k) == v for k, v in selector.labels.items())]
    target = port.target_port or port.number
    if not specs and (se.spec.resolution or "").upper() in ("DNS", "DNS_ROUND_ROBIN"):
        return [Endpoint(host, target, {})]
    result = []
    for spec in specs:
        if not spec.address:
            continue
        ep_port = spec.ports.get(port.name or "", target) if port.name else target
        result.append(Endpoint(_strip_brackets(spec.address), ep_port, dict(spec.labels),
                               spec.weight or 1, spec.service_account, spec.locality))
    return result


def _strip_brackets(address: str) -> str:
    if address.startswith("[") and address.endswith("]"):
        address = address[1:-1]
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address
