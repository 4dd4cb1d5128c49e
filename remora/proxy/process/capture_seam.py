"""The seam between the data plane and transparent capture (remora/intercept).

Capture is built on the data plane (its listeners hand connections to the HTTP codec, the
TCP proxy uses clusters and counters), so `remora/intercept` imports `remora/proxy` and
never the other way round. The proxy learns about capture only through the object passed
as `ProxyOptions.capture` (`remora proxy --capture` passes
`remora.intercept.support.TransparentCapture()`; None: no capture), shaped as
`CaptureSupport` below, and through the per-listener `ListenerCapture` it makes.
"""
from __future__ import annotations

import asyncio
from typing import Any, Protocol

from remora.proxy.telemetry.counters import Counters


class ListenerCapture(Protocol):
    """One listener's decisions for redirected connections (outbound 15001 or inbound 15006)."""

    stats: Counters                 # listener.<address>.capture.*

    # Outbound only: passthrough_stats (cluster.PassthroughCluster.*) and
    # fallback(sink, head, stats) -> Exchange for a Host that matched no virtual host.
    # Inbound only: policy_for(sock) -> InboundPolicy of the port the caller dialled.


class CaptureSupport(Protocol):
    """What `--capture` adds to a worker: per-listener captures, the sniffing protocol, and
    the original-destination index compiled with each snapshot."""

    def outbound(self, listener: Any, traffic_policy: str) -> ListenerCapture:
        """The outbound listener's capture (ALLOW_ANY or REGISTRY_ONLY for unknown destinations)."""
        ...

    def inbound(self, listener: Any) -> ListenerCapture:
        """The inbound listener's capture."""
        ...

    def connection(self, capture: ListenerCapture, tls: bool = False) -> asyncio.Protocol:
        """The protocol every accepted connection starts with (it sniffs, then hands over)."""
        ...

    def destinations(self, config: Any, services: Any) -> Any:
        """Original destination -> mesh service, for one config version (Snapshot.destinations)."""
        ...
