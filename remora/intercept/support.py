"""TransparentCapture: what `remora proxy --capture` hands the data plane.

It implements `remora.proxy.process.capture_seam.CaptureSupport`, so the proxy builds captures,
sniffers and the destination index without importing this package (intercept depends on
proxy, never the reverse; docs/architecture.md, "Layers").
"""
from __future__ import annotations

from remora.intercept.capture import OutboundCapture, Sniffer
from remora.intercept.destinations import DestinationIndex
from remora.intercept.inbound_capture import InboundCapture


class TransparentCapture:
    """Capture listeners (outbound 15001, inbound 15006) for iptables-redirected traffic."""

    def outbound(self, listener, traffic_policy: str) -> OutboundCapture:
        return OutboundCapture(listener, traffic_policy)

    def inbound(self, listener) -> InboundCapture:
        return InboundCapture(listener)

    def connection(self, capture, tls: bool = False) -> Sniffer:
        return Sniffer(capture, tls=tls)

    def destinations(self, config, services) -> DestinationIndex:
        return DestinationIndex(config, services)

    def __repr__(self) -> str:
        return "TransparentCapture()"
