"""Rules of Istio's Telemetry resource (telemetry.istio.io), applied after the schema check.

What Remora applies (see docs/telemetry-traces.md): `selector.matchLabels`,
`tracing[].randomSamplingPercentage` / `disableSpanReporting` / `match.mode`, and
`accessLogging[].disabled` / `providers` / `match.mode`. Values follow Istio's own
validation: percentages 0..100, known match modes, label keys non-empty. Two entries of
one list whose modes overlap are an error, because which one applies would be a guess.
Provider names Remora does not know are warnings (`telemetry_warnings`), not errors:
they name meshConfig extension providers that a Remora sidecar maps to its own sinks.
"""
from __future__ import annotations

from remora.config.model_policy import TelemetrySpec
from remora.config.schema import Problem, join_path

MATCH_MODES = frozenset({"CLIENT_AND_SERVER", "CLIENT", "SERVER"})
# Access-log providers Remora implements: Istio's built-in `envoy` (text, or the encoding
# of --access-log-format as meshConfig.accessLogEncoding would set it), and two explicit ones.
ACCESS_LOG_PROVIDERS = {"envoy": None, "envoy-text": "text", "envoy-json": "json"}
_SIDES = {"CLIENT_AND_SERVER": ("CLIENT", "SERVER"), "CLIENT": ("CLIENT",), "SERVER": ("SERVER",)}


def mode_sides(mode: str | None) -> tuple[str, ...]:
    """CLIENT (outbound listener), SERVER (inbound listener), or both (unset)."""
    return _SIDES.get(mode or "CLIENT_AND_SERVER", ())


def validate_telemetry(spec: TelemetrySpec, path: str = "spec") -> list[Problem]:
    problems: list[Problem] = []
    if spec.selector is not None:
        for key, value in spec.selector.match_labels.items():
            where = join_path(join_path(f"{path}.selector", "matchLabels"), key)
            if not key:
                problems.append(Problem(where, "label keys must not be empty"))
            if "*" in key or "*" in value:
                problems.append(Problem(where, "wildcards are not allowed in matchLabels"))
    for field, entries in (("tracing", spec.tracing), ("accessLogging", spec.access_logging)):
        taken: dict[str, int] = {}
        for i, entry in enumerate(entries):
            where = f"{path}.{field}[{i}]"
            mode = entry.match.mode if entry.match is not None else None
            if mode is not None and mode not in MATCH_MODES:
                problems.append(Problem(f"{where}.match.mode", f"unknown value {mode!r}; expected one of "
                                        + ", ".join(sorted(MATCH_MODES))))
                continue
            for side in mode_sides(mode):
                if side in taken:
                    problems.append(Problem(f"{where}.match.mode", f"overlaps {field}[{taken[side]}] "
                                            f"for {side} traffic; give each entry its own mode"))
                    break
                taken[side] = i
            for j, provider in enumerate(entry.providers):
                if not provider.name:
                    problems.append(Problem(f"{where}.providers[{j}].name", "must not be empty"))
    problems += _metrics(spec.metrics, f"{path}.metrics")
    for i, tracing in enumerate(spec.tracing):
        pct = tracing.random_sampling_percentage
        if pct is not None and not 0 <= pct <= 100:
            problems.append(Problem(f"{path}.tracing[{i}].randomSamplingPercentage",
                                    f"percentage must be between 0 and 100, got {pct}"))
    return problems


def telemetry_warnings(spec: TelemetrySpec, ref: str, source: str) -> list[str]:
    """What a valid Telemetry asks for that Remora does not do."""
    warnings = []
    for i, entry in enumerate(spec.access_logging):
        for j, provider in enumerate(entry.providers):
            if provider.name and provider.name not in ACCESS_LOG_PROVIDERS:
                warnings.append(f"{ref} in {source}: spec.accessLogging[{i}].providers[{j}]: access-log "
                                f"provider {provider.name!r} is not known to Remora; the sidecar's "
                                f"access log (`envoy`) is used")
    if spec.metrics:
        warnings.append(f"{ref} in {source}: spec.metrics: metric overrides are not applied by Remora yet")
    return warnings


def _metrics(metrics: list, path: str) -> list[Problem]:
    """Istio's CRD rules for `metrics` (not applied by Remora, but held to Istio's validation
    so a file Istio refuses is refused here too): provider names and customMetric non-empty,
    a tag override UPSERT has a value and REMOVE has none."""
    problems: list[Problem] = []
    for i, entry in enumerate(metrics):
        where = f"{path}[{i}]"
        if not isinstance(entry, dict):
            problems.append(Problem(where, "expected a mapping"))
            continue
        for j, provider in enumerate(entry.get("providers") or []):
            if not isinstance(provider, dict) or not isinstance(provider.get("name"), str) or not provider["name"]:
                problems.append(Problem(f"{where}.providers[{j}].name", "must be a non-empty string"))
        for k, override in enumerate(entry.get("overrides") or []):
            at = f"{where}.overrides[{k}]"
            if not isinstance(override, dict):
                problems.append(Problem(at, "expected a mapping"))
                continue
            match = override.get("match")
            if isinstance(match, dict) and "customMetric" in match and not (isinstance(match["customMetric"], str)
                                                                              and match["customMetric"]):
                problems.append(Problem(f"{at}.match.customMetric", "must be a non-empty string"))
            tags = override.get("tagOverrides")
            for tag, rule in (tags.items() if isinstance(tags, dict) else ()):
                tag_at = join_path(f"{at}.tagOverrides", str(tag))
                operation = rule.get("operation", "UPSERT") if isinstance(rule, dict) else None
                if operation == "UPSERT" and not rule.get("value"):
                    problems.append(Problem(f"{tag_at}.value", "value must be set when operation is UPSERT"))
                elif operation == "REMOVE" and rule.get("value") is not None:
                    problems.append(Problem(f"{tag_at}.value", "value must not be set when operation is REMOVE"))
    return problems
