"""The route table: Istio VirtualService semantics, as stated in remora/proxy/router/route_table.py.

Every table here is compiled the way the proxy compiles it: Istio YAML -> load_mesh_text ->
build_clusters -> build_route_table; requests are RequestHead objects built directly.
"""
from __future__ import annotations

from collections import Counter

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from remora.config.loader import load_mesh_text
from remora.proxy.upstream.cluster import build_clusters
from remora.proxy.codec.message import RequestHead
from remora.proxy.router.route_table import HeaderOps, RouteTable, build_route_table
from remora.config.model import HeaderOperations

REVIEWS = "reviews.default.svc.cluster.local"
RATINGS = "ratings.default.svc.cluster.local"
DETAILS = "details.default.svc.cluster.local"
WEB = "web.default.svc.cluster.local"

# reviews: one port, three labelled endpoints and a DestinationRule with a subset per
# version; ratings: one port, no VirtualService; details: two ports (no 80); web: two
# ports, 8080 declared before 80.
BASE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 9080, name: http, protocol: HTTP}
  endpoints:
  - {address: 10.0.0.1, labels: {app: reviews, version: v1}}
  - {address: 10.0.0.2, labels: {app: reviews, version: v2}}
  - {address: 10.0.0.3, labels: {app: reviews, version: v3}}
  - {address: 10.0.0.4, labels: {app: reviews, version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 9080, name: http, protocol: HTTP}
  endpoints:
  - {address: 10.0.1.1}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: details, namespace: default}
spec:
  hosts: [details]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 9090, name: admin, protocol: HTTP}
  - {number: 9080, name: http, protocol: HTTP}
  endpoints:
  - {address: 10.0.2.1}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: default}
spec:
  hosts: [web]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 8080, name: alt, protocol: HTTP}
  - {number: 80, name: http, protocol: HTTP}
  endpoints:
  - {address: 10.0.3.1}
