"""What one config version compiles to (Snapshot), and what `remora proxy` was asked to run
(ProxyOptions). A Snapshot is built once per version and swapped by one assignment; the
Worker (worker.py) owns the loop, listeners and pools around it."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from remora.config.model import MeshConfig
from remora.config.names import qualify_host
from remora.config.sidecar_scope import scoped_config, sidecar_for
from remora.proxy.process.capture_seam import CaptureSupport
from remora.proxy.process.cluster_setup import prepare_cluster
from remora.proxy.process.gateway import compile_gateway
from remora.proxy.process.listener import ListenerSettings
from remora.proxy.router.route_table import RouteTable, build_route_table
from remora.proxy.router.tcp_routes import sidecar_tcp_routes
from remora.proxy.security.credentials import CredentialSource
from remora.proxy.security.identity import WorkloadIdentity
from remora.proxy.security.inbound_policy import InboundPolicy, compile_inbound_policy
from remora.proxy.telemetry.istio_metrics import local_service_tags, service_tags
from remora.proxy.upstream.cluster import Cluster, Endpoint, build_clusters
from remora.proxy.upstream.locality import apply_locality
from remora.proxy.upstream.pool import PoolRegistry
from remora.proxy.upstream.tls_origination import check_origination


@dataclass
class ProxyOptions:
    """What `remora proxy` was asked to run."""

    mesh_config: list[str] = field(default_factory=list)
    outbound_port: int = 15001
    admin_port: int = 15000
    inbound_port: int | None = None
    app_port: int | None = None
    bind: str = "127.0.0.1"
    inbound_bind: str = "127.0.0.1"
    admin_bind: str = "127.0.0.1"
    app_host: str = "127.0.0.1"
    workers: int = 1
    drain_seconds: float = 5.0
    retry_buffer_bytes: int = 1 << 20   # request body kept for retries and the keep-alive race
    access_log: str = "stdout"          # stdout | off
    access_log_format: str = "text"     # text | json
    prometheus_port: int = 15090        # Istio's merged-metrics port (0: no such listener)
    prometheus_bind: str = "127.0.0.1"  # its address (the CLI defaults it to --admin-bind)
    health_port: int = 15021            # Istio's readiness port: GET /healthz/ready (0: off)
    health_bind: str = "127.0.0.1"      # its address (the CLI defaults it to --admin-bind)
    istio_metrics: bool = True          # Istio's standard metrics and the metadata exchange
    trace_sampling: float = 1.0         # percent of new traces sampled (randomSamplingPercentage)
    otlp_endpoint: str | None = None    # OTLP/HTTP traces URL; no spans are recorded without it
    listener: ListenerSettings = field(default_factory=ListenerSettings)
    identity: WorkloadIdentity = field(default_factory=WorkloadIdentity)
    control: str | None = None          # control server URL; config comes from it, not files
    state_dir: str | None = None        # where the last good pushed snapshot is kept
    token: str | None = field(default=None, repr=False)   # join token for the CA (with control)
    cert_dir: str | None = None         # workload certificate from files (cert-chain.pem, key.pem, root-cert.pem)
    credentials_dir: str | None = None  # DestinationRule tls.credentialName -> <dir>/<name>/ (tls_origination)
    # `remora gateway`: Gateway tls.credentialName from this source (security/credentials.py;
    # the CLI passes remora.kube.secrets.KubernetesCredentials), else from credentials_dir.
    credential_source: CredentialSource | None = None
    # Listeners receive iptables-redirected traffic (docs/interception.md): a CaptureSupport
    # (capture_seam.py; the CLI passes remora.intercept.support.TransparentCapture()), or None.
    capture: CaptureSupport | None = None
    outbound_traffic_policy: str = "ALLOW_ANY"   # captured traffic to no mesh service: ALLOW_ANY | REGISTRY_ONLY
    gateway: bool = False               # `remora gateway`: listeners from Gateway servers (process/gateway.py)
    gateway_port_map: dict[int, int] = field(default_factory=dict)   # server port -> local port (--port-map)


class Snapshot:
    """An immutable compiled config version: route tables and clusters."""

    def __init__(self, config: MeshConfig, options: ProxyOptions, pools: PoolRegistry,
                 previous: "Snapshot | None" = None, credentials=None) -> None:
        """`credentials`: the worker's gateway CredentialContexts (gateways only)."""
        self.config = config
        self.version = config.version
        self.loaded_at = time.time()
        identity = options.identity
        # A Sidecar resource narrows what this sidecar keeps (config/sidecar_scope.py); gateways
        # are not scoped by Sidecars, as in Istio.
        sidecar = None if options.gateway else sidecar_for(config, identity.namespace, identity.labels)
        self.sidecar = sidecar
        policy = sidecar.spec.outbound_traffic_policy if sidecar is not None else None
        self.outbound_traffic_policy = (policy.mode if policy is not None and policy.mode
                                        else options.outbound_traffic_policy)
        scoped = config if sidecar is None else scoped_config(config, identity.namespace, identity.labels)
        self.services = build_clusters(scoped, identity)
        self.outbound: RouteTable = build_route_table(scoped, self.services, identity.labels, identity.namespace)
        # Before clusters are prepared below: these may add clusters (an unknown host or subset).
        # VirtualService tcp routes per service FQDN, for captured TCP (remora/intercept).
        self.tcp_routes = sidecar_tcp_routes(scoped, self.services, options.identity.labels,
                                             options.identity.namespace) if options.capture is not None else {}
        # `remora gateway`: server port -> GatewayPort (route table, TLS); empty on sidecars.
        self.gateway_ports, self.gateway_warnings = (compile_gateway(config, self.services, options, credentials)
                                                     if options.gateway else ({}, []))
        self.inbound: RouteTable | None = None
        self.inbound_cluster: Cluster | None = None
        self.inbound_policy: InboundPolicy | None = None   # mTLS mode + authorization (inbound only)
        if options.inbound_port is not None and options.app_port is not None:
            name = f"inbound|{options.app_port}||"
            self.inbound_cluster = Cluster(name, "inbound", options.app_port, None,
                                           [Endpoint(options.app_host, options.app_port, {})], None)
            # HTTP/2 to the app when the service port that reaches this sidecar's inbound
            # listener is declared GRPC / HTTP2 (Istio: the Service port targeting the pod).
            self.inbound_cluster.http2 = inbound_http2(self.services, options.inbound_port)
            self.inbound = RouteTable.single(self.inbound_cluster, "inbound")
            self.inbound_policy = compile_inbound_policy(config, options.identity, options.app_port)
        old = {c.name: c for c in previous.clusters()} if previous is not None else {}
        internal = mesh_internal_hosts(scoped)
        for fqdn, info in self.services.items():
            tags = service_tags(fqdn, info.namespace, fqdn in internal)
            for cluster in info.clusters.values():
                cluster.telemetry = tags
        if self.inbound_cluster is not None:
            self.inbound_cluster.telemetry = local_service_tags(options.identity)
        check_origination(self.clusters(), pools.origins)
        for cluster in self.clusters():
            # Before prepare_cluster: the detector it makes may set the balancer's panic at once.
            apply_locality(cluster, options.identity.locality, options.identity.labels)
            prepare_cluster(cluster, pools, old.get(cluster.name))
        self._pools, self._options = pools, options
        # warmupDurationSecs: the sweeper re-weights these while endpoints warm up
        self.warmup_clusters = [cluster for cluster in self.clusters() if cluster.warmup]
        self._inbound_ports: dict[int, tuple] = {}   # --capture: app port -> (table, policy, cluster)
        # --capture: the per-port inbound clusters made so far, whose stats the next ones keep.
        self._port_clusters: dict[str, Cluster] = {} if previous is None else {
            **previous._port_clusters, **{found[2].name: found[2] for found in previous._inbound_ports.values()}}
        # Transparent capture (--capture): original destination -> mesh service, per version.
        self.destinations = (options.capture.destinations(scoped, self.services)
                             if options.capture is not None else None)

    def inbound_for(self, port: int) -> tuple:
        """(route table, InboundPolicy, cluster) of one app port, made on first use (--capture:
        inbound traffic to any port of the pod, forwarded to the app on that port)."""
        found = self._inbound_ports.get(port)
        if found is None:
            if port == self._options.app_port and self.inbound is not None:
                found = (self.inbound, self.inbound_policy, self.inbound_cluster)
            else:
                options = self._options
                cluster = Cluster(f"inbound|{port}||", "inbound", port, None,
                                  [Endpoint(options.app_host, port, {})], None)
                cluster.telemetry = local_service_tags(options.identity)
                prepare_cluster(cluster, self._pools, self._port_clusters.get(cluster.name))
                found = (RouteTable.single(cluster, "inbound"),
                         compile_inbound_policy(self.config, options.identity, port), cluster)
            self._inbound_ports[port] = found
        return found

    def clusters(self) -> list[Cluster]:
        """Every cluster of this version, in a stable order."""
        found = {c.name: c for info in self.services.values() for c in info.clusters.values()}
        if self.inbound_cluster is not None:
            found[self.inbound_cluster.name] = self.inbound_cluster
        return [found[name] for name in sorted(found)]


def inbound_http2(services, inbound_port: int) -> bool:
    """True when a mesh service port with an endpoint on `inbound_port` is an HTTP/2 protocol."""
    for info in services.values():
        for (port, _), cluster in info.clusters.items():
            if cluster.http2 and any(ep.port == inbound_port for ep in cluster.endpoints):
                return True
    return False


def mesh_internal_hosts(config: MeshConfig) -> frozenset[str]:
    """FQDNs of ServiceEntries with `location: MESH_INTERNAL` (Istio's default is external)."""
    return frozenset(qualify_host(host, se.namespace) for se in config.service_entries
                     if (se.spec.location or "").upper() == "MESH_INTERNAL" for host in se.spec.hosts)
