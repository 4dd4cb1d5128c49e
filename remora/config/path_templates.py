"""AuthorizationPolicy path templates (`paths` / `notPaths`): `{*}` and `{**}`, as Istio has them.

Rules (Istio: pkg/config/security CheckValidPathTemplate; pilot turns the template into
Envoy's uri_template matcher, envoy.extensions.path.match.uri_template.v3):
- `{*}` matches exactly one path segment: one or more RFC 3986 pchar, no `/`.
- `{**}` matches zero or more characters that may include `/` (any number of segments);
  no `{*}` or `{**}` may follow it (it is the last operator; literals may follow).
- Each operator is a whole segment (`/a/{*}/b`, never `/a{*}`), every other segment of a
  template is a literal of pchar (so a template never mixes with the `*` prefix/suffix forms).
Written once here, for the loader's check and the inbound matcher (proxy/security/authz.py).
"""
from __future__ import annotations

import re

MATCH_ONE = "{*}"
MATCH_ANY = "{**}"
_PCHAR = "A-Za-z0-9\\-._~%!$&'()+,;:@="
_LITERAL = re.compile(f"[{_PCHAR}]+")
_ONE_SEGMENT = f"[{_PCHAR}]+"
_ANY_SEGMENTS = f"[{_PCHAR}/]*"


def is_template(path: str) -> bool:
    """Whether a `paths` value is a template rather than exact / prefix / suffix."""
    return "{" in path or "}" in path


def template_problem(path: str) -> str | None:
    """Why `path` is not a valid template (Istio's wording), or None."""
    seen_any = False
    for segment in path.strip("/").split("/"):
        if segment in (MATCH_ONE, MATCH_ANY):
            if seen_any:
                return f"invalid path template {path!r}: {{**}} must be the last operator"
            seen_any = segment == MATCH_ANY
            continue
        if "{" in segment or "}" in segment:
            return (f"invalid path template {path!r}: '{{' or '}}' beyond a supported operator "
                    "(an operator is a whole segment: {*} or {**})")
        if segment and not _LITERAL.fullmatch(segment):
            return f"invalid path template {path!r}: segment {segment!r} is not a valid path literal"
    return None


def template_regex(path: str) -> re.Pattern[str]:
    """The compiled matcher of a valid template (fullmatch it against the path, query cut off)."""
    parts = re.split(r"(\{\*\*\}|\{\*\})", path)
    pattern = "".join(_ANY_SEGMENTS if part == MATCH_ANY else _ONE_SEGMENT if part == MATCH_ONE
                      else re.escape(part) for part in parts)
    return re.compile(pattern)
