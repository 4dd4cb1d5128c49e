"""AuthorizationPolicy -> envoy.filters.http.rbac on the inbound listener, as Istio renders it.

The policies that apply to the workload (config/mesh_rules.py `applies_to`: root or own
namespace, selector) become at most two RBAC filters before the router: DENY first, then
ALLOW when any ALLOW policy applies (Envoy's ALLOW with no matching policy denies, so an
ALLOW policy without rules is Istio's deny-all). AUDIT policies never change the outcome
and are not rendered. One Envoy policy per rule, named `ns[NS]-policy[NAME]-rule[I]`.

Values follow Remora's evaluator (remora/proxy/security/authz.py), so both data planes decide alike:
- strings: `abc` exact, `abc*` prefix, `*abc` suffix, `*` present;
- principals compare against the peer certificate's URI SAN without `spiffe://`;
  namespaces against its `/ns/<ns>/` part; ipBlocks against the peer address;
- hosts case-insensitively, with or without a port; paths without the query string;
- ports and `destination.port` against the app port, known when rendering, so they
  become `any` or its negation.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any

from remora.config.path_templates import MATCH_ANY, MATCH_ONE, is_template
from remora.config.loader import ConfigError, build_mesh_config
from remora.config.mesh_rules import applies_to
from remora.config.model_policy import AuthzCondition, AuthzOperation, AuthzRule, AuthzSource
from remora.xds.envoy_clusters import Unsupported

RBAC_FILTER = "envoy.filters.http.rbac"
_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
_ANY: dict = {"any": True}
_NEVER: dict = {"not_rule": {"any": True}}
_NEVER_ID: dict = {"not_id": {"any": True}}


def _pattern(value: str) -> str:
    """One Istio match string as an RE2 body (exact / prefix* / *suffix / *)."""
    if value == "*":
        return ".+"
    if value.startswith("*"):
        return ".*" + re.escape(value[1:])
    if value.endswith("*"):
        return re.escape(value[:-1]) + ".*"
    return re.escape(value)


def _regex(body: str) -> dict:
    return {"safe_regex": {"regex": body}}


def _string(value: str) -> dict:
    if value == "*":
        return _regex(".+")
    if value.startswith("*"):
        return {"suffix": value[1:]}
    if value.endswith("*"):
        return {"prefix": value[:-1]}
    return {"exact": value}


def _principal(value: str) -> dict:
    return {"authenticated": {"principal_name": _regex(f"spiffe://{_pattern(value)}")}}


def _namespace(value: str) -> dict:
    body = _pattern(value).replace(".*", "[^/]*").replace(".+", "[^/]+")
    return {"authenticated": {"principal_name": _regex(f"spiffe://[^/]+/ns/{body}/.*")}}


def _ip(value: str) -> dict:
    net = ipaddress.ip_network(value, strict=False)
    return {"direct_remote_ip": {"address_prefix": str(net.network_address),
                                 "prefix_len": net.prefixlen}}


def _header(name: str, value: str) -> dict:
    return {"header": {"name": name, "string_match": _string(value)}}


def _host(value: str) -> dict:
    return {"header": {"name": ":authority",
                       "string_match": _regex(f"(?i){_pattern(value)}(:[0-9]+)?")}}


def _path(value: str) -> dict:
    if is_template(value):
        # As Istio's builder renders {*} / {**}: Envoy's uri_template matcher with * / **.
        return {"uri_template": {"name": "uri-template", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
            "path_template": value.replace(MATCH_ANY, "**").replace(MATCH_ONE, "*")}}}
    return {"url_path": {"path": _string(value)}}


def _field(values: list, not_values: list, make, ids: bool) -> list[dict]:
    """Matchers for one field: any of values, and none of not_values."""
    key, not_key = ("or_ids", "not_id") if ids else ("or_rules", "not_rule")
    out = []
    if values:
        out.append({key: {"ids" if ids else "rules": [make(v) for v in values]}})
    if not_values:
        out.append({not_key: {key: {"ids" if ids else "rules": [make(v) for v in not_values]}}})
    return out


def _port_rule(values: list[str], not_values: list[str], app_port: int) -> list[dict]:
    ok = (not values or str(app_port) in values) and str(app_port) not in not_values
    return [] if ok else [_NEVER]


def _and(items: list[dict], ids: bool) -> dict:
    if not items:
        return _ANY
    if len(items) == 1:
        return items[0]
    return {"and_ids": {"ids": items}} if ids else {"and_rules": {"rules": items}}


def _source(source: AuthzSource, where: str) -> dict:
    if source.request_principals or source.not_request_principals:
        # JWT principals need the jwt_authn filter (RequestAuthentication), not rendered yet.
        field = "requestPrincipals" if source.request_principals else "notRequestPrincipals"
        raise Unsupported(f"{where}.source.{field} not rendered for Envoy (JWT / RequestAuthentication)")
    return _and(_field(source.principals, source.not_principals, _principal, True)
                + _field(source.namespaces, source.not_namespaces, _namespace, True)
                + _field(source.ip_blocks, source.not_ip_blocks, _ip, True), ids=True)


def _operation(op: AuthzOperation, app_port: int) -> dict:
    return _and(_field(op.hosts, op.not_hosts, _host, False)
                + _port_rule(op.ports, op.not_ports, app_port)
                + _field(op.methods, op.not_methods, lambda m: _header(":method", m), False)
                + _field(op.paths, op.not_paths, _path, False), ids=False)


def _condition(cond: AuthzCondition, app_port: int, where: str) -> tuple[str, list[dict]]:
    """('principals' | 'permissions', matchers) for one `when` condition."""
    key, values, nots = cond.key, cond.values, cond.not_values
    if key == "source.principal":
        return "principals", _field(values, nots, _principal, True)
    if key == "source.namespace":
        return "principals", _field(values, nots, _namespace, True)
    if key == "source.ip":
        return "principals", _field(values, nots, _ip, True)
    if key == "destination.port":
        return "permissions", _port_rule(values, nots, app_port)
    if key.startswith("request.headers[") and key.endswith("]"):
        name = key[len("request.headers["):-1].lower()
        return "permissions", _field(values, nots, lambda v: _header(name, v), False)
    if key.startswith("request.auth."):
        raise Unsupported(f"{where}.key {key} not rendered for Envoy (JWT / RequestAuthentication)")
    raise Unsupported(f"{where}.key {key} not rendered for Envoy")


def _rule(rule: AuthzRule, app_port: int, where: str) -> dict:
    principals = [_or([_source(f.source, f"{where}.from[{j}]") if f.source else _ANY
                       for j, f in enumerate(rule.from_)], True)] if rule.from_ else []
    permissions = [_or([_operation(t.operation, app_port) if t.operation else _ANY
                        for t in rule.to], False)] if rule.to else []
    for i, cond in enumerate(rule.when):
        side, matchers = _condition(cond, app_port, f"{where}.when[{i}]")
        (principals if side == "principals" else permissions).extend(matchers)
    return {"permissions": [_and(permissions, ids=False)],
            "principals": [_and(principals, ids=True)]}


def _or(items: list[dict], ids: bool) -> dict:
    if len(items) == 1:
        return items[0]
    return {"or_ids": {"ids": items}} if ids else {"or_rules": {"rules": items}}


def rbac_filters(docs: list[dict], namespace: str, labels: dict[str, str],
                 app_port: int) -> list[dict]:
    """The RBAC http filters (DENY, then ALLOW) for the workload; [] when no policy applies."""
    if not docs:
        return []
    try:
        config = build_mesh_config([(doc, "AuthorizationPolicy") for doc in docs])
    except ConfigError as error:
        raise Unsupported(f"AuthorizationPolicy not valid: {error}") from None
    by_action: dict[str, dict[str, Any]] = {"DENY": {}, "ALLOW": {}}
    seen = set()
    for policy in config.authorization_policies:
        action = policy.spec.action or "ALLOW"
        if action == "AUDIT" or not applies_to(policy, namespace, labels):
            continue
        seen.add(action)
        where = f"AuthorizationPolicy {policy.namespace}/{policy.name} spec.rules"
        for i, rule in enumerate(policy.spec.rules):
            name = f"ns[{policy.namespace}]-policy[{policy.name}]-rule[{i}]"
            by_action[action][name] = _rule(rule, app_port, f"{where}[{i}]")
    filters = []
    for action in ("DENY", "ALLOW"):
        if action in seen:
            filters.append({"name": RBAC_FILTER, "typed_config": {
                "@type": _RBAC, "rules": {"action": action, "policies": by_action[action]}}})
    return filters
