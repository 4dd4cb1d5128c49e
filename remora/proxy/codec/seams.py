"""The seams between a downstream codec and the router, as typed Protocols.

    listener --new_exchange(stream, head)--> RouterStream (router/exchange.py: Exchange)
    codec    --start / on_request_body / on_request_end / ...--> RouterStream
    router   --send_response_head / _body / end_response / ...--> DownstreamStream

A codec (HTTP/1.1: codec/downstream.py; HTTP/2: one stream object per stream) turns a
connection into streams. Each request is one RouterStream on the router's side and one
DownstreamStream on the codec's side; neither sees the other's wire or retry logic.
Nothing here speaks of chunked framing, keep-alive or stream ids: those are the codec's.

Ownership, one owner per piece of state:
- The codec owns the wire and connection state: framing, keep-alive, which request it
  reads and which response it writes, and the transport's flow control (FlowControl).
  Whether the request was fully read is the codec's knowledge too.
- The RouterStream owns the stream's lifecycle: `finished` (it answered, or gave up) and
  everything about routing, attempts and the request record.
- Each side asks the other only through the members declared here.

Rules every implementation keeps (tests/contract/ runs them against each codec):
- The codec calls `start` once, after the head and before or after body bytes; a request
  without a body gets `on_request_end` before `start`. Body bytes arrive in order, then
  `on_request_end` once (a stream that answered early may still be handed the bytes the
  codec had already read; it ignores them).
- The router sends a response as head, body..., then end (or trailers, which end it), or
  one local reply, or aborts; nothing after that. `flush` writes what a batch of
  upstream bytes produced (one write per upstream read).
- `pause_reading` / `resume_reading` are idempotent; the router's hold is released by
  the codec when the response completes, so a finished stream never holds the client.
- The codec tells the router `downstream_write_paused(True/False)` when the client
  cannot take more response bytes (or can again), and `on_downstream_closed` exactly once
  when the client went away or reset the stream before the stream finished.
"""
from __future__ import annotations

from typing import Any, Protocol

from remora.proxy.codec.message import RequestHead, ResponseHead


class RouterStream(Protocol):
    """What the router offers a codec for one request (implemented by router/exchange.py's Exchange)."""

    head: RequestHead
    finished: bool        # the stream has ended: answered, aborted or abandoned (read-only here)
    bytes_sent: int       # response body bytes handed down so far (the codec's activity clock)

    def start(self) -> None:
        """Route the request (after the read that brought the head, unless already finished)."""

    def on_request_body(self, data: bytes) -> None:
        """Request body bytes, in order, without framing."""

    def on_request_trailers(self, trailers: list) -> None:
        """The request's trailers (HTTP/2: a header block ending the stream), just before
        `on_request_end`; forwarded to HTTP/2 upstreams, dropped on HTTP/1 (Envoy's default)."""

    def on_request_end(self) -> None:
        """The request is complete (once; before `start` for a request without a body)."""

    def downstream_write_paused(self, paused: bool) -> None:
        """The client cannot take more response bytes now (True) or can again (False)."""

    def on_downstream_closed(self) -> None:
        """The client closed the connection or reset the stream before the stream finished."""

    def on_stream_idle_timeout(self) -> None:
        """No activity either way for the listener's stream_idle_timeout (Envoy's SI)."""


class RouteDeadlineOwner(Protocol):
    """A downstream connection as the route-deadline wheel sees it (router/deadlines.py)."""

    def route_deadline_due(self, now: float) -> None:
        """Time out each exchange it answers whose route deadline is <= now."""


class DownstreamStream(Protocol):
    """One request stream as the codec offers it to the router: the response goes out here."""

    # Who is on the other end (read by routing, authorization and telemetry).
    tls: bool                  # the connection is TLS (inbound mTLS)
    peer_cert: Any             # security/inbound_policy.PeerCertificate of an mTLS peer, else None
    capture: Any               # intercept's original destination of a captured connection, else None
    # What the router reads of the stream's state.
    active: RouterStream | None   # the stream whose response is being written
    # What the route-deadline wheel keeps (router/deadlines.py): the connection, never the request.
    deadline_owner: RouteDeadlineOwner
    last_activity: float       # loop time of the last read (when a head completes: the request's start)
    write_paused: bool         # the client is not taking response bytes now

    def send_response_head(self, status: int, reason: bytes, headers: list,
                           content_length: int | None) -> None:
        """The response head; `content_length` None means the length is not known yet."""

    def send_response_body(self, data: bytes) -> None:
        """Response body bytes, in order (held until `flush`)."""

    def send_response_trailers(self, trailers: list) -> None:
        """Trailer fields; they end the response."""

    def end_response(self) -> None:
        """The response is complete."""

    def flush(self) -> None:
        """Write what the current upstream read produced (called once per upstream read)."""

    def send_local_reply(self, status: int, body: bytes, extra: list | None) -> None:
        """A whole response made by the proxy (text/plain body, extra headers); it ends the stream."""

    def abort(self) -> None:
        """The response cannot be completed: reset the stream so the client sees it cut short."""

    def pause_reading(self) -> None:
        """Hold the request body (the router cannot take more now)."""

    def resume_reading(self) -> None:
        """Release the router's hold on the request body."""

    def start_tunnel(self, upstream, resp: ResponseHead, rest: bytes) -> None:
        """The upstream accepted an upgrade (only for a head with `upgrade`): forward the
        101 and splice the connections; `rest` is what the upstream sent after its head."""


class DownstreamConnection(Protocol):
    """A codec's connection as the listener, the worker's sweeper and drain see it."""

    tls: bool
    capture: Any

    def check_timeouts(self, now: float, settings: Any) -> None:
        """The sweeper's tick: idle, request-head and stream-idle timeouts."""

    def close_if_idle(self) -> bool:
        """Close now if no request is in flight (drain); True when it closed."""


class CodecListener(Protocol):
    """What a downstream codec asks of its listener (process/listener.py's Listener)."""

    loop: Any
    settings: Any             # ListenerSettings: timeouts and limits
    paths: Any                # PathNormalizer applied to suspect request targets
    draining: bool            # responses carry connection close (or GOAWAY) while draining
    reply_header: tuple | None   # inbound metadata-exchange header for mesh callers
    stats: Any                # ListenerStats: the downstream_cx_* / downstream_rq_* counters codecs keep
    http2: Any                # Http2Stats (codec/http2.py): the HTTP/2 codec's own counters

    def new_exchange(self, stream: DownstreamStream, head: RequestHead, routed: bool = True) -> RouterStream:
        """The router's stream for a request head (routed=False: only for a local error reply)."""

    def connection_opened(self, conn: DownstreamConnection) -> None: ...
    def connection_closed(self, conn: DownstreamConnection) -> None: ...
    def connection_replaced(self, old: DownstreamConnection, new: DownstreamConnection) -> None:
        """The connection changed codec (the HTTP/2 preface or ALPN h2): same socket, new owner."""
    def count_protocol_error(self, status: int) -> None: ...
    def local_spiffe_id(self) -> str | None: ...
    def tunnel_opened(self, exchange: RouterStream, resp: ResponseHead) -> Any: ...
    def tunnel_closed(self, meter: Any) -> None: ...
