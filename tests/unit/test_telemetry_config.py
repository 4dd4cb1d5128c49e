"""Istio Telemetry resources: loading, validation with paths, and per-workload resolution."""
from __future__ import annotations

import pytest

from remora.config.loader import ConfigError, load_mesh_text
from remora.proxy.telemetry.telemetry_policy import CLIENT, SERVER, TelemetryDefaults, resolve, scopes


def telemetry(name: str, namespace: str, spec: str, api: str = "telemetry.istio.io/v1") -> str:
    return f"apiVersion: {api}\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n---\n"


def effective(yaml_text: str, namespace: str = "default", labels: dict | None = None, **defaults):
    config = load_mesh_text(yaml_text)
    return resolve(config.telemetries, namespace, labels or {}, TelemetryDefaults(**defaults))


def test_v1_and_v1alpha1_load():
    """Telemetry of telemetry.istio.io v1 and v1alpha1 is read, not skipped."""
    config = load_mesh_text(telemetry("a", "istio-system", "{tracing: [{randomSamplingPercentage: 5}]}")
                            + telemetry("b", "shop", "{accessLogging: [{disabled: true}]}", "telemetry.istio.io/v1alpha1"))
    assert [r.name for r in config.telemetries] == ["a", "b"]
    assert config.warnings == ()


@pytest.mark.parametrize(("spec", "path", "message"), [
    ("{tracing: [{randomSamplingPercentage: 150}]}", "spec.tracing[0].randomSamplingPercentage",
     "between 0 and 100"),
    ("{accessLogging: [{match: {mode: SERVR}}]}", "spec.accessLogging[0].match.mode", "unknown value 'SERVR'"),
    ("{accessLogging: [{disabled: maybe}]}", "spec.accessLogging[0].disabled", "expected a boolean"),
    ("{tracing: [{}, {match: {mode: CLIENT}}]}", "spec.tracing[1].match.mode", "overlaps tracing[0]"),
    ("{tracing: [{customTags: {a: {literal: {value: b}}}}]}", "spec.tracing[0].customTags",
     "not supported by Remora yet"),
    ("{accessLogging: [{filter: {expression: 'response.code >= 400'}}]}", "spec.accessLogging[0].filter",
     "not supported by Remora yet"),
    ("{selector: {matchLabel: {app: x}}}", "spec.selector.matchLabel", "did you mean `matchLabels`"),
])
def test_invalid_telemetry_names_file_resource_and_field(spec, path, message):
    """A bad Telemetry value is an error naming the file, Kind/namespace/name and field path."""
    with pytest.raises(ConfigError) as err:
        load_mesh_text(telemetry("t", "shop", spec), "mesh.yaml")
    issues = [str(i) for i in err.value.issues]
    assert any(i.startswith(f"mesh.yaml: Telemetry/shop/t: {path}: ") and message in i for i in issues), issues


def test_unknown_version_is_an_error():
    """telemetry.istio.io/v2 does not exist: the error lists the versions that do."""
    with pytest.raises(ConfigError, match="use telemetry.istio.io/v1, telemetry.istio.io/v1alpha1"):
        load_mesh_text(telemetry("t", "shop", "{}", "telemetry.istio.io/v2"))


def test_unknown_access_log_provider_and_metrics_are_warnings():
    """Providers Remora lacks and metric overrides load with a warning saying what happens."""
    config = load_mesh_text(telemetry("t", "shop", "{accessLogging: [{providers: [{name: otel}]}], "
                                                   "metrics: [{providers: [{name: prometheus}]}]}"))
    assert any("provider 'otel' is not known to Remora" in w for w in config.warnings)
    assert any("spec.metrics" in w for w in config.warnings)


def test_flags_are_the_defaults():
    """Without Telemetry resources the flags decide: format, sampling, reporting with OTLP."""
    got = effective("", access_log_format="json", sampling_percent=7.0, otlp=True)
    assert got[CLIENT].access_log == got[SERVER].access_log == "json"
    assert got[CLIENT].sampling_percent == 7.0 and got[CLIENT].report_spans
    off = effective("", access_log=False)
    assert off[CLIENT].access_log is None and not off[CLIENT].report_spans


def test_narrowest_scope_wins():
    """mesh-wide (istio-system) < namespace-wide < workload selector, field by field."""
    text = (telemetry("mesh", "istio-system", "{tracing: [{randomSamplingPercentage: 10}], "
                                              "accessLogging: [{disabled: true}]}")
            + telemetry("ns", "shop", "{tracing: [{randomSamplingPercentage: 20}]}")
            + telemetry("wl", "shop", "{selector: {matchLabels: {app: reviews}}, "
                                      "tracing: [{disableSpanReporting: true}], "
                                      "accessLogging: [{providers: [{name: envoy-json}]}]}"))
    other_ns = effective(text, "web", {"app": "reviews"}, otlp=True)
    assert other_ns[CLIENT].sampling_percent == 10 and other_ns[CLIENT].access_log is None
    ns_only = effective(text, "shop", {"app": "ratings"}, otlp=True)
    assert ns_only[CLIENT].sampling_percent == 20 and ns_only[CLIENT].report_spans
    assert ns_only[CLIENT].access_log is None
    workload = effective(text, "shop", {"app": "reviews", "version": "v1"}, otlp=True)
    assert workload[CLIENT].sampling_percent == 20          # inherited from the namespace
    assert not workload[CLIENT].report_spans                # disableSpanReporting
    assert workload[CLIENT].access_log == "json"            # re-enabled by its provider


def test_match_mode_picks_the_listener():
    """CLIENT applies to the outbound listener, SERVER to the inbound one."""
    text = telemetry("t", "default", "{accessLogging: [{match: {mode: SERVER}, disabled: true}], "
                                     "tracing: [{match: {mode: CLIENT}, randomSamplingPercentage: 50}]}")
    got = effective(text)
    assert got[CLIENT].access_log == "text" and got[SERVER].access_log is None
    assert got[CLIENT].sampling_percent == 50 and got[SERVER].sampling_percent == 1.0


def test_envoy_provider_follows_the_encoding_flag():
    """`envoy` is Istio's default provider: its encoding is --access-log-format; it turns
    the log on even where --access-log is off."""
    text = telemetry("t", "default", "{accessLogging: [{providers: [{name: envoy}]}]}")
    got = effective(text, access_log=False, access_log_format="json")
    assert got[CLIENT].access_log == "json"
    assert effective(telemetry("t", "default", "{accessLogging: [{disabled: false}]}"),
                     access_log=False)[CLIENT].access_log is None


def test_one_resource_per_scope_first_by_name():
    """Two namespace-wide resources: the first by name applies (Istio: the oldest)."""
    text = (telemetry("b", "shop", "{tracing: [{randomSamplingPercentage: 2}]}")
            + telemetry("a", "shop", "{tracing: [{randomSamplingPercentage: 3}]}"))
    config = load_mesh_text(text)
    assert [r.name for r in scopes(config.telemetries, "shop", {})] == ["a"]
    assert effective(text, "shop")[CLIENT].sampling_percent == 3


def test_selector_must_match_every_label():
    """A workload selector applies only when all its labels are the sidecar's."""
    text = telemetry("t", "default", "{selector: {matchLabels: {app: reviews, version: v2}}, "
                                     "accessLogging: [{disabled: true}]}")
    assert effective(text, labels={"app": "reviews", "version": "v1"})[CLIENT].access_log == "text"
    assert effective(text, labels={"app": "reviews", "version": "v2"})[CLIENT].access_log is None
