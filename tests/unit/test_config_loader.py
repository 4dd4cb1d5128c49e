"""The config loader: files, kinds, all-or-nothing errors, versions, and the fixture table.

Per-field semantic rules are in test_config_validate.py.
"""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import msgspec
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remora.config.loader import (
    ConfigError,
    ConfigIssue,
    build_mesh_config,
    load_mesh_config,
    load_mesh_text,
)
from remora.config.schema import Problem, problem_from_validation_error

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "istio-examples"
DOC = ROOT / "docs" / "configuration.md"

VS_REVIEWS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
"""
DR_REVIEWS = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
"""


def issues_of(text: str, source: str = "mesh.yaml") -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        load_mesh_text(textwrap.dedent(text), source)
    return caught.value.issues


# ---- the fixture table: docs and behaviour cannot drift ----------------------------------

# Expected outcome of each fixture file loaded on its own: "loads", "skipped" (every
# document is an unsupported kind, reported as a warning) or "rejected" with the field
# paths that must be named.
FIXTURE_EXPECTATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "000-00-DestinationRule-my-service.yaml": ("loads", ()),
    "000-01-VirtualService-my-service.yaml": ("rejected", ("spec.http[0].route[0].destination.subset", "spec.http[0].route[1].destination.subset")),
    "000-02-PeerAuthentication-default.yaml": ("loads", ()),
    "000-03-AuthorizationPolicy-my-service-policy.yaml": ("loads", ()),
    "000-04-DestinationRule-my-service-circuit-breaker.yaml": ("loads", ()),
    "000-05-VirtualService-my-service-retry.yaml": ("loads", ()),
    "000-07-VirtualService-my-service-vs.yaml": ("loads", ()),
    "000-08-VirtualService-my-service-canary.yaml": ("rejected", ("spec.http[0].route[0].destination.subset", "spec.http[0].route[1].destination.subset")),
    "000-09-VirtualService-my-service-ab-test.yaml": ("rejected", ("spec.http[0].route[0].destination.subset", "spec.http[1].route[0].destination.subset")),
    "000-10-VirtualService-my-service-fault-injection.yaml": ("loads", ()),
    "000-12-RequestAuthentication-jwt-auth.yaml": ("loads", ()),
    "000-13-AuthorizationPolicy-my-service-authz.yaml": ("loads", ()),
    "000-14-DestinationRule-my-service-optimized.yaml": ("loads", ()),
    "000-15-VirtualService-my-service-cached.yaml": ("loads", ()),
    "000-16-DestinationRule-my-service-lb.yaml": ("loads", ()),
    "001-02-ServiceEntry-external-service.yaml": ("loads", ()),
    "001-04-VirtualService-reviews.yaml": ("rejected", ("spec.http[0].route[0].destination.subset",)),
    "001-05-PeerAuthentication-default.yaml": ("loads", ()),
    "001-07-DestinationRule-reviews.yaml": ("loads", ()),
    "001-13-DestinationRule-tcp-pool.yaml": ("loads", ()),
    "002-01-VirtualService-user-service.yaml": ("rejected", ("spec.timeout", "spec.retries")),
    "002-02-DestinationRule-user-service.yaml": ("loads", ()),
    "002-04-TrafficSplit-product-service-split.yaml": ("skipped", ("TrafficSplit",)),
    "002-05-VirtualService-order-service-blue-green.yaml": ("loads", ()),
    "002-06-VirtualService-recommendation-ab-test.yaml": ("rejected", ("spec.http[0].route[0].destination.subset", "spec.http[2].route[1].destination.subset")),
    "002-07-VirtualService-payment-service-fault.yaml": ("loads", ()),
    "002-08-PeerAuthentication-default.yaml": ("loads", ()),
    "002-09-AuthorizationPolicy-user-service-authz.yaml": ("loads", ()),
    "002-10-RequestAuthentication-jwt-auth.yaml": ("loads", ()),
    "002-11-ServiceEntry-user-service-cluster2.yaml": ("rejected", ("spec.endpoints[0].address",)),
    "002-12-VirtualService-user-service-global.yaml": ("rejected", ("spec.http[0].route[0].destination.host", "spec.http[1].route[0].destination.host")),
    "002-14-Sidecar-default.yaml": ("loads", ()),
    "002-15-DestinationRule-high-throughput-service.yaml": ("loads", ()),
    "003-02-Gateway-blog-gateway.yaml": ("rejected", ("spec.trafficPolicy.circuitBreaker", "spec.http[1].route[0].destination.host")),
    "003-03-PeerAuthentication-default.yaml": ("loads", ()),
    "003-06-TrafficSplit-blog-api-split.yaml": ("rejected", ("kind",)),
    "003-07-ServiceProfile-blog-api.blog.svc.cluster.local.yaml": ("skipped", ("ServiceProfile",)),
    "003-08-ServiceIntentions-blog-api-intentions.yaml": ("rejected", ("kind",)),
    "003-12-AuthorizationPolicy-deny-all.yaml": ("loads", ()),
    "004-01-ServiceEntry-edition-cnn-com.yaml": ("loads", ()),
    "004-02-ServiceEntry-originate-mtls-for-nginx.yaml": ("loads", ()),
}


