"""Render a benchmark's Istio YAML as an Envoy v3 static bootstrap, the way Istio would.

Only the subset the scenarios use is translated (ServiceEntry STATIC/DNS endpoints,
VirtualService routes with uri/header matches, weights, timeout and retries,
DestinationRule outlier detection, connection pool limits, simple load balancing and
Istio mutual TLS, PeerAuthentication on the inbound side: see envoy_tls.py).
`render_bootstrap` gives a client sidecar (outbound listener), `render_inbound_bootstrap`
a server sidecar (inbound listener in front of the local app).
Anything else raises `Unsupported`, so Envoy never silently runs a different route than
Remora. Translation follows Istio's own (cluster names `outbound|port||host`, numeric
retryOn codes -> retriable_status_codes, retries prefer other hosts), and Envoy is tuned
as its "best practices for benchmarking Envoy" FAQ advises: circuit breakers effectively
off, generate_request_id off, dynamic_stats off, no access log; `--concurrency 1` is
passed on the command line by the runner.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.certs import TRUST_DOMAIN
from benchmarks.envoy_tls import (TlsUnsupported, apply_client_tls, inbound_filter_chains,
                                  inbound_mode, istio_sni)
from remora.config.duration import parse_duration

UNLIMITED = 1_000_000_000  # "disable circuit breaking" per the Envoy benchmarking FAQ
ISTIO_DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,503"
ISTIO_DEFAULT_CONNECT_TIMEOUT = "10s"
_LB = {"ROUND_ROBIN": "ROUND_ROBIN", "LEAST_REQUEST": "LEAST_REQUEST",
       "LEAST_CONN": "LEAST_REQUEST", "RANDOM": "RANDOM", None: "LEAST_REQUEST"}
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_PREV_HOSTS = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3" \
    ".PreviousHostsPredicate"


class Unsupported(ValueError):
    """The YAML uses a feature this renderer does not translate."""


def _dur(text: str) -> str:
    """Istio duration ('1m30s') -> protobuf JSON duration ('90s')."""
    return f"{parse_duration(text):.9g}s"


def _addr(host: str, port: int) -> dict:
    return {"socket_address": {"address": host, "port_value": port}}


def _only(spec: dict, allowed: set[str], where: str) -> None:
    extra = set(spec) - allowed
    if extra:
        raise Unsupported(f"{where}: {', '.join(sorted(extra))} not rendered for Envoy")


def cluster_name(host: str, port: int) -> str:
    return f"outbound|{port}||{host}"


def _clusters(entries: list[dict], rules: dict[str, dict], cert_dir: Path | None,
              trust_domain: str) -> tuple[list[dict], dict]:
    clusters, ports_by_host = [], {}
    for doc in entries:
        spec, namespace = doc.get("spec", {}), _namespace(doc)
        _only(spec, {"hosts", "ports", "location", "resolution", "endpoints",
                     "subjectAltNames"}, "ServiceEntry")
        resolution = spec.get("resolution", "NONE")
        if resolution not in ("STATIC", "DNS"):
            raise Unsupported(f"ServiceEntry resolution {resolution} not rendered for Envoy")
        for ep in spec.get("endpoints", []):
            _only(ep, {"address", "ports", "labels", "serviceAccount"}, "ServiceEntry endpoint")
        for host in spec["hosts"]:
            ports_by_host[host] = [p["number"] for p in spec.get("ports", [])]
            for port in spec.get("ports", []):
                endpoints = []
                for ep in spec.get("endpoints", []):
                    ep_port = ep.get("ports", {}).get(port.get("name"),
                                                      port.get("targetPort", port["number"]))
                    endpoints.append({"endpoint": {"address": _addr(ep["address"], ep_port)}})
                cluster = {
                    "name": cluster_name(host, port["number"]),
                    "type": "STATIC" if resolution == "STATIC" else "STRICT_DNS",
                    "load_assignment": {"cluster_name": cluster_name(host, port["number"]),
                                        "endpoints": [{"lb_endpoints": endpoints}]},
                }
                policy = rules.get(host, {}).get("trafficPolicy", {})
                _apply_traffic_policy(cluster, policy)
                try:
                    apply_client_tls(cluster, policy.get("tls"), spec, namespace,
                                     istio_sni(port["number"], host), cert_dir, trust_domain)
                except TlsUnsupported as error:
                    raise Unsupported(str(error)) from None
                clusters.append(cluster)
    return clusters, ports_by_host


def _apply_traffic_policy(cluster: dict, policy: dict) -> None:
    _only(policy, {"loadBalancer", "connectionPool", "outlierDetection", "tls"},
          "trafficPolicy")
    lb = policy.get("loadBalancer", {})
    _only(lb, {"simple"}, "trafficPolicy.loadBalancer")
    if lb.get("simple") not in _LB:
        raise Unsupported(f"loadBalancer.simple {lb.get('simple')} not rendered for Envoy")
    cluster["lb_policy"] = _LB[lb.get("simple")]
    pool = policy.get("connectionPool", {})
    tcp, http = pool.get("tcp", {}), pool.get("http", {})
    _only(tcp, {"maxConnections", "connectTimeout"}, "connectionPool.tcp")
    _only(http, {"http1MaxPendingRequests", "http2MaxRequests", "maxRetries"},
          "connectionPool.http")
    cluster["connect_timeout"] = _dur(tcp.get("connectTimeout", ISTIO_DEFAULT_CONNECT_TIMEOUT))
    cluster["circuit_breakers"] = {"thresholds": [{
        "max_connections": tcp.get("maxConnections", UNLIMITED),
        "max_pending_requests": http.get("http1MaxPendingRequests", UNLIMITED),
        "max_requests": http.get("http2MaxRequests", UNLIMITED),
        "max_retries": http.get("maxRetries", UNLIMITED),
    }]}
    od = policy.get("outlierDetection")
    if od is None:
        return
    _only(od, {"consecutive5xxErrors", "consecutiveGatewayErrors", "interval",
               "baseEjectionTime", "maxEjectionPercent"}, "outlierDetection")
    out: dict[str, Any] = {"enforcing_success_rate": 0}  # Istio turns success-rate off
    if "consecutive5xxErrors" in od:
        out["consecutive_5xx"] = od["consecutive5xxErrors"]
        out["enforcing_consecutive_5xx"] = 100 if od["consecutive5xxErrors"] > 0 else 0
    if "consecutiveGatewayErrors" in od:
        out["consecutive_gateway_failure"] = od["consecutiveGatewayErrors"]
        out["enforcing_consecutive_gateway_failure"] = 100
    for key, envoy_key in (("interval", "interval"), ("baseEjectionTime", "base_ejection_time")):
        if key in od:
            out[envoy_key] = _dur(od[key])
    if "maxEjectionPercent" in od:
        out["max_ejection_percent"] = od["maxEjectionPercent"]
    cluster["outlier_detection"] = out


def _retry_policy(retries: dict | None) -> dict | None:
    if retries is not None and retries.get("attempts", 0) == 0:
        return None
    retries = retries or {"attempts": 2}  # Istio's default when a route names no retries
    _only(retries, {"attempts", "retryOn", "perTryTimeout"}, "retries")
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
        policy["per_try_timeout"] = _dur(retries["perTryTimeout"])
    return policy


def _string_match(spec: dict, where: str) -> dict:
    _only(spec, {"exact", "prefix", "regex"}, where)
    if "regex" in spec:
        return {"safe_regex": {"regex": spec["regex"]}}
    return dict(spec)


def _route_matches(match: dict) -> dict:
    _only(match, {"name", "uri", "headers", "ignoreUriCase"}, "http.match")
    out: dict[str, Any] = {}
    uri = match.get("uri", {"prefix": "/"})
    _only(uri, {"exact", "prefix", "regex"}, "http.match.uri")
    if "exact" in uri:
        out["path"] = uri["exact"]
    elif "prefix" in uri:
        out["prefix"] = uri["prefix"]
    else:
        out["safe_regex"] = {"regex": uri["regex"]}
    if match.get("ignoreUriCase"):
        out["case_sensitive"] = False
    headers = [{"name": name, "string_match": _string_match(m, f"headers.{name}")}
               for name, m in match.get("headers", {}).items()]
    if headers:
        out["headers"] = headers
    return out


def _routes(http: dict, ports_by_host: dict[str, list[int]]) -> list[dict]:
    _only(http, {"name", "match", "route", "timeout", "retries"}, "VirtualService http")
    targets = []
    for dest in http["route"]:
        _only(dest, {"destination", "weight"}, "http.route")
        d = dest["destination"]
        _only(d, {"host", "port"}, "http.route.destination")
        ports = ports_by_host.get(d["host"], [])
        port = d.get("port", {}).get("number") or (ports[0] if len(ports) == 1 else None)
        if port is None:
            raise Unsupported(f"destination {d['host']}: no ServiceEntry port to route to")
        targets.append((cluster_name(d["host"], port), dest.get("weight", 100)))
    action: dict[str, Any] = {"timeout": _dur(http.get("timeout", "0s"))}
    if len(targets) == 1:
        action["cluster"] = targets[0][0]
    else:
        action["weighted_clusters"] = {"clusters": [{"name": n, "weight": w} for n, w in targets]}
    retry = _retry_policy(http.get("retries"))
    if retry:
        action["retry_policy"] = retry
    return [{"match": _route_matches(m), "route": action}
            for m in (http.get("match") or [{}])]


def _namespace(doc: dict) -> str:
    return (doc.get("metadata") or {}).get("namespace") or "default"


def _by_kind(docs: list[dict], kinds: set[str]) -> dict[str, list[dict]]:
    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    extra = set(by_kind) - kinds
    if extra:
        raise Unsupported(f"kinds {', '.join(sorted(extra))} not rendered for Envoy")
    return by_kind


def _http_connection_manager(stat_prefix: str, route_name: str, vhosts: list[dict],
                             **extra: Any) -> dict:
    """The HCM filter, tuned per Envoy's benchmarking FAQ (no request ids, no dynamic stats)."""
    hcm = {
        "@type": f"{_HCM}.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "generate_request_id": False,
        **extra,
        "route_config": {"name": route_name, "virtual_hosts": vhosts},
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": _ROUTER, "dynamic_stats": False}}],
    }
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}


