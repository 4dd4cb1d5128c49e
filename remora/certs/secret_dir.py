"""A `credentialName` as files: a Kubernetes Secret mounted as a directory.

`<credentials-dir>/<name>/` holds `tls.crt`, `tls.key`, `ca.crt` (kubernetes.io/tls
names) or Istio's generic-secret names `cert`, `key`, `cacert`; the CA may instead live in
`<name>-cacert/` (Istio's separate CA secret). Shared by TLS origination (DestinationRule)
and gateway servers (Gateway `tls.credentialName`).
"""
from __future__ import annotations

import os

CERT_FILES = ("tls.crt", "cert")
KEY_FILES = ("tls.key", "key")
CA_FILES = ("ca.crt", "cacert")
CA_SECRET_SUFFIX = "-cacert"      # Istio: the CA may live in a secret of its own


def first_file(directory: str, names: tuple[str, ...]) -> str | None:
    """The first of `names` that is a file in `directory`, as a path; None if none is."""
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def credential_ca(base: str) -> str | None:
    """The CA bundle of the credential at `base` (its own ca.crt, or the `-cacert` secret's)."""
    return first_file(base, CA_FILES) or first_file(base + CA_SECRET_SUFFIX, CA_FILES)
