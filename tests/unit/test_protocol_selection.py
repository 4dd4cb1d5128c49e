"""Istio's protocol selection and upstream HTTP version, as config/protocols.py states them."""
from __future__ import annotations

import pytest

from remora.config.protocols import declared_protocol, upstream_http2


@pytest.mark.parametrize("protocol, name, expected", [
    ("grpc", "anything", "GRPC"), (None, "grpc-api", "GRPC"), (None, "http2", "HTTP2"),
    # grpc-web is one prefix (Istio's kube.ConvertProtocol checks it before cutting at '-')
    (None, "grpc-web", "GRPC-WEB"), (None, "grpc-web-ui", "GRPC-WEB"), (None, "http-web", "HTTP"), (None, "tcp-db", "TCP"),
    (None, "web", None), (None, None, None), ("HTTP", "grpc", "HTTP"),
])
def test_protocol_field_wins_then_name_prefix(protocol, name, expected):
    """The protocol field decides; else the name's prefix before '-'; unknown prefixes are undeclared."""
    assert declared_protocol(protocol, name) == expected


@pytest.mark.parametrize("name, app_protocol, port, expected", [
    ("web", "http", 80, "HTTP"),                   # appProtocol wins over the name
    ("grpc", "HTTP2", 7070, "HTTP2"),
    ("tcp", "kubernetes.io/h2c", 80, "HTTP2"),     # Kubernetes' standard names
    ("x", "kubernetes.io/ws", 80, "HTTP"),
    ("x", "kubernetes.io/wss", 443, "HTTPS"),
    ("x", "grpc-web", 80, "GRPC-WEB"),
    ("web", "custom.io/thing", 80, None),          # appProtocol given and unknown: undeclared
    ("web", None, 3306, "TCP"),                    # well-known ports are never sniffed
    ("web", None, 53, "TCP"),
    ("http", None, 3306, "HTTP"),                  # ... unless the name declares them
    (None, None, 8080, None),
])
def test_kubernetes_port_protocol(name, app_protocol, port, expected):
    """A Kubernetes Service port: appProtocol (and Kubernetes' h2c/ws/wss names), else the name prefix, else TCP on well-known ports."""
    assert declared_protocol(None, name, app_protocol, port) == expected


@pytest.mark.parametrize("protocol, policy, client_protocol, client_h2, expected", [
    ("GRPC", None, None, False, True),            # gRPC stays HTTP/2 upstream
    ("HTTP2", None, None, False, True),
    ("GRPC-WEB", None, None, False, True),
    ("HTTP", None, None, True, False),            # Istio's default: DO_NOT_UPGRADE
    ("HTTP", "DEFAULT", None, True, False),
    ("HTTP", "UPGRADE", None, False, True),       # h2UpgradePolicy UPGRADE
    ("HTTP", "DO_NOT_UPGRADE", None, True, False),
    ("HTTP", None, True, True, True),             # useClientProtocol follows the client
    ("HTTP", "UPGRADE", True, False, False),      # ... even over UPGRADE
    ("GRPC", None, True, False, False),
    ("TCP", "UPGRADE", None, True, False),        # not an HTTP port
    (None, "UPGRADE", None, True, False),
])
def test_upstream_http_version_follows_istio(protocol, policy, client_protocol, client_h2, expected):
    """HTTP/2 upstream for HTTP2/GRPC ports, HTTP with UPGRADE, or the client's with useClientProtocol."""
    assert upstream_http2(protocol, policy, client_protocol, client_h2) is expected
