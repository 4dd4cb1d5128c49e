"""Istio's rules for a VirtualService's header operations and gRPC fault statuses
(pkg/config/validation: ValidateHTTPHeaderOperationName, ValidateHTTPHeaderWithAuthorityOperationName,
ValidateHTTPHeaderValue, validateGRPCStatus), returned as Problems for validate.py."""
from __future__ import annotations

import re

from remora.config.model import Headers
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
