"""The benchmark's Envoy rendering of Istio mutual TLS, and the certificates both data planes share."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmarks.certs import issue_cert_dirs, spiffe_id
from remora.xds.envoy import Unsupported, render_bootstrap, render_inbound_bootstrap
from benchmarks.mesh import MESH_NAMESPACE, SERVER_LABELS, load_documents, two_hop_yaml
from remora.config.loader import load_mesh_text
from remora.proxy.security.tls import load_cert_dir

CERTS = Path("/certs/client")
SERVER_ID = "spiffe://cluster.local/ns/bench/sa/server"


def _docs(**changes) -> list[dict]:
    """The 2-hop YAML's documents, with `changes` = {kind: function(doc)} applied."""
    docs = load_documents(two_hop_yaml(15006))
    for doc in docs:
        if doc["kind"] in changes:
            changes[doc["kind"]](doc)
    return docs


def _cluster(docs: list[dict], cert_dir: Path | None = CERTS) -> dict:
    return render_bootstrap(docs, 15001, 15000, cert_dir)["static_resources"]["clusters"][0]


def _drop_dr_tls(doc: dict) -> None:
    del doc["spec"]["trafficPolicy"]["tls"]


def _inbound(docs: list[dict]) -> dict:
    boot = render_inbound_bootstrap(docs, namespace=MESH_NAMESPACE, labels=SERVER_LABELS,
                                    inbound_port=15006, app_port=9080, admin_port=15000,
                                    cert_dir=Path("/certs/server"))
    return boot["static_resources"]["listeners"][0]


def test_the_two_hop_yaml_is_valid_remora_config():
    """Remora's own loader accepts the scenario's YAML (the one both data planes come from)."""
    config = load_mesh_text(two_hop_yaml(15006))
    assert [p.spec.mtls.mode for p in config.peer_authentications] == ["STRICT"]


def test_istio_mutual_cluster_presents_the_svid_and_checks_the_server_identity():
    """ISTIO_MUTUAL: UpstreamTlsContext with Istio's SNI, the client's files, root-cert.pem, exact
    server SPIFFE ID, Remora's ALPN and TLS 1.2-1.3."""
    socket = _cluster(_docs())["transport_socket"]
    ctx = socket["typed_config"]
    assert ctx["@type"].endswith("UpstreamTlsContext")
    assert ctx["sni"] == "outbound_.80_._.server.bench.svc.cluster.local"
    common = ctx["common_tls_context"]
    assert common["tls_certificates"] == [{
        "certificate_chain": {"filename": "/certs/client/cert-chain.pem"},
        "private_key": {"filename": "/certs/client/key.pem"}}]
    validation = common["validation_context"]
    assert validation["trusted_ca"] == {"filename": "/certs/client/root-cert.pem"}
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"exact": SERVER_ID}}]
    assert common["alpn_protocols"] == ["remora", "http/1.1"]
    assert common["tls_params"] == {"tls_minimum_protocol_version": "TLSv1_2",
                                    "tls_maximum_protocol_version": "TLSv1_3"}


def test_auto_mtls_uses_tls_only_for_endpoints_labelled_tls_mode_istio():
    """Without DestinationRule tls, a tlsMode=istio endpoint gets TLS by socket match, others not."""
    def add_plain_endpoint(doc):
        doc["spec"]["endpoints"].append({"address": "127.0.0.2", "ports": {"http": 80}})

    cluster = _cluster(_docs(DestinationRule=_drop_dr_tls, ServiceEntry=add_plain_endpoint))
    assert "transport_socket" not in cluster
    labelled, plain = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert labelled["metadata"]["filter_metadata"]["envoy.transport_socket_match"] == \
        {"tlsMode": "istio"}
    assert "metadata" not in plain
    matches = {m["name"]: m for m in cluster["transport_socket_matches"]}
    assert matches["tlsMode-istio"]["match"] == {"tlsMode": "istio"}
    assert matches["tlsMode-istio"]["transport_socket"]["name"] == "envoy.transport_sockets.tls"
    assert matches["tlsMode-disabled"]["transport_socket"]["name"] == \
        "envoy.transport_sockets.raw_buffer"


