"""How a connection that starts as HTTP/1 becomes HTTP/2: a base class of DownstreamHttp1.

Every listener accepts with the HTTP/1 codec. On the first read, the 24-byte client preface
(`PRI * HTTP/2.0...`, h2c prior knowledge) hands the transport and the bytes read so far to
DownstreamHttp2; a preface cut across reads is held until it is whole. On a TLS connection
where ALPN chose `h2` (inbound mTLS), the handover happens at connection time. Anything else
stays HTTP/1. After the handover the HTTP/1 codec is CLOSED and never touches the transport.
"""
from __future__ import annotations

from remora.proxy.codec.http1 import CLOSED
from remora.proxy.codec.http2 import ALPN_H2, DownstreamHttp2
from remora.proxy.codec.http2_frames import PREFACE


class Http2Handover:
    """The preface sniff and the handover (DownstreamHttp1's `fresh`, `held`, `tls`, `flow`)."""

    def _alpn_h2(self, transport) -> None:
        """At connection time: ALPN `h2` on a TLS connection hands over at once."""
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == ALPN_H2:
            self._become_http2(b"")

    def _sniff_preface(self, data: bytes) -> bytes | None:
        """The first read: the HTTP/2 client preface hands the connection to DownstreamHttp2
        (None returned); anything else is HTTP/1's to parse."""
        if self.held:
            data, self.held = self.held + data, b""
        if data[:1] == b"P" and PREFACE.startswith(data[:len(PREFACE)]):
            if len(data) < len(PREFACE):
                self.held = data      # a preface cut by the network: wait for the rest
                return None
            self._become_http2(data)
            return None
        self.fresh = False
        return data

    def _become_http2(self, first_bytes: bytes) -> None:
        """Hand the transport (and the bytes read so far) to the HTTP/2 codec."""
        self.fresh = False
        self.state = CLOSED
        http2 = DownstreamHttp2(self.listener, tls=self.tls)
        transport = self.transport
        transport.set_protocol(http2)
        self.flow.lost()          # the transport is the HTTP/2 codec's now: hands off
        http2.take_over(self, transport, first_bytes)
