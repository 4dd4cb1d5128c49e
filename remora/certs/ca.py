"""The mesh CA: a root it creates itself or an operator's plug-in CA, signing X.509-SVIDs.

What an issued certificate looks like (SPIFFE X.509-SVID standard, as Istio issues them):

- exactly one SAN, a URI: the workload's SPIFFE ID; the SAN is critical because the
  subject is empty (RFC 5280 4.2.1.6), and nothing else from the CSR is copied: only its
  public key is used, so a CSR cannot smuggle in DNS names, a CA flag or a subject;
- BasicConstraints cA=false (critical); KeyUsage digitalSignature (critical), plus
  keyEncipherment for RSA keys (TLS 1.2 RSA key exchange); ExtendedKeyUsage serverAuth
  and clientAuth (every sidecar is both ends of mutual TLS); SKI and AKI;
- a random positive 128-bit serial;
- valid from 60 s before signing (peers whose clocks lag still accept it) for the requested
  TTL: default 24 h; a request above 90 days is refused (as Istio's CA refuses a TTL above
  its maximum), never silently shortened, so a caller learns its setting is wrong; the
  end is cut to the CA's own expiry (a leaf cannot outlive its issuer's chain).

Refused CSRs raise `CsrRejected` with a `reason` code and a message: malformed, bad
signature, weak or unsupported key, a URI SAN different from the identity the caller's
credential proved, a foreign trust domain, or a bad TTL.

State (`load_or_create`): `<state_dir>/root-cert.pem` (0644) and `root-key.pem` (0600),
written atomically; extra trusted roots (root rotation) in `trusted-roots.pem`.
"""
from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from remora.certs import files
from remora.certs.pem import (
    CaError,
    cert_pem,
    certs_from_pem,
    fingerprint,
    is_self_signed,
    key_pem,
    load_certs,
    load_private_key,
    public_key_der,
    signature_hash,
    signed_by,
)
from remora.certs.spiffe import SCHEME, SpiffeId, validate_trust_domain

__all__ = ["CaError", "CertificateAuthority", "CsrRejected", "IssuedCertificate",
           "DEFAULT_TTL_SECONDS", "MAX_TTL_SECONDS", "CLOCK_SKEW_SECONDS"]

DEFAULT_TTL_SECONDS = 24 * 3600
MAX_TTL_SECONDS = 90 * 24 * 3600
CLOCK_SKEW_SECONDS = 60
ROOT_VALIDITY = dt.timedelta(days=3650)
ROOT_CERT_FILE = "root-cert.pem"
ROOT_KEY_FILE = "root-key.pem"
TRUSTED_ROOTS_FILE = "trusted-roots.pem"
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192  # larger keys cost the CA seconds per signature check: refused
ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)

_ORGANIZATION = "Remora"
_MAX_CN = 64  # X.520 upper bound on commonName


