"""TLS origination: DestinationRule `tls.mode` SIMPLE / MUTUAL, TLS to servers outside the mesh.

Rules (Istio's ClientTLSSettings as Istio renders them for Envoy; docs/security.md,
"TLS origination"):
- The settings are the merged `tls` of the cluster (trafficPolicy < its portLevelSettings <
  subset < the subset's portLevelSettings: cluster.merge_policy). Fail closed: a TLS
  endpoint is never dialled in plaintext; every failure is a connect failure (503 UF).
- Trust: `caCertificates` (a PEM file), else the credential's CA, else the system trust
  store. `insecureSkipVerify: true` skips the CA and SAN checks (and only then).
- Client certificate (MUTUAL): `clientCertificate` + `privateKey` files, or the credential.
- `credentialName`: files under the sidecar's --credentials-dir, as a mounted Kubernetes
  Secret: `<dir>/<name>/tls.crt`, `tls.key`, `ca.crt` (or Istio's `cert`, `key`, `cacert`);
  the CA may instead be in `<dir>/<name>-cacert/`. Read when a connection is made (re-read
  when the files change); missing -> that connection fails, 503 UF.
- SNI: `sni`, else the request's host (the Host header after any rewrite, without the
  port; none for an IP address), Envoy's auto_sni as Istio sets it. TCP: `sni` or none.
- Server name check, after the CA check (Istio + Envoy): `subjectAltNames` of the rule if
  given; else, when neither `sni` nor `subjectAltNames` is set, the request's host
  (auto_san_validation); else the ServiceEntry's `subjectAltNames`; else none (CA only).
  DNS SANs compare case-insensitively and a certificate's `*.example.com` covers one label;
  URI and IP SANs compare exactly.
- ALPN `http/1.1`, or `h2` for a cluster that speaks HTTP/2 upstream (a GRPC or HTTP2 port;
  Istio: "This is HTTP/2 cluster, advertise it with ALPN"); TLS 1.2 to 1.3.
- Files named by paths (`caCertificates`, `clientCertificate`, `privateKey`) are checked
  when a config version is compiled: missing or unreadable -> the config is refused,
  naming resource and field (`OriginationFileError`). Contexts are built once per file
  version and shared by every config version and connection of a worker.
- Counters (cluster.<name>.ssl.*): `handshake`; `connection_error` (every failed handshake,
  and a credential that cannot be read); `fail_verify_error` (the CA check failed);
  `fail_verify_san` (the name check failed after a good handshake).
"""
from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
from dataclasses import dataclass


from remora.certs.secret_dir import (CA_FILES, CA_SECRET_SUFFIX, CERT_FILES, KEY_FILES, credential_ca,
                                      first_file)
from remora.config.field_checks import is_ip
from remora.config.loader import ConfigError, ConfigIssue
from remora.proxy.upstream.upstream_tls import TlsStats, UpstreamTlsError, ssl_reason

SIMPLE = "SIMPLE"
MUTUAL = "MUTUAL"
ALPN = ("http/1.1",)
ALPN_H2 = ("h2",)
_FAILED = "connection failure, transport failure reason: TLS error: "


@dataclass(frozen=True)
class Origination:
    """A cluster's TLS origination settings, compiled once per config version."""

    mode: str                              # SIMPLE | MUTUAL
    sni: str | None                        # None: the request's host (auto SNI)
    sans: tuple[str, ...]                  # the rule's subjectAltNames
    service_sans: tuple[str, ...]          # the ServiceEntry's subjectAltNames (fallback)
    verify: bool                           # False: insecureSkipVerify
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    credential: str | None
    rule: str                              # DestinationRule/ns/name, for errors
    source: str                            # the rule's file
    path: str                              # the tls block's field path

    @property
    def auto_san(self) -> bool:
        """Istio checks the request's host when neither sni nor subjectAltNames is set."""
        return self.verify and self.sni is None and not self.sans

    @property
    def key(self) -> str:
        """Part of the pool key: connections made with other settings are never reused."""
        return repr((self.mode, self.sni, self.sans, self.service_sans, self.verify, self.ca_file,
                     self.cert_file, self.key_file, self.credential))


def origination_for(tls, service_sans, rule, path: str) -> Origination | None:
    """The Origination of a merged ClientTLSSettings, or None when its mode is not SIMPLE/MUTUAL."""
    mode = (tls.mode or "").upper() if tls is not None else ""
    if mode not in (SIMPLE, MUTUAL):
        return None
    return Origination(
        mode=mode, sni=tls.sni or None, sans=tuple(tls.subject_alt_names),
        service_sans=tuple(service_sans), verify=not tls.insecure_skip_verify,
        ca_file=tls.ca_certificates or None,
        cert_file=(tls.client_certificate or None) if mode == MUTUAL else None,
        key_file=(tls.private_key or None) if mode == MUTUAL else None,
        credential=tls.credential_name or None,
        rule=rule.ref if rule is not None else "", source=rule.source if rule is not None else "",
        path=path)


