"""Typed model of Istio's Gateway (networking.istio.io): the servers an ingress or egress
gateway listens with. Field names as in Istio's API (networking/v1/gateway.proto)."""
from __future__ import annotations

from remora.config.model import Spec


class GatewayPort(Spec):
    number: int | None = None
    protocol: str | None = None      # HTTP | HTTPS | GRPC | HTTP2 | TCP | TLS (MONGO, ... refused)
    name: str | None = None
    target_port: int | None = None   # deprecated in Istio; refused as "not supported by Remora"


class ServerTLSSettings(Spec):
    https_redirect: bool | None = None
    mode: str | None = None          # SIMPLE (default) | MUTUAL | PASSTHROUGH | ISTIO_MUTUAL | ...
    server_certificate: str | None = None
    private_key: str | None = None
    ca_certificates: str | None = None
    ca_crl: str | None = None
    credential_name: str | None = None
    credential_names: list[str] = []
    subject_alt_names: list[str] = []
    verify_certificate_spki: list[str] = []
    verify_certificate_hash: list[str] = []
    min_protocol_version: str | None = None
    max_protocol_version: str | None = None
    cipher_suites: list[str] = []


class GatewayServer(Spec):
    port: GatewayPort | None = None
    bind: str | None = None
    hosts: list[str] = []
    tls: ServerTLSSettings | None = None
    default_endpoint: str | None = None
    name: str | None = None


class GatewaySpec(Spec):
    servers: list[GatewayServer] = []
    selector: dict[str, str] = {}
