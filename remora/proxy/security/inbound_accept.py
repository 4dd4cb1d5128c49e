"""The inbound listener's accept side: mutual TLS by PeerAuthentication mode.

The inbound listener accepts its sockets itself (not with loop.create_server) because it
must decide per connection whether to terminate TLS, and that needs the first bytes:

- DISABLE: plaintext, handed to the HTTP codec at once (TLS bytes are then just a bad
  request: 400, as Envoy with no TLS filter chain would).
- STRICT: the first bytes must be a TLS record (0x16: handshake); a plaintext connection is
  closed and counted (`no_filter_chain_match`, Envoy's counter for a connection no filter
  chain accepts). The handshake requires a client certificate that chains to the trust
  bundle (MeshTls.server_context); a failure is counted in `ssl.connection_error`.
- PERMISSIVE (Istio's default): TLS when the first byte is 0x16, else plaintext; both served.
- No certificate yet (server_context None): STRICT refuses every connection, PERMISSIVE
  serves plaintext.

Detection peeks (`recv(MSG_PEEK)`): nothing is consumed, and the socket goes whole to
`loop.connect_accepted_socket(factory, sock, ssl=context_or_None)`. The wait for first
bytes is bounded (--protocol-detection-timeout, `downstream_pre_cx_timeout` counts expiries):
STRICT then closes, PERMISSIVE continues as plaintext (Istio's
continue_on_listener_filters_timeout), for clients that wait for the server to speak.

The mode (from the current snapshot) and the TLS context (from worker.tls) are read at
accept time, so a pushed PeerAuthentication or a rotated certificate applies to the next
connection and never disturbs an established one.

Out of file descriptors (EMFILE, ENFILE; ENOBUFS/ENOMEM from the kernel): accept fails
and the listening socket stays readable, so retrying at once would spin the loop at 100%
CPU. The acceptor stops watching the socket and retries after a backoff (100 ms doubling
to 1 s) until an accept succeeds; connections wait in the kernel's backlog meanwhile.
Each failed accept counts in `downstream_global_cx_overflow` (Envoy's counter for
connections refused by the process-wide connection limit, the limit Envoy recommends
setting below the descriptor limit), and each episode logs one warning.

Refusals are counted, not logged at info: one line per refused connection would let a
scanner fill the log. They are logged at debug level (component `connection`, log_levels.py); the one
exception is a single stderr line the first time STRICT meets a sidecar without a certificate.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl

from remora.proxy import log_levels
from remora.proxy.telemetry.counters import Counters
from remora.proxy.security.peer_auth import DISABLE, STRICT

log = log_levels.logger("connection")

TLS_HANDSHAKE_RECORD = 0x16    # the first byte of every TLS ClientHello record
ACCEPTS_PER_WAKEUP = 64        # bound one accept burst so a flood cannot starve the loop
OUT_OF_DESCRIPTORS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
ACCEPT_BACKOFF = (0.1, 1.0)    # first and longest pause of accepting when out of descriptors
WARN_INTERVAL = 10.0           # at most one out-of-descriptors warning per this many seconds


class InboundTlsStats(Counters):
    """Envoy's listener TLS counters, exported as `listener.<address>.<name>`."""

    __slots__ = ("ssl_handshake", "ssl_connection_error", "ssl_fail_verify_no_cert",
                 "ssl_fail_verify_error", "no_filter_chain_match", "downstream_pre_cx_timeout",
                 "downstream_pre_cx_active", "tls_found", "tls_not_found",
                 "downstream_global_cx_overflow")
    # Slot -> Envoy's stat name (dots are not allowed in slot names).
    NAMES = {"ssl_handshake": "ssl.handshake", "ssl_connection_error": "ssl.connection_error",
             "ssl_fail_verify_no_cert": "ssl.fail_verify_no_cert",
             "ssl_fail_verify_error": "ssl.fail_verify_error",
             "no_filter_chain_match": "no_filter_chain_match",
             "downstream_pre_cx_timeout": "downstream_pre_cx_timeout",
             "downstream_pre_cx_active": "downstream_pre_cx_active",
             "tls_found": "tls_inspector.tls_found", "tls_not_found": "tls_inspector.tls_not_found",
             "downstream_global_cx_overflow": "downstream_global_cx_overflow"}

    def named(self) -> dict[str, int]:
        return {self.NAMES[slot]: getattr(self, slot) for slot in self.__slots__}


class _Detecting:
    """An accepted socket waiting for its first bytes."""

    __slots__ = ("sock", "mode", "context", "timer")

    def __init__(self, sock: socket.socket, mode: str, context: ssl.SSLContext) -> None:
        self.sock = sock
        self.mode = mode
        self.context = context
        self.timer: asyncio.TimerHandle | None = None


