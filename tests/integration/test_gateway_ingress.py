"""`remora gateway` as istio-ingressgateway, driven by the istio.io ingress tasks' YAML.

Fixtures (tests/fixtures/istio-samples/gateway/, each naming the sample it mirrors) are
loaded as written, with ServiceEntries standing in for the registry. Traffic goes over real
sockets: a client -> the gateway -> (mTLS with the gateway's own identity) -> a sidecar in
front of the app, or straight to an app outside the mesh.
"""
from __future__ import annotations

import json
import shutil
import ssl
import tempfile
from pathlib import Path

import pytest

from remora.certs.ca import CertificateAuthority
from remora.certs.spiffe import SpiffeId
from remora.proxy.security.tls import write_cert_dir
from tests.integration.client import RawClient
from tests.integration.proxy_process import ProxyProcess
from tests.integration.test_inbound_mtls import issue
from tests.integration.tls_origin_servers import TestPki

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "istio-samples" / "gateway"
GATEWAY_PRINCIPAL = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"


def only_from_the_gateway(app: str) -> str:
    """STRICT mTLS in default, and `app` open to the ingress gateway's principal alone."""
    return f"""apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: default}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {app}-from-ingress, namespace: default}}
spec:
  selector: {{matchLabels: {{app: {app}}}}}
  rules:
  - from: [{{source: {{principals: ["{GATEWAY_PRINCIPAL}"]}}}}]
"""


def service(name: str, port: int, endpoint_port: int, mesh: bool = False) -> str:
    """A ServiceEntry for `name`.default.svc.cluster.local (what the registry would hold)."""
    labels = "{app: %s, security.istio.io/tlsMode: istio}" % name if mesh else "{app: %s}" % name
    return f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {endpoint_port}}}, labels: {labels}}}]
"""


def get(port: int, path: str, host: str, tls: ssl.SSLContext | None = None):
    client = RawClient(port, tls=tls)
    try:
        client.send(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        return client.read_response()
    finally:
        client.close()


class Bookinfo:
    """The bookinfo and httpbin ingress tasks on one gateway: productpage behind a STRICT
    sidecar that allows only the ingress gateway's principal; httpbin outside the mesh."""

    def __init__(self, upstreams) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="remora-gw-"))
        self.procs: list[ProxyProcess] = []
        try:
            ca = CertificateAuthority.load_or_create(self.tmp / "ca", "cluster.local")
            bundle = ca.trust_bundle()
            gw_certs = write_cert_dir(self.tmp / "gw", issue(ca, SpiffeId(
                "cluster.local", "istio-system", "istio-ingressgateway-service-account")), bundle)
            pp_certs = write_cert_dir(self.tmp / "pp", issue(ca, SpiffeId(
                "cluster.local", "default", "bookinfo-productpage")), bundle)
            backend_mesh = only_from_the_gateway("productpage")
            self.productpage = self._start(ProxyProcess(
                backend_mesh, "--labels", "app=productpage", "--service", "productpage",
                "--service-account", "bookinfo-productpage", "--cert-dir", str(pp_certs),
                inbound_app_port=upstreams.ports["v1"]))
            mesh = "\n---\n".join([
                service("productpage", 9080, self.productpage.inbound_port, mesh=True),
                service("httpbin", 8000, upstreams.ports["echo"]),
                (SAMPLES / "bookinfo-gateway.yaml").read_text(),
                (SAMPLES / "httpbin-gateway.yaml").read_text()])
            self.gateway = self._start(ProxyProcess(mesh, "--cert-dir", str(gw_certs), gateway_ports=(80, 8080)))
            for proc in self.procs:
                proc.wait_ready()
        except BaseException:
            self.stop()
            raise

    def _start(self, proc: ProxyProcess) -> ProxyProcess:
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def bookinfo(upstreams):
    mesh = Bookinfo(upstreams)
    yield mesh
    mesh.stop()


def test_bookinfo_gateway_reaches_productpage_over_mtls_as_the_ingress_gateway(bookinfo):
    """/productpage through the gateway reaches the app; the hop is mTLS and the backend's
    AuthorizationPolicy (only the ingress gateway's principal) lets it in."""
    resp = get(bookinfo.gateway.ports[8080], "/productpage", "bookinfo.example.com")
    assert resp.status == 200, resp.body
    echo = resp.json()
    assert echo["path"] == "/productpage"
    assert echo["headers"]["x-forwarded-client-cert"].endswith(f";URI=spiffe://{GATEWAY_PRINCIPAL}")
    stats = bookinfo.gateway.admin_get("/stats")
    assert "cluster.outbound|9080||productpage.default.svc.cluster.local.ssl.handshake: 0" not in stats


