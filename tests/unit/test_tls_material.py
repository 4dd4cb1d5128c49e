"""The worker's mTLS material: contexts from an SVID, principals, and the certificate directory."""
from __future__ import annotations

import ssl
import stat

import pytest

from remora.certs.ca import CertificateAuthority
from remora.certs.client import Svid, generate_key_and_csr
from remora.certs.spiffe import SpiffeId
from remora.proxy.security.tls import (
    KEY_FILE, ROOT_CERT_FILE, CertDirError, MeshTls, load_cert_dir, principal_of, write_cert_dir,
)

REVIEWS = SpiffeId("cluster.local", "bookinfo", "reviews")


@pytest.fixture
def ca(tmp_path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local")


def issue(ca: CertificateAuthority, identity: SpiffeId = REVIEWS) -> Svid:
    key, csr = generate_key_and_csr(identity)
    issued = ca.sign_csr(csr, identity, 3600)
    return Svid.from_pems(issued.cert_pem, issued.chain_pems, key)


def test_mesh_tls_has_no_contexts_until_a_certificate(ca):
    """Before the first SVID there is nothing to present: both contexts are None."""
    tls = MeshTls()
    assert not tls.ready and tls.server_context is None and tls.client_context is None
    assert tls.principal is None
    tls.update(issue(ca), ca.trust_bundle())
    assert tls.ready and tls.generation == 1
    assert isinstance(tls.server_context, ssl.SSLContext) and isinstance(tls.client_context, ssl.SSLContext)
    assert tls.principal == "cluster.local/ns/bookinfo/sa/reviews"


def test_failed_update_keeps_the_old_contexts(ca):
    """A new SVID that cannot become a context (empty bundle) leaves the working one in place."""
    tls = MeshTls()
    tls.update(issue(ca), ca.trust_bundle())
    before = tls.server_context
    with pytest.raises(ValueError):
        tls.update(issue(ca), [])
    assert tls.server_context is before and tls.generation == 1


def test_principal_is_the_spiffe_id_without_scheme():
    """Istio principals drop `spiffe://`; anything else is no principal."""
    assert principal_of("spiffe://td/ns/a/sa/b") == "td/ns/a/sa/b"
    assert principal_of("https://td/ns/a/sa/b") is None
    assert principal_of(None) is None


def test_cert_dir_round_trip(ca, tmp_path):
    """What write_cert_dir writes, load_cert_dir reads back; the key file is private."""
    svid = issue(ca)
    directory = write_cert_dir(tmp_path / "certs", svid, ca.trust_bundle())
    loaded, bundle = load_cert_dir(directory)
    assert loaded.spiffe_id == REVIEWS and loaded.serial == svid.serial
    assert bundle == ca.trust_bundle()
    assert stat.S_IMODE((directory / KEY_FILE).stat().st_mode) == 0o600


def test_cert_dir_errors_name_the_file(ca, tmp_path):
    """A missing or foreign file is refused with its path in the message."""
    with pytest.raises(CertDirError, match="cert-chain.pem"):
        load_cert_dir(tmp_path)
    directory = write_cert_dir(tmp_path / "certs", issue(ca), ca.trust_bundle())
    (directory / ROOT_CERT_FILE).write_text("not pem")
    with pytest.raises(CertDirError, match="root-cert.pem"):
        load_cert_dir(directory)
    write_cert_dir(directory, issue(ca), ca.trust_bundle())
    other = write_cert_dir(tmp_path / "other", issue(ca), ca.trust_bundle())
    (directory / KEY_FILE).write_bytes((other / KEY_FILE).read_bytes())
    with pytest.raises(CertDirError, match="not for this sidecar's key"):
        load_cert_dir(directory)
