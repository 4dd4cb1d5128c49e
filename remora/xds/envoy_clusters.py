"""ServiceEntry + WorkloadEntry + DestinationRule -> Envoy v3 clusters, the way Istio's pilot builds them.

One cluster per (host, port) named `outbound|<port>||<host>` with every endpoint, plus one
per DestinationRule subset, `outbound|<port>|<subset>|<host>`, holding the endpoints whose
labels carry all the subset's labels. The policy of each cluster is Istio's merge of the
rule's and the subset's trafficPolicy and portLevelSettings (config/traffic_policy.py, the
same function the data plane calls). Hosts are qualified as Istio and
Remora do (`reviews` in namespace default is `reviews.default.svc.cluster.local`). Endpoints are the ServiceEntry's own
plus the WorkloadEntries its workloadSelector picks in its namespace; an endpoint's `weight`
becomes load_balancing_weight, its serviceAccount joins the secure-naming SAN list.
Fields not translated raise `Unsupported` with the field path (see envoy.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remora.config.duration import parse_duration
from remora.config.mesh_rules import destination_rules_for, outbound_cluster_name
from remora.config.names import qualify_host
from remora.config.protocols import declared_protocol, upstream_http2
from remora.config.traffic_policy import DICTS, merge_traffic_policy, port_level
from remora.xds.envoy_tls import TlsUnsupported, apply_client_tls, istio_sni, server_identities

UNLIMITED = 1_000_000_000  # "disable circuit breaking" per the Envoy benchmarking FAQ
ISTIO_DEFAULT_CONNECT_TIMEOUT = "10s"
# Istio's LEAST_CONN is the deprecated spelling of LEAST_REQUEST; unset means LEAST_REQUEST.
_LB = {"ROUND_ROBIN": "ROUND_ROBIN", "LEAST_REQUEST": "LEAST_REQUEST",
       "LEAST_CONN": "LEAST_REQUEST", "RANDOM": "RANDOM", "UNSPECIFIED": "LEAST_REQUEST",
       None: "LEAST_REQUEST"}
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_POLICY_FIELDS = ("loadBalancer", "connectionPool", "outlierDetection", "tls")


class Unsupported(ValueError):
    """The YAML uses a feature the Envoy renderer does not translate (message names the field)."""


def dur(text: str) -> str:
    """Istio duration ('1m30s') -> protobuf JSON duration ('90s')."""
    return f"{parse_duration(text):.9g}s"


def addr(host: str, port: int) -> dict:
    return {"socket_address": {"address": host, "port_value": port}}


def only(spec: dict, allowed: set[str], where: str) -> None:
    """Raise Unsupported naming every key of `spec` (at path `where`) outside `allowed`."""
    extra = set(spec) - allowed
    if extra:
        raise Unsupported(f"{where}: {', '.join(sorted(extra))} not rendered for Envoy")


def cluster_name(host: str, port: int, subset: str = "") -> str:
    """Istio's outbound cluster name (config/mesh_rules.py), in the renderer's argument order."""
    return outbound_cluster_name(port, subset, host)


def namespace_of(doc: dict) -> str:
    return (doc.get("metadata") or {}).get("namespace") or "default"


def name_of(doc: dict) -> str:
    return f"{doc['kind']} {namespace_of(doc)}/{(doc.get('metadata') or {}).get('name', '?')}"


@dataclass
class Service:
    """One ServiceEntry host with its resolved endpoints (Istio endpoint dicts + namespace)."""
    host: str
    namespace: str
    ports: list[dict]
    resolution: str
    endpoints: list[dict]
    subject_alt_names: list[str]
    source: str
    subsets: dict[str, dict] = field(default_factory=dict)
    # cluster name -> the route hash_policy its consistentHash load balancer needs
    hash_policies: dict[str, list[dict]] = field(default_factory=dict)


def services(entries: list[dict], workloads: list[dict]) -> dict[str, Service]:
    """host -> Service for every ServiceEntry host (WorkloadEntries selected by label)."""
    out: dict[str, Service] = {}
    for doc in entries:
        spec, ns, where = doc.get("spec") or {}, namespace_of(doc), name_of(doc)
        only(spec, {"hosts", "ports", "location", "resolution", "endpoints", "subjectAltNames",
                    "workloadSelector", "exportTo"}, f"{where} spec")
        resolution = spec.get("resolution", "NONE")
        if resolution not in ("STATIC", "DNS"):
            raise Unsupported(f"{where} spec.resolution: {resolution} not rendered for Envoy "
                              "(STATIC and DNS are)")
        endpoints = []
        for i, ep in enumerate(spec.get("endpoints", [])):
            only(ep, {"address", "ports", "labels", "serviceAccount", "weight"},
                 f"{where} spec.endpoints[{i}]")
            endpoints.append(ep)
        selector = (spec.get("workloadSelector") or {}).get("labels")
        if selector:
            for we in workloads:
                we_spec = we.get("spec") or {}
                only(we_spec, {"address", "ports", "labels", "serviceAccount", "weight"},
                     f"{name_of(we)} spec")
                labels = we_spec.get("labels") or {}
                if namespace_of(we) == ns and all(labels.get(k) == v for k, v in selector.items()):
                    endpoints.append({**we_spec, "namespace": ns})
        for host in (qualify_host(h, ns) for h in spec.get("hosts", [])):
            if host in out:
                raise Unsupported(f"{where}: host {host} is also defined by {out[host].source}")
            out[host] = Service(host, ns, spec.get("ports", []), resolution, endpoints,
                                spec.get("subjectAltNames", []), where)
    return out


def _endpoint(ep: dict, port: dict) -> dict:
    ep_port = (ep.get("ports") or {}).get(port.get("name"), port.get("targetPort", port["number"]))
    out: dict[str, Any] = {"endpoint": {"address": addr(ep["address"], ep_port)}}
    if ep.get("weight"):
        out["load_balancing_weight"] = ep["weight"]
    return out


def _merge(policy: dict, override: dict | None, port: int, where: str) -> dict:
    """Istio's merge (config/traffic_policy.py); keys no layer may carry are refused first."""
    for layer in (policy, override):
        if layer:
            only(layer, set(_POLICY_FIELDS) | {"portLevelSettings"}, where)
            found = port_level(layer, port, DICTS)
            if found is not None:
                only(found[1], set(_POLICY_FIELDS) | {"port"}, where)
    return merge_traffic_policy(policy, override, port, DICTS)


