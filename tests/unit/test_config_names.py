"""Host naming: dot-less short names qualify by namespace (Istio's rule); anything else stays."""
from __future__ import annotations

import pytest

from remora.config.names import host_aliases, qualify_host


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("reviews", "reviews.default.svc.cluster.local"),
        ("reviews.prod", "reviews.prod"),
        ("reviews.prod.svc", "reviews.prod.svc"),
        ("example.com", "example.com"),
        ("::1", "::1"),
        ("reviews.prod.svc.cluster.local", "reviews.prod.svc.cluster.local"),
        ("api.example.com", "api.example.com"),
        ("user-service.default.global", "user-service.default.global"),
        ("*.example.com", "*.example.com"),
        ("*", "*"),
        ("10.0.0.1", "10.0.0.1"),
    ],
)
def test_qualify_host_forms(host: str, expected: str) -> None:
    """Each documented host form qualifies to the documented FQDN (namespace default)."""
    assert qualify_host(host, "default") == expected


def test_qualify_host_uses_the_given_namespace_for_short_names_only() -> None:
    """A bare name takes the resource's namespace; a dotted name is taken as fully qualified (as Istio does)."""
    assert qualify_host("reviews", "blog") == "reviews.blog.svc.cluster.local"
    assert qualify_host("reviews.prod", "blog") == "reviews.prod"


def test_qualify_host_lowercases_and_drops_trailing_dot() -> None:
    """DNS is case-insensitive and a trailing dot only marks an absolute name."""
    assert qualify_host("Reviews", "Default") == "reviews.default.svc.cluster.local"
    assert qualify_host("API.Example.COM.", "default") == "api.example.com"


def test_qualify_host_custom_domain() -> None:
    """The cluster domain is a parameter, not hard-wired to cluster.local."""
    assert qualify_host("reviews", "default", domain="corp.internal") == "reviews.default.svc.corp.internal"
    assert qualify_host("reviews.ns.svc.corp.internal", "default", domain="corp.internal") == "reviews.ns.svc.corp.internal"


def test_host_aliases_of_a_cluster_service() -> None:
    """A cluster service FQDN is reachable by all its DNS search-path spellings, longest first."""
    assert host_aliases("reviews.default.svc.cluster.local") == [
        "reviews.default.svc.cluster.local",
        "reviews.default.svc",
        "reviews.default",
        "reviews",
    ]


def test_host_aliases_of_any_other_host_is_itself() -> None:
    """External hosts, wildcards and names in another domain have no short aliases."""
    assert host_aliases("api.example.com") == ["api.example.com"]
    assert host_aliases("*.example.com") == ["*.example.com"]
    assert host_aliases("reviews.default.svc.other.domain") == ["reviews.default.svc.other.domain"]
    assert host_aliases("a.b.reviews.default.svc.cluster.local") == ["a.b.reviews.default.svc.cluster.local"]


def test_host_aliases_custom_domain() -> None:
    """Aliases follow the domain parameter."""
    assert host_aliases("r.ns.svc.corp.internal", domain="corp.internal") == ["r.ns.svc.corp.internal", "r.ns.svc", "r.ns", "r"]


@pytest.mark.parametrize("host", ["reviews", "reviews.ns.svc.cluster.local"])
def test_aliases_of_a_service_include_its_short_name(host: str) -> None:
    """A cluster service's aliases contain the FQDN and the short name, which qualifies back to it."""
    fqdn = qualify_host(host, "ns")
    aliases = host_aliases(fqdn)
    assert aliases[0] == fqdn and qualify_host(aliases[-1], "ns") == fqdn
