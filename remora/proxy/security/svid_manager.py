"""The sidecar's certificate manager: gets an X.509-SVID from the control server's CA and keeps it fresh.

Runs in the process that runs the xDS client (the single worker, or the supervisor with
--workers). Flow: generate a key in memory -> POST {csr, token} to
`<control>/v1/certificates` -> keep the Svid and the trust bundle in memory (the key is
never written anywhere) -> sleep until `rotation_due` (half the lifetime, jittered) ->
again with a fresh key. When the CA cannot be reached or refuses, the current certificate
is kept (until it expires) and the request is retried with `RotationBackoff`, which always
retries before the expiry. One log line per certificate issued and per failure.

The TLS layer subscribes with `on_rotate` (called with the new Svid and trust bundle) and
reads `current()`; admin shows `status()` at GET /certs.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from typing import TYPE_CHECKING, Callable, Protocol
from urllib.parse import urlsplit, urlunsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from remora.certs import RotationBackoff, Svid, SvidError, generate_key_and_csr, rotation_due
from remora.proxy import log_levels
from remora.wire.certificates import CERTIFICATES_PATH

if TYPE_CHECKING:
    import aiohttp

REQUEST_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 5.0
# A certificate backdated for clock skew (the CA backdates 60 s) may be "half way" through
# its life the moment it arrives; then rotate at half of what is left, never in a tight loop.
MIN_ROTATION_SECONDS = 1.0

RotateCallback = Callable[[Svid, list[str]], None]


class CaUnavailable(Exception):
    """The signing request failed: the control server is unreachable, refused, or answered nonsense."""


class CaClient(Protocol):
    """Sends one signing request; returns the CA's JSON answer or raises CaUnavailable."""

    async def sign(self, csr: str, token: str) -> dict: ...
    async def close(self) -> None: ...


def certificates_url(control: str) -> str:
    """`http://host:port` (or the ws:// form --control accepts) -> `http://host:port/v1/certificates`."""
    parts = urlsplit(control)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, CERTIFICATES_PATH, "", ""))


class HttpCaClient:
    """The control server's CA over HTTP (aiohttp, bounded connect and total time)."""

    def __init__(self, control: str) -> None:
        # `--control A,B`: the CA of each replica in turn, from the last one that answered.
        self.urls = [certificates_url(part.strip()) for part in control.split(",") if part.strip()]
        self.url = self.urls[0]
        self._session: aiohttp.ClientSession | None = None

    async def sign(self, csr: str, token: str) -> dict:
        """Ask the replicas in turn; the last one's error when none could answer."""
        error: CaUnavailable | None = None
        for url in [self.url, *(u for u in self.urls if u != self.url)]:
            try:
                answer = await self._sign_at(url, csr, token)
            except CaUnavailable as failure:
                error = failure
                continue
            self.url = url
            return answer
        raise error

    async def _sign_at(self, url: str, csr: str, token: str) -> dict:
        # Here, not at import: --cert-dir sidecars import this module but never call a CA.
        import aiohttp
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
                total=REQUEST_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS))
        try:
            async with self._session.post(url, json={"csr": csr, "token": token}) as response:
                try:
                    answer = await response.json(content_type=None)
                except ValueError:
                    answer = None
                status = response.status
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as error:
            raise CaUnavailable(f"{url} unreachable: {str(error) or type(error).__name__}") from None
        if not isinstance(answer, dict):
            raise CaUnavailable(f"{url} answered {status} without a JSON object")
        if status != 200:
            raise CaUnavailable(f"{url} refused ({status} {answer.get('reason', '?')}): "
                                f"{answer.get('error', 'no reason given')}")
        return answer

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# Lines that say a certificate could not be had or installed: warnings, so that they show
# at --log-level warning too; the rest (issued, rotated) is info.
_secret_log = log_levels.logger("secret")
_TROUBLE = ("error:", "certificate request failed", "unreadable")


def log(message: str) -> None:
    """The `secret` component's line for a certificate event (log_levels.py)."""
    level = logging.WARNING if any(word in message for word in _TROUBLE) else logging.INFO
    _secret_log.log(level, "%s", message)


def _iso(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def bundle_summary(bundle_pems: list[str]) -> list[dict]:
    """What /certs shows of each trusted root: subject, expiry, SHA-256 fingerprint (never the PEM)."""
    rows = []
    for pem in bundle_pems:
        try:
            cert = x509.load_pem_x509_certificate(pem.encode())
        except ValueError as error:
            rows.append({"subject": None, "not_after": None, "fingerprint_sha256": None, "error": str(error)})
            continue
        rows.append({"subject": cert.subject.rfc4514_string(), "not_after": _iso(cert.not_valid_after_utc),
                     "fingerprint_sha256": cert.fingerprint(hashes.SHA256()).hex()})
    return rows


class CertificateSource:
    """What every certificate source shares: the current SVID and bundle, and the rotation callbacks."""

    def __init__(self, clock: Callable[[], float], log: Callable[[str], None]) -> None:
        self.clock = clock
        self.log = log
        self.on_rotate: list[RotateCallback] = []
        self.trust_bundle: list[str] = []
        self.last_error: str | None = None
        self.next_attempt_at: float | None = None
        self._svid: Svid | None = None
        self._task: asyncio.Task | None = None

    def current(self) -> Svid | None:
        """The SVID to present, or None before the first one or once it expired."""
        if self._svid is None or self._svid.expired(self.clock()):
            return None
        return self._svid

    def _install(self, svid: Svid, bundle: list[str], how: str) -> None:
        """Make `svid` current, log it, and tell every subscriber (workers' TLS contexts, metrics)."""
        self._svid, self.trust_bundle, self.last_error = svid, bundle, None
        self.log(f"{how}: {svid.spiffe_id} serial {svid.serial:x} valid until {_iso(svid.not_after)}")
        for callback in list(self.on_rotate):
            try:
                callback(svid, bundle)
            except Exception as error:   # one bad subscriber must not stop rotation for the rest
                self.log(f"error: certificate rotation callback {callback!r} failed: {error}")

    async def stop_task(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


class SvidManager(CertificateSource):
    """Holds this sidecar's current SVID and trust bundle; requests and rotates them in the background."""

    def __init__(self, client: CaClient, token: str, spiffe_id: str, *,
                 clock: Callable[[], float] = time.time, rng: Callable[[], float] = random.random,
                 backoff: RotationBackoff | None = None, log: Callable[[str], None] = log) -> None:
        self.client = client
        self._token = token
        self.spiffe_id = spiffe_id
        self.clock = clock
        self.rng = rng
        self.backoff = backoff or RotationBackoff(base=1.0, cap=60.0, rng=rng)
        super().__init__(clock, log)

    async def refresh(self) -> float:
        """One signing attempt; returns the seconds to wait before the next one."""
        now = self.clock()
        try:
            key, csr = generate_key_and_csr(self.spiffe_id)
            answer = await self.client.sign(csr, self._token)
            svid = Svid.from_pems(_text(answer, "certificate"), _pems(answer, "chain"), key)
            bundle = _pems(answer, "trust_bundle")
        except (CaUnavailable, SvidError) as error:
            return self._failed(str(error), now)
        self.backoff.reset()
        self._install(svid, bundle, "certificate issued")
        return self._rotation_delay(svid, self.clock())

    def _failed(self, reason: str, now: float) -> float:
        self.last_error = reason
        svid = self.current()
        not_after = svid.not_after.timestamp() if svid is not None else None
        delay = self.backoff.next_delay(now, not_after)
        keeping = (f"keeping serial {svid.serial:x} until {_iso(svid.not_after)}" if svid is not None
                   else "no certificate yet")
        self.log(f"certificate request failed: {reason}; {keeping}; retry in {delay:.1f}s")
        return delay

    def _rotation_delay(self, svid: Svid, now: float) -> float:
        delay = rotation_due(svid, now, rng=self.rng)
        if delay <= 0:   # backdated past half its life already: rotate half way through the rest
            delay = (svid.not_after.timestamp() - now) / 2
        return max(MIN_ROTATION_SECONDS, delay)

    async def run(self) -> None:
        """Request, then rotate, until cancelled."""
        while True:
            delay = await self.refresh()
            self.next_attempt_at = self.clock() + delay
            await asyncio.sleep(delay)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="svid-manager")

    async def stop(self) -> None:
        await self.stop_task()
        await self.client.close()

    def status(self) -> dict:
        """GET /certs: the SVID (never the key), the trust bundle's roots, the last error, the next attempt."""
        return certs_status(self.current(), self.trust_bundle, self.last_error, self.next_attempt_at, self.clock())


def certs_status(svid: Svid | None, bundle: list[str], last_error: str | None,
                 next_attempt_at: float | None, now: float) -> dict:
    """The JSON of GET /certs, whichever source (CA or certificate directory) holds the SVID."""
    return {
        "svid": None if svid is None else {
            "spiffe_id": str(svid.spiffe_id), "serial": format(svid.serial, "x"),
            "not_before": _iso(svid.not_before), "not_after": _iso(svid.not_after),
            "expires_in_seconds": round(svid.not_after.timestamp() - now, 3)},
        "trust_bundle": bundle_summary(bundle),
        "last_error": last_error,
        "next_rotation_in_seconds": (None if next_attempt_at is None
                                     else round(max(0.0, next_attempt_at - now), 3)),
    }


def _text(answer: dict, name: str) -> str:
    value = answer.get(name)
    if not isinstance(value, str) or not value:
        raise SvidError(f"the CA's answer has no {name!r} string")
    return value


def _pems(answer: dict, name: str) -> list[str]:
    value = answer.get(name)
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise SvidError(f"the CA's answer has no {name!r} list of PEM strings")
    return value