def fixture_files() -> list[Path]:
    return sorted(p for p in FIXTURES.iterdir() if p.suffix in (".yaml", ".yml"))


def fixture_outcome(path: Path) -> tuple[str, str, str]:
    """(kinds in the file, result, loader detail) from a real load of one fixture file.

    docs/configuration.md's fixture table holds exactly these cells; regenerate them with
    `python -m tests.unit.test_config_loader`.
    """
    kinds = list(dict.fromkeys(doc["kind"] for doc in yaml.safe_load_all(path.read_text()) if doc))
    try:
        config = load_mesh_config([path])
    except ConfigError as error:
        by_resource: dict[str, dict[str, None]] = {}
        for issue in error.issues:
            by_resource.setdefault(issue.resource, {})[f"`{issue.field_path}`"] = None
        detail = "; ".join(f"{resource}: {', '.join(paths)}" for resource, paths in by_resource.items())
        return ", ".join(kinds), "rejected", detail
    loaded = [r.ref for group in (config.service_entries, config.workload_entries,
                                   config.virtual_services, config.destination_rules,
                                   config.peer_authentications, config.authorization_policies,
                                   config.request_authentications, config.gateways, config.sidecars) for r in group]
    if not loaded:
        return ", ".join(kinds), "skipped", f"{len(config.warnings)} document(s) skipped with a warning"
    notes = f"; {len(config.warnings)} warning(s)" if config.warnings else ""
    return ", ".join(kinds), "loads", ", ".join(loaded) + notes


