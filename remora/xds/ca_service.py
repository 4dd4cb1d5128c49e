"""The mesh CA served by `remora control`: join tokens and CSR signing over the REST API.

Endpoints (docs/control.md, "Certificates"):
    POST   /v1/tokens          {namespace, service_account, ttl} -> {id, token, expires_at, ...}
    GET    /v1/tokens          every token's id, identity, expiry, revocation: never a secret
    DELETE /v1/tokens/{id}     revoke
    POST   /v1/certificates    {csr, token} -> {certificate, chain, trust_bundle, spiffe_id, serial, not_after}
    GET    /v1/trust-bundle    {trust_domain, trust_bundle: [PEM, ...]}

The join token travels in the JSON body of the signing request, next to the CSR, so one
POST carries everything and no proxy or access log that records headers ever sees it. The
identity is the token's (JoinTokenStore as the CredentialVerifier), never the CSR's: a CSR
naming another workload is refused with 400 (identity-mismatch).

The token endpoints need the control server's admin token (admin_auth.py checks it before
these handlers run); certificate signing needs only the join token, the bundle nothing.

State: `<state-dir>/ca/` holds the self-signed root (root-cert.pem, root-key.pem), extra
trusted roots and join-tokens.json. Without --state-dir a temporary directory is used
and removed at exit: the root and the tokens do not survive a restart.
With --store etcd:// the root comes from the shared store (its key sealed) and the join
tokens are read from it on every token or certificate request and written back with
compare-and-swap (replicas.py), so every replica signs with one root and sees every
revocation at once; without quorum these requests answer 503 (store-unavailable).
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from aiohttp import web

from remora.certs import (
    DEFAULT_TTL_SECONDS,
    MAX_TTL_SECONDS,
    CaError,
    CertificateAuthority,
    CredentialRejected,
    CredentialVerifier,
    CsrRejected,
    InvalidSpiffeId,
    JoinTokenStore,
    TokenRejected,
    TokenStoreCorrupt,
)
from remora.certs.tokens import check_ttl as check_token_ttl
from remora.config.duration import parse_duration
from remora.wire.certificates import CERTIFICATES_PATH, TRUST_BUNDLE_PATH
from remora.xds.etcd_client import StoreUnavailable
from remora.xds.metrics import ControlMetrics

CA_SUBDIR = "ca"
READ, WRITE = "read", "write"   # what a request does with the join tokens
TOKEN_WRITE_ATTEMPTS = 5
MAX_CA_BODY = 64 << 10     # a P-384 CSR is under 1 KiB; an 8192-bit RSA one under 3 KiB
DEFAULT_TOKEN_TTL = 24 * 3600.0


class SharedTokens(Protocol):
    """The join tokens of a shared store (replicas.EtcdState)."""

    async def tokens(self) -> tuple[JoinTokenStore, int]: ...

    async def save_tokens(self, store: JoinTokenStore, revision: int) -> bool: ...


class SharedCa(Protocol):
    """What the shared store gives the CA service at start (replicas.SharedStart)."""

    ca: CertificateAuthority
    state: SharedTokens


class CaRequestError(Exception):
    """A request the CA answers with an error: HTTP status, a reason code for metrics, a message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class CaSettings:
    """Where the CA comes from and how long the certificates it signs live."""

    ca_cert: str | None = None     # plug-in CA (Istio cacerts style): issuing cert ...
    ca_key: str | None = None      # ... its key ...
    ca_chain: str | None = None    # ... and its chain up to the root (optional if it is the root)
    cert_ttl: float = DEFAULT_TTL_SECONDS


def check_cert_ttl(seconds: float) -> float:
    """The certificate TTL, or ValueError naming the allowed range (the CA refuses above 90 days)."""
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_TTL_SECONDS):
        raise ValueError(f"--cert-ttl {seconds:g}s is outside (0, 90 days] ({MAX_TTL_SECONDS:g}s at most)")
    return seconds


