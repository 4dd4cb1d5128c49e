"""TLS origination rules without sockets: validation, merged settings and their field path,
workloadSelector, host and SAN matching, file checks, credential directory layout."""
from __future__ import annotations

import shutil
import tempfile

import pytest
import yaml

from remora.config.loader import ConfigError, build_mesh_config
from remora.proxy.upstream.cluster import applicable_rules, build_clusters
from remora.proxy.security.identity import WorkloadIdentity
from remora.proxy.upstream.tls_origination import (
    CredentialUnavailable, OriginContexts, check_origination, names_match, request_host,
)
from tests.integration.tls_origin_servers import TestPki


def config(text: str):
    return build_mesh_config([(d, "t.yaml") for d in yaml.safe_load_all(text) if d], False)


def problems(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        config(text)
    return {issue.field_path: issue.message for issue in caught.value.issues}


SE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 443}, {number: 8080, name: alt, protocol: HTTP}]
  resolution: DNS
  subjectAltNames: [api.example.com]
"""


def rule(body: str, name: str = "api", namespace: str = "shop") -> str:
    return f"""
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  host: api.example.com
{body}"""


@pytest.fixture()
def pki():
    directory = tempfile.mkdtemp(prefix="remora-tlsorig-unit-")
    pki = TestPki(directory)
    yield pki
    shutil.rmtree(directory)


def test_istio_tls_validation_rules():
    """credentialName excludes file fields; MUTUAL needs cert and key; insecureSkipVerify excludes caCertificates/SANs."""
    found = problems(SE + rule("  trafficPolicy: {tls: {mode: MUTUAL, credentialName: c, caCertificates: /ca.pem}}"))
    assert "credentialName" in found["spec.trafficPolicy.tls.caCertificates"]
    found = problems(SE + rule("  trafficPolicy: {portLevelSettings: [{port: {number: 80}, tls: {mode: MUTUAL}}]}"))
    assert "clientCertificate" in found["spec.trafficPolicy.portLevelSettings[0].tls.clientCertificate"]
    assert "privateKey" in found["spec.trafficPolicy.portLevelSettings[0].tls.privateKey"]
    found = problems(SE + rule("  trafficPolicy: {tls: {mode: SIMPLE, insecureSkipVerify: true, "
                               "caCertificates: /ca.pem, subjectAltNames: [a]}}"))
    assert set(found) == {"spec.trafficPolicy.tls.caCertificates", "spec.trafficPolicy.tls.subjectAltNames"}
    found = problems(SE + rule("  trafficPolicy: {tls: {mode: simple}}"))
    assert "unknown value 'simple'" in found["spec.trafficPolicy.tls.mode"]
    config(SE + rule("  trafficPolicy: {tls: {mode: MUTUAL, credentialName: c, insecureSkipVerify: true}}"))


def test_destination_rule_workload_selector_uses_match_labels():
    """Istio's DR workloadSelector is {matchLabels}: accepted; the ServiceEntry spelling {labels} is refused."""
    config(SE + rule("  workloadSelector: {matchLabels: {app: sleep}}"))
    assert "spec.workloadSelector.labels" in problems(SE + rule("  workloadSelector: {labels: {app: sleep}}"))


def test_workload_selector_rule_applies_only_to_matching_sidecars_of_its_namespace():
    """A selector rule wins for sidecars it selects (same namespace, labels match) and is ignored elsewhere."""
    text = (SE + rule("  trafficPolicy: {tls: {mode: DISABLE}}", "plain")
            + rule("  workloadSelector: {matchLabels: {app: sleep}}\n  trafficPolicy: {tls: {mode: SIMPLE}}", "egress"))
    cfg = config(text)
    assert not [w for w in cfg.warnings if "several DestinationRules" in w]
    pick = lambda ns, labels: applicable_rules(cfg, WorkloadIdentity(namespace=ns, labels=labels))["api.example.com"].name
    assert pick("shop", {"app": "sleep", "version": "v1"}) == "egress"
    assert pick("shop", {"app": "other"}) == "plain"
    assert pick("other-ns", {"app": "sleep"}) == "plain"
    assert applicable_rules(cfg)["api.example.com"].name == "plain"
    modes = lambda labels: {ep.tls_mode for ep in build_clusters(cfg, WorkloadIdentity(
        namespace="shop", labels=labels))["api.example.com"].clusters[(80, None)].endpoints}
    assert modes({"app": "sleep"}) == {"SIMPLE"} and modes({}) == {"DISABLE"}


