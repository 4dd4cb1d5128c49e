"""Join tokens: the bootstrap credential a sidecar presents to get its first certificate.

A token is `rmt_<id>.<secret>`: a 16-hex-digit id (public: listed, logged, used to revoke)
and a 43-character url-safe secret (32 random bytes). The store keeps only the SHA-256 of
the secret; the plaintext is returned once by `create` and never written anywhere. SHA-256
without salt or stretching is enough because the secret is 256 random bits, not a
password: there is nothing to guess.

Rules of `verify`, in order, each with its own reason code:
- malformed: not `rmt_<16 hex>.<43 url-safe chars>`;
- unknown: no token with that id, or the secret does not match (one message for both, and
  the comparison is constant-time, so a caller holding an id learns nothing about the secret);
- revoked, then expired (expiry is `expires_at <= now`).

A token lives at most MAX_TOKEN_TTL (one year) and more than 0 s: `create` refuses any
other TTL before anything is stored. A token can be used any number of times until it
expires or is revoked (a sidecar presents it again at every rotation).

Every record read from the file is checked on its own (id, identity, times that are finite
and printable, at most year 9999). A broken record, whatever wrote it (an older Remora
stored `--ttl 1e12` as is), is never honoured by `verify` (it is an unknown token), is listed
apart by `broken()`, is written back untouched, and is dropped by `revoke(id)`; one broken
record never makes the store unreadable. The store file `join-tokens.json` (0600) is written
atomically under a lock and re-read when another process changed it, so a `remora`
command can create or revoke tokens while the control server runs.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
import time
from pathlib import Path
from typing import Callable

import msgspec

from remora.certs import files
from remora.certs.credentials import CredentialRejected, Identity
from remora.certs.spiffe import validate_namespace, validate_service_account

TOKENS_FILE = "join-tokens.json"
MAX_TOKEN_TTL = 365 * 24 * 3600.0    # one year: a bootstrap credential, not a lifetime one
_LAST_TIME = 253402300799.0          # 9999-12-31T23:59:59Z, the last second datetime can print
PREFIX = "rmt_"
_TOKEN = re.compile(r"rmt_([0-9a-f]{16})\.([A-Za-z0-9_-]{43})")
_ID = re.compile(r"(?:rmt_)?([0-9a-f]{16})(?:\..*)?", re.DOTALL)


class TokenRejected(CredentialRejected):
    """A join token that proves nothing: malformed, unknown, revoked or expired."""


class TokenStoreCorrupt(Exception):
    """The token file exists but cannot be read as a token store."""


class TokenInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What `list()` shows: never the secret or its hash."""

    id: str
    namespace: str
    service_account: str
    created_at: float
    expires_at: float
    revoked: bool


class _Record(msgspec.Struct, kw_only=True):
    id: str
    namespace: str
    service_account: str
    secret_sha256: str
    created_at: float
    expires_at: float
    revoked_at: float | None = None


class _File(msgspec.Struct, kw_only=True):
    version: int = 1
    tokens: list[msgspec.Raw] = []   # each record is checked on its own (_record)


class BrokenRecord(msgspec.Struct, frozen=True):
    """A stored record that cannot be used: its position in the file, its id if readable, and why."""

    index: int
    id: str
    error: str


def check_ttl(ttl: object) -> float:
    """A token TTL in seconds: a finite number in (0, MAX_TOKEN_TTL]; ValueError naming `ttl` otherwise."""
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl):
        raise ValueError(f"ttl: expected a finite number of seconds, got {ttl!r}")
    if not 0 < ttl <= MAX_TOKEN_TTL:
        raise ValueError(f"ttl: must be more than 0 and at most {MAX_TOKEN_TTL:.0f}s (1 year, 8760h), "
                         f"got {ttl:g}s")
    return float(ttl)


def _record(raw: bytes) -> _Record:
    """One stored record, checked; ValueError says why it cannot be used."""
    try:
        record = msgspec.json.decode(raw, type=_Record)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise ValueError(str(error)) from None
    if not re.fullmatch(r"[0-9a-f]{16}", record.id):
        raise ValueError(f"id {record.id[:40]!r} is not 16 hex digits")
    try:
        validate_namespace(record.namespace)
        validate_service_account(record.service_account)
    except ValueError as error:
        raise ValueError(str(error)) from None
    for name in ("created_at", "expires_at", "revoked_at"):
        value = getattr(record, name)
        if value is not None and not (math.isfinite(value) and 0 <= value <= _LAST_TIME):
            raise ValueError(f"{name} {value!r} is not a time between 1970 and 9999")
    return record


