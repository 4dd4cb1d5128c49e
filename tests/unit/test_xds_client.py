"""The sidecar's xDS pieces without sockets: assembling config per type, ACK/NACK, snapshot file, backoff."""
from __future__ import annotations

import json
import os
import random

import pytest

from remora.config.loader import ConfigError
from remora.proxy.control import xds_client
from remora.proxy.security.identity import WorkloadIdentity
from remora.proxy.control.snapshot_store import SnapshotStore, default_state_dir
from remora.proxy.process.worker import ProxyOptions
from remora.proxy.control.xds_client import Backoff, ControlBoot, XdsClient, build_node, stream_url
from remora.proxy.control.xds_state import FROM_CONTROL, FROM_DISK, PushRejected, XdsState
from remora.wire import protocol


def service_entry(name: str = "reviews", port: int = 9080) -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"hosts": [name], "ports": [{"number": port, "name": "http", "protocol": "HTTP"}],
                     "resolution": "STATIC", "endpoints": [{"address": "10.0.0.1"}]}}


def virtual_service(host: str = "reviews", weight: int = 100, to: str | None = None) -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": host, "namespace": "default"},
            "spec": {"hosts": [host], "http": [{"route": [{"destination": {"host": to or host},
                                                            "weight": weight}]}]}}


def push(type_url: str, version: str, resources: list[dict], nonce: str = "n1") -> protocol.DiscoveryResponse:
    return protocol.DiscoveryResponse(type_url=type_url, version_info=version, nonce=nonce, resources=resources)


def held_state() -> XdsState:
    """Clusters v1 (reviews) and routes v1 (to reviews) accepted; endpoints and policies v1 empty."""
    state = XdsState()
    for type_url, resources in ((protocol.CLUSTERS, [service_entry()]), (protocol.ENDPOINTS, []),
                                (protocol.ROUTES, [virtual_service()]), (protocol.POLICIES, [])):
        state.accept(state.candidate(push(type_url, "v1", resources)))
    return state


# -- assembling a config from per-type documents -----------------------------------------------

def test_a_push_is_built_with_the_other_types_held():
    """A routes push is validated together with the clusters held, and sources name type and version."""
    state = held_state()
    candidate = state.candidate(push(protocol.ROUTES, "v2", [virtual_service("ratings", to="details")]))
    assert [r.name for r in candidate.config.service_entries] == ["reviews"]
    assert [(r.name, r.source) for r in candidate.config.virtual_services] == [("ratings", "xds:routes@v2")]
    assert candidate.config.service_entries[0].source == "xds:clusters@v1"
    # details has no cluster yet: a warning, not an error (it may come in the next push)
    assert any("details" in w for w in candidate.config.warnings)


def test_building_a_candidate_does_not_change_what_is_held():
    """Until accepted, a push leaves the held resources and versions alone."""
    state = held_state()
    state.candidate(push(protocol.ROUTES, "v2", [virtual_service("ratings")]))
    assert state.types[protocol.ROUTES].version == "v1"
    assert state.types[protocol.ROUTES].resources == [virtual_service()]


def test_a_kind_outside_its_type_is_rejected():
    """A VirtualService pushed as a cluster is refused, naming the index, the kind and the type."""
    with pytest.raises(PushRejected, match=r"clusters resource 0: 'VirtualService' does not belong to clusters"):
        XdsState().candidate(push(protocol.CLUSTERS, "v1", [virtual_service()]))


def test_an_unknown_type_is_rejected():
    """A push of a type the sidecar never subscribed to is refused by name."""
    with pytest.raises(PushRejected, match="unknown resource type 'secrets'"):
        XdsState().candidate(push("secrets", "v1", []))


