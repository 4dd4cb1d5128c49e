"""Servers outside the mesh for TLS origination tests: HTTPS on loopback with a test PKI.

`TestPki` makes CAs and leaf certificates with `cryptography` and writes them as PEM files;
`TlsServers` runs named HTTPS servers (aiohttp) that answer JSON with what the handshake
showed: the SNI the client sent, the ALPN protocol, and the client certificate's common
name (None without one). A server built with `client_ca` requires a client certificate.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import ssl

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.integration.mtls_peers import HttpsServers


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class TestPki:
    """CAs and certificates written under `directory` (the caller removes it)."""

    __test__ = False   # not a pytest class

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._cas: dict[str, tuple] = {}

    def ca(self, name: str) -> str:
        """Make a CA; returns the path of its certificate (PEM)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                               critical=True)
                .sign(key, hashes.SHA256()))
        self._cas[name] = (cert, key)
        return self._write(f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM))

    def leaf(self, ca: str, name: str, dns=(), uris=(), ips=(), client: bool = False) -> tuple[str, str]:
        """A certificate signed by CA `ca`; returns (certificate path, key path)."""
        ca_cert, ca_key = self._cas[ca]
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        sans = ([x509.DNSName(d) for d in dns] + [x509.UniformResourceIdentifier(u) for u in uris]
                + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips])
        builder = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca_cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        cert_path = self._write(f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM))
        key_path = self._write(f"{name}.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return cert_path, key_path

    def _write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path


def server_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """A server context presenting (cert, key); with client_ca, a client certificate is required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2", "http/1.1"])
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=client_ca)
    return context


def _app(name: str, snis: list, seen: list) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        ssl_object = request.transport.get_extra_info("ssl_object")
        peer = ssl_object.getpeercert() if ssl_object is not None else None
        subject = dict(item for rdn in peer.get("subject", ()) for item in rdn) if peer else {}
        seen.append(request.path)
        return web.json_response({
            "server": name, "sni": snis[-1] if snis else None,
            "alpn": ssl_object.selected_alpn_protocol() if ssl_object is not None else None,
            "client_cn": subject.get("commonName"), "host": request.headers.get("Host"),
            "path": request.path,
        })

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


class TlsServers(HttpsServers):
    """Named HTTPS servers on loopback: `contexts={name: SSLContext}`; ports in `ports`,
    the SNIs each saw in `snis`, the paths each answered in `seen`."""

    name = "TLS origination test servers"

    def __init__(self, contexts: dict[str, ssl.SSLContext]) -> None:
        super().__init__()
        self.contexts = contexts
        self.seen: dict[str, list] = {}

    async def _start(self) -> None:
        for name, context in self.contexts.items():
            seen = self.seen[name] = []
            await self.serve(name, context, lambda snis, name=name, seen=seen: _app(name, snis, seen))
