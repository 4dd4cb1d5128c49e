"""The AuthorizationPolicy evaluator: Istio's DENY/ALLOW/AUDIT semantics and every match field."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from remora.config.loader import load_mesh_text
from remora.proxy.security.authz import Authorizer, AuthzRequest, Decision

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "istio-examples"
LABELS = {"app": "httpbin", "version": "v1"}


def authorizer(yaml_text: str, namespace: str = "foo", labels: dict[str, str] = LABELS) -> Authorizer:
    config = load_mesh_text(textwrap.dedent(yaml_text))
    return Authorizer(config.authorization_policies, namespace, labels)


def policy(name: str, spec: str, namespace: str = "foo") -> str:
    body = textwrap.indent(textwrap.dedent(spec), "  ")
    return (f"---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{body}\n")


def request(**changes) -> AuthzRequest:
    values = dict(source_principal="cluster.local/ns/foo/sa/sleep", source_namespace="foo",
                  source_ip="10.1.2.3", host="httpbin.foo", method="GET", path="/info", port=8000,
                  headers={})
    values.update(changes)
    return AuthzRequest(**values)


# ---- policy-level semantics --------------------------------------------------------------

def test_no_policy_allows_everything() -> None:
    """With no AuthorizationPolicy for the workload every request is allowed."""
    authz = Authorizer([], "foo", LABELS)
    assert authz.empty
    assert authz.check(request()) == Decision(True, None, False)


def test_istio_deny_all_example() -> None:
    """Istio's deny-all: an ALLOW policy with an empty spec matches nothing, so all is denied."""
    authz = authorizer(policy("deny-all", "{}"))
    assert authz.check(request()) == Decision(False, None, False)
    assert not authz.check(request(method="POST", source_principal=None)).allowed


def test_spec_null_is_deny_all() -> None:
    """`spec: null` (as in the fixture files) is the same empty ALLOW policy: deny all."""
    authz = authorizer("apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\n"
                       "metadata: {name: deny-all, namespace: foo}\nspec: null\n")
    assert not authz.check(request()).allowed


def test_istio_allow_all_example() -> None:
    """Istio's allow-all: one empty rule `{}` matches every request."""
    authz = authorizer(policy("allow-all", "rules: [{}]"))
    assert authz.check(request(source_principal=None, method="DELETE")) == Decision(True, "foo/allow-all", False)


def test_deny_policy_without_rules_denies_nothing() -> None:
    """A DENY policy with no rules applies (it is loaded as a DENY policy) but matches nothing:
    requests stay allowed, while a DENY with a rule beside it, in the same setup, does deny."""
    alone = authorizer(policy("d", "action: DENY"))
    assert [p.name for p in alone.deny] == ["foo/d"] and not alone.empty
    assert alone.check(request()) == Decision(True, None, False)
    assert alone.check(request(method="POST", source_principal=None, path="/admin")).allowed
    both = authorizer(policy("d", "action: DENY")
                      + policy("no-post", "action: DENY\nrules: [{to: [{operation: {methods: [POST]}}]}]"))
    assert [p.name for p in both.deny] == ["foo/d", "foo/no-post"]
    assert both.check(request(method="GET")) == Decision(True, None, False)
    assert both.check(request(method="POST")) == Decision(False, "foo/no-post", False)


def test_deny_wins_over_allow() -> None:
    """DENY policies are evaluated first: a matching DENY beats a matching ALLOW."""
    authz = authorizer(policy("allow-all", "rules: [{}]")
                       + policy("no-post", "action: DENY\nrules: [{to: [{operation: {methods: [POST]}}]}]"))
    assert authz.check(request(method="POST")) == Decision(False, "foo/no-post", False)
    assert authz.check(request(method="GET")) == Decision(True, "foo/allow-all", False)


def test_allow_policy_present_but_not_matching_denies() -> None:
    """Once any ALLOW policy applies, a request no ALLOW policy matches is denied."""
    authz = authorizer(policy("get-only", "rules: [{to: [{operation: {methods: [GET]}}]}]"))
    assert authz.check(request(method="GET")).allowed
    assert authz.check(request(method="PUT")) == Decision(False, None, False)


