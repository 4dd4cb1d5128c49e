"""Istio/protobuf duration strings ("1.5s", "100ms", "1m", "1h2m") to seconds."""
from __future__ import annotations

import re
from decimal import Decimal

_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Return seconds for a duration string; raise ValueError naming the bad text."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"invalid duration {text!r}: expected a string like '1.5s' or '100ms'")
    pos = 0
    total = 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f"invalid duration {text!r}: expected a string like '1.5s' or '100ms'")
    return total


_UNIT_NANOS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def duration_nanos(text: str) -> Decimal:
    """The exact length of a valid duration string in nanoseconds (Decimal: no float rounding,
    so "3.000000042s" is not mistaken for whole milliseconds)."""
    parse_duration(text)   # raises ValueError for a bad string
    return sum((Decimal(m.group(1)) * _UNIT_NANOS[m.group(2)] for m in _PART.finditer(text)), Decimal(0))