def selected_rules(rules: list[dict], workload: tuple[str, dict[str, str]] | None) -> list[dict]:
    """The DestinationRules for this sidecar, as the data plane picks them
    (mesh_rules.destination_rules_for)."""
    def describe(doc: dict):
        spec = doc.get("spec") or {}
        selector = spec.get("workloadSelector")
        if selector is not None:
            only(selector, {"matchLabels"}, f"{name_of(doc)} spec.workloadSelector")
            selector = selector.get("matchLabels") or {}
        return qualify_host(spec["host"], namespace_of(doc)), namespace_of(doc), selector
    return destination_rules_for(rules, describe, workload)


def build_clusters(svcs: dict[str, Service], rules: list[dict], cert_dir: Path | None,
                   trust_domain: str, workload: tuple[str, dict[str, str]] | None = None) -> list[dict]:
    """Every outbound cluster: (host, port) and (host, port, subset), with their policies."""
    by_host: dict[str, dict] = {}
    for doc in selected_rules(rules, workload):
        spec, where = doc.get("spec") or {}, name_of(doc)
        only(spec, {"host", "trafficPolicy", "subsets", "exportTo", "workloadSelector"}, f"{where} spec")
        host = qualify_host(spec["host"], namespace_of(doc))
        if host not in svcs:
            raise Unsupported(f"{where} spec.host: {host} has no ServiceEntry to render")
        if host in by_host:
            raise Unsupported(f"{where}: a second DestinationRule for host {host}")
        by_host[host] = spec
        svcs[host].subsets = {s["name"]: s for s in spec.get("subsets", [])}
        for i, subset in enumerate(spec.get("subsets", [])):
            only(subset, {"name", "labels", "trafficPolicy"}, f"{where} spec.subsets[{i}]")
    clusters = []
    for host, svc in svcs.items():
        rule = by_host.get(host, {})
        policy = rule.get("trafficPolicy") or {}
        where = f"DestinationRule for {host} trafficPolicy"
        for port in svc.ports:
            variants = [("", svc.endpoints, _merge(policy, None, port["number"], where))]
            for name, subset in svc.subsets.items():
                wanted = subset.get("labels") or {}
                chosen = [ep for ep in svc.endpoints
                          if all((ep.get("labels") or {}).get(k) == v for k, v in wanted.items())]
                variants.append((name, chosen,
                                 _merge(policy, subset.get("trafficPolicy"), port["number"], where)))
            for subset, endpoints, merged in variants:
                cluster = _cluster(svc, port, subset, endpoints, merged, where, cert_dir,
                                   trust_domain)
                hashing = (merged.get("loadBalancer") or {}).get("consistentHash")
                if hashing:
                    svc.hash_policies[cluster["name"]] = _hash_policy(hashing)
                clusters.append(cluster)
    return clusters


