"""Workload certificates for the mTLS scenarios, issued in-process by Remora's own CA.

Each identity gets an Istio-layout directory (cert-chain.pem, key.pem, root-cert.pem)
that both data planes read: Remora with `--cert-dir`, Envoy through the file names in its
TLS contexts. One CA per output directory (created on first use, reused afterwards), so
Remora and Envoy always present the very same certificates.
"""
from __future__ import annotations

from pathlib import Path

from remora.certs.ca import CertificateAuthority
from remora.certs.client import Svid, generate_key_and_csr
from remora.certs.spiffe import SpiffeId
from remora.proxy.security.tls import write_cert_dir

TRUST_DOMAIN = "cluster.local"
CERT_TTL_SECONDS = 24 * 3600.0  # longer than any benchmark, so nothing rotates mid-run


def issue_cert_dirs(workdir: Path, namespace: str, service_accounts: list[str],
                    trust_domain: str = TRUST_DOMAIN) -> dict[str, Path]:
    """{service account: certificate directory} for spiffe://td/ns/<namespace>/sa/<sa> each."""
    ca = CertificateAuthority.load_or_create(workdir / "ca", trust_domain)
    bundle = ca.trust_bundle()
    dirs = {}
    for account in service_accounts:
        identity = SpiffeId(trust_domain, namespace, account)
        key, csr = generate_key_and_csr(identity)
        issued = ca.sign_csr(csr, identity, CERT_TTL_SECONDS)
        svid = Svid.from_pems(issued.cert_pem, list(issued.chain_pems), key)
        dirs[account] = write_cert_dir(workdir / f"certs-{account}", svid, bundle)
    return dirs


def spiffe_id(namespace: str, service_account: str, trust_domain: str = TRUST_DOMAIN) -> str:
    """The SPIFFE ID URI of a workload identity."""
    return SpiffeId(trust_domain, namespace, service_account).uri
