"""The control server's admin credential: one bearer token guarding every operator endpoint.

Whoever holds the admin token may change the mesh: apply and delete config, read it and
the sidecar registrations, and mint join tokens (a certificate for any identity). Sidecars
never need it: the stream, certificate signing (the join token is its credential), the
trust bundle, /healthz and /metrics stay open. The rule is deny by default: a route is
open only when it is in OPEN_ROUTES, so an endpoint added later is guarded unless someone
decides otherwise (istiod likewise authenticates its debug endpoints).

Where the token comes from, in order (docs/control.md, "Authentication"):
- `--admin-token-file FILE`: the operator's file (a Kubernetes Secret); it must exist;
- `<state-dir>/admin-token`: created on first start (`rma_` + 32 random bytes, mode 0600,
  like a kubeconfig) and read on every later start, so it is stable across restarts;
- neither: a token made in memory and printed once on stderr; it dies with the process.

Only the SHA-256 of the token is kept, and a presented token is hashed and compared in
constant time. A file-backed token is re-read when the file changes (a rotated Secret,
an operator writing a new token), checked at most once a second on admin requests.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from aiohttp import web

from remora.certs import files
from remora.wire.certificates import CERTIFICATES_PATH, TRUST_BUNDLE_PATH
from remora.wire.protocol import STREAM_PATH

ADMIN_TOKEN_FILE = "admin-token"
PREFIX = "rma_"
MIN_LENGTH = 16            # an operator's token: at least this many characters
RECHECK_SECONDS = 1.0      # how often a changed token file is looked for

# (method, route template) a sidecar or a probe uses; everything else needs the admin token.
OPEN_ROUTES = frozenset({
    ("GET", STREAM_PATH),
    ("POST", CERTIFICATES_PATH),
    ("GET", TRUST_BUNDLE_PATH),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
})

HINT = ("send 'Authorization: Bearer <admin token>'; remora control keeps it in <state-dir>/admin-token "
        "or reads it from --admin-token-file")


class AdminTokenError(Exception):
    """The admin token file cannot be read, created, or holds no usable token."""


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def generate_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def check_token(text: str, where: str) -> str:
    """The token in a file's text (surrounding whitespace dropped), or AdminTokenError naming `where`."""
    token = text.strip()
    if not token:
        raise AdminTokenError(f"{where}: empty; it must hold the admin token")
    if len(token) < MIN_LENGTH:
        raise AdminTokenError(f"{where}: the admin token is {len(token)} characters, at least {MIN_LENGTH} "
                              f"are required (e.g. the output of `openssl rand -hex 32`)")
    if not all("!" <= c <= "~" for c in token):
        raise AdminTokenError(f"{where}: the admin token must be one line of printable ASCII without spaces "
                              f"(it travels in an HTTP header)")
    return token


def read_token_file(path: str | Path) -> str:
    """The token in an existing file, or AdminTokenError naming the file and what is wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AdminTokenError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise AdminTokenError(f"{path}: cannot read the admin token: {error}") from None
    return check_token(text, str(path))


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


@dataclass
class AdminCredential:
    """The SHA-256 of the admin token, and the file it came from (None: made in memory)."""

    digest: bytes
    path: Path | None = None
    origin: str = "memory"
    _stamp: tuple[int, int, int] | None = None
    _checked_at: float = 0.0

    @classmethod
    def from_token(cls, token: str) -> AdminCredential:
        return cls(_hash(token))

    @classmethod
    def from_file(cls, path: str | Path) -> AdminCredential:
        """The operator's token file (--admin-token-file); it must exist and hold a usable token."""
        path = Path(path)
        return cls(_hash(read_token_file(path)), path, f"--admin-token-file {path}", _stamp(path))

    @classmethod
    def load_or_create(cls, state_dir: str | Path) -> tuple[AdminCredential, bool]:
        """`<state_dir>/admin-token`, created (0600) on first start; (credential, created)."""
        directory = Path(state_dir)
        path = directory / ADMIN_TOKEN_FILE
        try:
            files.ensure_dir(directory)
            with files.locked(directory):   # two servers starting together make one token
                created = not path.exists()
                if created:
                    files.write_atomically(path, (generate_token() + "\n").encode(), files.PRIVATE_MODE)
        except OSError as error:
            raise AdminTokenError(f"{path}: cannot create the admin token: {error}") from None
        return cls(_hash(read_token_file(path)), path, str(path), _stamp(path)), created

    def matches(self, presented: str) -> bool:
        """Constant-time comparison of a presented token with the one in force."""
        self._refresh()
        return hmac.compare_digest(_hash(presented), self.digest)

    def _refresh(self) -> None:
        """Pick up a rewritten token file; a file that became unusable keeps the token in force."""
        if self.path is None or time.monotonic() - self._checked_at < RECHECK_SECONDS:
            return
        self._checked_at = time.monotonic()
        stamp = _stamp(self.path)
        if stamp is None or stamp == self._stamp:
            return
        try:
            self.digest = _hash(read_token_file(self.path))
        except AdminTokenError:
            return   # half-written or emptied: the next check tries again
        self._stamp = stamp


def route_key(request: web.Request) -> str | None:
    """"METHOD /route/{template}" of a matched request (a bounded metric label); None when unmatched."""
    match = request.match_info
    if match.http_exception is not None or match.route.resource is None:
        return None
    method = "GET" if request.method == "HEAD" else request.method
    return f"{method} {match.route.resource.canonical}"


def refusal(request: web.Request, credential: AdminCredential) -> tuple[str, str] | None:
    """(reason, message) when an admin route lacks the right bearer token; None when allowed."""
    header = request.headers.get("Authorization")
    if header is None:
        return "missing", f"{request.method} {request.path} needs the admin token: {HINT}"
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        # Never echo the header: a token sent without its scheme would come back in the answer.
        return "malformed", f"{request.method} {request.path}: the Authorization header must be 'Bearer <admin token>'"
    if not credential.matches(token):
        return "wrong", f"{request.method} {request.path}: the admin token is not the one remora control uses"
    return None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def admin_middleware(credential: AdminCredential, count: Callable[[str, str], None]):
    """aiohttp middleware: 401 (JSON, WWW-Authenticate) for an admin route without the token.

    `count(endpoint, reason)` records each refusal (remora_control_unauthorized_total).
    Unmatched requests go on to their 404/405 untouched: there is nothing behind them.
    """

    @web.middleware
    async def require_admin(request: web.Request, handler: Handler) -> web.StreamResponse:
        key = route_key(request)
        if key is None or tuple(key.split(" ", 1)) in OPEN_ROUTES:
            return await handler(request)
        refused = refusal(request, credential)
        if refused is None:
            return await handler(request)
        reason, message = refused
        count(key, reason)
        return web.json_response({"error": message, "reason": f"admin-token-{reason}"}, status=401,
                                 headers={"WWW-Authenticate": 'Bearer realm="remora-control"'})

    return require_admin