def _cluster(svc: Service, port: dict, subset: str, endpoints: list[dict], policy: dict,
             where: str, cert_dir: Path | None, trust_domain: str) -> dict:
    name = cluster_name(svc.host, port["number"], subset)
    if svc.resolution == "DNS" and not svc.endpoints:
        endpoints = [{"address": svc.host}]  # Istio resolves the host itself
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if svc.resolution == "STATIC" else "STRICT_DNS",
        "load_assignment": {"cluster_name": name, "endpoints": [
            {"lb_endpoints": [_endpoint(ep, port) for ep in endpoints]}]},
    }
    apply_traffic_policy(cluster, policy, where)
    try:
        apply_client_tls(cluster, policy.get("tls"), endpoints,
                         server_identities(svc.subject_alt_names, endpoints, svc.namespace,
                                           trust_domain),
                         istio_sni(port["number"], svc.host, subset), cert_dir)
    except TlsUnsupported as error:
        raise Unsupported(f"{where}: {error}") from None
    apply_http_version(cluster, declared_protocol(port.get("protocol"), port.get("name")),
                       (policy.get("connectionPool") or {}).get("http") or {})
    return cluster


def apply_http_version(cluster: dict, protocol: str | None, http: dict) -> None:
    """HTTP/1.1, HTTP/2 or the client's version upstream, by config/protocols.py (Istio's rule)."""
    if http.get("useClientProtocol"):
        config: dict[str, Any] = {"use_downstream_protocol_config": {
            "http_protocol_options": {}, "http2_protocol_options": {}}}
    elif upstream_http2(protocol, http.get("h2UpgradePolicy")):
        h2: dict[str, Any] = {}
        if http.get("maxConcurrentStreams"):
            h2["max_concurrent_streams"] = http["maxConcurrentStreams"]
        config = {"explicit_http_config": {"http2_protocol_options": h2}}
    else:
        return      # HTTP/1.1: Envoy's default, or what the policy and TLS already set
    options = cluster.setdefault("typed_extension_protocol_options", {}).setdefault(
        _HTTP_OPTIONS, {"@type": f"type.googleapis.com/{_HTTP_OPTIONS}"})
    options.pop("explicit_http_config", None)
    options.update(config)
    tls = (cluster.get("transport_socket") or {}).get("typed_config", {}).get("common_tls_context")
    if tls is not None and "explicit_http_config" in config:
        # offer h2 where HTTP/1.1 was offered (the mesh's own token stays first)
        tls["alpn_protocols"] = [p if p != "http/1.1" else "h2"
                                 for p in tls.get("alpn_protocols") or ["http/1.1"]]


def apply_traffic_policy(cluster: dict, policy: dict, where: str = "trafficPolicy") -> None:
    """lb_policy, connect timeout, circuit breakers, HTTP options, outlier detection."""
    only(policy, set(_POLICY_FIELDS) | {"portLevelSettings"}, where)
    lb = policy.get("loadBalancer") or {}
    only(lb, {"simple", "consistentHash"}, f"{where}.loadBalancer")
    if lb.get("consistentHash"):  # wins over simple, as in Istio and Remora
        _apply_consistent_hash(cluster, lb["consistentHash"], f"{where}.loadBalancer")
    elif lb.get("simple") not in _LB:
        raise Unsupported(f"{where}.loadBalancer.simple: {lb.get('simple')} not rendered for "
                          "Envoy")
    else:
        cluster["lb_policy"] = _LB[lb.get("simple")]
    pool = policy.get("connectionPool") or {}
    only(pool, {"tcp", "http"}, f"{where}.connectionPool")
    tcp, http = pool.get("tcp") or {}, pool.get("http") or {}
    only(tcp, {"maxConnections", "connectTimeout", "tcpKeepalive", "maxConnectionDuration"},
         f"{where}.connectionPool.tcp")
    only(http, {"http1MaxPendingRequests", "http2MaxRequests", "maxRetries",
                "maxRequestsPerConnection", "idleTimeout", "h2UpgradePolicy", "useClientProtocol",
                "maxConcurrentStreams"}, f"{where}.connectionPool.http")
    cluster["connect_timeout"] = dur(tcp.get("connectTimeout", ISTIO_DEFAULT_CONNECT_TIMEOUT))
    cluster["circuit_breakers"] = {"thresholds": [{
        "max_connections": tcp.get("maxConnections", UNLIMITED),
        "max_pending_requests": http.get("http1MaxPendingRequests", UNLIMITED),
        "max_requests": http.get("http2MaxRequests", UNLIMITED),
        "max_retries": http.get("maxRetries", UNLIMITED),
    }]}
    common: dict[str, Any] = {}
    if http.get("maxRequestsPerConnection"):
        common["max_requests_per_connection"] = http["maxRequestsPerConnection"]
    if "idleTimeout" in http:
        common["idle_timeout"] = dur(http["idleTimeout"])
    if "maxConnectionDuration" in tcp:
        common["max_connection_duration"] = dur(tcp["maxConnectionDuration"])
    if common:
        cluster["typed_extension_protocol_options"] = {_HTTP_OPTIONS: {
            "@type": f"type.googleapis.com/{_HTTP_OPTIONS}",
            "common_http_protocol_options": common,
            "explicit_http_config": {"http_protocol_options": {}}}}
    keepalive = tcp.get("tcpKeepalive")
    if keepalive is not None:
        only(keepalive, {"probes", "time", "interval"}, f"{where}.connectionPool.tcp.tcpKeepalive")
        out: dict[str, Any] = {}
        if "probes" in keepalive:
            out["keepalive_probes"] = keepalive["probes"]
        for key in ("time", "interval"):
            if key in keepalive:
                out[f"keepalive_{key}"] = int(parse_duration(keepalive[key]))
        cluster["upstream_connection_options"] = {"tcp_keepalive": out}
    _apply_outlier_detection(cluster, policy.get("outlierDetection"), where)


