"""Registry: one live stream per node id, grace period, and the resources a registration implies."""
from __future__ import annotations

import pytest

from remora.wire.protocol import Node
from remora.xds.registry import DuplicateNode, InvalidNode, Registry, check_node, entry_name


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def node(node_id: str = "reviews-v1.default~h~1", **fields) -> Node:
    defaults = {"service": "reviews", "inbound": "127.0.0.1:15006", "app_port": 9080, "labels": {"version": "v1"}}
    return Node(id=node_id, **{**defaults, **fields})


def test_second_live_stream_with_same_id_is_refused():
    """A node id with a live stream cannot connect again until that stream ends."""
    registry = Registry(10.0)
    registry.connect(node())
    with pytest.raises(DuplicateNode, match="already has a live stream"):
        registry.connect(node())
    registry.disconnect(node().id)
    registry.connect(node())


def test_grace_period_removes_only_after_it_ran_out_and_reconnect_cancels():
    """Disconnected nodes go after the grace period; a reconnect in time keeps them."""
    clock = Clock()
    registry = Registry(10.0, clock)
    registry.connect(node("a"))
    registry.connect(node("b"))
    registry.disconnect("a")
    registry.disconnect("b")
    clock.now += 5
    registry.connect(node("b"))
    assert registry.expire() == []
    clock.now += 5
    assert registry.expire() == ["a"]
    assert list(registry.nodes) == ["b"]


def test_registration_becomes_workload_entry_and_synthesized_service_entry():
    """Without a ServiceEntry for the service, one like a Kubernetes Service is synthesized."""
    registry = Registry(10.0)
    registry.connect(node(service_account="bookinfo-reviews"))
    (we, we_source), (se, se_source) = registry.documents([])
    assert we["metadata"] == {"name": entry_name("reviews-v1.default~h~1"), "namespace": "default"}
    assert we["spec"] == {"address": "127.0.0.1", "ports": {"http": 15006},
                          "labels": {"version": "v1", "app": "reviews"}, "serviceAccount": "bookinfo-reviews"}
    assert we_source == "registry (sidecar reviews-v1.default~h~1)"
    assert se["metadata"]["name"] == "auto-reviews" and se_source == "registry"
    assert se["spec"]["ports"] == [{"number": 9080, "name": "http", "protocol": "HTTP"}]
    assert se["spec"]["workloadSelector"] == {"labels": {"app": "reviews"}}


def test_sidecars_with_a_certificate_are_labelled_for_auto_mtls():
    """A node with a certificate source gets security.istio.io/tlsMode=istio and its account; others no label."""
    registry = Registry(10.0)
    registry.connect(node("a", service_account="web", mtls=True))
    registry.connect(node("b"))
    entries = {doc["metadata"]["name"]: doc["spec"] for doc, _ in registry.documents([])
               if doc["kind"] == "WorkloadEntry"}
    assert entries[entry_name("a")]["labels"]["security.istio.io/tlsMode"] == "istio"
    assert entries[entry_name("a")]["serviceAccount"] == "web"
    assert "security.istio.io/tlsMode" not in entries[entry_name("b")]["labels"]


def test_user_service_entry_port_names_key_the_workload_ports_and_no_synthesis():
    """With the user's ServiceEntry for the service, its port names map to the inbound port."""
    user_se = {"kind": "ServiceEntry", "metadata": {"name": "reviews"},
               "spec": {"hosts": ["reviews.default.svc.cluster.local"],
                        "ports": [{"number": 9080, "name": "http-web"}, {"number": 9443, "name": "grpc"}]}}
    registry = Registry(10.0)
    registry.connect(node())
    [(we, _)] = registry.documents([(user_se, "se.yaml")])
    assert we["spec"]["ports"] == {"http-web": 15006, "grpc": 15006}


def test_nodes_without_service_or_inbound_register_no_endpoint():
    """A sidecar that serves nothing (no service or no inbound listener) adds no resources."""
    registry = Registry(10.0)
    registry.connect(node("a", service=None))
    registry.connect(node("b", inbound=None))
    assert registry.documents([]) == []


def test_entry_names_are_valid_and_distinct():
    """Node ids become lowercase resource names; ids that needed changes get a hash to stay distinct."""
    assert entry_name("reviews-1") == "auto-reviews-1"
    a, b = entry_name("Reviews~1"), entry_name("reviews~1")
    assert a != b and a.startswith("auto-reviews-1-") and all(c.isalnum() or c in "-." for c in a)


