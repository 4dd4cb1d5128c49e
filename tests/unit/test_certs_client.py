"""The sidecar side: key + CSR, SVID parsing, mutual TLS over loopback, rotation timing, backoff."""
from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from remora.certs import client as client_module
from remora.certs.ca import CertificateAuthority
from remora.certs.client import (
    ALPN_PROTOCOLS,
    RotationBackoff,
    Svid,
    SvidError,
    generate_key_and_csr,
    peer_spiffe_id,
    rotation_due,
)
from remora.certs.spiffe import SpiffeId

TD = "cluster.local"
PRODUCTPAGE = SpiffeId(TD, "bookinfo", "productpage")
REVIEWS = SpiffeId(TD, "bookinfo", "reviews")
TIMEOUT = 20  # seconds; generous for a busy 2-core machine


@pytest.fixture
def ca(tmp_path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca", TD)


@pytest.fixture
def foreign_ca(tmp_path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "foreign", TD)


def issue(ca: CertificateAuthority, identity: SpiffeId, ttl: float = 3600) -> Svid:
    key, csr = generate_key_and_csr(identity)
    issued = ca.sign_csr(csr, identity, ttl)
    return Svid.from_pems(issued.cert_pem, issued.chain_pems, key)


# ---- key, CSR, SVID ----------------------------------------------------------------------

def test_key_and_csr():
    """The key is EC P-256; the CSR is signed by it and carries the SPIFFE ID as its only URI SAN."""
    key, csr_pem = generate_key_and_csr(str(REVIEWS))
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    assert csr.is_signature_valid
    assert csr.public_key().public_numbers() == key.public_key().public_numbers()
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(REVIEWS.uri)]


def test_svid_from_the_ca(ca):
    """Svid.from_pems keeps the ID, serial and validity the CA issued, and the chain to present."""
    key, csr = generate_key_and_csr(REVIEWS)
    issued = ca.sign_csr(csr, REVIEWS, 7200)
    svid = Svid.from_pems(issued.cert_pem, issued.chain_pems, key)
    assert svid.spiffe_id == REVIEWS and svid.serial == issued.serial
    assert (svid.not_before, svid.not_after) == (issued.not_before, issued.not_after)
    assert svid.lifetime == 7200 + 60
    assert svid.chain == (ca.cert,)
    assert "key" not in repr(svid).replace("public_key", "")


def test_svid_for_another_key_is_refused(ca):
    """A certificate that is not for the sidecar's own key is refused (SvidError)."""
    _, csr = generate_key_and_csr(REVIEWS)
    issued = ca.sign_csr(csr, REVIEWS)
    other_key, _ = generate_key_and_csr(REVIEWS)
    with pytest.raises(SvidError, match="not for this sidecar's key"):
        Svid.from_pems(issued.cert_pem, issued.chain_pems, other_key)


def test_certificate_without_spiffe_id_is_not_an_svid(ca):
    """The CA root itself (its URI SAN names only the trust domain) is not accepted as an SVID."""
    with pytest.raises(SvidError, match="not a workload ID"):
        Svid.from_pems(ca.trust_bundle()[0], [], ca._key)


def test_empty_bundle_is_refused(ca):
    """A context with nothing to trust could never verify a peer: refused up front."""
    with pytest.raises(ValueError, match="trust bundle is empty"):
        issue(ca, REVIEWS).to_ssl_context(server=True, bundle_pems=[])


def test_contexts_are_mutual_tls_1_2_plus(ca):
    """Both contexts require a peer certificate, allow TLS >= 1.2 only, and skip hostname checks."""
    svid = issue(ca, REVIEWS)
    for server in (True, False):
        context = svid.to_ssl_context(server=server, bundle_pems=ca.trust_bundle())
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.check_hostname is False
        assert len(context.get_ca_certs()) == 1  # the bundle only, no system CAs


