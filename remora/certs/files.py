"""State files of the CA and the token store: atomic writes, private modes, one writer at a time.

A file is written to a fresh temporary name in the same directory (created with its final
mode, so a secret is never readable by others even for an instant), flushed to disk, then
renamed over the old one: a reader sees the old content or the new, never half of it, and
a crash leaves the old file intact. The directory is fsynced so the rename survives a
power cut. `locked(dir)` serialises writers across processes (the control server and a
`remora` command run beside it) with an flock on `<dir>/.lock`.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from pathlib import Path
from typing import Iterator

PRIVATE_MODE = 0o600   # keys, token hashes
PUBLIC_MODE = 0o644    # certificates
DIR_MODE = 0o700
# Istio's names for file-mounted workload certificates (/etc/certs): the data plane reads
# them (proxy/security/tls.py), the Envoy renderer points Envoy at them (xds/envoy_tls.py).
# Here rather than in client.py so that naming them does not load cryptography.
CERT_CHAIN_FILE = "cert-chain.pem"
KEY_FILE = "key.pem"
ROOT_CERT_FILE = "root-cert.pem"


def ensure_dir(path: Path) -> Path:
    """Create the state directory (mode 0700) if missing; an existing one keeps its mode."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory")
    return path


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data` in one rename; the file has `mode` from its first byte."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            fd = -1
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed the mode given to open
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on `directory` (blocks until other writers are done)."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock
