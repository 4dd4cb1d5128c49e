"""Listeners: the accept side of one address, its counters, and its request defaults.

A Listener owns no sockets' logic beyond accepting: each accepted connection gets a
DownstreamHttp1 protocol that asks the listener for the route table of the current
snapshot (outbound: by Host; inbound: everything to the local app) and reports every
finished exchange back for counting and access logging.

The inbound listener accepts through an InboundAcceptor (mTLS by PeerAuthentication mode,
see inbound_accept.py) and checks every request head against the snapshot's
AuthorizationPolicies before routing it: a denied request becomes a DeniedExchange that
answers 403 "RBAC: access denied" in its turn and never goes upstream. Before that, when
a RequestAuthentication applies, the request's JWTs are verified (jwt_authn.py): a bad
token becomes a JwtDeniedExchange (401 "Jwt verification fails" and the like), a good
one gives AuthorizationPolicy its request.auth.* attributes.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from logging import DEBUG

from remora.proxy.telemetry.counters import Counters, status_names
from remora.proxy.codec.downstream import DownstreamHttp1
from remora.proxy.codec.http2 import Http2Stats
from remora.proxy.router.exchange import Exchange
from remora.proxy.codec.http1 import FIRST_ATTEMPT
from remora.proxy.process.gateway import SniSniffer, tcp_protocol_factory
from remora.proxy.security.gateway_tls import MESH, front_context
from remora.proxy.security.inbound_accept import InboundAcceptor
from remora.proxy.security.inbound_policy import DENIED_BODY
from remora.proxy.codec.paths import DEFAULT_LEVEL, PathNormalizer, escaped_slash_variant
from remora.proxy.telemetry.request_info import RequestInfo
from remora.proxy.telemetry.istio_metrics import UNKNOWN_SERVICE
from remora.proxy.security.jwt_authn import JwtAuthnStats, JwtFailure
from remora.proxy.telemetry.access_log import FORMATTERS, access_record
from remora.proxy.telemetry.telemetry_policy import ListenerTelemetry
from remora.proxy.telemetry.tracing import CLIENT, SERVER, inject
from remora.proxy.log_levels import logger

# `--component-log-level rbac:debug,jwt:debug` (or POST /logging): each decision, with why.
_rbac_log = logger("rbac")
_jwt_log = logger("jwt")


def _log_decision(decision, request) -> None:
    """Envoy's rbac debug line: the outcome, the deciding policy, what the policy saw."""
    outcome = "enforced allowed" if decision.allowed else "enforced denied"
    shadow = ", shadow denied (AUDIT)" if decision.audit else ""
    _rbac_log.debug("rbac: %s, matched policy %s%s: %r", outcome, decision.policy or "none", shadow, request)


def _log_jwt_failure(head, failure) -> None:
    _jwt_log.debug("jwt: %s %s%s from %s refused %d: %s", head.method.decode("latin-1"),
                   head.authority.decode("latin-1"), head.path.decode("latin-1"),
                   head.peer_ip.decode("latin-1"), failure.status, failure.message)


@dataclass
class ListenerSettings:
    """Downstream timeouts (seconds)."""

    idle_timeout: float = 300.0             # keep-alive connection with no request
    request_headers_timeout: float = 10.0   # first byte to end of head
    stream_idle_timeout: float = 300.0      # a request with no activity either way for this long
    max_request_headers_count: int = 100    # Envoy's max_request_headers_count: more is 431
    http2_max_concurrent_streams: int = 100  # SETTINGS_MAX_CONCURRENT_STREAMS advertised to HTTP/2 clients
    detection_timeout: float = 15.0         # inbound: first bytes (TLS or not) within this
    handshake_timeout: float = 10.0         # inbound: TLS handshake done within this
    path_normalization: str = DEFAULT_LEVEL  # Istio meshConfig.pathNormalization (paths.py)


class ListenerStats(Counters):
    """Envoy's http connection manager and listener counters, per worker."""

    __slots__ = ("downstream_cx_total", "downstream_cx_active", "downstream_rq_total",
                 "downstream_rq_active", "downstream_cx_protocol_error", "no_route",
                 "downstream_cx_http2_total", "downstream_cx_http2_active", "downstream_rq_http2_total",
                 "downstream_rq_too_many_premature_resets")
    STATUS_NAMES = status_names("downstream_rq")


class TcpStats(Counters):
    """Envoy's tcp_proxy counters, per listener (`tcp.<listener>.*`): the TCP proxy of
    captured non-HTTP and passthrough connections (remora/intercept/tcp_proxy.py) counts here."""

    __slots__ = ("downstream_cx_total", "downstream_cx_active", "upstream_connect_fail",
                 "downstream_cx_rx_bytes_total", "downstream_cx_tx_bytes_total", "idle_timeout")


