"""One upstream HTTP/1.1 client connection (httptools), carrying one attempt at a time.

Lifecycle (httpcore's explicit states; this class alone writes them, its pool only reads):
  CONNECTING -> ACTIVE (start_request) -> IDLE (release, back in its pool) -> ACTIVE ... -> CLOSED
Rules:
- It returns itself to its pool only when the response ended cleanly, the request was
  fully sent and both sides allowed keep-alive (release(True)); anything else closes it.
- Response head and body go to the receiver its attempt named (the stream's
  UpstreamCallbacks: one call per event, no forwarding layer on the hot path); the end,
  failures, the upgrade and write pressure go to the attempt (upstream_request.py).
- A connection that closes before any response byte reports STALE_CONNECTION when it had
  been pooled (the keep-alive race: the server closed it as we reused it), else
  CONNECTION_TERMINATION; bytes that break HTTP report PROTOCOL_ERROR. Either way it is
  closed before the attempt hears of it.
- Bytes on a connection that carries no attempt mean the server broke framing: closed.
"""
from __future__ import annotations

import asyncio
import enum

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from remora.proxy.codec.http1 import (
    EOL,
    FIELD_LINE,
    H_CL,
    H_CONNECTION,
    H_PEER,
    H_TE,
    H_UPGRADE,
    LAST_CHUNK,
    RESPONSE_SPECIAL,
    RESPONSE_SPECIAL_LENGTHS,
    chunk,
    connection_tokens,
    drop_named,
)
from remora.proxy.codec.message import ResponseHead
from remora.proxy.codec.transfer_coding import chunked_is_final
from remora.proxy.telemetry.counters import set_nodelay
from remora.proxy.codec.flow_control import FlowControl
from remora.proxy.upstream.seams import AttemptFailure


CLIENT_SLOW = 1   # FlowControl reason: the downstream client cannot take more response bytes

class ConnState(enum.Enum):
    CONNECTING = 0
    ACTIVE = 1
    IDLE = 2
    CLOSED = 3


