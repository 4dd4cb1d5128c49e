"""Outbound TLS decisions: auto-mTLS mode per endpoint, Istio's SNI, secure naming, origination settings."""
from __future__ import annotations

import yaml

from remora.config.loader import build_mesh_config
from remora.proxy.upstream.cluster import build_clusters
from remora.proxy.upstream.upstream_tls import (
    DISABLE, ISTIO_MUTUAL, TLS_MODE_LABEL, SecureNaming, endpoint_tls_mode, outbound_sni,
)

ISTIO = {TLS_MODE_LABEL: "istio"}


def config(text: str):
    return build_mesh_config([(d, "t.yaml") for d in yaml.safe_load_all(text) if d], False)


MESH = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  location: MESH_INTERNAL
  subjectAltNames: ["spiffe://cluster.local/ns/shop/sa/extra"]
  endpoints:
  - {address: 127.0.0.1, ports: {http: 1001}, labels: {version: v1, security.istio.io/tlsMode: istio}, serviceAccount: ratings-v1}
  - {address: 127.0.0.2, ports: {http: 1002}, labels: {version: v2, security.istio.io/tlsMode: istio}}
  - {address: 127.0.0.3, ports: {http: 1003}, labels: {version: v3}}
"""


def rule(policy: str, subsets: str = "") -> str:
    return f"""
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ratings, namespace: shop}}
spec:
  host: ratings
  trafficPolicy: {policy}
  subsets: [{subsets}]
"""


def modes(text: str, subset: str | None = None) -> dict[str, str]:
    info = build_clusters(config(text))["ratings.shop.svc.cluster.local"]
    return {ep.host: ep.tls_mode for ep in info.clusters[(9080, subset)].endpoints}


class Policy:
    def __init__(self, mode):
        self.tls = None if mode is None else type("Tls", (), {"mode": mode})()


def test_auto_mtls_follows_the_endpoint_label_when_no_rule_sets_a_mode():
    """Without a DR tls mode, only endpoints labelled security.istio.io/tlsMode=istio are dialled with mTLS."""
    assert endpoint_tls_mode(None, ISTIO) == ISTIO_MUTUAL
    assert endpoint_tls_mode(None, {}) == DISABLE
    assert endpoint_tls_mode(Policy(None), {TLS_MODE_LABEL: "disabled"}) == DISABLE
    assert modes(MESH) == {"127.0.0.1": ISTIO_MUTUAL, "127.0.0.2": ISTIO_MUTUAL, "127.0.0.3": DISABLE}


def test_destination_rule_mode_overrides_the_label():
    """ISTIO_MUTUAL forces mTLS (even unlabelled); DISABLE dials plaintext; SIMPLE and MUTUAL originate TLS."""
    assert endpoint_tls_mode(Policy("ISTIO_MUTUAL"), {}) == ISTIO_MUTUAL
    assert endpoint_tls_mode(Policy("DISABLE"), ISTIO) == DISABLE
    for mode in ("SIMPLE", "MUTUAL"):
        assert endpoint_tls_mode(Policy(mode), ISTIO) == mode
        assert endpoint_tls_mode(Policy(mode), {}) == mode
    assert set(modes(MESH + rule("{tls: {mode: ISTIO_MUTUAL}}")).values()) == {ISTIO_MUTUAL}
    assert set(modes(MESH + rule("{tls: {mode: DISABLE}}")).values()) == {DISABLE}


def test_subset_and_port_level_tls_modes_apply_to_their_cluster_only():
    """A subset's tls mode and a port-level one override the rule's, for that cluster."""
    text = MESH + rule("{tls: {mode: DISABLE}}",
                       "{name: v1, labels: {version: v1}, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}")
    assert modes(text, "v1") == {"127.0.0.1": ISTIO_MUTUAL}
    assert set(modes(text).values()) == {DISABLE}
    ported = MESH + rule("{portLevelSettings: [{port: {number: 9080}, tls: {mode: DISABLE}}]}")
    assert set(modes(ported).values()) == {DISABLE}


def test_sni_is_istios_outbound_name():
    """SNI is outbound_.<port>_.<subset>_.<fqdn>, with an empty subset for the default cluster."""
    assert outbound_sni(9080, None, "ratings.shop.svc.cluster.local") == "outbound_.9080_._.ratings.shop.svc.cluster.local"
    assert outbound_sni(9080, "v1", "r.shop.svc.cluster.local") == "outbound_.9080_.v1_.r.shop.svc.cluster.local"


def test_secure_naming_prefers_the_endpoints_own_service_account():
    """An endpoint with a service account must present exactly that identity, in this sidecar's trust domain."""
    naming = SecureNaming("shop", ["a", "b"], ["spiffe://other/x"])
    assert naming.expected("a", "example.org") == {"spiffe://example.org/ns/shop/sa/a"}


def test_secure_naming_falls_back_to_the_service_identities_then_to_any():
    """Without its own account: every account of the service plus SE and DR subjectAltNames; none known: any."""
    naming = SecureNaming("shop", ["a", None, "b"], ["spiffe://cluster.local/ns/x/sa/y"])
    assert naming.expected(None, "cluster.local") == {
        "spiffe://cluster.local/ns/shop/sa/a", "spiffe://cluster.local/ns/shop/sa/b",
        "spiffe://cluster.local/ns/x/sa/y"}
    assert SecureNaming("shop", [None], []).expected(None, "cluster.local") is None


def test_clusters_collect_service_accounts_and_subject_alt_names():
    """The compiled cluster's naming holds the service's accounts, the SE's and the DR's subjectAltNames."""
    text = MESH + rule('{tls: {mode: ISTIO_MUTUAL, subjectAltNames: ["spiffe://cluster.local/ns/shop/sa/dr"]}}',
                       "{name: v2, labels: {version: v2}}")
    info = build_clusters(config(text))["ratings.shop.svc.cluster.local"]
    # The v2 subset has only the endpoint without an account: the whole service's identities apply.
    v2 = info.clusters[(9080, "v2")]
    assert v2.naming.expected(None, "cluster.local") == {
        "spiffe://cluster.local/ns/shop/sa/ratings-v1", "spiffe://cluster.local/ns/shop/sa/extra",
        "spiffe://cluster.local/ns/shop/sa/dr"}


def test_origination_modes_load_without_a_plaintext_warning():
    """SIMPLE / MUTUAL load as TLS origination: no "dialled in plaintext" warning, the cluster carries its settings."""
    text = MESH + rule("{tls: {mode: SIMPLE, sni: api.example.com}}")
    assert not [w for w in config(text).warnings if "tls.mode" in w or "plaintext" in w]
    cluster = build_clusters(config(text))["ratings.shop.svc.cluster.local"].clusters[(9080, None)]
    assert cluster.origination.mode == "SIMPLE" and cluster.origination.sni == "api.example.com"
    assert cluster.origination.path == "spec.trafficPolicy.tls"
    assert cluster.origination.service_sans == ("spiffe://cluster.local/ns/shop/sa/extra",)
    assert build_clusters(config(MESH + rule("{tls: {mode: ISTIO_MUTUAL}}")))[
        "ratings.shop.svc.cluster.local"].clusters[(9080, None)].origination is None