def test_merged_tls_and_its_field_path_follow_istios_order():
    """Port-level settings override the rule's tls, a subset's override those: the path names the block used."""
    body = """  trafficPolicy:
    tls: {mode: SIMPLE, sni: rule}
    portLevelSettings: [{port: {number: 80}, tls: {mode: SIMPLE, sni: port}}]
  subsets:
  - name: v1
    trafficPolicy: {portLevelSettings: [{port: {number: 80}, tls: {mode: MUTUAL, credentialName: c}}]}
"""
    info = build_clusters(config(SE + rule(body)))["api.example.com"]
    assert (info.clusters[(80, None)].origination.sni, info.clusters[(80, None)].origination.path) == (
        "port", "spec.trafficPolicy.portLevelSettings[0].tls")
    assert (info.clusters[(8080, None)].origination.sni, info.clusters[(8080, None)].origination.path) == (
        "rule", "spec.trafficPolicy.tls")
    v1 = info.clusters[(80, "v1")].origination
    assert (v1.mode, v1.credential, v1.path) == ("MUTUAL", "c", "spec.subsets[0].trafficPolicy.portLevelSettings[0].tls")
    assert info.clusters[(80, None)].endpoints[0].port == 443     # targetPort


def test_request_host_strips_port_and_brackets():
    """The auto-SNI host is the Host header's host: lowercased, no port, no IPv6 brackets."""
    assert request_host(b"API.example.com:8080") == "api.example.com"
    assert request_host(b"api.example.com") == "api.example.com"
    assert request_host(b"[::1]:80") == "::1"
    assert request_host(b"") is None and request_host(None) is None


def test_subject_alt_name_matching():
    """DNS SANs compare case-insensitively with one-label wildcards; URI and IP SANs exactly."""
    sans = (("DNS", "*.example.com"), ("URI", "spiffe://td/ns/a/sa/b"), ("IP Address", "127.0.0.1"))
    assert names_match(["API.example.com"], sans)
    assert not names_match(["a.b.example.com"], sans) and not names_match(["example.com"], sans)
    assert names_match(["spiffe://td/ns/a/sa/b"], sans) and not names_match(["spiffe://td/ns/a"], sans)
    assert names_match(["127.0.0.1"], sans) and not names_match(["127.0.0.2"], sans)


def test_unreadable_files_refuse_the_config_naming_the_field(pki):
    """A caCertificates that is not PEM, a key that does not go with its certificate: ConfigError per field."""
    ca = pki.ca("ca")
    cert, _ = pki.leaf("ca", "client", client=True)
    _, other_key = pki.leaf("ca", "other", client=True)
    body = f"""  trafficPolicy:
    tls: {{mode: MUTUAL, caCertificates: {cert}.missing, clientCertificate: {cert}, privateKey: {other_key}}}
    portLevelSettings: [{{port: {{number: 8080}}, tls: {{mode: SIMPLE, caCertificates: {other_key}}}}}]
"""
    clusters = [c for info in build_clusters(config(SE + rule(body))).values() for c in info.clusters.values()]
    with pytest.raises(ConfigError) as caught:
        check_origination(clusters, OriginContexts())
    found = {(i.resource, i.field_path): i.message for i in caught.value.issues}
    assert "no such file" in found[("DestinationRule/shop/api", "spec.trafficPolicy.tls.caCertificates")]
    assert "no PEM certificate" in found[("DestinationRule/shop/api",
                                          "spec.trafficPolicy.portLevelSettings[0].tls.caCertificates")]
    body = f"  trafficPolicy: {{tls: {{mode: MUTUAL, caCertificates: {ca}, clientCertificate: {cert}, privateKey: {other_key}}}}}\n"
    clusters = [c for info in build_clusters(config(SE + rule(body))).values() for c in info.clusters.values()]
    with pytest.raises(ConfigError) as caught:
        check_origination(clusters, OriginContexts())
    [issue] = caught.value.issues
    assert issue.field_path == "spec.trafficPolicy.tls.privateKey" and "does not go with" in issue.message


def test_credential_directory_layouts(pki, tmp_path):
    """<dir>/<name>/tls.crt,tls.key,ca.crt or Istio's cert,key,cacert; the CA may be in <name>-cacert/; missing -> unavailable."""
    ca = pki.ca("ca")
    cert, key = pki.leaf("ca", "client", client=True)
    (tmp_path / "tlsform").mkdir()
    for name, source in (("tls.crt", cert), ("tls.key", key), ("ca.crt", ca)):
        shutil.copy(source, tmp_path / "tlsform" / name)
    (tmp_path / "opaque").mkdir()
    (tmp_path / "opaque-cacert").mkdir()
    for name, source in (("opaque/cert", cert), ("opaque/key", key), ("opaque-cacert/cacert", ca)):
        shutil.copy(source, tmp_path / name)
    cfg = lambda cred: config(SE + rule(f"  trafficPolicy: {{tls: {{mode: MUTUAL, credentialName: {cred}}}}}"))
    contexts = OriginContexts(str(tmp_path))
    for cred in ("tlsform", "opaque"):
        origin = build_clusters(cfg(cred))["api.example.com"].clusters[(80, None)].origination
        assert contexts.context_for(origin) is contexts.context_for(origin)   # built once per file version
    origin = build_clusters(cfg("absent"))["api.example.com"].clusters[(80, None)].origination
    with pytest.raises(CredentialUnavailable, match="absent"):
        contexts.context_for(origin)
    with pytest.raises(CredentialUnavailable, match="--credentials-dir"):
        OriginContexts(None).context_for(origin)