def documented_fixture_rows() -> dict[str, tuple[str, str, str]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if len(cells) == 5 and re.fullmatch(r"`[^`]+\.ya?ml`", cells[0]):
            rows[cells[0].strip("`")] = (cells[1], cells[2], cells[3])
    return rows


def test_every_fixture_file_has_an_expectation() -> None:
    """A new fixture file cannot go untested: the expectation table covers the directory."""
    assert {p.name for p in fixture_files()} == set(FIXTURE_EXPECTATIONS)


@pytest.mark.parametrize("name", sorted(FIXTURE_EXPECTATIONS))
def test_fixture_file_outcome(name: str) -> None:
    """Each fixture file loads, is skipped with a warning naming its kinds, or is rejected naming the field."""
    path = FIXTURES / name
    result, named = FIXTURE_EXPECTATIONS[name]
    if result == "rejected":
        with pytest.raises(ConfigError) as caught:
            load_mesh_config([path])
        issues = caught.value.issues
        assert all(issue.file == str(path) and issue.resource.count("/") == 2 for issue in issues)
        paths = {issue.field_path for issue in issues}
        assert set(named) <= paths, issues
        return
    config = load_mesh_config([path])
    resources = (config.service_entries + config.workload_entries + config.virtual_services + config.destination_rules
                 + config.peer_authentications + config.authorization_policies + config.request_authentications
                 + config.gateways + config.sidecars)
    if result == "loads":
        assert resources
    else:
        assert not resources
        for kind in named:
            assert any(f"unsupported kind {kind} (" in w and str(path) in w for w in config.warnings), config.warnings


@pytest.mark.parametrize("path", fixture_files(), ids=lambda p: p.name)
def test_docs_fixture_table_matches_the_loader(path: Path) -> None:
    """docs/configuration.md's fixture table row is exactly what the loader does with that file."""
    documented = documented_fixture_rows()
    assert path.name in documented, f"{path.name} missing from the table in {DOC}"
    assert documented[path.name] == fixture_outcome(path)


def test_docs_totals_match_the_loader() -> None:
    """The totals sentence under the fixture table counts what the loader does."""
    outcomes = [fixture_outcome(path)[1] for path in fixture_files()]
    with pytest.raises(ConfigError) as caught:
        load_mesh_config([FIXTURES])
    whole = caught.value.issues
    text = " ".join(DOC.read_text().split())
    assert (f"Totals: {outcomes.count('loads')} load, {outcomes.count('skipped')} are skipped, "
            f"{outcomes.count('rejected')} are rejected.") in text
    assert f"rejected with {len(whole)} errors in {len({i.file for i in whole})} files." in text


def test_docs_error_example_is_real_output() -> None:
    """The error example in docs/configuration.md is what the loader prints for that YAML."""
    errors_section = DOC.read_text().split("## Errors", 1)[1]
    example_yaml = errors_section.split("```yaml\n", 1)[1].split("```", 1)[0]
    printed = errors_section.split("prints (exit status 1):", 1)[1].split("```\n", 1)[1].split("```", 1)[0]
    with pytest.raises(ConfigError) as caught:
        load_mesh_text(example_yaml, "mesh/reviews.yaml")
    assert printed.splitlines() == ["remora: invalid configuration", *str(caught.value).splitlines()]


def test_fixture_virtual_service_loads_with_its_destination_rule() -> None:
    """Subsets defined in another file count once both files are one config set."""
    config = load_mesh_config([FIXTURES / "001-04-VirtualService-reviews.yaml", FIXTURES / "001-07-DestinationRule-reviews.yaml"])
    assert [vs.name for vs in config.virtual_services] == ["reviews"]


def test_gateway_bound_virtual_service_loads_without_warning() -> None:
    """A VirtualService bound to gateways but not 'mesh' is valid Istio: it loads, silently (sidecars skip it)."""
    config = load_mesh_config([FIXTURES / "000-07-VirtualService-my-service-vs.yaml"])
    assert [vs.name for vs in config.virtual_services] == ["my-service-vs"]
    assert not any("my-gateway" in w for w in config.warnings)


def test_several_destination_rules_for_one_host_warn() -> None:
    """Istio merges DestinationRules for one host; Remora does not, and says so."""
    config = load_mesh_config([FIXTURES / "000-00-DestinationRule-my-service.yaml", FIXTURES / "000-16-DestinationRule-my-service-lb.yaml"])
    assert any("several DestinationRules for host my-service.default.svc.cluster.local" in w for w in config.warnings)


# ---- files and directories ------------------------------------------------------------------

def test_directory_with_one_bad_file_yields_no_config(tmp_path: Path) -> None:
    """All or nothing: one invalid file rejects the whole set, even if the others are fine."""
    (tmp_path / "a-vs.yaml").write_text(VS_REVIEWS)
    (tmp_path / "b-dr.yml").write_text(DR_REVIEWS)
    (tmp_path / "c-bad.yaml").write_text(DR_REVIEWS.replace("name: reviews", "name: other").replace("{version: v1}", "{version: ''}"))
    with pytest.raises(ConfigError) as caught:
        load_mesh_config([tmp_path])
    assert [issue.file for issue in caught.value.issues] == [str(tmp_path / "c-bad.yaml")]


def test_directory_reads_yaml_and_yml_sorted_and_ignores_other_files(tmp_path: Path) -> None:
    """A directory contributes its *.yaml and *.yml files in name order, nothing else."""
    (tmp_path / "b.yml").write_text(DR_REVIEWS)
    (tmp_path / "a.yaml").write_text(VS_REVIEWS)
    (tmp_path / "notes.txt").write_text("not: [yaml")
    config = load_mesh_config([tmp_path])
    assert [r.source for r in config.virtual_services + config.destination_rules] == [str(tmp_path / "a.yaml"), str(tmp_path / "b.yml")]


def test_issues_from_all_files_are_collected(tmp_path: Path) -> None:
    """Every bad file is reported in one ConfigError, in load order, not just the first."""
    (tmp_path / "1.yaml").write_text("kind: [unclosed")
    (tmp_path / "2.yaml").write_text(VS_REVIEWS.replace("kind: VirtualService", "kind: VirtualServise"))
    with pytest.raises(ConfigError) as caught:
        load_mesh_config([tmp_path])
    assert [Path(issue.file).name for issue in caught.value.issues] == ["1.yaml", "2.yaml"]


def test_missing_path_is_an_issue(tmp_path: Path) -> None:
    """A path that does not exist is reported, not silently ignored."""
    with pytest.raises(ConfigError, match="no such file or directory"):
        load_mesh_config([tmp_path / "absent.yaml"])


def test_empty_directory_warns(tmp_path: Path) -> None:
    """An empty directory is a warning (maybe a wrong path), and an empty config."""
    config = load_mesh_config([tmp_path])
    assert config.virtual_services == () and any("no *.yaml" in w for w in config.warnings)


def test_same_file_given_twice_is_read_once(tmp_path: Path) -> None:
    """Naming a file both directly and through its directory does not duplicate it."""
    (tmp_path / "vs.yaml").write_text(VS_REVIEWS + "---" + DR_REVIEWS)
    config = load_mesh_config([tmp_path, tmp_path / "vs.yaml"])
    assert len(config.virtual_services) == 1


def test_empty_documents_are_skipped() -> None:
    """Empty YAML documents (a stray ---, comments only) are not resources."""
    config = load_mesh_text("---\n# only a comment\n---\n" + VS_REVIEWS + "---\n---\n" + DR_REVIEWS)
    assert len(config.virtual_services) == 1 and len(config.destination_rules) == 1


def test_build_mesh_config_validates_in_memory_documents() -> None:
    """A control server can validate parsed documents through the same path."""
    docs = [(yaml.safe_load(VS_REVIEWS), "api"), (yaml.safe_load(DR_REVIEWS), "api")]
    config = build_mesh_config(docs)
    assert config.version == load_mesh_text(VS_REVIEWS + "---" + DR_REVIEWS).version
    with pytest.raises(ConfigError):
        build_mesh_config(docs[:1])


# ---- YAML and document shape ------------------------------------------------------------------

def test_yaml_syntax_error_names_document_and_line() -> None:
    """A YAML error names the file, the document number and the line."""
    [issue] = issues_of(DR_REVIEWS + "---\nkind: [unclosed\n")
    assert issue.file == "mesh.yaml" and issue.resource == ""
    assert "document 2" in issue.message and "line" in issue.message


def test_duplicate_yaml_keys_are_rejected() -> None:
    """A repeated key would silently replace the first one; it is an error instead."""
    [issue] = issues_of(VS_REVIEWS.replace("  hosts: [reviews]", "  hosts: [reviews]\n  hosts: [ratings]"))
    assert "duplicate key 'hosts'" in issue.message


def test_document_that_is_not_a_mapping() -> None:
    """A document that is a list or a scalar is reported with its position."""
    [issue] = issues_of("- just\n- a list\n")
    assert issue.message.startswith("document 1: expected a mapping")


def test_namespace_defaults_to_default() -> None:
    """A resource without metadata.namespace lives in namespace default."""
    config = load_mesh_text(VS_REVIEWS + "---" + DR_REVIEWS)
    assert config.virtual_services[0].namespace == "default"
    assert config.virtual_services[0].ref == "VirtualService/default/reviews"


def test_metadata_name_is_required() -> None:
    """A supported resource without metadata.name is rejected at metadata.name."""
    [issue] = issues_of(DR_REVIEWS.replace("metadata: {name: reviews}", "metadata: {namespace: prod}"))
    assert (issue.resource, issue.field_path) == ("DestinationRule/prod/?", "metadata.name")


@pytest.mark.parametrize(
    ("metadata", "path"),
    [("metadata: reviews", "metadata"), ("metadata: {name: reviews, namespace: ''}", "metadata.namespace")],
)
def test_metadata_must_be_a_mapping_with_a_real_namespace(metadata: str, path: str) -> None:
    """metadata is a mapping; a given namespace is a non-empty string."""
    issues = issues_of(DR_REVIEWS.replace("metadata: {name: reviews}", metadata))
    assert any(issue.field_path == path for issue in issues), issues


def test_unreadable_file_is_an_issue(tmp_path: Path) -> None:
    """A file that is not UTF-8 is reported with its name, not a traceback."""
    (tmp_path / "bad.yaml").write_bytes(b"kind: \xff\xfe\n")
    with pytest.raises(ConfigError) as caught:
        load_mesh_config([tmp_path])
    [issue] = caught.value.issues
    assert issue.file == str(tmp_path / "bad.yaml") and "cannot read file" in issue.message


def test_unknown_top_level_field() -> None:
    """A misspelt top-level key (sepc) is an error rather than an empty spec."""
    issues = issues_of(DR_REVIEWS.replace("spec:", "sepc:"))
    assert any(issue.field_path == "sepc" for issue in issues)


def test_duplicate_resources_are_rejected(tmp_path: Path) -> None:
    """The same kind/namespace/name twice is an error naming where it was first defined."""
    (tmp_path / "a.yaml").write_text(DR_REVIEWS)
    (tmp_path / "b.yaml").write_text(DR_REVIEWS)
    with pytest.raises(ConfigError) as caught:
        load_mesh_config([tmp_path])
    [issue] = caught.value.issues
    assert issue.file == str(tmp_path / "b.yaml") and "already defined in" in issue.message and "a.yaml" in issue.message


def test_same_name_in_another_namespace_is_not_a_duplicate() -> None:
    """Identity is kind + namespace + name."""
    other = DR_REVIEWS.replace("metadata: {name: reviews}", "metadata: {name: reviews, namespace: prod}")
    assert len(load_mesh_text(DR_REVIEWS + "---" + other).destination_rules) == 2


# ---- kinds ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("api_version", ["networking.istio.io/v1alpha3", "networking.istio.io/v1beta1", "networking.istio.io/v1"])
def test_supported_api_versions(api_version: str) -> None:
    """All three networking.istio.io versions load the same way."""
    config = load_mesh_text(DR_REVIEWS.replace("networking.istio.io/v1", api_version))
    assert config.destination_rules[0].api_version == api_version


@pytest.mark.parametrize(
    ("api_version", "kind"),
    [
        ("networking.istio.io/v1alpha3", "EnvoyFilter"),
        ("networking.istio.io/v1", "WorkloadGroup"),
        ("networking.istio.io/v1beta1", "ProxyConfig"),
        ("extensions.istio.io/v1alpha1", "WasmPlugin"),
        ("split.smi-spec.io/v1alpha2", "TrafficSplit"),
        ("linkerd.io/v1alpha2", "ServiceProfile"),
        ("consul.hashicorp.com/v1alpha1", "ServiceDefaults"),
    ],
)
def test_unsupported_mesh_kinds_are_skipped_with_a_warning(api_version: str, kind: str) -> None:
    """A real mesh kind Remora does not implement yet is a warning naming kind, resource and file."""
    config = load_mesh_text(f"apiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: x, namespace: ns}}\nspec: {{}}\n", "f.yaml")
    assert config.warnings == (f"skipped unsupported kind {kind} (ns/x) in f.yaml",)


@pytest.mark.parametrize(
    ("api_version", "kind", "spec", "field"),
    [
        ("policy.linkerd.io/v1beta1", "ServerAuthorization", "{}", "kind"),
        ("policy.linkerd.io/v1alpha1", "AuthorizationPolicy", "{}", "kind"),
        ("policy.linkerd.io/v1alpha1", "MeshTLSAuthentication", "{}", "kind"),
        ("consul.hashicorp.com/v1alpha1", "ServiceIntentions", "{}", "kind"),
        ("access.smi-spec.io/v1alpha3", "TrafficTarget", "{}", "kind"),
        ("networking.istio.io/v1alpha3", "EnvoyFilter",
         "{configPatches: [{applyTo: HTTP_FILTER, patch: {value: {name: envoy.filters.http.ext_authz}}}]}",
         "spec.configPatches"),
        ("extensions.istio.io/v1alpha1", "WasmPlugin", "{phase: AUTHN, url: oci://x}", "spec.phase"),
    ],
)
def test_unenforced_security_kinds_are_refused_not_skipped(api_version, kind, spec, field) -> None:
    """A skipped kind that would grant, deny, authenticate or set TLS makes the config invalid, naming resource and field."""
    text = f"apiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: x, namespace: ns}}\nspec: {spec}\n"
    with pytest.raises(ConfigError) as caught:
        load_mesh_text(text, "f.yaml")
    [issue] = caught.value.issues
    assert issue.resource == f"{kind}/ns/x" and issue.field_path == field and issue.file == "f.yaml"


def test_harmless_envoy_filter_is_still_skipped() -> None:
    """An EnvoyFilter tuning buffers stays a warning (routing, not protection)."""
    text = ("apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: e}\n"
            "spec: {configPatches: [{applyTo: LISTENER, patch: {value: {per_connection_buffer_limit_bytes: 1024}}}]}\n")
    config = load_mesh_text(text, "f.yaml")
    assert len(config.warnings) == 1


def test_unknown_kind_is_an_error_with_a_suggestion() -> None:
    """A misspelt kind is an error (not a silent skip) that suggests the right name."""
    [issue] = issues_of(VS_REVIEWS.replace("kind: VirtualService", "kind: VirtualServise"))
    assert issue.field_path == "kind" and "did you mean VirtualService?" in issue.message


@pytest.mark.parametrize("missing", ["kind", "apiVersion"])
def test_missing_kind_or_api_version_is_an_error(missing: str) -> None:
    """Without kind or apiVersion a document cannot be identified: error."""
    text = "\n".join(line for line in VS_REVIEWS.splitlines() if not line.startswith(f"{missing}:"))
    [issue] = issues_of(text)
    assert issue.field_path == missing and "required" in issue.message


def test_known_kind_in_the_wrong_group_is_an_error() -> None:
    """VirtualService under security.istio.io is an error naming the right group."""
    [issue] = issues_of(VS_REVIEWS.replace("networking.istio.io/v1", "security.istio.io/v1"))
    assert issue.field_path == "apiVersion" and "networking.istio.io" in issue.message


def test_unsupported_kind_in_the_wrong_group_is_an_error() -> None:
    """AuthorizationPolicy under networking.istio.io is a mistake, not a skip."""
    [issue] = issues_of("apiVersion: networking.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\n")
    assert issue.field_path == "apiVersion" and "security.istio.io" in issue.message


def test_unknown_version_of_a_supported_kind_is_an_error() -> None:
    """networking.istio.io/v2 is not a version Remora knows how to read."""
    [issue] = issues_of(DR_REVIEWS.replace("networking.istio.io/v1", "networking.istio.io/v2"))
    assert issue.field_path == "apiVersion"


# ---- error format -------------------------------------------------------------------------------

def test_issue_names_file_resource_and_field_path() -> None:
    """An issue prints as file: Kind/ns/name: field.path: message."""
    text = VS_REVIEWS + "---" + DR_REVIEWS.replace("name: v1,", "name: v1, bogus: 1,")
    [issue] = issues_of(text, "mesh/reviews.yaml")
    assert issue.file == "mesh/reviews.yaml"
    assert issue.resource == "DestinationRule/default/reviews"
    assert issue.field_path == "spec.subsets[0].bogus"
    assert str(issue).startswith("mesh/reviews.yaml: DestinationRule/default/reviews: spec.subsets[0].bogus: unknown field `bogus`")


def test_issue_str_skips_empty_parts() -> None:
    """Empty resource or field path leaves no empty ': :' in the text."""
    assert str(ConfigIssue("f.yaml", "", "", "bad")) == "f.yaml: bad"
    assert str(ConfigIssue("f.yaml", "VirtualService/ns/a", "", "bad")) == "f.yaml: VirtualService/ns/a: bad"


def test_config_error_lists_every_issue_with_a_count() -> None:
    """str(ConfigError) is a count header then one issue per line."""
    error = ConfigError([ConfigIssue("a", "", "", "x"), ConfigIssue("b", "", "", "y")])
    assert str(error).splitlines() == ["2 configuration errors:", "  a: x", "  b: y"]
    assert str(ConfigError([ConfigIssue("a", "", "", "x")])).splitlines()[0] == "1 configuration error:"


def test_every_issue_of_one_resource_is_reported() -> None:
    """Several schema problems in one resource are all reported, not only the first."""
    issues = issues_of(VS_REVIEWS.replace("  http:", "  timeout: 1s\n  retries: {}\n  http:") + "---" + DR_REVIEWS)
    assert {issue.field_path for issue in issues} == {"spec.timeout", "spec.retries"}


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Object contains unknown field `foo` - at `$.http[0]`", Problem("spec.http[0].foo", "unknown field `foo`")),
        ("Expected `int | null`, got `str` - at `$.http[0].route[1].weight`", Problem("spec.http[0].route[1].weight", "expected `int | null`, got `str`")),
        ("Object missing required field `host`", Problem("spec", "object missing required field `host`")),
    ],
)
def test_msgspec_errors_become_field_paths(message: str, expected: Problem) -> None:
    """msgspec's `$.a[0]` paths become `spec.a[0]` field paths (the fallback when the walker lets a value through)."""
    assert problem_from_validation_error(msgspec.ValidationError(message)) == expected


