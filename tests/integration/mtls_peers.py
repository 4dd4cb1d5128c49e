"""Stand-ins for a server sidecar's inbound mTLS: HTTP servers over mutual TLS presenting an SVID.

Each server requires a client certificate chaining to its trust bundle and answers JSON
with what the handshake showed: the client's SPIFFE ID and certificate serial, the ALPN
protocol chosen and the SNI the client sent. Certificates come from an in-process
CertificateAuthority (`issue`), written for sidecars with `write_cert_dir`.
"""
from __future__ import annotations

import asyncio

from aiohttp import web
from cryptography import x509

from remora.certs.ca import CertificateAuthority
from remora.certs.client import Svid, generate_key_and_csr, peer_spiffe_id
from remora.certs.spiffe import SpiffeId
from tests.integration.upstreams import LoopThread, free_port


def issue(ca: CertificateAuthority, namespace: str, service_account: str, ttl: float = 3600) -> Svid:
    """An SVID for spiffe://<ca trust domain>/ns/<namespace>/sa/<service_account>."""
    identity = SpiffeId(ca.trust_domain, namespace, service_account)
    key, csr = generate_key_and_csr(identity)
    issued = ca.sign_csr(csr, identity, ttl)
    return Svid.from_pems(issued.cert_pem, issued.chain_pems, key)


def _app(name: str, snis: list, close: bool) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        ssl_object = request.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        response = web.json_response({
            "server": name,
            "client_id": peer_spiffe_id(ssl_object),
            "client_serial": format(x509.load_der_x509_certificate(der).serial_number, "x") if der else None,
            "alpn": ssl_object.selected_alpn_protocol() if ssl_object is not None else None,
            "sni": snis[-1] if snis else None,
            "request_id": request.headers.get("x-request-id"),
        })
        if close:
            response.force_close()   # every request then needs a new connection (a new handshake)
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


class HttpsServers(LoopThread):
    """Named HTTPS servers on loopback: ports in `ports`, the SNIs each saw in `snis`;
    subclasses start theirs with `serve` and make their own apps."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: dict[str, int] = {}
        self.snis: dict[str, list] = {}
        self.runners: list[web.AppRunner] = []

    async def serve(self, name: str, context, make_app) -> None:
        """Serve `make_app(snis)` under `name` with TLS context `context` on a free port."""
        snis = self.snis[name] = []

        def remember(ssl_object, server_name, ctx):
            snis.append(server_name)
        context.sni_callback = remember
        runner = web.AppRunner(make_app(snis), access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
        self.ports[name] = port
        self.runners.append(runner)

    def stop(self) -> None:
        async def shutdown() -> None:
            for runner in self.runners:
                await runner.cleanup()
        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class MtlsServers(HttpsServers):
    """Named mTLS HTTP servers on loopback: `servers={name: (svid, bundle_pems)}`; ports in `ports`.
    Servers named in `close` close the connection after each response."""

    name = "mTLS test servers"

    def __init__(self, servers: dict[str, tuple[Svid, list[str]]], close: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.servers = servers
        self.close = close

    async def _start(self) -> None:
        for name, (svid, bundle) in self.servers.items():
            await self.serve(name, svid.to_ssl_context(True, bundle),
                             lambda snis, name=name: _app(name, snis, name in self.close))


def tls_service(name: str, port: int, service_account: str | None = None, labelled: bool = True,
                namespace: str = "default") -> str:
    """A MESH_INTERNAL ServiceEntry with one loopback endpoint, labelled for auto-mTLS."""
    labels = "{app: %s%s}" % (name, ", security.istio.io/tlsMode: istio" if labelled else "")
    account = f", serviceAccount: {service_account}" if service_account else ""
    return f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: [{name}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  location: MESH_INTERNAL
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {port}}}, labels: {labels}{account}}}
---
"""

