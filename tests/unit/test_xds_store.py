"""ConfigStore: one validation of the whole set, files and the API side by side (latest write wins), persistence."""
from __future__ import annotations

import json

import pytest

from remora.config.loader import ConfigError
from remora.xds.store import APPLIED, FILE, REGISTRY, ChangeRefused, ConfigStore, StateError, identity

SE = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews]
  ports: [{number: 9080, name: http}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}]
"""


def vs(name: str, dest: str = "reviews", timeout: str = "1s") -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: [{name}]
  http: [{{timeout: {timeout}, route: [{{destination: {{host: {dest}}}}}]}}]
"""


@pytest.fixture
def store(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "se.yaml").write_text(SE)
    s = ConfigStore(tmp_path / "config", tmp_path / "state")
    s.start()
    return s


def test_identity_defaults_the_namespace_like_the_loader():
    """A document's identity is Kind/namespace/name, namespace `default` when absent; None without a name."""
    assert identity({"kind": "VirtualService", "metadata": {"name": "a"}}) == "VirtualService/default/a"
    assert identity({"kind": "VirtualService", "metadata": {"namespace": "x"}}) is None
    assert identity("text") is None


def test_apply_results_follow_what_changed(store):
    """created for a new identity, configured for a changed spec, unchanged for the same spec."""
    assert store.apply(vs("a"), "a.yaml").results == [("VirtualService/default/a", "created")]
    assert store.apply(vs("a", timeout="2s"), "a.yaml").results == [("VirtualService/default/a", "configured")]
    assert store.apply(vs("a", timeout="2s"), "a.yaml").results == [("VirtualService/default/a", "unchanged")]
    assert store.origin("VirtualService/default/a") == APPLIED
    assert store.origin("ServiceEntry/default/reviews") == FILE


def test_invalid_apply_is_rejected_whole_and_keeps_the_config(store):
    """One bad document refuses the whole apply (400) and the version does not move."""
    version = store.config.version
    with pytest.raises(ChangeRefused) as refused:
        store.apply(vs("ok") + "---\n" + vs("bad", dest="nowhere"), "two.yaml")
    assert refused.value.status == 400
    assert refused.value.errors == [
        "two.yaml: VirtualService/default/bad: spec.http[0].route[0].destination.host: unknown destination host "
        "'nowhere' (nowhere.default.svc.cluster.local): it is not a host of any ServiceEntry, VirtualService or "
        "DestinationRule in this config"]
    assert store.config.version == version and store.lookup("VirtualService/default/ok") is None
    assert store.state.last_error.source == "apply two.yaml"


def test_yaml_errors_and_empty_bodies_are_400(store):
    """Unparseable YAML and a body without documents are refused, naming the source."""
    with pytest.raises(ChangeRefused) as refused:
        store.apply("kind: [", "x.yaml")
    assert refused.value.status == 400 and refused.value.errors[0].startswith("x.yaml: document 1: invalid YAML")
    with pytest.raises(ChangeRefused, match="x.yaml: no resources"):
        store.apply("---\n", "x.yaml")


def test_apply_over_a_file_resource_overrides_it_until_deleted(store, tmp_path):
    """Applying a resource a file defines puts the applied version in force (configured, origin
    applied, over the file); deleting it brings the file's version back."""
    ref = "VirtualService/default/reviews"
    (tmp_path / "config" / "vs.yaml").write_text(vs("reviews"))
    assert store.reload_files()
    assert store.apply(vs("reviews", timeout="5s"), "canary.yaml").results == [(ref, "configured")]
    assert store.origin(ref) == APPLIED and store.overrides(ref).endswith("vs.yaml")
    assert store.lookup(ref).spec.http[0].timeout == "5s"
    assert store.reload_files()   # the file did not change: the override stays
    assert store.lookup(ref).spec.http[0].timeout == "5s"
    (action,) = store.delete(ref).results
    assert action[0] == ref and action[1].startswith("deleted (back to ") and action[1].endswith("vs.yaml)")
    assert store.origin(ref) == FILE and store.lookup(ref).spec.http[0].timeout == "1s"


def test_deleting_a_file_only_resource_is_refused(store):
    """Deleting a resource only a file defines is 409 naming the file: the file would define it again."""
    with pytest.raises(ChangeRefused) as refused:
        store.delete("ServiceEntry/default/reviews")
    assert refused.value.status == 409
    assert "se.yaml in --config-dir: remove it from the file" in refused.value.message


def test_a_later_file_edit_wins_over_an_earlier_apply(store, tmp_path):
    """Editing the resource in its file after an apply drops the override: the file's new
    version is in force and the state file forgets the override."""
    ref = "VirtualService/default/reviews"
    (tmp_path / "config" / "vs.yaml").write_text(vs("reviews"))
    store.reload_files()
    store.apply(vs("reviews", timeout="5s"), "canary.yaml")
    (tmp_path / "config" / "vs.yaml").write_text(vs("reviews", timeout="7s"))
    assert store.reload_files() is True
    assert store.origin(ref) == FILE and store.lookup(ref).spec.http[0].timeout == "7s"
    assert json.loads((tmp_path / "state" / "applied.json").read_text())["resources"] == []


