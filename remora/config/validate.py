"""Semantic rules of VirtualService, applied after the schema check (DestinationRule:
validate_destination_rule.py; ServiceEntry and WorkloadEntry: validate_entries.py; the
value checks all of them share: field_checks.py).

The schema (model.py + schema.py) says which fields exist and their types; this module
says which values make sense, following Istio's own validation where Remora implements
the feature (Istio: pilot/pkg/config/validation) and Envoy's semantics where Istio
defers to it (retry_on names, regexes). Every rule returns a `Problem` with a field path
so that the loader can name file, resource and field. Rules that need the whole set
(destination hosts, subsets) live in `references.py`.
"""
from __future__ import annotations

import re

import msgspec

from remora.config.field_checks import FieldChecks
from remora.config.model import (
    HTTPFaultInjection,
    HTTPMatchRequest,
    HTTPRetry,
    HTTPRoute,
    Percent,
    StringMatch,
    VirtualServiceSpec,
)
from remora.config.schema import Problem, join_path
from remora.config.validate_http import GRPC_STATUS_NAMES, header_operation_problems
from remora.config.validate_http import cors_problems, local_answer_problems, mirror_problems
from remora.config.validate_tcp import tcp_route_problems, tls_route_problems

# Envoy's x-envoy-retry-on and x-envoy-retry-grpc-on names that Istio passes through;
# a bare 3-digit status code is accepted too (Istio turns it into retriable-status-codes).
RETRY_ON_CONDITIONS = frozenset({
    "5xx", "gateway-error", "reset", "connect-failure", "envoy-ratelimited",
    "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
    "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
})


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
    checks = FieldChecks()
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
    found = FieldChecks()
    found.host("", host)
    return found.problems[0].message if found.problems else None


def _check_http_route(checks: FieldChecks, path: str, route: HTTPRoute) -> None:
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


def _check_match(checks: FieldChecks, path: str, match: HTTPMatchRequest) -> None:
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


def _check_retries(checks: FieldChecks, path: str, retries: HTTPRetry) -> None:
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


def _check_percentage(checks: FieldChecks, path: str, percentage: Percent | None) -> None:
    if percentage is not None:
        checks.percent(f"{path}.percentage.value", percentage.value)


def _check_fault(checks: FieldChecks, path: str, fault: HTTPFaultInjection) -> None:
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
