"""Where a gateway reads `credentialName` from: the CredentialSource seam.

A Gateway server's `tls.credentialName: X` names a credential: a certificate chain, its
private key, and (for MUTUAL) the CA that verifies clients. Two sources implement the seam:
- DirectoryCredentials (here): `--credentials-dir/<X>/`, a Secret mounted as files
  (remora/certs/secret_dir.py names the files); read when a config version is compiled,
  no change notification (a new config version rereads them).
- remora/kube/secrets.py: the Secrets of the gateway's namespace, read from the Kubernetes
  API with the gateway's own service account (`--credentials-from-kubernetes`), and a
  notification when one changes. The CLI hands it in: remora/proxy never imports
  remora/kube. Private keys never travel on the control server's stream.

Rules every source keeps (tests/contract/test_credential_source.py):
- `get(X)` is None when X is missing or lacks a certificate or key: the config naming it is
  refused (fail closed); `missing(X)` says why, for that error.
- The CA is the `X-cacert` credential's if there is one, else X's own (Istio's GetCaCert).
- `origin` says where the credential came from (/config_dump).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

from remora.certs.credential import Credential
from remora.certs.secret_dir import CA_FILES, CA_SECRET_SUFFIX, CERT_FILES, KEY_FILES, first_file


class CredentialSource(Protocol):
    """A gateway's credentials by name (see the module doc)."""

    description: str      # where names are looked up ("files under /creds", "Secrets of ns")
    # Whether subscribe() ever calls back: only then can a credential missing when a config
    # version is compiled be waited for (its servers refuse handshakes until it is there);
    # a source that never tells refuses that version instead.
    watches: bool

    def get(self, name: str) -> Credential | None:
        """The credential `name` with its CA (None: missing, or no certificate and key)."""
        ...

    def missing(self, name: str) -> str:
        """Why `get(name)` is None, for the config error."""
        ...

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback()` (in the gateway's event loop) after any credential changed."""
        ...

    async def start(self) -> None:
        """Read the credentials once before the gateway serves (and keep them current);
        CredentialSourceError when the source cannot be used at all."""
        ...

    async def stop(self) -> None:
        ...


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


class DirectoryCredentials:
    """`<directory>/<name>/` files (a mounted Secret): tls.crt / cert, tls.key / key, and the
    CA from `<name>-cacert/` or `<name>/` (ca.crt / cacert)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.description = f"files under {directory}"
        self.watches = False

    def get(self, name: str) -> Credential | None:
        base = os.path.join(self.directory, name)
        cert, key = _read(first_file(base, CERT_FILES)), _read(first_file(base, KEY_FILES))
        if not cert or not key:
            return None
        ca = _read(first_file(base + CA_SECRET_SUFFIX, CA_FILES)) or _read(first_file(base, CA_FILES))
        return Credential(cert, key, ca, f"files {base}")

    def missing(self, name: str) -> str:
        base = os.path.join(self.directory, name)
        return f"no {' / '.join(CERT_FILES)} and {' / '.join(KEY_FILES)} in {base}"

    def subscribe(self, callback: Callable[[], None]) -> None:
        pass    # files are reread when a config version is compiled

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass
