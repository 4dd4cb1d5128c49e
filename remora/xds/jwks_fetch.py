"""JWKS for RequestAuthentication `jwksUri`: fetched by the control server and pushed inline.

As istiod's JwksResolver: the control server fetches every `jwksUri` (or, for a rule with
neither `jwks` nor `jwksUri`, the issuer's OpenID discovery document and then its
`jwks_uri`) and pushes the keys to sidecars as the rule's inline `jwks`, so sidecars need
no egress to the identity provider.

Rules:
- A URL is fetched as soon as a config version names it, then every `refresh_interval`
  (20 minutes, istiod's PILOT_JWT_PUB_KEY_REFRESH_INTERVAL); a URL that has never been
  fetched successfully is retried every `retry_interval` (30 s).
- A body must be a JWKS with at least one usable public key (remora/config/jwks.py); a
  failed fetch or an unusable body keeps the last good keys and is counted
  (`remora_control_jwks_resolver_network_fetch_fail_total`) and logged once per failure.
- Never fetched: the rule goes out without keys and the sidecar answers its tokens 401
  "Jwks remote fetch is failed" (fail closed, as Istio's placeholder key does).
- Only a change of keys triggers a push (`on_change`).

`fetch_keys` is also what `remora proxy --mesh-config` calls once at start for a sidecar
that reads files (no control server to ask).
"""
from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from remora.config.jwks import DISCOVERY_SUFFIX, JwksError, key_sources, parse_jwks, with_fetched_keys
from remora.config.model import MeshConfig

REFRESH_INTERVAL = 20 * 60.0
RETRY_INTERVAL = 30.0
MAX_BODY = 1 << 20


class FetchError(Exception):
    """A JWKS could not be fetched or used; the message says why."""


def _get(url: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"accept": "application/json", "user-agent": "remora-jwks"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(MAX_BODY + 1)
    except urllib.error.HTTPError as error:
        raise FetchError(f"HTTP {error.code} from {url}") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise FetchError(f"cannot fetch {url}: {reason}") from None
    if len(body) > MAX_BODY:
        raise FetchError(f"{url}: body larger than {MAX_BODY} bytes")
    return body


def fetch_keys(source: str, timeout: float) -> str:
    """The JWKS text for a key source (a jwksUri, or an issuer's discovery URL); FetchError."""
    url = source
    if source.endswith(DISCOVERY_SUFFIX):
        try:
            url = json.loads(_get(source, timeout))["jwks_uri"]
        except (ValueError, KeyError, TypeError):
            raise FetchError(f"{source}: not an OpenID discovery document with jwks_uri") from None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise FetchError(f"{source}: jwks_uri {url!r} is not an http(s) URL")
    text = _get(url, timeout).decode("utf-8", "replace")
    try:
        parse_jwks(text)
    except JwksError as error:
        raise FetchError(f"{url}: unusable JWKS: {error}") from None
    return text


def resolve_keys(config: MeshConfig, keys: dict[str, str]) -> MeshConfig:
    """The config with fetched keys inlined in its RequestAuthentications."""
    if not keys or not config.request_authentications:
        return config
    from dataclasses import replace
    return replace(config, request_authentications=tuple(
        with_fetched_keys(r, keys) for r in config.request_authentications))


def fetch_for_files(config: MeshConfig, log: Callable[[str], None]) -> MeshConfig:
    """A sidecar reading files: fetch every key source once, at start, and inline the keys.
    A source that fails is logged and left without keys (its tokens get 401)."""
    keys: dict[str, str] = {}
    for source, timeout in key_sources(config).items():
        try:
            keys[source] = fetch_keys(source, timeout)
            log(f"jwks fetched from {source}")
        except FetchError as error:
            log(f"warning: jwks fetch failed: {error}; tokens of that issuer get 401 until a restart fetches them")
    return resolve_keys(config, keys)


@dataclass
class SourceState:
    last_success: float | None = None   # Unix time of the last good fetch
    last_error: str | None = None
    next_due: float = 0.0               # loop time of the next fetch


class JwksFetcher:
    """The control server's keys for every key source its config names."""

    def __init__(self, metrics, log: Callable[[str], None], on_change: Callable[[], None],
                 refresh_interval: float = REFRESH_INTERVAL, retry_interval: float = RETRY_INTERVAL,
                 fetch: Callable[[str, float], str] = fetch_keys) -> None:
        self.metrics = metrics
        self.log = log
        self.on_change = on_change
        self.refresh_interval = refresh_interval
        self.retry_interval = retry_interval
        self.fetch = fetch
        self.keys: dict[str, str] = {}
        self.states: dict[str, SourceState] = {}
        self.sources: dict[str, float] = {}
        self._wake = asyncio.Event()

    def config_changed(self, config: MeshConfig) -> None:
        """A new config version: fetch new sources now; forget sources no longer named."""
        self.sources = key_sources(config)
        for gone in set(self.states) - set(self.sources):
            del self.states[gone]
            self.keys.pop(gone, None)
        if any(source not in self.states for source in self.sources):
            self._wake.set()

    def resolve(self, config: MeshConfig) -> MeshConfig:
        return resolve_keys(config, self.keys)

    def status(self) -> dict:
        return {source: {"fetched": source in self.keys, "last_success": state.last_success,
                         "last_error": state.last_error}
                for source, state in sorted(self.states.items())}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            now = loop.time()
            due = [s for s in self.sources if self.states.get(s) is None or self.states[s].next_due <= now]
            if due and await self._fetch_all(due, loop):
                self.on_change()
            upcoming = [st.next_due for s, st in self.states.items() if s in self.sources]
            wait = max(0.0, min(upcoming) - loop.time()) if upcoming else None
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
            except asyncio.TimeoutError:
                pass

    async def _fetch_all(self, sources: list[str], loop) -> bool:
        changed = False
        for source in sources:
            state = self.states.setdefault(source, SourceState())
            try:
                text = await asyncio.to_thread(self.fetch, source, self.sources.get(source, 5.0))
            except FetchError as error:
                state.last_error = str(error)
                state.next_due = loop.time() + (self.refresh_interval if source in self.keys else self.retry_interval)
                self.metrics.jwks_fetch_fail.inc()
                kept = (f"keeping the keys fetched at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(state.last_success))}"
                        if source in self.keys else "no keys yet: its tokens get 401 (Jwks remote fetch is failed)")
                self.log(f"jwks fetch failed: {error}; {kept}")
                continue
            state.last_success, state.last_error = time.time(), None
            state.next_due = loop.time() + self.refresh_interval
            self.metrics.jwks_fetch_success.inc()
            if self.keys.get(source) != text:
                self.keys[source] = text
                changed = True
                self.log(f"jwks fetched from {source}")
        return changed
