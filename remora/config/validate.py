"""Semantic rules of VirtualService and DestinationRule, applied after the schema check
(ServiceEntry and WorkloadEntry: validate_entries.py; the value checks here are shared).

The schema (model.py + schema.py) says which fields exist and their types; this module
says which values make sense, following Istio's own validation where Remora implements
the feature (Istio: pilot/pkg/config/validation) and Envoy's semantics where Istio
defers to it (retry_on names, regexes). Every rule returns a `Problem` with a field path
so that the loader can name file, resource and field. Rules that need the whole set
(destination hosts, subsets) live in `references.py`.
"""
from __future__ import annotations

import ipaddress
import re

import msgspec

from remora.config.duration import duration_nanos, parse_duration
from remora.config.model import (
    ConnectionPoolSettings,
    DestinationRuleSpec,
    HTTPFaultInjection,
    HTTPMatchRequest,
    HTTPRetry,
    HTTPRoute,
    LoadBalancerSettings,
    OutlierDetection,
    Percent,
    PortTrafficPolicy,
    StringMatch,
    TrafficPolicy,
    VirtualServiceSpec,
)
from remora.config.schema import Problem, join_path
from remora.config.validate_http import GRPC_STATUS_NAMES, header_operation_problems
from remora.config.validate_tls import validate_client_tls
from remora.config.validate_http import cors_problems, local_answer_problems, mirror_problems
from remora.config.validate_tcp import tcp_route_problems, tls_route_problems

# Envoy's x-envoy-retry-on and x-envoy-retry-grpc-on names that Istio passes through;
# a bare 3-digit status code is accepted too (Istio turns it into retriable-status-codes).
RETRY_ON_CONDITIONS = frozenset({
    "5xx", "gateway-error", "reset", "connect-failure", "envoy-ratelimited",
    "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
    "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
})
LOAD_BALANCER_SIMPLE = frozenset({"UNSPECIFIED", "ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN", "RANDOM", "PASSTHROUGH"})
H2_UPGRADE_POLICIES = frozenset({"DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"})

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", re.IGNORECASE)
# Python `re` accepts these but RE2 (Istio/Envoy) rejects them; catching them here keeps a
# config that Remora accepts loadable by Istio too.
_NOT_RE2 = re.compile(r"\(\?<?[=!]|\(\?P=|\\[1-9]")


# ---- small value checks ----------------------------------------------------------------

def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_hostname(text: str) -> bool:
    """RFC 1123 host name (what Istio's ValidateFQDN accepts), optional trailing dot."""
    name = text.removesuffix(".")
    return 0 < len(name) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in name.split("."))


def is_host_pattern(text: str) -> bool:
    """A VirtualService/DestinationRule/ServiceEntry host: name, `*.suffix`, `*` or an IP."""
    if text == "*" or is_ip(text):
        return True
    return is_hostname(text.removeprefix("*.")) if text.startswith("*.") else is_hostname(text)


