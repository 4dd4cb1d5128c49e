"""The control server's Prometheus metrics (prometheus-client, one registry per server).

Names follow Istio's pilot metrics where one exists, under the `remora_control_` prefix:
pilot_xds -> connected_sidecars, pilot_xds_pushes -> pushes_total, pilot_proxy_convergence_time
-> push_latency_seconds (time from the config change to the sidecar's ACK),
pilot_total_xds_rejects -> nacks_total; the CA's follow Istio's citadel_server_* metrics
(csr_sign_err_count -> ca_errors_total{reason}, root_cert_expiry_timestamp -> ca_cert_expiry_timestamp_seconds).
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

# From 10 ms to 30 s: a debounced push on loopback lands in the 100 ms-1 s buckets.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)


class ControlMetrics:
    """Every metric the control server exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connected = Gauge("remora_control_connected_sidecars", "Sidecars with a live stream", registry=r)
        self.pushes = Counter("remora_control_pushes", "Discovery responses sent, by type", ["type"], registry=r)
        self.push_latency = Histogram(
            "remora_control_push_latency_seconds",
            "Time from a config change to the sidecar's ACK of the version it produced, by type",
            ["type"], buckets=LATENCY_BUCKETS, registry=r)
        self.nacks = Counter("remora_control_nacks", "Discovery responses a sidecar refused, by type",
                             ["type"], registry=r)
        self.config_errors = Counter("remora_control_config_errors",
                                     "Config changes rejected by validation, by where they came from",
                                     ["source"], registry=r)
        self.config_info = Gauge("remora_control_config_info", "The config version in force (value 1)",
                                 ["version"], registry=r)
        self.injections = Counter("remora_control_injections", "Admission reviews the injection webhook "
                                  "answered, by result (injected, skipped, refused, invalid)", ["result"], registry=r)
        self.certificates_issued = Counter("remora_control_certificates_issued",
                                           "Workload certificates (SVIDs) signed", registry=r)
        self.ca_errors = Counter("remora_control_ca_errors",
                                 "Certificate and token requests refused, by reason", ["reason"], registry=r)
        self.ca_expiry = Gauge("remora_control_ca_cert_expiry_timestamp_seconds",
                               "When the CA's certificate chain expires (Unix time); no SVID outlives it",
                               registry=r)
        self.unauthorized = Counter("remora_control_unauthorized",
                                    "Admin API requests refused for a missing, malformed or wrong admin token",
                                    ["endpoint", "reason"], registry=r)
        # istiod's pilot_jwks_resolver_network_fetch_{success,fail}_total
        self.jwks_fetch_success = Counter("remora_control_jwks_resolver_network_fetch_success",
                                          "jwksUri / OpenID discovery fetches that returned usable keys", registry=r)
        self.jwks_fetch_fail = Counter("remora_control_jwks_resolver_network_fetch_fail",
                                       "jwksUri / OpenID discovery fetches that failed (last good keys kept)",
                                       registry=r)
        # `--kubernetes` (kube/list_watch.py): the watches' events, LISTs and failures, by kind.
        self.kube_watch_events = Counter("remora_control_kube_watch_events",
                                         "Watch events from the Kubernetes API, by kind and type "
                                         "(ADDED, MODIFIED, DELETED, BOOKMARK)", ["kind", "type"], registry=r)
        self.kube_relists = Counter("remora_control_kube_relists", "Full LISTs of a kind, by reason "
                                    "(start; gone: the watch position expired, 410)", ["kind", "reason"], registry=r)
        self.kube_watch_errors = Counter("remora_control_kube_watch_errors", "Failed LISTs and WATCHes "
                                         "(retried with backoff), by kind and reason", ["kind", "reason"], registry=r)
        self._version: str | None = None

    def set_version(self, version: str) -> None:
        if version != self._version:
            if self._version is not None:
                self.config_info.remove(self._version)
            self.config_info.labels(version).set(1)
            self._version = version

    def render(self) -> bytes:
        return generate_latest(self.registry)
