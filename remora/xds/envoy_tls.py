"""Istio mutual TLS as Envoy v3 transport sockets, for the bootstraps `envoy.py` renders.

Outbound (client side), as Istio does it:
- DestinationRule `trafficPolicy.tls.mode: ISTIO_MUTUAL` -> the cluster's transport socket is
  an UpstreamTlsContext; `DISABLE` -> plaintext; SIMPLE / MUTUAL (TLS origination) -> an
  UpstreamTlsContext with the rule's files (caCertificates, else the system CA bundle;
  clientCertificate + privateKey), `sni` or auto_sni, subjectAltNames or (neither set)
  auto_san_validation, as Istio renders them; credentialName (SDS) is not translated.
- No tls setting -> auto mTLS: endpoints labelled `security.istio.io/tlsMode: istio` get
  TLS through `transport_socket_matches` on endpoint metadata, others plaintext.
- SNI `outbound_.<port>_._.<host>`, Istio's (Remora sends the same).
- Secure naming: the server must present one of the SPIFFE IDs of the endpoints' service
  accounts (ServiceEntry endpoints and selected WorkloadEntries, in their namespace) or of
  the ServiceEntry's subjectAltNames.

Inbound (server side): PeerAuthentication's effective mode for the workload and port
(config/peer_auth.py, the data plane's rule, so both data planes agree) picks the filter chains:
STRICT -> one chain with a DownstreamTlsContext requiring a client certificate from the
trust domain; DISABLE -> plaintext; PERMISSIVE -> both, told apart by the tls_inspector.

Both sides present the workload's Istio-layout certificate directory (cert-chain.pem,
key.pem, root-cert.pem), trust only root-cert.pem, speak TLS 1.2-1.3 and offer Remora's
ALPN list, so Envoy and Remora negotiate the same things.
"""
from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Any

from remora.certs.client import ALPN_PROTOCOLS, CERT_CHAIN_FILE, KEY_FILE, ROOT_CERT_FILE
from remora.config.loader import ConfigError, build_mesh_config
from remora.config.mesh_rules import ISTIO_MUTUAL, endpoint_tls_mode, outbound_sni
from remora.config.peer_auth import DISABLE, PERMISSIVE, STRICT, effective_mtls_mode

_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
_RAW = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
_TLS_INSPECTOR = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3" \
    ".TlsInspector"
SOCKET_MATCH_KEY = "envoy.transport_socket_match"  # Istio's endpoint metadata filter name
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
ORIGINATION_FIELDS = frozenset({"mode", "sni", "caCertificates", "clientCertificate", "privateKey",
                                "subjectAltNames", "insecureSkipVerify"})


class TlsUnsupported(ValueError):
    """A TLS setting this renderer does not translate (envoy.py re-raises it as Unsupported)."""


def _common_context(cert_dir: Path, san_matchers: list[dict]) -> dict:
    cert_dir = Path(cert_dir).resolve()
    return {
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2",
                       "tls_maximum_protocol_version": "TLSv1_3"},
        "tls_certificates": [{
            "certificate_chain": {"filename": str(cert_dir / CERT_CHAIN_FILE)},
            "private_key": {"filename": str(cert_dir / KEY_FILE)},
        }],
        "validation_context": {
            "trusted_ca": {"filename": str(cert_dir / ROOT_CERT_FILE)},
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": m}
                                              for m in san_matchers],
        },
        "alpn_protocols": list(ALPN_PROTOCOLS),
    }


def istio_sni(port: int, host: str, subset: str = "") -> str:
    """The SNI Istio (and Remora) send to a sidecar (config/mesh_rules.py), renderer's argument order."""
    return outbound_sni(port, subset, host)


