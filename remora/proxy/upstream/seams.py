"""The seams of the upstream side, as typed Protocols (Envoy's router / UpstreamRequest /
conn pool split: router.h, upstream_request.h, conn_pool_base.h).

    stream (router/exchange.py)  --UpstreamRequest(stream, ...)-->  attempt (upstream_request.py)
    attempt  --pool.request(attempt, authority, fresh)-->  pool (pool.py, its circuit.py)
    pool     --on_pool_ready(conn, reused) | on_pool_failure(failure, detail)-->  attempt
    conn     --head, data-->  stream (UpstreamCallbacks: the receiver its attempt named)
    conn     --end, failure, upgrade, write pressure-->  attempt  --UpstreamCallbacks-->  stream

Rules every implementation keeps (tests/unit/test_upstream_contract.py runs them against
each pool + connection kind):
- A pool answers each request exactly once, ready or failure, unless the attempt is
  cancelled first; an attempt cancelled while its connection was being opened answers the
  late on_pool_ready by handing the connection back (it is pooled, not leaked).
- A full pending queue is a failure with AttemptFailure.OVERFLOW, answered at once.
- A connection writes its own lifecycle state and returns itself to its pool when its
  response ended cleanly with keep-alive; the pool only reads the state.
- For each attempt its stream hears headers, then data, then end (or one failure), and
  nothing after it cancelled the attempt (a cancelled attempt's connection is closed, so
  the head and body it would have received never arrive).
"""
from __future__ import annotations

import enum
from typing import Protocol

from remora.proxy.codec.message import RequestHead, ResponseHead


class AttemptFailure(enum.Enum):
    """Why an attempt ended without a complete response (the stream maps it to a reply)."""

    OVERFLOW = "overflow"                   # circuit breaker: pending queue full (503 UO, never retried)
    CONNECT_FAILURE = "connect failure"     # the pool could not open a connection (UF)
    STALE_CONNECTION = "stale connection"   # a pooled connection closed before any response byte
    CONNECTION_TERMINATION = "connection termination"   # reset mid-exchange (UC)
    REFUSED_STREAM = "refused stream"       # HTTP/2: the server never processed the stream (retriable)
    PROTOCOL_ERROR = "protocol error"       # the upstream broke HTTP (UPE)
    PER_TRY_TIMEOUT = "per-try timeout"     # this attempt's own deadline passed (UT)


class UpstreamCallbacks(Protocol):
    """What an attempt tells (and reads from) the stream that owns it: Envoy's
    RouterFilterInterface. The request-line fields are what the stream decided to send."""

    head: RequestHead
    up_method: bytes
    up_path: bytes
    up_authority: bytes
    up_headers: list
    up_added: bytes           # ready-made header lines (mesh headers, attempt count)
    up_unique: bytes          # ready-made lines new on every request (x-request-id, trace context)
    request_done: bool        # the whole request body came from downstream
    request_trailers: list | None   # trailers that ended the request (HTTP/2 clients, gRPC)
    peer_id: str | None       # request record: the verified upstream identity (filled by the attempt)

    def on_upstream_host_selected(self, endpoint) -> None:
        """The pool handed over a connection to another endpoint than the one picked."""

    def on_upstream_headers(self, resp: ResponseHead) -> None: ...
    def on_upstream_data(self, data: bytes) -> None: ...
    def on_upstream_trailers(self, trailers: list) -> None: ...
    def on_upstream_end(self) -> None: ...

    def on_upstream_read_end(self) -> None:
        """No more upstream bytes for now: write what the response produced so far."""

    def on_attempt_failed(self, failure: AttemptFailure, detail: str) -> None: ...

    def on_upstream_upgraded(self, conn, resp: ResponseHead, rest: bytes) -> None:
        """The upstream switched protocols; `conn` is no longer pooled."""

    def on_upstream_above_high_watermark(self) -> None:
        """Stop reading the request body (the attempt cannot take more now)."""

    def on_upstream_below_low_watermark(self) -> None: ...


class PoolCallbacks(Protocol):
    """How a pool answers a request for a connection (Envoy's onPoolReady / onPoolFailure)."""

    cluster: object   # the Cluster of the request's snapshot: stats, connect timeout, keepalive

    def on_pool_ready(self, conn, reused: bool) -> None: ...
    def on_pool_failure(self, failure: AttemptFailure, detail: str) -> None: ...


class ConnectionPool(Protocol):
    """Connections to one endpoint; it and its circuit alone own waiting and limits."""

    endpoint: object

    def request(self, waiter: PoolCallbacks, authority: bytes | None, fresh: bool) -> None: ...
    def cancel(self, waiter: PoolCallbacks) -> None: ...


class UpstreamConnection(Protocol):
    """One upstream connection carrying one attempt at a time (HTTP/1) or several (HTTP/2)."""

    pool: ConnectionPool
    peer_id: str | None

    def start_request(self, attempt, receiver: UpstreamCallbacks, method: bytes, path: bytes,
                      authority: bytes, headers: list, added: bytes, unique: bytes, content_length: int | None,
                      chunked: bool, upgrade: bytes | None, head_only: bool) -> None: ...
    def send_body(self, data: bytes, chunked: bool) -> None: ...
    def end_body(self, chunked: bool, trailers: list | None = None) -> None: ...
    def set_reading(self, on: bool) -> None: ...
    def release(self, reusable: bool) -> None: ...
    def close(self) -> None: ...
