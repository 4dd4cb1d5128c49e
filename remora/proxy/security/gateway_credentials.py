"""A gateway's `credentialName` TLS contexts, built from a CredentialSource and kept current.

Rules:
- Compile time (a config version): a server's TLS settings must be usable, or the version is
  refused naming the field (GatewayTlsError): the gateway keeps its last good config. A
  credentialName whose credential is missing or unusable (a Gateway made before its Secret,
  as Kubernetes tools often do) from a source that watches (the Kubernetes API) does not
  refuse the version: as Envoy waits for an SDS secret, the servers using it refuse
  handshakes (logged as an error, `refused` in the dump) until the source has a usable
  credential, and then serve it with no new push. A source that cannot tell of a change
  (files) refuses the version instead.
- Between versions, when the source says a credential changed (a Secret rotated), every
  context in use is rebuilt at once; the SNI callback reads `current()`, so the next
  handshake gets the new certificate, with no restart and no new listener.
- A credential that disappears or stops parsing (Secret deleted or corrupted) leaves its
  contexts None: the servers using it refuse handshakes (fail closed; gateway_tls.REFUSED,
  counted in `refused_handshakes`), the port's other servers keep serving. A credential
  that comes back serves again.
- The PEM certificate and key reach OpenSSL through an anonymous memory file (memfd, read by
  its /proc/self/fd path; elsewhere a 0600 temporary file removed at once): Python's ssl
  loads a chain only from a path, and a key should not land on a disk.
- `dump()` is the /config_dump view: per name, where it came from, the certificate's serial
  and expiry, or why it is refused.
"""
from __future__ import annotations

import os
import ssl
import tempfile

from remora.proxy.security.credentials import Credential, CredentialSource
from remora.proxy.security.gateway_tls import GatewayTlsError, apply_settings
from remora.proxy import log_levels

log = log_levels.logger("secret")


class CredentialUnavailable(GatewayTlsError):
    """The source has no usable credential of that name now (it may have one later)."""


def load_pem_chain(context: ssl.SSLContext, credential: Credential) -> None:
    """Load the credential's certificate chain and key into `context` (ssl.SSLError, OSError)."""
    pem = credential.cert_pem.rstrip(b"\n") + b"\n" + credential.key_pem
    if hasattr(os, "memfd_create"):     # Linux: the key stays in memory, no file on any disk
        fd = os.memfd_create("remora-credential", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="remora-credential-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        context.load_cert_chain(path)
    finally:
        os.unlink(path)


def certificate_info(cert_pem: bytes) -> dict:
    """Serial (hex) and notAfter (Unix time, ISO 8601 UTC) of the first certificate of a PEM chain."""
    from cryptography import x509   # here: only gateways with credentials read certificates
    cert = x509.load_pem_x509_certificate(cert_pem)
    not_after = cert.not_valid_after_utc
    return {"serial": format(cert.serial_number, "x"), "expiry": int(not_after.timestamp()),
            "not_after": not_after.strftime("%Y-%m-%dT%H:%M:%SZ")}


class CredentialRef:
    """A server's context by credentialName: resolved at each handshake (see the module doc)."""

    __slots__ = ("contexts", "key")

    def __init__(self, contexts: "CredentialContexts", key: tuple) -> None:
        self.contexts, self.key = contexts, key

    def current(self) -> ssl.SSLContext | None:
        return self.contexts.current(self.key)


class CredentialContexts:
    """The per-worker cache of credentialName contexts, keyed by (name, settings, mutual)."""

    def __init__(self, source: CredentialSource) -> None:
        self.source = source
        self._contexts: dict[tuple, ssl.SSLContext | None] = {}
        self._used: dict[tuple, Credential | None] = {}   # what each context was built from
        self._info: dict[str, dict] = {}
        self.refused_handshakes = 0
        self.rebuilds = 0
        source.subscribe(self._changed)

    def build(self, name: str, settings: tuple, mutual: bool, path: str) -> CredentialRef:
        """A server's reference, its context built now; GatewayTlsError naming `path.credentialName`."""
        key = (name, settings, mutual)
        try:
            self._contexts[key] = self._make(key, f"{path}.credentialName")
        except CredentialUnavailable as error:
            if not self.source.watches:
                raise
            self._refuse(key, error)
        return CredentialRef(self, key)

    def current(self, key: tuple) -> ssl.SSLContext | None:
        context = self._contexts.get(key)
        if context is None:
            self.refused_handshakes += 1
        return context

    def retain(self, names: set[str]) -> None:
        """Forget contexts of names the newest config version no longer uses."""
        self._contexts = {key: c for key, c in self._contexts.items() if key[0] in names}
        self._used = {key: c for key, c in self._used.items() if key[0] in names}
        self._info = {name: info for name, info in self._info.items() if name in names}

    def _make(self, key: tuple, field: str) -> ssl.SSLContext:
        """A context of the credential as the source has it now; GatewayTlsError on `field`.
        (A config version refused here leaves the dump as it was: the last good one serves.)"""
        name, settings, mutual = key
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        apply_settings(context, settings, field)     # the config's own mistakes refuse the version
        credential = self.source.get(name)
        if credential is None:
            raise CredentialUnavailable(field, f"credentialName {name}: {self.source.missing(name)}")
        if mutual and credential.ca_pem is None:
            raise CredentialUnavailable(field, f"credentialName {name}: MUTUAL needs a client CA (ca.crt or "
                                        f"cacert in {name}-cacert or {name})")
        try:
            load_pem_chain(context, credential)
            if mutual:
                context.load_verify_locations(cadata=credential.ca_pem.decode("ascii", "replace"))
            info = certificate_info(credential.cert_pem)
        except (OSError, ssl.SSLError, ValueError) as error:
            raise CredentialUnavailable(field, f"credentialName {name} ({credential.origin}): cannot use its "
                                        f"certificate, key or CA: {error}") from None
        self._info[name] = {"origin": credential.origin, "state": "serving", **info}
        self._used[key] = credential
        return context

    def _changed(self) -> None:
        """The source changed: rebuild the contexts whose credential changed (None where it no
        longer works)."""
        for key in list(self._contexts):
            if self.source.get(key[0]) == self._used.get(key):
                continue     # another Secret of the namespace changed (the origin names its version)
            self.rebuilds += 1
            try:
                self._contexts[key] = self._make(key, "credentialName")
            except GatewayTlsError as error:
                self._refuse(key, error)

    def _refuse(self, key: tuple, error: GatewayTlsError) -> None:
        """No usable credential for `key` now: its servers refuse handshakes until the source changes."""
        if self._contexts.get(key, True) is not None:    # logged once, when it stops (or never starts) serving
            log.error("%s: handshakes of the servers using it are refused", error.message)
        credential = self._used[key] = self.source.get(key[0])
        self._contexts[key] = None
        self._info[key[0]] = {"origin": credential.origin if credential is not None else None,
                              "state": "refused", "error": error.message}

    def stats(self) -> dict[str, int]:
        """Counters for /stats and Prometheus; expiry as a Unix time per credential."""
        out = {"gateway.credentials.refused_handshakes": self.refused_handshakes,
               "gateway.credentials.rebuilds": self.rebuilds}   # contexts rebuilt for a changed credential
        for name, info in self._info.items():
            out[f"gateway.credentials.{name}.expiry_seconds"] = info.get("expiry", 0)
        return out

    def dump(self) -> dict:
        return {"source": self.source.description, "refused_handshakes": self.refused_handshakes,
                "credentials": {name: dict(info) for name, info in sorted(self._info.items())}}