def upstream_tls_socket(cert_dir: Path, server_ids: list[str], sni: str) -> dict:
    """Client side: present the SVID in cert_dir, accept only a server with one of server_ids."""
    if not server_ids:
        raise TlsUnsupported("ISTIO_MUTUAL needs the server's identity: give the endpoints a "
                             "serviceAccount or the ServiceEntry subjectAltNames")
    context = {"@type": f"{_TLS}.UpstreamTlsContext", "sni": sni,
               "common_tls_context": _common_context(cert_dir, [{"exact": s}
                                                                for s in server_ids])}
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def downstream_tls_socket(cert_dir: Path, trust_domain: str) -> dict:
    """Server side: present the SVID in cert_dir, require a client SVID of the trust domain."""
    context = {"@type": f"{_TLS}.DownstreamTlsContext",
               "require_client_certificate": True,
               "common_tls_context": _common_context(
                   cert_dir, [{"prefix": f"spiffe://{trust_domain}/"}])}
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def server_identities(subject_alt_names: list[str], endpoints: list[dict], namespace: str,
                      trust_domain: str) -> list[str]:
    """The SPIFFE IDs a service's servers may present (Istio's secure naming).

    Each endpoint may carry its own namespace (a WorkloadEntry's); else `namespace`.
    """
    ids = list(subject_alt_names)
    for ep in endpoints:
        account = ep.get("serviceAccount")
        if account:
            ns = ep.get("namespace", namespace)
            ids.append(f"spiffe://{trust_domain}/ns/{ns}/sa/{account}")
    return list(dict.fromkeys(ids))