def test_audit_only_marks() -> None:
    """AUDIT never changes the outcome; a matching AUDIT policy sets audit on the decision."""
    authz = authorizer(policy("audit-post", "action: AUDIT\nrules: [{to: [{operation: {methods: [POST]}}]}]"))
    assert authz.check(request(method="POST")) == Decision(True, None, True)
    assert authz.check(request(method="GET")) == Decision(True, None, False)
    denied = authorizer(policy("audit-post", "action: AUDIT\nrules: [{}]") + policy("deny-all", "{}"))
    assert denied.check(request()) == Decision(False, None, True)


def test_rules_are_ored() -> None:
    """A policy matches when any of its rules matches."""
    authz = authorizer(policy("p", """
        rules:
        - to: [{operation: {methods: [GET]}}]
        - to: [{operation: {paths: [/admin]}}]
        """))
    assert authz.check(request(method="GET", path="/x")).allowed
    assert authz.check(request(method="POST", path="/admin")).allowed
    assert not authz.check(request(method="POST", path="/x")).allowed


def test_from_to_when_are_anded_within_a_rule() -> None:
    """Inside one rule, from, to and every when condition must all match."""
    authz = authorizer(policy("p", """
        rules:
        - from: [{source: {namespaces: [foo]}}]
          to: [{operation: {methods: [GET]}}]
          when: [{key: 'request.headers[x-user]', values: [alice]}]
        """))
    ok = request(headers={"x-user": "alice"})
    assert authz.check(ok).allowed
    assert not authz.check(request(headers={"x-user": "alice"}, source_namespace="bar")).allowed
    assert not authz.check(request(headers={"x-user": "alice"}, method="POST")).allowed
    assert not authz.check(request(headers={"x-user": "bob"})).allowed


def test_entries_of_from_and_to_are_ored_fields_of_one_entry_anded() -> None:
    """Two `from` entries: either may match; two fields in one source: both must."""
    authz = authorizer(policy("p", """
        rules:
        - from:
          - source: {namespaces: [foo], ipBlocks: [10.0.0.0/8]}
          - source: {principals: [cluster.local/ns/bar/sa/admin]}
        """))
    assert authz.check(request()).allowed
    assert not authz.check(request(source_ip="192.168.0.1")).allowed
    assert authz.check(request(source_ip="192.168.0.1", source_namespace="bar",
                               source_principal="cluster.local/ns/bar/sa/admin")).allowed


# ---- scope: which policies apply to the workload -----------------------------------------

def test_selector_and_namespace_choose_the_policies() -> None:
    """A policy applies in its namespace when its selector matches; root-namespace ones mesh-wide."""
    text = (policy("other-app", "selector: {matchLabels: {app: other}}")          # deny-all for app=other
            + policy("other-ns", "{}", namespace="bar")                            # deny-all in bar
            + policy("mesh-deny-delete", "action: DENY\nrules: [{to: [{operation: {methods: [DELETE]}}]}]",
                     namespace="istio-system"))
    authz = authorizer(text)
    assert authz.check(request()).allowed
    assert authz.check(request(method="DELETE")) == Decision(False, "istio-system/mesh-deny-delete", False)
    assert not authorizer(text, labels={"app": "other"}).check(request()).allowed
    assert not authorizer(text, namespace="bar").check(request()).allowed


# ---- fields -------------------------------------------------------------------------------

