"""One worker: an event loop with its listeners, snapshot, pools, counters and sweeper.

Everything here is per worker; with `--workers N` each process has its own Worker and the
supervisor sums what they report. The snapshot (route tables + clusters, snapshot.py) is
compiled once per config version and swapped by one assignment.
"""
from __future__ import annotations

import asyncio
import gc
import os
import time
from dataclasses import asdict

import msgspec

from remora.config.model import MeshConfig
from remora.proxy.codec.http2 import Http2Stats
from remora.proxy.process.gateway import credential_contexts, gateway_dump, reconcile, start_listener
from remora.proxy.process.listener import Listener
from remora.proxy.process.snapshot import (  # noqa: F401 (ProxyOptions, mesh_internal_hosts re-exported)
    ProxyOptions, Snapshot, inbound_http2, mesh_internal_hosts)
from remora.proxy.router.deadlines import RequestDeadlines
from remora.proxy.security.inbound_accept import OUT_OF_DESCRIPTORS
from remora.proxy.security.tls import MeshTls
from remora.proxy.telemetry.access_log_writer import AccessLogWriter
from remora.proxy.telemetry.istio_metrics import IstioMetrics
from remora.proxy.telemetry.otlp import SpanExporter
from remora.proxy.telemetry.process_memory import memory_stats
from remora.proxy.telemetry.telemetry_policy import CLIENT, SERVER, TelemetryDefaults, resolve
from remora.proxy.telemetry.tracing import Tracer
from remora.proxy.upstream.pool import PoolRegistry
from remora.proxy.upstream.slow_start import warm, warming
from remora.proxy.upstream.tls_origination import OriginContexts
from remora.proxy import log_levels


# Allocations (net of frees) between two young-generation collections; CPython's default is
# 700. Each request allocates dozens of container objects, most freed by reference counting
# within the call, yet the collector ran every few calls and walked everything in flight:
# 3-5% of a sidecar's CPU under grpc-2hop-mtls. Cycles are still collected, a little later.
YOUNG_GC_THRESHOLD = 10_000


def collect_young_less_often() -> None:
    """Raise the young generation's threshold to YOUNG_GC_THRESHOLD (never lower it)."""
    young, middle, old = gc.get_threshold()
    if young and young < YOUNG_GC_THRESHOLD:
        gc.set_threshold(YOUNG_GC_THRESHOLD, middle, old)