def test_paths_no_route_matches_are_404_nr(bookinfo):
    """A path the VirtualService does not route is 404 with flag NR, as Envoy answers."""
    assert get(bookinfo.gateway.ports[8080], "/reviews", "bookinfo.example.com").status == 404
    assert '"GET /reviews HTTP/1.1" 404 NR' in bookinfo.gateway.access_log()


def test_httpbin_gateway_routes_its_host_only(bookinfo):
    """Port 80 serves httpbin.example.com (/status, /delay); another host or path is 404."""
    port = bookinfo.gateway.ports[80]
    assert get(port, "/status/418", "httpbin.example.com").status == 418
    assert get(port, "/status/200", "httpbin.example.com:80").status == 200    # the Host's port is ignored
    assert get(port, "/headers", "httpbin.example.com").status == 404
    assert get(port, "/status/200", "other.example.com").status == 404


def test_gateway_reports_istio_metrics_as_source(bookinfo):
    """Istio's standard metrics from the gateway: reporter source, the gateway as source workload."""
    get(bookinfo.gateway.ports[80], "/status/200", "httpbin.example.com")
    metrics = bookinfo.gateway.admin_get("/stats/prometheus")
    lines = [line for line in metrics.splitlines() if line.startswith("istio_requests_total{")]
    assert any('reporter="source"' in line and 'source_workload="istio-ingressgateway"' in line
               and 'destination_service="httpbin.default.svc.cluster.local"' in line for line in lines), lines


def test_config_dump_shows_ports_and_bound_virtual_services(bookinfo):
    """/config_dump names each gateway port, its protocol and the VirtualServices bound per host."""
    dump = json.loads(bookinfo.gateway.admin_get("/config_dump"))["gateway"]
    ports = {p["port"]: p for p in dump["ports"]}
    assert ports[8080]["virtual_hosts"] == {"*": ["default/bookinfo"]}
    assert ports[80]["virtual_hosts"] == {"httpbin.example.com": ["default/httpbin"]}


class SecureIngress:
    """The secure-ingress task: credentials as mounted Secrets under --credentials-dir."""

    def __init__(self, upstreams, fixture: str, mutual: bool = False) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="remora-gw-tls-"))
        try:
            self.pki = TestPki(str(self.tmp))
            self.ca = self.pki.ca("example.com")
            credentials = self.tmp / "credentials"
            for host in ("httpbin", "helloworld"):
                cert, key = self.pki.leaf("example.com", f"{host}.example.com", dns=[f"{host}.example.com"])
                target = credentials / f"{host}-credential"
                target.mkdir(parents=True)
                shutil.copy(cert, target / "tls.crt")
                shutil.copy(key, target / "tls.key")
                if mutual:
                    shutil.copy(self.ca, target / "ca.crt")
            self.client_cert = self.pki.leaf("example.com", "client.example.com", client=True)
            mesh = "\n---\n".join([service("httpbin", 8000, upstreams.ports["echo"]),
                                   service("helloworld", 5000, upstreams.ports["v2"]),
                                   (SAMPLES / fixture).read_text()])
            self.gateway = ProxyProcess(mesh, "--credentials-dir", str(credentials), gateway_ports=(443,))
            self.gateway.wait_ready()
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    def context(self, client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca)
        if client_cert:
            context.load_cert_chain(*self.client_cert)
        return context

    def get(self, host: str, path: str, context: ssl.SSLContext):
        port = self.gateway.ports[443]

        class ForHost:    # RawClient wraps without a server name: give it this host's SNI
            def wrap_socket(self, sock):
                return context.wrap_socket(sock, server_hostname=host)
        return get(port, path, host, tls=ForHost())

    def stop(self) -> None:
        self.gateway.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def secure_hosts(upstreams):
    ingress = SecureIngress(upstreams, "secure-ingress-hosts.yaml")
    yield ingress
    ingress.stop()


def test_simple_tls_serves_each_host_with_its_own_certificate(secure_hosts):
    """Two SIMPLE servers on 443: SNI picks each host's credential (the client verifies the
    name against it), and each host routes to its own service."""
    context = secure_hosts.context()
    assert secure_hosts.get("httpbin.example.com", "/status/418", context).status == 418
    resp = secure_hosts.get("helloworld.example.com", "/hello", context)
    assert resp.status == 200 and resp.json()["server"] == "v2"
    assert secure_hosts.get("helloworld.example.com", "/status/418", context).status == 404


def test_simple_tls_refuses_a_name_no_server_covers(secure_hosts):
    """An SNI no HTTPS server lists fails the handshake (Envoy: no filter chain matches)."""
    with pytest.raises(ssl.SSLError):
        secure_hosts.get("unknown.example.com", "/status/200", ssl._create_unverified_context())


