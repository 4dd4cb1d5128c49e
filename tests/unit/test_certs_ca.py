"""The mesh CA: root creation and reload, plug-in CAs, the trust bundle, and the SVIDs it signs."""
from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from remora.certs.ca import (
    CLOCK_SKEW_SECONDS,
    DEFAULT_TTL_SECONDS,
    MAX_TTL_SECONDS,
    CaError,
    CertificateAuthority,
    CsrRejected,
)
from remora.certs.spiffe import SpiffeId

try:
    from cryptography.x509 import verification
    verification.PolicyBuilder.build_client_verifier  # noqa: B018 - added in cryptography 43
except (ImportError, AttributeError):  # older cryptography: fall back to `openssl verify`
    verification = None

TD = "cluster.local"
REVIEWS = SpiffeId(TD, "bookinfo", "reviews")
UTC = dt.timezone.utc


# ---- helpers -----------------------------------------------------------------------------

def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_bytes(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca_cert(cn: str, issuer: tuple | None = None, *, ca: bool = True, days: int = 365,
                 key=None) -> tuple[x509.Certificate, object]:
    """A CA certificate signed by `issuer` (cert, key), or self-signed."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    now = dt.datetime.now(UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer_cert.subject if issuer_cert else name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                                         crl_sign=ca, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if issuer_cert is not None:
        cert = cert.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()),
                                  critical=False)
    cert = cert.sign(issuer_key, hashes.SHA256())
    return cert, key


def make_csr(key=None, uris: tuple[str, ...] = (REVIEWS.uri,), dns: tuple[str, ...] = ()) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "asks-for-a-subject")]))
    names = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode()


def load(pem_text: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem_text.encode())


def verify_chain(leaf_pem: str, chain_pems, bundle_pems, tmp_path: Path) -> list[x509.Certificate]:
    """Verify leaf + chain against the bundle the way a TLS peer would (clientAuth purpose)."""
    leaf = load(leaf_pem)
    intermediates = [load(p) for p in chain_pems]
    roots = [load(p) for p in bundle_pems]
    if verification is not None:
        verifier = verification.PolicyBuilder().store(verification.Store(roots)).build_client_verifier()
        return verifier.verify(leaf, intermediates).chain
    (tmp_path / "leaf.pem").write_text(leaf_pem)
    (tmp_path / "chain.pem").write_text("".join(chain_pems))
    (tmp_path / "bundle.pem").write_text("".join(bundle_pems))
    subprocess.run(["openssl", "verify", "-purpose", "sslclient", "-CAfile", tmp_path / "bundle.pem",
                    "-untrusted", tmp_path / "chain.pem", tmp_path / "leaf.pem"], check=True)
    return [leaf, *intermediates]


def cannot_verify(leaf_pem: str, chain_pems, bundle_pems) -> bool:
    leaf, roots = load(leaf_pem), [load(p) for p in bundle_pems]
    verifier = verification.PolicyBuilder().store(verification.Store(roots)).build_client_verifier()
    try:
        verifier.verify(leaf, [load(p) for p in chain_pems])
    except verification.VerificationError:
        return True
    return False


@pytest.fixture
def ca(tmp_path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca", TD)


@pytest.fixture
def plugin_dir(tmp_path) -> Path:
    """Istio's cacerts layout: a root, and an intermediate that signs workload certs."""
    root = make_ca_cert("Corp Root")
    inter = make_ca_cert("Mesh Intermediate", issuer=root)
    d = tmp_path / "cacerts"
    d.mkdir()
    (d / "root-cert.pem").write_bytes(pem(root[0]))
    (d / "ca-cert.pem").write_bytes(pem(inter[0]))
    (d / "ca-key.pem").write_bytes(key_bytes(inter[1]))
    (d / "cert-chain.pem").write_bytes(pem(inter[0]) + pem(root[0]))
    return d


# ---- the self-signed root ----------------------------------------------------------------

def test_first_start_creates_a_root_with_private_key_file(tmp_path):
    """load_or_create writes root-cert.pem and a 0600 root-key.pem in a 0700 state dir."""
    state = tmp_path / "ca"
    CertificateAuthority.load_or_create(state, TD)
    assert stat.S_IMODE(os.stat(state / "root-key.pem").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert (state / "root-cert.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert not [p for p in state.iterdir() if p.name.endswith(".tmp")]


def test_root_certificate_fields(ca):
    """The root is EC P-256, 10 years, CA:true and keyCertSign|cRLSign both critical, O=Remora, SKI=AKI."""
    root = ca.cert
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey) and root.public_key().curve.name == "secp256r1"
    assert root.subject == root.issuer
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Remora"
    assert root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"Remora Root CA {TD}"
    years = (root.not_valid_after_utc - root.not_valid_before_utc).days / 365
    assert 9.9 < years < 10.1
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = root.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = root.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert ca.trust_bundle() == [pem(root).decode()]


def test_restart_loads_the_same_root(tmp_path):
    """A second load_or_create on the same state dir reuses the root instead of making a new one."""
    first = CertificateAuthority.load_or_create(tmp_path / "ca", TD)
    second = CertificateAuthority.load_or_create(tmp_path / "ca", TD)
    assert first.cert == second.cert
    assert first.trust_bundle() == second.trust_bundle()


def test_restart_with_another_trust_domain_is_refused(tmp_path):
    """A state dir made for one trust domain refuses to serve another, naming both."""
    CertificateAuthority.load_or_create(tmp_path / "ca", TD)
    with pytest.raises(CaError, match="root of trust domain 'cluster.local', not 'example.org'"):
        CertificateAuthority.load_or_create(tmp_path / "ca", "example.org")


def test_missing_root_key_is_a_clear_error(tmp_path):
    """A root certificate whose key file was deleted is reported, not silently replaced."""
    CertificateAuthority.load_or_create(tmp_path / "ca", TD)
    (tmp_path / "ca" / "root-key.pem").unlink()
    with pytest.raises(CaError, match="root-key.pem is missing"):
        CertificateAuthority.load_or_create(tmp_path / "ca", TD)


# ---- the SVIDs it signs ------------------------------------------------------------------

def test_svid_follows_the_x509_svid_standard(ca, tmp_path):
    """Exactly one URI SAN = the ID (critical, empty subject), cA false critical, KU digitalSignature
    critical, EKU serverAuth+clientAuth, SKI/AKI, positive serial; it verifies to the root."""
    issued = ca.sign_csr(make_csr(dns=("evil.example",)), REVIEWS)
    leaf = load(issued.cert_pem)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert list(san.value) == [x509.UniformResourceIdentifier(REVIEWS.uri)]  # the CSR's DNS name is dropped
    assert san.critical and leaf.subject == x509.Name([])
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    assert not (ku.value.key_cert_sign or ku.value.crl_sign or ku.value.key_encipherment)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert leaf.serial_number == issued.serial > 0 and issued.serial.bit_length() > 64
    assert issued.spiffe_id == REVIEWS
    assert issued.chain_pems == (pem(ca.cert).decode(),)
    assert issued.full_chain_pem == issued.cert_pem + issued.chain_pems[0]
    chain = verify_chain(issued.cert_pem, issued.chain_pems, ca.trust_bundle(), tmp_path)
    assert chain[-1] == ca.cert


def test_serials_differ(ca):
    """Every SVID gets its own random serial."""
    serials = {ca.sign_csr(make_csr(), REVIEWS).serial for _ in range(5)}
    assert len(serials) == 5


def test_validity_is_backdated_and_default_ttl_is_24h(ca):
    """not_before is 60 s before signing (clock skew); the default TTL is 24 h from signing."""
    now = dt.datetime(2027, 3, 1, 12, 0, 0, tzinfo=UTC)
    issued = ca.sign_csr(make_csr(), REVIEWS, now=now)
    assert issued.not_before == now - dt.timedelta(seconds=CLOCK_SKEW_SECONDS)
    assert issued.not_after == now + dt.timedelta(seconds=DEFAULT_TTL_SECONDS)
    leaf = load(issued.cert_pem)
    assert (leaf.not_valid_before_utc, leaf.not_valid_after_utc) == (issued.not_before, issued.not_after)


def test_requested_ttl_is_honoured_up_to_90_days(ca):
    """A TTL up to 90 days is issued as asked."""
    now = dt.datetime.now(UTC).replace(microsecond=0)
    assert ca.sign_csr(make_csr(), REVIEWS, 3600, now=now).not_after == now + dt.timedelta(hours=1)
    assert ca.sign_csr(make_csr(), REVIEWS, MAX_TTL_SECONDS, now=now).not_after == now + dt.timedelta(days=90)


@pytest.mark.parametrize("ttl", [MAX_TTL_SECONDS + 1, 365 * 86400, 0, -5])
def test_ttl_above_90_days_or_not_positive_is_refused(ca, ttl):
    """A TTL over 90 days (or <= 0) is refused with reason 'ttl', not silently clamped."""
    with pytest.raises(CsrRejected, match="at most 90 days") as caught:
        ca.sign_csr(make_csr(), REVIEWS, ttl)
    assert caught.value.reason == "ttl"


def test_leaf_never_outlives_the_ca(tmp_path):
    """A CA expiring in 10 days cuts a 30-day request to its own not_after."""
    root = make_ca_cert("Short Root", days=10)
    (tmp_path / "c.pem").write_bytes(pem(root[0]))
    (tmp_path / "k.pem").write_bytes(key_bytes(root[1]))
    ca = CertificateAuthority.from_files(tmp_path / "c.pem", tmp_path / "k.pem")
    issued = ca.sign_csr(make_csr(), REVIEWS, 30 * 86400)
    assert issued.not_after == root[0].not_valid_after_utc


def test_rsa_key_gets_key_encipherment(ca):
    """An RSA-2048 CSR is accepted and its SVID also allows keyEncipherment (TLS 1.2 RSA)."""
    issued = ca.sign_csr(make_csr(rsa.generate_private_key(65537, 2048)), REVIEWS)
    ku = load(issued.cert_pem).extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment


def test_p384_key_is_accepted(ca):
    """EC P-384 is one of the allowed key types."""
    issued = ca.sign_csr(make_csr(ec.generate_private_key(ec.SECP384R1())), REVIEWS)
    assert load(issued.cert_pem).public_key().curve.name == "secp384r1"


@pytest.mark.parametrize("key, fragment", [
    (lambda: rsa.generate_private_key(65537, 1024), "RSA key of 1024 bits"),
    (lambda: ec.generate_private_key(ec.SECP256K1()), "EC curve secp256k1 is not allowed"),
    (lambda: ed25519.Ed25519PrivateKey.generate(), "keys are not allowed"),
])
def test_weak_or_unsupported_keys_are_refused(ca, key, fragment):
    """Keys other than EC P-256/P-384 or RSA >= 2048 are refused with reason 'key-type'."""
    with pytest.raises(CsrRejected, match=fragment) as caught:
        ca.sign_csr(make_csr(key()), REVIEWS)
    assert caught.value.reason == "key-type"


def test_csr_asking_for_another_identity_is_refused(ca):
    """A CSR whose URI SAN differs from the credential's identity is refused, naming both."""
    other = "spiffe://cluster.local/ns/bookinfo/sa/ratings"
    with pytest.raises(CsrRejected, match=f"asks for {other}, but the credential proves {REVIEWS}") as caught:
        ca.sign_csr(make_csr(uris=(other,)), REVIEWS)
    assert caught.value.reason == "identity-mismatch"
    with pytest.raises(CsrRejected):  # a second, extra URI is just as bad
        ca.sign_csr(make_csr(uris=(REVIEWS.uri, other)), REVIEWS)


def test_csr_without_san_gets_the_credential_identity(ca):
    """The identity comes from the credential; a CSR need not carry a SAN at all."""
    leaf = load(ca.sign_csr(make_csr(uris=()), REVIEWS).cert_pem)
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier) == [REVIEWS.uri]


def test_csr_with_bad_signature_is_refused(ca):
    """A CSR whose signature does not verify (tampered) is refused with reason 'bad-signature'."""
    csr_pem = make_csr()
    der = bytearray(x509.load_pem_x509_csr(csr_pem.encode()).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature value
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CsrRejected, match="signature does not verify") as caught:
        ca.sign_csr(tampered, REVIEWS)
    assert caught.value.reason == "bad-signature"


@pytest.mark.parametrize("data", ["", "hello", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"])
def test_garbage_csr_is_refused_as_malformed(ca, data):
    """Input that is not a PEM CSR is refused with reason 'malformed'."""
    with pytest.raises(CsrRejected) as caught:
        ca.sign_csr(data, REVIEWS)
    assert caught.value.reason == "malformed"


def test_identity_from_another_trust_domain_is_refused(ca):
    """A CA for cluster.local does not sign spiffe://example.org identities."""
    foreign = SpiffeId("example.org", "bookinfo", "reviews")
    with pytest.raises(CsrRejected, match="outside this CA's trust domain") as caught:
        ca.sign_csr(make_csr(uris=(foreign.uri,)), foreign)
    assert caught.value.reason == "trust-domain"


def test_identity_must_be_a_spiffe_id(ca):
    """Passing a plain string identity is a programming error, caught at the call."""
    with pytest.raises(TypeError, match="must be a SpiffeId"):
        ca.sign_csr(make_csr(), REVIEWS.uri)  # type: ignore[arg-type]


# ---- plug-in CAs -------------------------------------------------------------------------

def test_plugin_intermediate_chain_verifies_to_its_root(plugin_dir, tmp_path):
    """With Istio's cacerts, SVIDs chain leaf -> intermediate -> root, and the bundle is the root."""
    ca = CertificateAuthority.from_istio_cacerts(plugin_dir, trust_domain=TD)
    root = load((plugin_dir / "root-cert.pem").read_text())
    inter = load((plugin_dir / "ca-cert.pem").read_text())
    assert ca.trust_bundle() == [pem(root).decode()]
    issued = ca.sign_csr(make_csr(), REVIEWS)
    assert [load(p) for p in issued.chain_pems] == [inter, root]  # issuing cert first, once
    assert load(issued.cert_pem).issuer == inter.subject
    chain = verify_chain(issued.cert_pem, issued.chain_pems, ca.trust_bundle(), tmp_path)
    assert chain[-1] == root and chain[1] == inter


@pytest.mark.skipif(verification is None, reason="needs cryptography's x509 verification API")
def test_svid_of_a_foreign_ca_does_not_verify(ca, plugin_dir):
    """An SVID from another CA does not verify against this CA's bundle."""
    foreign = CertificateAuthority.from_istio_cacerts(plugin_dir)
    issued = foreign.sign_csr(make_csr(), REVIEWS)
    assert cannot_verify(issued.cert_pem, issued.chain_pems, ca.trust_bundle())


def test_plugin_chain_without_issuing_cert_and_without_root_file(tmp_path):
    """A chain file listing only the issuer's parents up to a self-signed root is enough."""
    root = make_ca_cert("Root")
    inter = make_ca_cert("Inter", issuer=root)
    (tmp_path / "ca.pem").write_bytes(pem(inter[0]))
    (tmp_path / "key.pem").write_bytes(key_bytes(inter[1]))
    (tmp_path / "chain.pem").write_bytes(pem(root[0]))
    ca = CertificateAuthority.from_files(tmp_path / "ca.pem", tmp_path / "key.pem", tmp_path / "chain.pem")
    assert ca.trust_bundle() == [pem(root[0]).decode()]
    assert ca.sign_csr(make_csr(), REVIEWS).chain_pems == (pem(inter[0]).decode(), pem(root[0]).decode())


def test_plugin_key_that_does_not_match_is_refused(plugin_dir):
    """A ca-key.pem that is not the key of ca-cert.pem is a clear error."""
    (plugin_dir / "ca-key.pem").write_bytes(key_bytes(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(CaError, match="private key does not match"):
        CertificateAuthority.from_istio_cacerts(plugin_dir)


def test_plugin_cert_that_is_not_a_ca_is_refused(tmp_path):
    """A leaf certificate (cA false) cannot be used as the CA."""
    cert, key = make_ca_cert("Not a CA", ca=False)
    (tmp_path / "c.pem").write_bytes(pem(cert))
    (tmp_path / "k.pem").write_bytes(key_bytes(key))
    with pytest.raises(CaError, match="is not a CA certificate"):
        CertificateAuthority.from_files(tmp_path / "c.pem", tmp_path / "k.pem")


def test_plugin_chain_in_wrong_order_or_foreign_is_refused(tmp_path):
    """A chain whose next cert did not sign the previous one is refused, naming both."""
    root = make_ca_cert("Root")
    inter = make_ca_cert("Inter", issuer=root)
    other = make_ca_cert("Other Root")
    (tmp_path / "ca.pem").write_bytes(pem(inter[0]))
    (tmp_path / "key.pem").write_bytes(key_bytes(inter[1]))
    (tmp_path / "chain.pem").write_bytes(pem(other[0]))
    with pytest.raises(CaError, match="CN=Inter is not signed by the next certificate in the chain, CN=Other Root"):
        CertificateAuthority.from_files(tmp_path / "ca.pem", tmp_path / "key.pem", tmp_path / "chain.pem")
    with pytest.raises(CaError, match="does not chain to any root in"):
        CertificateAuthority.from_files(tmp_path / "ca.pem", tmp_path / "key.pem", root_path=tmp_path / "chain.pem")
    with pytest.raises(CaError, match="not a self-signed root"):
        CertificateAuthority.from_files(tmp_path / "ca.pem", tmp_path / "key.pem")


def test_plugin_missing_or_garbage_files_are_named(tmp_path):
    """Unreadable or non-PEM files are reported with their path."""
    with pytest.raises(CaError, match="cannot read CA certificate .*nope.pem"):
        CertificateAuthority.from_files(tmp_path / "nope.pem", tmp_path / "k.pem")
    (tmp_path / "c.pem").write_text("not a cert")
    with pytest.raises(CaError, match="c.pem: no PEM certificate in it"):
        CertificateAuthority.from_files(tmp_path / "c.pem", tmp_path / "k.pem")
    root = make_ca_cert("Root")
    (tmp_path / "c.pem").write_bytes(pem(root[0]))
    (tmp_path / "k.pem").write_text("garbage")
    with pytest.raises(CaError, match="k.pem: not a PEM private key"):
        CertificateAuthority.from_files(tmp_path / "c.pem", tmp_path / "k.pem")


def test_expired_ca_is_refused_at_load(tmp_path):
    """An expired CA certificate is reported when loading, not at the first CSR."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Old")])
    now = dt.datetime.now(UTC)
    old = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
           .serial_number(1).not_valid_before(now - dt.timedelta(days=30)).not_valid_after(now - dt.timedelta(days=1))
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(pem(old))
    (tmp_path / "k.pem").write_bytes(key_bytes(key))
    with pytest.raises(CaError, match="expired on"):
        CertificateAuthority.from_files(tmp_path / "c.pem", tmp_path / "k.pem")


# ---- several roots (rotation) ------------------------------------------------------------

def test_two_roots_in_the_bundle_and_persisted(tmp_path, plugin_dir):
    """add_trusted_root puts a second root in the bundle, keeps it across restarts, and both verify."""
    state = tmp_path / "ca"
    old = CertificateAuthority.load_or_create(state, TD)
    next_ca = CertificateAuthority.from_istio_cacerts(plugin_dir, trust_domain=TD)
    next_root = next_ca.trust_bundle()[0]
    fp = old.add_trusted_root(next_root)
    assert old.add_trusted_root(next_root) == fp  # idempotent
    assert old.trust_bundle() == [pem(old.cert).decode(), next_root]
    assert CertificateAuthority.load_or_create(state, TD).trust_bundle() == old.trust_bundle()
    if verification is not None:
        for issuer in (old, next_ca):
            issued = issuer.sign_csr(make_csr(), REVIEWS)
            assert not cannot_verify(issued.cert_pem, issued.chain_pems, old.trust_bundle())
    old.remove_trusted_root(fp)
    assert CertificateAuthority.load_or_create(state, TD).trust_bundle() == [pem(old.cert).decode()]


def test_trusted_root_rules(ca):
    """Only one CA certificate is accepted as a trusted root; the CA's own root cannot be removed."""
    leaf_pem = ca.sign_csr(make_csr(), REVIEWS).cert_pem
    with pytest.raises(CaError, match="is not a CA certificate"):
        ca.add_trusted_root(leaf_pem)
    with pytest.raises(CaError, match="expected one certificate, got 2"):
        ca.add_trusted_root(leaf_pem + leaf_pem)
    own = ca.cert.fingerprint(hashes.SHA256()).hex()
    with pytest.raises(CaError, match="own root and cannot be removed"):
        ca.remove_trusted_root(own)
    with pytest.raises(CaError, match="no extra trusted root"):
        ca.remove_trusted_root("00" * 32)


def test_plugin_ca_without_state_dir_cannot_persist_roots(plugin_dir):
    """Adding a root to a CA with no state dir fails clearly instead of forgetting it on restart."""
    ca = CertificateAuthority.from_istio_cacerts(plugin_dir)
    with pytest.raises(CaError, match="no state directory"):
        ca.add_trusted_root(pem(make_ca_cert("Next")[0]))
