"""VirtualService `corsPolicy`: Envoy's CORS filter, per route (it runs before faults and
the router, as in Istio's filter chain).

- Origins: `allowOrigins` (exact / prefix / regex) or the deprecated `allowOrigin` list; a
  matcher that matches `*` allows every origin. The answer names the request's own origin.
- Preflight: OPTIONS with `Origin` and `Access-Control-Request-Method`. From an allowed
  origin it is answered by the proxy (200, no body) with allow-origin, -methods, -headers,
  max-age and -credentials as configured, and never forwarded. From another origin it is
  forwarded as an ordinary request (`unmatchedPreflights: FORWARD`, the default), or
  answered 200 without CORS headers (`IGNORE`).
- Other requests with an allowed `Origin` are routed as usual and their response gets
  `access-control-allow-origin`, `-allow-credentials` and `-expose-headers`.
"""
from __future__ import annotations

from remora.config.duration import parse_duration
from remora.config.model import CorsPolicy, StringMatch
from remora.proxy.codec.message import RequestHead


class Cors:
    """One route's compiled CORS policy."""

    __slots__ = ("matchers", "preflight_extra", "response_extra", "ignore_unmatched")

    def __init__(self, spec: CorsPolicy, compile_match) -> None:
        matches = list(spec.allow_origins) + [StringMatch(exact=origin) for origin in spec.allow_origin]
        self.matchers = [compile_match(m) for m in matches]
        credentials = [(b"access-control-allow-credentials", b"true")] if spec.allow_credentials else []
        preflight = []
        if spec.allow_methods:
            preflight.append((b"access-control-allow-methods", ",".join(spec.allow_methods).encode()))
        if spec.allow_headers:
            preflight.append((b"access-control-allow-headers", ",".join(spec.allow_headers).encode()))
        if spec.max_age is not None:
            preflight.append((b"access-control-max-age", b"%d" % int(parse_duration(spec.max_age))))
        self.preflight_extra = preflight + credentials
        expose = [(b"access-control-expose-headers", ",".join(spec.expose_headers).encode())] \
            if spec.expose_headers else []
        self.response_extra = credentials + expose
        self.ignore_unmatched = spec.unmatched_preflights == "IGNORE"

    def allows(self, origin: bytes) -> bool:
        return any(match(b"*") or match(origin) for match in self.matchers)

    def preflight_answer(self, head: RequestHead) -> list | None:
        """For a preflight the proxy answers: its extra headers (None: not one to answer)."""
        if head.method != b"OPTIONS":
            return None
        origin = head.header(b"origin")
        if not origin or head.header(b"access-control-request-method") is None:
            return None
        if self.allows(origin):
            return [(b"access-control-allow-origin", origin), *self.preflight_extra]
        return [] if self.ignore_unmatched else None

    def response_headers(self, head: RequestHead, headers: list) -> list:
        """The upstream's response headers plus the CORS ones an allowed origin gets."""
        origin = head.header(b"origin")
        if not origin or not self.allows(origin):
            return headers
        return [*headers, (b"access-control-allow-origin", origin), *self.response_extra]
