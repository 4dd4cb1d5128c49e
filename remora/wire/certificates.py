"""The certificate API between a sidecar and the control server's CA (plain HTTP + JSON).

    POST <control>/v1/certificates   {csr, token}
         -> 200 {certificate, chain, trust_bundle, spiffe_id, serial, not_after}
         -> 4xx/5xx {error, reason}
    GET  <control>/v1/trust-bundle   -> {trust_domain, trust_bundle: [PEM, ...]}

The join token travels in the body, never in a header. Served by remora/xds/ca_service.py
(open routes: no admin token), called by remora/proxy/security/svid_manager.py.
"""
from __future__ import annotations

CERTIFICATES_PATH = "/v1/certificates"
TRUST_BUNDLE_PATH = "/v1/trust-bundle"