"""


def vs(http: list, hosts=("reviews",), name: str = "reviews", namespace: str = "default") -> dict:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"hosts": list(hosts), "http": http},
    }


def to(host: str = "reviews", subset: str | None = None, port: int | None = None,
       weight: int | None = None, **extra) -> dict:
    destination: dict = {"host": host}
    if subset is not None:
        destination["subset"] = subset
    if port is not None:
        destination["port"] = {"number": port}
    out: dict = {"destination": destination, **extra}
    if weight is not None:
        out["weight"] = weight
    return out


def route(name: str, *matches: dict, dest=None, **extra) -> dict:
    """One http route named `name`, with the given match blocks, to `dest` (default reviews)."""
    out: dict = {"name": name, "route": dest if dest is not None else [to()], **extra}
    if matches:
        out["match"] = list(matches)
    return out


def compile_table(*docs: dict, base: str = BASE) -> RouteTable:
    text = base + "".join("---\n" + yaml.safe_dump(d, sort_keys=False) for d in docs)
    config = load_mesh_text(text)
    return build_route_table(config, build_clusters(config))


def req(path: bytes = b"/", authority: bytes = b"reviews:9080", headers=(),
        method: bytes = b"GET") -> RequestHead:
    return RequestHead(method, path, authority, list(headers))


def routed(table: RouteTable, head: RequestHead) -> str | None:
    """The name of the route the request takes, or None (no vhost or no matching route)."""
    vhost = table.lookup(head.authority)
    if vhost is None:
        return None
    found = vhost.route(head)
    return None if found is None else found[0].name


def cluster_name(table: RouteTable, head: RequestHead) -> str:
    vhost = table.lookup(head.authority)
    rt, _ = vhost.route(head)
    return rt.choose().cluster_for(vhost.port).name


def matching(table: RouteTable, **kw) -> bool:
    return routed(table, req(**kw)) == "m"


def one_match(block: dict) -> RouteTable:
    """A table whose route "m" has the single match block `block`, then a fallback "rest"."""
    return compile_table(vs([route("m", block), route("rest")]))


# ---- route order, OR between blocks, AND inside a block ------------------------------------

def test_first_matching_route_wins():
    """Routes are tried in order and the first that matches wins, even if a later one is more specific."""
    broad_first = compile_table(vs([route("broad", {"uri": {"prefix": "/"}}),
                                    route("narrow", {"uri": {"prefix": "/api"}})]))
    narrow_first = compile_table(vs([route("narrow", {"uri": {"prefix": "/api"}}),
                                     route("broad", {"uri": {"prefix": "/"}})]))
    assert routed(broad_first, req(b"/api/x")) == "broad"
    assert routed(narrow_first, req(b"/api/x")) == "narrow"
    assert routed(narrow_first, req(b"/other")) == "broad"


def test_no_matching_route_gives_none():
    """When no route matches, VirtualHost.route returns None (the proxy answers 404 NR)."""
    table = compile_table(vs([route("m", {"uri": {"exact": "/only"}})]))
    vhost = table.lookup(b"reviews:9080")
    assert vhost is not None
    assert vhost.route(req(b"/other")) is None
    assert routed(table, req(b"/only")) == "m"


def test_route_without_match_catches_everything():
    """A route with no match blocks matches every request, whatever its method, path or headers."""
    table = compile_table(vs([route("all")]))
    for head in (req(b"/"), req(b"/x?y=1", method=b"DELETE"), req(b"/z", headers=[(b"a", b"b")])):
        assert routed(table, head) == "all"


def test_match_blocks_are_ored():
    """A route with several match blocks matches when any one of them does."""
    table = compile_table(vs([route("m", {"uri": {"exact": "/a"}}, {"headers": {"end-user": {"exact": "jason"}}}),
                              route("rest")]))
    assert routed(table, req(b"/a")) == "m"
    assert routed(table, req(b"/b", headers=[(b"end-user", b"jason")])) == "m"
    assert routed(table, req(b"/b", headers=[(b"end-user", b"other")])) == "rest"


def test_conditions_in_one_block_are_anded():
    """Inside one match block every condition must hold: uri, method and header together."""
    table = one_match({"uri": {"prefix": "/api"}, "method": {"exact": "POST"},
                       "headers": {"end-user": {"exact": "jason"}}})
    jason = [(b"end-user", b"jason")]
    assert matching(table, path=b"/api/x", method=b"POST", headers=jason)
    assert not matching(table, path=b"/web", method=b"POST", headers=jason)
    assert not matching(table, path=b"/api/x", method=b"GET", headers=jason)
    assert not matching(table, path=b"/api/x", method=b"POST")
    assert routed(table, req(b"/api/x")) == "rest"


def test_matched_block_is_returned():
    """VirtualHost.route returns the block that matched (needed for prefix rewrites), True when unconditional."""
    table = compile_table(vs([route("m", {"uri": {"exact": "/a"}}, {"uri": {"prefix": "/b"}}), route("rest")]))
    vhost = table.lookup(b"reviews")
    rt, block = vhost.route(req(b"/b/1"))
    assert rt.name == "m" and block is rt.blocks[1]
    rt, block = vhost.route(req(b"/zzz"))
    assert rt.name == "rest" and block is True


# ---- uri ---------------------------------------------------------------------------------------

def test_uri_exact_matches_the_whole_path_only():
    """uri.exact matches only the identical path (no trailing slash, no extension)."""
    table = one_match({"uri": {"exact": "/reviews"}})
    assert matching(table, path=b"/reviews")
    assert not matching(table, path=b"/reviews/")
    assert not matching(table, path=b"/reviews1")
    assert not matching(table, path=b"/review")


def test_uri_prefix_is_a_string_prefix():
    """uri.prefix matches any path that starts with the prefix (Envoy's prefix is not segment-aware)."""
    table = one_match({"uri": {"prefix": "/api"}})
    for path in (b"/api", b"/api/", b"/api/v1/x", b"/apix"):
        assert matching(table, path=path), path
    for path in (b"/", b"/ap", b"/v1/api"):
        assert not matching(table, path=path), path


def test_uri_regex_must_match_the_whole_path():
    """uri.regex matches the whole path (Envoy safe_regex), not a substring of it."""
    table = one_match({"uri": {"regex": "/v[0-9]+"}})
    assert matching(table, path=b"/v1")
    assert matching(table, path=b"/v123")
    assert not matching(table, path=b"/v1/x")
    assert not matching(table, path=b"/a/v1")
    assert not matching(table, path=b"/v")


@pytest.mark.parametrize("block", [
    {"uri": {"exact": "/x"}},
    {"uri": {"prefix": "/x"}},
    {"uri": {"regex": "/x"}},
])
def test_query_string_is_not_part_of_the_uri_match(block):
    """The query string is excluded from the path match (exact, prefix and regex)."""
    table = one_match(block)
    assert matching(table, path=b"/x?a=1&b=2")
    assert matching(table, path=b"/x?")


def test_uri_regex_cannot_see_the_query():
    """A regex that needs the query string never matches, since only the path is matched."""
    table = one_match({"uri": {"regex": r"/x\?a=1"}})
    assert not matching(table, path=b"/x?a=1")


def test_uri_match_is_case_sensitive_by_default():
    """Without ignoreUriCase, /API does not match prefix /api (nor exact or regex)."""
    for block in ({"uri": {"prefix": "/api"}}, {"uri": {"exact": "/api"}}, {"uri": {"regex": "/api"}}):
        assert not matching(one_match(block), path=b"/API"), block


@pytest.mark.parametrize("block,path", [
    ({"uri": {"exact": "/Api/Users"}, "ignoreUriCase": True}, b"/aPI/usERS"),
    ({"uri": {"prefix": "/API"}, "ignoreUriCase": True}, b"/api/Users"),
    ({"uri": {"regex": "/api/[a-z]+"}, "ignoreUriCase": True}, b"/API/USERS"),
])
def test_ignore_uri_case_applies_to_exact_prefix_and_regex(block, path):
    """ignoreUriCase makes exact, prefix and regex uri matches case-insensitive."""
    assert matching(one_match(block), path=path)


def test_ignore_uri_case_does_not_loosen_other_rules():
    """ignoreUriCase still requires the whole path for exact and regex."""
    table = one_match({"uri": {"exact": "/api"}, "ignoreUriCase": True})
    assert not matching(table, path=b"/API/x")


# ---- method and authority ---------------------------------------------------------------------

def test_method_match_exact_and_regex():
    """method matches exactly (GET is not get) or by whole-value regex."""
    exact = one_match({"method": {"exact": "GET"}})
    assert matching(exact, method=b"GET")
    assert not matching(exact, method=b"POST")
    assert not matching(exact, method=b"get")
    rx = one_match({"method": {"regex": "GET|HEAD"}})
    assert matching(rx, method=b"HEAD")
    assert not matching(rx, method=b"GETX")


def test_authority_match_sees_the_host_as_sent():
    """authority matches the Host value the client sent, port included."""
    exact = one_match({"authority": {"exact": "reviews:9080"}})
    assert matching(exact, authority=b"reviews:9080")
    assert not matching(exact, authority=b"reviews")
    prefix = one_match({"authority": {"prefix": "reviews.default"}})
    assert matching(prefix, authority=b"reviews.default.svc.cluster.local:9080")
    assert not matching(prefix, authority=b"reviews:9080")


def test_port_match_uses_the_addressed_service_port():
    """match.port compares with the port the Host addressed (the bare name means the default port)."""
    table = compile_table(vs([route("m", {"port": 9090}, dest=[to("details")]),
                              route("rest", dest=[to("details")])], hosts=["details"], name="details"))
    assert routed(table, req(authority=b"details:9090")) == "m"
    assert routed(table, req(authority=b"details:9080")) == "rest"
    assert routed(table, req(authority=b"details")) == "rest"   # no 80: the lowest port, 9080


# ---- headers, withoutHeaders, queryParams ----------------------------------------------------------

def test_header_exact_prefix_regex():
    """headers match by exact value, prefix, or whole-value regex."""
    def h(value: bytes) -> list:
        return [(b"end-user", value)]
    exact = one_match({"headers": {"end-user": {"exact": "jason"}}})
    assert matching(exact, headers=h(b"jason"))
    assert not matching(exact, headers=h(b"jason2"))
    assert not matching(exact, headers=h(b"Jason"))
    prefix = one_match({"headers": {"end-user": {"prefix": "ja"}}})
    assert matching(prefix, headers=h(b"jason"))
    assert not matching(prefix, headers=h(b"xjason"))
    rx = one_match({"headers": {"end-user": {"regex": "j.*n"}}})
    assert matching(rx, headers=h(b"jason"))
    assert not matching(rx, headers=h(b"jasonx"))   # whole value, not a search


def test_header_names_are_case_insensitive():
    """Header names match case-insensitively, on both the YAML key and the request side; a
    header of another name never matches, in any case, even with the wanted value."""
    table = one_match({"headers": {"End-User": {"exact": "jason"}}})
    assert matching(table, headers=[(b"END-USER", b"jason")])
    assert matching(table, headers=[(b"end-user", b"jason")])
    assert matching(table, headers=[(b"End-User", b"jason")])
    for other in (b"end-users", b"x-end-user", b"end_user", b"enduser", b"end-use", b"user"):
        assert not matching(table, headers=[(other, b"jason")]), other
        assert not matching(table, headers=[(other.upper(), b"jason")]), other
    assert matching(table, headers=[(b"x-end-user", b"bob"), (b"END-USER", b"jason")])


def test_header_values_are_case_sensitive():
    """Header values compare case-sensitively (only names are case-insensitive)."""
    table = one_match({"headers": {"end-user": {"exact": "jason"}}})
    assert not matching(table, headers=[(b"end-user", b"JASON")])


# (an empty prefix is refused by validation, as Istio refuses it: regex ".*" is the match-anything case)
@pytest.mark.parametrize("cond", [{"exact": ""}, {"regex": ".*"}, {}])
def test_absent_header_does_not_match(cond):
    """A header condition never matches a request without that header, even one any value would satisfy."""
    table = one_match({"headers": {"end-user": cond}})
    assert not matching(table)
    assert matching(table, headers=[(b"end-user", b"")])


def test_empty_header_match_means_present():
    """An empty header match ({}) matches any value as long as the header is present."""
    table = one_match({"headers": {"x-canary": {}}})
    assert matching(table, headers=[(b"x-canary", b"anything")])
    assert not matching(table, headers=[(b"x-other", b"1")])


def test_without_headers_excludes_matching_requests():
    """withoutHeaders matches when the header is absent or does not satisfy the condition."""
    table = one_match({"withoutHeaders": {"end-user": {"exact": "jason"}}})
    assert matching(table)
    assert matching(table, headers=[(b"end-user", b"mike")])
    assert not matching(table, headers=[(b"End-User", b"jason")])


def test_without_headers_presence():
    """withoutHeaders with an empty match excludes any request that has the header."""
    table = one_match({"withoutHeaders": {"x-debug": {}}})
    assert matching(table)
    assert not matching(table, headers=[(b"x-debug", b"")])


def test_headers_and_without_headers_combine():
    """headers and withoutHeaders in one block must both hold."""
    table = one_match({"headers": {"end-user": {"prefix": "j"}},
                       "withoutHeaders": {"end-user": {"exact": "jason"}}})
    assert matching(table, headers=[(b"end-user", b"jane")])
    assert not matching(table, headers=[(b"end-user", b"jason")])
    assert not matching(table, headers=[(b"end-user", b"mike")])


def test_query_params_exact_and_regex():
    """queryParams match a parameter's value exactly or by whole-value regex."""
    exact = one_match({"queryParams": {"version": {"exact": "v2"}}})
    assert matching(exact, path=b"/x?version=v2")
    assert matching(exact, path=b"/x?a=1&version=v2&b=2")
    assert not matching(exact, path=b"/x?version=v22")
    assert not matching(exact, path=b"/x?versionx=v2")
    rx = one_match({"queryParams": {"version": {"regex": "v[0-9]"}}})
    assert matching(rx, path=b"/?version=v7")
    assert not matching(rx, path=b"/?version=v77")


def test_absent_query_param_does_not_match():
    """A queryParams condition does not match a request without that parameter (or no query at all)."""
    table = one_match({"queryParams": {"debug": {"regex": ".*"}}})
    assert not matching(table, path=b"/x")
    assert not matching(table, path=b"/x?other=1")
    assert matching(table, path=b"/x?debug")   # present without a value
    assert matching(table, path=b"/x?debug=")


def test_repeated_query_param_uses_the_first_value():
    """A repeated query parameter is matched on its first value, as Envoy does."""
    table = one_match({"queryParams": {"v": {"exact": "1"}}})
    assert matching(table, path=b"/?v=1&v=2")
    assert not matching(table, path=b"/?v=2&v=1")


# ---- Host lookup ------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", [
    b"reviews", b"reviews:9080", b"reviews.default", b"reviews.default:9080",
    b"reviews.default.svc", b"reviews.default.svc:9080",
    b"reviews.default.svc.cluster.local", b"reviews.default.svc.cluster.local:9080",
    b"REVIEWS", b"Reviews.Default.SVC.Cluster.Local:9080",
])
def test_every_spelling_of_a_service_host_finds_its_virtual_host(host):
    """Short name, name.namespace, .svc, the FQDN, with or without the port, any case: one virtual host."""
    table = compile_table(vs([route("m")]))
    vhost = table.lookup(host)
    assert vhost is not None
    assert vhost.name == "default/reviews"
    assert vhost.port == 9080


