"""The control server's CA service: tokens in, SVIDs out, each refusal with its status and reason."""
from __future__ import annotations

import os

import pytest

from remora.certs import CaError, CertificateAuthority, JoinTokenStore, Svid, generate_key_and_csr
from remora.xds.ca_service import CaRequestError, CaService, CaSettings, check_cert_ttl
from remora.xds.metrics import ControlMetrics
from tests.unit.test_certs_tokens import Clock

TD = "cluster.local"
WEB = f"spiffe://{TD}/ns/shop/sa/web"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(tmp_path, clock) -> CaService:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", TD)
    return CaService(ca, JoinTokenStore(tmp_path / "ca", clock=clock), TD, ControlMetrics(), cert_ttl=3600)


def sample(metrics: ControlMetrics, name: str, **labels) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def refusal(call, *args) -> CaRequestError:
    with pytest.raises(CaRequestError) as caught:
        call(*args)
    return caught.value


def test_signed_svid_names_the_token_identity_and_chains_to_the_bundle(service):
    """A CSR with a valid token gets an SVID for the token's ns/sa, its chain and the trust bundle."""
    token = service.create_token({"namespace": "shop", "service_account": "web"})["token"]
    key, csr = generate_key_and_csr(WEB)
    answer = service.issue({"csr": csr, "token": token})
    svid = Svid.from_pems(answer["certificate"], answer["chain"], key)
    assert str(svid.spiffe_id) == answer["spiffe_id"] == WEB
    assert answer["trust_bundle"] == service.ca.trust_bundle()
    assert answer["serial"] == format(svid.serial, "x")
    assert 3600 <= svid.lifetime <= 3600 + 120   # --cert-ttl, plus the CA's clock-skew backdating
    assert sample(service.metrics, "remora_control_certificates_issued_total") == 1


def test_csr_for_another_identity_is_a_400_with_the_reason(service):
    """The identity comes from the token: a CSR naming another workload is refused (400, identity-mismatch)."""
    token = service.create_token({"namespace": "shop", "service_account": "web"})["token"]
    _, csr = generate_key_and_csr(f"spiffe://{TD}/ns/shop/sa/admin")
    error = refusal(service.issue, {"csr": csr, "token": token})
    assert (error.status, error.reason) == (400, "csr-identity-mismatch")
    assert "sa/admin" in str(error) and "sa/web" in str(error)
    assert sample(service.metrics, "remora_control_certificates_issued_total") == 0


def test_garbage_csr_is_a_400(service):
    """A body whose csr is not a certificate request is refused with 400 (csr-malformed)."""
    token = service.create_token({"namespace": "shop", "service_account": "web"})["token"]
    error = refusal(service.issue, {"csr": "hello", "token": token})
    assert (error.status, error.reason) == (400, "csr-malformed")


def test_revoked_expired_and_unknown_tokens_are_401_with_distinct_messages(service, clock):
    """Bad tokens are 401, and the message says which: unknown, revoked or expired."""
    _, csr = generate_key_and_csr(WEB)
    revoked = service.create_token({"namespace": "shop", "service_account": "web"})
    service.revoke_token(revoked["id"])
    expiring = service.create_token({"namespace": "shop", "service_account": "web", "ttl": "1m"})
    clock.now += 61
    unknown = "rmt_0123456789abcdef." + "A" * 43
    errors = {name: refusal(service.issue, {"csr": csr, "token": token})
              for name, token in [("revoked", revoked["token"]), ("expired", expiring["token"]),
                                  ("unknown", unknown)]}
    for name, error in errors.items():
        assert error.status == 401 and error.reason == f"token-{name}" and name in str(error)


def test_missing_fields_are_named(service):
    """A request without csr, token, namespace or service_account says which field is missing."""
    assert "csr" in str(refusal(service.issue, {"token": "x"}))
    assert "token" in str(refusal(service.issue, {"csr": "x"}))
    error = refusal(service.create_token, {"namespace": "shop"})
    assert error.status == 400 and "service_account" in str(error)


