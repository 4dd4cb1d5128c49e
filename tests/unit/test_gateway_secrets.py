"""Gateway credentialName from Kubernetes Secrets: the Secret -> credential mapping (Istio's key
names), the contexts kept current as credentials change, and fail-closed refusal."""
from __future__ import annotations

import base64

import pytest

from remora.certs.credential import Credential
from remora.config.model_gateway import ServerTLSSettings
from remora.kube.secrets import SECRET, KubernetesCredentials, secret_credential
from remora.proxy.security.gateway_credentials import CredentialContexts, certificate_info
from remora.proxy.security.gateway_tls import REFUSED, GatewayTlsError, PortTls
from tests.integration.tls_origin_servers import TestPki
from tests.kube_api import FakeKubeApi


def secret(name: str, data: dict, kind: str = "kubernetes.io/tls") -> dict:
    return {"metadata": {"name": name, "namespace": "istio-system", "resourceVersion": "7"}, "type": kind,
            "data": {k: base64.b64encode(v).decode() if isinstance(v, bytes) else v for k, v in data.items()}}


def test_kubernetes_tls_secret_keys():
    """A kubernetes.io/tls Secret gives tls.crt, tls.key and ca.crt, and names itself as the origin."""
    got = secret_credential(secret("web", {"tls.crt": b"C", "tls.key": b"K", "ca.crt": b"A"}))
    assert (got.cert_pem, got.key_pem, got.ca_pem) == (b"C", b"K", b"A")
    assert "secret istio-system/web" in got.origin and "kubernetes.io/tls" in got.origin


def test_generic_secret_keys_win_over_tls_keys():
    """Istio's generic cert/key/cacert are read first, as Istio's ExtractCertInfo does."""
    got = secret_credential(secret("web", {"cert": b"C", "key": b"K", "cacert": b"A", "tls.crt": b"x",
                                           "tls.key": b"y", "ca.crt": b"z"}, "Opaque"))
    assert (got.cert_pem, got.key_pem, got.ca_pem) == (b"C", b"K", b"A")


@pytest.mark.parametrize("data", [{"tls.crt": b"C"}, {"tls.crt": b"C", "tls.key": b""},
                                  {"cert": b"C", "tls.key": b"K"}, {"tls.crt": b"C", "tls.key": "not base64!"}, {}])
def test_a_secret_without_a_whole_pair_is_no_credential(data):
    """A missing, empty or undecodable key, or a mixed pair, gives no credential (fail closed)."""
    assert secret_credential(secret("web", data)) is None


def test_the_cacert_secret_is_the_ca_even_without_one():
    """`<name>-cacert` gives the CA; when it exists but holds none, there is none (Istio's GetCaCert)."""
    own = secret("web", {"tls.crt": b"C", "tls.key": b"K", "ca.crt": b"OWN"})
    assert secret_credential(own, secret("web-cacert", {"ca.crt": b"SEP"})).ca_pem == b"SEP"
    assert secret_credential(own, secret("web-cacert", {"other": b"x"})).ca_pem is None


class Source:
    """A CredentialSource double: a dict, and a notify() the test calls."""

    description = "test"

    def __init__(self, watches: bool = True) -> None:
        self.watches = watches
        self.items: dict[str, Credential] = {}
        self.callbacks = []

    def get(self, name):
        return self.items.get(name)

    def missing(self, name):
        return f"no {name} here"

    def subscribe(self, callback):
        self.callbacks.append(callback)

    def notify(self):
        for callback in self.callbacks:
            callback()


def pem(pki: TestPki, ca: str, name: str, with_ca: bool = False) -> Credential:
    cert, key = pki.leaf(ca, name, dns=["a.example.com"])
    ca_pem = open(f"{pki.directory}/{ca}.crt", "rb").read() if with_ca else None
    return Credential(open(cert, "rb").read(), open(key, "rb").read(), ca_pem, f"test {name}")


SIMPLE = ServerTLSSettings(mode="SIMPLE", credential_name="web")


def test_a_rotated_credential_serves_the_next_handshake_and_a_deleted_one_refuses(tmp_path):
    """After notify(), select() gives a context with the new certificate; once gone, REFUSED and counted."""
    pki, source = TestPki(str(tmp_path)), Source()
    pki.ca("example.com")
    source.items["web"] = first = pem(pki, "example.com", "one")
    contexts = CredentialContexts(source)
    port = PortTls([(["a.example.com"], SIMPLE, "spec.servers[0].tls")], contexts)
    before = port.select("a.example.com")
    assert contexts.dump()["credentials"]["web"]["serial"] == certificate_info(first.cert_pem)["serial"]
    source.items["web"] = second = pem(pki, "example.com", "two")
    source.notify()
    after = port.select("a.example.com")
    assert after is not before
    assert contexts.dump()["credentials"]["web"]["serial"] == certificate_info(second.cert_pem)["serial"]
    del source.items["web"]
    source.notify()
    assert port.select("a.example.com") is REFUSED
    dump = contexts.dump()
    assert dump["credentials"]["web"]["state"] == "refused" and dump["refused_handshakes"] == 1
    source.items["web"] = pem(pki, "example.com", "three")
    source.notify()
    assert port.select("a.example.com") not in (None, REFUSED)


