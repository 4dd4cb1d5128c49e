"""Outbound mutual TLS: which endpoints a sidecar dials with TLS, and whom it expects there.

Rules (Istio's auto-mTLS and secure naming):
- Mode, per endpoint: DestinationRule `tls.mode` (trafficPolicy, subset, portLevelSettings,
  merged by cluster.merge_policy) ISTIO_MUTUAL -> mTLS, required; DISABLE -> plaintext;
  unset -> mTLS when the endpoint carries `security.istio.io/tlsMode: istio` (auto-mTLS),
  else plaintext. SIMPLE and MUTUAL (TLS to servers outside the mesh) are dialled by
  tls_origination.py, never in plaintext.
- mTLS needs this worker's certificate (MeshTls.client_context, read at dial time, so a
  rotated certificate is used by the next connection and established ones keep theirs).
  Without one, a required (ISTIO_MUTUAL) endpoint fails the attempt as 503 UF; an
  auto-mTLS one is dialled in plaintext and that connection is never pooled.
- SNI is Istio's `outbound_.<port>_.<subset>_.<fqdn>`; ALPN "remora", "http/1.1" (the context's).
- Secure naming: after the handshake the server's SPIFFE ID must be one of the identities
  registered for the service: the endpoint's own service account when it has one, else the
  service's endpoints' accounts plus ServiceEntry and DestinationRule subjectAltNames; when
  nothing is known, any ID that chains to the trust bundle. Service accounts become
  `spiffe://<this sidecar's trust domain>/ns/<service namespace>/sa/<sa>`.
- Failures close the connection and fail the attempt like any connect failure (503 UF,
  retriable); the reason names the TLS fault. Envoy's counters: cluster.<name>.ssl.handshake,
  ssl.connection_error, ssl.fail_verify_san. A secure-naming mismatch is logged once per
  (cluster, endpoint, identity) per worker, so a persistent misconfiguration cannot flood stderr.
"""
from __future__ import annotations

import asyncio
import ssl

from remora.certs.client import peer_spiffe_id
from remora.certs.spiffe import SCHEME
from remora.config.mesh_rules import (  # noqa: F401 (modes and outbound_sni re-exported)
    DISABLE, ISTIO_MUTUAL, MUTUAL, SIMPLE, endpoint_tls_mode as tls_mode_rule, outbound_sni,
)
from remora.config.names import TLS_MODE_LABEL  # noqa: F401 (re-exported)
from remora.proxy import log_levels
from remora.proxy.telemetry.counters import Counters

_LOGGED_LIMIT = 1024          # distinct mismatches remembered per worker before forgetting all


class TlsStats(Counters):
    """Envoy's `cluster.<name>.ssl.*` counters of one cluster in one worker."""

    __slots__ = ("handshake", "connection_error", "fail_verify_error", "fail_verify_san")


class UpstreamTlsError(Exception):
    """A TLS dial that failed; the message is the reset reason the client sees."""


def endpoint_tls_mode(policy, labels: dict[str, str]) -> str:
    """How an endpoint of a cluster with `policy` is dialled: ISTIO_MUTUAL (mTLS), SIMPLE or
    MUTUAL (TLS origination, tls_origination.py) or DISABLE (plaintext); config/mesh_rules.py."""
    tls = policy.tls if policy is not None else None
    return tls_mode_rule(tls.mode if tls is not None else None, labels)


def is_required(policy) -> bool:
    """True when the DestinationRule asks for ISTIO_MUTUAL explicitly (no plaintext fallback)."""
    tls = policy.tls if policy is not None else None
    return tls is not None and (tls.mode or "").upper() == ISTIO_MUTUAL


class SecureNaming:
    """The identities a service's servers may present: service accounts and explicit SANs."""

    __slots__ = ("namespace", "accounts", "sans", "_cache")

    def __init__(self, namespace: str, accounts, sans) -> None:
        self.namespace = namespace
        self.accounts = frozenset(a for a in accounts if a)
        self.sans = frozenset(s for s in sans if s)
        self._cache: dict[tuple[str, str | None], frozenset[str] | None] = {}

    def expected(self, service_account: str | None, trust_domain: str) -> frozenset[str] | None:
        """The SPIFFE IDs accepted from an endpoint (None: any ID chaining to the bundle)."""
        key = (trust_domain, service_account)
        if key in self._cache:
            return self._cache[key]
        if service_account:
            found: frozenset[str] | None = frozenset({self.spiffe_id(trust_domain, service_account)})
        else:
            ids = {self.spiffe_id(trust_domain, sa) for sa in self.accounts} | self.sans
            found = frozenset(ids) or None
        self._cache[key] = found
        return found

    def spiffe_id(self, trust_domain: str, service_account: str) -> str:
        return f"{SCHEME}{trust_domain}/ns/{self.namespace}/sa/{service_account}"


