"""Gateway resources: Istio's validation, VirtualService binding and the gateway's route tables."""
from __future__ import annotations

import pytest

from remora.config.gateways import host_intersection, resolve_gateway_name, server_hosts_for
from remora.config.loader import ConfigError, load_mesh_text
from remora.proxy.codec.message import RequestHead
from remora.proxy.router.gateway_routes import build_gateway_tables, gateway_ports
from remora.proxy.router.local_answer import RedirectAnswer
from remora.proxy.upstream.cluster import build_clusters
from remora.proxy.security.identity import WorkloadIdentity

SERVICE = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [httpbin.default.svc.cluster.local]
  ports: [{number: 8000, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
"""


def gateway(servers: str, name: str = "gw", namespace: str = "default",
            selector: str = "{istio: ingressgateway}") -> str:
    return f"""---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  selector: {selector}
  servers:
{servers}"""


HTTP_SERVER = """  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_mesh_text(text, "gw.yaml")
    return [f"{issue.field_path}: {issue.message}" for issue in caught.value.issues]


# Cases of Istio's validation tests for Gateway (pkg/config/validation, TestValidateGateway and
# TestValidateServer), as servers: (servers YAML, expected problem or None for valid).
CASES = [
    (HTTP_SERVER, None),
    ("""  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [ns1/foo.bar.com, "*/foo.bar.com", ./foo.bar.com, 1.1.1.1]
    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}
""", None),
    ("""  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [foo.bar.com]
    tls: {httpsRedirect: true}
""", None),
    ("", "gateway must have at least one server"),
    ("""  - port: {number: 80, name: http, protocol: HTTP}
    hosts: []
""", "server config must contain at least one host"),
    ("""  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [foo]
""", "short names (non FQDN) are not allowed"),
    ("""  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [foo.*.bar.com]
""", "partial wildcard"),
    ("""  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["~/foo.bar.com"]
""", "invalid namespace value '~' in gateway"),
    ("""  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 81, name: http, protocol: HTTP}
    hosts: ["*"]
""", "port names in servers must be unique: duplicate name http"),
    ("""  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
""", "server must have TLS settings for HTTPS/TLS protocols"),
    ("""  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}
""", "server cannot have TLS settings for plain text HTTP ports"),
    ("""  - port: {number: 80, name: http, protocol: FOO}
    hosts: ["*"]
""", "invalid protocol 'FOO'"),
    ("""  - port: {number: 80, protocol: HTTP}
    hosts: ["*"]
""", "port name must be set"),
    ("""  - port: {number: 80, name: http, protocol: HTTP, targetPort: 8080}
    hosts: ["*"]
""", "targetPort has no impact on Gateways"),
    ("""  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, privateKey: /k.pem}
""", "SIMPLE TLS requires a server certificate"),
    ("""  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem}
""", "MUTUAL TLS requires a client CA bundle"),
    ("""  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, credentialName: x, serverCertificate: /c.pem, privateKey: /k.pem}
""", "only one of credential_name, credential_names, server_certificate/private_key"),
    ("""  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: ISTIO_MUTUAL, credentialName: x}
""", "ISTIO_MUTUAL TLS cannot have associated credentialName"),
    ("""  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
    bind: not-an-ip
""", "not-an-ip is not a valid IP"),
]


@pytest.mark.parametrize(("servers", "expected"), CASES)
def test_gateway_validation_follows_istio(servers, expected):
    """Istio's valid Gateways load; its invalid ones are refused with Istio's message and the field."""
    text = SERVICE + gateway(servers)
    if expected is None:
        assert load_mesh_text(text).gateways
    else:
        assert any(expected in p for p in problems(text)), problems(text)


@pytest.mark.parametrize(("tls", "field"), [
    ("{mode: AUTO_PASSTHROUGH}", "mode"), ("{mode: OPTIONAL_MUTUAL, credentialName: x}", "mode"),
    ("{mode: MUTUAL, credentialName: x, subjectAltNames: [a]}", "subjectAltNames"),
])
def test_tls_features_remora_does_not_serve_are_refused_by_name(tls, field):
    """Fail closed: a valid Istio TLS setting Remora cannot enforce is refused as not supported."""
    servers = f"""  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["*"]
    tls: {tls}
"""
    found = problems(SERVICE + gateway(servers))
    assert any(f"tls.{field}" in p and "not supported by Remora" in p for p in found), found


def test_mongo_servers_are_refused_as_not_supported():
    """A MONGO server is valid Istio, not served by Remora: refused, by name."""
    servers = """  - port: {number: 27017, name: mongo, protocol: MONGO}
    hosts: ["*"]
"""
    assert any("not supported by Remora" in p for p in problems(SERVICE + gateway(servers)))


@pytest.mark.parametrize(("name", "namespace", "resolved"), [
    ("gw", "shop", "shop/gw"), ("./gw", "shop", "shop/gw"), ("infra/gw", "shop", "infra/gw"),
    ("gw.infra.svc.cluster.local", "shop", "infra/gw"), ("mesh", "shop", "mesh"),
])
def test_gateway_names_resolve_as_istio_does(name, namespace, resolved):
    """A VirtualService's `gateways` entry resolves to ns/name by Istio's rules."""
    assert resolve_gateway_name(name, namespace) == resolved


def test_server_host_namespaces_admit_only_their_virtual_services():
    """`ns/host` admits VirtualServices of ns; `./host` those of the Gateway's namespace; `*/` and bare hosts all."""
    hosts = ["shop/a.example.com", "./b.example.com", "*/c.example.com", "d.example.com"]
    assert server_hosts_for(hosts, "infra", "shop") == ["a.example.com", "c.example.com", "d.example.com"]
    assert server_hosts_for(hosts, "infra", "infra") == ["b.example.com", "c.example.com", "d.example.com"]


@pytest.mark.parametrize(("server", "vs", "expected"), [
    ("*", "a.example.com", "a.example.com"), ("*.example.com", "a.example.com", "a.example.com"),
    ("a.example.com", "*", "a.example.com"), ("a.example.com", "b.example.com", None),
    ("*.example.com", "example.com", None), ("*", "*", "*"),
])
def test_hosts_bind_under_the_more_specific_name(server, vs, expected):
    """A VirtualService host binds to a server host where they intersect (Istio's Intersection)."""
    assert host_intersection(server, vs) == expected


def tables(text: str, labels=None):
    config = load_mesh_text(text)
    identity = WorkloadIdentity(namespace="istio-system", labels=labels or {"istio": "ingressgateway"})
    ports, warnings = gateway_ports(config, identity.labels)
    build_gateway_tables(config, build_clusters(config, identity), ports, identity.labels, identity.namespace)
    return ports, warnings


def head(path: str, host: str) -> RequestHead:
    return RequestHead(b"GET", path.encode(), host.encode(), [])


def test_match_gateways_override_the_virtual_service_list():
    """Routes whose match entries name only `mesh` do not exist at the gateway (the egress task's shape)."""
    text = SERVICE + gateway(HTTP_SERVER) + """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: split, namespace: default}
spec:
  hosts: [httpbin.example.com]
  gateways: [mesh, gw]
  http:
  - match: [{gateways: [mesh], uri: {prefix: /mesh}}]
    route: [{destination: {host: httpbin}}]
  - match: [{gateways: [gw], uri: {prefix: /edge}}]
    route: [{destination: {host: httpbin}}]
"""
    ports, _ = tables(text)
    vhost = ports[80].table.lookup(b"httpbin.example.com:80")
    assert vhost.route(head("/edge", "httpbin.example.com")) is not None
    assert vhost.route(head("/mesh", "httpbin.example.com")) is None


def test_gateways_select_workloads_by_label():
    """A Gateway whose selector does not match the workload's labels gives it no port."""
    ports, _ = tables(SERVICE + gateway(HTTP_SERVER, selector="{istio: egressgateway}"))
    assert ports == {}


def test_https_redirect_answers_301_with_the_https_url():
    """tls.httpsRedirect: every request for the server's hosts is sent to https, even without a VirtualService."""
    servers = """  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [blog.example.com]
    tls: {httpsRedirect: true}
"""
    ports, _ = tables(SERVICE + gateway(servers))
    route, _ = ports[80].table.lookup(b"blog.example.com").route(head("/a?b=1", "blog.example.com"))
    status, body, extra = route.answer.reply(head("/a?b=1", "blog.example.com"))
    assert (status, extra) == (301, [(b"location", b"https://blog.example.com/a?b=1")])


def test_conflicting_protocols_on_one_port_skip_the_later_server():
    """Two Gateways put HTTP and HTTPS on one port: the later server is skipped and named (Istio's merge)."""
    https = """  - port: {number: 80, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}
"""
    ports, warnings = tables(SERVICE + gateway(HTTP_SERVER) + gateway(https, name="other"))
    assert ports[80].protocol == "HTTP" and len(ports[80].servers) == 1
    assert warnings and "Gateway/default/other" in warnings[0]


@pytest.mark.parametrize(("spec", "request_", "location"), [
    ({"uri": "/new"}, ("/old?q=1", "a.example.com"), b"http://a.example.com/new?q=1"),
    ({"authority": "b.example.com"}, ("/p", "a.example.com:8080"), b"http://b.example.com/p"),
    ({"scheme": "https"}, ("/p", "a.example.com:80"), b"https://a.example.com/p"),
    ({"scheme": "https"}, ("/p", "a.example.com:8080"), b"https://a.example.com:8080/p"),
    ({"port": 9443, "scheme": "https"}, ("/p", "a.example.com"), b"https://a.example.com:9443/p"),
])
def test_redirect_location(spec, request_, location):
    """A VirtualService redirect builds Location from the request and the spec, as Envoy does."""
    from remora.config.model import HTTPRedirect
    answer = RedirectAnswer(HTTPRedirect(**spec))
    assert answer.location(head(*request_)) == location


@pytest.mark.parametrize(("route", "message"), [
    ("{redirect: {uri: /x}, route: [{destination: {host: httpbin}}]}", "cannot contain both route and redirect"),
    ("{directResponse: {status: 700}}", "must be in the range 200 - 599"),
    ("{redirect: {uri: /x, redirectCode: 399}}", "399 is not a valid redirect code"),
    ("{redirect: {uri: /x}, directResponse: {status: 200}}", "both redirect and direct response"),
])
def test_redirect_and_direct_response_follow_istio_rules(route, message):
    """Istio's rules for redirect and directResponse refuse the config with the field named."""
    text = SERVICE + f"""---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: [httpbin]
  http: [{route}]
"""
    assert any(message in p for p in problems(text)), problems(text)


def test_tls_routes_at_sidecars_are_refused():
    """tls routes for `mesh` (sidecars) are not served: refused, naming the match entry."""
    text = SERVICE + """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: nginx, namespace: default}
spec:
  hosts: [nginx.example.com]
  tls:
  - match: [{port: 443, sniHosts: [nginx.example.com]}]
    route: [{destination: {host: httpbin}}]
"""
    assert any("spec.tls[0].match[0]" in p and "not supported by Remora" in p for p in problems(text))


def test_no_mode_on_an_https_server_is_passthrough():
    """`tls` without `mode` is PASSTHROUGH (Istio's default): the port passes TLS through."""
    servers = """  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [nginx.example.com]
    tls: {}
"""
    ports, _ = tables(SERVICE + gateway(servers))
    assert ports[443].protocol == "PASSTHROUGH"


def test_min_protocol_version_and_ciphers_reach_the_server_context(tmp_path):
    """minProtocolVersion TLSV1_3 refuses a TLS 1.2 client; cipherSuites no OpenSSL knows is refused by field."""
    import ssl
    from remora.config.model_gateway import ServerTLSSettings
    from remora.proxy.security.gateway_tls import GatewayTlsError, server_context
    from tests.integration.tls_origin_servers import TestPki
    pki = TestPki(str(tmp_path))
    ca = pki.ca("example.com")
    cert, key = pki.leaf("example.com", "a.example.com", dns=["a.example.com"])
    server = server_context(ServerTLSSettings(mode="SIMPLE", server_certificate=cert, private_key=key,
                                              min_protocol_version="TLSV1_3"), None, "spec.servers[0].tls")
    client = ssl.create_default_context(cafile=ca)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname="a.example.com")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    with pytest.raises(ssl.SSLError):
        for _ in range(4):
            for side, out, peer_in in ((c, c_out, s_in), (s, s_out, c_in)):
                try:
                    side.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                peer_in.write(out.read())
    with pytest.raises(GatewayTlsError) as caught:
        server_context(ServerTLSSettings(mode="SIMPLE", server_certificate=cert, private_key=key,
                                         cipher_suites=["NO-SUCH-CIPHER"]), None, "spec.servers[0].tls")
    assert caught.value.path == "spec.servers[0].tls.cipherSuites"
