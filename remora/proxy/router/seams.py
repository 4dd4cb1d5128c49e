"""What an Exchange needs from the listener that made it, as a typed Protocol.

The exchange reads these and nothing else of its listener (process/listener.py implements
it); in particular it reaches no worker, pool registry or other listener through it.
"""
from __future__ import annotations

import asyncio
from typing import Protocol

from remora.proxy.router.deadlines import RequestDeadlines


class ExchangeHost(Protocol):
    loop: asyncio.AbstractEventLoop
    deadlines: RequestDeadlines          # the worker's route and per-try timeout wheels
    sample_ratio: float                  # trace sampling for requests without a decision
    replay_limit: int                    # request body bytes kept for a resend
    reply_header: tuple[bytes, bytes] | None   # this sidecar's metadata line for mesh peers

    def added_request_headers(self, head, cluster, trace) -> tuple[bytes, bytes]:
        """Ready-made header lines for the upstream request: (mesh headers and attempt count,
        the lines new on every request: request id, trace context)."""

    def exchange_finished(self, exchange) -> None:
        """The exchange ended: count it and hand its request record to telemetry."""
