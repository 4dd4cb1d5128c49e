"""Secrets at rest in a shared store: AES-256-GCM under a key every replica reads from a file.

Rules:
- The key file (`--store-key-file`) holds at least 32 bytes of secret in any form (raw,
  hex, base64: `head -c 32 /dev/urandom | base64`); the AES key is HKDF-SHA256 of the file's
  content (stripped of surrounding whitespace), so every replica given the same file
  derives the same key and no format needs agreeing on.
- A sealed value is `rs1.` + base64(12-byte random nonce + ciphertext + tag). The name the
  value is stored under goes in as associated data, so a sealed CA key copied under the
  admin token's name does not open.
- A value that does not open (another key file, tampered, truncated) raises SealError
  naming the value; nothing falls back to plaintext.
"""
from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MIN_KEY_BYTES = 32
PREFIX = b"rs1."
_INFO = b"remora control store sealing key v1"


class SealError(Exception):
    """A key file that cannot be used, or a sealed value that does not open."""


class SealingKey:
    """Seals and opens values stored in the shared store."""

    def __init__(self, secret: bytes, origin: str = "key") -> None:
        if len(secret) < MIN_KEY_BYTES:
            raise SealError(f"{origin}: holds {len(secret)} bytes; at least {MIN_KEY_BYTES} are needed "
                            "(make one with: head -c 32 /dev/urandom | base64 > FILE)")
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret)
        self._aead = AESGCM(key)
        self.origin = origin

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> SealingKey:
        try:
            secret = Path(path).read_bytes().strip()
        except OSError as error:
            raise SealError(f"--store-key-file {path}: {error.strerror or error}") from None
        return cls(secret, f"--store-key-file {path}")

    def seal(self, plaintext: bytes, name: str) -> bytes:
        nonce = os.urandom(12)
        return PREFIX + base64.b64encode(nonce + self._aead.encrypt(nonce, plaintext, name.encode()))

    def open(self, sealed: bytes, name: str) -> bytes:
        if not sealed.startswith(PREFIX):
            raise SealError(f"{name}: not a sealed value (expected the {PREFIX.decode()} prefix)")
        try:
            raw = base64.b64decode(sealed[len(PREFIX):], validate=True)
            return self._aead.decrypt(raw[:12], raw[12:], name.encode())
        except (InvalidTag, ValueError):
            raise SealError(f"{name}: does not open with {self.origin} (another key, or the value was "
                            "changed)") from None
