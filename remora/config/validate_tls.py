"""Rules of a DestinationRule's client TLS settings (`trafficPolicy.tls`, at every level).

Istio's own validation (pilot/pkg/config/validation `validateTLS`), so a DestinationRule
Remora accepts is accepted by Istio too:
- `mode` is DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL;
- `credentialName` excludes `clientCertificate`, `privateKey` and `caCertificates` (the
  credential holds them all);
- MUTUAL without `credentialName` needs `clientCertificate` and `privateKey`;
- `insecureSkipVerify: true` excludes what it would skip: `caCertificates` and
  `subjectAltNames` (and, in SIMPLE, `credentialName`, which would only carry a CA).

Whether the files exist and parse is checked where they are read, by the sidecar that dials
(remora/proxy/upstream/tls_origination.py): the paths name the sidecar's filesystem, not the control
server's. Those checks refuse the config too, naming resource and field.
"""
from __future__ import annotations

from remora.config.model import ClientTLSSettings
from remora.config.schema import Problem

CLIENT_TLS_MODES = frozenset({"DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"})
ORIGINATION_MODES = frozenset({"SIMPLE", "MUTUAL"})   # TLS to a server outside the mesh


def validate_client_tls(tls: ClientTLSSettings, path: str) -> list[Problem]:
    """Problems of one `tls` block at `path` (e.g. spec.trafficPolicy.tls)."""
    problems: list[Problem] = []
    mode = tls.mode
    if mode is not None and mode not in CLIENT_TLS_MODES:
        problems.append(Problem(f"{path}.mode", f"unknown value {mode!r}; expected one of "
                                f"{', '.join(sorted(CLIENT_TLS_MODES))}"))
        return problems
    for name, value in (("clientCertificate", tls.client_certificate), ("privateKey", tls.private_key),
                        ("caCertificates", tls.ca_certificates), ("credentialName", tls.credential_name),
                        ("sni", tls.sni)):
        if value is not None and not value.strip():
            problems.append(Problem(f"{path}.{name}", "must not be empty (leave the field out instead)"))
    for i, san in enumerate(tls.subject_alt_names):
        if not san.strip():
            problems.append(Problem(f"{path}.subjectAltNames[{i}]", "must not be empty"))
    if mode not in ORIGINATION_MODES:
        return problems
    skip = bool(tls.insecure_skip_verify)
    if tls.credential_name:
        given = [name for name, value in (("clientCertificate", tls.client_certificate),
                                          ("privateKey", tls.private_key),
                                          ("caCertificates", tls.ca_certificates)) if value]
        for name in given:
            problems.append(Problem(f"{path}.{name}", "cannot be set together with credentialName "
                                    "(the credential holds the certificates)"))
        if skip and mode == "SIMPLE":
            problems.append(Problem(f"{path}.credentialName", "cannot be set together with "
                                    "insecureSkipVerify: true in SIMPLE mode (it would only carry a CA)"))
    elif mode == "MUTUAL":
        for name, value in (("clientCertificate", tls.client_certificate), ("privateKey", tls.private_key)):
            if not value:
                problems.append(Problem(f"{path}.{name}", f"mode MUTUAL needs {name} (a file path) "
                                        "or credentialName"))
    if skip:
        if tls.ca_certificates:
            problems.append(Problem(f"{path}.caCertificates",
                                    "cannot be set together with insecureSkipVerify: true"))
        if tls.subject_alt_names:
            problems.append(Problem(f"{path}.subjectAltNames",
                                    "cannot be set together with insecureSkipVerify: true"))
    return problems
