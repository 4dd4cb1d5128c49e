"""Rules of Istio's PeerAuthentication and AuthorizationPolicy (security.istio.io).

Applied after the schema check, following Istio's own validation where Remora implements
the feature: mTLS modes, `portLevelMtls` only on a workload policy (Istio's rule, because
a mesh- or namespace-wide policy has no single workload whose ports it could name),
ALLOW/DENY/AUDIT actions (CUSTOM needs an external authorizer Remora does not have), and
the `when` keys the evaluator in `remora.proxy.security.authz` can answer. Match values use
Istio's four forms: exact `abc`, prefix `abc*`, suffix `*abc`, presence `*`; anything
else with a `*` would silently never match, so it is an error here.
"""
from __future__ import annotations

import ipaddress
import re

from remora.config.model import TelemetrySelector
from remora.config.model_policy import (AuthorizationPolicySpec, AuthzCondition, AuthzOperation, AuthzSource,
                                        PeerAuthenticationSpec)
from remora.config.path_templates import is_template, template_problem
from remora.config.schema import Problem, join_path

MTLS_MODES = frozenset({"UNSET", "DISABLE", "PERMISSIVE", "STRICT"})
AUTHZ_ACTIONS = frozenset({"ALLOW", "DENY", "AUDIT"})
# `when` keys the evaluator answers; request.headers[NAME] is matched by HEADER_KEY.
CONDITION_KEYS = frozenset({"source.principal", "source.namespace", "source.ip", "destination.port",
                            "request.auth.principal", "request.auth.audiences", "request.auth.presenter"})
HEADER_KEY = re.compile(r"request\.headers\[(?P<name>[^\[\]]+)\]")
# request.auth.claims[name] and nested request.auth.claims[a][b] (Istio's form).
CLAIM_KEY = re.compile(r"request\.auth\.claims((?:\[[^\[\]]+\])+)")


def is_match_pattern(value: str) -> bool:
    """Istio's string forms: exact, `prefix*`, `*suffix`, or `*` alone."""
    inner = value[1:] if value.startswith("*") else value
    inner = inner[:-1] if inner.endswith("*") and not value.startswith("*") else inner
    return "*" not in inner


def _selector(path: str, selector: TelemetrySelector | None, problems: list[Problem]) -> None:
    if selector is None:
        return
    for key, value in selector.match_labels.items():
        where = join_path(f"{path}.selector.matchLabels", key)
        if not key:
            problems.append(Problem(where, "label keys must not be empty"))
        if "*" in key or "*" in value:
            problems.append(Problem(where, "wildcards are not allowed in matchLabels"))


def validate_peer_authentication(spec: PeerAuthenticationSpec, path: str = "spec") -> list[Problem]:
    problems: list[Problem] = []
    _selector(path, spec.selector, problems)

    def mode(where: str, value: str | None) -> None:
        if value is not None and value not in MTLS_MODES:
            problems.append(Problem(where, f"unknown mTLS mode {value!r}; expected one of {', '.join(sorted(MTLS_MODES))}"))

    if spec.mtls is not None:
        mode(f"{path}.mtls.mode", spec.mtls.mode)
    if spec.port_level_mtls and (spec.selector is None or not spec.selector.match_labels):
        problems.append(Problem(f"{path}.portLevelMtls", "portLevelMtls needs a workload selector "
                                "(Istio allows port-level mTLS only on a policy with selector.matchLabels)"))
    if spec.port_level_mtls is not None and not spec.port_level_mtls:
        problems.append(Problem(f"{path}.portLevelMtls", "portLevelMtls must name at least one port "
                                "(Istio's CRD: minProperties 1); remove it to set no port-level mode"))
    for port, setting in (spec.port_level_mtls or {}).items():
        where = f"{path}.portLevelMtls.{port}"
        if not 1 <= port <= 65535:
            problems.append(Problem(where, f"port must be between 1 and 65535, got {port}"))
        mode(f"{where}.mode", setting.mode)
    return problems


