"""The downstream HTTP/1.1 server codec: client bytes in, Exchanges out, responses back.

httptools callbacks run inside data_received; a request's head becomes a RequestHead and
the router's stream (a RouterStream, codec/seams.py) at on_headers_complete. This class
is also that stream's DownstreamStream for HTTP/1.1: it decides the response framing
(Content-Length as received, chunked for 1.1 clients when the length is unknown,
close-delimited for 1.0) and keep-alive; the writing half lives in http1_writer.py, upgrades in
http1_tunnel.py, the sweeper's timeouts in http1_timeouts.py and refusals in http1_rejection.py, as bases of
this one class, which alone
owns the connection state: `state`, `keep_alive` (does the connection outlive the active
response), `receiving` (whose request body is still on the wire), `resp_framing`, and the
transport's FlowControl (`flow`), paused for one reason per bit (http1_writer.py).

Connection states: IDLE (between requests) -> HEADERS (reading a head) -> BODY (reading a
body) -> WAITING (request read, response pending) -> IDLE ... ; TUNNEL after an upgrade;
CLOSED. The worker's sweeper uses them for the idle, header and body timeouts.
Pipelined requests queue behind the active one and start in order, each with its own
keep-alive (a later `Connection: close` closes after that request's response, not the
first one's); reading pauses while one is queued, so a pipelining client cannot make the
proxy buffer without bound. A request with a body starts (goes upstream) only at the end
of the read that brought its head, so a body that is malformed in that same read is
refused before anything was sent upstream. A request without a body is complete at its
head: its stream gets on_request_end before start.
"""
from __future__ import annotations

import asyncio
from collections import deque

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from remora.proxy.telemetry.counters import set_nodelay
from remora.proxy.codec.http1 import (
    BODY, CLOSED, CONTINUE_100, H_CL, H_CONNECTION, H_EXPECT, H_HOST, H_PEER, H_REQID,
    H_TE, H_TRACE, H_UA, H_UPGRADE, H_XFF, H_XFP, HEADERS, IDLE, MAX_HEADER_BYTES, PIPELINED,
    REFUSING, REQUEST_SPECIAL, STREAM_HOLD, WAITING, BadRequest, connection_tokens, drop_named,
)
from remora.proxy.codec.http1_rejection import Http1Rejection
from remora.proxy.codec.http1_timeouts import Http1Timeouts
from remora.proxy.codec.flow_control import FlowControl
from remora.proxy.codec.http1_tunnel import Http1Upgrade
from remora.proxy.codec.http2_handover import Http2Handover
from remora.proxy.codec.http1_writer import RESP_NONE, Http1ResponseWriter
from remora.proxy.codec.seams import RouterStream
from remora.proxy.security.inbound_policy import PeerCertificate
from remora.proxy.codec.message import RequestHead
from remora.proxy.router.deadlines import time_out_if_due
from remora.proxy.router.request_ids import new_request_id
from remora.proxy.codec.request_target import absolute_form, checked_target, suspect_target
from remora.proxy.codec.transfer_coding import chunked_is_final

HEADER_LINE = 1 << 24                  # what one header line adds to header_bytes, besides its bytes
HEADER_BYTES_MASK = HEADER_LINE - 1    # a head is refused long before 16 MiB (data_received)
LINE_COST = HEADER_LINE + 4            # ": " and CRLF
_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}   # anything else is answered 505, never forwarded
_OWS = (0x20, 0x09)


