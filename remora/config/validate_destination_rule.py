"""Semantic rules of DestinationRule (traffic policy: load balancer, connection pool,
outlier detection, client TLS; subsets), after the schema check; Istio's
pilot/pkg/config/validation where Remora implements the feature."""
from __future__ import annotations

from remora.config.field_checks import LABEL_KEY, FieldChecks
from remora.config.model import (
    ConnectionPoolSettings,
    DestinationRuleSpec,
    LoadBalancerSettings,
    OutlierDetection,
    PortTrafficPolicy,
    TrafficPolicy,
)
from remora.config.schema import Problem, join_path
from remora.config.validate_tls import validate_client_tls

LOAD_BALANCER_SIMPLE = frozenset({"UNSPECIFIED", "ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN", "RANDOM", "PASSTHROUGH"})
H2_UPGRADE_POLICIES = frozenset({"DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"})


def validate_destination_rule(spec: DestinationRuleSpec, path: str = "spec") -> list[Problem]:
    checks = FieldChecks()
    if not spec.host:
        checks.add(f"{path}.host", "a DestinationRule needs a host")
    else:
        checks.host(f"{path}.host", spec.host)
    if spec.traffic_policy is not None:
        _check_traffic_policy(checks, f"{path}.trafficPolicy", spec.traffic_policy)
    for key, value in (spec.workload_selector.match_labels.items() if spec.workload_selector else ()):
        if "*" in key or "*" in value:   # Istio: "wildcard is not supported in selector"
            checks.add(join_path(f"{path}.workloadSelector.matchLabels", key),
                       "wildcard is not supported in selector: select workloads by exact labels")
    seen: set[str] = set()
    for i, subset in enumerate(spec.subsets):
        where = f"{path}.subsets[{i}]"
        if not subset.name:
            checks.add(f"{where}.name", "a subset needs a name")
        elif subset.name in seen:
            checks.add(f"{where}.name", f"subset name {subset.name!r} is defined twice")
        seen.add(subset.name)
        for key, value in subset.labels.items():
            if not key or not value:
                checks.add(join_path(f"{where}.labels", key), "subset labels need a non-empty key and value")
        if subset.traffic_policy is not None:
            _check_traffic_policy(checks, f"{where}.trafficPolicy", subset.traffic_policy)
    return checks.problems


def _check_traffic_policy(checks: FieldChecks, path: str, policy: TrafficPolicy | PortTrafficPolicy) -> None:
    if policy.load_balancer is not None:
        _check_load_balancer(checks, f"{path}.loadBalancer", policy.load_balancer)
    if policy.connection_pool is not None:
        _check_connection_pool(checks, f"{path}.connectionPool", policy.connection_pool)
    if policy.outlier_detection is not None:
        _check_outlier_detection(checks, f"{path}.outlierDetection", policy.outlier_detection)
    if policy.tls is not None:
        checks.problems += validate_client_tls(policy.tls, f"{path}.tls")
    if isinstance(policy, TrafficPolicy):
        for i, port_policy in enumerate(policy.port_level_settings):
            where = f"{path}.portLevelSettings[{i}]"
            if port_policy.port is None or port_policy.port.number is None:
                checks.add(f"{where}.port", "port-level settings need port.number")
            else:
                checks.port(f"{where}.port.number", port_policy.port.number)
            _check_traffic_policy(checks, where, port_policy)


def _check_load_balancer(checks: FieldChecks, path: str, lb: LoadBalancerSettings) -> None:
    checks.one_of(f"{path}.simple", lb.simple, LOAD_BALANCER_SIMPLE)
    checks.duration(f"{path}.warmupDurationSecs", lb.warmup_duration_secs)
    if lb.simple is not None and lb.consistent_hash is not None:
        checks.add(path, "set only one of simple and consistentHash")
    if lb.locality_lb_setting is not None:
        _check_locality(checks, f"{path}.localityLbSetting", lb.locality_lb_setting)
    hashing = lb.consistent_hash
    if hashing is None:
        return
    where = f"{path}.consistentHash"
    # useSourceIp: false is the same as leaving it out.
    keys = [name for name, value in (
        ("httpHeaderName", hashing.http_header_name), ("httpCookie", hashing.http_cookie),
        ("useSourceIp", hashing.use_source_ip or None), ("httpQueryParameterName", hashing.http_query_parameter_name),
    ) if value is not None]
    if len(keys) != 1:
        got = ", ".join(keys) if keys else "none"
        checks.add(where, f"set exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName (got {got})")
    if hashing.http_cookie is not None:
        checks.duration(f"{where}.httpCookie.ttl", hashing.http_cookie.ttl)
    if hashing.ring_hash is not None and hashing.maglev is not None:
        checks.add(where, "set only one of ringHash and maglev")
    size = hashing.maglev.table_size if hashing.maglev is not None else None
    if size and not (size > 1 and all(size % d for d in range(2, int(size ** 0.5) + 1))):
        checks.add(f"{where}.maglev.tableSize", f"table size must be a prime number, got {size}")   # Istio's rule