@pytest.mark.parametrize("host", [b"unknown", b"unknown:9080", b"reviews:1234", b"reviews.other",
                                  b"reviews.default.svc.cluster", b"", b"api.example.com"])
def test_unknown_host_or_port_has_no_virtual_host(host):
    """A host nothing defines, or a port the service does not expose, finds no virtual host."""
    assert compile_table(vs([route("m")])).lookup(host) is None


def test_wildcard_hosts():
    """`*.example.com` matches any name under example.com (any depth, any port), not example.com itself."""
    se = {
        "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "ext", "namespace": "default"},
        "spec": {"hosts": ["api.example.com"], "resolution": "DNS",
                 "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]},
    }
    table = compile_table(se, vs([route("wild", dest=[to("api.example.com")])],
                                 hosts=["*.example.com"], name="wild"))
    for host in (b"a.example.com", b"b.a.example.com:8080", b"X.EXAMPLE.COM"):
        assert routed(table, req(authority=host)) == "wild", host
    assert table.lookup(b"example.com") is None
    assert table.lookup(b"example.com.evil") is None
    assert table.lookup(b"aexample.com") is None
    # An exact host beats the wildcard: api.example.com keeps its default route.
    assert routed(table, req(authority=b"api.example.com")) == "default"


def test_most_specific_wildcard_wins():
    """Of two wildcards that both match, the longer (more specific) suffix wins."""
    table = compile_table(
        vs([route("broad")], hosts=["*.example.com"], name="broad"),
        vs([route("narrow")], hosts=["*.eu.example.com"], name="narrow"),
    )
    assert routed(table, req(authority=b"a.eu.example.com")) == "narrow"
    assert routed(table, req(authority=b"a.us.example.com")) == "broad"


def test_catch_all_host():
    """A VirtualService for `*` takes every host nothing else claims; named hosts keep their routes."""
    table = compile_table(vs([route("any", dest=[to("ratings")])], hosts=["*"], name="any"))
    assert routed(table, req(authority=b"anything.at.all:1234")) == "any"
    assert cluster_name(table, req(authority=b"whatever")) == f"outbound|9080||{RATINGS}"
    assert routed(table, req(authority=b"reviews")) == "default"


def test_ipv6_literal_host_is_not_split_at_its_colons():
    """A bracketed IPv6 literal without a port is looked up whole (a wildcard cannot be fooled)."""
    table = compile_table(vs([route("any")], hosts=["*"], name="any"))
    assert table.lookup(b"[::1]") is table.catch_all


def test_single_table_sends_everything_to_one_cluster():
    """RouteTable.single routes every host and path to its one cluster."""
    services = build_clusters(load_mesh_text(BASE))
    cluster = services[RATINGS].clusters[(9080, None)]
    table = RouteTable.single(cluster, "inbound|9080||")
    for host in (b"", b"x", b"reviews:9080"):
        vhost = table.lookup(host)
        rt, _ = vhost.route(req(b"/any?q", authority=host))
        assert rt.choose().cluster_for(vhost.port) is cluster


# ---- default routes (ServiceEntry without VirtualService) ----------------------------------------

def test_service_entry_without_virtual_service_gets_a_default_route():
    """A host with a ServiceEntry but no VirtualService routes everything to outbound|<port>||<fqdn>."""
    table = compile_table()
    for host in (b"ratings", b"ratings:9080", RATINGS.encode(), b"ratings.default:9080"):
        assert routed(table, req(b"/anything?x=1", authority=host, method=b"PUT")) == "default"
        assert cluster_name(table, req(authority=host)) == f"outbound|9080||{RATINGS}"
    vhost = table.lookup(b"ratings")
    cluster = vhost.route(req())[0].choose().cluster_for(vhost.port)
    assert [e.key for e in cluster.endpoints] == ["10.0.1.1:9080"]


def test_default_route_per_port():
    """Each port of a multi-port service routes to its own port's cluster."""
    table = compile_table()
    assert cluster_name(table, req(authority=b"details:9080")) == f"outbound|9080||{DETAILS}"
    assert cluster_name(table, req(authority=b"details:9090")) == f"outbound|9090||{DETAILS}"
    assert cluster_name(table, req(authority=b"web:8080")) == f"outbound|8080||{WEB}"


def multi_port_table(name: str, ports: list[int]) -> RouteTable:
    """BASE plus a service `name` with the given ports, declared in that order."""
    se = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
          "metadata": {"name": name, "namespace": "default"},
          "spec": {"hosts": [name], "resolution": "STATIC",
                   "ports": [{"number": p, "name": f"http-{p}", "protocol": "HTTP"} for p in ports],
                   "endpoints": [{"address": "10.0.4.1"}]}}
    return compile_table(se)


