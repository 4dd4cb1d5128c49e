"""The HTTP/2 field value check (codec/http2_validation.py): a value is refused exactly when it
holds NUL, CR or LF or starts or ends with a space or tab (RFC 9113 8.2.1)."""
from __future__ import annotations

import itertools
import re

import pytest

from remora.proxy.codec.http2_frames import Http2Error
from remora.proxy.codec.http2_validation import check_field

# The rule as one regex (how it used to be checked): the reference.
REFERENCE = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$")


def refused(value: bytes) -> bool:
    try:
        check_field(b"x-value", value)
    except Http2Error:
        return True
    return False


def test_every_short_value_is_judged_as_the_rule_says():
    """All values of up to four bytes over a, space, tab, NUL, CR and LF: refused iff the rule matches."""
    for length in range(5):
        for chars in itertools.product(b"a \t\x00\r\n", repeat=length):
            value = bytes(chars)
            assert refused(value) == bool(REFERENCE.search(value)), value


@pytest.mark.parametrize("value", [b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", b"a b", b""])
def test_inner_spaces_and_empty_values_pass(value):
    """Whitespace inside a value, and an empty value, are allowed."""
    assert not refused(value)