def validate_authorization_policy(spec: AuthorizationPolicySpec, path: str = "spec") -> list[Problem]:
    problems: list[Problem] = []
    _selector(path, spec.selector, problems)
    if spec.action == "CUSTOM":
        problems.append(Problem(f"{path}.action", "action CUSTOM (external authorization) is not supported by Remora; "
                                "use ALLOW, DENY or AUDIT"))
    elif spec.action is not None and spec.action not in AUTHZ_ACTIONS:
        problems.append(Problem(f"{path}.action", f"unknown action {spec.action!r}; expected one of {', '.join(sorted(AUTHZ_ACTIONS))}"))
    for i, rule in enumerate(spec.rules):
        where = f"{path}.rules[{i}]"
        for j, entry in enumerate(rule.from_):
            _source(f"{where}.from[{j}].source", entry.source, problems)
        for j, entry in enumerate(rule.to):
            _operation(f"{where}.to[{j}].operation", entry.operation, problems)
        for j, condition in enumerate(rule.when):
            _condition(f"{where}.when[{j}]", condition, problems)
    return problems


def _patterns(where: str, field: str, values: list[str], problems: list[Problem]) -> None:
    for k, value in enumerate(values):
        if not value:
            problems.append(Problem(f"{where}.{field}[{k}]", "must not be empty"))
        elif field in ("paths", "notPaths") and is_template(value):
            problem = template_problem(value)   # {*} and {**}: path_templates.py
            if problem is not None:
                problems.append(Problem(f"{where}.{field}[{k}]", problem))
        elif not is_match_pattern(value):
            problems.append(Problem(f"{where}.{field}[{k}]", f"invalid pattern {value!r}: `*` may only be the whole "
                                    "value, its first character (suffix match) or its last (prefix match)"))


def _ip_blocks(where: str, field: str, values: list[str], problems: list[Problem]) -> None:
    for k, value in enumerate(values):
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            problems.append(Problem(f"{where}.{field}[{k}]", f"invalid IP address or CIDR block {value!r}"))


def _ports(where: str, field: str, values: list[str], problems: list[Problem]) -> None:
    for k, value in enumerate(values):
        if not (value.isdigit() and 1 <= int(value) <= 65535):
            problems.append(Problem(f"{where}.{field}[{k}]", f"expected a port number 1-65535, got {value!r}"))


def _non_empty(where: str, part: AuthzSource | AuthzOperation | None, problems: list[Problem]) -> bool:
    if part is None:
        problems.append(Problem(where, "required field is missing"))
        return False
    if not any(getattr(part, name) for name in part.__struct_fields__):
        problems.append(Problem(where, "must not be empty, as in Istio (to match every request, "
                                "leave the whole `from` / `to` list out)"))
        return False
    return True


def _source(where: str, source: AuthzSource | None, problems: list[Problem]) -> None:
    if not _non_empty(where, source, problems):
        return
    for field in ("principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals",
                  "namespaces", "notNamespaces"):
        _patterns(where, field, getattr(source, _snake(field)), problems)
    _ip_blocks(where, "ipBlocks", source.ip_blocks, problems)
    _ip_blocks(where, "notIpBlocks", source.not_ip_blocks, problems)


def _operation(where: str, operation: AuthzOperation | None, problems: list[Problem]) -> None:
    if not _non_empty(where, operation, problems):
        return
    for field in ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths"):
        _patterns(where, field, getattr(operation, _snake(field)), problems)
    _ports(where, "ports", operation.ports, problems)
    _ports(where, "notPorts", operation.not_ports, problems)


def _condition(where: str, condition: AuthzCondition, problems: list[Problem]) -> None:
    key = condition.key
    if key not in CONDITION_KEYS and not HEADER_KEY.fullmatch(key) and not CLAIM_KEY.fullmatch(key):
        problems.append(Problem(f"{where}.key", f"condition key {key!r} is not supported by Remora; use one of "
                                + ", ".join(sorted(CONDITION_KEYS | {"request.headers[NAME]", "request.auth.claims[NAME]"}))))
        return
    if not condition.values and not condition.not_values:
        problems.append(Problem(where, "set values or notValues (or both)"))
    if key == "destination.port":
        _ports(where, "values", condition.values, problems)
        _ports(where, "notValues", condition.not_values, problems)
    elif key == "source.ip":
        _ip_blocks(where, "values", condition.values, problems)
        _ip_blocks(where, "notValues", condition.not_values, problems)
    else:
        _patterns(where, "values", condition.values, problems)
        _patterns(where, "notValues", condition.not_values, problems)


def _snake(camel: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), camel)