@pytest.mark.parametrize("ports", [[80, 8080], [8080, 80], [8080, 80, 9000]])
def test_bare_host_means_port_80_when_the_service_has_it(ports):
    """A Host without a port addresses port 80 of a multi-port service, whatever order the ports are declared in."""
    table = multi_port_table("multi", ports)
    fqdn = "multi.default.svc.cluster.local"
    for host in (b"multi", fqdn.encode(), b"multi.default"):
        assert table.lookup(host).port == 80
        assert cluster_name(table, req(authority=host)) == f"outbound|80||{fqdn}"
    assert cluster_name(table, req(authority=b"multi:8080")) == f"outbound|8080||{fqdn}"


@pytest.mark.parametrize("ports", [[9080, 9090], [9090, 9080], [9090, 9080, 9100]])
def test_bare_host_means_the_lowest_port_without_80(ports):
    """Without port 80, a Host without a port addresses the service's lowest port, whatever the declaration order."""
    table = multi_port_table("multi", ports)
    assert table.lookup(b"multi").port == 9080
    assert cluster_name(table, req(authority=b"multi")) == "outbound|9080||multi.default.svc.cluster.local"


def test_virtual_service_replaces_the_default_route():
    """Once a VirtualService names a host, its routes (not the default route) serve every spelling."""
    table = compile_table(vs([route("only-api", {"uri": {"prefix": "/api"}})]))
    for host in (b"reviews", b"reviews:9080", REVIEWS.encode() + b":9080"):
        assert routed(table, req(b"/api", authority=host)) == "only-api"
        assert routed(table, req(b"/web", authority=host)) is None