class Waiter:
    """A request waiting in a circuit's pending queue (the PoolCallbacks an attempt offers)."""

    def __init__(self) -> None:
        self.got = None

    def on_pool_ready(self, conn, reused: bool) -> None:
        self.got = conn


def _auto_sni_pool():
    import asyncio
    from remora.proxy.upstream.http1_connection import UpstreamHttp1
    from remora.proxy.upstream.pool import EndpointPool
    from tests.unit.test_pool import FakeTransport, RecordingAttempt

    class ConnectRecordingPool(EndpointPool):
        """Records the connections it is asked to open instead of dialling."""
        __slots__ = ("connects",)

        def connect(self, waiter, authority) -> None:
            self.circuit.open += 1
            self.connects.append((waiter, authority))

    loop = asyncio.new_event_loop()
    pool = ConnectRecordingPool("127.0.0.1", 9, loop)
    pool.connects = []
    pool.by_host = True

    def conn(host: str):
        c = UpstreamHttp1(pool)
        c.connection_made(FakeTransport())
        c.tls_host = host
        pool.active.add(c)
        pool.circuit.open += 1
        attempt = RecordingAttempt()
        c.start_request(attempt, attempt, b"GET", b"/", host.encode(), [], b"", b"", None, False, None, False)
        return c
    return pool, conn, loop


def test_auto_sni_pool_reuses_only_connections_made_for_the_request_host():
    """With auto SNI a pooled connection serves only requests whose Host (without port) it was made for."""
    pool, conn, loop = _auto_sni_pool()
    a, b = conn("a.example.com"), conn("b.example.com")
    a.release(True)
    b.release(True)
    assert pool.acquire(b"A.example.com:80") is a
    assert pool.acquire(b"a.example.com") is None
    assert pool.acquire(b"b.example.com") is b
    loop.close()


def test_auto_sni_pool_hands_a_waiter_its_host_or_frees_a_slot():
    """A released connection goes to a waiter for its host; for another host it closes so the waiter can connect."""
    pool, conn, loop = _auto_sni_pool()
    a = conn("a.example.com")
    same = Waiter()
    assert pool.circuit.wait(same, pool, b"a.example.com")
    a.release(True)
    assert same.got is a and not pool.circuit.pending
    other = Waiter()
    assert pool.circuit.wait(other, pool, b"b.example.com")
    a.release(True)
    assert pool.connects == [(other, b"b.example.com")] and a.is_closed() and not pool.idle
    loop.close()


def test_a_pushed_version_naming_a_missing_file_is_refused_and_the_old_one_kept():
    """Worker.apply raises ConfigError (the xDS client NACKs it) and keeps serving the previous version."""
    import asyncio
    from remora.proxy.process.worker import ProxyOptions, Worker

    good = config(SE + rule("  trafficPolicy: {tls: {mode: SIMPLE}}"))
    bad = config(SE + rule("  trafficPolicy: {tls: {mode: SIMPLE, caCertificates: /nonexistent/ca.pem}}"))

    async def scenario():
        worker = Worker(ProxyOptions(admin_port=0, outbound_port=0), good)
        before = worker.snapshot
        with pytest.raises(ConfigError, match=r"spec\.trafficPolicy\.tls\.caCertificates"):
            worker.apply(bad)
        assert worker.snapshot is before
    asyncio.run(scenario())


def test_envoy_renderer_applies_workload_selector_rules_for_the_given_workload():
    """render_bootstrap picks a selector rule only for a matching (namespace, labels) workload, as the proxy does."""
    from remora.xds.envoy import render_bootstrap
    from tests.envoy_render_inputs import documents

    text = (SE + rule("  trafficPolicy: {tls: {mode: DISABLE}}", "plain")
            + rule("  workloadSelector: {matchLabels: {app: sleep}}\n"
                   "  trafficPolicy: {tls: {mode: SIMPLE, insecureSkipVerify: true, sni: api.example.com}}", "egress"))
    config(text)

    def socket(workload):
        boot = render_bootstrap(documents(text), 15001, 15000, workload=workload)
        [cluster] = [c for c in boot["static_resources"]["clusters"] if c["name"] == "outbound|80||api.example.com"]
        return cluster.get("transport_socket")
    assert socket(("shop", {"app": "sleep"}))["typed_config"]["sni"] == "api.example.com"
    assert socket(("shop", {"app": "other"})) is None
    assert socket(None) is None