@pytest.mark.parametrize(("pattern", "value", "expected"), [
    ("cluster.local/ns/foo/sa/sleep", "cluster.local/ns/foo/sa/sleep", True),
    ("cluster.local/ns/foo/sa/sleep", "cluster.local/ns/foo/sa/sleeper", False),
    ("cluster.local/ns/foo/*", "cluster.local/ns/foo/sa/any", True),
    ("cluster.local/ns/foo/*", "cluster.local/ns/bar/sa/any", False),
    ("*/sa/sleep", "cluster.local/ns/bar/sa/sleep", True),
    ("*/sa/sleep", "cluster.local/ns/bar/sa/curl", False),
    ("*", "anything", True),
])
def test_principal_patterns(pattern: str, value: str, expected: bool) -> None:
    """principals use Istio's exact, prefix*, *suffix and * forms; spiffe:// is ignored."""
    authz = authorizer(policy("p", f"rules: [{{from: [{{source: {{principals: ['{pattern}']}}}}]}}]"))
    assert authz.check(request(source_principal=value)).allowed is expected
    assert authz.check(request(source_principal="spiffe://" + value)).allowed is expected


def test_presence_needs_an_identity() -> None:
    """principals `*` means "any authenticated peer": plaintext (no identity) does not match."""
    authz = authorizer(policy("p", "rules: [{from: [{source: {principals: ['*']}}]}]"))
    assert not authz.check(request(source_principal=None, source_namespace=None)).allowed


def test_deny_not_principals_star_requires_mtls() -> None:
    """Istio's example: DENY with notPrincipals ['*'] rejects plaintext, allows mTLS peers."""
    authz = authorizer(policy("require-mtls", "action: DENY\nrules: [{from: [{source: {notPrincipals: ['*']}}]}]"))
    assert not authz.check(request(source_principal=None, source_namespace=None)).allowed
    assert authz.check(request()).allowed


def test_istio_deny_post_from_other_namespaces_example() -> None:
    """Istio's example: DENY POST unless the source namespace is foo."""
    authz = authorizer(policy("httpbin", """
        action: DENY
        rules:
        - from: [{source: {notNamespaces: [foo]}}]
          to: [{operation: {methods: [POST]}}]
        """))
    assert authz.check(request(method="POST")).allowed
    assert not authz.check(request(method="POST", source_namespace="bar")).allowed
    assert authz.check(request(method="GET", source_namespace="bar")).allowed


def test_istio_allow_service_account_or_namespace_example() -> None:
    """Istio's example: allow sleep in default, or anyone in test, to GET /info* and POST /data."""
    authz = authorizer(policy("httpbin", """
        action: ALLOW
        rules:
        - from:
          - source: {principals: [cluster.local/ns/default/sa/sleep]}
          - source: {namespaces: [test]}
          to:
          - operation: {methods: [GET], paths: [/info*]}
          - operation: {methods: [POST], paths: [/data]}
        """))
    sleep = dict(source_principal="cluster.local/ns/default/sa/sleep", source_namespace="default")
    assert authz.check(request(**sleep, path="/info/details")).allowed
    assert authz.check(request(**sleep, method="POST", path="/data")).allowed
    assert authz.check(request(source_principal="cluster.local/ns/test/sa/x", source_namespace="test",
                               path="/info?verbose=1")).allowed
    assert not authz.check(request(**sleep, method="POST", path="/info")).allowed
    assert not authz.check(request(path="/info")).allowed   # foo/sleep is neither


def test_ip_blocks_and_not_ip_blocks() -> None:
    """ipBlocks are CIDRs (or single addresses); notIpBlocks carve out of them; IPv6 too."""
    authz = authorizer(policy("p", """
        rules:
        - from: [{source: {ipBlocks: [10.0.0.0/8, 2001:db8::/32, 192.168.1.7], notIpBlocks: [10.9.0.0/16]}}]
        """))
    assert authz.check(request(source_ip="10.1.2.3")).allowed
    assert not authz.check(request(source_ip="10.9.1.1")).allowed
    assert authz.check(request(source_ip="2001:db8::5")).allowed
    assert authz.check(request(source_ip="192.168.1.7")).allowed
    assert not authz.check(request(source_ip="192.168.1.8")).allowed
    assert not authz.check(request(source_ip="not-an-ip")).allowed


