"""Istio's protocol selection and HTTP/2 upstream choice, written once for the data plane,
capture and the Envoy renderer.

- A port's protocol: the `protocol` field (ServiceEntry), else the port name's prefix up to
  the first `-` (`grpc-api`, `http2`, `tcp-db`); anything else is undeclared (sniffed).
- Which HTTP version goes upstream (Istio's cluster builder: setH2Options, shouldH2Upgrade,
  useClientProtocol):
  - DestinationRule `connectionPool.http.useClientProtocol: true`: the client's version;
  - a port declared HTTP2, GRPC or GRPC-WEB: HTTP/2;
  - a port declared HTTP: HTTP/2 only with `h2UpgradePolicy: UPGRADE` (the mesh default
    is DO_NOT_UPGRADE, as in Istio); otherwise HTTP/1.1;
  - anything else (TCP, TLS, undeclared) is not an HTTP cluster.
"""
from __future__ import annotations

HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB", "HTTP_PROXY"})
HTTP2_PROTOCOLS = frozenset({"HTTP2", "GRPC", "GRPC-WEB"})
KNOWN_PROTOCOLS = HTTP_PROTOCOLS | {"TCP", "TLS", "HTTPS", "MONGO", "MYSQL", "REDIS"}


def declared_protocol(protocol: str | None, name: str | None) -> str | None:
    """Istio's protocol selection: the protocol field, else the port name's prefix."""
    if protocol:
        return protocol.upper()
    prefix = (name or "").split("-", 1)[0].upper()
    return prefix if prefix in KNOWN_PROTOCOLS else None


def upstream_http2(protocol: str | None, h2_upgrade_policy: str | None = None,
                   use_client_protocol: bool | None = None, client_http2: bool = False) -> bool:
    """True when requests to a port of this protocol go upstream as HTTP/2 (see the module doc)."""
    if use_client_protocol:
        return client_http2
    if protocol in HTTP2_PROTOCOLS:
        return True
    return protocol == "HTTP" and h2_upgrade_policy == "UPGRADE"
