"""Join tokens: the rules stated in remora/certs/tokens.py (hashed at rest, expiry, revocation)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat

import pytest

from remora.certs.credentials import CredentialRejected, CredentialVerifier, Identity
from remora.certs.spiffe import InvalidSpiffeId, SpiffeId
from remora.certs.tokens import JoinTokenStore, TokenRejected, TokenStoreCorrupt


class Clock:
    """A settable clock so expiry is tested without sleeping."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path, clock) -> JoinTokenStore:
    return JoinTokenStore(tmp_path / "state", clock=clock)


def rejected(store: JoinTokenStore, token: str) -> TokenRejected:
    with pytest.raises(TokenRejected) as caught:
        store.verify(token)
    return caught.value


def test_token_format_and_verify(store):
    """A token is rmt_<16 hex>.<43 url-safe chars> (32 random bytes) and verifies to its identity."""
    token = store.create("bookinfo", "reviews", ttl=3600)
    assert re.fullmatch(r"rmt_[0-9a-f]{16}\.[A-Za-z0-9_-]{43}", token)
    identity = store.verify(token)
    assert identity == Identity("bookinfo", "reviews") == ("bookinfo", "reviews")
    assert identity.spiffe_id("cluster.local") == SpiffeId("cluster.local", "bookinfo", "reviews")
    assert store.create("bookinfo", "reviews", ttl=3600) != token


def test_store_is_a_credential_verifier(store):
    """JoinTokenStore implements the CredentialVerifier seam; its rejections are CredentialRejected."""
    assert isinstance(store, CredentialVerifier)
    assert issubclass(TokenRejected, CredentialRejected)


def test_secret_is_stored_hashed_only(store, tmp_path):
    """The state file holds the secret's SHA-256, never the token or secret, and is mode 0600."""
    token = store.create("bookinfo", "reviews", ttl=3600)
    secret = token.split(".", 1)[1]
    path = tmp_path / "state" / "join-tokens.json"
    text = path.read_text()
    assert secret not in text and token not in text
    assert hashlib.sha256(secret.encode()).hexdigest() in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(text)["tokens"][0]["namespace"] == "bookinfo"


def test_expiry(store, clock):
    """A token verifies until its TTL runs out, then is rejected as expired."""
    token = store.create("default", "web", ttl=60)
    clock.now += 59.9
    assert store.verify(token) == ("default", "web")
    clock.now += 0.1
    error = rejected(store, token)
    assert error.reason == "expired" and "expired at" in str(error)


def test_revoke_by_id_or_by_token(store):
    """Revoking by bare id, rmt_ id or the whole token makes verify reject it as revoked."""
    tokens = [store.create("default", f"sa{i}", ttl=3600) for i in range(3)]
    ids = [t[4:20] for t in tokens]
    store.revoke(ids[0])
    store.revoke("rmt_" + ids[1])
    store.revoke(tokens[2])
    store.revoke(ids[0])  # revoking twice is harmless
    for token in tokens:
        error = rejected(store, token)
        assert error.reason == "revoked" and "was revoked" in str(error)


def test_revoke_unknown_or_garbage(store):
    """Revoking an id that does not exist, or something that is not an id, says so."""
    with pytest.raises(TokenRejected, match="unknown join token 0123456789abcdef"):
        store.revoke("0123456789abcdef")
    with pytest.raises(TokenRejected, match="is not a join token or token id"):
        store.revoke("hello")


def test_unknown_and_wrong_secret_are_one_rejection(store):
    """An unknown id and a known id with a wrong secret are both 'unknown' (nothing learned from an id)."""
    token = store.create("default", "web", ttl=3600)
    wrong_secret = token[:-1] + ("A" if token[-1] != "A" else "B")
    unknown_id = "rmt_" + "f" * 16 + token[20:]
    for bad in (wrong_secret, unknown_id):
        assert rejected(store, bad).reason == "unknown"


@pytest.mark.parametrize("bad", ["", "rmt_", "Bearer abc", "rmt_0123456789abcdef", "rmt_0123456789ABCDEF." + "a" * 43,
                                 "rmt_0123456789abcdef." + "a" * 42, "rmt_0123456789abcdef." + "a" * 42 + "="])
def test_malformed_tokens(store, bad):
    """Anything not shaped like a join token is rejected as malformed before any lookup."""
    error = rejected(store, bad)
    assert error.reason == "malformed" and "expected rmt_" in str(error)


