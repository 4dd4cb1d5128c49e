"""How a sidecar proves who it is before the CA signs for it: the credential verifier seam.

The CA signs a CSR only for the identity a credential proves; the identity never comes from
the CSR itself. A verifier turns the credential string a sidecar presents (a Remora join
token today; a Kubernetes service-account token, checked with a TokenReview, later) into
the namespace and service account it stands for, or raises CredentialRejected.
"""
from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

from remora.certs.spiffe import SpiffeId


class Identity(NamedTuple):
    """The workload a credential stands for."""

    namespace: str
    service_account: str

    def spiffe_id(self, trust_domain: str) -> SpiffeId:
        return SpiffeId(trust_domain, self.namespace, self.service_account)


class CredentialRejected(Exception):
    """The credential proves nothing; `reason` is a short code (malformed, unknown, expired, revoked)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@runtime_checkable
class CredentialVerifier(Protocol):
    """Anything that maps a presented credential to an Identity or raises CredentialRejected."""

    def verify(self, credential: str) -> Identity: ...
