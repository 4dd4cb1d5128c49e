"""The sidecar's side of identity: key + CSR, the SVID it gets back, TLS contexts, rotation timing.

- The private key is generated in memory (EC P-256) and never serialised to disk in the
  clear. Python's `ssl` can only load a key from a path, so `Svid.to_ssl_context` writes
  the certificate chain and the key, encrypted (PKCS#8, AES-256) with a random one-time
  password that exists only in memory, to an anonymous memory file (`memfd_create`, no
  name in any filesystem; it is read through /proc/self/fd/N and closed right after
  `load_cert_chain`). Where memfd is unavailable the file is a 0600 `mkstemp` in /dev/shm
  (tmpfs, never on disk) deleted right after loading. Either way the key bytes live
  briefly in RAM only, and what is there is ciphertext. The key also lives in process
  memory, inside OpenSSL, as it must for TLS.
- Contexts are mutual TLS: TLS 1.2 or newer, the peer must present a certificate that
  chains to the trust bundle (only the bundle: no system CAs), ALPN `remora`, `http/1.1`
  (a server context also offers `h2` first: the inbound listener speaks HTTP/2 to a
  client that asks for it, and the sidecars' clients, which do not, keep HTTP/1).
  There is no hostname check: a SPIFFE peer is identified by its URI SAN, read with
  `peer_spiffe_id` after the handshake and checked by authorization.
- Rotation: a new certificate is due at half its lifetime, minus up to 5% random jitter
  so sidecars started together do not all ask at once; failures back off exponentially,
  capped, and are always retried before the current certificate expires.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import secrets
import ssl
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

from remora.certs.files import CERT_CHAIN_FILE, KEY_FILE, ROOT_CERT_FILE  # noqa: F401 (re-exported)
from remora.certs.spiffe import SCHEME, InvalidSpiffeId, SpiffeId

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

# cryptography (~8 MiB of RSS) is imported by the functions that use it: the data path names
# peer_spiffe_id and the ALPN lists, and a sidecar without certificates never calls them.

ALPN_PROTOCOLS = ["remora", "http/1.1"]
SERVER_ALPN_PROTOCOLS = ["h2", *ALPN_PROTOCOLS]   # the server's preference order
ROTATE_AT_FRACTION = 0.5
_TMPFS = "/dev/shm"


class SvidError(ValueError):
    """A certificate the CA returned that is not a usable SVID for this key."""


def generate_key_and_csr(spiffe_id: SpiffeId | str) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A fresh EC P-256 key (kept in memory) and a PEM CSR carrying the SPIFFE ID as its URI SAN."""
    uri = str(spiffe_id if isinstance(spiffe_id, SpiffeId) else SpiffeId.parse(spiffe_id))
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True)
           .sign(key, hashes.SHA256()))
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class Svid:
    """This sidecar's X.509-SVID: certificate, the chain to present after it, and the private key."""

    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key: object = field(repr=False)
    spiffe_id: SpiffeId
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime

    @classmethod
    def from_pems(cls, cert_pem: str, chain_pems: list[str] | tuple[str, ...], key) -> Svid:
        """Parse what the CA returned; SvidError unless it is an SVID for exactly this key."""
        from cryptography import x509
        try:
            cert = x509.load_pem_x509_certificate(cert_pem.encode())
            chain = tuple(x509.load_pem_x509_certificate(p.encode()) for p in chain_pems)
        except ValueError as error:
            raise SvidError(f"the CA returned an unreadable certificate: {error}") from None
        from remora.certs.pem import public_key_der
        if public_key_der(cert) != public_key_der(key):
            raise SvidError("the returned certificate is not for this sidecar's key")
        uri = spiffe_uri(cert)
        if uri is None:
            raise SvidError("the returned certificate does not carry exactly one spiffe:// URI SAN")
        try:
            spiffe_id = SpiffeId.parse(uri)
        except InvalidSpiffeId as error:
            raise SvidError(f"the returned certificate's URI SAN is not a workload ID: {error}") from None
        return cls(cert=cert, chain=chain, key=key, spiffe_id=spiffe_id, serial=cert.serial_number,
                   not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc)

    @property
    def lifetime(self) -> float:
        return (self.not_after - self.not_before).total_seconds()

    def expired(self, now: float) -> bool:
        return now >= self.not_after.timestamp()

    def to_ssl_context(self, server: bool, bundle_pems: list[str]) -> ssl.SSLContext:
        """A mutual-TLS context presenting this SVID and trusting only `bundle_pems`."""
        if not bundle_pems:
            raise ValueError("the trust bundle is empty: a peer could never be verified")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False        # SPIFFE peers are named by URI SAN, not host
        context.verify_mode = ssl.CERT_REQUIRED
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        context.load_verify_locations(cadata="".join(bundle_pems))
        context.set_alpn_protocols(SERVER_ALPN_PROTOCOLS if server else ALPN_PROTOCOLS)
        self._load_into(context)
        return context

    def _load_into(self, context: ssl.SSLContext) -> None:
        from cryptography.hazmat.primitives import serialization
        password = secrets.token_bytes(32)
        encrypted_key = self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.BestAvailableEncryption(password))
        chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.cert, *self.chain))
        with _memory_file(chain + encrypted_key) as path:
            context.load_cert_chain(path, password=password)


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path to `data` that exists only while the block runs, in memory, readable by us alone."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("remora-svid", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    directory = _TMPFS if os.access(_TMPFS, os.W_OK) else None
    fd, path = tempfile.mkstemp(prefix=".remora-svid-", dir=directory)  # mode 0600
    try:
        os.write(fd, data)
        os.close(fd)
        fd = -1
        yield path
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(path)