def render_bootstrap(docs: list[dict], listen_port: int, admin_port: int,
                     cert_dir: Path | None = None, trust_domain: str = TRUST_DOMAIN) -> dict:
    """The Envoy bootstrap (as a dict) serving the docs' routes on 127.0.0.1:listen_port.

    cert_dir is the client workload's certificate directory, needed when a cluster uses
    Istio mutual TLS. PeerAuthentication is accepted and ignored: it governs inbound only.
    """
    by_kind = _by_kind(docs, {"ServiceEntry", "VirtualService", "DestinationRule",
                              "PeerAuthentication"})
    rules = {doc["spec"]["host"]: doc["spec"] for doc in by_kind.get("DestinationRule", [])}
    for host, spec in rules.items():
        _only(spec, {"host", "trafficPolicy"}, f"DestinationRule {host}")
    clusters, ports_by_host = _clusters(by_kind.get("ServiceEntry", []), rules, cert_dir,
                                        trust_domain)
    vhosts = []
    for doc in by_kind.get("VirtualService", []):
        vs = doc.get("spec", {})
        _only(vs, {"hosts", "http"}, "VirtualService")
        routes = [r for http in vs.get("http", []) for r in _routes(http, ports_by_host)]
        for host in vs["hosts"]:
            vhosts.append({"name": host, "domains": [host, f"{host}:*"], "routes": routes})
    listener = {
        "name": f"outbound_127.0.0.1_{listen_port}",
        "address": _addr("127.0.0.1", listen_port),
        "filter_chains": [{"filters": [_http_connection_manager("outbound_http", "outbound",
                                                                vhosts)]}],
    }
    return {
        "admin": {"address": _addr("127.0.0.1", admin_port)},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }


