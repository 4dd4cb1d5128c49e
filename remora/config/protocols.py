"""Istio's protocol selection and HTTP/2 upstream choice, written once for the data plane,
capture and the Envoy renderer.

- A port's protocol: the `protocol` field (ServiceEntry), else (a Kubernetes Service port,
  Istio's kube.ConvertProtocol) `appProtocol` (with Kubernetes' standard names
  `kubernetes.io/h2c` = HTTP2, `kubernetes.io/ws` = HTTP, `kubernetes.io/wss` = HTTPS), else
  the port name; of a name, the prefix up to the first `-` counts (`grpc-api`, `http2`,
  `tcp-db`), `grpc-web` being one prefix. A Kubernetes port declared UDP is UDP. Anything
  else is undeclared (sniffed), except the well-known ports Istio never sniffs (25 SMTP,
  53 DNS, 3306 MySQL, 27017 MongoDB), which are TCP.
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
# Kubernetes' standard appProtocol names (core/v1 ServicePort.appProtocol).
_KUBERNETES_APP_PROTOCOLS = {"kubernetes.io/h2c": "HTTP2", "kubernetes.io/ws": "HTTP",
                             "kubernetes.io/wss": "HTTPS"}
# Istio makes these TCP when nothing else declares them: sniffing would break their clients.
_WELL_KNOWN_TCP_PORTS = frozenset({25, 53, 3306, 27017})


def declared_protocol(protocol: str | None, name: str | None, app_protocol: str | None = None,
                      port: int | None = None) -> str | None:
    """Istio's protocol selection (see the module doc): protocol field, appProtocol, name prefix."""
    if protocol:
        return protocol.upper()
    text = name or ""
    if app_protocol is not None:
        if app_protocol in _KUBERNETES_APP_PROTOCOLS:
            return _KUBERNETES_APP_PROTOCOLS[app_protocol]
        text = app_protocol
    if text[:8].upper() == "GRPC-WEB":
        return "GRPC-WEB"
    prefix = text.split("-", 1)[0].upper()
    if prefix in KNOWN_PROTOCOLS:
        return prefix
    return "TCP" if port in _WELL_KNOWN_TCP_PORTS else None


def upstream_http2(protocol: str | None, h2_upgrade_policy: str | None = None,
                   use_client_protocol: bool | None = None, client_http2: bool = False) -> bool:
    """True when requests to a port of this protocol go upstream as HTTP/2 (see the module doc)."""
    if use_client_protocol:
        return client_http2
    if protocol in HTTP2_PROTOCOLS:
        return True
    return protocol == "HTTP" and h2_upgrade_policy == "UPGRADE"