def test_rejection_messages_differ(store, clock):
    """The four reasons have four distinct messages."""
    expired = store.create("default", "a", ttl=1)
    revoked = store.create("default", "b", ttl=3600)
    store.revoke(revoked)
    clock.now += 2
    errors = [rejected(store, t) for t in (expired, revoked, "rmt_" + "0" * 16 + "." + "a" * 43, "junk")]
    assert [e.reason for e in errors] == ["expired", "revoked", "unknown", "malformed"]
    assert len({str(e) for e in errors}) == 4


def test_list_shows_no_secrets(store, clock):
    """list() gives id, identity, expiry and revoked flag, oldest first, never the secret or its hash."""
    first = store.create("default", "a", ttl=100)
    clock.now += 1
    second = store.create("prod", "b", ttl=200)
    store.revoke(second)
    listed = store.list()
    assert [(t.id, t.namespace, t.service_account, t.revoked) for t in listed] == [
        (first[4:20], "default", "a", False), (second[4:20], "prod", "b", True)]
    assert listed[0].expires_at == clock.now - 1 + 100
    dumped = repr(listed)
    assert first.split(".")[1] not in dumped and "sha256" not in dumped


def test_tokens_survive_restart_and_other_processes_see_changes(tmp_path, clock):
    """A new store on the same dir (a restart, or another process) sees tokens and revocations."""
    server = JoinTokenStore(tmp_path / "state", clock=clock)
    cli = JoinTokenStore(tmp_path / "state", clock=clock)
    token = cli.create("default", "web", ttl=3600)
    assert server.verify(token) == ("default", "web")      # created elsewhere, seen here
    cli.revoke(token)
    assert rejected(server, token).reason == "revoked"    # revoked elsewhere, seen here
    other = server.create("default", "api", ttl=3600)     # server's write keeps cli's revocation
    assert rejected(JoinTokenStore(tmp_path / "state", clock=clock), token).reason == "revoked"
    assert JoinTokenStore(tmp_path / "state", clock=clock).verify(other) == ("default", "api")


def test_purge_forgets_expired_and_revoked(store, clock):
    """purge_expired drops expired and revoked tokens and keeps live ones."""
    live = store.create("default", "live", ttl=3600)
    store.create("default", "old", ttl=1)
    store.revoke(store.create("default", "gone", ttl=3600))
    clock.now += 2
    assert store.purge_expired() == 2
    assert [t.service_account for t in store.list()] == ["live"]
    assert store.verify(live) == ("default", "live")


@pytest.mark.parametrize("ns, sa, ttl, error", [
    ("Default", "web", 60, InvalidSpiffeId), ("default", "", 60, InvalidSpiffeId),
    ("default", "web", 0, ValueError), ("default", "web", float("inf"), ValueError),
])
def test_create_validates_identity_and_ttl(store, ns, sa, ttl, error):
    """Tokens are only made for valid Kubernetes names and a positive, finite TTL."""
    with pytest.raises(error):
        store.create(ns, sa, ttl)


def test_corrupt_store_file_is_named(tmp_path):
    """A token file that is not a store is reported with its path instead of being overwritten."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "join-tokens.json").write_text("{not json")
    with pytest.raises(TokenStoreCorrupt, match="join-tokens.json: not a join-token store"):
        JoinTokenStore(state)


@pytest.mark.parametrize("ttl", [365 * 24 * 3600 + 1, 1e12, True, "3600"])
def test_create_refuses_a_ttl_above_one_year_before_storing(store, ttl):
    """A TTL outside (0, 1 year] (or not a number) is a ValueError naming ttl, and nothing is written."""
    with pytest.raises(ValueError, match="^ttl: "):
        store.create("default", "web", ttl)
    assert not store.path.exists() and store.list() == []


def test_a_broken_record_is_listed_apart_never_honoured_and_kept_on_write(store, clock):
    """One unusable record (huge expiry, missing fields) does not break list(); verify refuses it; writes keep it."""
    token = store.create("default", "web", ttl=3600)
    data = json.loads(store.path.read_text())
    huge = dict(data["tokens"][0], expires_at=clock.now + 1e12)
    data["tokens"] = [huge, {"id": "fedcba9876543210"}]
    store.path.write_text(json.dumps(data))
    os.utime(store.path, ns=(1, 1))   # a new stamp even within the same clock tick
    assert store.list() == []
    assert [(b.index, b.id) for b in store.broken()] == [(0, token[4:20]), (1, "fedcba9876543210")]
    assert "expires_at" in store.broken()[0].error
    assert rejected(store, token).reason == "unknown"
    store.create("default", "api", ttl=60)
    kept = json.loads(store.path.read_text())["tokens"]
    assert huge in kept and {"id": "fedcba9876543210"} in kept and len(kept) == 3
    store.revoke("fedcba9876543210")
    assert [b.id for b in store.broken()] == [token[4:20]]
