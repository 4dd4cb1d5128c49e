"""Capture decisions that need no sockets: HTTP sniffing and original destination -> mesh service."""
from __future__ import annotations

import yaml

from remora.config.loader import build_mesh_config
from remora.intercept.capture import looks_like_http
from remora.intercept.destinations import DestinationIndex, declared_protocol
from remora.proxy.upstream.cluster import build_clusters


def test_request_lines_are_http_and_binary_is_not():
    """A `METHOD ` start is HTTP; binary, TLS and lower case are not; a short upper-case prefix needs more bytes."""
    assert looks_like_http(b"GET / HTTP/1.1\r\n") is True
    assert looks_like_http(b"OPTIONS * HTTP/1.1") is True
    assert looks_like_http(b"\x16\x03\x01\x02\x00") is False
    assert looks_like_http(b"get / HTTP/1.1") is False
    assert looks_like_http(b" GET") is False
    assert looks_like_http(b"POS") is None
    assert looks_like_http(b"A" * 30) is False


def test_declared_protocol_from_field_or_name_prefix():
    """Istio's protocol selection: the protocol field first, else the port name's prefix, else undeclared."""
    assert declared_protocol("tcp", "http-x") == "TCP"
    assert declared_protocol(None, "tcp-db") == "TCP"
    assert declared_protocol(None, "grpc-api") == "GRPC"
    assert declared_protocol(None, "web") is None


MESH = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.example]
  addresses: [10.96.0.20, 10.97.0.0/16]
  ports: [{number: 5432, name: tcp-pg}]
  resolution: STATIC
  endpoints: [{address: 10.1.0.5, ports: {tcp-pg: 15432}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web}
spec:
  hosts: [web.example]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.1.0.6}]
"""


def index() -> DestinationIndex:
    config = build_mesh_config([(doc, "mesh.yaml") for doc in yaml.safe_load_all(MESH)])
    return DestinationIndex(config, build_clusters(config))


def test_vip_cidr_and_endpoint_find_the_service_port():
    """A VIP, an address inside a CIDR address, or an endpoint address:port names the service port."""
    found = index()
    for ip, port in (("10.96.0.20", 5432), ("10.97.3.4", 5432), ("10.1.0.5", 15432)):
        dest = found.find(ip, port)
        assert dest is not None and dest.fqdn == "db.example" and dest.port == 5432 and dest.opaque
    web = found.find("10.1.0.6", 80)
    assert web is not None and not web.opaque and web.authority == b"web.example:80"


def test_unknown_destinations_and_other_ports_are_not_mesh():
    """A VIP on a port the service does not have, or an unknown address, is no mesh service (passthrough)."""
    found = index()
    assert found.find("10.96.0.20", 80) is None
    assert found.find("10.97.3.4", 80) is None
    assert found.find("192.0.2.1", 5432) is None
