"""SPIFFE ID rules: the format and validation stated in remora/certs/spiffe.py."""
from __future__ import annotations

import pytest

from remora.certs.spiffe import (
    InvalidSpiffeId,
    SpiffeId,
    validate_namespace,
    validate_service_account,
    validate_trust_domain,
)


def test_format_and_parse_round_trip():
    """A workload ID formats as spiffe://td/ns/ns/sa/sa and parses back to the same value."""
    sid = SpiffeId("cluster.local", "bookinfo", "reviews-v2")
    assert str(sid) == sid.uri == "spiffe://cluster.local/ns/bookinfo/sa/reviews-v2"
    assert SpiffeId.parse(str(sid)) == sid


def test_service_account_may_be_a_dns_subdomain():
    """Kubernetes ServiceAccount names are DNS subdomains, so dots are allowed in the sa part."""
    assert SpiffeId.parse("spiffe://example.org/ns/default/sa/build.bot-1").service_account == "build.bot-1"


def test_trust_domain_charset_per_spiffe():
    """Trust domains allow a-z 0-9 . - _ (underscore included, as the SPIFFE standard says)."""
    assert validate_trust_domain("my_td-1.example") == "my_td-1.example"


@pytest.mark.parametrize("text, fragment", [
    ("https://cluster.local/ns/a/sa/b", "scheme is 'https'"),
    ("SPIFFE://cluster.local/ns/a/sa/b", "must be lowercase"),
    ("cluster.local/ns/a/sa/b", "missing 'spiffe://'"),
    ("spiffe://Cluster.Local/ns/a/sa/b", "must be lowercase"),
    ("spiffe://clu$ter/ns/a/sa/b", "contains '$'"),
    ("spiffe:///ns/a/sa/b", "trust domain is empty"),
    ("spiffe://td:8443/ns/a/sa/b", "port"),
    ("spiffe://user@td/ns/a/sa/b", "userinfo"),
    ("spiffe://td/ns/a/sa/b?x=1", "query"),
    ("spiffe://td/ns/a/sa/b#frag", "fragment"),
    ("spiffe://td/ns/a%20b/sa/b", "percent-encoding"),
    ("spiffe://td", "no workload path"),
    ("spiffe://td/", "no workload path"),
    ("spiffe://td/ns/a/sa/b/extra", "is not /ns/<namespace>/sa/<service-account>"),
    ("spiffe://td/namespace/a/sa/b", "is not /ns/<namespace>/sa/<service-account>"),
    ("spiffe://td/ns//sa/b", "namespace is empty"),
    ("spiffe://td/ns/Default/sa/b", "namespace 'Default' must be lowercase"),
    ("spiffe://td/ns/-a/sa/b", "namespace '-a' must be a-z 0-9"),
    ("spiffe://td/ns/a.b/sa/b", "namespace 'a.b' must be a-z 0-9"),
    ("spiffe://td/ns/a/sa/b..c", "service account 'b..c'"),
    ("spiffe://td/ns/a/sa/.b", "service account '.b'"),
    ("spiffe://td/ns/" + "a" * 64 + "/sa/b", "at most 63 allowed"),
    ("spiffe://" + "t" * 256 + "/ns/a/sa/b", "at most 255 allowed"),
    ("spiffe://td/ns/a/sa/" + "b" * 2040, "longer than 2048 bytes"),
])
def test_invalid_ids_are_refused_naming_the_problem(text, fragment):
    """Every rule violation raises InvalidSpiffeId whose message names the broken part."""
    with pytest.raises(InvalidSpiffeId) as caught:
        SpiffeId.parse(text)
    assert fragment in str(caught.value)


def test_constructor_validates_parts():
    """Building a SpiffeId from parts applies the same rules as parsing."""
    with pytest.raises(InvalidSpiffeId, match="service account 'Web' must be lowercase"):
        SpiffeId("cluster.local", "default", "Web")
    with pytest.raises(InvalidSpiffeId, match="trust domain 'a/b' contains '/'"):
        SpiffeId("a/b", "default", "web")


def test_label_validators_are_usable_alone():
    """The namespace and service-account checks are exposed for other inputs (tokens, flags)."""
    assert validate_namespace("kube-system") == "kube-system"
    assert validate_service_account("a.b-c") == "a.b-c"
    with pytest.raises(InvalidSpiffeId, match="namespace is empty"):
        validate_namespace("")
    with pytest.raises(InvalidSpiffeId, match="at most 253 allowed"):
        validate_service_account("a" * 254)


def test_parse_refuses_non_strings():
    """A non-string ID is an InvalidSpiffeId, not a crash deep inside."""
    with pytest.raises(InvalidSpiffeId, match="must be a string"):
        SpiffeId.parse(b"spiffe://td/ns/a/sa/b")  # type: ignore[arg-type]
