"""One `credentialName`'s material as PEM bytes: the value every credential source gives.

Here, in the bottom layer, because both sides of the seam use it: the gateway
(remora/proxy/security/credentials.py defines the CredentialSource Protocol) and the
Kubernetes Secrets source (remora/kube/secrets.py), which must not import remora/proxy.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Credential:
    """Certificate chain, private key and CA (None: the credential has none), PEM bytes."""

    cert_pem: bytes
    key_pem: bytes = b""
    ca_pem: bytes | None = None
    origin: str = ""      # e.g. "secret istio-system/cred (kubernetes.io/tls, ...)", "files /creds/cred"

    def __repr__(self) -> str:    # never print a key
        return f"Credential(origin={self.origin!r}, ca={self.ca_pem is not None})"


class CredentialSourceError(Exception):
    """A credential source cannot start (no usable Kubernetes client configuration, ...)."""