class OriginationFileError(Exception):
    """A file named by a rule is missing or unreadable: the config version is refused."""

    def __init__(self, origin: Origination, field: str, message: str) -> None:
        super().__init__(message)
        self.origin = origin
        self.field = f"{origin.path}.{field}"
        self.message = message


class CredentialUnavailable(Exception):
    """A credentialName that cannot be used now (the connection fails, 503 UF)."""


def request_host(authority: bytes | None) -> str | None:
    """The host of a Host/authority value, lowercased, without port or IPv6 brackets."""
    if not authority:
        return None
    text = authority.decode("latin-1").strip().lower()
    if text.startswith("["):
        end = text.find("]")
        return text[1:end] if end > 0 else None
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        text = host
    return text or None


def _dns_match(wanted: str, presented: str) -> bool:
    wanted, presented = wanted.lower().rstrip("."), presented.lower().rstrip(".")
    if wanted == presented:
        return True
    if presented.startswith("*.") and "." in wanted:
        return wanted.split(".", 1)[1] == presented[2:] and not wanted.startswith(".")
    return False


def names_match(expected, presented: tuple) -> bool:
    """True when one of the certificate's SANs (getpeercert() pairs) is one of `expected`."""
    for kind, value in presented:
        for want in expected:
            if kind == "DNS" and _dns_match(want, value):
                return True
            if kind == "IP Address" and is_ip(want) and is_ip(value.strip()) \
                    and ipaddress.ip_address(want) == ipaddress.ip_address(value.strip()):
                return True
            if kind == "URI" and want == value:
                return True
    return False


# ---- contexts ----------------------------------------------------------------------------

def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _stat(path: str | None):
    if path is None:
        return None
    st = os.stat(path)
    return (path, st.st_mtime_ns, st.st_size, st.st_ino)


def _check_certificates(data: bytes) -> None:
    from cryptography import x509   # here: a sidecar without TLS origination never loads it (8.6 MiB)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ValueError("no PEM certificate in it")
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError("a PEM certificate in it does not parse") from None


def _check_key(data: bytes) -> None:
    from cryptography.hazmat.primitives import serialization   # as above
    if b"PRIVATE KEY-----" not in data:
        raise ValueError("no PEM private key in it")
    try:
        serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValueError("the private key does not parse (an encrypted key is not supported)") from None


def build_context(mode: str, verify: bool, ca: str | None, cert: str | None, key: str | None,
                  fail, http2: bool = False) -> ssl.SSLContext:
    """An SSLContext for origination (ALPN h2 when `http2`); `fail(field, message)` raises
    the caller's error."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False        # names are checked after the handshake, Istio's rules
    context.set_alpn_protocols(list(ALPN_H2 if http2 else ALPN))
    if not verify:
        context.verify_mode = ssl.CERT_NONE
    elif ca is None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)   # the system trust store
    else:
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            _check_certificates(_read(ca))
            context.load_verify_locations(cafile=ca)
        except (OSError, ValueError, ssl.SSLError) as error:
            fail("caCertificates", f"cannot use CA file {ca}: {_why(error)}")
    if mode == MUTUAL:
        try:
            _check_certificates(_read(cert))
        except (OSError, ValueError) as error:
            fail("clientCertificate", f"cannot use certificate file {cert}: {_why(error)}")
        try:
            _check_key(_read(key))
        except (OSError, ValueError) as error:
            fail("privateKey", f"cannot use private key file {key}: {_why(error)}")
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as error:
            fail("privateKey", f"private key {key} does not go with certificate {cert}: {_why(error)}")
    return context


def _why(error: Exception) -> str:
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, OSError):
        return error.strerror or str(error)
    if isinstance(error, ssl.SSLError):
        return ssl_reason(error)
    return str(error) or type(error).__name__


class OriginContexts:
    """One worker's origination SSLContexts, keyed by settings and file versions (stat)."""

    def __init__(self, credentials_dir: str | None = None) -> None:
        self.credentials_dir = credentials_dir
        self._cache: dict[tuple, ssl.SSLContext] = {}

    def check(self, origin: Origination) -> None:
        """Build (or find) the context of a path-based origination; raise OriginationFileError."""
        if origin.credential is None:
            self._from_files(origin)

    def context_for(self, origin: Origination, http2: bool = False) -> ssl.SSLContext:
        """The context to dial with now (ALPN h2 for an HTTP/2 cluster). Raises
        CredentialUnavailable, OriginationFileError."""
        if origin.credential is not None:
            return self._from_credential(origin, http2)
        return self._from_files(origin, http2)

    def _from_files(self, origin: Origination, http2: bool = False) -> ssl.SSLContext:
        def fail(field: str, message: str):
            raise OriginationFileError(origin, field, message)
        paths = {"caCertificates": origin.ca_file, "clientCertificate": origin.cert_file,
                 "privateKey": origin.key_file}
        stats = []
        for field, path in paths.items():
            try:
                stats.append(_stat(path))
            except OSError as error:
                fail(field, f"cannot use {'CA file' if field == 'caCertificates' else 'file'} {path}: {_why(error)}")
        key = (origin.mode, origin.verify, http2, *stats)
        context = self._cache.get(key)
        if context is None:
            context = build_context(origin.mode, origin.verify, origin.ca_file, origin.cert_file,
                                    origin.key_file, fail, http2)
            self._remember(key, context)
        return context

    def _from_credential(self, origin: Origination, http2: bool) -> ssl.SSLContext:
        name = origin.credential
        if self.credentials_dir is None:
            raise CredentialUnavailable(f"credentialName {name}: this sidecar has no --credentials-dir")
        base = os.path.join(self.credentials_dir, name)
        cert = key = ca = None
        if origin.mode == MUTUAL:
            cert, key = first_file(base, CERT_FILES), first_file(base, KEY_FILES)
            if cert is None or key is None:
                raise CredentialUnavailable(
                    f"credentialName {name}: no {' / '.join(CERT_FILES)} and {' / '.join(KEY_FILES)} in {base}")
        if origin.verify:
            ca = credential_ca(base)
            if ca is None:
                raise CredentialUnavailable(f"credentialName {name}: no CA ({' / '.join(CA_FILES)}) in "
                                            f"{base} or {base + CA_SECRET_SUFFIX}")
        try:
            key_ = (origin.mode, origin.verify, http2, _stat(ca), _stat(cert), _stat(key))
        except OSError as error:
            raise CredentialUnavailable(f"credentialName {name}: {_why(error)}") from None
        context = self._cache.get(key_)
        if context is None:
            def fail(field: str, message: str):
                raise CredentialUnavailable(f"credentialName {name}: {message}")
            context = build_context(origin.mode, origin.verify, ca, cert, key, fail, http2)
            self._remember(key_, context)
        return context

    def _remember(self, key: tuple, context: ssl.SSLContext) -> None:
        if len(self._cache) >= 256:      # old file versions: forget them all, rebuild on use
            self._cache.clear()
        self._cache[key] = context