# ---- version -------------------------------------------------------------------------------------

def test_version_is_stable_across_loads(tmp_path: Path) -> None:
    """Loading the same content twice gives the same short version."""
    (tmp_path / "mesh.yaml").write_text(VS_REVIEWS + "---" + DR_REVIEWS)
    first, second = load_mesh_config([tmp_path]), load_mesh_config([tmp_path])
    assert first.version == second.version and re.fullmatch(r"[0-9a-f]{12}", first.version)


def test_version_ignores_layout_comments_and_order(tmp_path: Path) -> None:
    """Splitting files, reordering documents or adding comments leaves the version unchanged."""
    (tmp_path / "1.yaml").write_text("# comment\n" + DR_REVIEWS)
    (tmp_path / "2.yaml").write_text(VS_REVIEWS)
    assert load_mesh_config([tmp_path]).version == load_mesh_text(VS_REVIEWS + "---" + DR_REVIEWS).version


def test_version_changes_when_content_changes() -> None:
    """Any change of a validated value changes the version."""
    base = load_mesh_text(VS_REVIEWS + "---" + DR_REVIEWS).version
    changed = load_mesh_text(VS_REVIEWS + "---" + DR_REVIEWS.replace("{version: v1}", "{version: v1b}")).version
    assert base != changed