class RbacStats(Counters):
    """Envoy's RBAC filter counters (`http.inbound.rbac.*`); shadow_denied counts AUDIT matches."""

    __slots__ = ("allowed", "denied", "shadow_denied")


class DeniedExchange(Exchange):
    """A request an AuthorizationPolicy refused: answered 403 RBAC when its turn comes
    (after the requests pipelined before it), never sent upstream."""

    __slots__ = ()

    def start(self) -> None:
        self.local_reply(403, DENIED_BODY, "RBAC")


class JwtDeniedExchange(Exchange):
    """A request whose JWT failed verification: Envoy's jwt_authn local reply (401, or 403
    for a disallowed audience, the failure as body, `www-authenticate`) in its turn. Envoy
    sets no response flag and reports it only in the details; Remora logs flag JWT (as it
    does RBAC) so that access logs and Istio metrics show it, and the details in JSON."""

    __slots__ = ("failure",)

    def start(self) -> None:
        head = self.head
        realm = b"%s://%s%s" % (head.scheme, head.authority, head.path_only())
        challenge = b'Bearer realm="%s", error="invalid_token"' % realm[:256]
        self.local_reply(self.failure.status, self.failure.message.encode(), "JWT",
                         [(b"www-authenticate", challenge)])

    def set_failure(self, failure: JwtFailure) -> None:
        """The verification failure this exchange answers, and its Envoy response code
        details (spaces become underscores) in the request record."""
        self.failure = failure
        self.details = "jwt_authn_access_denied{%s}" % failure.message.replace(" ", "_")