# ---- weighted destinations ----------------------------------------------------------------------

def assert_exact_windows(seq: list, expected: dict) -> None:
    """Every window of sum(expected) consecutive picks holds exactly `expected` counts."""
    width = sum(expected.values())
    window = Counter(seq[:width])
    assert window == Counter(expected)
    for start in range(1, len(seq) - width + 1):
        window[seq[start - 1]] -= 1
        window[seq[start + width - 1]] += 1
        assert +window == Counter(expected), f"window at {start}"


def picks(table: RouteTable, count: int, head: RequestHead | None = None) -> list[str]:
    head = head or req()
    vhost = table.lookup(head.authority)
    rt, _ = vhost.route(head)
    return [rt.choose().cluster_for(vhost.port).subset for _ in range(count)]


def test_weights_are_followed_exactly():
    """80/20 over 5000 choose() calls is exactly 4000/1000, and every window of 5 holds 4 and 1."""
    table = compile_table(vs([route("split", dest=[to(subset="v1", weight=80), to(subset="v2", weight=20)])]))
    seq = picks(table, 5000)
    assert Counter(seq) == {"v1": 4000, "v2": 1000}
    assert_exact_windows(seq, {"v1": 4, "v2": 1})


def test_three_way_split_is_exact_per_period():
    """A 50/30/20 split is exact over every window of 10 picks (weights divided by their gcd)."""
    table = compile_table(vs([route("split", dest=[to(subset="v1", weight=50), to(subset="v2", weight=30),
                                                   to(subset="v3", weight=20)])]))
    seq = picks(table, 3000)
    assert Counter(seq) == {"v1": 1500, "v2": 900, "v3": 600}
    assert_exact_windows(seq, {"v1": 5, "v2": 3, "v3": 2})


def test_zero_weight_destination_gets_nothing():
    """A destination with weight 0 is never chosen."""
    table = compile_table(vs([route("split", dest=[to(subset="v1", weight=100), to(subset="v2", weight=0)])]))
    assert set(picks(table, 500)) == {"v1"}


def test_single_destination_gets_everything():
    """A route with one destination (no weight) sends every request there."""
    table = compile_table(vs([route("one", dest=[to(subset="v3")])]))
    assert set(picks(table, 100)) == {"v3"}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=60), min_size=2, max_size=3))
def test_any_weights_are_within_two_points(weights):
    """For any positive weights, every destination's share over 5000 picks is within 2 points of its weight."""
    subsets = ["v1", "v2", "v3"][:len(weights)]
    table = compile_table(vs([route("split", dest=[to(subset=s, weight=w) for s, w in zip(subsets, weights)])]))
    n = 5000
    counts = Counter(picks(table, n))
    total = sum(weights)
    for subset, weight in zip(subsets, weights):
        assert abs(counts[subset] / n - weight / total) <= 0.02, (subset, counts, weights)