class MtlsDialer:
    """How one endpoint pool opens mutual-TLS connections (set per config version)."""

    __slots__ = ("tls", "sni", "naming", "required", "cluster_name", "endpoint_key",
                 "service_account", "stats", "logged")

    def __init__(self, tls, sni: str, naming: SecureNaming, required: bool, cluster_name: str,
                 endpoint_key: str, service_account: str | None, stats: TlsStats, logged: set) -> None:
        self.tls = tls                     # the worker's MeshTls (contexts read at dial time)
        self.sni = sni
        self.naming = naming
        self.required = required
        self.cluster_name = cluster_name
        self.endpoint_key = endpoint_key
        self.service_account = service_account
        self.stats = stats
        self.logged = logged               # the worker's set of mismatches already logged

    async def dial(self, pool, factory, timeout: float, authority: bytes | None = None):
        """Open, handshake and verify; return the protocol. Raises UpstreamTlsError, OSError, TimeoutError.

        `authority` (the request's Host, for TLS origination's auto SNI) is not used: mTLS
        names the service in its SNI."""
        loop = pool.loop
        context = self.tls.client_context
        if context is None:
            if self.required:
                self.stats.connection_error += 1
                raise UpstreamTlsError("connection failure, transport failure reason: TLS error: "
                                       "ISTIO_MUTUAL needs this sidecar's certificate, which it does not have yet")
            _, conn = await asyncio.wait_for(loop.create_connection(factory, pool.host, pool.port), timeout)
            conn.no_reuse = True     # auto-mTLS before the certificate: never pooled
            return conn
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(factory, pool.host, pool.port, ssl=context,
                                       server_hostname=self.sni, ssl_handshake_timeout=timeout),
                timeout)
        except ssl.SSLError as error:
            self.stats.connection_error += 1
            raise UpstreamTlsError("connection failure, transport failure reason: TLS error: "
                                   f"{ssl_reason(error)}") from None
        except (ConnectionResetError, BrokenPipeError):
            # The server hung up mid-handshake (it refused our certificate, or speaks no TLS).
            self.stats.connection_error += 1
            raise UpstreamTlsError("connection failure, transport failure reason: TLS error: "
                                   "the server closed the connection during the handshake") from None
        got = peer_spiffe_id(conn.transport.get_extra_info("ssl_object"))
        expected = self.naming.expected(self.service_account, self._trust_domain())
        if expected is not None and got not in expected:
            self.stats.fail_verify_san += 1
            conn.close()
            self._log_mismatch(expected, got)
            raise UpstreamTlsError("connection failure, transport failure reason: TLS error: "
                                   f"secure naming: server identity {got or 'none'} is not one of "
                                   f"{', '.join(sorted(expected))}")
        self.stats.handshake += 1
        conn.peer_id = got
        return conn

    def _trust_domain(self) -> str:
        svid = self.tls.svid
        return svid.spiffe_id.trust_domain if svid is not None else "cluster.local"

    def _log_mismatch(self, expected: frozenset[str], got: str | None) -> None:
        key = (self.cluster_name, self.endpoint_key, got)
        if key in self.logged:
            return
        if len(self.logged) >= _LOGGED_LIMIT:
            self.logged.clear()
        self.logged.add(key)
        log_levels.logger("upstream").warning(
            "mTLS secure naming failed: cluster %s endpoint %s: expected %s, got %s; connection closed",
            self.cluster_name, self.endpoint_key, " or ".join(sorted(expected)), got or "no SPIFFE ID")


def ssl_reason(error: ssl.SSLError) -> str:
    """OpenSSL's short reason (CERTIFICATE_VERIFY_FAILED ...) plus the verify message when there is one."""
    reason = getattr(error, "reason", None) or type(error).__name__
    message = getattr(error, "verify_message", None)
    return f"{reason}: {message}" if message else str(reason)
