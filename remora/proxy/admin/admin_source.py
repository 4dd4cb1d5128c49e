"""What admin reads from a worker: readiness (config and certificate), the "xds" dump
section and stats of the config's origin (ControlView), and the single in-process
worker's admin source (WorkerAdminSource); fanout.py's FanoutAdminSource extends ControlView
for N forked workers."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from remora.proxy.upstream.cluster import GAUGE_STATS
from remora.proxy.telemetry.istio_metrics import render

if TYPE_CHECKING:
    from remora.proxy.process.worker import Worker


def gauge_names(stats: dict[str, int]) -> frozenset[str]:
    """Which stat names are gauges (the rest are counters)."""
    return frozenset(n for n in stats if n.rsplit(".", 1)[-1] in GAUGE_STATS
                     or n.endswith(("_active", "membership_total", "membership_healthy", ".expiry_seconds"))
                     or n.startswith("server.") or n == "control_plane.connected")


class ControlView:
    """What admin adds for the config's origin: readiness, the "xds" dump section, stats.

    `xds` is the XdsClient under --control, None when the config came from files.
    """

    xds = None
    certs = None     # the SvidManager (--token) or CertDirWatcher (--cert-dir), else None
    health_check_failed = False    # POST /healthcheck/fail .. /healthcheck/ok (admin/server.py)
    counter_baseline = None        # the counters at POST /reset_counters (admin/server.py)

    def config_ready(self) -> bool:
        """Files are loaded before serving; pushed config must have arrived (or come from disk)."""
        return self.xds is None or self.xds.has_config

    def certificate_ready(self) -> bool:
        """With a certificate source, serving waits for the workload certificate (as Envoy's
        listeners wait for their SDS secrets): without it, mTLS peers cannot be reached."""
        return self.certs is None or self.certs.current() is not None

    def not_ready_reason(self) -> str | None:
        """Why /ready is not LIVE yet, one line per missing piece (shown in its body), or None."""
        reasons = []
        if not self.config_ready():
            reasons.append("waiting for the first configuration from the control server")
        if not self.certificate_ready():
            error = self.certs.last_error
            reasons.append("waiting for the workload certificate" + (f" (last error: {error})" if error else ""))
        return "\n".join(reasons) or None

    async def certs_status(self) -> dict | None:
        """GET /certs: the certificate source's status, or None without one."""
        return None if self.certs is None else self.certs.status()

    def with_control(self, dump: dict) -> dict:
        dump["xds"] = self.xds.status() if self.xds is not None else {"config_source": "files"}
        return dump

    def control_stats(self) -> dict[str, int]:
        return self.xds.stats() if self.xds is not None else {}


class WorkerAdminSource(ControlView):
    """The admin view of a single in-process worker."""

    def __init__(self, worker: Worker, stop: asyncio.Event) -> None:
        self.worker = worker
        self.stop = stop
        self._last_stats: dict[str, int] = {}

    def is_ready(self) -> bool:
        return (self.worker.ready and not self.worker.draining and self.config_ready()
                and self.certificate_ready())

    def is_draining(self) -> bool:
        return self.worker.draining

    async def clusters(self) -> list[dict]:
        return self.worker.clusters()

    async def config_dump(self) -> dict:
        return self.with_control(self.worker.config_dump())

    async def listeners(self) -> list[dict]:
        return self.worker.listener_addresses()

    async def stats(self) -> dict[str, int]:
        self._last_stats = {**self.worker.stats(), **self.control_stats()}
        return self._last_stats

    def gauge_names(self) -> frozenset[str]:
        return gauge_names(self._last_stats or self.worker.stats())

    async def prometheus_extra(self) -> str:
        """Istio's standard metrics, appended to /stats/prometheus."""
        istio = self.worker.istio
        return render(istio.export()) if istio is not None else ""

    async def drain_listeners(self) -> None:
        self.worker.stop_accepting()

    async def quit(self) -> None:
        self.stop.set()
