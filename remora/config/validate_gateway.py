"""Rules of a Gateway: Istio's own (pilot/pkg/config/validation: validateGateway,
validateServer, validateServerPort, validateTLSOptions), with Istio's messages, then
Remora's fail-closed rule: a server feature Remora does not serve is refused by name
("not supported by Remora"), never loaded and ignored.

Served: protocols HTTP, HTTPS, HTTP2, GRPC, TCP (VirtualService tcp routes), and TLS or
HTTPS in PASSTHROUGH (VirtualService tls routes by SNI, nothing terminated); TLS modes
SIMPLE and MUTUAL (certificate files or `credentialName`) and ISTIO_MUTUAL (the mesh's
mTLS: an egress gateway), `httpsRedirect`, `minProtocolVersion` / `maxProtocolVersion`,
`cipherSuites`, `bind` (an IP address); a TLS server that terminates proxies TCP by the
VirtualService `tcp` routes. Refused: MONGO / REDIS / ... servers, AUTO_PASSTHROUGH and OPTIONAL_MUTUAL, and the client-certificate pinning
fields (subjectAltNames, verifyCertificateSpki/Hash, caCrl) that would otherwise be skipped.
"""
from __future__ import annotations

from remora.config.model_gateway import GatewaySpec, GatewayServer, ServerTLSSettings
from remora.config.schema import Problem
from remora.config.field_checks import DNS_LABEL, is_host_pattern, is_ip

HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC"})
TLS_PROTOCOLS = frozenset({"HTTPS", "TLS"})
ISTIO_PROTOCOLS = frozenset({"HTTP", "HTTPS", "HTTP2", "GRPC", "GRPC-WEB", "MONGO", "REDIS", "MYSQL",
                             "TCP", "TLS", "UDP"})
SERVED_PROTOCOLS = frozenset({"HTTP", "HTTPS", "HTTP2", "GRPC", "TCP", "TLS"})
TLS_MODES = frozenset({"PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL"})
SERVED_TLS_MODES = frozenset({"SIMPLE", "MUTUAL", "ISTIO_MUTUAL", "PASSTHROUGH"})
TLS_VERSIONS = ("TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3")


def validate_gateway(spec: GatewaySpec, path: str = "spec") -> list[Problem]:
    """Every problem of one Gateway spec, each with its field path."""
    problems: list[Problem] = []
    if not spec.servers:
        problems.append(Problem(f"{path}.servers", "gateway must have at least one server"))
    names: dict[str, int] = {}
    for i, server in enumerate(spec.servers):
        where = f"{path}.servers[{i}]"
        problems += _server(server, where)
        if server.port is not None and server.port.name is not None:
            if server.port.name in names:
                problems.append(Problem(f"{where}.port.name", "port names in servers must be unique: "
                                        f"duplicate name {server.port.name} (servers[{names[server.port.name]}])"))
            names.setdefault(server.port.name, i)
    for key, value in spec.selector.items():
        if "*" in value or "*" in key:
            problems.append(Problem(f'{path}.selector["{key}"]', "wildcard is not supported in selector"))
    return problems


def _server(server: GatewayServer, path: str) -> list[Problem]:
    problems: list[Problem] = []
    if not server.hosts:
        problems.append(Problem(f"{path}.hosts", "server config must contain at least one host"))
    for i, host in enumerate(server.hosts):
        message = host_problem(host)
        if message:
            problems.append(Problem(f"{path}.hosts[{i}]", message))
    port = server.port
    protocol = None
    if port is None:
        problems.append(Problem(f"{path}.port", "port is required"))
    else:
        protocol = (port.protocol or "").upper()
        if protocol not in ISTIO_PROTOCOLS:
            problems.append(Problem(f"{path}.port.protocol", f"invalid protocol {port.protocol!r}, supported "
                                    "protocols are HTTP, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP"))
            protocol = None
        elif protocol not in SERVED_PROTOCOLS:
            problems.append(Problem(f"{path}.port.protocol", f"protocol {protocol} on a gateway server is not "
                                    "supported by Remora (it serves HTTP, HTTPS, HTTP2, GRPC, TCP and TLS)"))
        if port.number is None or not 1 <= port.number <= 65535:
            problems.append(Problem(f"{path}.port.number", f"port number {port.number} must be in the range 1..65535"))
        if port.target_port:
            problems.append(Problem(f"{path}.port.targetPort", "targetPort has no impact on Gateways"))
        if not port.name:
            problems.append(Problem(f"{path}.port.name", "port name must be set"))
    if server.bind is not None and not is_ip(server.bind):
        problems.append(Problem(f"{path}.bind", f"{server.bind} is not a valid IP" if not server.bind.startswith(
            "unix://") else "a unix domain socket bind is not supported by Remora"))
    if server.default_endpoint is not None:
        problems.append(Problem(f"{path}.defaultEndpoint", "defaultEndpoint applies to a Sidecar's ingress "
                                "listener, not to a Gateway server"))
    if server.tls is not None:
        problems += _tls(server.tls, f"{path}.tls")
    if protocol in TLS_PROTOCOLS and server.tls is None:
        problems.append(Problem(f"{path}.tls", "server must have TLS settings for HTTPS/TLS protocols"))
    elif protocol is not None and protocol not in TLS_PROTOCOLS and server.tls is not None:
        tls = server.tls
        if protocol in HTTP_PROTOCOLS:
            if (tls.mode or "PASSTHROUGH") not in ("PASSTHROUGH", "AUTO_PASSTHROUGH") or tls.ca_certificates \
                    or tls.private_key or tls.server_certificate:
                problems.append(Problem(f"{path}.tls", "server cannot have TLS settings for plain text HTTP ports"))
        else:
            problems.append(Problem(f"{path}.tls", "server cannot have TLS settings for non HTTPS/TLS ports"))
    if protocol is not None and server.tls is not None and not problems:
        problems += served_tls_problems(server.tls, protocol, f"{path}.tls")
    return problems


