"""This worker's mutual-TLS material: the SVID's server and client contexts, and peer identity.

One `MeshTls` per worker. It holds the SSL contexts built from the current SVID and trust
bundle and swaps both in one assignment each when a new certificate arrives (rotation),
so connections opened after the swap present the new certificate while established ones
keep theirs (a context is only consulted during a handshake).

Where the certificate comes from is not this module's concern: the SvidManager (under
--control with --token) or a certificate directory (`--cert-dir`, Istio's file-mounted
layout: cert-chain.pem, key.pem, root-cert.pem; see `load_cert_dir`) calls `update`.
Before any certificate exists both contexts are None: outbound dials plaintext and
inbound cannot terminate TLS.

Principals follow Istio: the SPIFFE ID without its scheme, `cluster.local/ns/NS/sa/SA`.
"""
from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from remora.certs.files import (CERT_CHAIN_FILE, KEY_FILE, PRIVATE_MODE, PUBLIC_MODE, ROOT_CERT_FILE, ensure_dir,
                                write_atomically)
from remora.certs.spiffe import SCHEME

if TYPE_CHECKING:
    from remora.certs.client import Svid

# certs.client and certs.pem load cryptography (~8 MiB): they are imported inside the functions
# that read certificates, so a sidecar that never has one does not pay for them.


class MeshTls:
    """The current SVID of this worker as TLS contexts (None until the first certificate)."""

    __slots__ = ("svid", "bundle", "server_context", "client_context", "generation")

    def __init__(self) -> None:
        self.svid: Svid | None = None
        self.bundle: list[str] = []
        self.server_context: ssl.SSLContext | None = None
        self.client_context: ssl.SSLContext | None = None
        self.generation = 0          # bumped on every update (tests and /certs read it)

    @property
    def ready(self) -> bool:
        return self.server_context is not None

    @property
    def principal(self) -> str | None:
        """This workload's own principal, or None without a certificate."""
        return None if self.svid is None else principal_of(str(self.svid.spiffe_id))

    def update(self, svid: Svid, bundle: list[str]) -> None:
        """Build both contexts from a new SVID; raises (and keeps the old ones) if it cannot."""
        server = svid.to_ssl_context(True, bundle)
        client = svid.to_ssl_context(False, bundle)
        self.svid, self.bundle = svid, list(bundle)
        self.server_context, self.client_context = server, client
        self.generation += 1


def principal_of(spiffe_id: str | None) -> str | None:
    """Istio's principal form of a SPIFFE ID: `spiffe://td/ns/x/sa/y` -> `td/ns/x/sa/y`."""
    if spiffe_id is None or not spiffe_id.startswith(SCHEME):
        return None
    return spiffe_id[len(SCHEME):]


def peer_principal(transport) -> str | None:
    """The verified peer's principal on a TLS transport, None on plaintext or without a SPIFFE ID."""
    from remora.certs.client import peer_spiffe_id
    return principal_of(peer_spiffe_id(transport.get_extra_info("ssl_object")))


class CertDirError(ValueError):
    """A certificate directory that cannot be used; the message names the file and the fault."""


def load_cert_dir(directory: str | Path) -> tuple[Svid, list[str]]:
    """The SVID and trust bundle in an Istio-style certificate directory.

    cert-chain.pem: the workload certificate first, then intermediates; key.pem: its
    private key (PEM, unencrypted); root-cert.pem: one or more trusted roots.
    """
    from remora.certs.client import Svid, SvidError
    from remora.certs.pem import CaError, cert_pem, load_certs, load_private_key
    directory = Path(directory)
    try:
        chain = load_certs(directory / CERT_CHAIN_FILE, "certificate chain")
        roots = load_certs(directory / ROOT_CERT_FILE, "trust bundle")
        key = load_private_key(directory / KEY_FILE, "private key")
        svid = Svid.from_pems(cert_pem(chain[0]), [cert_pem(c) for c in chain[1:]], key)
    except CaError as error:
        raise CertDirError(str(error)) from None
    except SvidError as error:
        raise CertDirError(f"{directory / CERT_CHAIN_FILE}: {error}") from None
    return svid, [cert_pem(root) for root in roots]


def write_cert_dir(directory: str | Path, svid: Svid, bundle: list[str]) -> Path:
    """Write `svid` and `bundle` in the layout `load_cert_dir` reads (the key file mode 0600).

    For operators and benchmarks that hand certificates to a sidecar (and to Envoy) as files.
    """
    from remora.certs.pem import cert_pem, key_pem
    directory = ensure_dir(Path(directory))
    chain = "".join(cert_pem(c) for c in (svid.cert, *svid.chain))
    write_atomically(directory / CERT_CHAIN_FILE, chain.encode(), PUBLIC_MODE)
    write_atomically(directory / ROOT_CERT_FILE, "".join(bundle).encode(), PUBLIC_MODE)
    write_atomically(directory / KEY_FILE, key_pem(svid.key), PRIVATE_MODE)
    return directory