def render_inbound_bootstrap(docs: list[dict], *, namespace: str, labels: dict[str, str],
                             inbound_port: int, app_port: int, admin_port: int,
                             cert_dir: Path | None, trust_domain: str = TRUST_DOMAIN) -> dict:
    """A server sidecar: 127.0.0.1:inbound_port -> the app on 127.0.0.1:app_port.

    Like Istio's inbound path: every request goes to the local app (no retries, no route
    timeout), mTLS as PeerAuthentication says for this workload and port, and the
    caller's identity in x-forwarded-client-cert (what a caller sent there is dropped).
    """
    by_kind = _by_kind(docs, {"ServiceEntry", "VirtualService", "DestinationRule",
                              "PeerAuthentication"})
    cluster = f"inbound|{app_port}||"
    vhost = {"name": "inbound", "domains": ["*"],
             "routes": [{"match": {"prefix": "/"},
                         "route": {"cluster": cluster, "timeout": "0s"}}]}
    hcm = _http_connection_manager(
        f"inbound_127.0.0.1_{inbound_port}", "inbound", [vhost],
        forward_client_cert_details="SANITIZE_SET",
        set_current_client_cert_details={"uri": True})
    try:
        mode = inbound_mode(by_kind.get("PeerAuthentication", []), namespace, labels, app_port)
        chains, listener_filters = inbound_filter_chains(mode, [hcm], cert_dir, trust_domain)
    except TlsUnsupported as error:
        raise Unsupported(str(error)) from None
    listener: dict[str, Any] = {"name": f"inbound_127.0.0.1_{inbound_port}",
                                "address": _addr("127.0.0.1", inbound_port),
                                "filter_chains": chains}
    if listener_filters:
        listener["listener_filters"] = listener_filters
    app = {"name": cluster, "type": "STATIC",
           "load_assignment": {"cluster_name": cluster, "endpoints": [
               {"lb_endpoints": [{"endpoint": {"address": _addr("127.0.0.1", app_port)}}]}]}}
    _apply_traffic_policy(app, {})  # Istio's connect timeout; circuit breakers raised
    return {
        "admin": {"address": _addr("127.0.0.1", admin_port)},
        "static_resources": {"listeners": [listener], "clusters": [app]},
    }
