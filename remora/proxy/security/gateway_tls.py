"""TLS termination on a gateway's HTTPS servers (Gateway `servers[].tls`, SIMPLE and MUTUAL).

- ISTIO_MUTUAL (an egress gateway in the mesh): the gateway's own workload certificate,
  clients verified against the mesh trust bundle, as its inbound mTLS does; until it has
  a certificate every handshake fails (fail closed).
- Certificates: `serverCertificate` + `privateKey` (+ `caCertificates` for MUTUAL) files, or
  `credentialName`, read from the gateway's CredentialSource (credentials.py: files under
  `--credentials-dir`, or Secrets with `--credentials-from-kubernetes`) and kept current by
  gateway_credentials.py (a rotated Secret serves the next handshake; a deleted one refuses
  handshakes of the servers using it). Missing or unreadable material refuses the config
  version, naming resource and field: a gateway never serves HTTPS without it.
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

from remora.config.names import wildcard_covers

VERSIONS = {"TLSV1_0": ssl.TLSVersion.TLSv1, "TLSV1_1": ssl.TLSVersion.TLSv1_1,
            "TLSV1_2": ssl.TLSVersion.TLSv1_2, "TLSV1_3": ssl.TLSVersion.TLSv1_3}
ALPN = ["h2", "http/1.1"]
MESH = "mesh"     # a server choice meaning the worker's mesh mTLS context (ISTIO_MUTUAL)
REFUSED = "refused"   # a server whose credentialName no longer gives a certificate (deleted Secret)


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


def _files(tls, path: str) -> tuple[str, str, str | None]:
    """(certificate, key, CA or None) files of a server without credentialName, checked to exist."""
    mutual = tls.mode == "MUTUAL"
    for field, value in (("serverCertificate", tls.server_certificate), ("privateKey", tls.private_key),
                         ("caCertificates", tls.ca_certificates if mutual else None)):
        if value is not None and not os.path.isfile(value):
            raise GatewayTlsError(f"{path}.{field}", f"{value}: no such file")
    return tls.server_certificate, tls.private_key, tls.ca_certificates if mutual else None


def apply_settings(context: ssl.SSLContext, settings: tuple, path: str) -> None:
    """The per-port settings (`PortTls.key`) onto a context."""
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


def server_context(tls, credentials, path: str):
    """The TLS context of one server (its certificate, and its client CA when MUTUAL): a
    CredentialRef resolved per handshake for credentialName (`credentials`: the worker's
    gateway_credentials.CredentialContexts, None when the gateway has no source), else an
    SSLContext from the file fields."""
    if tls.credential_name:
        if credentials is None:
            raise GatewayTlsError(f"{path}.credentialName", f"credentialName {tls.credential_name}: this "
                                  "gateway has no --credentials-dir or --credentials-from-kubernetes to read it from")
        return credentials.build(tls.credential_name, _settings(tls), tls.mode == "MUTUAL", path)
    cert, key, ca = _files(tls, path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    apply_settings(context, _settings(tls), path)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise GatewayTlsError(f"{path}.serverCertificate",
                              f"cannot use certificate {cert} with key {key}: {error}") from None
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as error:
            raise GatewayTlsError(f"{path}.caCertificates", f"cannot use CA file {ca}: {error}") from None
    return context


class PortTls:
    """The HTTPS servers of one gateway port: a context per server, picked by SNI."""

    def __init__(self, servers: list[tuple[list[str], object, str]], credentials=None) -> None:
        """`servers`: (host names without namespace, tls settings, field path) per server;
        `credentials`: where credentialName is read (see server_context)."""
        self.choices: list[tuple[str, object]] = []
        self.key: tuple | None = None
        for hosts, tls, path in servers:
            settings = _settings(tls)
            if self.key is None:
                self.key = settings
            elif settings != self.key:
                raise GatewayTlsError(f"{path}.mode", "servers on one port must agree on TLS mode, "
                                      "min/maxProtocolVersion and cipherSuites (Remora serves one set per "
                                      "port; put this server on its own port)")
            context = MESH if tls.mode == "ISTIO_MUTUAL" else server_context(tls, credentials, path)
            for host in hosts:
                self.choices.append((host.lower(), context))
        # Most specific first: exact names, then wildcards by length, then `*`.
        self.choices.sort(key=lambda item: (item[0] == "*", item[0].startswith("*."), -len(item[0])))

    def select(self, server_name: str | None) -> ssl.SSLContext | str | None:
        """The context for a ClientHello's SNI (None: no SNI), MESH for an ISTIO_MUTUAL
        server, None when no server covers it, REFUSED when its credential is gone."""
        name = (server_name or "").lower()
        for pattern, context in self.choices:
            if pattern == "*" or (name and wildcard_covers(pattern, name)):
                if isinstance(context, (ssl.SSLContext, str)):
                    return context
                return context.current() or REFUSED     # a credentialName: its context now
        return None


def front_context(key: tuple, select) -> ssl.SSLContext:
    """The listener's context: per-port settings, and SNI delegating to `select(name)` (which
    reads the current snapshot, so a pushed certificate serves the next handshake)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    apply_settings(context, key, "spec")

    def pick(ssl_object, server_name, _context):
        chosen = select(server_name)
        if chosen is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        if chosen is REFUSED:
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        ssl_object.context = chosen
        return None

    context.sni_callback = pick
    return context
