"""Every AuthorizationPolicy example in Istio's documentation that uses the fields Remora supports.

One row per documented example: the YAML as istio.io shows it (metadata kept, so the
namespace and selector scoping is exercised too), the workload it is evaluated for, and
requests with the outcome the documentation states. Sources: the AuthorizationPolicy
reference (security/authorization-policy), the security concept page (authorization
section), and the tasks authz-http (Bookinfo), authz-deny (explicit deny), authz-tcp and
authz-ingress (ipBlocks). Examples that need JWT fields (requestPrincipals,
request.auth.claims), CUSTOM or remoteIpBlocks are left out: Remora rejects those fields.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass

import pytest

from remora.config.loader import load_mesh_text
from remora.proxy.security.authz import Authorizer, AuthzRequest

SLEEP = "cluster.local/ns/default/sa/sleep"
PRODUCTPAGE_SA = "cluster.local/ns/default/sa/bookinfo-productpage"
REVIEWS_SA = "cluster.local/ns/default/sa/bookinfo-reviews"
RATINGS_V2_SA = "cluster.local/ns/default/sa/bookinfo-ratings-v2"


def req(principal: str | None = SLEEP, method: str = "GET", path: str = "/", ip: str = "10.0.0.1",
        port: int = 8000, host: str = "httpbin", headers: dict | None = None) -> AuthzRequest:
    """A request; `principal` None is a plaintext caller (no identity, no namespace)."""
    namespace = principal.split("/")[2] if principal else None
    return AuthzRequest(principal, namespace, ip, host, method, path, port, headers or {})


@dataclass
class Example:
    name: str
    yaml: str
    namespace: str
    labels: dict
    allowed: list        # requests the documentation says pass
    denied: list         # requests it says get 403

    def authorizer(self) -> Authorizer:
        config = load_mesh_text(textwrap.dedent(self.yaml))
        return Authorizer(config.authorization_policies, self.namespace, self.labels)


def ap(name: str, namespace: str, spec: str, api: str = "security.istio.io/v1") -> str:
    return (f"apiVersion: {api}\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n"
            f"  namespace: {namespace}\nspec:\n{textwrap.indent(textwrap.dedent(spec), '  ')}---\n")


HTTPBIN = {"app": "httpbin", "version": "v1"}
DENY_METHOD_GET = ap("deny-method-get", "foo", """
    selector:
      matchLabels:
        app: httpbin
    action: DENY
    rules:
    - to:
      - operation:
          methods: ["GET"]
      when:
      - key: request.headers[x-token]
        notValues: ["admin"]
    """)
BOOKINFO_DENY_ALL = ap("allow-nothing", "default", "{}\n")

EXAMPLES = [
    # ---- reference: security/authorization-policy ------------------------------------------
    Example("reference: deny POST from the dev namespace", ap("httpbin", "foo", """
        action: DENY
        rules:
        - from:
          - source:
              namespaces: ["dev"]
          to:
          - operation:
              methods: ["POST"]
        """), "foo", HTTPBIN,
        allowed=[req("cluster.local/ns/dev/sa/x", method="GET"), req(method="POST"), req(None, method="POST")],
        denied=[req("cluster.local/ns/dev/sa/x", method="POST")]),
    Example("reference: allow-nothing (ALLOW without rules)", ap("allow-nothing", "foo", """
        action: ALLOW
        """), "foo", HTTPBIN, allowed=[], denied=[req(), req(None, method="POST")]),
    Example("reference: deny-all (DENY with an empty rule)", ap("deny-all", "foo", """
        action: DENY
        rules:
        - {}
        """), "foo", HTTPBIN, allowed=[], denied=[req(), req(None), req(method="DELETE", path="/x")]),
    Example("reference: allow-all (ALLOW with an empty rule)", ap("allow-all", "foo", """
        action: ALLOW
        rules:
        - {}
        """), "foo", HTTPBIN, allowed=[req(), req(None, method="DELETE")], denied=[]),
    Example("reference: allow-read, selector app=products, GET and HEAD only", ap("allow-read", "default", """
        selector:
          matchLabels:
            app: products
        action: ALLOW
        rules:
        - to:
          - operation:
              methods: ["GET", "HEAD"]
        """), "default", {"app": "products"},
        allowed=[req(method="GET"), req(None, method="HEAD")], denied=[req(method="POST")]),
    Example("reference: allow-read does not apply to another app", ap("allow-read", "default", """
        selector:
          matchLabels:
            app: products
        action: ALLOW
        rules:
        - to:
          - operation:
              methods: ["GET", "HEAD"]
        """), "default", {"app": "reviews"}, allowed=[req(method="POST")], denied=[]),
    Example("reference: AUDIT GET /user/profile/* never changes the outcome", ap("audit", "ns1", """
        selector:
          matchLabels:
            app: myapi
        action: AUDIT
        rules:
        - to:
          - operation:
              methods: ["GET"]
              paths: ["/user/profile/*"]
        """), "ns1", {"app": "myapi"}, allowed=[req(path="/user/profile/me"), req(method="POST")], denied=[]),
    Example("reference (condition keys table): source.ip, source.namespace, destination.port", ap("conditions", "foo", """
        rules:
        - when:
          - key: source.ip
            values: ["10.1.2.3", "10.2.0.0/16"]
          - key: source.namespace
            values: ["default"]
          - key: destination.port
            values: ["80", "443"]
        """), "foo", HTTPBIN,
        allowed=[req(ip="10.2.7.7", port=443), req(ip="10.1.2.3", port=80)],
        denied=[req(ip="10.3.0.1", port=80), req(ip="10.1.2.3", port=8080), req(None, ip="10.1.2.3", port=80)]),
    Example("reference (condition keys table): source.principal, request.headers[User-Agent]", ap("ua", "foo", """
        rules:
        - when:
          - key: source.principal
            values: ["cluster.local/ns/default/sa/productpage"]
          - key: request.headers[User-Agent]
            values: ["Mozilla/*"]
        """), "foo", HTTPBIN,
        allowed=[req("cluster.local/ns/default/sa/productpage", headers={"user-agent": "Mozilla/5.0"})],
        denied=[req("cluster.local/ns/default/sa/productpage", headers={"user-agent": "curl/8"}),
                req(headers={"user-agent": "Mozilla/5.0"})]),
    # ---- concepts: security (authorization) -------------------------------------------------
    Example("concepts: value matching, paths exact/prefix/suffix", ap("tester", "default", """
        selector:
          matchLabels:
            app: products
        rules:
        - to:
          - operation:
              paths: ["/test/*", "*/info"]
        """), "default", {"app": "products"},
        allowed=[req(path="/test/a/b"), req(path="/api/info"), req(path="/test/x?q=1")],
        denied=[req(path="/testing"), req(path="/info/x")]),
    Example("concepts: allow-nothing for the admin namespace (spec: {})", ap("allow-nothing", "admin", "{}\n"),
            "admin", {"app": "any"}, allowed=[], denied=[req(), req(None)]),
    Example("concepts: any authenticated (mTLS) identity may GET/POST", ap("httpbin", "foo", """
        action: ALLOW
        rules:
        - from:
          - source:
              principals: ["*"]
          to:
          - operation:
              methods: ["GET", "POST"]
        """), "foo", HTTPBIN,
        allowed=[req(method="POST"), req("cluster.local/ns/other/sa/any")],
        denied=[req(None), req(method="DELETE")]),
    Example("concepts: unauthenticated callers too (no from)", ap("httpbin", "foo", """
        action: ALLOW
        rules:
        - to:
          - operation:
              methods: ["GET", "POST"]
        """), "foo", HTTPBIN, allowed=[req(None), req(method="POST")], denied=[req(None, method="PUT")]),
    Example("concepts: custom condition request.headers[version]", ap("httpbin", "foo", """
        action: ALLOW
        rules:
        - from:
          - source:
              principals: ["cluster.local/ns/default/sa/sleep"]
          to:
          - operation:
              methods: ["GET"]
          when:
          - key: request.headers[version]
            values: ["v1", "v2"]
        """), "foo", HTTPBIN,
        allowed=[req(headers={"version": "v2"})],
        denied=[req(headers={"version": "v3"}), req(), req(None, headers={"version": "v1"}),
                req(method="POST", headers={"version": "v1"})]),
    Example("concepts: exclusion, DENY unless the source namespace is foo", ap("httpbin-deny", "foo", """
        action: DENY
        rules:
        - from:
          - source:
              notNamespaces: ["foo"]
        """), "foo", HTTPBIN,
        allowed=[req("cluster.local/ns/foo/sa/a")], denied=[req("cluster.local/ns/bar/sa/a")]),
    Example("concepts (exclusion, adapted without its JWT part): notPaths", ap("not-admin", "foo", """
        rules:
        - to:
          - operation:
              methods: ["GET"]
              notPaths: ["/admin*"]
        """), "foo", HTTPBIN,
        allowed=[req(path="/status")], denied=[req(path="/admin"), req(path="/admin/users"), req(method="PUT")]),
    Example("concepts: root-namespace policy applies mesh-wide", ap("global-deny-delete", "istio-system", """
        action: DENY
        rules:
        - to:
          - operation:
              methods: ["DELETE"]
        """), "anywhere", {"app": "x"}, allowed=[req()], denied=[req(method="DELETE")]),
    Example("authz-tcp: ratings-v2 may reach mongodb port 27017", ap("mongodb-policy", "default", """
        selector:
          matchLabels:
            app: mongodb
        action: ALLOW
        rules:
        - from:
          - source:
              principals: ["cluster.local/ns/default/sa/bookinfo-ratings-v2"]
          to:
          - operation:
              ports: ["27017"]
        """), "default", {"app": "mongodb"},
        allowed=[req(RATINGS_V2_SA, port=27017)], denied=[req(RATINGS_V2_SA, port=27018), req(REVIEWS_SA, port=27017)]),
    # ---- task: authz-http (Bookinfo) ---------------------------------------------------------
    Example("authz-http: deny-all in default", BOOKINFO_DENY_ALL, "default", {"app": "productpage"},
            allowed=[], denied=[req(None), req(PRODUCTPAGE_SA)]),
    Example("authz-http: productpage-viewer allows GET from anyone", BOOKINFO_DENY_ALL + ap("productpage-viewer", "default", """
        selector:
          matchLabels:
            app: productpage
        action: ALLOW
        rules:
        - to:
          - operation:
              methods: ["GET"]
        """), "default", {"app": "productpage", "version": "v1"},
        allowed=[req(None, path="/productpage")], denied=[req(None, method="POST")]),
    Example("authz-http: details-viewer allows GET from productpage's service account", ap("details-viewer", "default", """
        selector:
          matchLabels:
            app: details
        action: ALLOW
        rules:
        - from:
          - source:
              principals: ["cluster.local/ns/default/sa/bookinfo-productpage"]
          to:
          - operation:
              methods: ["GET"]
        """), "default", {"app": "details"},
        allowed=[req(PRODUCTPAGE_SA, path="/details/0")],
        denied=[req(None), req(REVIEWS_SA), req(PRODUCTPAGE_SA, method="POST")]),
    Example("authz-http: ratings-viewer allows GET from reviews' service account", ap("ratings-viewer", "default", """
        selector:
          matchLabels:
            app: ratings
        action: ALLOW
        rules:
        - from:
          - source:
              principals: ["cluster.local/ns/default/sa/bookinfo-reviews"]
          to:
          - operation:
              methods: ["GET"]
        """), "default", {"app": "ratings"},
        allowed=[req(REVIEWS_SA, path="/ratings/0")], denied=[req(PRODUCTPAGE_SA), req(None)]),
    # ---- task: authz-deny (explicit deny) ------------------------------------------------------
    Example("authz-deny: deny-method-get denies GET, allows POST", ap("deny-method-get", "foo", """
        selector:
          matchLabels:
            app: httpbin
        action: DENY
        rules:
        - to:
          - operation:
              methods: ["GET"]
        """), "foo", HTTPBIN, allowed=[req(method="POST", path="/post")], denied=[req(path="/get")]),
    Example("authz-deny: GET denied unless x-token is admin", DENY_METHOD_GET, "foo", HTTPBIN,
            allowed=[req(path="/get", headers={"x-token": "admin"})],
            denied=[req(path="/get", headers={"x-token": "guest"})]),
    Example("authz-deny: with allow-path-ip, deny still wins and only /ip is allowed",
            DENY_METHOD_GET + ap("allow-path-ip", "foo", """
        selector:
          matchLabels:
            app: httpbin
        action: ALLOW
        rules:
        - to:
          - operation:
              paths: ["/ip"]
        """), "foo", HTTPBIN,
        allowed=[req(path="/ip", headers={"x-token": "admin"})],
        denied=[req(path="/ip", headers={"x-token": "guest"}), req(path="/get", headers={"x-token": "admin"})]),
    # ---- task: authz-ingress (ipBlocks) -------------------------------------------------------
    Example("authz-ingress: ALLOW only listed ipBlocks", ap("ingress-policy", "istio-system", """
        selector:
          matchLabels:
            app: istio-ingressgateway
        action: ALLOW
        rules:
        - from:
          - source:
              ipBlocks: ["1.2.3.4", "5.6.7.0/24"]
        """, api="security.istio.io/v1beta1"), "istio-system", {"app": "istio-ingressgateway"},
        allowed=[req(None, ip="1.2.3.4"), req(None, ip="5.6.7.200")], denied=[req(None, ip="1.2.3.5")]),
    Example("authz-ingress: DENY listed ipBlocks", ap("ingress-policy", "istio-system", """
        selector:
          matchLabels:
            app: istio-ingressgateway
        action: DENY
        rules:
        - from:
          - source:
              ipBlocks: ["1.2.3.4", "5.6.7.0/24"]
        """, api="security.istio.io/v1beta1"), "istio-system", {"app": "istio-ingressgateway"},
        allowed=[req(None, ip="9.9.9.9")], denied=[req(None, ip="1.2.3.4"), req(None, ip="5.6.7.1")]),
]


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_istio_documentation_example(example: Example) -> None:
    """Each documented example allows and denies exactly the requests Istio's documentation says."""
    authz = example.authorizer()
    for request in example.allowed:
        assert authz.check(request).allowed, f"{example.name}: should allow {request}"
    for request in example.denied:
        assert not authz.check(request).allowed, f"{example.name}: should deny {request}"
