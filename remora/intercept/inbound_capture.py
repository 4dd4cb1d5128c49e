"""The inbound listener's decisions for captured connections (15006, `--capture`).

iptables sends every inbound TCP connection of the pod here (`remora iptables`); the
original destination port says which app port the caller wanted:

- not redirected (a caller dialled 15006 itself, explicit mode): the --app-port, as before.
- loop guard: the original port is one of the proxy's own ports: refused (closed and
  counted), so the sidecar never forwards to itself (e.g. its own passthrough to its pod IP).
- else the mTLS mode (PeerAuthentication, portLevelMtls of that port) is applied by the
  InboundAcceptor, then the first bytes decide: HTTP -> the HTTP codec with that port's
  route (127.0.0.1 or --app-host : original port) and AuthorizationPolicy
  (destination.port); anything else -> the TCP proxy to the same app port, after mTLS was
  terminated when the caller is a sidecar.
"""
from __future__ import annotations

from remora.intercept.capture import PROXY_PORTS, Captured, CaptureStats, Sniffer
from remora.intercept.original_dst import redirected
from remora.proxy.upstream.tcp_proxy import TcpSession, TcpTarget
from remora.proxy.codec.downstream import DownstreamHttp1


class InboundCapture:
    """Per inbound listener: original port -> app port, loop guard, HTTP or TCP."""

    def __init__(self, listener) -> None:
        self.listener = listener
        self.worker = listener.worker
        self.loop = listener.loop
        self.stats = CaptureStats()
        options = self.worker.options
        self.own_ports = PROXY_PORTS | {p for p in (options.outbound_port, options.inbound_port,
                                                    options.admin_port) if p}

    def policy_for(self, sock):
        """The InboundPolicy (mTLS mode, authorization) for an accepted socket's original port."""
        original = redirected(sock)
        snapshot = self.worker.snapshot
        if original is None or original[1] in self.own_ports:
            return snapshot.inbound_policy
        return snapshot.inbound_for(original[1])[1]

    def on_connect(self, sniffer: Sniffer, transport):
        sock = transport.get_extra_info("socket")
        original = redirected(sock) if sock is not None else None
        if original is None:
            self.stats.explicit += 1
            sniffer.hand_over(DownstreamHttp1(self.listener, tls=sniffer.tls))
            return None
        self.stats.redirected += 1
        if original[1] in self.own_ports:
            self.stats.loop_refused += 1
            transport.abort()
            return None
        sniffer.original = original
        return "sniffing"

    def on_sniffed(self, sniffer: Sniffer, http: bool) -> None:
        port = sniffer.original[1]
        if http:
            self.stats.http += 1
            conn = DownstreamHttp1(self.listener, tls=sniffer.tls)
            conn.capture = Captured(sniffer.original, None)
            sniffer.hand_over(conn)
            return
        self.stats.tcp += 1
        cluster = self.worker.snapshot.inbound_for(port)[2]
        target = TcpTarget(cluster.name, [(ep.host, ep.port, None) for ep in cluster.endpoints],
                           cluster.telemetry, cluster)
        peer = None
        session = TcpSession(self.listener, target, inbound=True, peer_metadata=peer)
        sniffer.hand_over(session)
