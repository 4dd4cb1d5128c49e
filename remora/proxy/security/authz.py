"""Istio AuthorizationPolicy, compiled for one workload into a cheap per-request check.

Semantics follow Istio (security.istio.io AuthorizationPolicy):
- A policy applies to a workload when it is in the root namespace (mesh-wide) or in the
  workload's namespace, and its `selector.matchLabels` (if any) are all on the workload.
- DENY policies are evaluated first: one matching DENY denies. Then, if any ALLOW policy
  applies, some ALLOW must match, else the request is denied; no ALLOW policy = allow.
  AUDIT policies never change the outcome; a matching one only sets `Decision.audit`.
- A policy matches if any of its rules matches; no rules matches nothing (so an ALLOW
  policy with `spec: {}` denies everything: Istio's deny-all). A rule matches if its
  `from` (any entry), `to` (any entry) and every `when` condition match; an absent part
  matches everything, so the empty rule `{}` matches every request.
- Inside a source/operation every set field must match; a field matches when any of its
  values does and none of its not-variant's values does.
- JWT attributes (`requestPrincipals`, `request.auth.principal|audiences|presenter|claims[..]`)
  read `AuthzRequest.request_auth`, the token jwt_authn.py verified; without one they
  match no value (only not-lists pass). A list claim matches when any of its strings does.
- Strings: exact `abc`, prefix `abc*`, suffix `*abc`, presence `*` (validated by
  remora.config.validate_security); paths may also be templates with `{*}` (one segment)
  and `{**}` (any segments), remora.config.path_templates. Hosts compare
  case-insensitively, with or without the port; paths are compared without the query string.

All matching functions are built once per config (`Authorizer(...)`), so `check` only
calls small closures: no parsing, no pattern compiling, no allocation beyond the result.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from remora.config.model import Resource
from remora.config.model_policy import AuthorizationPolicySpec, AuthzCondition, AuthzOperation, AuthzRule, AuthzSource
from remora.config.path_templates import is_template, template_regex
from remora.config.mesh_rules import ROOT_NAMESPACE, applies_to  # noqa: F401 (applies_to re-exported)


class AuthzRequest:
    """What the evaluator knows about one inbound request (built per checked request: a
    plain slots class, several times cheaper to make than a frozen dataclass)."""

    __slots__ = ("source_principal", "source_namespace", "source_ip", "host", "method", "path",
                 "port", "headers", "request_auth")

    def __init__(self, source_principal: str | None, source_namespace: str | None, source_ip: str,
                 host: str, method: str, path: str, port: int, headers=None, request_auth=None) -> None:
        self.source_principal = source_principal  # peer identity from mTLS, `cluster.local/ns/NS/sa/SA`; None if plaintext
        self.source_namespace = source_namespace  # the namespace in that identity; None if plaintext
        self.source_ip = source_ip
        self.host = host
        self.method = method
        self.path = path
        self.port = port                          # the destination (inbound) port
        self.headers = headers if headers is not None else {}  # lower-case names -> value (`.get`)
        self.request_auth = request_auth          # the verified JWT (jwt_authn.VerifiedJwt); None without one

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"AuthzRequest({fields})"


class Decision(NamedTuple):
    allowed: bool
    policy: str | None   # "namespace/name" of the deciding policy; None: no policy decided
    audit: bool = False  # some AUDIT policy matched


Predicate = Callable[[AuthzRequest], bool]


def _always(_: AuthzRequest) -> bool:
    return True


def _any_string(patterns: list[str], fold_case: bool = False) -> Callable[[str], bool]:
    """Istio's four string forms (exact, `prefix*`, `*suffix`, presence `*`), any of them,
    as one function of the value: a set lookup and two tuple startswith/endswith calls."""
    if fold_case:
        patterns = [p.lower() for p in patterns]
    if "*" in patterns:
        return lambda value: True
    exact = frozenset(p for p in patterns if not p.startswith("*") and not p.endswith("*"))
    prefixes = tuple(p[:-1] for p in patterns if p.endswith("*") and not p.startswith("*"))
    suffixes = tuple(p[1:] for p in patterns if p.startswith("*"))
    if not prefixes and not suffixes:
        return exact.__contains__
    return lambda value: value in exact or value.startswith(prefixes) or value.endswith(suffixes)


def _any_path(patterns: list[str]) -> Callable[[str], bool]:
    """`paths`: Istio's string forms, and templates with `{*}` / `{**}` (config/path_templates.py)."""
    templates = [template_regex(p).fullmatch for p in patterns if is_template(p)]
    strings = _any_string([p for p in patterns if not is_template(p)])
    if not templates:
        return strings
    return lambda value: strings(value) or any(match(value) is not None for match in templates)


