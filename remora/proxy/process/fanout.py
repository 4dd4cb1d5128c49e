"""The parent's admin view over N worker processes (`--workers N`): one line-JSON channel
per worker; stats summed (process-wide gauges and expiries taken once), readiness only when
every worker is ready, pushes applied by every worker or by none.
"""
from __future__ import annotations

import asyncio
import json

from remora.proxy.admin.admin_source import ControlView, gauge_names
from remora.proxy.control.xds_state import Candidate
from remora.proxy import log_levels
from remora.proxy.telemetry.istio_metrics import merge, render


async def apply_to_workers(source: "FanoutAdminSource", candidate: Candidate, held) -> None:
    """Every worker applies the candidate, or none keeps it: when one fails, all are put back
    on the held documents (`held()`) and the error is raised, so the push is NACKed."""
    errors = await source.apply(candidate.documents)
    if errors:
        await source.apply(held())
        raise RuntimeError("; ".join(errors))


_PROCESS_GAUGES = frozenset({"server.live", "server.uptime"})


class FanoutAdminSource(ControlView):
    """Admin view summing N worker processes."""

    def __init__(self, channels: list, stop: asyncio.Event) -> None:
        self.channels = channels      # [(reader, writer, lock)]
        self.stop = stop
        self.ready = False
        self.draining = False
        self.certificate_delivered = False   # every worker installed a certificate (push_certificate)
        self._last_stats: dict[str, int] = {}

    async def _ask(self, op: str, **args) -> list:
        async def exchange(reader, writer, lock):
            async with lock:
                if writer.is_closing():    # the worker exited (uvloop raises RuntimeError on write)
                    raise ConnectionResetError("the worker's channel is closed")
                writer.write(json.dumps({"op": op, **args}).encode() + b"\n")
                await writer.drain()
                return json.loads(await reader.readline())

        async def one(reader, writer, lock):
            # Shielded: a cancelled caller (the xDS client stopping mid-apply) must not
            # leave an answer unread, or the next question would read it.
            return await asyncio.shield(exchange(reader, writer, lock))
        return await asyncio.gather(*(one(*c) for c in self.channels))

    def is_ready(self) -> bool:
        return self.ready and not self.draining and self.config_ready() and self.certificate_ready()

    def is_draining(self) -> bool:
        return self.draining

    def certificate_ready(self) -> bool:
        """The supervisor holding the certificate is not enough: a worker that has not
        installed it yet cannot dial or accept mutual TLS. Ready once every worker has one."""
        return self.certs is None or (self.certs.current() is not None and self.certificate_delivered)

    async def push_certificate(self, svid, bundle) -> None:
        """Send the SVID (key included, over the socketpairs only) and bundle to every worker."""
        from remora.proxy.security.cert_source import svid_message   # cryptography: only with certificates
        errors = [error for error in await self._ask("certs", **svid_message(svid, bundle)) if error]
        for error in errors:
            log_levels.logger("secret").error("%s", error)
        if not errors:
            self.certificate_delivered = True

    async def certs_status(self) -> dict | None:
        """The supervisor's certificate, and the serial each worker presents: a rotation is
        complete once every worker's `serving_serial` equals `svid.serial`."""
        status = await super().certs_status()
        if status is not None:
            status["workers"] = [{"worker": index, "serving_serial": serial}
                                 for index, serial in enumerate(await self._ask("serving_serial"))]
        return status

    async def refresh_ready(self) -> None:
        try:
            self.ready = all(await self._ask("ready"))
        except (OSError, ValueError, RuntimeError):   # a worker that exited at start (invalid
            self.ready = False          # config): the supervisor's loop notices its exit and stops

    async def set_log_levels(self, levels: dict[str, int]) -> None:
        """POST /logging reaches every worker: each logs its own requests."""
        await self._ask("logging", levels=levels)

    async def apply(self, documents: list) -> list[str]:
        """Send accepted documents to every worker; return the errors of those that failed."""
        return [error for error in await self._ask("apply", documents=documents) if error]

    async def stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for part in await self._ask("stats"):
            for name, value in part.items():
                if name in _PROCESS_GAUGES or name.endswith(".expiry_seconds"):
                    # The same fact in every worker (live, uptime): not a sum.
                    total[name] = max(total.get(name, 0), value)
                else:
                    total[name] = total.get(name, 0) + value
        total["server.concurrency"] = len(self.channels)
        total.update(self.control_stats())
        self._last_stats = total
        return total

    def gauge_names(self) -> frozenset[str]:
        return gauge_names(self._last_stats)

    async def prometheus_extra(self) -> str:
        """Istio's standard metrics of every worker, summed; the certificate is the supervisor's."""
        parts = [p for p in await self._ask("istio") if p is not None]
        if not parts:
            return ""
        merged = merge(parts)
        svid = self.certs.current() if self.certs is not None else None
        if svid is not None:
            merged["certificate_expiry"] = svid.not_after.timestamp()
        return render(merged)

    async def clusters(self) -> list[dict]:
        merged: dict[str, dict] = {}
        for part in await self._ask("clusters"):
            for cluster in part:
                into = merged.setdefault(cluster["name"], {**cluster, "endpoints": []})
                by_addr = {e["address"]: e for e in into["endpoints"]}
                for ep in cluster["endpoints"]:
                    have = by_addr.get(ep["address"])
                    if have is None:
                        into["endpoints"].append(dict(ep))
                        continue
                    for key, value in ep.items():
                        if isinstance(value, int) and key not in ("weight", "priority"):
                            have[key] += value
                    if ep["health"] != "healthy":
                        have["health"] = ep["health"]
        return list(merged.values())

    async def config_dump(self) -> dict:
        return self.with_control((await self._ask("config_dump"))[0])

    async def listeners(self) -> list[dict]:
        """Every worker binds the same listeners (SO_REUSEPORT): the first one's list."""
        return (await self._ask("listeners"))[0]

    async def drain_listeners(self) -> None:
        self.draining = True
        await self._ask("drain")

    async def quit(self) -> None:
        self.stop.set()