def test_a_file_that_starts_defining_an_applied_resource_wins(store, tmp_path):
    """A resource applied through the API and later added to a file: the file's version is in force."""
    ref = "VirtualService/default/a"
    store.apply(vs("a"), "a.yaml")
    (tmp_path / "config" / "a.yaml").write_text(vs("a", timeout="3s"))
    assert store.reload_files() is True
    assert store.origin(ref) == FILE and store.lookup(ref).spec.http[0].timeout == "3s"


def test_file_edited_while_the_server_was_down_wins_at_start(store, tmp_path):
    """The override remembers the file version it replaced: a restart after the file changed
    serves the file; a restart with the file unchanged keeps the override."""
    ref = "VirtualService/default/reviews"
    (tmp_path / "config" / "vs.yaml").write_text(vs("reviews"))
    store.reload_files()
    store.apply(vs("reviews", timeout="5s"), "canary.yaml")
    kept = ConfigStore(tmp_path / "config", tmp_path / "state")
    kept.start()
    assert kept.origin(ref) == APPLIED and kept.lookup(ref).spec.http[0].timeout == "5s"
    (tmp_path / "config" / "vs.yaml").write_text(vs("reviews", timeout="9s"))
    restarted = ConfigStore(tmp_path / "config", tmp_path / "state")
    restarted.start()
    assert restarted.origin(ref) == FILE and restarted.lookup(ref).spec.http[0].timeout == "9s"


def test_delete_refuses_dangling_references_and_404s_unknown(store):
    """Deleting what another resource still routes to is 400; an unknown identity is 404."""
    store.apply(SE.replace("reviews", "details"), "d.yaml")
    store.apply(vs("front", dest="details"), "f.yaml")
    with pytest.raises(ChangeRefused) as refused:
        store.delete("ServiceEntry/default/details")
    assert refused.value.status == 400 and "f.yaml: VirtualService/default/front" in refused.value.errors[0]
    with pytest.raises(ChangeRefused) as missing:
        store.delete("ServiceEntry/default/none")
    assert missing.value.status == 404
    assert store.delete("VirtualService/default/front").results == [("VirtualService/default/front", "deleted")]


def test_applied_resources_persist_atomically_and_reload(store, tmp_path):
    """The state file holds the applied set (normalized documents) and a new store serves it again."""
    store.apply(vs("a"), "a.yaml")
    data = json.loads((tmp_path / "state" / "applied.json").read_text())
    assert [r["document"]["metadata"]["name"] for r in data["resources"]] == ["a"]
    assert not [p for p in (tmp_path / "state").iterdir() if p.name.startswith(".applied-")]
    again = ConfigStore(tmp_path / "config", tmp_path / "state")
    assert again.start().version == store.config.version
    assert again.origin("VirtualService/default/a") == APPLIED


def test_corrupt_state_file_is_a_clear_error(tmp_path):
    """A state file that is not the expected JSON stops startup with its path and the reason."""
    (tmp_path / "applied.json").write_text("{not json")
    with pytest.raises(StateError, match="applied.json: cannot load applied resources"):
        ConfigStore(None, tmp_path).start()


def test_bad_file_keeps_last_good_config_and_records_the_error(store, tmp_path):
    """A file that breaks the set is reported and the last good version stays in force."""
    version = store.config.version
    (tmp_path / "config" / "vs.yaml").write_text(vs("reviews", timeout="soon"))
    assert store.reload_files() is False
    assert store.config.version == version and not store.state.files_valid
    assert "vs.yaml: VirtualService/default/reviews: spec.http[0].timeout" in store.state.last_error.errors[0]
    (tmp_path / "config" / "vs.yaml").write_text(vs("reviews"))
    assert store.reload_files() is True and store.state.files_valid and store.config.version != version


def test_startup_with_invalid_files_raises_every_issue(tmp_path):
    """start() raises ConfigError listing every problem; nothing is served from an invalid set."""
    (tmp_path / "a.yaml").write_text(vs("a", dest="nowhere") + "---\n" + vs("b", timeout="x"))
    with pytest.raises(ConfigError) as error:
        ConfigStore(tmp_path, None).start()
    assert [(i.resource, i.field_path) for i in error.value.issues] == [
        ("VirtualService/default/a", "spec.http[0].route[0].destination.host"),
        ("VirtualService/default/b", "spec.http[0].timeout"),
        ("VirtualService/default/b", "spec.http[0].route[0].destination.host")]


def test_registry_documents_are_validated_with_the_set_and_give_way_to_user_resources(tmp_path):
    """Extra (registry) documents join the set; one with a user resource's identity is dropped."""
    we = {"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
          "metadata": {"name": "auto-x", "namespace": "default"}, "spec": {"address": "10.0.0.9"}}
    s = ConfigStore(None, None, extra=lambda docs: [(we, "registry")])
    s.start()
    assert s.origin("WorkloadEntry/default/auto-x") == REGISTRY
    with pytest.raises(ChangeRefused) as refused:
        s.apply("apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: auto-x}\n"
                "spec: {address: 10.0.0.1}\n", "w.yaml")
    assert refused.value.status == 409