def _any_network(blocks: list[str]) -> Callable[[str], bool]:
    networks = [ipaddress.ip_network(b, strict=False) for b in blocks]

    def matches(value: str) -> bool:
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return False
        return any(address.version == net.version and address in net for net in networks)
    return matches


def _field(values: list, not_values: list, make: Callable[[list], Callable], get: Callable[[AuthzRequest], object]) -> Predicate | None:
    """`values` (any) and not `not_values` (any), on what `get` extracts; a missing value
    (None: e.g. no peer identity on plaintext) matches no value, so only a not-list can pass."""
    if not values and not not_values:
        return None
    positive = make(values) if values else None
    negative = make(not_values) if not_values else None

    def matches(request: AuthzRequest) -> bool:
        value = get(request)
        if positive is not None and (value is None or not positive(value)):
            return False
        return negative is None or value is None or not negative(value)
    return matches


def _all(predicates: Iterable[Predicate | None]) -> Predicate:
    kept = [p for p in predicates if p is not None]
    if not kept:
        return _always
    if len(kept) == 1:
        return kept[0]
    if len(kept) == 2:
        first, second = kept
        return lambda request: first(request) and second(request)

    def every(request: AuthzRequest) -> bool:
        for predicate in kept:
            if not predicate(request):
                return False
        return True
    return every


def _any(predicates: list[Predicate]) -> Predicate:
    if len(predicates) == 1:
        return predicates[0]

    def some(request: AuthzRequest) -> bool:
        for predicate in predicates:
            if predicate(request):
                return True
        return False
    return some


def _ports(values: list[str]) -> Callable[[int], bool]:
    ports = frozenset(int(v) for v in values)
    return lambda port: port in ports


def _host_value(request: AuthzRequest) -> str:
    return request.host.lower()


def _host_matcher(patterns: list[str]) -> Callable[[str], bool]:
    matches = _any_string(patterns, fold_case=True)
    # `Host: example.com:8080` matches `example.com` too, as Istio generates both forms.
    return lambda host: matches(host) or (":" in host and matches(host.rsplit(":", 1)[0]))


def _path_value(request: AuthzRequest) -> str:
    return request.path.split("?", 1)[0]


def _compile_source(source: AuthzSource) -> Predicate:
    return _all([
        _field(source.principals, source.not_principals, _any_string, _principal),
        _field(source.request_principals, source.not_request_principals, _any_string, _request_principal),
        _field(source.namespaces, source.not_namespaces, _any_string, lambda r: r.source_namespace),
        _field(source.ip_blocks, source.not_ip_blocks, _any_network, lambda r: r.source_ip),
    ])


def _principal(request: AuthzRequest) -> str | None:
    principal = request.source_principal
    return principal.removeprefix("spiffe://") if principal is not None else None


def _request_principal(request: AuthzRequest) -> str | None:
    jwt = request.request_auth
    return jwt.principal if jwt is not None else None


def _any_element(make: Callable[[list], Callable[[str], bool]]) -> Callable[[list], Callable]:
    """A matcher of claim values: a list claim matches when one of its strings does."""
    def build(patterns: list) -> Callable:
        matches = make(patterns)
        return lambda value: any(isinstance(v, str) and matches(v) for v in value)
    return build


def _claim(path: list[str]) -> Callable[[AuthzRequest], list | None]:
    """A JWT claim as a list of values (a string claim is a one-element list); None when
    there is no verified JWT or no such claim, so only a notValues list can match."""
    def get(request: AuthzRequest) -> list | None:
        jwt = request.request_auth
        if jwt is None:
            return None
        value = jwt.claims
        for part in path:
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        return value if isinstance(value, list) else [value]
    return get


