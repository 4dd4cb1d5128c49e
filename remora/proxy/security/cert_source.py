"""Where a sidecar's workload certificate comes from besides the CA, and how it reaches workers.

- `CertDirWatcher`: `--cert-dir DIR` (Istio's file-mounted layout, tls.load_cert_dir) as a
  certificate source with the SvidManager's interface (`on_rotate`, `current`, `status`,
  `start`, `stop`): loaded at start, then the three files' mtimes and sizes are polled
  every POLL_SECONDS and the directory is re-read when they change, so an operator (or a
  cert-manager style agent) can rotate the files under a running sidecar. A directory that
  cannot be read (a half-written rotation, a key that does not match) keeps the current
  certificate, shows the error at /certs and in one log line, and is read again on the next
  change.
- `svid_message` / `svid_from_message`: the SVID with its private key (PEM) and the trust
  bundle as one JSON-able dict, for the supervisor -> worker socketpair with --workers N
  (run.py, op "certs"). The key travels only over that socketpair; nothing is written.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Callable

from cryptography.hazmat.primitives import serialization

from remora.certs.client import Svid
from remora.certs.pem import cert_pem, key_pem
from remora.proxy.security.svid_manager import CertificateSource, certs_status, log
from remora.proxy.security.tls import CERT_CHAIN_FILE, KEY_FILE, ROOT_CERT_FILE, CertDirError, load_cert_dir

POLL_SECONDS = 5.0


class CertDirWatcher(CertificateSource):
    """The SVID in a certificate directory, re-read when its files change."""

    def __init__(self, directory: str | Path, poll_seconds: float = POLL_SECONDS, *,
                 clock: Callable[[], float] = time.time, log: Callable[[str], None] = log) -> None:
        super().__init__(clock, log)
        self.directory = Path(directory)
        self.poll_seconds = poll_seconds
        self._stamp: tuple | None = None

    def _file_stamp(self) -> tuple:
        stamp = []
        for name in (CERT_CHAIN_FILE, KEY_FILE, ROOT_CERT_FILE):
            try:
                st = (self.directory / name).stat()
                stamp.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                stamp.append(None)
        return tuple(stamp)

    def check(self) -> bool:
        """Read the directory if its files changed since the last look; True when a new SVID was installed."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            svid, bundle = load_cert_dir(self.directory)
        except CertDirError as error:
            self.last_error = str(error)
            keeping = (f"keeping serial {self._svid.serial:x}" if self._svid is not None else "no certificate yet")
            self.log(f"certificate directory {self.directory} unreadable: {error}; {keeping}")
            return False
        if self._svid is not None and svid.serial == self._svid.serial and bundle == self.trust_bundle:
            self.last_error = None
            return False      # touched, not changed
        self._install(svid, bundle, f"certificate loaded from {self.directory}")
        return True

    async def run(self) -> None:
        while True:
            self.check()
            self.next_attempt_at = self.clock() + self.poll_seconds
            await asyncio.sleep(self.poll_seconds)

    def start(self) -> None:
        self.check()       # synchronously: the first certificate is there before serving
        self._task = asyncio.create_task(self.run(), name="cert-dir-watcher")

    async def stop(self) -> None:
        await self.stop_task()

    def status(self) -> dict:
        """GET /certs, in the SvidManager's shape (next_rotation_in_seconds: the next look at the files)."""
        answer = certs_status(self.current(), self.trust_bundle, self.last_error, self.next_attempt_at, self.clock())
        answer["source"] = str(self.directory)
        return answer


def svid_message(svid: Svid, bundle: list[str]) -> dict:
    """The SVID, its key and the trust bundle as PEM strings (for the worker socketpair only)."""
    return {"cert": cert_pem(svid.cert), "chain": [cert_pem(c) for c in svid.chain],
            "key": key_pem(svid.key).decode(), "bundle": list(bundle)}


def svid_from_message(message: dict) -> tuple[Svid, list[str]]:
    """Inverse of svid_message."""
    key = serialization.load_pem_private_key(message["key"].encode(), password=None)
    return Svid.from_pems(message["cert"], message["chain"], key), list(message["bundle"])