def test_fallback_key_file_is_private_and_deleted(monkeypatch, tmp_path):
    """Without memfd, the key file is 0600 while ssl reads it and is gone right after."""
    monkeypatch.delattr(os, "memfd_create")
    monkeypatch.setattr(client_module, "_TMPFS", str(tmp_path))
    with client_module._memory_file(b"secret") as path:
        assert os.path.dirname(path) == str(tmp_path)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert open(path, "rb").read() == b"secret"
    assert not os.path.exists(path)
    assert list(tmp_path.iterdir()) == []


def test_memfd_key_file_has_no_name_on_disk():
    """With memfd the key is read through /proc/self/fd and the descriptor is closed after."""
    if not hasattr(os, "memfd_create"):
        pytest.skip("memfd_create is Linux-only")
    with client_module._memory_file(b"secret") as path:
        assert path.startswith("/proc/self/fd/") and open(path, "rb").read() == b"secret"
        fd = int(path.rsplit("/", 1)[1])
        assert os.readlink(path).startswith("/memfd:")
    with pytest.raises(OSError):
        os.fstat(fd)


# ---- mutual TLS over loopback ------------------------------------------------------------

async def serve_peer_ids(context: ssl.SSLContext, seen: list):
    """A TLS server that answers each client with the SPIFFE ID it verified for that client."""
    async def handle(reader, writer):
        obj = writer.get_extra_info("ssl_object")
        seen.append((peer_spiffe_id(obj), obj.selected_alpn_protocol(), obj.version()))
        writer.write(f"{peer_spiffe_id(obj)}\n".encode())
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    return server, server.sockets[0].getsockname()[1]


async def test_mutual_tls_handshake_exchanges_spiffe_ids(ca):
    """Two SVIDs from the same CA complete mutual TLS; each side sees the other's SPIFFE ID, ALPN remora."""
    server_ctx = issue(ca, REVIEWS).to_ssl_context(server=True, bundle_pems=ca.trust_bundle())
    client_ctx = issue(ca, PRODUCTPAGE).to_ssl_context(server=False, bundle_pems=ca.trust_bundle())
    seen: list = []
    server, port = await serve_peer_ids(server_ctx, seen)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=client_ctx), TIMEOUT)
        answer = await asyncio.wait_for(reader.readline(), TIMEOUT)
        assert answer.decode().strip() == PRODUCTPAGE.uri          # what the server verified
        assert peer_spiffe_id(writer.get_extra_info("ssl_object")) == REVIEWS.uri  # what the client verified
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == ALPN_PROTOCOLS[0]
        writer.close()
        assert seen == [(PRODUCTPAGE.uri, "remora", seen[0][2])] and seen[0][2] in ("TLSv1.2", "TLSv1.3")
    finally:
        server.close()
        await server.wait_closed()


async def test_client_refuses_server_from_a_foreign_ca(ca, foreign_ca):
    """A client trusting our bundle fails the handshake against a server whose SVID is foreign."""
    server_ctx = issue(foreign_ca, REVIEWS).to_ssl_context(server=True, bundle_pems=foreign_ca.trust_bundle()
                                                           + ca.trust_bundle())
    client_ctx = issue(ca, PRODUCTPAGE).to_ssl_context(server=False, bundle_pems=ca.trust_bundle())
    seen: list = []
    server, port = await serve_peer_ids(server_ctx, seen)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=client_ctx), TIMEOUT)
        assert seen == []
    finally:
        server.close()
        await server.wait_closed()


