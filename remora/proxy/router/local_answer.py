"""Routes the proxy answers itself: VirtualService `directResponse` and `redirect`, and a
Gateway server's `tls.httpsRedirect` (Envoy's direct_response, redirect and require_tls).

A Route with an `answer` never goes upstream: the Exchange asks the answer for
(status, body, extra headers) and sends it as a local reply with no response flag (Envoy
logs none for these; its response code details say direct_response / redirect).
"""
from __future__ import annotations

import base64

from remora.config.model import HTTPDirectResponse, HTTPRedirect
from remora.proxy.codec.message import RequestHead

DEFAULT_PORTS = {b"http": 80, b"https": 443}


class DirectAnswer:
    """`directResponse`: a fixed status and body."""

    __slots__ = ("status", "body", "details")

    def __init__(self, spec: HTTPDirectResponse) -> None:
        self.status = spec.status
        body = spec.body
        if body is None:
            self.body = b""
        elif body.bytes is not None:
            self.body = base64.b64decode(body.bytes)
        else:
            self.body = (body.string or "").encode()
        self.details = "direct_response"

    def reply(self, head: RequestHead) -> tuple[int, bytes, list]:
        return self.status, self.body, []


class RedirectAnswer:
    """`redirect` (or httpsRedirect): Location made from the request and the spec."""

    __slots__ = ("status", "uri", "authority", "port", "derive_port", "scheme", "details")

    def __init__(self, spec: HTTPRedirect | None = None, https: bool = False) -> None:
        self.status = (spec.redirect_code if spec is not None else None) or 301
        self.uri = spec.uri.encode() if spec is not None and spec.uri else None
        self.authority = spec.authority.encode() if spec is not None and spec.authority else None
        self.port = spec.port if spec is not None else None
        self.derive_port = spec.derive_port if spec is not None else None
        scheme = b"https" if https else (spec.scheme.encode().lower() if spec is not None and spec.scheme else None)
        self.scheme = scheme
        self.details = "https_redirect" if https else "redirect"

    def reply(self, head: RequestHead) -> tuple[int, bytes, list]:
        return self.status, b"", [(b"location", self.location(head))]

    def location(self, head: RequestHead) -> bytes:
        """The absolute URL the client is sent to."""
        scheme = self.scheme or head.scheme
        host, port = split_authority(head.authority)
        if self.authority is not None:
            host, port = split_authority(self.authority)
        if self.port is not None:
            port = self.port
        elif self.derive_port == "FROM_PROTOCOL_DEFAULT":
            port = None
        elif scheme != head.scheme and port == DEFAULT_PORTS.get(head.scheme):
            port = None     # a scheme change drops the old scheme's default port; any other port
                            # is kept, as Envoy's https redirect keeps the Host it was sent
        if port is not None and DEFAULT_PORTS.get(scheme) == port:
            port = None
        authority = host if port is None else b"%s:%d" % (host, port)
        path = head.path
        if self.uri is not None:
            q = path.find(b"?")
            path = self.uri if q < 0 or b"?" in self.uri else self.uri + path[q:]
        return b"%s://%s%s" % (scheme, authority, path)


def split_authority(authority: bytes) -> tuple[bytes, int | None]:
    """(host, port or None) of a Host value; an IPv6 literal keeps its brackets."""
    if authority.endswith(b"]") or b":" not in authority:
        return authority, None
    host, _, port = authority.rpartition(b":")
    return (host, int(port)) if port.isdigit() else (authority, None)


def local_answer(spec) -> DirectAnswer | RedirectAnswer | None:
    """The answer of an http route with `directResponse` or `redirect`, else None."""
    if spec.direct_response is not None:
        return DirectAnswer(spec.direct_response)
    if spec.redirect is not None:
        return RedirectAnswer(spec.redirect)
    return None