def apply_client_tls(cluster: dict, tls: dict | None, endpoints: list[dict], server_ids: list[str],
                     sni: str, cert_dir: Path | None) -> None:
    """Give an outbound cluster the transport socket(s) Istio would (see the module doc).

    `endpoints` are the Istio endpoint dicts, in the order of the cluster's lb_endpoints.
    """
    tls = tls or {}
    mode = tls.get("mode")
    if mode in ("SIMPLE", "MUTUAL"):
        apply_origination(cluster, tls, server_ids)
        return
    extra = set(tls) - {"mode"}
    if extra:
        raise TlsUnsupported(f"trafficPolicy.tls: {', '.join(sorted(extra))} not rendered for "
                             "Envoy")
    labelled = [endpoint_tls_mode(None, ep.get("labels") or {}) == ISTIO_MUTUAL for ep in endpoints]
    if mode == "DISABLE" or (mode is None and not any(labelled)):
        return
    if mode not in (None, "ISTIO_MUTUAL"):
        raise TlsUnsupported(f"trafficPolicy.tls.mode {mode} not rendered for Envoy "
                             "(ISTIO_MUTUAL, DISABLE, SIMPLE and MUTUAL are)")
    if cert_dir is None:
        raise TlsUnsupported(f"cluster {cluster['name']} uses mTLS: render it with a "
                             "certificate directory")
    socket = upstream_tls_socket(cert_dir, server_ids, sni)
    if mode == "ISTIO_MUTUAL":
        cluster["transport_socket"] = socket
        return
    # Auto mTLS, Istio's way: TLS only to endpoints whose metadata says tlsMode istio.
    lb_endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    for lb_endpoint, is_labelled in zip(lb_endpoints, labelled):
        if is_labelled:
            lb_endpoint["metadata"] = {"filter_metadata": {SOCKET_MATCH_KEY: {"tlsMode": "istio"}}}
    cluster["transport_socket_matches"] = [
        {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": socket},
        {"name": "tlsMode-disabled", "match": {},
         "transport_socket": {"name": "envoy.transport_sockets.raw_buffer",
                              "typed_config": {"@type": _RAW}}},
    ]


def _san_matcher(name: str) -> dict:
    if "://" in name:
        kind = "URI"
    else:
        try:
            ipaddress.ip_address(name)
            kind = "IP_ADDRESS"
        except ValueError:
            kind = "DNS"
    return {"san_type": kind, "matcher": {"exact": name}}


def system_ca_file() -> str:
    """The system trust bundle Envoy reads when caCertificates is unset (Istio: the OS CAs)."""
    found = ssl.get_default_verify_paths().cafile
    for path in (found, "/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"):
        if path and Path(path).is_file():
            return path
    raise TlsUnsupported("trafficPolicy.tls.caCertificates unset and no system CA bundle found")


def apply_origination(cluster: dict, tls: dict, service_sans: list[str]) -> None:
    """DestinationRule tls SIMPLE / MUTUAL as Istio renders it: an UpstreamTlsContext with the
    rule's files, `sni` (else auto_sni from the Host), subjectAltNames (else, with neither sni
    nor subjectAltNames, auto_san_validation on the Host; else the ServiceEntry's names)."""
    extra = set(tls) - ORIGINATION_FIELDS
    if extra:
        raise TlsUnsupported(f"trafficPolicy.tls: {', '.join(sorted(extra))} not rendered for Envoy "
                             "(credentialName needs an SDS server)")
    verify = not tls.get("insecureSkipVerify")
    common: dict[str, Any] = {"tls_params": {"tls_minimum_protocol_version": "TLSv1_2",
                                             "tls_maximum_protocol_version": "TLSv1_3"},
                              "alpn_protocols": ["http/1.1"]}
    if tls["mode"] == "MUTUAL":
        common["tls_certificates"] = [{"certificate_chain": {"filename": tls["clientCertificate"]},
                                       "private_key": {"filename": tls["privateKey"]}}]
    sans = tls.get("subjectAltNames") or service_sans
    if verify:
        validation: dict[str, Any] = {"trusted_ca": {"filename": tls.get("caCertificates") or system_ca_file()}}
        if sans:
            validation["match_typed_subject_alt_names"] = [_san_matcher(n) for n in sans]
        common["validation_context"] = validation
    context: dict[str, Any] = {"@type": f"{_TLS}.UpstreamTlsContext", "common_tls_context": common}
    if tls.get("sni"):
        context["sni"] = tls["sni"]
    else:
        upstream = {"auto_sni": True}
        if verify and not tls.get("subjectAltNames"):
            upstream["auto_san_validation"] = True
        options = cluster.setdefault("typed_extension_protocol_options", {}).setdefault(
            _HTTP_OPTIONS, {"@type": f"type.googleapis.com/{_HTTP_OPTIONS}"})
        options.setdefault("explicit_http_config", {"http_protocol_options": {}})
        options["upstream_http_protocol_options"] = upstream
    cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": context}


def inbound_mode(docs: list[dict], namespace: str, labels: dict[str, str], port: int) -> str:
    """STRICT / PERMISSIVE / DISABLE for the workload's port (config/peer_auth.py, the data plane's rule)."""
    policies = [d for d in docs if d["kind"] == "PeerAuthentication"]
    if not policies:
        return PERMISSIVE
    try:
        config = build_mesh_config([(doc, "PeerAuthentication") for doc in policies])
    except ConfigError as error:
        raise TlsUnsupported(f"PeerAuthentication not valid: {error}") from None
    return effective_mtls_mode(config.peer_authentications, namespace, labels, port)


def inbound_filter_chains(mode: str, filters: list[dict], cert_dir: Path | None,
                          trust_domain: str) -> tuple[list[dict], list[dict]]:
    """(filter_chains, listener_filters) for an inbound listener accepting `mode`."""
    if mode == DISABLE:
        return [{"filters": filters}], []
    if cert_dir is None:
        raise TlsUnsupported(f"inbound PeerAuthentication {mode} needs a certificate directory")
    tls_chain: dict[str, Any] = {
        "filters": filters, "transport_socket": downstream_tls_socket(cert_dir, trust_domain)}
    if mode == STRICT:
        return [tls_chain], []
    tls_chain["filter_chain_match"] = {"transport_protocol": "tls"}
    plain = {"filter_chain_match": {"transport_protocol": "raw_buffer"}, "filters": filters}
    inspector = [{"name": "envoy.filters.listener.tls_inspector",
                  "typed_config": {"@type": _TLS_INSPECTOR}}]
    return [tls_chain, plain], inspector
