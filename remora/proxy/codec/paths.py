"""Request-path normalization: the one path that routing, policy and the app all see.

Done once per request, in the codec, before routing and authorization; the normalized
path is what goes upstream (Envoy's `normalize_path`, `merge_slashes` and
`path_with_escaped_slashes_action`, set per Istio `meshConfig.pathNormalization` level):

  NONE                      the path as received
  BASE (Istio's default)    RFC 3986 §6: percent-encoded unreserved characters decoded,
                            remaining escapes upper-cased, `\\` read as `/`, `.` and `..`
                            segments resolved (never above the root); escaped slashes
                            (%2F, %5C) kept as they came (KEEP_UNCHANGED)
  MERGE_SLASHES             BASE, then runs of `/` merged into one
  DECODE_AND_MERGE_SLASHES  %2F and %5C decoded to `/` first (UNESCAPE_AND_FORWARD), then
                            MERGE_SLASHES

The order (unescape slashes, decode and resolve dots, then merge) is Envoy's: Istio's
normalization conformance table (tests/security/normalization_test.go) pins
`/app//../admin` to `/app/admin`, which only that order gives.

Only the path is touched; the query string goes through untouched. A `%00` (NUL) makes the
request invalid at every level but NONE, as in Envoy. Upper-casing the escapes that stay
(RFC 3986 §6.2.2.1) goes one step past Envoy, which keeps their case: equivalent for the
app, and one spelling for policy to match.

`escaped_slash_variant` serves authorization at the levels that keep %2F: an app that
decodes %2F itself would see `/foo/..%2Fadmin` as `/admin`, so policy is checked on that
reading too (see Listener.authorize).
"""
from __future__ import annotations

LEVELS = ("NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES")
DEFAULT_LEVEL = "BASE"

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_SLASHES = (0x2F, 0x5C)     # `/` and `\`


class InvalidPath(ValueError):
    """A path no level can normalize safely (an escaped NUL)."""


class PathNormalizer:
    """Normalizes request targets for one Istio pathNormalization level."""

    __slots__ = ("level", "merge_slashes", "decode_slashes", "active")

    def __init__(self, level: str = DEFAULT_LEVEL) -> None:
        if level not in LEVELS:
            raise ValueError(f"pathNormalization: unknown level {level!r} (one of {', '.join(LEVELS)})")
        self.level = level
        self.active = level != "NONE"
        self.merge_slashes = level in ("MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES")
        self.decode_slashes = level == "DECODE_AND_MERGE_SLASHES"

    @property
    def keeps_escaped_slashes(self) -> bool:
        """True when %2F / %5C reach the app encoded (every level but DECODE_AND_MERGE_SLASHES)."""
        return self.active and not self.decode_slashes

    def target(self, target: bytes) -> bytes:
        """The normalized origin-form target (path and query); raises InvalidPath."""
        if not self.active:
            return target
        if target[:1] != b"/":
            return target            # `*` (OPTIONS) has no path to normalize
        end = target.find(b"?")
        path = target if end < 0 else target[:end]
        # Fast path: nothing any rule could change (most requests). bytes.find is about
        # half the cost of `in` here.
        if (path.find(b"%") < 0 and path.find(b"/.") < 0 and path.find(b"\\") < 0
                and (not self.merge_slashes or path.find(b"//") < 0)):
            return target
        normalized = normalize_path(path, self.decode_slashes, self.merge_slashes)
        if normalized is path:
            return target
        return normalized if end < 0 else normalized + target[end:]


def escaped_slash_variant(target: bytes) -> bytes | None:
    """The target as an app that decodes %2F/%5C would read it, or None when it has none."""
    q = target.find(b"?")
    path = target if q < 0 else target[:q]
    lowered = path.lower()
    if b"%2f" not in lowered and b"%5c" not in lowered:
        return None
    try:
        normalized = normalize_path(path, True, True)
    except InvalidPath:
        return None
    return normalized if q < 0 else normalized + target[q:]


def normalize_path(path: bytes, decode_slashes: bool, merge_slashes: bool) -> bytes:
    """Decode unreserved escapes, read `\\` as `/`, resolve dot segments, optionally merge."""
    decoded = _decode(path, decode_slashes)
    segments = decoded.split(b"/")
    out: list[bytes] = []
    # segments[0] is the empty string before the leading slash.
    last = len(segments) - 1
    for i, segment in enumerate(segments[1:], 1):
        if segment == b".":
            if i == last:
                out.append(b"")      # `/a/.` -> `/a/`
            continue
        if segment == b"..":
            if out:
                out.pop()
            if i == last:
                out.append(b"")      # `/a/b/..` -> `/a/`
            continue
        out.append(segment)
    if merge_slashes:
        # Empty segments are runs of slashes; a trailing one is the trailing slash.
        trailing = bool(out) and out[-1] == b""
        out = [s for s in out if s]
        if trailing:
            out.append(b"")
    result = b"/" + b"/".join(out)
    return path if result == path else result


def _decode(path: bytes, decode_slashes: bool) -> bytes:
    """Percent-decode unreserved characters (and slashes when asked); `\\` becomes `/`."""
    if b"%" not in path:
        return path.replace(b"\\", b"/")
    out = bytearray()
    i, n = 0, len(path)
    while i < n:
        c = path[i]
        if c == 0x25 and i + 2 < n and path[i + 1] in _HEX and path[i + 2] in _HEX:
            value = int(path[i + 1:i + 3], 16)
            if value == 0:
                raise InvalidPath("escaped NUL (%00) in path")
            if value in _UNRESERVED or (decode_slashes and value in _SLASHES):
                out.append(0x2F if value == 0x5C else value)
            else:
                out += path[i:i + 3].upper()
            i += 3
            continue
        out.append(0x2F if c == 0x5C else c)
        i += 1
    return bytes(out)
