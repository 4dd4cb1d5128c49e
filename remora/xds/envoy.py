"""Render Remora's mesh config (Istio YAML) as an Envoy v3 static bootstrap, the way Istio would.

The one source of truth for running Envoy beside Remora: the benchmarks and
`remora envoy-config` both call this, so the two data planes serve the same route table.
Layout: the explicit-port sidecar the benchmarks use (Istio's names, not its 15001/15006
iptables listeners): `render_bootstrap` is a client sidecar (one outbound HTTP listener
carrying every VirtualService), `render_inbound_bootstrap` a server sidecar (inbound
listener in front of the local app, mTLS by PeerAuthentication).

Translated: ServiceEntry (STATIC, DNS) and Kubernetes Service (as the ServiceEntry Istio makes of
it) + WorkloadEntry endpoints and DestinationRule
(envoy_clusters.py), VirtualService (envoy_routes.py), Istio mutual TLS and
PeerAuthentication (envoy_tls.py), AuthorizationPolicy on the server side (envoy_rbac.py),
RequestAuthentication with inline keys (envoy_jwt.py). Anything else raises `Unsupported` naming the resource
and field path, so Envoy never silently runs a different route than Remora.
Envoy is tuned as its "best practices for benchmarking Envoy" FAQ advises: circuit breakers
effectively off unless the DestinationRule sets them, generate_request_id off,
dynamic_stats off, no access log; `--concurrency` is the runner's command-line choice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from remora.config.kinds import non_mesh_kind
from remora.config.kube_service import service_entry_document
from remora.xds.envoy_clusters import (UNLIMITED, Unsupported, addr, apply_http_version,
                                       apply_traffic_policy,
                                       build_clusters, cluster_name, services)
from remora.xds.envoy_jwt import jwt_filters
from remora.xds.envoy_rbac import rbac_filters
from remora.xds.envoy_routes import (FAULT_FILTER, ISTIO_DEFAULT_RETRY_ON, uses_fault,
                                     virtual_hosts)
from remora.xds.envoy_tls import TlsUnsupported, inbound_filter_chains, inbound_mode

__all__ = ["DEFAULT_TRUST_DOMAIN", "ISTIO_DEFAULT_RETRY_ON", "UNLIMITED", "Unsupported",
           "cluster_name", "render_bootstrap", "render_inbound_bootstrap"]

DEFAULT_TRUST_DOMAIN = "cluster.local"
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
# Each side reads what concerns it: PeerAuthentication, AuthorizationPolicy and
# RequestAuthentication are enforced by the server's sidecar, routes and clusters by the
# client's (as in Istio).
_KINDS = {"ServiceEntry", "WorkloadEntry", "VirtualService", "DestinationRule",
          "PeerAuthentication", "AuthorizationPolicy", "RequestAuthentication"}


def _by_kind(docs: list[dict], kinds: set[str], role: str) -> dict[str, list[dict]]:
    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        handling = non_mesh_kind(doc["kind"], doc.get("apiVersion"))
        if handling == "skip":
            continue   # Deployment, ServiceAccount, ...: not mesh config (the loader says so)
        if handling == "service":
            doc = service_entry_document(doc)   # a Kubernetes Service, as Istio's registry sees it
            doc["spec"].pop("addresses", None)   # its cluster IPs: nothing to do with explicit ports
        if doc["kind"] == "Gateway":
            continue   # configures gateway workloads (remora gateway), never a sidecar
        by_kind.setdefault(doc["kind"], []).append(doc)
    extra = set(by_kind) - kinds
    if extra:
        raise Unsupported(f"kinds {', '.join(sorted(extra))} not rendered for an Envoy {role} "
                          "sidecar")
    return by_kind


def _http_connection_manager(stat_prefix: str, route_name: str, vhosts: list[dict],
                             policy_filters: list[dict] | None = None, **extra: Any) -> dict:
    """The HCM filter, tuned per Envoy's benchmarking FAQ (no request ids, no dynamic stats).

    The fault filter is added only when a route injects faults (Istio always adds it; an
    unused filter would only cost Envoy time in the benchmarks).
    """
    filters = list(policy_filters or [])
    if uses_fault(vhosts):
        filters.append({"name": FAULT_FILTER, "typed_config": {"@type": _FAULT}})
    filters.append({"name": "envoy.filters.http.router",
                    "typed_config": {"@type": _ROUTER, "dynamic_stats": False}})
    hcm = {
        "@type": f"{_HCM}.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "generate_request_id": False,
        # Istio's default pathNormalization (BASE), as Remora's --path-normalization default.
        "normalize_path": True,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        **extra,
        "route_config": {"name": route_name, "virtual_hosts": vhosts},
        "http_filters": filters,
    }
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}


def render_bootstrap(docs: list[dict], listen_port: int, admin_port: int,
                     cert_dir: Path | None = None,
                     trust_domain: str = DEFAULT_TRUST_DOMAIN,
                     workload: tuple[str, dict[str, str]] | None = None) -> dict:
    """The Envoy bootstrap (as a dict) serving the docs' routes on 127.0.0.1:listen_port.

    cert_dir is the client workload's certificate directory, needed when a cluster uses
    Istio mutual TLS. `workload` (namespace, labels) is the client workload, which decides
    the DestinationRules with a workloadSelector (none apply without it).
    PeerAuthentication, AuthorizationPolicy and RequestAuthentication are accepted and
    ignored: they govern the server's side.
    """
    by_kind = _by_kind(docs, _KINDS, "outbound")
    svcs = services(by_kind.get("ServiceEntry", []), by_kind.get("WorkloadEntry", []))
    clusters = build_clusters(svcs, by_kind.get("DestinationRule", []), cert_dir, trust_domain,
                              workload)
    vhosts = virtual_hosts(by_kind.get("VirtualService", []), svcs)
    listener = {
        "name": f"outbound_127.0.0.1_{listen_port}",
        "address": addr("127.0.0.1", listen_port),
        "filter_chains": [{"filters": [_http_connection_manager("outbound_http", "outbound",
                                                                vhosts)]}],
    }
    return {
        "admin": {"address": addr("127.0.0.1", admin_port)},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }


def render_inbound_bootstrap(docs: list[dict], *, namespace: str, labels: dict[str, str],
                             inbound_port: int, app_port: int, admin_port: int,
                             cert_dir: Path | None,
                             trust_domain: str = DEFAULT_TRUST_DOMAIN,
                             app_protocol: str | None = None) -> dict:
    """A server sidecar: 127.0.0.1:inbound_port -> the app on 127.0.0.1:app_port.

    `app_protocol` is the declared protocol of the service port that reaches this app
    (config/protocols.py): GRPC, HTTP2 and GRPC-WEB apps are spoken to in HTTP/2 (h2c).

    Like Istio's inbound path: every request goes to the local app (no retries, no route
    timeout), mTLS as PeerAuthentication says for this workload and port, and the
    caller's identity in x-forwarded-client-cert (what a caller sent there is dropped).
    RequestAuthentications that apply become the jwt_authn filter (envoy_jwt.py), before the
    RBAC filters of the AuthorizationPolicies (envoy_rbac.py).
    """
    by_kind = _by_kind(docs, _KINDS, "inbound")
    cluster = f"inbound|{app_port}||"
    vhost = {"name": "inbound", "domains": ["*"],
             "routes": [{"match": {"prefix": "/"},
                         "route": {"cluster": cluster, "timeout": "0s"}}]}
    hcm = _http_connection_manager(
        f"inbound_127.0.0.1_{inbound_port}", "inbound", [vhost],
        jwt_filters(by_kind.get("RequestAuthentication", []), namespace, labels)
        + rbac_filters(by_kind.get("AuthorizationPolicy", []), namespace, labels, app_port),
        forward_client_cert_details="SANITIZE_SET",
        set_current_client_cert_details={"uri": True})
    try:
        mode = inbound_mode(by_kind.get("PeerAuthentication", []), namespace, labels, app_port)
        chains, listener_filters = inbound_filter_chains(mode, [hcm], cert_dir, trust_domain)
    except TlsUnsupported as error:
        raise Unsupported(str(error)) from None
    listener: dict[str, Any] = {"name": f"inbound_127.0.0.1_{inbound_port}",
                                "address": addr("127.0.0.1", inbound_port),
                                "filter_chains": chains}
    if listener_filters:
        listener["listener_filters"] = listener_filters
    app = {"name": cluster, "type": "STATIC",
           "load_assignment": {"cluster_name": cluster, "endpoints": [
               {"lb_endpoints": [{"endpoint": {"address": addr("127.0.0.1", app_port)}}]}]}}
    apply_traffic_policy(app, {})  # Istio's connect timeout; circuit breakers raised
    apply_http_version(app, app_protocol, {})
    return {
        "admin": {"address": addr("127.0.0.1", admin_port)},
        "static_resources": {"listeners": [listener], "clusters": [app]},
    }