async def client_outcome(port: int, context: ssl.SSLContext) -> bytes | str:
    """What a client gets from the server: its answer, or the name of the error it hit."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=context), TIMEOUT)
        answer = await asyncio.wait_for(reader.read(1000), TIMEOUT)
        writer.close()
        return answer
    except (ssl.SSLError, ConnectionError) as error:
        return type(error).__name__


async def test_server_refuses_client_from_a_foreign_ca_or_without_cert(ca, foreign_ca):
    """A server refuses a client whose SVID is from a foreign CA, and a client with no certificate."""
    server_ctx = issue(ca, REVIEWS).to_ssl_context(server=True, bundle_pems=ca.trust_bundle())
    foreign_client = issue(foreign_ca, PRODUCTPAGE).to_ssl_context(
        server=False, bundle_pems=ca.trust_bundle() + foreign_ca.trust_bundle())
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.load_verify_locations(cadata="".join(ca.trust_bundle()))
    anonymous.check_hostname = False
    seen: list = []
    server, port = await serve_peer_ids(server_ctx, seen)
    try:
        for context in (foreign_client, anonymous):
            outcome = await client_outcome(port, context)
            assert outcome in (b"", "SSLError", "ConnectionResetError", "SSLEOFError", "BrokenPipeError"), outcome
        assert seen == []  # the server never accepted either connection
        good = issue(ca, PRODUCTPAGE).to_ssl_context(server=False, bundle_pems=ca.trust_bundle())
        assert await client_outcome(port, good) == f"{PRODUCTPAGE.uri}\n".encode()
    finally:
        server.close()
        await server.wait_closed()


def test_peer_spiffe_id_without_tls_or_cert():
    """No ssl object (plain TCP) or no peer certificate gives None."""
    class NoCert:
        def getpeercert(self, binary_form=False):
            return None
    assert peer_spiffe_id(None) is None
    assert peer_spiffe_id(NoCert()) is None


# ---- rotation ----------------------------------------------------------------------------

def test_rotation_due_at_half_lifetime_minus_jitter(ca):
    """Rotation is due at half the lifetime from not_before, minus up to 5% of it."""
    svid = issue(ca, REVIEWS, ttl=3600)
    start, life = svid.not_before.timestamp(), svid.lifetime
    assert rotation_due(svid, start, rng=lambda: 0.0) == pytest.approx(life * 0.5)
    assert rotation_due(svid, start, rng=lambda: 1.0) == pytest.approx(life * 0.45)
    assert rotation_due(svid, start + 100, rng=lambda: 0.0) == pytest.approx(life * 0.5 - 100)
    assert rotation_due(svid, start + life * 0.6) == 0.0  # overdue: now
    delays = {round(rotation_due(svid, start), 3) for _ in range(20)}
    assert len(delays) > 1 and all(life * 0.45 <= d <= life * 0.5 for d in delays)


def test_svid_expired():
    """expired() is true from not_after on."""
    key, _ = generate_key_and_csr(REVIEWS)
    t0 = dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)
    svid = Svid(cert=None, chain=(), key=key, spiffe_id=REVIEWS, serial=1,  # type: ignore[arg-type]
                not_before=t0, not_after=t0 + dt.timedelta(hours=1))
    assert not svid.expired(t0.timestamp() + 3599.9) and svid.expired(t0.timestamp() + 3600)


def test_backoff_doubles_up_to_the_cap_and_resets():
    """Failures wait base, 2x, 4x ... (jitter within [half, full]), never above the cap; reset starts over."""
    backoff = RotationBackoff(base=1.0, cap=10.0, rng=lambda: 1.0)
    assert [backoff.next_delay(0.0) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.failures == 6
    backoff.reset()
    assert backoff.next_delay(0.0) == 1.0
    low = RotationBackoff(base=1.0, cap=10.0, rng=lambda: 0.0)
    assert [low.next_delay(0.0) for _ in range(3)] == [0.5, 1.0, 2.0]


def test_backoff_never_schedules_past_expiry():
    """Near expiry the delay shrinks so a retry lands before (or at) not_after; after expiry it keeps trying."""
    backoff = RotationBackoff(base=1.0, cap=300.0, rng=lambda: 1.0)
    for _ in range(8):
        backoff.next_delay(0.0)             # deep into backoff: the next plain delay would be 256 s
    assert backoff.next_delay(1000.0, not_after=1100.0) == 50.0   # half the time left
    assert backoff.next_delay(1000.0, not_after=1000.5) == 0.5    # the very end: at expiry, not after
    assert backoff.next_delay(2000.0, not_after=1100.0) == 300.0  # already expired: capped backoff
    with pytest.raises(ValueError):
        RotationBackoff(base=0)