def test_hosts_ignore_case_and_port() -> None:
    """hosts compare case-insensitively and match a Host header that carries a port."""
    authz = authorizer(policy("p", "rules: [{to: [{operation: {hosts: [httpbin.foo, '*.example.com'], notHosts: [bad.example.com]}}]}]"))
    assert authz.check(request(host="HTTPBIN.foo")).allowed
    assert authz.check(request(host="httpbin.foo:8000")).allowed
    assert authz.check(request(host="api.Example.com")).allowed
    assert not authz.check(request(host="bad.example.com")).allowed
    assert not authz.check(request(host="httpbin.bar")).allowed


def test_ports_methods_paths_and_their_not_variants() -> None:
    """ports, methods and paths match by value; notPorts, notMethods, notPaths exclude."""
    authz = authorizer(policy("p", """
        rules:
        - to:
          - operation: {ports: ['8000', '9000'], notMethods: [DELETE], paths: ['/api/*'], notPaths: ['*/secret']}
        """))
    assert authz.check(request(path="/api/items")).allowed
    assert authz.check(request(path="/api/items", port=9000, method="PATCH")).allowed
    assert not authz.check(request(path="/api/items", port=8080)).allowed
    assert not authz.check(request(path="/api/items", method="DELETE")).allowed
    assert not authz.check(request(path="/api/x/secret")).allowed
    assert not authz.check(request(path="/web")).allowed
    not_ports = authorizer(policy("p", "rules: [{to: [{operation: {notPorts: ['15090']}}]}]"))
    assert not_ports.check(request()).allowed and not not_ports.check(request(port=15090)).allowed


def test_when_conditions() -> None:
    """when keys: source.principal, source.namespace, source.ip, destination.port, request.headers[NAME]."""
    def allowed(condition: str, **changes) -> bool:
        return authorizer(policy("p", f"rules: [{{when: [{condition}]}}]")).check(request(**changes)).allowed

    assert allowed("{key: source.principal, values: ['*/sa/sleep']}")
    assert not allowed("{key: source.principal, notValues: ['*/sa/sleep']}")
    assert allowed("{key: source.namespace, values: [foo]}")
    assert not allowed("{key: source.namespace, values: [foo]}", source_namespace=None)
    assert allowed("{key: source.ip, values: [10.1.0.0/16]}")
    assert not allowed("{key: source.ip, notValues: [10.0.0.0/8]}")
    assert allowed("{key: destination.port, values: ['8000']}")
    assert not allowed("{key: destination.port, values: ['8000']}", port=9000)
    assert allowed("{key: 'request.headers[Authorization]', values: ['Bearer *']}",
                   headers={"authorization": "Bearer abc"})
    assert not allowed("{key: 'request.headers[authorization]', values: ['Bearer *']}",
                       headers={"authorization": "Basic abc"})
    assert not allowed("{key: 'request.headers[x-a]', values: ['*']}")          # presence: header missing
    assert allowed("{key: 'request.headers[x-a]', notValues: [blocked]}")      # absent header is not `blocked`
    assert not allowed("{key: 'request.headers[x-a]', values: ['*'], notValues: [blocked]}",
                       headers={"x-a": "blocked"})


def test_fixture_blog_api_policy() -> None:
    """The fixture policy blog-api-authz: blog-frontend, istio-system, or GET/POST /api/v1/* with a Bearer token."""
    text = (FIXTURES / "003-03-PeerAuthentication-default.yaml").read_text()
    config = load_mesh_text(text.split("---\n")[2])   # the file's third document
    authz = Authorizer(config.authorization_policies, "blog", {"app": "blog-api"})
    plain = dict(source_principal=None, source_namespace=None)
    assert authz.check(request(source_principal="cluster.local/ns/blog/sa/blog-frontend", source_namespace="blog",
                               method="DELETE")).allowed
    assert authz.check(request(source_namespace="istio-system")).allowed
    assert authz.check(request(**plain, path="/api/v1/posts", headers={"authorization": "Bearer t"})).allowed
    assert not authz.check(request(**plain, path="/api/v1/posts")).allowed
    assert not authz.check(request(**plain, method="DELETE", path="/api/v1/posts",
                                   headers={"authorization": "Bearer t"})).allowed
    assert Authorizer(config.authorization_policies, "blog", {"app": "other"}).empty