class _Checks:
    """Collects problems; one method per kind of value so messages stay uniform."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def duration(self, path: str, value: str | None, *, whole_ms: bool = False, zero_ok: bool = False) -> None:
        """A duration string; with `whole_ms`, Istio's ValidateDuration on top: at least 1ms and
        to millisecond precision (Envoy's timers), except 0 where `zero_ok` (it disables)."""
        if value is None:
            return
        try:
            seconds = parse_duration(value)
        except ValueError as error:
            self.add(path, str(error))
            return
        if seconds < 0:  # parse_duration has no sign today; keep the rule if it grows one
            self.add(path, f"duration must not be negative, got {value!r}")
        if whole_ms:
            nanos = duration_nanos(value)
            if nanos == 0 and zero_ok:
                return
            if nanos < 1_000_000:
                self.add(path, f"duration must be at least 1ms, got {value!r}")
            elif nanos % 1_000_000:
                self.add(path, f"only durations to millisecond precision are supported, got {value!r}")

    def percent(self, path: str, value: float | None) -> None:
        if value is not None and not 0 <= value <= 100:
            self.add(path, f"percentage must be between 0 and 100, got {value}")

    def port(self, path: str, value: int | None) -> None:
        if value is not None and not 1 <= value <= 65535:
            self.add(path, f"port must be between 1 and 65535, got {value}")

    def non_negative(self, path: str, value: int | None) -> None:
        if value is not None and value < 0:
            self.add(path, f"must be >= 0, got {value}")

    def one_of(self, path: str, value: str | None, allowed: frozenset[str]) -> None:
        if value is not None and value not in allowed:
            self.add(path, f"unknown value {value!r}; expected one of {', '.join(sorted(allowed))}")

    def regex(self, path: str, pattern: str) -> None:
        try:
            re.compile(pattern)
        except re.error as error:
            self.add(path, f"invalid regular expression {pattern!r}: {error}")
            return
        if _NOT_RE2.search(pattern):
            self.add(path, f"regular expression {pattern!r} uses lookaround or backreferences, which RE2 (Istio, Envoy) does not support")

    def host(self, path: str, host: str) -> None:
        if not is_host_pattern(host):
            self.add(path, f"invalid host {host!r}: expected a DNS name, `*.suffix`, `*` or an IP address")

    def string_match(self, path: str, match: StringMatch, *, presence_allowed: bool = False, prefix_allowed: bool = True,
                     empty_prefix_allowed: bool = False) -> None:
        """Istio's validateStringMatch: one of exact/prefix/regex; an empty regex never, an empty
        prefix only for `uri` (Envoy's path matcher allows it, its string matcher does not)."""
        chosen = [name for name in ("exact", "prefix", "regex") if getattr(match, name) is not None]
        if match.prefix == "" and not empty_prefix_allowed:
            self.add(f"{path}.prefix", "prefix string match should not be empty")
        if match.regex == "":
            self.add(f"{path}.regex", "regex string match should not be empty")
            return
        # In headers/withoutHeaders an empty match ({}) is Istio's presence test.
        if len(chosen) > 1 or (not chosen and not presence_allowed):
            got = " and ".join(chosen) if chosen else "none"
            self.add(path, f"set exactly one of exact, prefix, regex (got {got})")
        if match.prefix is not None and not prefix_allowed:
            self.add(f"{path}.prefix", "prefix is not supported here (Istio supports exact and regex for query parameters)")
        if match.regex is not None:
            self.regex(f"{path}.regex", match.regex)


# ---- VirtualService --------------------------------------------------------------------

def normalize_header_keys(spec: VirtualServiceSpec, path: str = "spec") -> tuple[VirtualServiceSpec, list[Problem]]:
    """Lowercase header-match keys (HTTP header names are case-insensitive).

    Istio documents the keys as lowercase; normalising here means the router can compare
    against the lowercase names httptools hands it. Two keys that differ only in case
    would silently overwrite each other, so that is an error.
    """
    problems: list[Problem] = []

    def lowered(mapping: dict[str, StringMatch], where: str) -> dict[str, StringMatch]:
        result: dict[str, StringMatch] = {}
        for key, value in mapping.items():
            if key.lower() in result:
                problems.append(Problem(join_path(where, key), f"header `{key.lower()}` is matched twice (header names are case-insensitive)"))
            result[key.lower()] = value
        return result

    routes = []
    for i, route in enumerate(spec.http):
        matches = [
            msgspec.structs.replace(
                match,
                headers=lowered(match.headers, f"{path}.http[{i}].match[{j}].headers"),
                without_headers=lowered(match.without_headers, f"{path}.http[{i}].match[{j}].withoutHeaders"),
            )
            for j, match in enumerate(route.match)
        ]
        routes.append(msgspec.structs.replace(route, match=matches))
    return msgspec.structs.replace(spec, http=routes), problems


def validate_virtual_service(spec: VirtualServiceSpec, path: str = "spec") -> list[Problem]:
    checks = _Checks()
    if not spec.hosts:
        checks.add(f"{path}.hosts", "a VirtualService needs at least one host")
    for i, host in enumerate(spec.hosts):
        checks.host(f"{path}.hosts[{i}]", host)
    for i, route in enumerate(spec.http):
        _check_http_route(checks, f"{path}.http[{i}]", route)
    if not spec.http and not spec.tcp and not spec.tls:
        checks.add(path, "http, tcp or tls must be provided in virtual service")
    for i, route in enumerate(spec.tcp):
        checks.problems += tcp_route_problems(f"{path}.tcp[{i}]", route, _host_problem)
    for i, route in enumerate(spec.tls):
        checks.problems += tls_route_problems(f"{path}.tls[{i}]", route, spec, _host_problem)
    return checks.problems


def _host_problem(host: str) -> str | None:
    found = _Checks()
    found.host("", host)
    return found.problems[0].message if found.problems else None


def _check_http_route(checks: _Checks, path: str, route: HTTPRoute) -> None:
    for j, match in enumerate(route.match):
        _check_match(checks, f"{path}.match[{j}]", match)
    checks.problems += local_answer_problems(path, route)
    checks.problems += mirror_problems(path, route)
    checks.problems += cors_problems(path, route)
    for where, destination in ([(f"{path}.mirror", route.mirror)] if route.mirror is not None else []) + [
            (f"{path}.mirrors[{k}].destination", m.destination) for k, m in enumerate(route.mirrors)]:
        checks.host(f"{where}.host", destination.host)
    weights = []
    for k, destination in enumerate(route.route):
        where = f"{path}.route[{k}]"
        checks.host(f"{where}.destination.host", destination.destination.host)
        if destination.destination.port is not None:
            checks.port(f"{where}.destination.port.number", destination.destination.port.number)
        weight = destination.weight or 0
        if weight < 0:
            checks.add(f"{where}.weight", f"weight must be >= 0, got {weight}")
        weights.append(weight)
    if len(weights) > 1 and all(w == 0 for w in weights):
        checks.add(f"{path}.route", "weights of several destinations are all zero (a missing weight counts as 0)")
    checks.problems += header_operation_problems(f"{path}.headers", route.headers)
    for k, destination in enumerate(route.route):
        checks.problems += header_operation_problems(f"{path}.route[{k}].headers", destination.headers)
    if route.rewrite is not None:
        if route.rewrite.uri is not None and route.rewrite.uri_regex_rewrite is not None:
            checks.add(f"{path}.rewrite", "set only one of uri and uriRegexRewrite")
        if route.rewrite.uri_regex_rewrite is not None:
            checks.regex(f"{path}.rewrite.uriRegexRewrite.match", route.rewrite.uri_regex_rewrite.match)
    checks.duration(f"{path}.timeout", route.timeout, whole_ms=True)
    if route.retries is not None:
        _check_retries(checks, f"{path}.retries", route.retries)
    if route.fault is not None:
        _check_fault(checks, f"{path}.fault", route.fault)


def _check_match(checks: _Checks, path: str, match: HTTPMatchRequest) -> None:
    for name, value in (("uri", match.uri), ("scheme", match.scheme), ("method", match.method), ("authority", match.authority)):
        if value is not None:
            checks.string_match(f"{path}.{name}", value, empty_prefix_allowed=name == "uri")
    for name, mapping in (("headers", match.headers), ("withoutHeaders", match.without_headers)):
        for key, value in mapping.items():
            if name == "withoutHeaders" and value.regex == "*":
                # Istio reads regex "*" here as "present"; Remora's spelling of that is {}.
                checks.add(join_path(join_path(f"{path}.{name}", key), "regex"),
                           "regex `*` (Istio: the header is present) is not supported by Remora: write "
                           f"`{key}: {{}}` for the same match")
                continue
            checks.string_match(join_path(f"{path}.{name}", key), value, presence_allowed=True)
    for key, value in match.query_params.items():
        checks.string_match(join_path(f"{path}.queryParams", key), value, prefix_allowed=False)
    checks.port(f"{path}.port", match.port)


def _check_retries(checks: _Checks, path: str, retries: HTTPRetry) -> None:
    checks.non_negative(f"{path}.attempts", retries.attempts)
    if retries.attempts == 0 and (retries.per_try_timeout is not None or retries.retry_on is not None
                                  or retries.retry_remote_localities is not None):
        # Istio's ValidateHTTPRetry: attempts 0 (or unset) disables retries, so a policy beside it is a mistake.
        checks.add(f"{path}.attempts", "retry policy configured when attempts are 0 (disabled): set attempts")
    checks.duration(f"{path}.perTryTimeout", retries.per_try_timeout, whole_ms=True)
    if retries.retry_on is None:
        return
    for condition in retries.retry_on.split(","):
        condition = condition.strip()
        if condition in RETRY_ON_CONDITIONS or re.fullmatch(r"[1-5]\d\d", condition):
            continue
        checks.add(f"{path}.retryOn", f"unknown retry condition {condition!r}; expected a status code or one of {', '.join(sorted(RETRY_ON_CONDITIONS))}")


def _check_percentage(checks: _Checks, path: str, percentage: Percent | None) -> None:
    if percentage is not None:
        checks.percent(f"{path}.percentage.value", percentage.value)


def _check_fault(checks: _Checks, path: str, fault: HTTPFaultInjection) -> None:
    if fault.delay is None and fault.abort is None:
        checks.add(path, "fault needs a delay or an abort")
    if fault.delay is not None:
        where = f"{path}.delay"
        if fault.delay.fixed_delay is None:
            checks.add(f"{where}.fixedDelay", "a fault delay needs fixedDelay")
        checks.duration(f"{where}.fixedDelay", fault.delay.fixed_delay, whole_ms=True)
        _check_percentage(checks, where, fault.delay.percentage)
        checks.percent(f"{where}.percent", fault.delay.percent)
    if fault.abort is not None:
        where = f"{path}.abort"
        if fault.abort.http_status is None and fault.abort.grpc_status is None:
            checks.add(f"{where}.httpStatus", "a fault abort needs httpStatus (or grpcStatus)")
        if fault.abort.http_status is not None and not 200 <= fault.abort.http_status <= 599:
            checks.add(f"{where}.httpStatus", f"abort status must be between 200 and 599, got {fault.abort.http_status}")
        if fault.abort.grpc_status is not None and fault.abort.grpc_status not in GRPC_STATUS_NAMES:
            checks.add(f"{where}.grpcStatus", f"gRPC status {fault.abort.grpc_status!r} is not supported: use a status "
                                              "name such as NOT_FOUND or UNAVAILABLE")
        _check_percentage(checks, where, fault.abort.percentage)


# ---- DestinationRule -------------------------------------------------------------------

def validate_destination_rule(spec: DestinationRuleSpec, path: str = "spec") -> list[Problem]:
    checks = _Checks()
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


def _check_traffic_policy(checks: _Checks, path: str, policy: TrafficPolicy | PortTrafficPolicy) -> None:
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


def _check_load_balancer(checks: _Checks, path: str, lb: LoadBalancerSettings) -> None:
    checks.one_of(f"{path}.simple", lb.simple, LOAD_BALANCER_SIMPLE)
    checks.duration(f"{path}.warmupDurationSecs", lb.warmup_duration_secs)
    if lb.simple is not None and lb.consistent_hash is not None:
        checks.add(path, "set only one of simple and consistentHash")
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


def _check_connection_pool(checks: _Checks, path: str, pool: ConnectionPoolSettings) -> None:
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


def _check_outlier_detection(checks: _Checks, path: str, outlier: OutlierDetection) -> None:
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


# ---- ServiceEntry and WorkloadEntry ----------------------------------------------------------