class CsrRejected(ValueError):
    """The CA refuses to sign this CSR; `reason` is a short code, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class IssuedCertificate:
    """A signed SVID as the CA hands it out (PEM text, ready to send as JSON)."""

    cert_pem: str
    chain_pems: tuple[str, ...]   # the issuing CA cert first, then its own chain
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    spiffe_id: SpiffeId

    @property
    def full_chain_pem(self) -> str:
        """Leaf then chain: what a TLS server presents."""
        return self.cert_pem + "".join(self.chain_pems)


class CertificateAuthority:
    """Signs SVIDs with one issuing cert + key; knows the chain to serve and the roots to trust."""

    def __init__(self, cert: x509.Certificate, key, chain: list[x509.Certificate],
                 roots: list[x509.Certificate], *, trust_domain: str | None = None,
                 state_dir: Path | None = None) -> None:
        _check_ca_cert(cert, "issuing CA certificate")
        if public_key_der(key) != public_key_der(cert):
            raise CaError("the CA private key does not match the public key of the CA certificate")
        self.cert = cert
        self._key = key
        self._hash = signature_hash(key)
        self.chain = chain                 # served after the leaf: [issuing cert, ...its chain]
        self._own_roots = roots
        self._extra_roots: list[x509.Certificate] = []
        self.trust_domain = validate_trust_domain(trust_domain) if trust_domain else None
        self.state_dir = Path(state_dir) if state_dir else None
        extra = self.state_dir / TRUSTED_ROOTS_FILE if self.state_dir else None
        if extra and extra.exists() and extra.read_bytes().strip():  # empty: every extra root removed
            self._extra_roots = load_certs(extra, "trusted roots")
        ski = _extension(cert, x509.SubjectKeyIdentifier)
        self._aki = (x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski) if ski
                     else x509.AuthorityKeyIdentifier.from_issuer_public_key(cert.public_key()))
        # A leaf must not outlive any certificate of the chain it is served with.
        self.not_after = min(c.not_valid_after_utc for c in [cert, *chain])
        if self.not_after <= dt.datetime.now(dt.timezone.utc):
            raise CaError(f"the CA certificate chain expired on {self.not_after.isoformat()}")

    # ---- construction ------------------------------------------------------------------

    @classmethod
    def load_or_create(cls, state_dir: str | Path, trust_domain: str) -> CertificateAuthority:
        """The self-signed root in `state_dir`, created on first start (EC P-256, 10 years)."""
        validate_trust_domain(trust_domain)
        state = files.ensure_dir(Path(state_dir))
        cert_path, key_path = state / ROOT_CERT_FILE, state / ROOT_KEY_FILE
        with files.locked(state):
            if not cert_path.exists():
                # A key without a cert is a crash between the two writes: nobody can trust
                # that key yet, so it is replaced.
                key = ec.generate_private_key(ec.SECP256R1())
                cert = self_signed_root(key, trust_domain)
                files.write_atomically(key_path, key_pem(key), files.PRIVATE_MODE)
                files.write_atomically(cert_path, cert_pem(cert).encode(), files.PUBLIC_MODE)
        if not key_path.exists():
            raise CaError(f"{cert_path} exists but its key {key_path} is missing")
        cert = load_certs(cert_path, "root certificate")[0]
        key = load_private_key(key_path)
        found = root_trust_domain(cert)
        if found is not None and found != trust_domain:
            raise CaError(f"{cert_path} is the root of trust domain {found!r}, not {trust_domain!r}; "
                          f"use another state directory or the same trust domain")
        return cls(cert, key, [cert], [cert], trust_domain=trust_domain, state_dir=state)

    @classmethod
    def from_files(cls, cert_path: str | Path, key_path: str | Path, chain_path: str | Path | None = None,
                   *, root_path: str | Path | None = None, trust_domain: str | None = None,
                   state_dir: str | Path | None = None) -> CertificateAuthority:
        """An operator's CA (root or intermediate), like Istio's plug-in cacerts.

        `chain_path` holds the issuing cert's chain up to (optionally including) the root,
        with or without the issuing cert first (Istio's cert-chain.pem includes it);
        `root_path` the root(s) to trust, needed when the chain does not end in a
        self-signed root. `state_dir`, if given, keeps extra trusted roots.
        """
        cert = load_certs(Path(cert_path), "CA certificate")[0]
        key = load_private_key(Path(key_path))
        chain = load_certs(Path(chain_path), "CA chain") if chain_path else []
        if chain and chain[0] == cert:
            chain = chain[1:]
        where = str(chain_path or cert_path)
        for child, parent in zip([cert, *chain], chain):
            if not signed_by(child, parent):
                raise CaError(f"{where}: {_name(child)} is not signed by the next certificate "
                              f"in the chain, {_name(parent)}; list the chain from issuer to root")
        for index, parent in enumerate(chain):
            _check_ca_cert(parent, f"{where}: chain certificate {index + 1} ({_name(parent)})")
        top = chain[-1] if chain else cert
        if root_path:
            roots = load_certs(Path(root_path), "root certificate")
            for root in roots:
                _check_ca_cert(root, f"{root_path}: {_name(root)}")
            if not any(top == root or signed_by(top, root) for root in roots):
                raise CaError(f"{_name(top)} does not chain to any root in {root_path}")
        elif is_self_signed(top):
            roots = [top]
        else:
            raise CaError(f"{where}: the chain ends at {_name(top)}, which is not a self-signed root; "
                          f"give the chain up to the root, or root_path")
        if state_dir:
            files.ensure_dir(Path(state_dir))
        return cls(cert, key, [cert, *chain], roots, trust_domain=trust_domain, state_dir=state_dir)

    @classmethod
    def from_istio_cacerts(cls, directory: str | Path, *, trust_domain: str | None = None,
                           state_dir: str | Path | None = None) -> CertificateAuthority:
        """Istio's plug-in layout: ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem."""
        d = Path(directory)
        chain = d / "cert-chain.pem"
        return cls.from_files(d / "ca-cert.pem", d / "ca-key.pem", chain if chain.exists() else None,
                              root_path=d / "root-cert.pem", trust_domain=trust_domain, state_dir=state_dir)

    # ---- trust bundle ------------------------------------------------------------------

    def trust_bundle(self) -> list[str]:
        """PEM roots a sidecar must trust: the CA's own root(s), then extra ones (rotation)."""
        seen: set[str] = set()
        bundle = []
        for root in [*self._own_roots, *self._extra_roots]:
            if (fp := fingerprint(root)) not in seen:
                seen.add(fp)
                bundle.append(cert_pem(root))
        return bundle

    def add_trusted_root(self, pem: str | bytes) -> str:
        """Trust another root (e.g. the next root, before switching to it); persisted. Returns its fingerprint."""
        data = pem.encode() if isinstance(pem, str) else pem
        certs = certs_from_pem(data, "trusted root")
        if len(certs) != 1:
            raise CaError(f"trusted root: expected one certificate, got {len(certs)}")
        root = certs[0]
        _check_ca_cert(root, f"trusted root {_name(root)}")
        fp = fingerprint(root)
        if fp not in {fingerprint(c) for c in [*self._own_roots, *self._extra_roots]}:
            self._save_extra_roots([*self._extra_roots, root])
        return fp

    def remove_trusted_root(self, fp: str) -> None:
        """Stop trusting an extra root (after rotation); the CA's own roots cannot be removed."""
        fp = fp.lower().replace(":", "")
        if fp in {fingerprint(c) for c in self._own_roots}:
            raise CaError(f"root {fp} is this CA's own root and cannot be removed")
        kept = [c for c in self._extra_roots if fingerprint(c) != fp]
        if len(kept) == len(self._extra_roots):
            raise CaError(f"no extra trusted root has fingerprint {fp}")
        self._save_extra_roots(kept)

    def _save_extra_roots(self, roots: list[x509.Certificate]) -> None:
        if self.state_dir is None:
            raise CaError("this CA has no state directory to keep extra trusted roots in")
        with files.locked(self.state_dir):
            files.write_atomically(self.state_dir / TRUSTED_ROOTS_FILE,
                                   "".join(cert_pem(c) for c in roots).encode(), files.PUBLIC_MODE)
        self._extra_roots = roots

    # ---- signing -----------------------------------------------------------------------

    def sign_csr(self, csr_pem: str | bytes, identity: SpiffeId, ttl_seconds: float = DEFAULT_TTL_SECONDS,
                 *, now: dt.datetime | None = None) -> IssuedCertificate:
        """Sign an X.509-SVID for `identity` (proved by the caller's credential) with the CSR's key."""
        now = now or dt.datetime.now(dt.timezone.utc)
        if not isinstance(identity, SpiffeId):
            raise TypeError(f"identity must be a SpiffeId, got {type(identity).__name__}")
        if self.trust_domain and identity.trust_domain != self.trust_domain:
            raise CsrRejected("trust-domain", f"identity {identity} is outside this CA's trust domain "
                                              f"{self.trust_domain!r}")
        if not 0 < ttl_seconds <= MAX_TTL_SECONDS:
            raise CsrRejected("ttl", f"requested TTL {ttl_seconds:g}s is outside (0, {MAX_TTL_SECONDS}s] "
                                     f"(at most 90 days)")
        if now >= self.not_after:
            raise CaError(f"the CA certificate chain expired on {self.not_after.isoformat()}")
        csr = _parse_csr(csr_pem)
        _check_csr_key(csr.public_key())
        _check_csr_identity(csr, identity)
        not_before = now - dt.timedelta(seconds=CLOCK_SKEW_SECONDS)
        not_after = min(now + dt.timedelta(seconds=ttl_seconds), self.not_after)
        public_key = csr.public_key()
        serial = secrets.randbits(128) or 1
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_leaf_key_usage(rsa_key=isinstance(public_key, rsa.RSAPublicKey)), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(self._aki, critical=False)
        )
        leaf = builder.sign(self._key, self._hash)
        return IssuedCertificate(cert_pem=cert_pem(leaf), chain_pems=tuple(cert_pem(c) for c in self.chain),
                                 serial=serial, not_before=leaf.not_valid_before_utc,
                                 not_after=leaf.not_valid_after_utc, spiffe_id=identity)


    def issue_server_certificate(self, dns_names: list[str], ttl_seconds: float = DEFAULT_TTL_SECONDS
                                 ) -> tuple[str, str]:
        """A serving certificate for DNS names (the admission webhook's: the API server
        checks it against the webhook Service's name), with a fresh key: (chain PEM, key PEM)."""
        now = dt.datetime.now(dt.timezone.utc)
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0][:_MAX_CN])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(secrets.randbits(128) or 1)
            .not_valid_before(now - dt.timedelta(seconds=CLOCK_SKEW_SECONDS))
            .not_valid_after(min(now + dt.timedelta(seconds=ttl_seconds), self.not_after))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_leaf_key_usage(rsa_key=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
            .add_extension(self._aki, critical=False)
            .sign(self._key, self._hash)
        )
        chain = cert_pem(leaf) + "".join(cert_pem(c) for c in self.chain)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        return chain, key_pem