def test_spec_cache_reuses_unchanged_documents_but_still_checks_references():
    """A cached (unchanged) document is not re-checked alone, yet references to removed hosts still fail."""
    from remora.config.loader import SpecCache, build_mesh_config, parse_documents
    se_docs, _ = parse_documents(SE, "se.yaml")
    vs_docs, _ = parse_documents(vs("front"), "vs.yaml")
    cache = SpecCache()
    first = build_mesh_config(se_docs + vs_docs, cache=cache)
    assert len(cache.entries) == 2
    assert build_mesh_config(se_docs + vs_docs, cache=cache).version == first.version
    with pytest.raises(ConfigError, match="unknown destination host 'reviews'"):
        build_mesh_config(vs_docs, cache=cache)
    bad, _ = parse_documents(vs("front", timeout="soon"), "vs.yaml")
    with pytest.raises(ConfigError, match="invalid duration"):
        build_mesh_config(se_docs + bad, cache=cache)


def test_override_fingerprint_handles_any_yaml_value():
    """The override remembers the file version as a digest: YAML values JSON cannot hold (a date)
    still fingerprint, equal documents agree, and a changed value does not."""
    import datetime
    from remora.xds.store import fingerprint
    doc = {"kind": "VirtualService", "metadata": {"name": "a", "labels": {"since": datetime.date(2024, 1, 1)}}}
    same = {"metadata": {"labels": {"since": datetime.date(2024, 1, 1)}, "name": "a"}, "kind": "VirtualService"}
    assert fingerprint(doc) == fingerprint(same) and fingerprint(None) is None
    assert fingerprint(doc) != fingerprint({**doc, "kind": "DestinationRule"})


def test_reload_parses_only_files_whose_text_changed(store, tmp_path):
    """Reloading --config-dir reuses the parsed documents of an unchanged file and parses a changed one."""
    (tmp_path / "config" / "vs.yaml").write_text(vs("a"))
    assert store.reload_files()
    before = {src: body for body, src in store.file_docs}
    (tmp_path / "config" / "vs.yaml").write_text(vs("b"))
    assert store.reload_files()
    after = {src: body for body, src in store.file_docs}
    se_file, vs_file = str(tmp_path / "config" / "se.yaml"), str(tmp_path / "config" / "vs.yaml")
    assert after[se_file] is before[se_file]
    assert after[vs_file] is not before[vs_file] and after[vs_file]["metadata"]["name"] == "b"


def test_a_planned_change_is_in_force_only_once_committed(store):
    """plan_apply validates without changing anything (a shared store writes first); commit puts it in force."""
    version = store.config.version
    pending = store.plan_apply(vs("a"), "a.yaml")
    assert store.config.version == version and store.lookup("VirtualService/default/a") is None
    assert store.commit(pending).results == [("VirtualService/default/a", "created")]
    assert store.lookup("VirtualService/default/a") is not None


def test_another_replicas_applied_set_is_validated_before_it_is_taken(store):
    """replace_applied takes a valid set from the shared store and refuses an invalid one whole."""
    store.commit(store.plan_apply(vs("a"), "a.yaml"))
    version = store.config.version
    good = dict(store.applied)
    good["VirtualService/default/b"] = type(good["VirtualService/default/a"])(
        {**good["VirtualService/default/a"].document, "metadata": {"name": "b", "namespace": "default"},
         "spec": {"hosts": ["b"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}}, "b.yaml", 1.0)
    assert store.replace_applied(good) and store.lookup("VirtualService/default/b") is not None
    bad = dict(good)
    bad["VirtualService/default/c"] = type(good["VirtualService/default/a"])(
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
         "metadata": {"name": "c", "namespace": "default"},
         "spec": {"hosts": ["c"], "http": [{"route": [{"destination": {"host": "nowhere"}}]}]}}, "c.yaml", 1.0)
    assert not store.replace_applied(bad)
    assert store.lookup("VirtualService/default/c") is None and store.applied == good
    assert store.state.last_error.source == "store" and store.config.version != version


def test_spec_cache_hands_back_the_same_resource_for_an_unchanged_document():
    """An unchanged document gives the very Resource of the last build (later steps match by identity);
    a changed one a new Resource, and the version is the one an uncached build computes."""
    from remora.config.loader import SpecCache, build_mesh_config, parse_documents
    se_docs, _ = parse_documents(SE, "se.yaml")
    cache = SpecCache()
    first = build_mesh_config(se_docs + parse_documents(vs("front"), "vs.yaml")[0], cache=cache)
    changed = se_docs + parse_documents(vs("front", timeout="3s"), "vs.yaml")[0]
    second = build_mesh_config(changed, cache=cache)
    assert second.service_entries[0] is first.service_entries[0]
    assert second.virtual_services[0] is not first.virtual_services[0]
    assert second.version == build_mesh_config(changed).version != first.version
