"""Upgrades of the downstream HTTP/1.1 codec (WebSocket): from the request to a spliced tunnel.

A base class of DownstreamHttp1, which owns the connection state used here. An upgrade
request stops reading at its head (UPGRADING) and can never be parsed past: if the
upstream refuses, the connection closes after the response. If the upstream answers 101,
the codec forwards it and splices the sockets: the upstream side writes to a TunnelEnd,
which counts bytes for Istio's TCP metrics and pauses the client through the connection's
FlowControl (TUNNEL_PEER), like every other pauser.
"""
from __future__ import annotations

from remora.proxy.codec.http1 import (
    EOL, STREAM_HOLD, TUNNEL, TUNNEL_PEER, UPGRADING, BadRequest, status_line,
)


class Http1Upgrade:
    """The upgrade half of DownstreamHttp1 (see the module docstring)."""

    __slots__ = ()

    def _on_upgrade_bytes(self, rest: bytes) -> None:
        # llhttp completes the message before reporting the upgrade, so the exchange is
        # usually no longer `receiving`, only `active`.
        exchange = self.receiving or self.active
        if exchange is None or exchange.head.upgrade is None:
            # llhttp reports CONNECT as an upgrade too; Remora does not tunnel CONNECT.
            self._reject(BadRequest(405, b"method not allowed"))
            return
        self.flow.pause_reading(UPGRADING)   # nothing more is read until the upstream says 101
        # If the upstream refuses the upgrade, the parser cannot resume: close after it.
        self.keep_alive = False
        if rest:
            exchange.on_request_body(rest)

    def start_tunnel(self, conn, resp, rest: bytes) -> None:
        """The upstream switched protocols: forward the 101 and splice the sockets."""
        exchange = self.active
        parts = [status_line(101, resp.reason)]
        for name, value in resp.headers:
            parts += (name, b": ", value, EOL)
        reply = self.listener.reply_header
        if reply is not None and exchange.head.peer_metadata is not None:
            parts += (reply[0], b": ", reply[1], EOL)
        parts += (b"connection: upgrade\r\nupgrade: ", conn.upgrade or exchange.head.upgrade, EOL, EOL)
        self.flush()
        self.transport.write(b"".join(parts))
        if rest:
            self.transport.write(rest)
        self.state = TUNNEL
        self.active = self.receiving = None
        self.tunnel_peer = conn.transport
        meter = self.tunnel_meter = self.listener.tunnel_opened(exchange, resp)
        if meter is not None:
            meter.sent += len(rest)
        conn.start_tunnel(TunnelEnd(self.transport, self.flow, meter))
        # The request side is over: neither the router's hold nor the wait for the 101 applies.
        self.flow.resume_reading(STREAM_HOLD | UPGRADING)


class TunnelEnd:
    """The downstream connection as a tunnel's upstream side sees it: writes (counted in a
    TcpMeter when Istio metrics are on) and pausing through the connection's FlowControl."""

    __slots__ = ("transport", "flow", "meter")

    def __init__(self, transport, flow, meter) -> None:
        self.transport = transport
        self.flow = flow
        self.meter = meter

    def write(self, data: bytes) -> None:
        if self.meter is not None:
            self.meter.sent += len(data)
        self.transport.write(data)

    def close(self) -> None:
        self.transport.close()

    def pause_reading(self) -> None:
        self.flow.pause_reading(TUNNEL_PEER)

    def resume_reading(self) -> None:
        self.flow.resume_reading(TUNNEL_PEER)

    def is_closing(self) -> bool:
        return self.transport.is_closing()