def test_subject_alt_names_of_the_service_entry_are_accepted_identities_too():
    """Secure naming takes the endpoints' service accounts plus ServiceEntry subjectAltNames."""
    other = "spiffe://cluster.local/ns/bench/sa/canary"

    def add_san(doc):
        doc["spec"]["subjectAltNames"] = [other]

    ctx = _cluster(_docs(ServiceEntry=add_san))["transport_socket"]["typed_config"]
    sans = ctx["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"]
    assert [s["matcher"]["exact"] for s in sans] == [other, SERVER_ID]


def test_tls_disable_and_unlabelled_endpoints_stay_plaintext():
    """DestinationRule tls DISABLE renders no transport socket even for a tlsMode=istio endpoint."""
    def disable(doc):
        doc["spec"]["trafficPolicy"]["tls"]["mode"] = "DISABLE"

    cluster = _cluster(_docs(DestinationRule=disable), cert_dir=None)
    assert "transport_socket" not in cluster and "transport_socket_matches" not in cluster


@pytest.mark.parametrize("change, message", [
    (lambda d: d["spec"]["trafficPolicy"]["tls"].update(mode="SIMPLE", credentialName="c"),
     "trafficPolicy.tls: credentialName"),
    (lambda d: d["spec"]["trafficPolicy"]["tls"].update(sni="x"), "trafficPolicy.tls: sni"),
])
def test_untranslated_client_tls_is_refused(change, message):
    """credentialName (SDS) and extra ISTIO_MUTUAL tls fields raise Unsupported instead of rendering another setup."""
    with pytest.raises(Unsupported, match=message):
        _cluster(_docs(DestinationRule=change))


def test_mutual_tls_without_a_certificate_directory_names_the_cluster():
    """A mTLS cluster rendered with no certificate directory fails, naming the cluster."""
    with pytest.raises(Unsupported, match=r"outbound\|80\|\|server.bench.svc.cluster.local"):
        _cluster(_docs(), cert_dir=None)


def test_mutual_tls_without_any_server_identity_is_refused():
    """ISTIO_MUTUAL with no serviceAccount and no subjectAltNames cannot do secure naming."""
    def no_account(doc):
        del doc["spec"]["endpoints"][0]["serviceAccount"]

    with pytest.raises(Unsupported, match="serviceAccount"):
        _cluster(_docs(ServiceEntry=no_account))


def test_unknown_endpoint_fields_are_refused():
    """An endpoint field the renderer ignores (network) raises instead of being dropped."""
    def add_network(doc):
        doc["spec"]["endpoints"][0]["network"] = "n1"

    with pytest.raises(Unsupported, match=r"ServiceEntry bench/server spec.endpoints\[0\]: network"):
        _cluster(_docs(ServiceEntry=add_network))


def test_strict_inbound_requires_a_client_certificate_from_the_trust_domain():
    """STRICT: one filter chain with a DownstreamTlsContext requiring a cluster.local client SVID."""
    listener = _inbound(_docs())
    (chain,) = listener["filter_chains"]
    ctx = chain["transport_socket"]["typed_config"]
    assert ctx["@type"].endswith("DownstreamTlsContext")
    assert ctx["require_client_certificate"] is True
    validation = ctx["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"] == {"filename": "/certs/server/root-cert.pem"}
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"prefix": "spiffe://cluster.local/"}}]
    assert "listener_filters" not in listener


def test_inbound_routes_everything_to_the_app_and_sets_xfcc():
    """The inbound HCM sends every request to 127.0.0.1:app_port and replaces XFCC with the peer."""
    boot = render_inbound_bootstrap(_docs(), namespace=MESH_NAMESPACE, labels=SERVER_LABELS,
                                    inbound_port=15006, app_port=9080, admin_port=15000,
                                    cert_dir=Path("/certs/server"))
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    config = hcm["typed_config"]
    assert config["forward_client_cert_details"] == "SANITIZE_SET"
    assert config["set_current_client_cert_details"] == {"uri": True}
    assert config["generate_request_id"] is False
    (route,) = config["route_config"]["virtual_hosts"][0]["routes"]
    assert route["route"]["cluster"] == "inbound|9080||"
    (app,) = boot["static_resources"]["clusters"]
    ep = app["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert ep["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9080}
    assert app["circuit_breakers"]["thresholds"][0]["max_requests"] >= 10**9