@pytest.mark.parametrize("fields, message", [
    ({"id": " "}, "node.id"),
    ({"namespace": "Bad_NS"}, "node.namespace"),
    ({"inbound": "nohost"}, "node.inbound: expected host:port"),
    ({"admin": "127.0.0.1:99999"}, "node.admin"),
    ({"app_port": 0}, "node.app_port"),
    ({"service": "a..b"}, "node.service"),
    ({"service": "s" * 250}, "node.service"),
])
def test_invalid_nodes_are_named_by_field(fields, message):
    """check_node names the field of a Hello that cannot be registered."""
    with pytest.raises(InvalidNode, match=message):
        check_node(Node(**{"id": "x", **fields}))


def test_restart_restores_registrations_as_disconnected_within_a_fresh_grace_period(tmp_path):
    """A restarted control server keeps the saved sidecars' endpoints until they reconnect or the grace ends."""
    state = tmp_path / "state" / "registry.json"
    before = Registry(10.0, Clock(), state_path=state)
    before.connect(node("a"))
    before.connect(node("b", inbound="127.0.0.1:15007", labels={"version": "v2"}))
    assert oct(state.stat().st_mode & 0o777) == "0o600"

    clock = Clock()
    after = Registry(10.0, clock, state_path=state)
    assert after.restore() == 2
    assert not any(r.live for r in after.nodes.values())
    assert len([d for d, _ in after.documents([]) if d["kind"] == "WorkloadEntry"]) == 2
    after.connect(node("a"))            # came back in time
    clock.now += 10.0
    assert after.expire() == ["b"]
    assert list(after.nodes) == ["a"]
    assert Registry(10.0, Clock(), state_path=state).restore() == 1   # the removal was saved too


def test_unreadable_registry_state_is_ignored(tmp_path):
    """A corrupt state file means an empty registry (sidecars re-register), not a crash."""
    state = tmp_path / "registry.json"
    state.write_text("{not json")
    assert Registry(10.0, Clock(), state_path=state).restore() == 0


@pytest.mark.parametrize("node_id", ["a..b", "a.-b", "x~.~y", "." * 5, "a" * 199 + ".b" * 20])
def test_entry_names_are_dns_subdomains(node_id):
    """Any node id becomes a WorkloadEntry name the loader accepts (a DNS-1123 subdomain)."""
    from remora.config.object_names import subdomain_problem
    assert subdomain_problem(entry_name(node_id)) is None, entry_name(node_id)


class Heard:
    """A RegistryListener that records what this replica told the shared store."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def registered(self, node: Node) -> None:
        self.events.append(("registered", node.id))

    def removed(self, node_id: str) -> None:
        self.events.append(("removed", node_id))


def test_other_replicas_sidecars_are_endpoints_and_own_ones_are_published():
    """Sidecars held by other replicas give WorkloadEntries here; this replica's connects and
    expiries reach its listener; a node that moved away is no longer held here."""
    clock = Clock()
    registry = Registry(10.0, clock)
    registry.listener = heard = Heard()
    assert registry.remote_changed("r1", node("r1", inbound="10.0.0.9:15006"))
    assert [doc["spec"]["address"] for doc, _ in registry.documents([]) if doc["kind"] == "WorkloadEntry"] \
        == ["10.0.0.9"]
    registry.connect(node("a"))
    registry.disconnect("a")
    assert registry.remote_changed("a", node("a", inbound="10.0.0.7:15006"))   # reconnected elsewhere
    assert "a" not in registry.nodes and registry.expire() == []
    registry.connect(node("b"))
    registry.disconnect("b")
    clock.now += 11
    assert registry.expire() == ["b"]
    assert heard.events == [("registered", "a"), ("registered", "b"), ("removed", "b")]
    assert registry.remote_changed("r1", None)
    assert not registry.remote_changed("r1", None)


def test_a_sidecars_locality_is_its_workload_entrys():
    """`--locality` travels in the Hello: the registered WorkloadEntry carries it, so other
    sidecars' locality failover sees where the endpoint runs; a malformed one is refused."""
    registry = Registry(10.0)
    registry.connect(node("a", locality="us-east1/us-east1-b"))
    registry.connect(node("b"))
    entries = {doc["metadata"]["name"]: doc["spec"] for doc, _ in registry.documents([])
               if doc["kind"] == "WorkloadEntry"}
    assert entries[entry_name("a")]["locality"] == "us-east1/us-east1-b"
    assert "locality" not in entries[entry_name("b")]
    with pytest.raises(InvalidNode, match="node.locality"):
        check_node(node("c", locality="us-east1/a/b/c"))
