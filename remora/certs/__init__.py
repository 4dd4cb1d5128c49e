"""Workload identity: SPIFFE IDs, the mesh CA, join tokens, and the sidecar's SVID handling.

    spiffe.py       SpiffeId: parse/format/validate spiffe://<td>/ns/<ns>/sa/<sa>
    ca.py           CertificateAuthority: self-signed root or plug-in CA; sign_csr -> IssuedCertificate
    credentials.py  Identity, CredentialVerifier (the seam for join tokens / Kubernetes tokens)
    tokens.py       JoinTokenStore: hashed, expiring, revocable bootstrap tokens
    client.py       sidecar side: key + CSR, Svid -> ssl.SSLContext, peer_spiffe_id, rotation timing
    pem.py, files.py  PEM helpers; atomic 0600 state files under a lock
"""
from remora.certs.ca import (
    CLOCK_SKEW_SECONDS,
    DEFAULT_TTL_SECONDS,
    MAX_TTL_SECONDS,
    CaError,
    CertificateAuthority,
    CsrRejected,
    IssuedCertificate,
)
from remora.certs.client import (
    ALPN_PROTOCOLS,
    RotationBackoff,
    Svid,
    SvidError,
    generate_key_and_csr,
    peer_spiffe_id,
    rotation_due,
)
from remora.certs.credentials import CredentialRejected, CredentialVerifier, Identity
from remora.certs.spiffe import InvalidSpiffeId, SpiffeId
from remora.certs.tokens import JoinTokenStore, TokenInfo, TokenRejected, TokenStoreCorrupt

__all__ = [
    "ALPN_PROTOCOLS", "CLOCK_SKEW_SECONDS", "DEFAULT_TTL_SECONDS", "MAX_TTL_SECONDS",
    "CaError", "CertificateAuthority", "CredentialRejected", "CredentialVerifier", "CsrRejected",
    "Identity", "InvalidSpiffeId", "IssuedCertificate", "JoinTokenStore", "RotationBackoff",
    "SpiffeId", "Svid", "SvidError", "TokenInfo", "TokenRejected", "TokenStoreCorrupt",
    "generate_key_and_csr", "peer_spiffe_id", "rotation_due",
]
