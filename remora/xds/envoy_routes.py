"""VirtualService -> Envoy v3 virtual hosts and routes, translated as Istio's pilot does.

- match: uri exact/prefix/regex -> path/prefix/safe_regex; headers, method (`:method`),
  authority (`:authority`), scheme (`:scheme`) -> header matchers; withoutHeaders ->
  inverted header matchers; queryParams -> query_parameters; ignoreUriCase.
- route: one destination -> `cluster`, several -> `weighted_clusters` (weight 0 dropped,
  as Istio does); a subset picks `outbound|port|subset|host`; a single destination whose
  DestinationRule hashes (consistentHash) gets the route's hash_policy, as in Istio.
- timeout (default 0s: none), retries (Istio's default 2 attempts when unset; numeric
  retryOn codes -> retriable_status_codes; retries prefer other hosts), rewrite (uri ->
  prefix_rewrite, authority -> host_rewrite_literal, uriRegexRewrite -> regex_rewrite),
  headers set/add/remove (route level on the route, destination level on the cluster
  weight), fault -> typed_per_filter_config for envoy.filters.http.fault.
Anything else raises Unsupported naming the resource and field.
"""
from __future__ import annotations

from typing import Any

from remora.config.gateways import applies_to_sidecars, sidecar_matches
from remora.config.names import host_aliases, qualify_host
from remora.xds.envoy_clusters import (Service, Unsupported, cluster_name, dur, name_of,
                                       namespace_of, only)

ISTIO_DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,503"
FAULT_FILTER = "envoy.filters.http.fault"
_FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
_PREV_HOSTS = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3" \
    ".PreviousHostsPredicate"
_PSEUDO_HEADERS = {"method": ":method", "authority": ":authority", "scheme": ":scheme"}


def retry_policy(retries: dict | None, where: str = "retries") -> dict | None:
    """Istio's retry policy: None when attempts is 0, Istio's default when unset."""
    if retries is not None and retries.get("attempts", 0) == 0:
        return None
    retries = retries or {"attempts": 2}  # Istio's default when a route names no retries
    only(retries, {"attempts", "retryOn", "perTryTimeout"}, where)
    words, codes = [], []
    for word in retries.get("retryOn", ISTIO_DEFAULT_RETRY_ON).split(","):
        word = word.strip()
        if word.isdigit():
            codes.append(int(word))
        elif word:
            words.append(word)
    if codes:
        words.append("retriable-status-codes")
    policy: dict[str, Any] = {
        "retry_on": ",".join(words),
        "num_retries": retries["attempts"],
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                                  "typed_config": {"@type": _PREV_HOSTS}}],
        "host_selection_retry_max_attempts": 5,
    }
    if codes:
        policy["retriable_status_codes"] = codes
    if "perTryTimeout" in retries:
        policy["per_try_timeout"] = dur(retries["perTryTimeout"])
    return policy


def _string_match(spec: dict, where: str) -> dict:
    only(spec, {"exact", "prefix", "regex"}, where)
    if len(spec) != 1:
        raise Unsupported(f"{where}: exactly one of exact, prefix, regex expected")
    if "regex" in spec:
        return {"safe_regex": {"regex": spec["regex"]}}
    return dict(spec)


def _matcher(spec: dict, where: str) -> dict:
    """A header or query parameter matcher; an empty match `{}` means "present", as in Istio
    (which refuses the empty prefix the loader refuses too)."""
    if not spec or spec == {"prefix": ""}:
        return {"present_match": True}
    return {"string_match": _string_match(spec, where)}


