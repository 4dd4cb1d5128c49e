"""Istio's rules for a VirtualService's header operations, gRPC fault statuses, and what an
http route answers with (`route`, `redirect`, `directResponse`) (pkg/config/validation:
ValidateHTTPHeaderOperationName, ValidateHTTPHeaderWithAuthorityOperationName,
ValidateHTTPHeaderValue, validateGRPCStatus, validateHTTPRoute, validateHTTPRedirect,
validateHTTPDirectResponse), returned as Problems for validate.py."""
from __future__ import annotations

import base64
import binascii
import re

from remora.config.duration import parse_duration
from remora.config.model import Headers, HTTPRoute
from remora.config.schema import Problem, join_path

# Istio's grpc.SupportedGRPCStatus: the names of grpc/doc/statuscodes.md (config does not import
# the router's table, proxy/router/grpc.py, which also maps them to codes).
GRPC_STATUS_NAMES = frozenset({
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
})

_HEADER_VALUE = re.compile("[^\x00-\x08\x0a-\x1f\x7f]*")


def header_operation_problems(path: str, headers: Headers | None) -> list[Problem]:
    """Istio's header-operation rules: names non-empty; no pseudo-header (`:x`) and no Host, except
    that request add/set may name the authority (`:authority`, `host`); values without control characters."""
    problems: list[Problem] = []
    for side, operations in (("request", headers.request if headers else None),
                             ("response", headers.response if headers else None)):
        if operations is None:
            continue
        named = [(f"{path}.{side}.{op}", key, value) for op, mapping in (("set", operations.set), ("add", operations.add))
                 for key, value in mapping.items()]
        for where, key, value in named + [(f"{path}.{side}.remove[{i}]", key, None) for i, key in enumerate(operations.remove)]:
            at = where if where.endswith("]") else join_path(where, key)
            authority_ok = side == "request" and not where.endswith("]") and key.lower() in (":authority", "host")
            if not key:
                problems.append(Problem(at, "header name cannot be empty"))
            elif (key.startswith(":") or key.lower() == "host") and not authority_ok:
                problems.append(Problem(at, f"invalid header {key!r}: pseudo-headers and Host cannot be set or removed here"))
            if value is not None and not _HEADER_VALUE.fullmatch(value):
                problems.append(Problem(at, "header value must not contain control characters"))
    return problems


REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
DERIVE_PORTS = frozenset({"FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"})
DIRECT_BODY_LIMIT = 1 << 20    # Istio refuses a directResponse body over 1 MiB


def local_answer_problems(path: str, route: HTTPRoute) -> list[Problem]:
    """Istio's rules for what a route answers with: exactly one of `route`, `redirect` and
    `directResponse`; redirect codes 3xx; a direct response status in 200..599 and a body
    of one kind, at most 1 MiB."""
    problems: list[Problem] = []
    redirect, direct = route.redirect, route.direct_response
    if redirect is None and direct is None and not route.route:
        problems.append(Problem(f"{path}.route", "HTTP route, redirect or direct response is required"))
    if redirect is not None and route.route:
        problems.append(Problem(f"{path}.redirect", "HTTP route cannot contain both route and redirect"))
    if direct is not None and route.route:
        problems.append(Problem(f"{path}.directResponse", "HTTP route cannot contain both route and direct response"))
    if redirect is not None and direct is not None:
        problems.append(Problem(f"{path}.directResponse",
                                "HTTP route cannot contain both redirect and direct response"))
    if redirect is not None:
        where = f"{path}.redirect"
        if route.rewrite is not None:
            problems.append(Problem(f"{path}.rewrite", "HTTP route rule cannot contain both rewrite and redirect"))
        if redirect.uri == "" and redirect.authority in (None, "") and redirect.port is None \
                and redirect.scheme in (None, "") and redirect.derive_port is None:
            problems.append(Problem(where, "redirect must specify URI, authority, port, derivePort or scheme"))
        if redirect.redirect_code is not None and redirect.redirect_code not in REDIRECT_CODES:
            problems.append(Problem(f"{where}.redirectCode", f"{redirect.redirect_code} is not a valid redirect "
                                    f"code, must be {', '.join(map(str, sorted(REDIRECT_CODES)))}"))
        if redirect.port is not None and redirect.derive_port is not None:
            problems.append(Problem(f"{where}.port", "cannot be set together with derivePort"))
        if redirect.derive_port is not None and redirect.derive_port not in DERIVE_PORTS:
            problems.append(Problem(f"{where}.derivePort", f"unknown value {redirect.derive_port!r}; expected "
                                    f"one of {', '.join(sorted(DERIVE_PORTS))}"))
        if redirect.port is not None and not 1 <= redirect.port <= 65535:
            problems.append(Problem(f"{where}.port", f"port number {redirect.port} must be in the range 1..65535"))
    if direct is not None:
        where = f"{path}.directResponse"
        if not 200 <= direct.status <= 599:
            problems.append(Problem(f"{where}.status", f"status {direct.status} must be in the range 200 - 599"))
        body = direct.body
        if body is not None:
            if body.string is not None and body.bytes is not None:
                problems.append(Problem(f"{where}.body", "set only one of string and bytes"))
            size = len(body.string.encode()) if body.string is not None else 0
            if body.bytes is not None:
                try:
                    size = len(base64.b64decode(body.bytes, validate=True))
                except (binascii.Error, ValueError):
                    problems.append(Problem(f"{where}.body.bytes", "not valid base64"))
            if size > DIRECT_BODY_LIMIT:
                problems.append(Problem(f"{where}.body", f"size {size} exceeds the 1 MiB limit"))
    return problems