# ---- robustness -------------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
        ["hosts", "http", "route", "destination", "host", "subset", "weight", "match", "uri", "regex",
         "headers", "subsets", "name", "labels", "trafficPolicy", "loadBalancer", "simple", "endpoints",
         "address", "ports", "number", "resolution", "timeout", "retries", "fault", "x"]), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(kind=st.sampled_from(["VirtualService", "DestinationRule", "ServiceEntry", "WorkloadEntry"]), spec=_json)
def test_arbitrary_specs_never_raise_anything_but_config_error(kind: str, spec: object) -> None:
    """Whatever the spec holds, the loader returns a config or raises ConfigError, never a traceback."""
    doc = {"apiVersion": "networking.istio.io/v1", "kind": kind, "metadata": {"name": "x"}, "spec": spec}
    try:
        build_mesh_config([(doc, "fuzz")])
    except ConfigError as error:
        assert all(issue.file == "fuzz" for issue in error.issues)


if __name__ == "__main__":  # print the fixture table for docs/configuration.md
    for fixture in fixture_files():
        kinds, result, detail = fixture_outcome(fixture)
        print(f"| `{fixture.name}` | {kinds} | {result} | {detail} | |")


@pytest.mark.parametrize("metadata, field", [
    ({"name": "../../etc/passwd"}, "metadata.name"),
    ({"name": "a/b"}, "metadata.name"),
    ({"name": "with space"}, "metadata.name"),
    ({"name": "x" * 10_000}, "metadata.name"),
    ({"name": "ok", "namespace": "default/a"}, "metadata.namespace"),
    ({"name": "ok", "namespace": "n" * 64}, "metadata.namespace"),
])
def test_names_follow_kubernetes_rules(metadata, field) -> None:
    """A file's metadata.name must be a DNS-1123 subdomain and its namespace a DNS-1123 label: a ConfigIssue with the field path."""
    doc = yaml.safe_load(VS_REVIEWS)
    doc["metadata"] = metadata
    with pytest.raises(ConfigError) as raised:
        load_mesh_text(yaml.safe_dump(doc), "f.yaml")
    issues = [i for i in raised.value.issues if i.field_path == field]
    assert len(issues) == 1, raised.value.issues
    assert issues[0].file == "f.yaml" and issues[0].resource.startswith("VirtualService/")
    assert len(str(issues[0])) < 600   # a 10,000-character name is cut in the message


def test_consecutive_errors_is_a_warning_with_istioctls_message() -> None:
    """outlierDetection.consecutiveErrors loads with istioctl's deprecation warning naming each field; it is not an error."""
    doc = yaml.safe_load(DR_REVIEWS)
    doc["spec"]["trafficPolicy"] = {"outlierDetection": {"consecutiveErrors": 7}, "portLevelSettings": [
        {"port": {"number": 9080}, "outlierDetection": {"consecutiveErrors": 0}}]}
    doc["spec"].setdefault("subsets", [{"name": "v1", "labels": {"version": "v1"}}])
    doc["spec"]["subsets"][0]["trafficPolicy"] = {"outlierDetection": {"consecutiveErrors": 3}}
    config = load_mesh_text(VS_REVIEWS + "---\n" + yaml.safe_dump(doc), "dr.yaml")
    found = [w for w in config.warnings if "consecutiveErrors" in w]
    message = ("outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors "
               "or consecutive5xxErrors instead")
    assert len(found) == 2 and all(message in w for w in found), config.warnings
    assert "spec.trafficPolicy.outlierDetection.consecutiveErrors" in found[0]
    assert "spec.subsets[0].trafficPolicy.outlierDetection.consecutiveErrors" in found[1]