def route_match(match: dict, where: str) -> dict:
    """One HTTPMatchRequest -> an Envoy RouteMatch."""
    only(match, {"name", "uri", "headers", "ignoreUriCase", "method", "authority", "scheme",
                 "queryParams", "withoutHeaders", "gateways"}, where)
    out: dict[str, Any] = {}
    uri = _string_match(match.get("uri") or {"prefix": "/"}, f"{where}.uri")
    key = {"exact": "path", "prefix": "prefix"}.get(next(iter(uri)), "safe_regex")
    out[key] = next(iter(uri.values()))
    if match.get("ignoreUriCase"):
        out["case_sensitive"] = False
    headers = [{"name": header, **_matcher(m, f"{where}.{field}")}
               for field, header in _PSEUDO_HEADERS.items()
               if (m := match.get(field)) is not None]
    headers += [{"name": name, **_matcher(m, f"{where}.headers.{name}")}
                for name, m in (match.get("headers") or {}).items()]
    headers += [{"name": name, **_matcher(m, f"{where}.withoutHeaders.{name}"),
                 "invert_match": True}
                for name, m in (match.get("withoutHeaders") or {}).items()]
    if headers:
        out["headers"] = headers
    params = [{"name": name, **_matcher(m, f"{where}.queryParams.{name}")}
              for name, m in (match.get("queryParams") or {}).items()]
    if params:
        out["query_parameters"] = params
    return out