# ---- subsets and ports -----------------------------------------------------------------------------

def test_subset_destinations_use_subset_clusters_with_only_the_labelled_endpoints():
    """A subset destination maps to outbound|9080|<subset>|<fqdn>, whose endpoints carry the subset's labels."""
    table = compile_table(vs([route("v1", {"headers": {"v": {"exact": "1"}}}, dest=[to(subset="v1")]),
                              route("v2", dest=[to(subset="v2")])]))
    vhost = table.lookup(b"reviews:9080")
    c1 = vhost.route(req(headers=[(b"v", b"1")]))[0].choose().cluster_for(vhost.port)
    c2 = vhost.route(req())[0].choose().cluster_for(vhost.port)
    assert c1.name == f"outbound|9080|v1|{REVIEWS}"
    assert c2.name == f"outbound|9080|v2|{REVIEWS}"
    assert [e.host for e in c1.endpoints] == ["10.0.0.1"]
    assert sorted(e.host for e in c2.endpoints) == ["10.0.0.2", "10.0.0.4"]
    assert all(e.labels["version"] == "v2" for e in c2.endpoints)
    assert (c1.subset, c1.port, c1.service) == ("v1", 9080, REVIEWS)


def test_destination_port_follows_the_addressed_port():
    """Without destination.port, a multi-port destination is reached on the port the request addressed."""
    table = compile_table(vs([route("m", dest=[to("details")])], hosts=["details"], name="details"))
    assert cluster_name(table, req(authority=b"details:9080")) == f"outbound|9080||{DETAILS}"
    assert cluster_name(table, req(authority=b"details:9090")) == f"outbound|9090||{DETAILS}"
    assert cluster_name(table, req(authority=b"details")) == f"outbound|9080||{DETAILS}"


def test_explicit_destination_port_wins():
    """destination.port.number picks that port's cluster whichever port the request addressed."""
    table = compile_table(vs([route("m", dest=[to("details", port=9090)])], hosts=["details"], name="details"))
    for host in (b"details", b"details:9080", b"details:9090"):
        assert cluster_name(table, req(authority=host)) == f"outbound|9090||{DETAILS}"


def test_single_port_destination_is_used_from_any_port():
    """A destination with one port is reached on that port, whatever port the request addressed."""
    table = compile_table(vs([route("m", dest=[to("ratings")])], hosts=["details"], name="details"))
    for host in (b"details:9080", b"details:9090", b"details"):
        assert cluster_name(table, req(authority=host)) == f"outbound|9080||{RATINGS}"


def test_undefined_subset_does_not_replace_the_real_cluster():
    """Routing to a subset no cluster has yields an empty subset cluster and leaves the port's real cluster intact."""
    text = BASE + """
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.com]
  resolution: STATIC
  ports:
  - {number: 80, name: http, protocol: HTTP}
  endpoints:
  - {address: 10.9.0.1, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: all, namespace: default}
spec:
  host: "*.example.com"
  subsets: [{name: v1, labels: {version: v1}}]
"""
    doc = vs([route("sub", {"uri": {"prefix": "/sub"}}, dest=[to("api.example.com", subset="v1")]),
              route("plain", dest=[to("api.example.com")])], hosts=["front.example.com"], name="front")
    config = load_mesh_text(text + "---\n" + yaml.safe_dump(doc))
    table = build_route_table(config, build_clusters(config))
    plain = cluster_name(table, req(b"/x", authority=b"front.example.com"))
    vhost = table.lookup(b"front.example.com")
    cluster = vhost.route(req(b"/x", authority=b"front.example.com"))[0].choose().cluster_for(vhost.port)
    assert plain == "outbound|80||api.example.com"
    assert [e.key for e in cluster.endpoints] == ["10.9.0.1:80"]


def test_unknown_destination_host_gets_an_empty_cluster():
    """A VirtualService for a host with no ServiceEntry still compiles; its destination cluster has no endpoints."""
    dr = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
          "metadata": {"name": "ghost", "namespace": "default"}, "spec": {"host": "ghost"}}
    table = compile_table(dr, vs([route("m", dest=[to("ghost")])], hosts=["ghost"], name="ghost"))
    vhost = table.lookup(b"ghost")
    cluster = vhost.route(req(authority=b"ghost"))[0].choose().cluster_for(vhost.port)
    assert cluster.name == "outbound|80||ghost.default.svc.cluster.local"
    assert cluster.endpoints == []


# ---- rewrite --------------------------------------------------------------------------------------

def rewritten(table: RouteTable, path: bytes, authority: bytes = b"reviews") -> bytes:
    vhost = table.lookup(authority)
    rt, block = vhost.route(req(path, authority=authority))
    return rt.rewrite_path(path, block)


def test_prefix_rewrite_replaces_only_the_matched_prefix():
    """With a prefix match, rewrite.uri replaces the prefix and keeps the rest of the path and the query."""
    table = compile_table(vs([route("m", {"uri": {"prefix": "/reviews/"}}, rewrite={"uri": "/v2/"})]))
    assert rewritten(table, b"/reviews/1/comments?sort=new") == b"/v2/1/comments?sort=new"
    assert rewritten(table, b"/reviews/") == b"/v2/"