class DownstreamHttp1(Http1ResponseWriter, Http1Upgrade, Http1Timeouts, Http1Rejection, Http2Handover,
                      asyncio.Protocol):
    """One client connection on a listener."""

    def __init__(self, listener, tls: bool = False) -> None:
        self.listener = listener
        self.loop = listener.loop
        self.transport = None
        self.flow = FlowControl(None)  # given the transport at connection_made
        self.tls = tls                 # inbound mTLS connection (handshake done before connection_made)
        self.capture = None            # captured connection: its original destination (intercept/capture.py)
        self.peer_cert: PeerCertificate | None = None
        self.parser = HttpRequestParser(self)
        self.state = IDLE
        self.peer_ip = b""
        self.last_activity = 0.0
        self.request_start = 0.0
        self.active: RouterStream | None = None      # the stream whose response we write
        self.deadline_owner = self    # the route-deadline wheel checks `active` through us
        self.receiving: RouterStream | None = None   # the stream whose request body is still on the wire
        self.queued: deque[tuple[RouterStream, bool]] = deque()   # pipelined, with their keep-alive
        self.keep_alive = True        # the connection outlives the active response
        self.resp_framing = RESP_NONE
        self.tunnel_peer = None
        self.tunnel_meter = None      # TcpMeter of a tunnel when Istio metrics are on
        self.wbuf: list[bytes] = []   # response bytes held until the upstream read ends
        self.unparsed_head_bytes = 0
        # header_bytes counts lines too (see on_header): reaching this means one line too many.
        self.header_limit = (listener.settings.max_request_headers_count + 1) * HEADER_LINE
        self.deferred: RouterStream | None = None   # starts at the end of the current read
        self.rejected: BadRequest | None = None  # a malformed pipelined request, refused in its turn
        self.idle_since = 0.0         # when the connection last became IDLE (idle timeout)
        self.drain_mark = 0           # write buffer size at the last sweep while paused
        self.sent_mark = -1           # the active exchange's response progress at the last sweep
        self.fresh = True             # no byte read yet: an HTTP/2 preface hands the connection over
        self.held = b""               # the first bytes while they could still be a preface
        self._reset_request()

    def _reset_request(self) -> None:
        self.url = b""
        self.headers: list = []
        self.header_bytes = 0      # head bytes + HEADER_LINE per header line
        self.authority: bytes | None = None
        self.content_length: bytes | None = None
        self.user_agent = b""
        self.request_id = b""
        self.xff = b""
        self.xfp = b""
        self.peer_meta: bytes | None = None
        self.trace_in: list | None = None
        self.rare = False          # set when one of the fields below was touched
        self.te_chunked = False
        self.upgrade: bytes | None = None
        self.expect_continue = False
        self.hop_names: set[bytes] | None = None
        self.conn_upgrade = False

    def _reset_common(self) -> None:
        """Per-request reset on the hot path: the rare fields only when a request set one."""
        if self.rare:
            self._reset_request()
            return
        self.url = b""
        self.headers = []
        self.header_bytes = 0
        self.authority = None
        self.content_length = None
        self.user_agent = self.request_id = self.xff = self.xfp = b""
        self.peer_meta = None
        self.trace_in = None

    # -- asyncio callbacks -------------------------------------------------------------
    @property
    def write_paused(self) -> bool:
        """The client is not taking response bytes now (DownstreamStream)."""
        return self.flow.write_paused

    def connection_made(self, transport) -> None:
        self.transport = self.flow.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0].encode() if isinstance(peer, tuple) else b""
        set_nodelay(transport)
        if self.tls:
            # Once per connection: the verified caller, for authorization, XFCC and metrics.
            self.peer_cert = PeerCertificate.of(transport, self.listener.local_spiffe_id())
        self.last_activity = self.idle_since = self.loop.time()
        self.listener.connection_opened(self)
        if self.tls:
            self._alpn_h2(transport)     # ALPN chose HTTP/2 (inbound mTLS): http2_handover.py

    def data_received(self, data: bytes) -> None:
        if self.tunnel_peer is not None:
            self.tunnel_peer.write(data)
            if self.tunnel_meter is not None:
                self.tunnel_meter.received += len(data)
            return
        self.last_activity = self.loop.time()
        if self.state <= HEADERS:
            if self.fresh:
                data = self._sniff_preface(data)
                if data is None:
                    return
            self.unparsed_head_bytes += len(data)
        try:
            self.parser.feed_data(data)
            if self.state <= HEADERS and self.unparsed_head_bytes > 2 * MAX_HEADER_BYTES:
                # A head still unfinished after this much: httptools keeps buffering an
                # endless line without calling us, so bound it here.
                self._reject(BadRequest(431, b"request header fields too large"))
        except HttpParserUpgrade as exc:
            self._on_upgrade_bytes(data[exc.args[0]:])
        except BadRequest as err:
            self._reject(err)
        except HttpParserError as exc:
            if self.state == WAITING and (not self.keep_alive or (self.queued and not self.queued[-1][1])):
                # Bytes after a request that said Connection: close (llhttp refuses them):
                # ignore them and answer the requests we have.
                self.flow.pause_reading(REFUSING)
            else:
                cause = exc.__context__ or exc.__cause__
                self._reject(cause if isinstance(cause, BadRequest) else BadRequest(400, str(exc).encode()))
        if self.deferred is not None:
            self._start_deferred()

    def _start_deferred(self) -> None:
        """Start the request whose head (with a body) came in this read, unless its body was refused."""
        exchange, self.deferred = self.deferred, None
        if not exchange.finished and self.state != CLOSED:
            exchange.start()

    def eof_received(self):
        return False

    def connection_lost(self, exc) -> None:
        self.state = CLOSED
        self.flow.lost()
        self.listener.connection_closed(self)
        if self.tunnel_peer is not None:
            self.tunnel_peer.close()
            self.tunnel_peer = None
        if self.tunnel_meter is not None:
            self.listener.tunnel_closed(self.tunnel_meter)
            self.tunnel_meter = None
        streams = [self.active, *[queued for queued, _ in self.queued]]
        if self.receiving not in streams:   # the active request may still be sending its body
            streams.append(self.receiving)
        for stream in streams:
            if stream is not None and not stream.finished:
                stream.on_downstream_closed()   # once per stream, and only to unfinished ones
        self.active = self.receiving = None
        self.queued.clear()

    def pause_writing(self) -> None:
        self.flow.pause_writing()
        self.drain_mark = self.transport.get_write_buffer_size()
        if self.tunnel_peer is not None:
            self.tunnel_peer.pause_reading()
        elif self.active is not None:
            self.active.downstream_write_paused(True)

    def resume_writing(self) -> None:
        self.flow.resume_writing()
        self.last_activity = self.idle_since = self.loop.time()   # the client drained: progress
        if self.tunnel_peer is not None:
            self.tunnel_peer.resume_reading()
        elif self.active is not None:
            self.active.downstream_write_paused(False)

    # -- httptools callbacks -----------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        # The first callback of every request (on_message_begin would cost one more call).
        if self.state != HEADERS:
            self._reset_common()
            self.state = HEADERS
            self.request_start = self.last_activity
        self.url += url
        self.header_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.state != HEADERS:
            return   # trailer fields after a chunked body: never merged into the head
        # One add and one compare per line count both bytes and lines: each line adds
        # HEADER_LINE (2**24) besides its bytes, so the high part is the line count (Envoy's
        # max_request_headers_count, checked here) and the low part the bytes (checked at
        # on_headers_complete; data_received bounds a head that never completes).
        self.header_bytes += len(name) + len(value) + LINE_COST
        if self.header_bytes >= self.header_limit:
            raise BadRequest(431, b"too many request headers")
        if value and value[-1] in _OWS:
            value = value.rstrip(b" \t")   # httptools strips only leading whitespace
        lname = name.lower()
        code = REQUEST_SPECIAL.get(lname)
        if code is None:
            self.headers.append((name, value))
        elif code == H_HOST:
            if self.authority is not None:
                raise BadRequest(400, b"duplicate host header")
            if b" " in value or b"\t" in value:
                raise BadRequest(400, b"invalid host header")
            self.authority = value
        elif code == H_UA:
            self.user_agent = value
        elif code == H_REQID:
            self.request_id = value
        elif code == H_XFF:
            self.xff = value if not self.xff else self.xff + b", " + value
        elif code == H_XFP:
            self.xfp = value
        elif code == H_PEER:
            self.peer_meta = value     # read by telemetry, never forwarded
        elif code == H_TRACE:
            trace_in = self.trace_in
            if trace_in is None:
                self.trace_in = [(lname, value)]
            else:
                trace_in.append((lname, value))
        elif code == H_CL:
            self.content_length = value
        elif code == H_TE:
            self.rare = True
            if not chunked_is_final(value):   # transfer_coding.py: the rule of both codecs
                raise BadRequest(400, b"unsupported transfer-encoding")
            self.te_chunked = True
        elif code == H_CONNECTION:
            self.rare = True
            for token in connection_tokens(value):
                if token == b"upgrade":
                    self.conn_upgrade = True
                elif token not in (b"close", b"keep-alive"):
                    self.hop_names = (self.hop_names or set()) | {token}
        elif code == H_UPGRADE:
            self.rare = True
            self.upgrade = value
        elif code == H_EXPECT:
            self.rare = True
            if value.lower() == b"100-continue":
                self.expect_continue = True
            else:
                raise BadRequest(417, b"unsupported expectation")
        # H_HOP, H_XFCC: dropped

    def on_headers_complete(self) -> None:
        self.unparsed_head_bytes = 0
        if self.header_bytes & HEADER_BYTES_MASK > MAX_HEADER_BYTES:
            raise BadRequest(431, b"request header fields too large")
        parser = self.parser
        version = _VERSIONS.get(parser.get_http_version())
        if version is None:
            # `GET / HTTP/2.0` parses as HTTP/1 framing; forwarding it as 1.1 would lie.
            raise BadRequest(505, b"HTTP version not supported")
        url = self.url
        if url[:1] != b"/" and url != b"*":
            if parser.get_method() == b"CONNECT":
                raise BadRequest(405, b"CONNECT is not supported")
            self.authority, url = absolute_form(url)
        if suspect_target(url) is not None:
            url = checked_target(url, self.listener.paths)
        authority = self.authority
        if authority is None:
            if version != b"1.0":
                raise BadRequest(400, b"missing host header")
            authority = b""
        headers = self.headers if self.hop_names is None else drop_named(self.headers, self.hop_names)
        head = RequestHead(parser.get_method(), url, authority, headers, version)
        has_body = False            # head.has_body, without a call
        if self.content_length is not None:
            length = head.content_length = int(self.content_length)
            has_body = length > 0
        head.request_id = self.request_id or new_request_id()
        head.peer_ip = self.peer_ip
        # Fields most requests do not carry keep the head's defaults: no write per request.
        if self.user_agent:
            head.user_agent = self.user_agent
        if self.xff:
            head.forwarded_for = self.xff
        if self.xfp:
            head.scheme = self.xfp
        if self.peer_meta is not None:
            head.peer_metadata = self.peer_meta
        if self.trace_in is not None:
            head.trace_in = self.trace_in
        if self.peer_cert is not None:
            head.peer_cert = self.peer_cert
        keep_alive = parser.should_keep_alive() and not self.listener.draining
        self.state = BODY
        more = has_body             # bytes follow the head: a body, or the upgraded protocol's
        if self.rare:               # Transfer-Encoding, Connection, Upgrade or Expect was sent
            if self.te_chunked:
                head.chunked = has_body = more = True
            if self.upgrade is not None and self.conn_upgrade:
                head.upgrade = self.upgrade
                more = True
            if self.expect_continue and has_body and version == b"1.1":
                # Envoy's default: the proxy answers 100 itself and drops Expect upstream.
                self.transport.write(CONTINUE_100)
        exchange = self.listener.new_exchange(self, head)
        if more:
            self.receiving = exchange
        else:
            exchange.on_request_end()    # complete at its head: on_message_complete has nothing to add
        if self.active is None:
            self.keep_alive = keep_alive
            self.active = exchange
            if not exchange.finished:
                if has_body:
                    self.deferred = exchange   # started once this read is parsed (data_received)
                else:
                    exchange.start()
        else:
            # A pipelined request: its own keep-alive applies when its response is written.
            self.queued.append((exchange, keep_alive))
            self.flow.pause_reading(PIPELINED)

    def on_body(self, body: bytes) -> None:
        exchange = self.receiving
        if exchange is not None:
            exchange.on_request_body(body)

    def on_message_complete(self) -> None:
        exchange, self.receiving = self.receiving, None
        if exchange is not None:
            exchange.on_request_end()
        if self.state == BODY:
            # The response may already be done (a local reply sent from on_headers_complete).
            self.state = WAITING if self.active is not None else IDLE

    # -- DownstreamStream: the router's hold on the request body --------------------------------
    def route_deadline_due(self, now: float) -> None:
        time_out_if_due(self.active, now)

    def pause_reading(self) -> None:
        self.flow.pause_reading(STREAM_HOLD)

    def resume_reading(self) -> None:
        self.flow.resume_reading(STREAM_HOLD)

    def _response_done(self) -> None:
        """The active response is complete: close, or move on to the next request."""
        exchange, self.active = self.active, None
        self.resp_framing = RESP_NONE
        if self.state == CLOSED:
            return
        if not self.keep_alive or self.receiving is exchange:
            # Closing after the response: asked for, or the request body is still
            # arriving and the connection cannot be resynchronised.
            self.state = CLOSED
            self.transport.close()
            return
        flow = self.flow
        if flow.read_paused:
            flow.resume_reading(STREAM_HOLD)   # a finished stream never holds the client
        if self.queued:
            nxt, self.keep_alive = self.queued.popleft()
            if nxt is self.receiving and self.rejected is not None:
                self._send_rejection()     # its body was malformed: it gets the 4xx
                return
            self.active = nxt
            if not self.queued:
                flow.resume_reading(PIPELINED)
            if not nxt.finished:
                nxt.start()
            return
        if self.rejected is not None:
            self._send_rejection()
            return
        if self.state == WAITING:
            self.state = IDLE
            self.idle_since = self.loop.time()
