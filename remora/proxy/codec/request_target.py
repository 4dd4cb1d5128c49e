"""The request target of an HTTP/1 request line, checked once before routing and policy.

`suspect_target` finds, in one scan, every byte sequence that fragment refusal or path
normalization (paths.py) acts on; a target without any (most) skips both. It may also
match in the query, where `checked_target` then changes nothing.
"""
from __future__ import annotations

import re

from remora.proxy.codec.http1 import BadRequest
from remora.proxy.codec.paths import InvalidPath, PathNormalizer

suspect_target = re.compile(rb"[%\\#]|/\.|//").search


def checked_target(url: bytes, paths: PathNormalizer) -> bytes:
    """The slow path of a target with something to refuse or normalize: fragments are
    400 (as Envoy answers), then the listener's PathNormalizer, once, before routing and
    policy; the normalized path is what goes upstream."""
    if url.find(b"#") >= 0:
        raise BadRequest(400, b"fragment in request target")
    try:
        return paths.target(url)
    except InvalidPath as err:
        raise BadRequest(400, str(err).encode()) from None


def absolute_form(url: bytes) -> tuple[bytes, bytes]:
    """`GET http://reviews:9080/x`: (authority, origin-form path) from the URL (RFC 9112 3.2.2)."""
    scheme, sep, rest = url.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise BadRequest(400, b"invalid request target")
    end = len(rest)
    for stop in (b"/", b"?", b"#"):
        i = rest.find(stop)
        if 0 <= i < end:
            end = i
    authority, path = rest[:end], rest[end:]
    if not path.startswith(b"/"):
        path = b"/" + path
    if b"@" in authority:
        authority = authority.rpartition(b"@")[2]
    if not authority:
        raise BadRequest(400, b"invalid request target")
    return authority, path