def _check_connection_pool(checks: FieldChecks, path: str, pool: ConnectionPoolSettings) -> None:
    if pool.tcp is not None:
        tcp = f"{path}.tcp"
        checks.non_negative(f"{tcp}.maxConnections", pool.tcp.max_connections)
        checks.duration(f"{tcp}.connectTimeout", pool.tcp.connect_timeout, whole_ms=True)
        checks.duration(f"{tcp}.maxConnectionDuration", pool.tcp.max_connection_duration, whole_ms=True)
        checks.duration(f"{tcp}.idleTimeout", pool.tcp.idle_timeout, whole_ms=True, zero_ok=True)
        if pool.tcp.tcp_keepalive is not None:
            checks.non_negative(f"{tcp}.tcpKeepalive.probes", pool.tcp.tcp_keepalive.probes)
            checks.duration(f"{tcp}.tcpKeepalive.time", pool.tcp.tcp_keepalive.time, whole_ms=True)
            checks.duration(f"{tcp}.tcpKeepalive.interval", pool.tcp.tcp_keepalive.interval, whole_ms=True)
    if pool.http is not None:
        http = f"{path}.http"
        for name, value in (
            ("http1MaxPendingRequests", pool.http.http1_max_pending_requests),
            ("http2MaxRequests", pool.http.http2_max_requests),
            ("maxRequestsPerConnection", pool.http.max_requests_per_connection),
            ("maxRetries", pool.http.max_retries),
            ("maxConcurrentStreams", pool.http.max_concurrent_streams),
        ):
            checks.non_negative(f"{http}.{name}", value)
        checks.duration(f"{http}.idleTimeout", pool.http.idle_timeout, whole_ms=True)
        checks.one_of(f"{http}.h2UpgradePolicy", pool.http.h2_upgrade_policy, H2_UPGRADE_POLICIES)
        if pool.http.h2_upgrade_policy == "UPGRADE" and pool.http.use_client_protocol:
            checks.add(f"{http}.useClientProtocol", "useClientProtocol must not be true when h2UpgradePolicy is UPGRADE")


def _check_outlier_detection(checks: FieldChecks, path: str, outlier: OutlierDetection) -> None:
    for name, value in (
        ("consecutiveErrors", outlier.consecutive_errors),
        ("consecutive5xxErrors", outlier.consecutive_5xx_errors),
        ("consecutiveGatewayErrors", outlier.consecutive_gateway_errors),
        ("consecutiveLocalOriginFailures", outlier.consecutive_local_origin_failures),
    ):
        checks.non_negative(f"{path}.{name}", value)
    checks.duration(f"{path}.interval", outlier.interval, whole_ms=True)
    checks.duration(f"{path}.baseEjectionTime", outlier.base_ejection_time, whole_ms=True)
    checks.percent(f"{path}.maxEjectionPercent", outlier.max_ejection_percent)
    checks.percent(f"{path}.minHealthPercent", outlier.min_health_percent)
    if outlier.consecutive_local_origin_failures and not outlier.split_external_local_origin_errors:
        checks.add(f"{path}.consecutiveLocalOriginFailures", "consecutiveLocalOriginFailures needs "
                   "splitExternalLocalOriginErrors: true (Istio's rule)")


def _check_locality(checks: FieldChecks, path: str, setting) -> None:
    """localityLbSetting as Istio validates it: failover between regions, or distribute
    weights (summing to 100 per source), never both; failoverPriority is refused."""
    seen: set[str] = set()
    for i, entry in enumerate(setting.failover_priority):
        name = entry.partition("=")[0]
        if not name or not LABEL_KEY.fullmatch(name):
            checks.add(f"{path}.failoverPriority[{i}]", f"{entry!r}: expected a label name, or name=value")
        elif name in seen:
            checks.add(f"{path}.failoverPriority[{i}]", f"label {name!r} is listed twice")
        seen.add(name)
    if setting.distribute and setting.failover:
        checks.add(path, "set only one of distribute and failover")
    for i, failover in enumerate(setting.failover):
        where = f"{path}.failover[{i}]"
        for name, region in (("from", failover.from_), ("to", failover.to)):
            if not region:
                checks.add(f"{where}.{name}", "a region is required")
            elif "/" in region:
                checks.add(f"{where}.{name}", f"{region!r}: failover names regions, not region/zone")
        if failover.from_ and failover.from_ == failover.to:
            checks.add(where, f"from and to are the same region ({failover.to!r})")
    sources: set[str] = set()
    for i, rule in enumerate(setting.distribute):
        where = f"{path}.distribute[{i}]"
        _check_locality_pattern(checks, f"{where}.from", rule.from_)
        if rule.from_ in sources:
            checks.add(f"{where}.from", f"{rule.from_!r} is already the source of an earlier rule")
        sources.add(rule.from_)
        if not rule.to:
            checks.add(f"{where}.to", "at least one locality and its weight")
        for locality, weight in rule.to.items():
            _check_locality_pattern(checks, f"{where}.to[{locality!r}]", locality)
            if weight < 0:
                checks.add(f"{where}.to[{locality!r}]", f"weight {weight} is negative")
        if rule.to and sum(rule.to.values()) != 100:
            checks.add(f"{where}.to", f"weights add up to {sum(rule.to.values())}, not 100")


def _check_locality_pattern(checks: FieldChecks, path: str, pattern: str) -> None:
    """`region[/zone[/subzone]]`, where `*` may stand for the last part only."""
    parts = pattern.split("/") if pattern else []
    if not parts or len(parts) > 3 or any(not part for part in parts):
        checks.add(path, f"{pattern!r}: expected REGION[/ZONE[/SUBZONE]], e.g. us-west/zone1/* or *")
    elif "*" in parts[:-1] or any("*" in part and part != "*" for part in parts):
        checks.add(path, f"{pattern!r}: `*` can only be a whole last part")