def test_https_requests_carry_https_as_forwarded_proto(secure_hosts):
    """Behind a TLS server the app is told the scheme was https, whatever the client claimed."""
    port = secure_hosts.gateway.ports[443]
    context = secure_hosts.context()

    class ForHost:
        def wrap_socket(self, sock):
            return context.wrap_socket(sock, server_hostname="helloworld.example.com")
    client = RawClient(port, tls=ForHost())
    try:
        client.send(b"GET /hello HTTP/1.1\r\nHost: helloworld.example.com\r\nx-forwarded-proto: http\r\n\r\n")
        assert client.read_response().json()["headers"]["x-forwarded-proto"] == "https"
    finally:
        client.close()


@pytest.fixture(scope="module")
def secure_mutual(upstreams):
    ingress = SecureIngress(upstreams, "secure-ingress-mutual.yaml", mutual=True)
    yield ingress
    ingress.stop()


def test_mutual_tls_requires_a_client_certificate(secure_mutual):
    """MUTUAL: no client certificate, no request; a certificate from the credential's CA gets through."""
    try:   # TLS 1.3: the client learns of the refusal on its first read (an alert, or the close)
        status = secure_mutual.get("httpbin.example.com", "/status/418", secure_mutual.context()).status
    except (ssl.SSLError, OSError):
        status = 0
    assert status == 0     # no response at all (RawClient reads status 0 at end of stream)
    resp = secure_mutual.get("httpbin.example.com", "/status/418", secure_mutual.context(client_cert=True))
    assert resp.status == 418


LOCAL_ANSWERS = """apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: blog-gateway, namespace: blog}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [blog.example.com]
    tls: {httpsRedirect: true}
  - port: {number: 8080, name: http-api, protocol: HTTP}
    hosts: ["blog/api.example.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: blog}
spec:
  hosts: [api.example.com]
  gateways: [blog-gateway]
  http:
  - match: [{uri: {prefix: /v1/}}]
    redirect: {uri: /v2/, redirectCode: 308}
  - match: [{uri: {exact: /healthz}}]
    directResponse: {status: 200, body: {string: "ok"}}
"""


def test_https_redirect_redirect_and_direct_response_are_answered_by_the_gateway():
    """httpsRedirect (301 to https), a VirtualService redirect (308) and a directResponse,
    all answered at the edge with nothing upstream, and logged without a response flag."""
    gateway = ProxyProcess(LOCAL_ANSWERS, gateway_ports=(80, 8080)).wait_ready()
    try:
        resp = get(gateway.ports[80], "/posts?page=2", "blog.example.com")
        assert resp.status == 301 and resp.headers["location"] == "https://blog.example.com/posts?page=2"
        resp = get(gateway.ports[8080], "/v1/posts", "api.example.com")
        assert resp.status == 308 and resp.headers["location"] == "http://api.example.com/v2/"
        resp = get(gateway.ports[8080], "/healthz", "api.example.com")
        assert (resp.status, resp.body) == (200, b"ok")
        log = gateway.access_log()
        assert '"GET /healthz HTTP/1.1" 200 - ' in log and '"GET /v1/posts HTTP/1.1" 308 - ' in log
    finally:
        gateway.stop()


def test_grpc_through_a_grpc_gateway_server():
    """A GRPC server on the gateway: a gRPC client (h2c) reaches a gRPC app routed by the
    VirtualService, unary and server streaming, trailers and status included."""
    import grpc

    from tests.integration.grpc_apps import EchoServer, channel, method
    with EchoServer() as app:
        mesh = f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo.default.svc.cluster.local]
  ports: [{{number: 9000, name: grpc, protocol: GRPC}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{grpc: {app.port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: grpc-gateway}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8080, name: grpc, protocol: GRPC}}
    hosts: [echo.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo}}
spec:
  hosts: [echo.example.com]
  gateways: [grpc-gateway]
  http: [{{route: [{{destination: {{host: echo, port: {{number: 9000}}}}}}]}}]
"""
        gateway = ProxyProcess(mesh, gateway_ports=(8080,)).wait_ready()
        try:
            with channel(gateway.ports[8080], authority="echo.example.com") as ch:
                assert method(ch, "unary_unary", "Unary")(b"hello", timeout=10) == b"hello"
                assert len(list(method(ch, "unary_stream", "ServerStream")(b"50", timeout=10))) == 50
                with pytest.raises(grpc.RpcError) as caught:
                    method(ch, "unary_unary", "Unary")(b"fail:UNAVAILABLE", timeout=10)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert '"POST /test.Echo/Unary HTTP/2" 200' in gateway.access_log()
        finally:
            gateway.stop()