# ---- helpers ---------------------------------------------------------------------------

def self_signed_root(key, trust_domain: str) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
        x509.NameAttribute(NameOID.COMMON_NAME, f"Remora Root CA {trust_domain}"[:_MAX_CN]),
    ])
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(secrets.randbits(128) or 1)
        .not_valid_before(now - dt.timedelta(seconds=CLOCK_SKEW_SECONDS))
        .not_valid_after(now + ROOT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        # The trust domain's own SPIFFE ID (no path), as SPIRE marks its CAs: how a
        # restarted CA checks it is serving the trust domain it was created for.
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(SCHEME + trust_domain)]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
        .sign(key, signature_hash(key))
    )


def _leaf_key_usage(rsa_key: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=rsa_key,
                         data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                         encipher_only=False, decipher_only=False)


def _parse_csr(csr_pem: str | bytes) -> x509.CertificateSigningRequest:
    data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
    if b"-----BEGIN CERTIFICATE REQUEST-----" not in data:
        raise CsrRejected("malformed", "not a PEM certificate request (no BEGIN CERTIFICATE REQUEST)")
    try:
        csr = x509.load_pem_x509_csr(data)
        valid = csr.is_signature_valid
    except (ValueError, TypeError) as error:
        raise CsrRejected("malformed", f"unreadable certificate request: {error}") from None
    if not valid:
        raise CsrRejected("bad-signature", "the CSR's signature does not verify with its own public key")
    return csr


