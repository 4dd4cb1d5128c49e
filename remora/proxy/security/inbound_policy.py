"""What the inbound listener enforces for this workload, compiled once per config version.

`InboundPolicy` holds the mTLS mode of the app port (PeerAuthentication), the compiled
RequestAuthentications (JwtAuthenticator) and AuthorizationPolicies (Authorizer) for the
sidecar's own workload (namespace and labels
from --namespace / --labels). A Snapshot builds one; the inbound acceptor reads the mode
when it accepts a connection and the listener checks each request head against the
authorizer, so a config push applies to the next connection (mode) and the next request
(authorization) without touching established state.

`PeerCertificate` is what a verified mTLS connection knows about its caller, computed once
per connection after the handshake: the principal and namespace that AuthorizationPolicy
`principals` / `namespaces` match, the Istio metric label, and the x-forwarded-client-cert
line the app receives. Plaintext connections have none (None), so principal and namespace
rules never match them.
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass

import msgspec

from remora.config.model import MeshConfig
from remora.proxy.security.authz import Authorizer, AuthzRequest, applies_to
from remora.proxy.security.identity import UNKNOWN, WorkloadIdentity
from remora.proxy.security.jwt_authn import JwtAuthenticator, compile_authenticator
from remora.proxy.security.peer_auth import effective_mtls_mode
from remora.proxy.telemetry.telemetry_policy import scopes
from remora.proxy.security.tls import principal_of

DENIED_BODY = b"RBAC: access denied"   # Envoy's RBAC filter's local reply


class PeerCertificate:
    """The verified client certificate of one mTLS connection."""

    __slots__ = ("spiffe_id", "principal", "namespace", "metric_principal", "xfcc")

    def __init__(self, spiffe_id: str | None, der: bytes, local_spiffe_id: str | None) -> None:
        self.spiffe_id = spiffe_id
        self.principal = principal_of(spiffe_id)          # `td/ns/NS/sa/SA`, Istio's form
        self.namespace = namespace_of(self.principal)
        # Interned: Istio metric series are keyed by it, one object per caller identity.
        self.metric_principal = sys.intern(spiffe_id) if spiffe_id else UNKNOWN
        self.xfcc = xfcc_line(local_spiffe_id, der, spiffe_id)

    @classmethod
    def of(cls, transport, local_spiffe_id: str | None) -> "PeerCertificate | None":
        """The peer of a TLS transport after its handshake; None without a client certificate."""
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            return None
        # Here, not at import: certs.client loads cryptography, which plaintext sidecars never use.
        from remora.certs.client import peer_spiffe_id
        return cls(peer_spiffe_id(ssl_object), der, local_spiffe_id)


def namespace_of(principal: str | None) -> str | None:
    """The namespace in an Istio principal `td/ns/NS/sa/SA`, or None."""
    if principal is None:
        return None
    parts = principal.split("/")
    return parts[2] if len(parts) >= 5 and parts[1] == "ns" else None


def xfcc_line(local_spiffe_id: str | None, der: bytes, peer_id: str | None) -> bytes:
    """Envoy's x-forwarded-client-cert for SANITIZE_SET with URI: `By=..;Hash=..;URI=..`.

    By is this sidecar's SPIFFE ID, Hash the hex SHA-256 of the peer certificate (DER),
    URI the peer's SPIFFE ID; a part Envoy would leave out (no value) is left out.
    """
    parts = []
    if local_spiffe_id:
        parts.append(f"By={local_spiffe_id}")
    parts.append(f"Hash={hashlib.sha256(der).hexdigest()}")
    if peer_id:
        parts.append(f"URI={peer_id}")
    return b"x-forwarded-client-cert: " + ";".join(parts).encode() + b"\r\n"


class HeadHeaders:
    """A request head's headers as AuthzRequest.headers reads them (lower-case str names),
    looked up only when a `request.headers[...]` condition asks, not copied per request."""

    __slots__ = ("head",)

    def __init__(self, head) -> None:
        self.head = head

    def get(self, name: str) -> str | None:
        value = self.head.header(name.encode("latin-1"))
        return None if value is None else value.decode("latin-1")


@dataclass(frozen=True)
class InboundPolicy:
    """The inbound side's mTLS mode and authorization for one config version."""

    port: int                       # the app port: PeerAuthentication portLevelMtls key, destination.port
    mode: str                       # STRICT | PERMISSIVE | DISABLE for that port
    workload_mode: str              # the mode without port-level overrides (shown in the dump)
    authorizer: Authorizer | None   # None: no AuthorizationPolicy applies (everything allowed)
    dump: dict                      # what /config_dump shows
    authenticator: JwtAuthenticator | None = None   # None: no RequestAuthentication applies

    def request(self, head, jwt=None) -> AuthzRequest:
        """The evaluator's view of one inbound request head (and its verified JWT, if any)."""
        cert = head.peer_cert
        return AuthzRequest(
            source_principal=cert.principal if cert is not None else None,
            source_namespace=cert.namespace if cert is not None else None,
            source_ip=head.peer_ip.decode("latin-1"),
            host=head.authority.decode("latin-1"),
            method=head.method.decode("latin-1"),
            path=head.path.decode("latin-1"),
            port=self.port,
            headers=HeadHeaders(head),
            request_auth=jwt,
        )


def compile_inbound_policy(config: MeshConfig, identity: WorkloadIdentity, app_port: int) -> InboundPolicy:
    """The PeerAuthentication mode and AuthorizationPolicies that apply to this workload."""
    namespace, labels = identity.namespace, identity.labels
    mode = effective_mtls_mode(config.peer_authentications, namespace, labels, app_port)
    workload_mode = effective_mtls_mode(config.peer_authentications, namespace, labels)
    authorizer = Authorizer(config.authorization_policies, namespace, labels)
    applying = [p for p in config.authorization_policies if applies_to(p, namespace, labels)]
    authenticating = [p for p in config.request_authentications if applies_to(p, namespace, labels)]
    dump = {
        "mtls": {"mode": workload_mode, "ports": {str(app_port): mode},
                 "peer_authentications": [_summary(p) for p in
                                          scopes(config.peer_authentications, namespace, labels)]},
        "authorization_policies": [{**_summary(p), "action": p.spec.action or "ALLOW"}
                                   for p in sorted(applying, key=lambda p: (p.namespace, p.name))],
        "request_authentications": [_summary(p) for p in sorted(authenticating, key=lambda p: (p.namespace, p.name))],
    }
    return InboundPolicy(app_port, mode, workload_mode, None if authorizer.empty else authorizer, dump,
                         compile_authenticator(config.request_authentications, namespace, labels))


def _summary(resource) -> dict:
    return {"name": resource.name, "namespace": resource.namespace, "source": resource.source,
            "spec": msgspec.to_builtins(resource.spec)}