class Worker:
    """Listeners and state of one event loop."""

    def __init__(self, options: ProxyOptions, config: MeshConfig, worker_id: int = 0) -> None:
        self.options = options
        self.worker_id = worker_id
        self.loop = asyncio.get_running_loop()
        self.tls = MeshTls()    # mTLS contexts; filled by the SvidManager or --cert-dir
        self.pools = PoolRegistry(self.loop, self.tls, OriginContexts(options.credentials_dir))
        self.deadlines = RequestDeadlines(self.loop)
        self.istio = IstioMetrics(options.identity) if options.istio_metrics else None
        # Gateway credentialName contexts, kept across config versions (a rotated Secret
        # is served without a new version: security/gateway_credentials.py).
        self.credentials = credential_contexts(options) if options.gateway else None
        self.snapshot = Snapshot(config, options, self.pools, credentials=self.credentials)
        # Always a live writer: a Telemetry resource can turn logging on where the flag is off.
        self.access_log = AccessLogWriter(fmt=options.access_log_format)
        self.tracer = Tracer(options.identity, _span_exporter(options))
        self.retired: list[Listener] = []   # gateway listeners of ports no longer served, finishing
        self.listeners: list[Listener] = [] if options.gateway else [
            Listener(self, "outbound", options.bind, options.outbound_port, False, options.listener)]
        if options.gateway:
            reconcile(self, self._gateway_listener)
        elif self.snapshot.inbound is not None:
            self.listeners.append(Listener(self, "inbound", options.inbound_bind,
                                           options.inbound_port, True, options.listener))
        self.apply_telemetry(config)
        self.ready = False
        self.draining = False
        self.drain_started: float | None = None   # loop time SIGTERM / quitquitquit began the drain
        self.started_at = time.time()
        self._sweeper: asyncio.TimerHandle | None = None
        self._next_tick: dict[str, float] = {}
        self.out_of_descriptors = False   # the last sweep could not open a file descriptor
        self.fd_exhausted = 0             # episodes of that (listener_manager.fd_exhausted)

    async def start(self, reuse_port: bool) -> None:
        for listener in self.listeners:
            await listener.start(reuse_port)
        self.access_log.start(self.loop)
        if self.tracer.exporter is not None:
            self.tracer.exporter.start()
        self._sweeper = self.loop.call_later(1.0, self._sweep)
        collect_young_less_often()
        self.ready = True

    def apply(self, config: MeshConfig) -> None:
        """Swap in a new config version (requests in flight keep the old one)."""
        self.snapshot = Snapshot(config, self.options, self.pools, self.snapshot, self.credentials)
        if self.options.gateway:
            for listener in reconcile(self, self._gateway_listener):
                self.loop.create_task(start_listener(listener))
        self.apply_telemetry(config)

    def _gateway_listener(self, port, key) -> Listener:
        """The listener of one gateway server port (process/gateway.py)."""
        options = self.options
        listener = Listener(self, f"gateway_{port.number}", port.bind or options.bind,
                            options.gateway_port_map.get(port.number, port.number), False, options.listener)
        listener.gateway_port, listener.gateway_key = port.number, key
        if getattr(self, "telemetry", None) is not None:
            listener.set_telemetry(self.telemetry[CLIENT])
        return listener

    def apply_telemetry(self, config: MeshConfig) -> None:
        """Resolve flags + Telemetry resources for this workload into each listener."""
        options, identity = self.options, self.options.identity
        defaults = TelemetryDefaults(access_log=options.access_log != "off",
                                     access_log_format=options.access_log_format,
                                     sampling_percent=options.trace_sampling,
                                     otlp=options.otlp_endpoint is not None)
        self.telemetry = resolve(config.telemetries, identity.namespace, identity.labels, defaults)
        for listener in self.listeners:
            listener.set_telemetry(self.telemetry[SERVER if listener.inbound else CLIENT])

    def _sweep(self) -> None:
        now = self.loop.time()
        self.retired = [listener for listener in self.retired if listener.connections or listener.tcp_sessions]
        for listener in (*self.listeners, *self.retired):
            for conn in list(listener.connections):
                conn.check_timeouts(now, listener.settings)
            for session in list(listener.tcp_sessions):
                session.check_idle(now)
        self.pools.sweep(now)
        for cluster in self.snapshot.warmup_clusters:
            if warming(cluster, now):
                warm(cluster, now)
        self._tick_outlier_detectors(now)
        self._check_descriptors()
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    def _check_descriptors(self) -> None:
        """Notice the process running out of file descriptors (one open/close a second).

        The outbound listener is uvloop's (libuv's) server: at EMFILE libuv accepts each
        pending connection on a reserved descriptor and closes it at once, without telling
        Python. That does not spin, but it is silent; this probe makes the episode visible
        (one warning, `listener_manager.fd_exhausted`). The inbound acceptor sees its own
        accept errors (inbound_accept.py)."""
        try:
            fd = os.open(os.devnull, os.O_RDONLY)
        except OSError as error:
            if error.errno in OUT_OF_DESCRIPTORS and not self.out_of_descriptors:
                self.out_of_descriptors = True
                self.fd_exhausted += 1
                log_levels.logger("connection").warning(
                    "out of file descriptors (%s): new outbound connections are "
                    "closed as soon as they are accepted, inbound accepting backs off, until "
                    "descriptors are free", error.strerror or error)
            return
        os.close(fd)
        self.out_of_descriptors = False

    def _tick_outlier_detectors(self, now: float) -> None:
        """Run each enabled detector's interval check (un-ejection, multiplier decay)."""
        for cluster in self.snapshot.clusters():
            detector = cluster.detector
            if detector is not None and detector.enabled:
                due = self._next_tick.get(cluster.name)
                if due is None:
                    self._next_tick[cluster.name] = now + detector.interval
                elif now >= due:
                    detector.tick()
                    self._next_tick[cluster.name] = now + detector.interval

    # -- drain and stop ------------------------------------------------------------------
    def stop_accepting(self) -> None:
        """Every listener stops accepting (POST /drain_listeners); idle connections close."""
        self.draining = True
        for listener in self.listeners:
            listener.stop_accepting()
            listener.close_idle()

    def begin_drain(self) -> None:
        """Start the shutdown drain: /healthz/ready says DRAINING from here on, inbound
        stops accepting, outbound keeps serving the app (Listener.begin_drain)."""
        if self.drain_started is None:
            self.drain_started = self.loop.time()
        self.draining = True
        for listener in self.listeners:
            listener.begin_drain()

    def in_flight(self) -> int:
        return sum(listener.stats.downstream_rq_active for listener in self.listeners)

    def open_connections(self) -> int:
        """Downstream connections on every listener (a WebSocket tunnel counts as one)."""
        return sum(len(listener.connections) for listener in (*self.listeners, *self.retired))

    async def drain(self, deadline_seconds: float) -> int:
        """Drain (Istio's EXIT_ON_ZERO_ACTIVE_CONNECTIONS): wait until no downstream
        connection or request is left, or `deadline_seconds` after the drain began; then
        close everything. Returns how many connections the deadline cut."""
        self.begin_drain()
        deadline = self.drain_started + deadline_seconds
        while (self.open_connections() or self.in_flight()) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
            for listener in self.listeners:
                if listener.inbound:
                    listener.close_idle()   # a pipelined request may have finished
        cut = self.open_connections()
        for listener in (*self.listeners, *self.retired):
            for conn in list(listener.connections):
                if conn.transport is not None:
                    conn.transport.close()
            listener.stop_accepting()
        self.pools.close_all_idle()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.access_log.close()
        if self.tracer.exporter is not None:
            self.tracer.exporter.close()
        return cut

    # -- what admin reads --------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for cluster in self.snapshot.clusters():
            prefix = f"cluster.{cluster.name}."
            for name, value in cluster.stats.as_dict().items():
                out[prefix + name] = value
            out[prefix + "upstream_cx_active"] = cluster.circuit.open
            out[prefix + "upstream_rq_pending_active"] = len(cluster.circuit.pending)
            if cluster.detector is not None and cluster.detector.enabled:
                for name, value in cluster.detector.stats().items():
                    out[prefix + "outlier_detection." + name] = value
            tls_stats = self.pools.tls_stats.get(cluster.name)
            if tls_stats is not None:
                for name, value in tls_stats.as_dict().items():
                    out[prefix + "ssl." + name] = value
            out[prefix + "membership_total"] = len(cluster.endpoints)
            out[prefix + "membership_healthy"] = sum(not e.ejected for e in cluster.endpoints)
        for listener in self.listeners:
            st = listener.stats.as_dict()
            for name in ("downstream_cx_total", "downstream_cx_active"):
                out[f"listener.{listener.address}.{name}"] = st[name]
            for name, value in st.items():
                out[f"http.{listener.name}.{name}"] = value
            if listener.acceptor is not None:
                for name, value in listener.acceptor.stats.named().items():
                    out[f"listener.{listener.address}.{name}"] = value
            if listener.gateway_key is not None and listener.gateway_key[3] in ("TCP", "TLS", "PASSTHROUGH"):
                for name, value in listener.tcp_stats.as_dict().items():
                    out[f"tcp.{listener.name}.{name}"] = value
            if listener.capture is not None:
                for name, value in listener.capture.stats.as_dict().items():
                    out[f"listener.{listener.address}.capture.{name}"] = value
                for name, value in listener.tcp_stats.as_dict().items():
                    out[f"tcp.{listener.name}.{name}"] = value
                if not listener.inbound:
                    for name, value in listener.capture.passthrough_stats.as_dict().items():
                        out[f"cluster.PassthroughCluster.{name}"] = value
            if listener.inbound:
                for name, value in listener.rbac.as_dict().items():
                    out[f"http.{listener.name}.rbac.{name}"] = value
                for name, value in listener.jwt_authn.as_dict().items():
                    out[f"http.{listener.name}.jwt_authn.{name}"] = value
        for name in Http2Stats.__slots__:
            out["http2." + name] = sum(getattr(listener.http2, name) for listener in self.listeners)
        out["server.live"] = 0 if self.draining else 1
        out["server.uptime"] = int(time.time() - self.started_at)
        out["server.concurrency"] = 1
        out["server.total_connections"] = sum(len(l.connections) for l in self.listeners)
        out.update(memory_stats())
        out["access_log.dropped"] = self.access_log.dropped
        out["listener_manager.fd_exhausted"] = self.fd_exhausted
        if self.credentials is not None:
            out.update(self.credentials.stats())
        out.update(self.tracer.stats())
        return out

    def clusters(self) -> list[dict]:
        result = []
        for cluster in self.snapshot.clusters():
            endpoints = []
            for ep in cluster.endpoints:
                pool = ep.pool
                endpoints.append({
                    "address": ep.key, "labels": ep.labels, "weight": ep.configured_weight,
                    "active_requests": ep.active_requests, "total_requests": ep.total_requests,
                    "errors": ep.errors, "health": "ejected" if ep.ejected else "healthy",
                    "connections_active": len(pool.active) - len(pool.idle) if pool else 0,
                    "connections_idle": len(pool.idle) if pool else 0,
                    "tls_mode": ep.tls_mode, "locality": ep.locality, "priority": ep.priority,
                })
            result.append({"name": cluster.name, "service": cluster.service,
                           "subset": cluster.subset or "", "lb_policy": cluster.lb_policy,
                           "endpoints": endpoints})
        return result

    def listener_addresses(self) -> list[dict]:
        """Each listener's name, bound address and path normalization (/listeners, /config_dump)."""
        return [{"name": listener.name, "address": f"{listener.host}:{listener.port}",
                 "path_normalization": listener.paths.level} for listener in self.listeners]

    def config_dump(self) -> dict:
        snap = self.snapshot
        cfg = snap.config
        resources = {}
        for kind, items in (("ServiceEntry", cfg.service_entries), ("WorkloadEntry", cfg.workload_entries),
                            ("VirtualService", cfg.virtual_services), ("DestinationRule", cfg.destination_rules),
                            ("Telemetry", cfg.telemetries), ("Gateway", cfg.gateways),
                            ("Sidecar", cfg.sidecars)):
            resources[kind] = [{"name": r.name, "namespace": r.namespace, "source": r.source,
                                "spec": msgspec.to_builtins(r.spec)} for r in items]
        return {
            "version": snap.version,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(snap.loaded_at)),
            "listeners": self.listener_addresses(),
            "virtual_hosts": sorted({k.decode() for k in snap.outbound.vhosts}),
            "clusters": [c.name for c in snap.clusters()],
            "telemetry": {listener.name: asdict(listener.telemetry) for listener in self.listeners},
            "inbound_security": snap.inbound_policy.dump if snap.inbound_policy is not None else None,
            "sidecar_resource": f"{snap.sidecar.namespace}/{snap.sidecar.name}" if snap.sidecar is not None else None,
            "outbound_traffic_policy": snap.outbound_traffic_policy,
            **({"gateway": gateway_dump(snap, self.credentials)} if self.options.gateway else {}),
            "warnings": list(cfg.warnings),
            "resources": resources,
        }


def _span_exporter(options: ProxyOptions) -> SpanExporter | None:
    """The OTLP exporter of this worker, or None: without --otlp-endpoint no span is recorded."""
    if options.otlp_endpoint is None:
        return None
    identity = options.identity
    return SpanExporter(options.otlp_endpoint, {
        "service.name": f"{identity.app}.{identity.namespace}",
        "service.version": identity.version,
        "service.instance.id": identity.id,
        "k8s.namespace.name": identity.namespace,
    })
