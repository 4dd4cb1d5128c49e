"""Policy and routing see the path the app sees: the bypass vectors of issue 13, end to end.

The app behind the sidecars routes like a real web framework (Go's ServeMux, Spring or
Werkzeug with a path cleaner): it percent-decodes the whole path, %2F included, reads `\\`
as `/`, resolves `.` and `..` and merges slashes, then serves `/admin` and `/admin/*` from
its admin handler. Before normalization, `DENY paths: ["/admin", "/admin/*"]` let every
vector below reach that handler.
"""
from __future__ import annotations

import asyncio
import json
import posixpath
import re
from urllib.parse import unquote_to_bytes

import pytest

from remora.certs.ca import CertificateAuthority
from remora.certs.spiffe import SpiffeId
from remora.proxy.security.tls import write_cert_dir
from tests.integration.client import RawClient
from tests.integration.proxy_process import ProxyProcess
from tests.integration.test_inbound_mtls import issue
from tests.integration.upstreams import LoopThread

pytestmark = pytest.mark.integration

PLAIN_VECTORS = ["/admin", "/%61dmin", "/./admin", "/foo/../admin", "/%2e/admin", "/foo\\..\\admin",
                 "/admin/", "/admin/./x", "/%2E%2E/admin", "/public/%2e%2e/admin?q=1", "/ADMIN/../admin"]
# Escaped slashes: kept encoded at BASE and MERGE_SLASHES (Envoy's KEEP_UNCHANGED), so only
# an app that decodes %2F itself would read /admin; policy checks that reading too.
SLASH_VECTORS = ["/foo/..%2Fadmin", "/foo/..%2fadmin/x", "/foo/..%5Cadmin"]
VECTORS = PLAIN_VECTORS + SLASH_VECTORS
FRAGMENTS = ["/admin#frag", "/public#/../admin"]

