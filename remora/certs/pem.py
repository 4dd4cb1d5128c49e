"""Reading and writing PEM: certificates and keys, with errors that name the file."""
from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa


class CaError(Exception):
    """The CA's own material (cert, key, chain, roots) is missing, unreadable or unfit."""


def read_bytes(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise CaError(f"cannot read {what} {path}: {error.strerror or error}") from None


def certs_from_pem(data: bytes, where: str) -> list[x509.Certificate]:
    """Every certificate in `data`, in order; CaError naming `where` if there is none."""
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CaError(f"{where}: no PEM certificate in it")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise CaError(f"{where}: invalid PEM certificate: {error}") from None


def load_certs(path: Path, what: str) -> list[x509.Certificate]:
    return certs_from_pem(read_bytes(path, what), str(path))


def load_private_key(path: Path, what: str = "CA key") -> object:
    data = read_bytes(path, what)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CaError(f"{path}: the key is encrypted; give an unencrypted PEM key (as Istio's cacerts)") from None
    except ValueError as error:
        raise CaError(f"{path}: not a PEM private key: {error}") from None


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key) -> bytes:
    """Unencrypted PKCS#8 PEM; only the CA writes this, to a 0600 file."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lowercase hex (what `openssl x509 -fingerprint -sha256` shows)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def public_key_der(key_or_cert) -> bytes:
    public = key_or_cert.public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def signature_hash(private_key) -> hashes.HashAlgorithm | None:
    """The hash to sign with: SHA-384 for P-384 and larger keys, SHA-256 otherwise, none for EdDSA."""
    if isinstance(private_key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    if isinstance(private_key, ec.EllipticCurvePrivateKey) and private_key.curve.key_size >= 384:
        return hashes.SHA384()
    if isinstance(private_key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        return hashes.SHA256()
    raise CaError(f"unsupported CA key type {type(private_key).__name__}; use EC, RSA or Ed25519")


def is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject and signed_by(cert, cert)


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # noqa: BLE001 - InvalidSignature, ValueError (names differ), TypeError (key type)
        return False
    return True
