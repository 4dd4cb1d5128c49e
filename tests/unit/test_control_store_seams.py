"""The pieces of replicas over etcd that need no etcd: store URLs, sealing, in-memory join tokens."""
from __future__ import annotations

import base64

import pytest

from remora.certs import JoinTokenStore, TokenRejected
from remora.certs.sealing import SealError, SealingKey
from remora.xds.etcd_client import parse_store_url, prefix_end


def test_store_urls_name_every_member_and_a_prefix():
    """etcd://a:1,b:2/team -> both endpoints and the /team/ prefix; the default prefix is /remora/."""
    assert parse_store_url("etcd://a:2379,10.0.0.2:2379/team") == (["http://a:2379", "http://10.0.0.2:2379"],
                                                                   "/team/")
    assert parse_store_url("etcd://127.0.0.1:2379") == (["http://127.0.0.1:2379"], "/remora/")
    assert parse_store_url("etcds://h:2379")[0] == ["https://h:2379"]


@pytest.mark.parametrize("url", ["http://a:2379", "etcd://a", "etcd://:2379", "etcd://a:2379,"])
def test_bad_store_urls_are_refused_by_name(url):
    """A URL that is not etcd://HOST:PORT[,...] is refused, naming --store."""
    with pytest.raises(ValueError, match="--store"):
        parse_store_url(url)


def test_the_prefix_range_covers_exactly_the_prefix():
    """The range end of /remora/ is /remora0 (the next key after every /remora/... key)."""
    assert base64.b64decode(prefix_end("/remora/")) == b"/remora0"


def test_sealed_values_open_only_with_the_same_key_and_name():
    """A sealed value opens with the same key file under the same name; another key or name fails closed."""
    key = SealingKey(b"k" * 32)
    sealed = key.seal(b"-----BEGIN PRIVATE KEY-----", "/remora/ca/root")
    assert b"PRIVATE" not in sealed
    assert SealingKey(b"k" * 32).open(sealed, "/remora/ca/root") == b"-----BEGIN PRIVATE KEY-----"
    with pytest.raises(SealError, match="does not open"):
        SealingKey(b"x" * 32).open(sealed, "/remora/ca/root")
    with pytest.raises(SealError, match="does not open"):
        key.open(sealed, "/remora/admin-token")
    with pytest.raises(SealError, match="not a sealed value"):
        key.open(b"plain", "/remora/admin-token")


def test_short_or_missing_key_files_are_refused(tmp_path):
    """A key file under 32 bytes, or one that cannot be read, is a clear error naming the flag."""
    short = tmp_path / "key"
    short.write_text("abc\n")
    with pytest.raises(SealError, match="at least 32"):
        SealingKey.from_file(short)
    with pytest.raises(SealError, match="--store-key-file"):
        SealingKey.from_file(tmp_path / "missing")


def test_in_memory_join_tokens_round_trip_through_their_serialized_form():
    """Tokens made in a store without a file survive serialized() -> in_memory(), revocation included."""
    store = JoinTokenStore.in_memory(None)
    token = store.create("default", "reviews", 3600)
    other = JoinTokenStore.in_memory(store.serialized())
    assert other.verify(token).service_account == "reviews"
    other.revoke(token)
    with pytest.raises(TokenRejected, match="revoked"):
        JoinTokenStore.in_memory(other.serialized()).verify(token)


def test_another_replicas_change_decodes_only_the_values_that_changed():
    """The applied set a watch event brings keeps the document objects of unchanged keys (so the
    store's SpecCache skips them) and decodes a changed key anew."""
    from remora.xds.etcd_client import Event
    from remora.xds.replicas import EtcdState, _applied_value
    from remora.xds.store import AppliedResource
    state = EtcdState(client=None, prefix="/remora/", key=None, lease_ttl=30, log=lambda line: None)

    def put(ref: str, name: str, revision: int) -> Event:
        item = AppliedResource({"kind": "VirtualService", "metadata": {"name": name}}, "api", 1.0, None)
        return Event("PUT", f"/remora/applied/{ref}", _applied_value(item), revision)
    seen = []
    state._apply_events([put("VirtualService/default/a", "a", 2), put("VirtualService/default/b", "b", 3)],
                        seen.append, lambda *_: None)
    state._apply_events([put("VirtualService/default/b", "b2", 4)], seen.append, lambda *_: None)
    first, second = seen
    assert second["VirtualService/default/a"].document is first["VirtualService/default/a"].document
    assert second["VirtualService/default/b"].document["metadata"]["name"] == "b2"