def spiffe_uri(cert: x509.Certificate) -> str | None:
    """The certificate's SPIFFE ID if it has exactly one URI SAN and that is spiffe://, else None."""
    from cryptography import x509
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1 or not uris[0].startswith(SCHEME):
        return None
    return uris[0]


def peer_spiffe_id(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The SPIFFE ID of the verified peer (`transport.get_extra_info("ssl_object")`), or None."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    from cryptography import x509
    try:
        return spiffe_uri(x509.load_der_x509_certificate(der))
    except ValueError:
        return None


def rotation_due(svid: Svid, now: float, jitter_fraction: float = 0.05,
                 rng: Callable[[], float] = random.random) -> float:
    """Seconds from `now` until a new SVID should be requested (0 if already due).

    Due at half the lifetime (from not_before) minus a random jitter of up to
    `jitter_fraction` of the lifetime.
    """
    start = svid.not_before.timestamp()
    due = start + svid.lifetime * ROTATE_AT_FRACTION - rng() * jitter_fraction * svid.lifetime
    return max(0.0, due - now)


class RotationBackoff:
    """Delays between failed attempts to get a new SVID: exponential, jittered, capped,
    and shortened so that a retry always comes before the current SVID expires."""

    def __init__(self, base: float = 1.0, cap: float = 300.0, rng: Callable[[], float] = random.random) -> None:
        if not 0 < base <= cap:
            raise ValueError(f"backoff needs 0 < base <= cap, got base={base}, cap={cap}")
        self.base, self.cap, self._rng = base, cap, rng
        self.failures = 0

    def next_delay(self, now: float, not_after: float | None = None) -> float:
        """Record one more failure; return how long to wait before the next attempt."""
        self.failures += 1
        backoff = min(self.cap, self.base * 2 ** min(self.failures - 1, 62))
        delay = backoff * (0.5 + self._rng() / 2)   # jitter within [half, full]
        if not_after is not None and now < not_after:
            remaining = not_after - now
            # Halve the remaining time while there is plenty, so several retries fit before
            # expiry; near the end, the last retry lands no later than the expiry itself.
            delay = min(delay, max(remaining / 2, min(remaining, self.base)))
        return delay

    def reset(self) -> None:
        """A new SVID arrived: the next failure starts from `base` again."""
        self.failures = 0