def test_an_invalid_resource_raises_the_loader_error_with_its_path():
    """Validation is the YAML loader's: the error names the xds source, the resource and the field."""
    with pytest.raises(ConfigError) as info:
        held_state().candidate(push(protocol.ROUTES, "v2", [virtual_service(weight=-5)]))
    text = str(info.value)
    assert "xds:routes@v2" in text and "VirtualService/default/reviews" in text
    assert "spec.http[0].route[0].weight" in text


# -- ACK / NACK ---------------------------------------------------------------------------------

def test_accept_holds_the_push_and_acks_its_version_and_nonce():
    """ACK: version_info = the pushed version, response_nonce = its nonce, no error."""
    state = XdsState()
    ack = state.accept(state.candidate(push(protocol.CLUSTERS, "c7", [service_entry()], "abc")), now=100.0)
    assert (ack.type_url, ack.version_info, ack.response_nonce, ack.is_nack) == (protocol.CLUSTERS, "c7", "abc", False)
    held = state.types[protocol.CLUSTERS]
    assert (held.version, held.origin, held.last_nonce, held.last_ack_at) == ("c7", FROM_CONTROL, "abc", 100.0)


def test_reject_keeps_the_previous_version_and_says_why():
    """NACK: version_info = the version still held, the push's nonce, error_detail = the error."""
    state = held_state()
    nack = state.reject(push(protocol.ROUTES, "v2", [], "n9"), "bad weight", now=5.0)
    assert (nack.version_info, nack.response_nonce, nack.error_detail) == ("v1", "n9", "bad weight")
    held = state.types[protocol.ROUTES]
    assert (held.version, held.last_error, held.last_nack_at) == ("v1", "bad weight", 5.0)
    assert held.resources == [virtual_service()]


def test_subscriptions_carry_the_versions_held_in_type_order():
    """On (re)connect the sidecar asks for every type with the version it holds ('' if none)."""
    state = XdsState()
    state.accept(state.candidate(push(protocol.ENDPOINTS, "e3", [])))
    assert [(r.type_url, r.version_info, r.response_nonce) for r in state.subscriptions()] == \
        [(protocol.CLUSTERS, "", ""), (protocol.ENDPOINTS, "e3", ""), (protocol.ROUTES, "", ""),
         (protocol.POLICIES, "", "")]


def test_state_is_complete_only_when_every_type_was_accepted():
    """The sidecar counts as configured once every type (clusters, endpoints, routes, policies) was accepted."""
    state = XdsState()
    for type_url in protocol.TYPE_ORDER:
        assert not state.complete
        state.accept(state.candidate(push(type_url, "v1", [])))
    assert state.complete


def make_client(tmp_path, apply) -> XdsClient:
    start = ControlBoot(held_state(), SnapshotStore(str(tmp_path)), None, False)
    node = protocol.Node(id="test-node")
    return XdsClient("http://127.0.0.1:15010", node, start, apply)


async def test_client_acks_an_applied_push_and_writes_the_snapshot(tmp_path):
    """A push that builds and applies is ACKed, and the snapshot file then holds it."""
    applied = []

    async def apply(candidate):
        applied.append(candidate.config)

    client = make_client(tmp_path, apply)
    answer = await client.handle(push(protocol.ROUTES, "v2", [virtual_service("reviews")], "n5"))
    assert (answer.version_info, answer.response_nonce, answer.error_detail) == ("v2", "n5", None)
    assert len(applied) == 1
    saved = SnapshotStore(str(tmp_path)).load()
    assert saved[protocol.ROUTES]["version"] == "v2"
    assert (client.pushes_received, client.rejected) == (1, 0)


async def test_client_nacks_when_apply_fails_and_never_raises(tmp_path):
    """Any failure while applying (not only validation) is a NACK with the previous version; nothing held changes."""
    async def apply(candidate):
        raise RuntimeError("worker 1: out of file descriptors")

    client = make_client(tmp_path, apply)
    answer = await client.handle(push(protocol.ROUTES, "v2", [virtual_service()], "n5"))
    assert (answer.version_info, answer.error_detail) == ("v1", "worker 1: out of file descriptors")
    assert client.state.types[protocol.ROUTES].version == "v1"
    assert (client.pushes_received, client.rejected) == (1, 1)
    assert client.stats()["control_plane.rejected"] == 1
    assert not os.path.exists(os.path.join(tmp_path, "snapshot.json"))