def _iso(at: dt.datetime | float) -> str:
    if isinstance(at, (int, float)):
        at = dt.datetime.fromtimestamp(at, dt.timezone.utc)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _field(body: dict, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise CaRequestError(400, "bad-request", f"{name}: a non-empty string is required")
    return value


def _ttl(value: Any, default: float) -> float:
    """A TTL given as seconds (number) or as a duration string ("24h", "90m")."""
    if value is None:
        return default
    try:
        seconds = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
            else parse_duration(value)
    except OverflowError:   # an integer too large for a float: JSON allows any number of digits
        raise CaRequestError(400, "bad-request", f"ttl: {str(value)[:20]}... is out of range") from None
    except ValueError as error:
        raise CaRequestError(400, "bad-request", f"ttl: {error}") from None
    try:
        return check_token_ttl(seconds)   # (0, 1 year]: checked before anything is stored
    except ValueError as error:
        raise CaRequestError(400, "bad-request", str(error)) from None


class CaService:
    """The CA, the join-token store and the HTTP handlers that expose them."""

    def __init__(self, ca: CertificateAuthority, tokens: JoinTokenStore, trust_domain: str,
                 metrics: ControlMetrics, *, cert_ttl: float = DEFAULT_TTL_SECONDS,
                 verifier: CredentialVerifier | None = None, log: Callable[[str], None] = lambda _: None,
                 temp_dir: tempfile.TemporaryDirectory | None = None) -> None:
        self.ca = ca
        self.tokens = tokens
        self.verifier: CredentialVerifier = verifier or tokens
        self.trust_domain = trust_domain
        self.metrics = metrics
        self.cert_ttl = check_cert_ttl(cert_ttl)
        self.log = log
        self._temp_dir = temp_dir
        self.shared_tokens: SharedTokens | None = None   # replicas over etcd: tokens read on every use
        metrics.ca_expiry.set(ca.not_after.timestamp())

    @classmethod
    def start(cls, settings: CaSettings, state_dir: str | None, trust_domain: str, metrics: ControlMetrics,
              log: Callable[[str], None], shared: SharedCa | None = None) -> CaService:
        """Load the plug-in CA or load/create the own root (or take the shared store's root
        and join tokens: replicas.py); CaError / ValueError say what is wrong."""
        if shared is not None and settings.ca_cert is None:
            service = cls(shared.ca, JoinTokenStore.in_memory(None), trust_domain, metrics,
                          cert_ttl=settings.cert_ttl, log=log)
            service.shared_tokens = shared.state
            return service
        if (settings.ca_cert is None) != (settings.ca_key is None):
            raise CaError("--ca-cert and --ca-key go together: give both (and --ca-chain if the cert is not the root)")
        if settings.ca_chain and not settings.ca_cert:
            raise CaError("--ca-chain needs --ca-cert and --ca-key")
        temp_dir = None
        if state_dir:
            ca_dir = os.path.join(state_dir, CA_SUBDIR)
        else:
            temp_dir = tempfile.TemporaryDirectory(prefix="remora-ca-")
            ca_dir = temp_dir.name
        try:
            if settings.ca_cert:
                ca = CertificateAuthority.from_files(settings.ca_cert, settings.ca_key, settings.ca_chain,
                                                     trust_domain=trust_domain, state_dir=ca_dir)
                origin = f"plug-in CA {settings.ca_cert}"
            else:
                ca = CertificateAuthority.load_or_create(ca_dir, trust_domain)
                origin = f"root in {ca_dir}"
            tokens = JoinTokenStore(ca_dir)
        except (OSError, InvalidSpiffeId, TokenStoreCorrupt) as error:
            if temp_dir:
                temp_dir.cleanup()
            raise CaError(str(error)) from None
        except BaseException:
            if temp_dir:
                temp_dir.cleanup()
            raise
        if temp_dir:
            log("warning: no --state-dir: the CA root and join tokens live in a temporary directory; "
                "certificates and tokens will not survive a restart")
        log(f"CA: {origin}, trust domain {trust_domain}, valid until {_iso(ca.not_after)}, "
            f"certificates live {settings.cert_ttl:g}s")
        return cls(ca, tokens, trust_domain, metrics, cert_ttl=settings.cert_ttl, log=log, temp_dir=temp_dir)

    def close(self) -> None:
        if self._temp_dir is not None:
            self._temp_dir.cleanup()
            self._temp_dir = None

    # ---- the logic (no HTTP) -----------------------------------------------------------

    def create_token(self, body: dict) -> dict:
        namespace, service_account = _field(body, "namespace"), _field(body, "service_account")
        ttl = _ttl(body.get("ttl"), DEFAULT_TOKEN_TTL)
        try:
            token = self.tokens.create(namespace, service_account, ttl)
        except (InvalidSpiffeId, ValueError) as error:
            raise CaRequestError(400, "bad-request", str(error)) from None
        token_id = token[len("rmt_"):].split(".", 1)[0]
        info = next(t for t in self.tokens.list() if t.id == token_id)
        self.log(f"join token {token_id} created for ns/{namespace}/sa/{service_account}, "
                 f"expires {_iso(info.expires_at)}")
        return {"id": token_id, "token": token, "namespace": namespace, "service_account": service_account,
                "spiffe_id": f"spiffe://{self.trust_domain}/ns/{namespace}/sa/{service_account}",
                "expires_at": _iso(info.expires_at)}

    def list_tokens(self) -> dict:
        """Every usable token, and apart the stored records that cannot be used (never a 500 for one)."""
        return {"tokens": [{"id": t.id, "namespace": t.namespace, "service_account": t.service_account,
                            "created_at": _iso(t.created_at), "expires_at": _iso(t.expires_at),
                            "revoked": t.revoked} for t in self.tokens.list()],
                "broken": [{"index": b.index, "id": b.id, "error": b.error} for b in self.tokens.broken()]}

    def revoke_token(self, token_id: str) -> dict:
        try:
            self.tokens.revoke(token_id)
        except TokenRejected as error:
            raise CaRequestError(404 if error.reason == "unknown" else 400, f"token-{error.reason}",
                                 str(error)) from None
        token_id = token_id.strip().removeprefix("rmt_").split(".", 1)[0]   # never echo a secret
        self.log(f"join token {token_id} revoked")
        return {"id": token_id, "revoked": True}

    def issue(self, body: dict) -> dict:
        """Sign the CSR for the identity the token proves; CaRequestError says why not."""
        csr, token = _field(body, "csr"), _field(body, "token")
        try:
            identity = self.verifier.verify(token)
        except CredentialRejected as error:
            raise CaRequestError(401, f"token-{error.reason}", str(error)) from None
        spiffe_id = identity.spiffe_id(self.trust_domain)
        try:
            issued = self.ca.sign_csr(csr, spiffe_id, self.cert_ttl)
        except CsrRejected as error:
            raise CaRequestError(400, f"csr-{error.reason}", str(error)) from None
        except CaError as error:   # the CA itself cannot sign (its chain expired)
            raise CaRequestError(503, "ca-unavailable", str(error)) from None
        self.metrics.certificates_issued.inc()
        serial = format(issued.serial, "x")
        self.log(f"issued {spiffe_id} serial {serial} until {_iso(issued.not_after)}")
        return {"certificate": issued.cert_pem, "chain": list(issued.chain_pems),
                "trust_bundle": self.ca.trust_bundle(), "spiffe_id": str(spiffe_id), "serial": serial,
                "not_before": _iso(issued.not_before), "not_after": _iso(issued.not_after)}

    def bundle(self) -> dict:
        return {"trust_domain": self.trust_domain, "trust_bundle": self.ca.trust_bundle()}

    # ---- HTTP --------------------------------------------------------------------------

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/tokens", self._post_token)
        router.add_get("/v1/tokens", self._get_tokens)
        router.add_delete("/v1/tokens/{id}", self._delete_token)
        router.add_post(CERTIFICATES_PATH, self._post_certificate)
        router.add_get(TRUST_BUNDLE_PATH, self._get_bundle)

    async def _post_token(self, request: web.Request) -> web.Response:
        return await self._answer(self.create_token, request, tokens=WRITE)

    async def _get_tokens(self, request: web.Request) -> web.Response:
        return await self._answer(lambda _: self.list_tokens(), tokens=READ)

    async def _delete_token(self, request: web.Request) -> web.Response:
        return await self._answer(lambda _: self.revoke_token(request.match_info["id"]), tokens=WRITE)

    async def _post_certificate(self, request: web.Request) -> web.Response:
        return await self._answer(self.issue, request, tokens=READ)

    async def _get_bundle(self, request: web.Request) -> web.Response:
        return await self._answer(lambda _: self.bundle())

    async def _with_shared_tokens(self, handle: Callable[[dict], dict], body: dict, writes: bool) -> dict:
        """`handle` over the join tokens as the shared store has them now; a change is written
        back with compare-and-swap, and made again on the newer records if another replica won."""
        for _ in range(TOKEN_WRITE_ATTEMPTS):
            tokens, revision = await self.shared_tokens.tokens()
            if self.verifier is self.tokens:
                self.verifier = tokens
            self.tokens = tokens
            result = handle(body)
            if not writes or await self.shared_tokens.save_tokens(tokens, revision):
                return result
        raise CaRequestError(409, "token-conflict", "the join tokens kept changing on other replicas; retry")

    async def _answer(self, handle: Callable[[dict], dict], request: web.Request | None = None,
                      tokens: str | None = None) -> web.Response:
        try:
            body = await read_json_object(request) if request is not None else {}
            if tokens is not None and self.shared_tokens is not None:
                return web.json_response(await self._with_shared_tokens(handle, body, tokens == WRITE))
            return web.json_response(handle(body))
        except StoreUnavailable as error:
            self.metrics.ca_errors.labels("store-unavailable").inc()
            return web.json_response({"error": f"config store unavailable: {error}",
                                      "reason": "store-unavailable"}, status=503)
        except CaRequestError as error:
            self.metrics.ca_errors.labels(error.reason).inc()
            return web.json_response({"error": str(error), "reason": error.reason}, status=error.status)
        except TokenStoreCorrupt as error:
            self.metrics.ca_errors.labels("token-store").inc()
            self.log(f"error: {error}")
            return web.json_response({"error": str(error), "reason": "token-store"}, status=500)


async def read_json_object(request: web.Request, limit: int = MAX_CA_BODY) -> dict:
    """The request body as a JSON object; 413 past `limit` bytes (checked while reading), 400 otherwise."""
    if request.content_length is not None and request.content_length > limit:
        raise CaRequestError(413, "body-too-large", f"body of {request.content_length} bytes, at most {limit}")
    chunks, size = [], 0
    while chunk := await request.content.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise CaRequestError(413, "body-too-large", f"body over {limit} bytes")
    try:
        body = json.loads(b"".join(chunks) or b"null")
    except ValueError as error:
        raise CaRequestError(400, "bad-request", f"body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise CaRequestError(400, "bad-request", "body must be a JSON object")
    return body
