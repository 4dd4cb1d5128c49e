"""Workload identity: SPIFFE IDs, the mesh CA, join tokens, and the sidecar's SVID handling.

    spiffe.py       SpiffeId: parse/format/validate spiffe://<td>/ns/<ns>/sa/<sa>
    ca.py           CertificateAuthority: self-signed root or plug-in CA; sign_csr -> IssuedCertificate
    credentials.py  Identity, CredentialVerifier (the seam for join tokens / Kubernetes tokens)
    tokens.py       JoinTokenStore: hashed, expiring, revocable bootstrap tokens
    client.py       sidecar side: key + CSR, Svid -> ssl.SSLContext, peer_spiffe_id, rotation timing
    pem.py, files.py  PEM helpers; atomic 0600 state files under a lock
"""
# Names are loaded on first use (PEP 562): ca.py and client.py import cryptography (~8 MiB),
# which a plaintext sidecar importing, say, remora.certs.credential must not pay for.
_HOMES = {
    "ca": ("CLOCK_SKEW_SECONDS", "DEFAULT_TTL_SECONDS", "MAX_TTL_SECONDS", "CaError", "CertificateAuthority",
           "CsrRejected", "IssuedCertificate"),
    "client": ("ALPN_PROTOCOLS", "RotationBackoff", "Svid", "SvidError", "generate_key_and_csr",
               "peer_spiffe_id", "rotation_due"),
    "credentials": ("CredentialRejected", "CredentialVerifier", "Identity"),
    "spiffe": ("InvalidSpiffeId", "SpiffeId"),
    "tokens": ("JoinTokenStore", "TokenInfo", "TokenRejected", "TokenStoreCorrupt"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "ALPN_PROTOCOLS", "CLOCK_SKEW_SECONDS", "DEFAULT_TTL_SECONDS", "MAX_TTL_SECONDS",
    "CaError", "CertificateAuthority", "CredentialRejected", "CredentialVerifier", "CsrRejected",
    "Identity", "InvalidSpiffeId", "IssuedCertificate", "JoinTokenStore", "RotationBackoff",
    "SpiffeId", "Svid", "SvidError", "TokenInfo", "TokenRejected", "TokenStoreCorrupt",
    "generate_key_and_csr", "peer_spiffe_id", "rotation_due",
]


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