async def test_client_nacks_an_invalid_push_without_calling_apply(tmp_path):
    """An invalid push never reaches the workers."""
    calls = []

    async def apply(candidate):
        calls.append(candidate)

    answer = await make_client(tmp_path, apply).handle(push(protocol.ROUTES, "v2", [virtual_service(weight=-1)]))
    assert answer.is_nack and "weight" in answer.error_detail
    assert calls == []


# -- snapshot file ----------------------------------------------------------------------------------

def test_snapshot_round_trip_restores_versions_and_builds(tmp_path):
    """What is saved after an accepted push loads back as the same versions, from disk, and builds."""
    store = SnapshotStore(str(tmp_path / "state"))
    store.save(held_state().to_snapshot(), "node-1")
    restored = XdsState()
    restored.restore(store.load(), store.path)
    assert {t: h.version for t, h in restored.types.items()} == {t: "v1" for t in protocol.TYPE_ORDER}
    assert {h.origin for h in restored.types.values()} == {FROM_DISK}
    assert [r.name for r in restored.build().virtual_services] == ["reviews"]
    assert json.loads(open(store.path).read())["node"] == "node-1"


def test_snapshot_save_replaces_atomically_and_leaves_no_temp_files(tmp_path):
    """Saving twice leaves exactly one file, holding the second version."""
    store = SnapshotStore(str(tmp_path))
    state = held_state()
    store.save(state.to_snapshot(), "n")
    state.accept(state.candidate(push(protocol.ROUTES, "v2", [virtual_service()])))
    store.save(state.to_snapshot(), "n")
    assert os.listdir(tmp_path) == ["snapshot.json"]
    assert store.load()[protocol.ROUTES]["version"] == "v2"


def test_a_missing_snapshot_is_none_and_a_malformed_one_names_the_file(tmp_path):
    """No file: None. Not JSON, or not a snapshot: ValueError naming the path."""
    store = SnapshotStore(str(tmp_path))
    assert store.load() is None
    with open(store.path, "w") as f:
        f.write("{half")
    with pytest.raises(ValueError, match=f"{store.path}: not JSON"):
        store.load()
    with open(store.path, "w") as f:
        json.dump({"format": 99}, f)
    with pytest.raises(ValueError, match="not a Remora snapshot"):
        store.load()


def test_restore_rejects_a_malformed_type_entry():
    """A snapshot entry without version/resources is refused with the type named."""
    with pytest.raises(ValueError, match=r"snap.json: routes: expected \{version: str, resources: list\}"):
        XdsState().restore({"routes": {"version": 3}}, "snap.json")


def test_boot_uses_a_good_snapshot_and_ignores_a_bad_one(tmp_path, capsys):
    """boot(): a valid snapshot is served from disk; a corrupt one is logged and the proxy starts empty."""
    options = ProxyOptions(control="http://127.0.0.1:1", state_dir=str(tmp_path))
    SnapshotStore(str(tmp_path)).save(held_state().to_snapshot(), "n")
    start = xds_client.boot(options)
    assert start.from_disk and [r.name for r in start.config.service_entries] == ["reviews"]
    with open(os.path.join(tmp_path, "snapshot.json"), "w") as f:
        f.write("garbage")
    start = xds_client.boot(options)
    assert not start.from_disk and start.config.service_entries == ()
    assert "ignoring disk snapshot" in capsys.readouterr().err


def test_default_state_dir_is_per_sidecar():
    """Without --state-dir each sidecar (namespace, workload, admin port) gets its own directory."""
    a = default_state_dir("shop", "reviews-v2", 15000)
    assert a.endswith("remora-proxy-shop-reviews-v2-15000")
    assert a != default_state_dir("shop", "reviews-v2", 15100)
    assert "/" not in os.path.basename(default_state_dir("a/b", "c", 1))