def test_token_ttl_accepts_seconds_or_durations_and_refuses_nonsense(service, clock):
    """ttl is seconds or a duration string; a bad or non-positive one is a 400 naming ttl."""
    assert service.create_token({"namespace": "a", "service_account": "b", "ttl": 90})["expires_at"] \
        == service.create_token({"namespace": "a", "service_account": "b", "ttl": "1m30s"})["expires_at"]
    for bad in ("soon", -5, 0):
        error = refusal(service.create_token, {"namespace": "a", "service_account": "b", "ttl": bad})
        assert error.status == 400 and str(error).startswith("ttl:")


def test_bad_namespace_is_a_400(service):
    """A namespace that is not a DNS label is refused with the SPIFFE rule's message."""
    error = refusal(service.create_token, {"namespace": "Shop", "service_account": "web"})
    assert error.status == 400 and "lowercase" in str(error)


def test_token_list_never_shows_secrets(service):
    """Listing shows id, identity, expiry and state, never the token or its hash."""
    created = service.create_token({"namespace": "shop", "service_account": "web"})
    listed = service.list_tokens()["tokens"]
    assert [t["id"] for t in listed] == [created["id"]]
    text = repr(listed)
    assert created["token"].split(".")[1] not in text and "sha256" not in text


def test_revoke_unknown_is_404_and_revoke_by_whole_token_echoes_only_the_id(service):
    """Revoking an unknown id is 404; revoking by the whole token answers with its id, not its secret."""
    assert refusal(service.revoke_token, "0123456789abcdef").status == 404
    created = service.create_token({"namespace": "shop", "service_account": "web"})
    assert service.revoke_token(created["token"]) == {"id": created["id"], "revoked": True}
    assert service.list_tokens()["tokens"][0]["revoked"] is True


def test_ca_expiry_gauge_is_the_chain_expiry(service):
    """The expiry gauge carries the CA chain's notAfter as a Unix timestamp."""
    value = sample(service.metrics, "remora_control_ca_cert_expiry_timestamp_seconds")
    assert value == service.ca.not_after.timestamp()


def test_cert_ttl_above_90_days_is_refused():
    """--cert-ttl is refused above 90 days (or at zero) with the allowed range in the message."""
    assert check_cert_ttl(90 * 86400) == 90 * 86400
    for bad in (90 * 86400 + 1, 0):
        with pytest.raises(ValueError, match="90 days"):
            check_cert_ttl(bad)


def test_start_without_state_dir_uses_a_temporary_directory_and_warns():
    """Without --state-dir the CA lives in a temp dir, a warning says so, and close() removes it."""
    lines: list[str] = []
    service = CaService.start(CaSettings(), None, TD, ControlMetrics(), lines.append)
    directory = service.ca.state_dir
    assert directory.is_dir() and any("will not survive a restart" in line for line in lines)
    service.close()
    assert not os.path.exists(directory)


def test_start_with_state_dir_keeps_the_root_under_ca(tmp_path):
    """The own root lives in <state-dir>/ca and is the same on the next start."""
    first = CaService.start(CaSettings(), str(tmp_path), TD, ControlMetrics(), lambda _: None)
    again = CaService.start(CaSettings(), str(tmp_path), TD, ControlMetrics(), lambda _: None)
    assert (tmp_path / "ca" / "root-cert.pem").exists()
    assert first.ca.trust_bundle() == again.ca.trust_bundle()


def test_plugin_flags_must_come_together(tmp_path):
    """--ca-cert without --ca-key (or --ca-chain alone) is a clear error, not a silent own root."""
    with pytest.raises(CaError, match="--ca-key"):
        CaService.start(CaSettings(ca_cert="c.pem"), str(tmp_path), TD, ControlMetrics(), lambda _: None)
    with pytest.raises(CaError, match="--ca-chain"):
        CaService.start(CaSettings(ca_chain="x.pem"), str(tmp_path), TD, ControlMetrics(), lambda _: None)


def test_missing_plugin_file_is_named(tmp_path):
    """A plug-in CA file that does not exist is named in the error."""
    with pytest.raises(CaError, match="nope.pem"):
        CaService.start(CaSettings(ca_cert=str(tmp_path / "nope.pem"), ca_key=str(tmp_path / "k.pem")),
                        str(tmp_path), TD, ControlMetrics(), lambda _: None)