class UpstreamHttp1(asyncio.Protocol):
    """An HTTP/1.1 client connection carrying one attempt at a time."""

    def __init__(self, pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.state = ConnState.CONNECTING
        self.request = None           # the UpstreamRequest (attempt) this connection carries
        self.receiver = None          # where its response head and body go (UpstreamCallbacks)
        self.requests_sent = 0
        self.idle_deadline = 0.0      # loop time; stays 0.0 until the connection is first pooled
        self.tunnel = None            # downstream transport once upgraded
        self.flow = FlowControl(None)   # this transport's pausing (CLIENT_SLOW: the client lags)
        self.peer_id: str | None = None   # the server's verified SPIFFE ID on an mTLS connection
        # Never pooled again: auto-mTLS dialled in plaintext (no certificate yet), or
        # maxConnectionDuration reached (set by the pool's sweep; closed after its response).
        self.no_reuse = False
        self.created_at = 0.0         # loop time it connected (maxConnectionDuration)
        self.tls_host: str | None = None  # TLS origination: the request host it was made for (auto SNI)
        self._reset_response()

    def _reset_response(self) -> None:
        self.headers: list = []
        self.resp: ResponseHead | None = None
        self.got_bytes = False
        self.response_done = False
        self.head_only = False
        self.content_length: bytes | None = None
        self.rare = False          # set when one of the fields below was touched
        self.interim = False
        self.until_close = False
        self.hop_names: set[bytes] | None = None
        self.te_chunked = False
        self.upgrade: bytes | None = None
        self.peer_meta: bytes | None = None

    def _reset_common(self) -> None:
        """Per-response reset on the hot path: the rare fields only when a response set one."""
        if self.rare:
            self._reset_response()
            return
        self.headers = []
        self.resp = None
        self.got_bytes = self.response_done = self.head_only = False
        self.content_length = None

    # -- predicates ------------------------------------------------------------------
    def is_idle(self) -> bool:
        return self.state is ConnState.IDLE

    def is_closed(self) -> bool:
        return self.state is ConnState.CLOSED or self.transport is None or self.transport.is_closing()

    def was_pooled(self) -> bool:
        """It waited in its pool at least once (so the server may have closed it meanwhile)."""
        return self.idle_deadline != 0.0

    # -- asyncio callbacks -------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = self.flow.transport = transport
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.request is None:
            self.close()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self._on_upgrade(data[exc.args[0]:])
            return
        except HttpParserError as exc:
            self._fail(AttemptFailure.PROTOCOL_ERROR, str(exc))
            return
        # A response that ended in this read already flushed (and the connection was
        # released): only one still in flight has buffered bytes to write now.
        request = self.request
        if request is not None:
            request.on_read_end()

    def eof_received(self):
        if self.until_close and self.request is not None and self.resp is not None:
            # A response without length ends at close (RFC 9112 6.3 rule 8).
            self._complete(False)
        return False

    def connection_lost(self, exc) -> None:
        self.state = ConnState.CLOSED
        self.flow.lost()
        self.pool.forget(self)
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
        request = self.request
        if request is None or self.response_done:
            return
        if self.until_close and self.resp is not None:
            self._complete(False)
            return
        self.request = self.receiver = None
        stale = not self.got_bytes and self.was_pooled()
        request.on_connection_failed(AttemptFailure.STALE_CONNECTION if stale
                                     else AttemptFailure.CONNECTION_TERMINATION, "connection termination")

    def pause_writing(self) -> None:
        self.flow.pause_writing()
        if self.tunnel is not None:
            self.tunnel.pause_reading()
        elif self.request is not None:
            self.request.on_write_paused(True)

    def resume_writing(self) -> None:
        self.flow.resume_writing()
        if self.tunnel is not None:
            self.tunnel.resume_reading()
        elif self.request is not None:
            self.request.on_write_paused(False)

    def set_reading(self, on: bool) -> None:
        """Pause or resume reading the upstream (downstream backpressure)."""
        if on:
            self.flow.resume_reading(CLIENT_SLOW)
        elif self.transport is not None and not self.transport.is_closing():
            self.flow.pause_reading(CLIENT_SLOW)

    # -- request side ------------------------------------------------------------------
    def start_request(self, request, receiver, method: bytes, path: bytes, authority: bytes,
                      headers: list, added: bytes, unique: bytes, content_length: int | None, chunked: bool,
                      upgrade: bytes | None, head_only: bool) -> None:
        """Carry `request` (an attempt; the response head and body go to `receiver`): write
        its head (`added`, `unique`: ready-made header lines) with Remora's own framing."""
        self.request = request
        self.receiver = receiver
        self.state = ConnState.ACTIVE
        self.requests_sent += 1
        self._reset_common()
        self.head_only = head_only
        parts = [method, b" ", path, b" HTTP/1.1\r\nhost: ", authority, EOL]
        if headers:
            parts += (EOL.join(map(FIELD_LINE, headers)), EOL)
        parts.append(added)
        parts.append(unique)
        if chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        elif content_length is not None:
            parts.append(b"content-length: %d\r\n" % content_length)
        if upgrade is not None:
            parts += (b"connection: upgrade\r\nupgrade: ", upgrade, EOL)
        parts.append(EOL)
        self.transport.write(b"".join(parts))

    def send_body(self, data: bytes, chunked: bool) -> None:
        if chunked:
            self.transport.writelines(chunk(data))
        else:
            self.transport.write(data)

    def end_body(self, chunked: bool, trailers: list | None = None) -> None:
        # Request trailers are not sent to an HTTP/1 upstream (Envoy's default: its
        # http_protocol_options.enable_trailers is off).
        if chunked:
            self.transport.write(LAST_CHUNK)

    # -- httptools callbacks -------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        code = RESPONSE_SPECIAL.get(name.lower()) if len(name) in RESPONSE_SPECIAL_LENGTHS else None
        if code is None:
            self.headers.append((name, value))
        elif code == H_CONNECTION:
            if value == b"keep-alive" or value == b"close":
                return    # nothing to drop: the parser keeps keep-alive itself (the common case)
            self.rare = True
            extra = {t for t in connection_tokens(value) if t not in (b"close", b"keep-alive", b"upgrade")}
            if extra:
                self.hop_names = (self.hop_names or set()) | extra
        elif code == H_CL:
            self.content_length = value
        elif code == H_TE:
            self.rare = True
            if not chunked_is_final(value):   # transfer_coding.py: the rule of both codecs
                raise ValueError("unsupported transfer-encoding")
            self.te_chunked = True
        elif code == H_UPGRADE:
            self.rare = True
            self.upgrade = value
        elif code == H_PEER:
            self.rare = True
            self.peer_meta = value     # the answering sidecar's metadata: read, never forwarded

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.interim = True      # 100/103 from the upstream: we answer 100 ourselves
            self.rare = True
            self.headers = []
            return
        headers = self.headers if self.hop_names is None else drop_named(self.headers, self.hop_names)
        # The reason phrase is not kept (httptools' on_status would cost a call per
        # response): Remora sends the standard phrase for the status, as Envoy does.
        resp = ResponseHead(status, b"", headers)
        resp.keep_alive = self.parser.should_keep_alive()
        resp.peer_metadata = self.peer_meta
        if status == 204 and (self.content_length is not None or self.te_chunked):
            # Envoy's strict_1xx_and_204_headers (RFC 9110 8.6, 9112 6.1): a 204 carries
            # neither Transfer-Encoding nor Content-Length; "0" is dropped, anything else
            # is a protocol error (502 UPE). A 304 keeps its Content-Length, as in Envoy.
            if self.te_chunked or self.content_length.strip() != b"0":
                raise ValueError("content-length or transfer-encoding in a 204 response")
            self.content_length = None
        if self.content_length is not None:
            resp.content_length = int(self.content_length)
        elif status in (204, 304) or self.head_only:
            resp.content_length = None
        else:
            # No Content-Length on a response with a body: chunked or read-until-close.
            # Either way the downstream side re-frames it.
            resp.chunked = True
            self.until_close = not self.te_chunked
            self.rare = True
        self.resp = resp
        if status == 101:
            return
        self.receiver.on_upstream_headers(resp)
        if self.head_only or status in (204, 304):
            self._complete(resp.keep_alive and not self.head_only)

    def on_body(self, body: bytes) -> None:
        # The attempt may have dropped this connection mid-read (a response it retries).
        receiver = self.receiver
        if receiver is not None and not self.response_done:
            receiver.on_upstream_data(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.response_done or self.resp is None or self.resp.status == 101:
            return   # a 101 is finished by the upgrade that follows, not here
        self._complete(self.resp.keep_alive)

    def _complete(self, keep_alive: bool) -> None:
        self.response_done = True
        request = self.request
        if request is not None:
            request.on_complete(keep_alive)

    def _fail(self, failure: AttemptFailure, detail: str) -> None:
        request = self.request
        done = self.response_done
        self.close()
        if request is not None and not done:
            request.on_connection_failed(failure, detail)

    # -- upgrade -----------------------------------------------------------------------------
    def _on_upgrade(self, rest: bytes) -> None:
        request = self.request
        if request is None or self.resp is None or self.resp.status != 101:
            self.close()
            return
        self.response_done = True
        request.on_upgraded(self, self.resp, rest)

    def start_tunnel(self, downstream_transport) -> None:
        """From now on, bytes pass through unparsed in both directions."""
        self.tunnel = downstream_transport
        self.request = self.receiver = None
        self.pool.forget(self)

    # -- ownership ---------------------------------------------------------------------------
    def release(self, reusable: bool) -> None:
        """The attempt is done with this connection: back to its pool, or closed."""
        self.request = self.receiver = None
        pool = self.pool
        limit = pool.circuit.max_requests_per_connection
        if (reusable and pool.accepting and not self.no_reuse and not self.is_closed()
                and not (limit and self.requests_sent >= limit)):
            if self.flow.read_paused:
                # A pooled connection must be reading, or the next response would never arrive.
                self.set_reading(True)
            self.state = ConnState.IDLE
            self.idle_deadline = pool.loop.time() + pool.idle_timeout
            pool.returned(self)
        else:
            self.close()

    def close(self) -> None:
        self.request = self.receiver = None
        if self.state is not ConnState.CLOSED:
            self.state = ConnState.CLOSED
            transport = self.transport
            if transport is not None:
                if _unsent(transport):
                    # Request bytes the server is not reading (an attempt dropped for a retry
                    # or a timeout): close() would wait for them to drain, maybe forever.
                    transport.abort()
                else:
                    transport.close()
            self.pool.forget(self)


def _unsent(transport) -> int:
    """Bytes the transport still holds for the peer (0 for a transport that cannot tell)."""
    size = getattr(transport, "get_write_buffer_size", None)
    return size() if size is not None else 0