def host_problem(host: str) -> str | None:
    """Istio's rule for a Gateway server host (`[namespace/]dnsName`), or None when it is fine."""
    parts = host.split("/")
    if len(parts) > 2:
        return f"host {host!r} must be of form namespace/dnsName"
    if len(parts) == 2:
        namespace, name = parts
        if not namespace or not name:
            return "config namespace and dnsName in host entry cannot be empty"
        if namespace not in ("*", ".") and not DNS_LABEL.fullmatch(namespace):
            return f"invalid namespace value {namespace!r} in gateway"
    else:
        name = parts[0]
    if name == "*" or is_ip(name):
        return None
    if "*" in name and not (name.startswith("*.") and "*" not in name[2:]):
        return f"partial wildcard {name!r} not allowed"
    if "." not in name:
        return "short names (non FQDN) are not allowed"
    if not is_host_pattern(name):
        return f"domain name {name!r} invalid"
    return None


def _tls(tls: ServerTLSSettings, path: str) -> list[Problem]:
    problems: list[Problem] = []
    mode = tls.mode or "PASSTHROUGH"     # the proto's default (enum value 0)
    if mode not in TLS_MODES:
        return [Problem(f"{path}.mode", f"unknown TLS mode {mode!r}; expected one of {', '.join(sorted(TLS_MODES))}")]
    if mode == "ISTIO_MUTUAL":
        for field, value, what in (("serverCertificate", tls.server_certificate, "server certificate"),
                                   ("privateKey", tls.private_key, "private key"),
                                   ("caCertificates", tls.ca_certificates, "CA bundle"),
                                   ("credentialName", tls.credential_name, "credentialName"),
                                   ("credentialNames", tls.credential_names, "credentialNames")):
            if value:
                problems.append(Problem(f"{path}.{field}", f"ISTIO_MUTUAL TLS cannot have associated {what}"))
    sources = [bool(tls.server_certificate and tls.private_key), bool(tls.credential_name),
               bool(tls.credential_names)]
    if sum(sources) > 1:
        problems.append(Problem(path, "only one of credential_name, credential_names, "
                                "server_certificate/private_key, tls_certificates should be specified"))
    if mode in ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL") and not (tls.credential_name or tls.credential_names):
        prefix = "SIMPLE TLS" if mode == "SIMPLE" else "MUTUAL TLS"
        if mode != "SIMPLE" and not tls.ca_certificates:
            problems.append(Problem(f"{path}.caCertificates", "MUTUAL TLS requires a client CA bundle"))
        if not tls.server_certificate:
            problems.append(Problem(f"{path}.serverCertificate", f"{prefix} requires a server certificate"))
        if not tls.private_key:
            problems.append(Problem(f"{path}.privateKey", f"{prefix} requires a private key"))
    if tls.ca_crl:
        if tls.credential_name:
            problems.append(Problem(f"{path}.caCrl", "CRL is not supported with credentialName. CRL has to be "
                                    "specified in the credential"))
        elif mode == "SIMPLE":
            problems.append(Problem(f"{path}.caCrl", "CRL is not supported with SIMPLE TLS"))
    for field, value in (("minProtocolVersion", tls.min_protocol_version),
                         ("maxProtocolVersion", tls.max_protocol_version)):
        if value is not None and value not in TLS_VERSIONS:
            problems.append(Problem(f"{path}.{field}", f"unknown TLS version {value!r}; expected one of "
                                    f"{', '.join(TLS_VERSIONS)}"))
    for i, suite in enumerate(tls.cipher_suites):
        if not suite.strip():
            problems.append(Problem(f"{path}.cipherSuites[{i}]", "must not be empty"))
    return problems


def served_tls_problems(tls: ServerTLSSettings, protocol: str, path: str) -> list[Problem]:
    """Fail closed: TLS server features Istio accepts and Remora does not serve, refused by name."""
    mode = tls.mode or "PASSTHROUGH"
    if protocol not in TLS_PROTOCOLS:
        return []       # an HTTP server's tls block: httpsRedirect only (checked above)
    problems: list[Problem] = []
    if mode not in SERVED_TLS_MODES:
        problems.append(Problem(f"{path}.mode", f"TLS mode {mode} is not supported by Remora on a gateway "
                                "(it terminates SIMPLE, MUTUAL and ISTIO_MUTUAL, and passes PASSTHROUGH through)"))
    if mode == "PASSTHROUGH":
        return problems     # no certificate is used: the fields below do not apply
    for field, value in (("credentialNames", tls.credential_names), ("subjectAltNames", tls.subject_alt_names),
                         ("verifyCertificateSpki", tls.verify_certificate_spki),
                         ("verifyCertificateHash", tls.verify_certificate_hash), ("caCrl", tls.ca_crl)):
        if value:
            problems.append(Problem(f"{path}.{field}", f"{field} is not supported by Remora (refused rather "
                                    "than accepted and not enforced)"))
    return problems