def test_a_change_of_another_credential_rebuilds_nothing(tmp_path):
    """A notification for another Secret of the namespace keeps the contexts (no rebuild, same object)."""
    pki, source = TestPki(str(tmp_path)), Source()
    pki.ca("example.com")
    source.items["web"] = pem(pki, "example.com", "one")
    contexts = CredentialContexts(source)
    port = PortTls([(["a.example.com"], SIMPLE, "spec.servers[0].tls")], contexts)
    before = port.select("a.example.com")
    source.items["other"] = pem(pki, "example.com", "other")
    source.notify()
    assert port.select("a.example.com") is before and contexts.stats()["gateway.credentials.rebuilds"] == 0


def test_a_missing_or_corrupt_credential_refuses_the_config_by_field_when_the_source_cannot_tell(tmp_path):
    """From a source that never notifies (files): no credential, a key that does not parse, or MUTUAL
    without a CA is a GatewayTlsError on tls.credentialName."""
    pki, source = TestPki(str(tmp_path)), Source(watches=False)
    pki.ca("example.com")
    contexts = CredentialContexts(source)
    servers = lambda tls: [(["a.example.com"], tls, "spec.servers[0].tls")]  # noqa: E731
    with pytest.raises(GatewayTlsError, match="no web here") as caught:
        PortTls(servers(SIMPLE), contexts)
    assert caught.value.path == "spec.servers[0].tls.credentialName"
    good = pem(pki, "example.com", "one")
    source.items["web"] = Credential(good.cert_pem, b"garbage", None, "test")
    with pytest.raises(GatewayTlsError, match="cannot use"):
        PortTls(servers(SIMPLE), contexts)
    source.items["web"] = good
    with pytest.raises(GatewayTlsError, match="MUTUAL needs a client CA"):
        PortTls(servers(ServerTLSSettings(mode="MUTUAL", credential_name="web")), contexts)
    source.items["web"] = pem(pki, "example.com", "two", with_ca=True)
    PortTls(servers(ServerTLSSettings(mode="MUTUAL", credential_name="web")), contexts)


def test_a_credential_missing_from_a_watching_source_is_waited_for_with_handshakes_refused(tmp_path):
    """From a source that notifies (Kubernetes): the config is taken, the server refuses handshakes
    until the credential arrives, then serves it; a bad cipher setting still refuses the config."""
    pki, source = TestPki(str(tmp_path)), Source()
    pki.ca("example.com")
    contexts = CredentialContexts(source)
    port = PortTls([(["a.example.com"], SIMPLE, "spec.servers[0].tls")], contexts)
    assert port.select("a.example.com") is REFUSED
    assert contexts.dump()["credentials"]["web"] == {"origin": None, "state": "refused",
                                                     "error": "credentialName web: no web here"}
    source.items["web"] = pem(pki, "example.com", "one")
    source.notify()
    assert port.select("a.example.com") not in (None, REFUSED)
    assert contexts.dump()["credentials"]["web"]["state"] == "serving"
    bad = ServerTLSSettings(mode="SIMPLE", credential_name="other", cipher_suites=["NO-SUCH-CIPHER"])
    with pytest.raises(GatewayTlsError, match="cipher"):
        PortTls([(["b.example.com"], bad, "spec.servers[1].tls")], contexts)


async def test_kubernetes_credentials_read_only_their_namespace():
    """The gateway lists and watches /api/v1/namespaces/<ns>/secrets, never the cluster's Secrets."""
    api = await FakeKubeApi([SECRET]).start()
    source = KubernetesCredentials("istio-system", api.kubeconfig(), log=lambda m: None, sync_timeout=5)
    try:
        api.put("Secret", secret("web", {"tls.crt": b"C", "tls.key": b"K"}))
        await source.start()
        assert source.get("web").cert_pem == b"C"
        assert {path for _, path, _ in api.requests} == {"/api/v1/namespaces/istio-system/secrets"}
    finally:
        await source.stop()
        await api.close()


def test_a_lone_kubeconfig_is_a_usage_error():
    """--kubeconfig without --credentials-from-kubernetes is refused (it would be ignored)."""
    from remora.cli import main
    assert main(["gateway", "--mesh-config", "/dev/null", "--kubeconfig", "/x"]) == 2
