"""Which access log and trace sampling apply to this sidecar: flags, then Telemetry resources.

Istio resolves Telemetry resources per workload, narrowest scope last (it wins):

1. mesh-wide: in the root namespace (istio-system), without a selector;
2. namespace-wide: in the workload's namespace, without a selector;
3. workload: in the workload's namespace, whose `selector.matchLabels` are all among the
   sidecar's labels (--labels).

Within one scope several resources would be ambiguous; Istio takes the oldest, Remora (which
has no creation times) the first by name. Each scope overrides only what it sets, per
traffic side: CLIENT is the outbound listener, SERVER the inbound one (`match.mode`). The
flags are the defaults underneath everything: `--access-log` / `--access-log-format` are
the default access-log provider (Istio's meshConfig.accessLogFile / accessLogEncoding),
`--trace-sampling` the default randomSamplingPercentage, and `--otlp-endpoint` the one
tracing provider (spans are reported only when it is set).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from remora.config.mesh_rules import ROOT_NAMESPACE, policy_scopes as scopes  # noqa: F401 (re-exported)
from remora.config.model import Resource
from remora.config.model_policy import TelemetrySpec
from remora.config.validate_telemetry import ACCESS_LOG_PROVIDERS, mode_sides

CLIENT, SERVER = "CLIENT", "SERVER"


@dataclass(frozen=True)
class ListenerTelemetry:
    """What one listener does per request: access-log format and tracing."""

    access_log: str | None = "text"    # "text" | "json" | None (off)
    sampling_percent: float = 1.0      # for requests that arrive without a sampling decision
    report_spans: bool = False         # sampled requests record a span for the exporter

    @property
    def sample_ratio(self) -> float:
        return self.sampling_percent / 100.0


@dataclass(frozen=True)
class TelemetryDefaults:
    """The flags' values."""

    access_log: bool = True            # --access-log stdout (the `envoy` provider is on)
    access_log_format: str = "text"    # --access-log-format
    sampling_percent: float = 1.0      # --trace-sampling
    otlp: bool = False                 # --otlp-endpoint given


def _access_log_format(providers: list[str], default_format: str) -> str:
    for name in providers:
        if name in ACCESS_LOG_PROVIDERS:
            return ACCESS_LOG_PROVIDERS[name] or default_format
    return default_format    # only unknown providers (a load warning said so): envoy's log


def resolve(telemetries: Iterable[Resource[TelemetrySpec]], namespace: str, labels: dict[str, str],
            defaults: TelemetryDefaults) -> dict[str, ListenerTelemetry]:
    """The effective settings for the CLIENT (outbound) and SERVER (inbound) sides."""
    applied = scopes(telemetries, namespace, labels)
    default_log = defaults.access_log_format if defaults.access_log else None
    result = {}
    for side in (CLIENT, SERVER):
        log, percent, reporting = default_log, defaults.sampling_percent, True
        for res in applied:
            for entry in res.spec.access_logging:
                if side not in mode_sides(entry.match.mode if entry.match else None):
                    continue
                if entry.disabled:
                    log = None
                elif entry.providers:
                    log = _access_log_format([p.name for p in entry.providers], defaults.access_log_format)
                else:
                    log = default_log
            for entry in res.spec.tracing:
                if side not in mode_sides(entry.match.mode if entry.match else None):
                    continue
                if entry.random_sampling_percentage is not None:
                    percent = entry.random_sampling_percentage
                if entry.disable_span_reporting is not None:
                    reporting = not entry.disable_span_reporting
        result[side] = ListenerTelemetry(log, percent, reporting and defaults.otlp)
    return result