class InboundAcceptor:
    """Accepts one inbound address and hands each socket, TLS or plaintext, to the listener's codec."""

    def __init__(self, listener, plain_factory, tls_factory) -> None:
        self.listener = listener
        self.worker = listener.worker
        self.loop: asyncio.AbstractEventLoop = listener.loop
        self.plain_factory = plain_factory
        self.tls_factory = tls_factory
        self.stats = InboundTlsStats()
        self.sock: socket.socket | None = None
        self.detecting: dict[int, _Detecting] = {}       # fd -> socket awaiting first bytes
        self.connecting: set[asyncio.Task] = set()        # handshakes and hand-overs in progress
        self._no_cert_warned = False
        self.backoff = 0.0                                 # > 0: out of descriptors, accepting paused
        self._warned_at = -WARN_INTERVAL
        self._retry: asyncio.TimerHandle | None = None

    def start(self, host: str, port: int, reuse_port: bool) -> None:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(4096)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.loop.add_reader(sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting; drop sockets still being detected (no byte yet).

        Hand-overs in progress (a TLS handshake, bounded by its timeout) are left to finish:
        cancelling `connect_accepted_socket` half way can leave a protocol registered on
        the listener whose connection_lost never comes, and a drain waiting for zero
        connections would then wait for its deadline. Once connected, such a connection
        is idle and the drain closes it like any other.
        """
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        for fd in list(self.detecting):
            self._end_detection(fd).sock.close()

    # -- accept and decide ---------------------------------------------------------------
    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in OUT_OF_DESCRIPTORS:
                    self._out_of_descriptors(error)
                else:   # ECONNABORTED and the like: that connection is gone, not the listener
                    log.debug("inbound accept failed: %s", error)
                return
            if self.backoff:
                self.backoff = 0.0    # the episode is over
            sock.setblocking(False)
            self._dispatch(sock)

    def _out_of_descriptors(self, error: OSError) -> None:
        """Stop watching the listening socket for a while instead of spinning on it."""
        self.stats.downstream_global_cx_overflow += 1
        now = self.loop.time()
        if not self.backoff and now - self._warned_at >= WARN_INTERVAL:
            self._warned_at = now
            log.warning("listener %s: cannot accept connections: %s; pausing "
                        "accepting (%.1f s to %.1f s backoff) until descriptors are free",
                        self.listener.address, error.strerror or error, *ACCEPT_BACKOFF)
        self.backoff = min(max(self.backoff * 2, ACCEPT_BACKOFF[0]), ACCEPT_BACKOFF[1])
        self.loop.remove_reader(self.sock.fileno())
        self._retry = self.loop.call_later(self.backoff, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._retry = None
        if self.sock is not None:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def _dispatch(self, sock: socket.socket) -> None:
        capture = self.listener.capture     # --capture: the mode of the port the caller dialled
        policy = capture.policy_for(sock) if capture is not None else self.worker.snapshot.inbound_policy
        mode = policy.mode
        if mode == DISABLE:
            self._hand_over(sock, None)
            return
        context = self.worker.tls.server_context
        if context is None:
            if mode == STRICT:
                self._refuse(sock, "STRICT mTLS and no certificate yet")
                if not self._no_cert_warned:
                    self._no_cert_warned = True
                    log.warning("inbound: PeerAuthentication STRICT and no certificate yet: "
                                "refusing inbound connections until there is one")
            else:
                self._hand_over(sock, None)
            return
        detecting = _Detecting(sock, mode, context)
        fd = sock.fileno()
        self.detecting[fd] = detecting
        self.stats.downstream_pre_cx_active += 1
        detecting.timer = self.loop.call_later(self.listener.settings.detection_timeout,
                                               self._detection_timeout, fd)
        self.loop.add_reader(fd, self._readable, fd)

    def _readable(self, fd: int) -> None:
        detecting = self.detecting.get(fd)
        if detecting is None:
            return
        try:
            first = detecting.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            first = b""
        self._end_detection(fd)
        sock = detecting.sock
        if not first:
            sock.close()            # the client left before saying anything
        elif first[0] == TLS_HANDSHAKE_RECORD:
            self.stats.tls_found += 1
            self._hand_over(sock, detecting.context)
        else:
            self.stats.tls_not_found += 1
            if detecting.mode == STRICT:
                self._refuse(sock, "plaintext on a STRICT mTLS port")
            else:
                self._hand_over(sock, None)

    def _detection_timeout(self, fd: int) -> None:
        detecting = self.detecting.get(fd)
        if detecting is None:
            return
        detecting.timer = None
        self._end_detection(fd)
        self.stats.downstream_pre_cx_timeout += 1
        if detecting.mode == STRICT:
            self._refuse(detecting.sock, "no bytes before the protocol detection timeout")
        else:
            self._hand_over(detecting.sock, None)

    def _end_detection(self, fd: int) -> _Detecting:
        detecting = self.detecting.pop(fd)
        self.stats.downstream_pre_cx_active -= 1
        self.loop.remove_reader(fd)
        if detecting.timer is not None:
            detecting.timer.cancel()
        return detecting

    def _refuse(self, sock: socket.socket, why: str) -> None:
        self.stats.no_filter_chain_match += 1
        if log.isEnabledFor(logging.DEBUG):
            try:
                peer = sock.getpeername()
            except OSError:
                peer = "?"
            log.debug("inbound connection from %s refused: %s", peer, why)
        sock.close()

    # -- hand the socket to the HTTP codec ------------------------------------------------
    def _hand_over(self, sock: socket.socket, context: ssl.SSLContext | None) -> None:
        task = self.loop.create_task(self._connect(sock, context))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    async def _connect(self, sock: socket.socket, context: ssl.SSLContext | None) -> None:
        try:
            if context is None:
                await self.loop.connect_accepted_socket(self.plain_factory, sock)
                return
            await self.loop.connect_accepted_socket(
                self.tls_factory, sock, ssl=context,
                ssl_handshake_timeout=self.listener.settings.handshake_timeout)
            self.stats.ssl_handshake += 1
        except ssl.SSLError as error:
            self._count_handshake_failure(error)
            sock.close()
        except (OSError, asyncio.TimeoutError) as error:
            if context is not None:
                self.stats.ssl_connection_error += 1
            log.debug("inbound connection failed before its first request: %r", error)
            sock.close()

    def _count_handshake_failure(self, error: ssl.SSLError) -> None:
        stats = self.stats
        stats.ssl_connection_error += 1
        reason = getattr(error, "reason", None) or ""
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            stats.ssl_fail_verify_no_cert += 1
        elif isinstance(error, ssl.SSLCertVerificationError) or "CERTIFICATE" in reason:
            stats.ssl_fail_verify_error += 1
        log.debug("inbound TLS handshake failed: %s", error)