def _apply_consistent_hash(cluster: dict, spec: dict, where: str) -> None:
    """RING_HASH (or MAGLEV) on the cluster; the hash key goes on the route (_hash_policy)."""
    only(spec, {"httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName",
                "ringHash", "maglev", "minimumRingSize"}, f"{where}.consistentHash")
    _hash_policy(spec)  # refuses a consistentHash without a key here, naming the rule
    if "maglev" in spec:
        cluster["lb_policy"] = "MAGLEV"
        size = (spec["maglev"] or {}).get("tableSize")
        if size:
            cluster["maglev_lb_config"] = {"table_size": size}
        return
    cluster["lb_policy"] = "RING_HASH"
    size = (spec.get("ringHash") or {}).get("minimumRingSize") or spec.get("minimumRingSize")
    if size:
        cluster["ring_hash_lb_config"] = {"minimum_ring_size": size}


def _hash_policy(spec: dict) -> list[dict]:
    """consistentHash key -> the route's hash_policy, as Istio writes it."""
    if spec.get("httpHeaderName"):
        return [{"header": {"header_name": spec["httpHeaderName"]}}]
    if spec.get("httpCookie"):
        cookie = spec["httpCookie"]
        out = {"name": cookie["name"]}
        if cookie.get("path"):
            out["path"] = cookie["path"]
        if cookie.get("ttl"):
            out["ttl"] = dur(cookie["ttl"])
        return [{"cookie": out}]
    if spec.get("useSourceIp"):
        return [{"connection_properties": {"source_ip": True}}]
    if spec.get("httpQueryParameterName"):
        return [{"query_parameter": {"name": spec["httpQueryParameterName"]}}]
    raise Unsupported("consistentHash: one of httpHeaderName, httpCookie, useSourceIp, "
                      "httpQueryParameterName is needed")


def _apply_outlier_detection(cluster: dict, od: dict | None, where: str) -> None:
    if od is None:
        return
    # consecutiveErrors is accepted and not rendered: Istio ignores it since 1.7 (the loader
    # warns, config/deprecated.py), so Envoy's consecutive_5xx default of 5 applies.
    only(od, {"consecutive5xxErrors", "consecutiveGatewayErrors", "interval",
              "baseEjectionTime", "maxEjectionPercent", "minHealthPercent",
              "consecutiveLocalOriginFailures", "splitExternalLocalOriginErrors", "consecutiveErrors"},
         f"{where}.outlierDetection")
    out: dict[str, Any] = {"enforcing_success_rate": 0}  # Istio turns success-rate off
    if "consecutive5xxErrors" in od:
        out["consecutive_5xx"] = od["consecutive5xxErrors"]
        out["enforcing_consecutive_5xx"] = 100 if od["consecutive5xxErrors"] > 0 else 0
    if "consecutiveGatewayErrors" in od:
        out["consecutive_gateway_failure"] = od["consecutiveGatewayErrors"]
        out["enforcing_consecutive_gateway_failure"] = 100
    if od.get("splitExternalLocalOriginErrors"):
        out["split_external_local_origin_errors"] = True
        if "consecutiveLocalOriginFailures" in od:
            out["consecutive_local_origin_failure"] = od["consecutiveLocalOriginFailures"]
            out["enforcing_consecutive_local_origin_failure"] = 100
    for key, envoy_key in (("interval", "interval"), ("baseEjectionTime", "base_ejection_time")):
        if key in od:
            out[envoy_key] = dur(od[key])
    if "maxEjectionPercent" in od:
        out["max_ejection_percent"] = od["maxEjectionPercent"]
    if "minHealthPercent" in od:  # Istio maps it to the panic threshold
        cluster["common_lb_config"] = {"healthy_panic_threshold": {
            "value": float(od["minHealthPercent"])}}
    cluster["outlier_detection"] = out