def test_prefix_rewrite_uses_the_block_that_matched():
    """With several prefix blocks, the prefix that is replaced is the one of the block that matched."""
    table = compile_table(vs([route("m", {"uri": {"prefix": "/old-api"}}, {"uri": {"prefix": "/legacy"}},
                                    rewrite={"uri": "/api"})]))
    assert rewritten(table, b"/old-api/x") == b"/api/x"
    assert rewritten(table, b"/legacy/x?q") == b"/api/x?q"


def test_exact_match_rewrite_replaces_the_path():
    """With an exact uri match, rewrite.uri replaces the whole path; the query string is kept."""
    table = compile_table(vs([route("m", {"uri": {"exact": "/old"}}, rewrite={"uri": "/new/place"})]))
    assert rewritten(table, b"/old?q=1") == b"/new/place?q=1"
    assert rewritten(table, b"/old") == b"/new/place"


def test_uri_regex_rewrite_substitutes_groups():
    r"""uriRegexRewrite rewrites the path with RE2 groups \1, \2 ... (any group, not just \1); the query is kept."""
    table = compile_table(vs([route("m", {"uri": {"prefix": "/api/"}}, rewrite={
        "uriRegexRewrite": {"match": r"^/api/v([0-9]+)/([^/]+)(.*)$", "rewrite": r"/\2\3/version/\1"}})]))
    assert rewritten(table, b"/api/v2/users/7?x=1") == b"/users/7/version/2?x=1"


def test_uri_regex_rewrite_whole_match_and_literal_backslash():
    r"""In an RE2 rewrite \0 is the whole match and \\ a literal backslash; other text is literal."""
    table = compile_table(vs([route("m", rewrite={"uriRegexRewrite": {"match": "/a+", "rewrite": r"[\0]\\n&"}})]))
    assert rewritten(table, b"/aa/b") == b"[/aa]\\n&/b"


def test_uri_regex_rewrite_replaces_every_occurrence():
    """uriRegexRewrite replaces every match in the path (Envoy's regex_rewrite is a global replace)."""
    table = compile_table(vs([route("m", rewrite={"uriRegexRewrite": {"match": "-", "rewrite": "_"}})]))
    assert rewritten(table, b"/a-b/c-d?e-f") == b"/a_b/c_d?e-f"


def test_rewrite_authority():
    """rewrite.authority is compiled for the upstream Host; without it the route leaves Host alone."""
    table = compile_table(vs([route("m", {"uri": {"prefix": "/x"}}, rewrite={"authority": "ratings:9080"}),
                              route("rest")]))
    vhost = table.lookup(b"reviews")
    assert vhost.route(req(b"/x"))[0].rewrite_authority == b"ratings:9080"
    assert vhost.route(req(b"/y"))[0].rewrite_authority is None


def test_no_rewrite_leaves_the_path():
    """A route without rewrite has neither a uri nor a regex rewrite (the path goes upstream unchanged)."""
    rt = compile_table(vs([route("m")])).lookup(b"reviews").routes[0]
    assert rt.rewrite_uri is None and rt.regex_rewrite is None


# ---- header operations ------------------------------------------------------------------------------

def test_header_ops_set_add_remove():
    """set replaces every value of a header (any case), add appends, remove drops (any case)."""
    ops = HeaderOps(HeaderOperations(set={"x-set": "new"}, add={"x-add": "2"}, remove=["X-Gone"]))
    headers = [(b"X-Set", b"old"), (b"x-add", b"1"), (b"x-gone", b"bye"), (b"keep", b"k"), (b"x-set", b"old2")]
    out = ops.apply(headers)
    assert out == [(b"x-add", b"1"), (b"keep", b"k"), (b"x-set", b"new"), (b"x-add", b"2")]
    assert headers[0] == (b"X-Set", b"old") and len(headers) == 5   # the input is not mutated


def test_header_ops_without_operations_keep_headers():
    """Empty operations return the headers unchanged."""
    headers = [(b"a", b"1")]
    assert HeaderOps(HeaderOperations()).apply(headers) == headers


def test_route_and_destination_header_ops_are_compiled():
    """headers.request/response on a route and on a destination compile to HeaderOps on Route and RouteDestination."""
    table = compile_table(vs([route(
        "m", dest=[to(subset="v1", headers={"response": {"set": {"x-version": "v1"}}})],
        headers={"request": {"add": {"x-via": "remora"}, "remove": ["x-secret"]},
                 "response": {"remove": ["server"]}},
    )]))
    rt = table.lookup(b"reviews").routes[0]
    assert rt.request_ops.apply([(b"X-Secret", b"s"), (b"a", b"b")]) == [(b"a", b"b"), (b"x-via", b"remora")]
    assert rt.response_ops.apply([(b"Server", b"x"), (b"a", b"b")]) == [(b"a", b"b")]
    dest = rt.choose()
    assert dest.request_ops is None
    assert dest.response_ops.apply([(b"X-Version", b"old")]) == [(b"x-version", b"v1")]


# ---- timeout and other route fields --------------------------------------------------------------------

@pytest.mark.parametrize("text,seconds", [("1.5s", 1.5), ("250ms", 0.25), ("2m", 120.0), ("1h2m3s", 3723.0)])
def test_route_timeout_is_parsed_to_seconds(text, seconds):
    """route timeout strings become seconds on the compiled Route."""
    rt = compile_table(vs([route("m", timeout=text)])).lookup(b"reviews").routes[0]
    assert rt.timeout == pytest.approx(seconds)


