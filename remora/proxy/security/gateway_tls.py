"""TLS termination on a gateway's HTTPS servers (Gateway `servers[].tls`, SIMPLE and MUTUAL).

- ISTIO_MUTUAL (an egress gateway in the mesh): the gateway's own workload certificate,
  clients verified against the mesh trust bundle, as its inbound mTLS does; until it has
  a certificate every handshake fails (fail closed).
- Certificates: `serverCertificate` + `privateKey` (+ `caCertificates` for MUTUAL) files, or
  `credentialName` read from `--credentials-dir/<name>/` (a mounted Secret: tls.crt,
  tls.key, ca.crt; remora/certs/secret_dir.py). Missing or unreadable files refuse the
  config version, naming resource and field: a gateway never serves HTTPS without them.
- Several servers on one port: the client's SNI picks the server whose hosts cover it
  (exact, then the longest wildcard, then `*`), as Envoy's filter-chain match on
  server_names; no server covers it -> the handshake fails (unrecognized_name).
- OpenSSL switches only the certificate and CA store when SNI picks another context: the
  verify mode, TLS versions and cipher list stay those of the listener's front context.
  So these are per port (`PortTls.key`), and servers on one port that differ in them are
  refused (`GatewayTlsError`); a change of them replaces the port's listener.
- Defaults (Istio's): TLS 1.2 to 1.3; ALPN h2 and http/1.1.
"""
from __future__ import annotations

import os
import ssl

from remora.certs.secret_dir import CERT_FILES, KEY_FILES, credential_ca, first_file
from remora.config.names import wildcard_covers

VERSIONS = {"TLSV1_0": ssl.TLSVersion.TLSv1, "TLSV1_1": ssl.TLSVersion.TLSv1_1,
            "TLSV1_2": ssl.TLSVersion.TLSv1_2, "TLSV1_3": ssl.TLSVersion.TLSv1_3}
ALPN = ["h2", "http/1.1"]
MESH = "mesh"     # a server choice meaning the worker's mesh mTLS context (ISTIO_MUTUAL)


class GatewayTlsError(Exception):
    """A gateway server's TLS cannot be served: `path` is the field at fault."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _settings(tls) -> tuple:
    """What must agree across one port's servers (see the module docstring)."""
    return (tls.mode or "PASSTHROUGH", tls.min_protocol_version or "TLS_AUTO",
            tls.max_protocol_version or "TLS_AUTO", tuple(tls.cipher_suites))


def _files(tls, credentials_dir: str | None, path: str) -> tuple[str, str, str | None]:
    """(certificate, key, CA or None) of one server, checked to exist."""
    mutual = tls.mode == "MUTUAL"
    if tls.credential_name:
        name = tls.credential_name
        if credentials_dir is None:
            raise GatewayTlsError(f"{path}.credentialName", f"credentialName {name}: this gateway has no "
                                  "--credentials-dir to read it from")
        base = os.path.join(credentials_dir, name)
        cert, key = first_file(base, CERT_FILES), first_file(base, KEY_FILES)
        if cert is None or key is None:
            raise GatewayTlsError(f"{path}.credentialName", f"credentialName {name}: no "
                                  f"{' / '.join(CERT_FILES)} and {' / '.join(KEY_FILES)} in {base}")
        ca = credential_ca(base) if mutual else None
        if mutual and ca is None:
            raise GatewayTlsError(f"{path}.credentialName", f"credentialName {name}: MUTUAL needs a client CA "
                                  f"(ca.crt) in {base} or {base}-cacert")
        return cert, key, ca
    for field, value in (("serverCertificate", tls.server_certificate), ("privateKey", tls.private_key),
                         ("caCertificates", tls.ca_certificates if mutual else None)):
        if value is not None and not os.path.isfile(value):
            raise GatewayTlsError(f"{path}.{field}", f"{value}: no such file")
    return tls.server_certificate, tls.private_key, tls.ca_certificates if mutual else None


def _apply_settings(context: ssl.SSLContext, settings: tuple, path: str) -> None:
    mode, low, high, ciphers = settings
    context.minimum_version = VERSIONS.get(low, ssl.TLSVersion.TLSv1_2)
    context.maximum_version = VERSIONS.get(high, ssl.TLSVersion.TLSv1_3)
    if ciphers:
        try:
            context.set_ciphers(":".join(ciphers))
        except ssl.SSLError:
            raise GatewayTlsError(f"{path}.cipherSuites", f"no cipher of {', '.join(ciphers)} is known to "
                                  "this gateway's OpenSSL") from None
    context.set_alpn_protocols(ALPN)
    if mode in ("MUTUAL", "ISTIO_MUTUAL"):
        context.verify_mode = ssl.CERT_REQUIRED


def server_context(tls, credentials_dir: str | None, path: str) -> ssl.SSLContext:
    """The TLS context of one server (its certificate, and its client CA when MUTUAL)."""
    cert, key, ca = _files(tls, credentials_dir, path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_settings(context, _settings(tls), path)
    field = f"{path}.credentialName" if tls.credential_name else f"{path}.serverCertificate"
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise GatewayTlsError(field, f"cannot use certificate {cert} with key {key}: {error}") from None
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as error:
            field = f"{path}.credentialName" if tls.credential_name else f"{path}.caCertificates"
            raise GatewayTlsError(field, f"cannot use CA file {ca}: {error}") from None
    return context


class PortTls:
    """The HTTPS servers of one gateway port: a context per server, picked by SNI."""

    def __init__(self, servers: list[tuple[list[str], object, str]], credentials_dir: str | None) -> None:
        """`servers`: (host names without namespace, tls settings, field path) per server."""
        self.choices: list[tuple[str, ssl.SSLContext | str]] = []
        self.key: tuple | None = None
        for hosts, tls, path in servers:
            settings = _settings(tls)
            if self.key is None:
                self.key = settings
            elif settings != self.key:
                raise GatewayTlsError(f"{path}.mode", "servers on one port must agree on TLS mode, "
                                      "min/maxProtocolVersion and cipherSuites (Remora serves one set per "
                                      "port; put this server on its own port)")
            context = MESH if tls.mode == "ISTIO_MUTUAL" else server_context(tls, credentials_dir, path)
            for host in hosts:
                self.choices.append((host.lower(), context))
        # Most specific first: exact names, then wildcards by length, then `*`.
        self.choices.sort(key=lambda item: (item[0] == "*", item[0].startswith("*."), -len(item[0])))

    def select(self, server_name: str | None) -> ssl.SSLContext | str | None:
        """The context for a ClientHello's SNI (None: no SNI), MESH for an ISTIO_MUTUAL
        server, None when no server covers it."""
        name = (server_name or "").lower()
        for pattern, context in self.choices:
            if pattern == "*" or (name and wildcard_covers(pattern, name)):
                return context
        return None


def front_context(key: tuple, select) -> ssl.SSLContext:
    """The listener's context: per-port settings, and SNI delegating to `select(name)` (which
    reads the current snapshot, so a pushed certificate serves the next handshake)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_settings(context, key, "spec")

    def pick(ssl_object, server_name, _context):
        chosen = select(server_name)
        if chosen is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        ssl_object.context = chosen
        return None

    context.sni_callback = pick
    return context
