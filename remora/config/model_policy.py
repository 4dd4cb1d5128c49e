"""Typed model of Istio's Telemetry (telemetry.istio.io), PeerAuthentication and
AuthorizationPolicy (security.istio.io). Field names as in model.py: Istio's, camelCase on
the wire."""
from __future__ import annotations

from typing import Any

import msgspec

from remora.config.model import Spec, TelemetrySelector


# ---- Telemetry (telemetry.istio.io) -------------------------------------------------------

class ProviderRef(Spec):
    name: str


class TelemetryMatch(Spec):
    """Which traffic a tracing / access-logging entry applies to."""

    mode: str | None = None   # CLIENT_AND_SERVER (default) | CLIENT (outbound) | SERVER (inbound)


class TelemetryTracing(Spec):
    match: TelemetryMatch | None = None
    providers: list[ProviderRef] = []
    random_sampling_percentage: float | None = None
    disable_span_reporting: bool | None = None
    use_request_id_for_trace_sampling: bool | None = None


class TelemetryAccessLogging(Spec):
    match: TelemetryMatch | None = None
    providers: list[ProviderRef] = []
    disabled: bool | None = None


class TelemetrySpec(Spec):
    selector: TelemetrySelector | None = None
    tracing: list[TelemetryTracing] = []
    access_logging: list[TelemetryAccessLogging] = []
    metrics: list[Any] = []   # Istio metric overrides: accepted, not applied yet (a warning)


# ---- PeerAuthentication / AuthorizationPolicy (security.istio.io) ------------------------

class PeerMutualTLS(Spec):
    mode: str | None = None   # UNSET (inherit) | DISABLE | PERMISSIVE | STRICT


class PeerAuthenticationSpec(Spec):
    selector: TelemetrySelector | None = None
    mtls: PeerMutualTLS | None = None
    # Istio's map<uint32, MutualTLS>: YAML reads the port keys as integers. None when not
    # given: an empty map is an error (Istio's CRD: at least one port), so the two differ.
    port_level_mtls: dict[int, PeerMutualTLS] | None = None


class AuthzSource(Spec):
    """Who sends the request: peer identity (from mTLS), JWT principal and address."""

    principals: list[str] = []
    not_principals: list[str] = []
    request_principals: list[str] = []       # `<iss>/<sub>` of the request's verified JWT
    not_request_principals: list[str] = []
    namespaces: list[str] = []
    not_namespaces: list[str] = []
    ip_blocks: list[str] = []
    not_ip_blocks: list[str] = []


class AuthzOperation(Spec):
    """What the request asks for. Istio spells ports as strings ("8080")."""

    hosts: list[str] = []
    not_hosts: list[str] = []
    ports: list[str] = []
    not_ports: list[str] = []
    methods: list[str] = []
    not_methods: list[str] = []
    paths: list[str] = []
    not_paths: list[str] = []


class AuthzFrom(Spec):
    source: AuthzSource | None = None


class AuthzTo(Spec):
    operation: AuthzOperation | None = None


class AuthzCondition(Spec):
    key: str
    values: list[str] = []
    not_values: list[str] = []


class AuthzRule(Spec):
    # `from` is a Python keyword: the attribute is from_, the YAML name stays `from`.
    from_: list[AuthzFrom] = msgspec.field(default_factory=list, name="from")
    to: list[AuthzTo] = []
    when: list[AuthzCondition] = []


class AuthorizationPolicySpec(Spec):
    selector: TelemetrySelector | None = None
    action: str | None = None   # ALLOW (default) | DENY | AUDIT; CUSTOM is rejected
    # No rules: an ALLOW policy then allows nothing (Istio's deny-all), DENY denies nothing.
    rules: list[AuthzRule] = []