def mirror_problems(path: str, route: HTTPRoute) -> list[Problem]:
    """Istio's mirror rules: `mirror` or `mirrors`, not both; percentages 0..100; no mirroring
    on a route the proxy answers itself."""
    problems: list[Problem] = []
    if route.mirror is not None and route.mirrors:
        problems.append(Problem(f"{path}.mirrors", "mirror and mirrors cannot both be set"))
    mirrored = route.mirror is not None or bool(route.mirrors)
    if mirrored and (route.redirect is not None or route.direct_response is not None):
        problems.append(Problem(f"{path}.mirror", "a route with redirect or directResponse sends nothing upstream "
                                "to mirror"))
    percentages = [(f"{path}.mirrorPercentage.value", route.mirror_percentage)]
    percentages += [(f"{path}.mirrors[{k}].percentage.value", m.percentage) for k, m in enumerate(route.mirrors)]
    for where, percent in percentages:
        if percent is not None and not 0 <= percent.value <= 100:
            problems.append(Problem(where, f"percentage {percent.value} must be in the range 0..100"))
    if route.mirror_percentage is not None and route.mirror is None:
        problems.append(Problem(f"{path}.mirrorPercentage", "mirrorPercentage goes with mirror (mirrors[] carry "
                                "their own percentage)"))
    return problems


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
UNMATCHED_PREFLIGHTS = frozenset({"FORWARD", "IGNORE"})


def cors_problems(path: str, route: HTTPRoute) -> list[Problem]:
    """Istio's CORS policy rules (validateCORSPolicy): origins non-empty, methods known,
    header names tokens, maxAge whole seconds."""
    cors = route.cors_policy
    if cors is None:
        return []
    where = f"{path}.corsPolicy"
    problems: list[Problem] = []
    for i, origin in enumerate(cors.allow_origins):
        if origin.exact is None and origin.prefix is None and origin.regex is None:
            problems.append(Problem(f"{where}.allowOrigins[{i}]", "'exact', 'prefix' or 'regex' is required"))
        elif origin.regex is not None:
            try:
                re.compile(origin.regex)
            except re.error as error:
                problems.append(Problem(f"{where}.allowOrigins[{i}].regex", f"invalid regular expression: {error}"))
    for i, method in enumerate(cors.allow_methods):
        if method not in HTTP_METHODS:
            problems.append(Problem(f"{where}.allowMethods[{i}]", f"{method!r} is not a valid HTTP method"))
    for field, names in (("allowHeaders", cors.allow_headers), ("exposeHeaders", cors.expose_headers)):
        for i, name in enumerate(names):
            if not _TOKEN.fullmatch(name):
                problems.append(Problem(f"{where}.{field}[{i}]", f"{name!r} is not a valid header name"))
    if cors.max_age is not None:
        try:
            seconds = parse_duration(cors.max_age)
        except ValueError as error:
            problems.append(Problem(f"{where}.maxAge", str(error)))
        else:
            if seconds != int(seconds):
                problems.append(Problem(f"{where}.maxAge", "max_age duration is accurate only to seconds"))
    if cors.unmatched_preflights is not None and cors.unmatched_preflights not in UNMATCHED_PREFLIGHTS:
        problems.append(Problem(f"{where}.unmatchedPreflights", f"unknown value {cors.unmatched_preflights!r}; "
                                "expected FORWARD or IGNORE"))
    return problems