def check_origination(clusters, contexts: OriginContexts) -> None:
    """Refuse a config version whose TLS origination names files that are missing or do not
    parse (ConfigError naming file, resource and field); builds their contexts once."""
    issues, seen = [], set()
    for cluster in clusters:
        origin = cluster.origination
        if origin is None or origin.key in seen:
            continue
        seen.add(origin.key)
        try:
            contexts.check(origin)
        except OriginationFileError as error:
            issues.append(ConfigIssue(origin.source, origin.rule, error.field, error.message))
    if issues:
        raise ConfigError(sorted(set(issues), key=str))


# ---- dialling ----------------------------------------------------------------------------

class OriginationDialer:
    """How one endpoint pool opens TLS connections to a server outside the mesh."""

    __slots__ = ("origin", "contexts", "stats", "cluster_name", "http2")

    def __init__(self, origin: Origination, contexts: OriginContexts, stats: TlsStats,
                 cluster_name: str, http2: bool = False) -> None:
        self.http2 = http2             # the pool speaks HTTP/2: offer ALPN h2
        self.origin = origin
        self.contexts = contexts
        self.stats = stats
        self.cluster_name = cluster_name

    @property
    def by_host(self) -> bool:
        """True when a connection belongs to one request host (auto SNI): pools match on it."""
        return self.origin.sni is None

    async def dial(self, pool, factory, timeout: float, authority: bytes | None = None):
        """Open, handshake and check the server's name; return the protocol.

        Raises UpstreamTlsError (the reset reason), OSError or TimeoutError.
        """
        origin, stats = self.origin, self.stats
        host = request_host(authority)
        try:
            context = self.contexts.context_for(origin, self.http2)
        except (CredentialUnavailable, OriginationFileError) as error:
            stats.connection_error += 1
            raise UpstreamTlsError(_FAILED + str(error)) from None
        sni = origin.sni or (host if host is not None and not is_ip(host) else None)
        try:
            _, conn = await asyncio.wait_for(
                pool.loop.create_connection(factory, pool.host, pool.port, ssl=context,
                                            server_hostname=sni or "", ssl_handshake_timeout=timeout),
                timeout)
        except ssl.SSLCertVerificationError as error:
            stats.connection_error += 1
            stats.fail_verify_error += 1
            raise UpstreamTlsError(_FAILED + ssl_reason(error)) from None
        except ssl.SSLError as error:
            stats.connection_error += 1
            raise UpstreamTlsError(_FAILED + ssl_reason(error)) from None
        except (ConnectionResetError, BrokenPipeError):
            stats.connection_error += 1
            raise UpstreamTlsError(_FAILED + "the server closed the connection during the handshake") from None
        conn.tls_host = host
        if origin.verify:
            expected = origin.sans or ((host,) if origin.auto_san and host else origin.service_sans)
            if expected:
                cert = conn.transport.get_extra_info("peercert") or {}
                presented = tuple(cert.get("subjectAltName", ()))
                if not names_match(expected, presented):
                    stats.fail_verify_san += 1
                    conn.close()
                    shown = ", ".join(f"{k}:{v}" for k, v in presented) or "none"
                    raise UpstreamTlsError(_FAILED + f"the server certificate's subject alt names "
                                           f"({shown}) match none of {', '.join(expected)}")
        stats.handshake += 1
        return conn