def _check_csr_key(key) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ALLOWED_CURVES):
            raise CsrRejected("key-type", f"EC curve {key.curve.name} is not allowed; use P-256 or P-384")
    elif isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise CsrRejected("key-type", f"RSA key of {key.key_size} bits; {MIN_RSA_BITS} to {MAX_RSA_BITS} allowed")
    else:
        raise CsrRejected("key-type", f"{type(key).__name__.lstrip('_')} keys are not allowed; "
                                      f"use EC P-256/P-384 or RSA >= {MIN_RSA_BITS}")


def _check_csr_identity(csr: x509.CertificateSigningRequest, identity: SpiffeId) -> None:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return  # the identity comes from the credential; a CSR need not repeat it
    except ValueError as error:  # duplicate or malformed extensions
        raise CsrRejected("malformed", f"unreadable CSR extensions: {error}") from None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri != identity.uri:
            raise CsrRejected("identity-mismatch", f"the CSR asks for {uri}, but the credential "
                                                   f"proves {identity}")


def _check_ca_cert(cert: x509.Certificate, what: str) -> None:
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise CaError(f"{what} is not a CA certificate (BasicConstraints cA is not true)")
    usage = _extension(cert, x509.KeyUsage)
    if usage is not None and not usage.key_cert_sign:
        raise CaError(f"{what} may not sign certificates (KeyUsage lacks keyCertSign)")


def _extension(cert: x509.Certificate, kind):
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def root_trust_domain(root: x509.Certificate) -> str | None:
    san = _extension(root, x509.SubjectAlternativeName)
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier) if san else []:
        if uri.startswith(SCHEME) and "/" not in uri[len(SCHEME):]:
            return uri[len(SCHEME):]
    return None


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or f"serial {cert.serial_number:x}"

