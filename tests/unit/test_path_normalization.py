"""Path normalization levels, checked against Istio's own conformance table.

The expectations mirror istio/istio tests/integration/security/normalization_test.go
(TestNormalization), which pins what Envoy forwards at each meshConfig.pathNormalization
level; the fragment cases of that table are left out because Remora refuses fragments
(400) instead of stripping them. Remora upper-cases the escapes it keeps, so the table's
lower-case `%2f` / `%5c` are compared case-insensitively where they survive.
"""
import pytest

from remora.proxy.codec.paths import InvalidPath, PathNormalizer, escaped_slash_variant

ISTIO_TABLE = {
    "NONE": [
        ("/", "/"), ("/app/", "/app/"), ("/app/../admin", "/app/../admin"), ("/app", "/app"),
        ("/app//", "/app//"), ("/app/%2f", "/app/%2f"), ("/app%2f/", "/app%2f/"),
        ("/xyz%30..//abc", "/xyz%30..//abc"), ("/app/%2E./admin", "/app/%2E./admin"),
        ("/app\\admin", "/app\\admin"), ("/app/\\/\\/\\admin", "/app/\\/\\/\\admin"),
        ("/%2Fapp%5cadmin%5Cabc", "/%2Fapp%5cadmin%5Cabc"),
        ("/app//../admin", "/app//../admin"), ("/app//../../admin", "/app//../../admin"),
    ],
    "BASE": [
        ("/", "/"), ("/app/", "/app/"), ("/app/../admin", "/admin"), ("/app", "/app"),
        ("/app//", "/app//"), ("/app/%2f", "/app/%2F"), ("/app%2f/", "/app%2F/"),
        ("/xyz%30..//abc", "/xyz0..//abc"), ("/app/%2E./admin", "/admin"),
        ("/app\\admin", "/app/admin"), ("/app/\\/\\/\\admin", "/app//////admin"),
        ("/%2Fapp%5cadmin%5Cabc", "/%2Fapp%5Cadmin%5Cabc"),
        ("/%5Capp%2f%5c%2F%2e%2e%2fadmin%5c\\abc", "/%5Capp%2F%5C%2F..%2Fadmin%5C/abc"),
        ("/app//../admin", "/app/admin"), ("/app//../../admin", "/admin"),
    ],
    "MERGE_SLASHES": [
        ("/", "/"), ("/app/", "/app/"), ("/app/../admin", "/admin"), ("/app", "/app"),
        ("/app//", "/app/"), ("/app/%2f", "/app/%2F"), ("/app%2f/", "/app%2F/"),
        ("/xyz%30..//abc", "/xyz0../abc"), ("/app/%2E./admin", "/admin"),
        ("/app\\admin", "/app/admin"), ("/app/\\/\\/\\admin", "/app/admin"),
        ("/%2Fapp%5cadmin%5Cabc", "/%2Fapp%5Cadmin%5Cabc"),
        ("/app//../admin", "/app/admin"), ("/app//../../admin", "/admin"),
    ],
    "DECODE_AND_MERGE_SLASHES": [
        ("/", "/"), ("/app/", "/app/"), ("/app/../admin", "/admin"), ("/app", "/app"),
        ("/app//", "/app/"), ("/app/%2f", "/app/"), ("/app%2f/", "/app/"),
        ("/xyz%30..//abc", "/xyz0../abc"), ("/app/%2E./admin", "/admin"),
        ("/app\\admin", "/app/admin"), ("/app/\\/\\/\\admin", "/app/admin"),
        ("/%2Fapp%5cadmin%5Cabc", "/app/admin/abc"),
        ("/%5Capp%2f%5c%2F%2e%2e%2fadmin%5c\\abc", "/app/admin/abc"),
        ("/app//../admin", "/app/admin"), ("/app//../../admin", "/admin"),
        ("/%c0%2e%c0%2e/admin", "/%C0.%C0./admin"), ("/%c0%2fadmin", "/%C0/admin"),
        # Istio's "NotNormalized" group: look-alikes that must stay as they are.
        ("/0x2e0x2e/admin", "/0x2e0x2e/admin"), ("/%252e%252e/admin", "/%252e%252e/admin"),
        ("/.../admin", "/.../admin"), ("/..;/admin", "/..;/admin"), ("/admin;a=b", "/admin;a=b"),
        ("/Admin", "/Admin"),
    ],
}


@pytest.mark.parametrize("level,raw,expected",
                         [(level, raw, out) for level, rows in ISTIO_TABLE.items() for raw, out in rows])
def test_istio_normalization_table(level, raw, expected):
    """Each level turns Istio's conformance inputs into the path Envoy would forward."""
    assert PathNormalizer(level).target(raw.encode()) == expected.encode()


@pytest.mark.parametrize("byte", range(1, 256))
def test_percent_encoded_bytes_decode_only_unreserved(byte):
    """%01..%FF: unreserved characters are decoded, slashes follow the level, the rest stay escaped."""
    raw = b"/admin%%%02x" % byte
    got = PathNormalizer("DECODE_AND_MERGE_SLASHES").target(raw)
    char = bytes([byte])
    if char.isalnum() and byte < 0x80 or char in b"-._~":
        assert got == b"/admin" + char
    elif char in b"/\\":
        assert got == b"/admin/"
    else:
        assert got == b"/admin%%%02X" % byte


def test_escaped_nul_is_invalid_at_every_normalizing_level():
    """%00 in a path is refused (Istio's table: 400), except at NONE where nothing is read."""
    for level in ("BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"):
        with pytest.raises(InvalidPath):
            PathNormalizer(level).target(b"/admin%00")
    assert PathNormalizer("NONE").target(b"/admin%00") == b"/admin%00"


def test_query_is_never_touched():
    """Only the path is normalized; `..`, escapes and slashes in the query go through as sent."""
    n = PathNormalizer("DECODE_AND_MERGE_SLASHES")
    assert n.target(b"/a/../b?x=/../%2f%61&y=//") == b"/b?x=/../%2f%61&y=//"
    assert n.target(b"/plain?x=%2e%2e") == b"/plain?x=%2e%2e"


def test_attack_vectors_reach_the_policy_as_admin():
    """The bypass vectors of issue 13 normalize to /admin at BASE (or via the decoded-slash reading)."""
    base = PathNormalizer("BASE")
    for raw in (b"/%61dmin", b"/./admin", b"/foo/../admin", b"/%2e/admin", b"/%2E%2E/admin",
                b"/foo/%2e%2e/admin", b"/foo\\..\\admin"):
        assert base.target(raw) == b"/admin", raw
    assert base.target(b"/foo/..%2Fadmin") == b"/foo/..%2Fadmin"      # KEEP_UNCHANGED, as Envoy
    assert escaped_slash_variant(b"/foo/..%2Fadmin") == b"/admin"
    assert escaped_slash_variant(b"/foo/..%5cadmin?x=1") == b"/admin?x=1"
    assert escaped_slash_variant(b"/admin/x") is None


def test_unchanged_targets_are_returned_as_is():
    """A path with nothing to normalize is the same object (no copy on the hot path)."""
    n = PathNormalizer("BASE")
    target = b"/productpage?u=normal"
    assert n.target(target) is target
    assert n.target(b"*") == b"*"


def test_unknown_level_is_refused():
    """A level Istio does not define is an error naming the valid ones."""
    with pytest.raises(ValueError, match="DECODE_AND_MERGE_SLASHES"):
        PathNormalizer("DECODE")