# -- backoff, URL, node ------------------------------------------------------------------------------

def test_backoff_is_full_jitter_doubling_to_a_cap():
    """The n-th delay lies in [0, min(5 s, 0.1 s * 2**n)]; reset starts over."""
    backoff = Backoff(rng=random.Random(7))
    for n in range(40):
        delay = backoff.next_delay()
        assert 0.0 <= delay <= min(5.0, 0.1 * 2 ** n)
    late = [backoff.next_delay() for _ in range(200)]
    assert max(late) <= 5.0 and max(late) > 2.5      # capped, and jitter spans the range
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def test_stream_url_adds_the_stream_path_and_refuses_what_it_cannot_use():
    """http -> ws, https -> wss, path added; other schemes, paths or missing hosts are named errors."""
    assert stream_url("http://127.0.0.1:15010") == "ws://127.0.0.1:15010/v1/xds"
    assert stream_url("https://cp.example:443/") == "wss://cp.example:443/v1/xds"
    assert stream_url("ws://[::1]:15010/v1/xds") == "ws://[::1]:15010/v1/xds"
    for bad, why in (("ftp://h:1", "expected http"), ("http://:15010", "no host"),
                     ("http://h:port", "invalid port"), ("http://h:1/other", "only scheme, host and port"),
                     ("127.0.0.1:15010", "expected http")):
        with pytest.raises(ValueError, match=why):
            stream_url(bad)


def test_node_carries_identity_and_addresses():
    """The Hello's Node: identity from the flags, inbound only with an inbound listener, admin as bound."""
    identity = WorkloadIdentity(service="reviews", namespace="shop", service_account="sa",
                                labels={"app": "reviews", "version": "v2"}, node_id="n1")
    options = ProxyOptions(identity=identity, inbound_port=15006, app_port=9080, inbound_bind="0.0.0.0")
    node = build_node(options, 15123)
    assert (node.id, node.namespace, node.service, node.service_account) == ("n1", "shop", "reviews", "sa")
    assert (node.workload, node.labels) == ("reviews-v2", {"app": "reviews", "version": "v2"})
    assert (node.inbound, node.app_port, node.admin) == ("0.0.0.0:15006", 9080, "127.0.0.1:15123")
    assert node.remora_version
    assert build_node(ProxyOptions(identity=identity), 15000).inbound is None


def test_errors_are_logged_on_one_line():
    """A multi-issue ConfigError becomes one log line, issues separated by '; '."""
    assert xds_client._one_line("2 configuration errors:\n  a: x\n  b: y\n") == "2 configuration errors: a: x; b: y"


async def test_a_push_older_than_the_held_store_revision_is_refused(tmp_path):
    """From a replica behind the one the config came from (lower store revision), a push is
    NACKed and nothing changes; a push at the same or a newer revision is taken."""
    applied = []

    async def apply(candidate):
        applied.append(candidate.version)

    client = make_client(tmp_path, apply)
    newer = push(protocol.ROUTES, "v2", [virtual_service("reviews")], "n5")
    newer.store_revision = 40
    assert (await client.handle(newer)).error_detail is None
    behind = push(protocol.ROUTES, "v1b", [virtual_service("reviews", weight=100)], "n6")
    behind.store_revision = 31
    answer = await client.handle(behind)
    assert answer.version_info == "v2" and "store revision 31 < 40" in answer.error_detail
    assert applied == ["v2"] and client.stats()["control_plane.pushes_older"] == 1
    caught_up = push(protocol.ROUTES, "v3", [virtual_service("reviews")], "n7")
    caught_up.store_revision = 40
    assert (await client.handle(caught_up)).error_detail is None and applied == ["v2", "v3"]