def _claim_condition(condition: AuthzCondition, path: list[str]) -> Predicate:
    return _field(condition.values, condition.not_values, _any_element(_any_string), _claim(path)) or _always


def _compile_operation(operation: AuthzOperation) -> Predicate:
    return _all([
        _field(operation.hosts, operation.not_hosts, _host_matcher, _host_value),
        _field(operation.ports, operation.not_ports, _ports, lambda r: r.port),
        _field(operation.methods, operation.not_methods, _any_string, lambda r: r.method),
        _field(operation.paths, operation.not_paths, _any_path, _path_value),
    ])


def _compile_condition(condition: AuthzCondition) -> Predicate:
    key = condition.key
    if key == "source.principal":
        return _field(condition.values, condition.not_values, _any_string, _principal) or _always
    if key == "source.namespace":
        return _field(condition.values, condition.not_values, _any_string, lambda r: r.source_namespace) or _always
    if key == "source.ip":
        return _field(condition.values, condition.not_values, _any_network, lambda r: r.source_ip) or _always
    if key == "destination.port":
        return _field(condition.values, condition.not_values, _ports, lambda r: r.port) or _always
    if key.startswith("request.headers[") and key.endswith("]"):
        name = key[len("request.headers["):-1].lower()
        return _field(condition.values, condition.not_values, _any_string, lambda r: r.headers.get(name)) or _always
    if key == "request.auth.principal":
        return _field(condition.values, condition.not_values, _any_string, _request_principal) or _always
    if key == "request.auth.audiences":
        return _claim_condition(condition, ["aud"])
    if key == "request.auth.presenter":
        return _claim_condition(condition, ["azp"])
    if key.startswith("request.auth.claims[") and key.endswith("]"):
        # request.auth.claims[groups], nested: request.auth.claims[a][b]
        return _claim_condition(condition, key[len("request.auth.claims["):-1].split("]["))
    raise ValueError(f"unsupported condition key {key!r}")  # the loader rejects these first


def _compile_rule(rule: AuthzRule) -> Predicate:
    parts: list[Predicate | None] = []
    if rule.from_:
        parts.append(_any([_compile_source(entry.source) if entry.source is not None else _always
                           for entry in rule.from_]))
    if rule.to:
        parts.append(_any([_compile_operation(entry.operation) if entry.operation is not None else _always
                           for entry in rule.to]))
    parts.extend(_compile_condition(condition) for condition in rule.when)
    return _all(parts)


@dataclass(frozen=True)
class _Compiled:
    name: str
    matches: Predicate


def _compile_policy(policy: Resource[AuthorizationPolicySpec]) -> _Compiled:
    rules = [_compile_rule(rule) for rule in policy.spec.rules]
    matches = _any(rules) if rules else (lambda request: False)
    return _Compiled(f"{policy.namespace}/{policy.name}", matches)


class Authorizer:
    """The AuthorizationPolicies of one workload, ready to check requests."""

    def __init__(self, policies: Iterable[Resource[AuthorizationPolicySpec]], namespace: str,
                 labels: dict[str, str], root_namespace: str = ROOT_NAMESPACE) -> None:
        by_action: dict[str, list[_Compiled]] = {"ALLOW": [], "DENY": [], "AUDIT": []}
        for policy in sorted(policies, key=lambda p: (p.namespace, p.name)):
            if applies_to(policy, namespace, labels, root_namespace):
                by_action[policy.spec.action or "ALLOW"].append(_compile_policy(policy))
        self.allow, self.deny, self.audit = by_action["ALLOW"], by_action["DENY"], by_action["AUDIT"]

    @property
    def empty(self) -> bool:
        """No policy applies: every request is allowed and none audited."""
        return not (self.allow or self.deny or self.audit)

    def check(self, request: AuthzRequest) -> Decision:
        audit = False
        for policy in self.audit:
            if policy.matches(request):
                audit = True
                break
        for policy in self.deny:
            if policy.matches(request):
                return Decision(False, policy.name, audit)
        if not self.allow:
            return Decision(True, None, audit)
        for policy in self.allow:
            if policy.matches(request):
                return Decision(True, policy.name, audit)
        return Decision(False, None, audit)