class Listener:
    """One listening address (outbound 15001 or inbound 15006) in one worker."""

    def __init__(self, worker, name: str, host: str, port: int, inbound: bool,
                 settings: ListenerSettings) -> None:
        self.worker = worker
        self.loop: asyncio.AbstractEventLoop = worker.loop
        self.deadlines = worker.deadlines   # route and per-try timeouts of this worker's requests
        self.name = name
        self.host = host
        self.port = port
        self.inbound = inbound
        self.settings = settings
        self.paths = PathNormalizer(settings.path_normalization)
        self.stats = ListenerStats()
        self.http2 = Http2Stats()     # the HTTP/2 codec's counters (exported summed as `http2.*`)
        self.connections: set = set()   # DownstreamHttp1 and DownstreamHttp2
        self.server: asyncio.AbstractServer | None = None
        self.acceptor: InboundAcceptor | None = None   # inbound: accepts and terminates mTLS
        self.capture = None         # --capture: decisions for redirected connections (remora/intercept)
        self.tcp_stats = TcpStats()  # TCP proxy counters (captured non-HTTP and passthrough connections)
        self.tcp_sessions: set = set()   # their TcpSessions, for the sweeper's idle check
        self.rbac = RbacStats()
        self.jwt_authn = JwtAuthnStats()
        self.draining = False
        # `remora gateway`: the Gateway server port this listener serves (process/gateway.py),
        # its key (port, bind, TLS settings) and, for HTTPS, the scheme it terminates.
        self.gateway_port: int | None = None
        self.gateway_key: tuple | None = None
        self.gateway_scheme = b"http"
        self.replay_limit = worker.options.retry_buffer_bytes
        # Istio metrics: reporter="source" on the outbound listener, "destination" inbound.
        # The metadata-exchange headers exist only when they are on (see peer_metadata.py).
        metrics = self.istio = getattr(worker, "istio", None)
        self.record = None if metrics is None else (
            metrics.record_inbound if inbound else metrics.record_outbound)
        self.request_header = metrics.request_header if metrics is not None and not inbound else b""
        self.reply_header = metrics.reply_header if metrics is not None and inbound else None
        self.span_kind = SERVER if inbound else CLIENT
        self.set_telemetry(ListenerTelemetry())

    def set_telemetry(self, policy: ListenerTelemetry) -> None:
        """Apply the resolved access-log and tracing settings (at start and on config reload)."""
        self.telemetry = policy
        self.log_format = FORMATTERS[policy.access_log] if policy.access_log else None
        self.sample_ratio = policy.sample_ratio
        self.report_spans = policy.report_spans

    @property
    def address(self) -> str:
        return f"{self.host}_{self.port}"

    def local_spiffe_id(self) -> str | None:
        """This sidecar's SPIFFE ID (the `By=` of XFCC), None without a certificate."""
        svid = self.worker.tls.svid
        return str(svid.spiffe_id) if svid is not None else None

    async def start(self, reuse_port: bool) -> None:
        if self.gateway_port is not None:
            await self._start_gateway()
            return
        support = self.worker.options.capture     # CaptureSupport (capture_seam.py) or None
        if self.inbound:
            plain, tls = (lambda: DownstreamHttp1(self)), (lambda: DownstreamHttp1(self, tls=True))
            if support is not None:
                self.capture = capture = support.inbound(self)
                plain, tls = (lambda: support.connection(capture)), (lambda: support.connection(capture, tls=True))
            self.acceptor = InboundAcceptor(self, plain, tls)
            self.acceptor.start(self.host, self.port, reuse_port)
            return
        factory = lambda: DownstreamHttp1(self)     # noqa: E731
        if support is not None:
            self.capture = capture = support.outbound(self, self.worker.options.outbound_traffic_policy)
            factory = lambda: support.connection(capture)   # noqa: E731
        self.server = await self.loop.create_server(
            factory, self.host, self.port,
            reuse_address=True, reuse_port=reuse_port, backlog=4096)

    async def _start_gateway(self) -> None:
        """A gateway server port: plaintext, or TLS whose certificate the SNI picks from the
        current snapshot (security/gateway_tls.py). SO_REUSEPORT, so that a listener
        replacing this one (new TLS settings) can bind before this one closes."""
        tls_key, context, protocol = self.gateway_key[2], None, self.gateway_key[3]
        if protocol == "PASSTHROUGH":
            self.server = await self.loop.create_server(lambda: SniSniffer(self), self.host, self.port,
                                                        reuse_address=True, reuse_port=True, backlog=4096)
            return
        if tls_key is not None:
            number = self.gateway_port

            def select(server_name):
                port = self.worker.snapshot.gateway_ports.get(number)
                chosen = port.tls.select(server_name) if port is not None and port.tls is not None else None
                return self.worker.tls.server_context if chosen is MESH else chosen
            context = front_context(tls_key, select)
            self.gateway_scheme = b"https"
        tls = context is not None
        factory = tcp_protocol_factory(self) if protocol in ("TCP", "TLS") else lambda: DownstreamHttp1(self, tls=tls)
        self.server = await self.loop.create_server(
            factory, self.host, self.port, ssl=context,
            ssl_handshake_timeout=self.settings.handshake_timeout if tls else None,
            reuse_address=True, reuse_port=True, backlog=4096)

    def stop_accepting(self) -> None:
        """Close the listening socket; connections already accepted are served to their end."""
        if self.server is not None:
            self.server.close()
        if self.acceptor is not None:
            self.acceptor.close()
        self.draining = True

    def begin_drain(self) -> None:
        """The proxy is shutting down (Istio's inbound-only drain).

        Inbound: stop accepting and close idle keep-alive connections; requests in flight
        finish and their connections close after the response. Outbound keeps accepting,
        because the app is shutting down too and may still call out; its responses carry
        `connection: close` (`draining`), so the app's pooled connections turn over and
        the proxy can reach zero connections once the app is done. Idle outbound
        connections are not closed here: a request could be on its way on them.
        """
        self.draining = True
        for conn in list(self.connections):
            conn.begin_drain()     # HTTP/2: GOAWAY now (HTTP/1: `connection: close` on responses)
        if self.inbound:
            self.stop_accepting()
            self.close_idle()

    def close_idle(self) -> None:
        for conn in list(self.connections):
            conn.close_if_idle()

    # -- called by DownstreamHttp1 --------------------------------------------------------
    def connection_opened(self, conn: DownstreamHttp1) -> None:
        self.connections.add(conn)
        self.stats.downstream_cx_total += 1
        self.stats.downstream_cx_active += 1

    def connection_replaced(self, old, new) -> None:
        """A connection changed codec (HTTP/1 -> HTTP/2 on the preface or ALPN): same connection, new protocol."""
        self.connections.discard(old)
        self.connections.add(new)

    def connection_closed(self, conn: DownstreamHttp1) -> None:
        self.connections.discard(conn)
        self.stats.downstream_cx_active -= 1

    def count_protocol_error(self, status: int) -> None:
        self.stats.downstream_cx_protocol_error += 1

    def new_exchange(self, sink, head, routed: bool = True) -> Exchange:
        """An Exchange for a request head, routed with the current snapshot."""
        stats = self.stats
        stats.downstream_rq_total += 1
        stats.downstream_rq_active += 1
        if routed:
            snapshot = self.worker.snapshot
            if self.inbound:
                if sink.capture is None:
                    table, policy = snapshot.inbound, snapshot.inbound_policy
                else:   # captured: the app port the caller dialled
                    table, policy, _ = snapshot.inbound_for(sink.capture.original[1])
            elif self.gateway_port is None:
                table, policy = snapshot.outbound, None
            else:     # a gateway: the edge sets the scheme it saw (Envoy's use_remote_address)
                port = snapshot.gateway_ports.get(self.gateway_port)
                table, policy = (port.table if port is not None else None), None
                head.scheme = self.gateway_scheme
            vhost = table.lookup(head.authority) if table is not None else None
            if vhost is None and sink.capture is not None:
                return self.capture.fallback(sink, head, stats)
            found = vhost.route(head) if vhost is not None else None
            if found is not None:
                jwt = None
                if policy is not None and policy.authenticator is not None:
                    jwt = policy.authenticator.authenticate(head, self.jwt_authn)
                    if jwt.__class__ is JwtFailure:
                        if _jwt_log.isEnabledFor(DEBUG):
                            _log_jwt_failure(head, jwt)
                        denied = JwtDeniedExchange(sink, head, self, found[0], found[1], vhost.port)
                        denied.set_failure(jwt)
                        return denied
                if policy is not None and policy.authorizer is not None and not self.authorize(policy, head, jwt):
                    return DeniedExchange(sink, head, self, found[0], found[1], vhost.port)
                return Exchange(sink, head, self, found[0], found[1], vhost.port)
            stats.no_route += 1
        return Exchange(sink, head, self, None, None, 0)

    def authorize(self, policy, head, jwt=None) -> bool:
        """AuthorizationPolicy for one inbound request head, counted as Envoy's RBAC filter does."""
        decision = policy.authorizer.check(policy.request(head, jwt))
        if decision.allowed and self.paths.keeps_escaped_slashes:
            # %2F / %5C reach the app encoded at this level; an app that decodes them reads
            # `/foo/..%2Fadmin` as `/admin`. Allow only if that reading is allowed too.
            variant = escaped_slash_variant(head.path)
            if variant is not None:
                original, head.path = head.path, variant
                try:
                    decision = policy.authorizer.check(policy.request(head, jwt))
                finally:
                    head.path = original
        if _rbac_log.isEnabledFor(DEBUG):
            _log_decision(decision, policy.request(head, jwt))
        if decision.audit:
            self.rbac.shadow_denied += 1
        if decision.allowed:
            self.rbac.allowed += 1
        else:
            self.rbac.denied += 1
        return decision.allowed

    def added_request_headers(self, head, cluster, trace) -> tuple[bytes, bytes]:
        """The mesh header lines added upstream, as (lines that repeat from request to
        request, lines new on each). The first: x-forwarded-for/-proto, user-agent, this
        sidecar's metadata (in-mesh destinations only), the caller's identity (inbound mTLS)
        and x-envoy-attempt-count for the first attempt (kept last, see Exchange). The
        second: x-request-id and the trace context of the proxy's span. Apart, an HTTP/2
        upstream encodes the first as one remembered piece and only the second anew
        (upstream/http2_request_head.py)."""
        peer = head.peer_ip
        xff = head.forwarded_for + b", " + peer if head.forwarded_for else peer
        added = b"x-forwarded-for: %s\r\nx-forwarded-proto: %s\r\n" % (xff, head.scheme)
        if head.user_agent:
            added += b"user-agent: " + head.user_agent + b"\r\n"
        if self.request_header and cluster.telemetry is not None and cluster.telemetry.mesh_internal:
            added += self.request_header
        if head.peer_cert is not None and self.inbound:
            added += head.peer_cert.xfcc     # inbound mTLS: the caller's identity for the app
        return added + FIRST_ATTEMPT, b"x-request-id: " + head.request_id + b"\r\n" + inject(trace)

    def exchange_finished(self, exchange: Exchange) -> None:
        """Count a finished exchange and hand its request record (only) to the consumers.

        The exchange is its own RequestInfo (no second object per request); the consumers
        are written against RequestInfo and read nothing else (test_request_info)."""
        info: RequestInfo = exchange
        info.ended_at = self.loop.time()
        stats = self.stats
        stats.downstream_rq_active -= 1
        stats.count_status(info.status)
        if self.record is not None:
            self.record(info)
        fmt = self.log_format
        if fmt is not None:
            self.worker.access_log.log(access_record(info), fmt)
        if self.report_spans and info.trace.sampled:
            self.worker.tracer.finish(info, self.span_kind)

    # -- tunnels (WebSocket now; the TCP proxy will count through the same IstioMetrics API) --
    def tunnel_opened(self, exchange, resp):
        """A TcpMeter for an upgraded connection, or None when Istio metrics are off."""
        if self.istio is None:
            return None
        if self.inbound:
            return self.istio.tcp_opened(False, exchange.head.peer_metadata, self.istio.local_service)
        cluster = exchange.cluster
        return self.istio.tcp_opened(True, resp.peer_metadata,
                                     cluster.telemetry if cluster is not None else UNKNOWN_SERVICE)

    def tunnel_closed(self, meter) -> None:
        self.istio.tcp_closed(meter)