def _header_ops(headers: dict | None, where: str) -> dict:
    """Istio `headers` -> request/response_headers_to_add/remove (set overwrites, add appends)."""
    out: dict[str, Any] = {}
    only(headers or {}, {"request", "response"}, where)
    for side in ("request", "response"):
        ops = (headers or {}).get(side) or {}
        only(ops, {"set", "add", "remove"}, f"{where}.{side}")
        adds = [{"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                for k, v in (ops.get("set") or {}).items()]
        adds += [{"header": {"key": k, "value": v}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}
                 for k, v in (ops.get("add") or {}).items()]
        if adds:
            out[f"{side}_headers_to_add"] = adds
        if ops.get("remove"):
            out[f"{side}_headers_to_remove"] = list(ops["remove"])
    return out


def _percent(spec: dict) -> dict:
    """Istio percentage (float, or the deprecated integer `percent`) -> FractionalPercent."""
    if "percentage" in spec:
        value = float((spec["percentage"] or {}).get("value", 0.0))
        return {"numerator": round(value * 10_000), "denominator": "MILLION"}
    return {"numerator": int(spec.get("percent", 100)), "denominator": "HUNDRED"}


def fault_config(fault: dict, where: str) -> dict:
    """HTTPFaultInjection -> the fault filter's per-route HTTPFault config."""
    only(fault, {"delay", "abort"}, where)
    out: dict[str, Any] = {"@type": _FAULT}
    if fault.get("delay") is not None:
        delay = fault["delay"]
        only(delay, {"fixedDelay", "percentage", "percent"}, f"{where}.delay")
        if "fixedDelay" not in delay:
            raise Unsupported(f"{where}.delay: only fixedDelay is rendered for Envoy")
        out["delay"] = {"fixed_delay": dur(delay["fixedDelay"]), "percentage": _percent(delay)}
    if fault.get("abort") is not None:
        abort = fault["abort"]
        only(abort, {"httpStatus", "percentage"}, f"{where}.abort")
        if "httpStatus" not in abort:
            raise Unsupported(f"{where}.abort: only httpStatus is rendered for Envoy")
        out["abort"] = {"http_status": abort["httpStatus"], "percentage": _percent(abort)}
    return out


def _target(dest: dict, svcs: dict[str, Service], namespace: str,
            where: str) -> tuple[str, int, dict, list[dict] | None]:
    """(cluster, weight, destination header ops, hash policy) of one HTTPRouteDestination."""
    only(dest, {"destination", "weight", "headers"}, where)
    d = dest["destination"]
    only(d, {"host", "port", "subset"}, f"{where}.destination")
    host = qualify_host(d["host"], namespace)
    svc = svcs.get(host)
    if svc is None:
        raise Unsupported(f"{where}.destination.host: {d['host']} has no ServiceEntry to render")
    ports = [p["number"] for p in svc.ports]
    port = (d.get("port") or {}).get("number") or (ports[0] if len(ports) == 1 else None)
    if port not in ports:
        raise Unsupported(f"{where}.destination: {d['host']} needs a port, one of {ports}")
    subset = d.get("subset") or ""
    if subset and subset not in svc.subsets:
        raise Unsupported(f"{where}.destination.subset: {subset} is not a subset of "
                          f"{d['host']}'s DestinationRule")
    name = cluster_name(host, port, subset)
    return (name, dest.get("weight", 100), _header_ops(dest.get("headers"), f"{where}.headers"),
            svc.hash_policies.get(name))


def http_routes(http: dict, svcs: dict[str, Service], namespace: str,
                where: str) -> list[dict]:
    """One VirtualService http entry -> Envoy routes (one per match, same action)."""
    only(http, {"name", "match", "route", "timeout", "retries", "rewrite", "headers", "fault", "redirect",
                "directResponse", "mirror", "mirrors", "mirrorPercentage"}, where)
    indexed = list(enumerate(http.get("match") or [{}]))
    # Entries bound to other gateways do not exist at a sidecar (config/gateways.py).
    kept = sidecar_matches(indexed, lambda entry: applies_to_sidecars(entry[1].get("gateways"))) or []
    answer = _local_answer(http, where)
    if answer is not None:
        return [{"match": route_match(m, f"{where}.match[{i}]"), **answer} for i, m in kept]
    if not http.get("route"):
        raise Unsupported(f"{where}: a route without destinations is not rendered for Envoy")
    targets = [_target(dest, svcs, namespace, f"{where}.route[{i}]")
               for i, dest in enumerate(http["route"])]
    targets = [t for t in targets if t[1] > 0] or targets[:1]  # Istio drops weight-0 targets
    action: dict[str, Any] = {"timeout": dur(http.get("timeout") or "0s")}
    route_extra = _header_ops(http.get("headers"), f"{where}.headers")
    if len(targets) == 1:
        action["cluster"] = targets[0][0]
        for key, ops in targets[0][2].items():  # one destination: its headers join the route's
            route_extra[key] = route_extra.get(key, []) + ops
        if targets[0][3]:  # Istio hashes only single-destination routes
            action["hash_policy"] = targets[0][3]
    else:
        action["weighted_clusters"] = {"clusters": [{"name": n, "weight": w, **ops}
                                                    for n, w, ops, _ in targets]}
    mirrors = [(http["mirror"], http.get("mirrorPercentage"))] if http.get("mirror") else []
    mirrors += [(m["destination"], m.get("percentage")) for m in http.get("mirrors") or []]
    if mirrors:     # Envoy's request_mirror_policies, as Istio renders mirror / mirrors
        action["request_mirror_policies"] = [
            {"cluster": _target({"destination": d}, svcs, namespace, f"{where}.mirror")[0],
             "runtime_fraction": {"default_value": {"numerator": int(round((p or {}).get("value", 100) * 10000)),
                                                    "denominator": "MILLION"}}}
            for d, p in mirrors]
    retry = retry_policy(http.get("retries"), f"{where}.retries")
    if retry:
        action["retry_policy"] = retry
    rewrite = http.get("rewrite") or {}
    only(rewrite, {"uri", "authority", "uriRegexRewrite"}, f"{where}.rewrite")
    if "uri" in rewrite:
        action["prefix_rewrite"] = rewrite["uri"]
    if "authority" in rewrite:
        action["host_rewrite_literal"] = rewrite["authority"]
    if "uriRegexRewrite" in rewrite:
        regex = rewrite["uriRegexRewrite"]
        action["regex_rewrite"] = {"pattern": {"regex": regex["match"]},
                                   "substitution": regex["rewrite"]}
    if http.get("fault"):
        route_extra["typed_per_filter_config"] = {
            FAULT_FILTER: fault_config(http["fault"], f"{where}.fault")}
    return [{"match": route_match(m, f"{where}.match[{i}]"), "route": action, **route_extra}
            for i, m in kept]


_REDIRECT_CODES = {301: "MOVED_PERMANENTLY", 302: "FOUND", 303: "SEE_OTHER", 307: "TEMPORARY_REDIRECT",
                   308: "PERMANENT_REDIRECT"}


def _local_answer(http: dict, where: str) -> dict | None:
    """Envoy's `redirect` / `direct_response` route action for Istio's redirect / directResponse."""
    if http.get("redirect") is not None:
        spec = http["redirect"]
        only(spec, {"uri", "authority", "port", "scheme", "redirectCode"}, f"{where}.redirect")
        action = {"response_code": _REDIRECT_CODES[spec.get("redirectCode") or 301]}
        for field, key in (("uri", "path_redirect"), ("authority", "host_redirect"),
                           ("port", "port_redirect"), ("scheme", "scheme_redirect")):
            if spec.get(field):
                action[key] = spec[field]
        return {"redirect": action}
    if http.get("directResponse") is not None:
        spec = http["directResponse"]
        body = spec.get("body") or {}
        rendered: dict[str, Any] = {"status": spec["status"]}
        if "string" in body:
            rendered["body"] = {"inline_string": body["string"]}
        elif "bytes" in body:
            rendered["body"] = {"inline_bytes": body["bytes"]}
        return {"direct_response": rendered}
    return None


def virtual_hosts(services: list[dict], svcs: dict[str, Service]) -> list[dict]:
    """One virtual host per VirtualService host; hosts without one get Istio's default route.

    Domains are the host's spellings (Remora's host_aliases: `reviews`, `reviews.default`,
    ... for an in-cluster FQDN), bare and with any port; a spelling already claimed by an
    earlier virtual host is left to it (Envoy refuses a domain twice).
    """
    vhosts, routed, claimed = [], set(), set()

    def domains(host: str, ports: list[str]) -> list[str]:
        spellings = [f"{a}{p}" for a in host_aliases(host) for p in ports]
        fresh = [d for d in spellings if d not in claimed]
        claimed.update(fresh)
        return fresh

    for doc in services:
        vs, where, ns = doc.get("spec") or {}, name_of(doc), namespace_of(doc)
        only(vs, {"hosts", "http", "exportTo", "gateways"}, f"{where} spec")
        if not applies_to_sidecars(vs.get("gateways")):
            continue     # a gateway's VirtualService: not part of a sidecar's routes
        routes = [r for i, http in enumerate(vs.get("http", []))
                  for r in http_routes(http, svcs, ns, f"{where} spec.http[{i}]")]
        for host in (qualify_host(h, ns) for h in vs.get("hosts", [])):
            if host in routed:
                raise Unsupported(f"{where} spec.hosts: {host} is routed by another "
                                  "VirtualService (Envoy needs one virtual host per domain)")
            routed.add(host)
            vhosts.append({"name": host, "domains": domains(host, ["", ":*"]), "routes": routes})
    for host, svc in svcs.items():
        if host in routed or not svc.ports:
            continue
        for port in svc.ports:  # Istio's default: all of the port's traffic, default retries
            number = port["number"]
            name = cluster_name(host, number)
            action = {"cluster": name, "timeout": "0s", "retry_policy": retry_policy(None)}
            if name in svc.hash_policies:
                action["hash_policy"] = svc.hash_policies[name]
            suffixes = [f":{number}"] + ([""] if len(svc.ports) == 1 else [])
            vhosts.append({"name": f"{host}:{number}", "domains": domains(host, suffixes),
                           "routes": [{"match": {"prefix": "/"}, "route": action}]})
    return vhosts


def uses_fault(vhosts: list[dict]) -> bool:
    """Whether any route carries fault config (then the HCM needs the fault filter)."""
    return any(FAULT_FILTER in r.get("typed_per_filter_config", {})
               for v in vhosts for r in v["routes"])