def test_route_without_timeout_has_none():
    """A route without timeout has timeout None (no route deadline)."""
    rt = compile_table(vs([route("m")])).lookup(b"reviews").routes[0]
    assert rt.timeout is None


def test_route_names_and_origin():
    """A named route keeps its name; an unnamed one is <vs>.<index>; origin names the VirtualService."""
    table = compile_table(vs([{"match": [{"uri": {"prefix": "/a"}}], "route": [to()]}, route("named")]))
    routes = table.lookup(b"reviews").routes
    assert [r.name for r in routes] == ["reviews.0", "named"]
    assert routes[0].origin == "VirtualService/default/reviews"


def test_retries_and_fault_are_carried():
    """A route keeps its retries spec and compiles its fault for the exchange to apply."""
    rt = compile_table(vs([route("m", retries={"attempts": 3, "retryOn": "5xx"},
                                 fault={"abort": {"httpStatus": 503, "percentage": {"value": 10}}})])
                       ).lookup(b"reviews").routes[0]
    assert rt.retries.attempts == 3 and rt.retries.retry_on == "5xx"
    assert rt.fault.abort_status == 503 and rt.fault.abort_percent == 10


def test_namespace_qualifies_short_hosts():
    """A VirtualService in another namespace qualifies its short host with that namespace."""
    se = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
          "metadata": {"name": "reviews", "namespace": "prod"},
          "spec": {"hosts": ["reviews"], "resolution": "STATIC",
                   "ports": [{"number": 9080, "name": "http", "protocol": "HTTP"}],
                   "endpoints": [{"address": "10.5.0.1"}]}}
    table = compile_table(se, vs([route("prod-route")], namespace="prod"))
    assert routed(table, req(authority=b"reviews.prod:9080")) == "prod-route"
    assert routed(table, req(authority=b"reviews.default:9080")) == "default"
    assert cluster_name(table, req(authority=b"reviews.prod")) == "outbound|9080||reviews.prod.svc.cluster.local"



def test_wildcard_destination_rule_applies_to_matching_service():
    """A DestinationRule on *.example.com gives api.example.com its subsets and policy."""
    from remora.config.loader import load_mesh_text
    from remora.proxy.upstream.cluster import build_clusters

    config = load_mesh_text("""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1}}
  - {address: 10.0.0.2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: all-example}
spec:
  host: "*.example.com"
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
  subsets: [{name: v1, labels: {version: v1}}]
""")
    info = build_clusters(config)["api.example.com"]
    assert [e.host for e in info.clusters[(80, "v1")].endpoints] == ["10.0.0.1"]
    assert info.clusters[(80, None)].lb_policy == "RANDOM"


# ---- gateways: what applies at a sidecar ----------------------------------------------------

def gateway_vs(gateways: list[str], http: list, hosts=("*",), name: str = "httpbin") -> dict:
    doc = vs(http, hosts=hosts, name=name)
    doc["spec"]["gateways"] = gateways
    return doc


def test_virtual_service_bound_only_to_a_gateway_is_not_applied_at_sidecars():
    """Istio's httpbin-gateway VirtualService (hosts "*", gateways [httpbin-gateway]) must not capture a sidecar's hosts."""
    table = compile_table(gateway_vs(["httpbin-gateway"], [route("gw", dest=[to("ratings")])]))
    assert routed(table, req(authority=b"api.github.com")) is None
    assert routed(table, req(authority=b"reviews:9080")) == "default"


def test_virtual_service_naming_mesh_applies_at_sidecars():
    """gateways [mesh, gw] applies at sidecars as if gateways were omitted."""
    table = compile_table(gateway_vs(["mesh", "httpbin-gateway"], [route("both")], hosts=("reviews",)))
    assert routed(table, req()) == "both"


def test_match_level_gateways_override_the_virtual_service():
    """A match entry bound to another gateway is dropped at sidecars; a route left with no entry disappears."""
    table = compile_table(vs([
        route("gw-only", {"uri": {"prefix": "/"}, "gateways": ["my-gateway"]}),
        route("mixed", {"uri": {"prefix": "/a"}, "gateways": ["my-gateway"]},
              {"uri": {"prefix": "/b"}, "gateways": ["mesh"]}),
        route("rest"),
    ]))
    assert routed(table, req(b"/x")) == "rest"
    assert routed(table, req(b"/a")) == "rest"
    assert routed(table, req(b"/b")) == "mixed"


def test_source_labels_and_namespace_select_the_calling_workload():
    """sourceLabels / sourceNamespace entries apply only at sidecars of the workloads they name."""
    doc = vs([route("v1-callers", {"sourceLabels": {"app": "productpage", "version": "v1"}}),
              route("ns-callers", {"sourceNamespace": "shop"}),
              route("rest")])
    config = load_mesh_text(BASE + "---\n" + yaml.safe_dump(doc, sort_keys=False))

    def table_for(labels, namespace):
        return build_route_table(config, build_clusters(config), labels, namespace)

    assert routed(table_for({"app": "productpage", "version": "v1", "x": "y"}, "default"), req()) == "v1-callers"
    assert routed(table_for({"app": "productpage", "version": "v2"}, "default"), req()) == "rest"
    assert routed(table_for({}, "shop"), req()) == "ns-callers"
    assert routed(table_for(None, None), req()) == "rest"
