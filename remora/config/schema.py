"""Raw YAML spec -> typed spec, reporting every schema problem with its field path.

msgspec alone stops at the first problem and prints dict keys as `[...]`, so a user
fixing a file would learn about one typo per run and not which header was wrong. This
module walks the raw data against the model's type tree first (through
`msgspec.inspect`, so the model stays the single source of field names and types),
collects all unknown fields, missing fields and wrong types with exact paths such as
`spec.http[0].match[0].headers.user-agent.regex`, and only then lets
`msgspec.convert` build the frozen Structs. An explicit YAML `null` on a field that has
a default means "not set", as in Kubernetes.
"""
from __future__ import annotations

import difflib
import functools
import re
from typing import Any, NamedTuple, TypeVar

import msgspec
import msgspec.inspect as mi

T = TypeVar("T")


class Problem(NamedTuple):
    """One thing wrong with a spec: where (dotted/indexed path) and what."""

    path: str
    message: str


class UnknownField(Problem):
    """A key the model does not have; the rest of the spec can still be read without it."""


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def join_path(path: str, key: str | int) -> str:
    """Append a list index or a mapping key: `spec.http[0]`, `labels["app.k8s.io/x"]`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f'{path}["{key}"]'


# Istio fields that exist in Istio's API but that Remora does not implement. msgspec
# would call them unknown; telling the user "not supported by Remora yet" instead keeps
# them from hunting for a typo in a valid Istio file. The list is every field of Istio's
# CRDs (manifests/charts/base/files/crd-all.gen.yaml, istio/istio of August 2026) that the model lacks.
NOT_SUPPORTED_YET: dict[str, frozenset[str]] = {
    "HTTPRoute": frozenset({
        "delegate", "mirrorPercent", "mirror_percent",
    }),
    "FaultDelay": frozenset({"exponentialDelay"}),
    "ServerTLSSettings": frozenset({"tlsCertificates"}),
    "HTTPRetry": frozenset({"backoff", "retryIgnorePreviousHosts"}),
    "HTTPSettings": frozenset({"http2KeepAlive"}),
    "OutlierDetection": frozenset({"outlierDetectionHttpErrorCodes"}),
    "JwtRule": frozenset({"presence", "spaceDelimitedClaims"}),
    "FaultAbort": frozenset({"http2Error"}),
    "TrafficPolicy": frozenset({"tunnel", "proxyProtocol", "retryBudget"}),
    "PortTrafficPolicy": frozenset({"retryBudget"}),
    "LoadBalancerSettings": frozenset({"warmup", "backendUtilization", "zoneAwareLbSetting"}),
    "ClientTLSSettings": frozenset({"caCrl"}),
    "HTTPCookie": frozenset({"attributes"}),
    "TelemetrySpec": frozenset({"targetRef", "targetRefs"}),
    "AuthorizationPolicySpec": frozenset({"targetRef", "targetRefs", "provider"}),
    # Original-client IPs need XFF trust config.
    "AuthzSource": frozenset({
        "remoteIpBlocks", "notRemoteIpBlocks", "serviceAccounts", "notServiceAccounts",
        "trustDomains", "notTrustDomains",
    }),
    "TelemetryTracing": frozenset({"customTags", "disableContextPropagation", "enableIstioTags"}),
    "TelemetryAccessLogging": frozenset({"filter"}),
}

# Fields people write that Istio never had, with the pointer they need.
_MISTAKE_HINTS: dict[str, str] = {
    "circuitBreaker": (
        "Istio has no circuitBreaker field: circuit breaking is configured with "
        "connectionPool (limits) and outlierDetection (ejection)"
    ),
    "jwks_uri": "Istio's old spelling: write jwksUri",
}


def _message_name(struct_name: str) -> str:
    return struct_name.removesuffix("Spec")


_TYPE_WORDS: dict[type, str] = {
    mi.StrType: "a string",
    mi.IntType: "an integer",
    mi.FloatType: "a number",
    mi.BoolType: "a boolean",
    mi.ListType: "a list",
    mi.DictType: "a mapping",
    mi.StructType: "a mapping",
}


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {value!r}"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _type_error(path: str, expected: mi.Type, value: Any) -> Problem:
    message = f"expected {_TYPE_WORDS.get(type(expected), str(expected))}, got {_describe(value)}"
    if isinstance(expected, mi.StrType) and isinstance(value, (bool, int, float)):
        # YAML turns unquoted true/1/1.10 into non-strings; the fix is quoting.
        message += " (quote it in YAML)"
    elif type(value).__name__ in ("date", "datetime"):
        message += " (YAML read it as a date; quote it)"
    return Problem(path, message)


def _unknown_field(path: str, struct: mi.StructType, key: Any) -> Problem:
    name = struct.cls.__name__
    where = join_path(path, key) if isinstance(key, str) else path
    if key in NOT_SUPPORTED_YET.get(name, ()):
        return UnknownField(where, f"`{key}` is an Istio field not supported by Remora yet")
    if key in _MISTAKE_HINTS:
        return UnknownField(where, f"unknown field `{key}`: {_MISTAKE_HINTS[key]}")
    known = [f.encode_name for f in struct.fields]
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.7)
    hint = f"did you mean `{close[0]}`?" if close else "known fields: " + ", ".join(known)
    return UnknownField(where, f"unknown field `{key}` in {_message_name(name)} ({hint})")


def _check(value: Any, expected: mi.Type, path: str, problems: list[Problem]) -> Any:
    """Append problems for `value` against `expected`; return the value with unset nulls dropped."""
    if isinstance(expected, mi.UnionType):
        if value is None and any(isinstance(t, mi.NoneType) for t in expected.types):
            return None
        concrete = [t for t in expected.types if not isinstance(t, mi.NoneType)]
        if len(concrete) == 1:
            return _check(value, concrete[0], path, problems)
        return value  # the model has no other unions; msgspec.convert has the last word
    if isinstance(expected, mi.AnyType):
        return value
    if isinstance(expected, mi.StructType):
        return _check_struct(value, expected, path, problems)
    if isinstance(expected, mi.ListType):
        if not isinstance(value, list):
            problems.append(_type_error(path, expected, value))
            return value
        return [_check(item, expected.item_type, join_path(path, i), problems) for i, item in enumerate(value)]
    if isinstance(expected, mi.DictType):
        if not isinstance(value, dict):
            problems.append(_type_error(path, expected, value))
            return value
        cleaned = {}
        int_keys = isinstance(expected.key_type, mi.IntType)  # Istio's map<uint32, ...>: port numbers
        for key, item in value.items():
            if int_keys and isinstance(key, str) and key.isdigit():
                key = int(key)  # JSON (a control-server push) can only spell keys as strings
            if int_keys and not (isinstance(key, int) and not isinstance(key, bool)):
                problems.append(Problem(join_path(path, str(key)), f"keys must be integers, got {_describe(key)}"))
                continue
            if not int_keys and not isinstance(key, str):
                problems.append(Problem(join_path(path, str(key)), f"keys must be strings, got {_describe(key)} (quote it in YAML)"))
                continue
            cleaned[key] = _check(item, expected.value_type, join_path(path, str(key)), problems)
        return cleaned
    if isinstance(expected, mi.StrType):
        ok = isinstance(value, str)
    elif isinstance(expected, mi.BoolType):
        ok = isinstance(value, bool)
    elif isinstance(expected, mi.IntType):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(expected, mi.FloatType):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = True  # a type the walker does not know: leave it to msgspec.convert
    if not ok:
        problems.append(_type_error(path, expected, value))
    return value


def _check_struct(value: Any, struct: mi.StructType, path: str, problems: list[Problem]) -> Any:
    if not isinstance(value, dict):
        problems.append(_type_error(path, struct, value))
        return value
    fields = {f.encode_name: f for f in struct.fields}
    cleaned: dict[str, Any] = {}
    for key, item in value.items():
        field = fields.get(key) if isinstance(key, str) else None
        if field is None:
            problems.append(_unknown_field(path, struct, key))
            continue
        if item is None:
            # `field:` with nothing after it means "not set"; a required one is reported below.
            continue
        cleaned[key] = _check(item, field.type, join_path(path, key), problems)
    for name, field in fields.items():
        if field.required and value.get(name) is None:
            problems.append(Problem(join_path(path, name), "required field is missing"))
    return cleaned


_MSGSPEC_ERROR = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def problem_from_validation_error(error: msgspec.ValidationError, root: str = "spec") -> Problem:
    """Turn "Object contains unknown field `foo` - at `$.http[0]`" into a Problem."""
    match = _MSGSPEC_ERROR.match(str(error))
    assert match is not None  # the pattern matches any text
    message, path = match.group("message"), match.group("path") or ""
    unknown = re.fullmatch(r"Object contains unknown field `(.+)`", message)
    if unknown:
        return Problem(f"{root}{path}.{unknown.group(1)}", f"unknown field `{unknown.group(1)}`")
    return Problem(root + path, message[:1].lower() + message[1:])


@functools.cache
def _type_info(spec_type: type) -> Any:
    """msgspec's description of a spec type: a few ms to compute, so once per type, not per document."""
    return mi.type_info(spec_type)


def convert_spec(raw: Any, spec_type: type[T], root: str = "spec") -> tuple[T | None, list[Problem]]:
    """Return (typed spec, every problem found).

    The spec is None when a value has the wrong type or a required field is missing. When
    the only problems are unknown fields, the spec is built without them, so that the
    semantic rules can still report their findings in the same run (the resource is
    rejected either way).
    """
    problems: list[Problem] = []
    cleaned = _check({} if raw is None else raw, _type_info(spec_type), root, problems)
    if not all(isinstance(problem, UnknownField) for problem in problems):
        return None, problems
    try:
        return msgspec.convert(cleaned, type=spec_type), problems
    except msgspec.ValidationError as error:  # a rule the walker does not model
        return None, problems + [problem_from_validation_error(error, root)]