def _raw_id(raw: bytes) -> str:
    try:
        found = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return "?"
    value = found.get("id") if isinstance(found, dict) else None
    return value[:40] if isinstance(value, str) and value else "?"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class JoinTokenStore:
    """Join tokens kept hashed in `<state_dir>/join-tokens.json`; a CredentialVerifier."""

    def __init__(self, state_dir: str | Path | None, *, clock: Callable[[], float] = time.time) -> None:
        # No state_dir: the records live in memory only, loaded from and saved to a shared
        # store by the caller (`in_memory`, `serialized`), in the file's format.
        self.state_dir = files.ensure_dir(Path(state_dir)) if state_dir is not None else None
        self.path = self.state_dir / TOKENS_FILE if self.state_dir is not None else None
        self._clock = clock
        self._records: dict[str, _Record] = {}
        self._broken: list[tuple[msgspec.Raw, BrokenRecord]] = []
        self._stamp: tuple[int, int, int] | None = None
        self._refresh()

    @classmethod
    def in_memory(cls, data: bytes | None, *, clock: Callable[[], float] = time.time) -> JoinTokenStore:
        """A store of the records in `data` (the file's format; None: no tokens), not backed by a file."""
        store = cls(None, clock=clock)
        if data:
            store._parse(data, "shared join-token store")
        return store

    def serialized(self) -> bytes:
        """The records in the file's format."""
        raws = [msgspec.Raw(msgspec.json.encode(r)) for r in self._records.values()]
        return msgspec.json.format(msgspec.json.encode(_File(tokens=raws + [r for r, _ in self._broken]))) + b"\n"

    # ---- public API --------------------------------------------------------------------

    def create(self, namespace: str, service_account: str, ttl: float) -> str:
        """A new token for the workload; the only time its plaintext exists outside the caller."""
        validate_namespace(namespace)
        validate_service_account(service_account)
        check_ttl(ttl)
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        now = self._clock()
        record = _Record(id=token_id, namespace=namespace, service_account=service_account,
                         secret_sha256=_hash(secret), created_at=now, expires_at=now + ttl)
        self._update(lambda records: records.__setitem__(token_id, record))
        return f"{PREFIX}{token_id}.{secret}"

    def verify(self, credential: str) -> Identity:
        """The identity the token stands for, or TokenRejected with the reason."""
        match = _TOKEN.fullmatch(credential) if isinstance(credential, str) else None
        if match is None:
            raise TokenRejected("malformed", "malformed join token: expected rmt_<16 hex digits>.<43-character secret>")
        token_id, secret = match.groups()
        self._refresh()
        record = self._records.get(token_id)
        # Hash and compare even for an unknown id so both failures take the same path.
        expected = record.secret_sha256 if record else _hash("")
        if not hmac.compare_digest(_hash(secret), expected) or record is None:
            raise TokenRejected("unknown", f"unknown join token {token_id} (or wrong secret)")
        if record.revoked_at is not None:
            raise TokenRejected("revoked", f"join token {token_id} was revoked")
        if record.expires_at <= self._clock():
            raise TokenRejected("expired", f"join token {token_id} expired at {_iso(record.expires_at)}")
        return Identity(record.namespace, record.service_account)

    def revoke(self, id_or_token: str) -> None:
        """Revoke by id (`0123...`, `rmt_0123...`) or by the whole token; unknown ids raise TokenRejected."""
        match = _ID.fullmatch(id_or_token.strip()) if isinstance(id_or_token, str) else None
        if match is None:
            shown = repr(id_or_token)[:40] if isinstance(id_or_token, str) else type(id_or_token).__name__
            raise TokenRejected("malformed", f"{shown} is not a join token or token id")
        token_id = match.group(1)

        def mark(records: dict[str, _Record]) -> None:
            if token_id not in records:
                before = len(self._broken)
                self._broken = [(raw, b) for raw, b in self._broken if b.id != token_id]
                if len(self._broken) < before:
                    return   # a broken record was never honoured: revoking it drops it
                raise TokenRejected("unknown", f"unknown join token {token_id}")
            if records[token_id].revoked_at is None:
                records[token_id].revoked_at = self._clock()

        self._update(mark)

    def list(self) -> list[TokenInfo]:
        """Every token (oldest first) with its identity, expiry and revocation; no secrets."""
        self._refresh()
        return [TokenInfo(id=r.id, namespace=r.namespace, service_account=r.service_account,
                          created_at=r.created_at, expires_at=r.expires_at, revoked=r.revoked_at is not None)
                for r in sorted(self._records.values(), key=lambda r: (r.created_at, r.id))]

    def broken(self) -> list[BrokenRecord]:
        """Stored records that cannot be used (never verified, kept in the file as they are)."""
        self._refresh()
        return [b for _, b in self._broken]

    def purge_expired(self) -> int:
        """Forget tokens that expired or were revoked; returns how many."""
        now = self._clock()
        gone: list[str] = []

        def purge(records: dict[str, _Record]) -> None:
            gone.extend(i for i, r in records.items() if r.revoked_at is not None or r.expires_at <= now)
            for token_id in gone:
                del records[token_id]

        self._update(purge)
        return len(gone)

    # ---- persistence -------------------------------------------------------------------

    def _update(self, change: Callable[[dict[str, _Record]], None]) -> None:
        """Read the newest file, apply `change`, write it back: all under the directory lock."""
        if self.path is None:
            records = {k: msgspec.structs.replace(v) for k, v in self._records.items()}
            change(records)
            self._records = records
            return
        with files.locked(self.state_dir):
            self._refresh()
            records = {k: msgspec.structs.replace(v) for k, v in self._records.items()}
            change(records)
            self._records = records
            files.write_atomically(self.path, self.serialized(), files.PRIVATE_MODE)
            self._stamp = _stamp(self.path)

    def _refresh(self) -> None:
        if self.path is None:
            return
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return
        if stamp is None:
            self._records, self._broken, self._stamp = {}, [], None
            return
        self._parse(self.path.read_bytes(), str(self.path))
        self._stamp = stamp

    def _parse(self, raw_file: bytes, where: str) -> None:
        try:
            data = msgspec.json.decode(raw_file, type=_File)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            raise TokenStoreCorrupt(f"{where}: not a join-token store: {error}") from None
        records: dict[str, _Record] = {}
        broken: list[tuple[msgspec.Raw, BrokenRecord]] = []
        for index, raw in enumerate(data.tokens):
            try:
                record = _record(bytes(raw))
                if record.id in records:
                    raise ValueError(f"duplicate id {record.id}")
            except ValueError as error:
                broken.append((raw, BrokenRecord(index, _raw_id(bytes(raw)), str(error))))
                continue
            records[record.id] = record
        self._records, self._broken = records, broken


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