DENY_ADMIN = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/admin", "/admin/*"]}
"""


def framework_route(target: bytes) -> tuple[str, bytes]:
    """Which handler a path-cleaning framework would run for this request target."""
    path = target.split(b"?", 1)[0]
    decoded = unquote_to_bytes(path).replace(b"\\", b"/")
    cleaned = posixpath.normpath(decoded.decode("latin-1"))
    cleaned = re.sub("/+", "/", "/" + cleaned.lstrip("/"))
    handler = "admin" if cleaned == "/admin" or cleaned.startswith("/admin/") else "public"
    return handler, path


class FrameworkApp(asyncio.Protocol):
    """A keep-alive HTTP/1.1 app: answers JSON with the raw target and the handler it chose."""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            target = head.split(b"\r\n", 1)[0].split(b" ")[1]
            handler, _ = framework_route(target)
            body = json.dumps({"handler": handler, "target": target.decode("latin-1")}).encode()
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(body), body))


class App(LoopThread):
    name = "framework app"

    async def _start(self) -> None:
        server = await self.loop.create_server(FrameworkApp, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self.server = server

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def app():
    a = App().start()
    yield a
    a.stop()


def outbound_mesh(app_port: int) -> str:
    """Service `web` with an admin subset: a VirtualService sends /admin prefixes to it."""
    return f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web}}
spec:
  hosts: [web]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {app_port}}}, labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web}}
spec:
  hosts: [web]
  http:
  - match: [{{uri: {{prefix: /admin}}}}]
    fault: {{abort: {{httpStatus: 418, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: web}}}}]
  - route: [{{destination: {{host: web}}}}]
"""


def send(port: int, target: str, version: str = "HTTP/1.1", tls=None):
    c = RawClient(port, tls=tls)
    try:
        c.send(f"GET {target} {version}\r\nHost: web\r\n\r\n".encode("latin-1"))
        return c.read_response()
    finally:
        c.close()


@pytest.fixture(scope="module")
def outbound(app):
    p = ProxyProcess(outbound_mesh(app.port)).wait_ready()
    yield p
    assert p.stop() == 0, p.stderr()


@pytest.mark.parametrize("target", PLAIN_VECTORS)
def test_outbound_routes_on_the_normalized_path(outbound, target):
    """A route matching prefix /admin (here: abort 418) catches every spelling of /admin."""
    assert send(outbound.outbound_port, target).status == 418


@pytest.mark.parametrize("target", SLASH_VECTORS)
def test_outbound_keeps_escaped_slashes_at_base(outbound, target):
    """At BASE %2F / %5C are forwarded encoded (upper-cased), as Envoy's KEEP_UNCHANGED does."""
    resp = send(outbound.outbound_port, target)
    assert resp.status == 200
    forwarded = resp.json()["target"]
    assert "%2F" in forwarded or "%5C" in forwarded, forwarded


def test_outbound_forwards_the_normalized_path(outbound):
    """The app receives the path policy and routing saw, query untouched; %2F stays encoded at BASE."""
    for raw, seen in (("/x/%61b/./c/../d?q=%2e%2e/../", "/x/ab/d?q=%2e%2e/../"),
                      ("/foo/..%2fbar", "/foo/..%2Fbar"), ("/a\\b", "/a/b"), ("/a//b", "/a//b")):
        resp = send(outbound.outbound_port, raw)
        assert resp.status == 200 and resp.json()["target"] == seen, (raw, resp.status, resp.body)


@pytest.mark.parametrize("target", FRAGMENTS)
def test_fragment_in_request_target_is_400(outbound, target):
    """A `#` in the request target is refused with 400 (as Envoy), never forwarded."""
    assert send(outbound.outbound_port, target).status == 400


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/2.1"])
def test_request_line_other_than_http1_is_refused(outbound, version):
    """`GET / HTTP/2.0` is answered 505 (or 400 where the parser refuses it), never forwarded as HTTP/1.1."""
    resp = send(outbound.outbound_port, "/public", version)
    assert resp.status in (400, 505), resp.status


def test_escaped_nul_is_400(outbound):
    """%00 in the path is a bad request at the default level."""
    assert send(outbound.outbound_port, "/admin%00").status == 400


def test_merge_slashes_level_from_the_flag(app):
    """--path-normalization DECODE_AND_MERGE_SLASHES forwards %2F decoded and slashes merged."""
    p = ProxyProcess(outbound_mesh(app.port), "--path-normalization", "DECODE_AND_MERGE_SLASHES").wait_ready()
    try:
        resp = send(p.outbound_port, "/a//b%2fc/%2e%2e/d")
        assert resp.status == 200 and resp.json()["target"] == "/a/b/d"
        assert send(p.outbound_port, "/x/..%2Fadmin").status == 418
        dump = json.loads(p.admin_get("/config_dump"))
        assert {l["path_normalization"] for l in dump["listeners"]} == {"DECODE_AND_MERGE_SLASHES"}
    finally:
        assert p.stop() == 0, p.stderr()


class InboundMesh:
    """Sidecar `web` (namespace shop) with STRICT mTLS and DENY /admin, fed from a file."""

    def __init__(self, tmp, app_port: int, level: str) -> None:
        td = "cluster.local"
        self.ca = CertificateAuthority.load_or_create(tmp / "ca", td)
        bundle = self.ca.trust_bundle()
        cert_dir = write_cert_dir(tmp / "certs", issue(self.ca, SpiffeId(td, "shop", "web")), bundle)
        self.client_tls = issue(self.ca, SpiffeId(td, "shop", "caller")).to_ssl_context(False, bundle)
        self.sidecar = ProxyProcess(
            DENY_ADMIN, "--service", "web", "--namespace", "shop", "--service-account", "web",
            "--labels", "app=web", "--cert-dir", str(cert_dir), "--path-normalization", level,
            inbound_app_port=app_port).wait_ready()

    def get(self, target: str):
        return send(self.sidecar.inbound_port, target, tls=self.client_tls)


@pytest.fixture(scope="module", params=["BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"])
def inbound(request, app, tmp_path_factory):
    mesh = InboundMesh(tmp_path_factory.mktemp("pathnorm"), app.port, request.param)
    yield mesh
    assert mesh.sidecar.stop() == 0, mesh.sidecar.stderr()


def test_inbound_strict_deny_blocks_every_vector(inbound):
    """Over mTLS with STRICT + DENY /admin*, no spelling of /admin reaches the app's admin handler."""
    reached = {}
    for target in VECTORS:
        resp = inbound.get(target)
        if resp.status != 403:
            reached[target] = (resp.status, resp.body[:120])
    assert not reached, reached
    for target in FRAGMENTS:
        assert inbound.get(target).status == 400


def test_inbound_public_paths_still_served(inbound):
    """Requests the policy allows reach the app, normalized; lookalikes of /admin are not denied."""
    for target in ("/public", "/public/./x", "/administrator", "/.../admin", "/0x2e0x2e/admin"):
        resp = inbound.get(target)
        assert resp.status == 200, (target, resp.status, resp.body)
        assert resp.json()["handler"] == "public"
    stats = inbound.sidecar.admin_get("/stats")
    assert re.search(r"http\.inbound\.rbac\.denied: [1-9]", stats), stats


def test_framework_router_really_routes_vectors_to_admin():
    """Guard on the test app itself: without normalization each vector would hit its admin handler."""
    for target in VECTORS:
        assert framework_route(target.encode())[0] == "admin", target