def test_permissive_inbound_accepts_tls_and_plaintext_by_inspection():
    """PERMISSIVE (no PeerAuthentication): a TLS chain and a raw chain, told apart by tls_inspector."""
    docs = [d for d in _docs() if d["kind"] != "PeerAuthentication"]
    listener = _inbound(docs)
    protocols = [c["filter_chain_match"]["transport_protocol"] for c in listener["filter_chains"]]
    assert protocols == ["tls", "raw_buffer"]
    assert "transport_socket" not in listener["filter_chains"][1]
    assert listener["listener_filters"][0]["name"] == "envoy.filters.listener.tls_inspector"


def test_port_level_disable_overrides_a_strict_workload_policy():
    """A workload policy's portLevelMtls DISABLE for the app port gives a plaintext listener."""
    workload_policy = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                       "metadata": {"name": "server", "namespace": MESH_NAMESPACE},
                       "spec": {"selector": {"matchLabels": SERVER_LABELS},
                                "mtls": {"mode": "STRICT"},
                                "portLevelMtls": {9080: {"mode": "DISABLE"}}}}
    listener = _inbound([*_docs(), workload_policy])
    (chain,) = listener["filter_chains"]
    assert "transport_socket" not in chain


def test_invalid_peer_authentication_is_refused_with_the_loader_message():
    """A PeerAuthentication mode Remora would reject is not rendered for Envoy either."""
    def bad(doc):
        doc["spec"]["mtls"]["mode"] = "STRICTEST"

    with pytest.raises(Unsupported, match="STRICTEST"):
        _inbound(_docs(PeerAuthentication=bad))


def test_issued_cert_dirs_hold_each_identity_under_one_root(tmp_path):
    """issue_cert_dirs writes an Istio-layout directory per service account, same CA for all."""
    dirs = issue_cert_dirs(tmp_path, "bench", ["client", "server"])
    client, client_bundle = load_cert_dir(dirs["client"])
    server, server_bundle = load_cert_dir(dirs["server"])
    assert str(client.spiffe_id) == spiffe_id("bench", "client")
    assert str(server.spiffe_id) == SERVER_ID
    assert client_bundle == server_bundle and len(client_bundle) == 1
    assert (dirs["server"] / "key.pem").stat().st_mode & 0o077 == 0


def test_rendered_bootstraps_are_plain_yaml():
    """Both bootstraps serialise with yaml.safe_dump (what the runner writes for Envoy)."""
    docs = _docs()
    for boot in (render_bootstrap(docs, 1, 2, CERTS), render_inbound_bootstrap(
            docs, namespace=MESH_NAMESPACE, labels=SERVER_LABELS, inbound_port=3, app_port=4,
            admin_port=5, cert_dir=CERTS)):
        assert yaml.safe_load(yaml.safe_dump(boot)) == boot


def test_profile_buckets_take_the_innermost_telling_frame():
    """A sample counts as Python, SSL, syscall or parser by its innermost telling frame."""
    from benchmarks.profile_sidecars import NATIVE, PYTHON, bucket

    run = ["run_forever (loop.c:1)", "DownstreamHttp1.data_received (remora/proxy/codec/downstream.py:9)"]
    assert bucket([*run, "feed_data (parser.c:1)", "llhttp__internal_execute (llhttp.c:2)"]) \
        == "HTTP parser (llhttp)"
    assert bucket([*run, "on_header (remora/proxy/codec/downstream.py:3)", "Py_DECREF (object.h:5)"]) \
        == PYTHON
    assert bucket([*run, "_ssl__SSLSocket_write (_ssl.c:1)", "SSL_write (libssl.so.3)",
                   "aes_gcm_encrypt (libcrypto.so.3)"]) == "SSL_write (encrypt)"
    assert bucket(["UVStream__try_write (loop.c:1)", "write (libc.so.6)"]) == "write syscalls"
    assert bucket(["uv_run (core.c:1)", "uv__io_poll (linux.c:2)"]) == NATIVE
    assert bucket(["SSLProtocol_buffer_updated_impl (loop.c:3)", "SSLObject.read (ssl.py:4)"]) \
        == "TLS glue (uvloop SSLProtocol, ssl.SSLObject)"
