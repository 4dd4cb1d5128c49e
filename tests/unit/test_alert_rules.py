"""deploy/prometheus/alerts.yaml under `promtool test rules` (Debian's `prometheus` package):
each alert fires on the series that should fire it and stays silent on a healthy mesh, right
after start and across certificate rotations."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
ALERT_NAMES = ("RemoraHighErrorRate", "RemoraHighLatencyP99", "RemoraSidecarDown", "RemoraCertificateNearExpiry")
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")

SIDECAR = 'job="remora-sidecars", instance="reviews-v1:15090"'
SERVICE = 'destination_service="reviews.default.svc.cluster.local"'
HOUR = 3600
STEP = 300   # seconds between samples (the scenarios' `interval`)


def requests(code: str, per_second: float, steps: int, step: int = STEP) -> dict:
    """A server-side istio_requests_total counter growing at per_second, one sample per step."""
    return {"series": f'istio_requests_total{{reporter="destination", {SERVICE}, response_code="{code}"}}',
            "values": f"0+{per_second * step:g}x{steps}"}


def latency(le_counts: dict[str, float], steps: int, step: int = STEP) -> list[dict]:
    """Server-side duration buckets, each cumulative bucket growing by its count per second."""
    return [{"series": f'istio_request_duration_milliseconds_bucket{{reporter="destination", {SERVICE}, le="{le}"}}',
             "values": f"0+{rate * step:g}x{steps}"} for le, rate in le_counts.items()]


def certificate(hours: float, lifetime: float, rotate: bool) -> dict:
    """remora_certificate_expiry_timestamp_seconds of a sidecar that got a certificate at t=0 and,
    if rotate, renews it at half its lifetime minus the client's jitter (5%), as remora/certs does."""
    values, expiry = [], lifetime
    for step in range(int(hours * HOUR / STEP) + 1):
        now = step * STEP
        if rotate and expiry - now <= lifetime * 0.55:
            expiry = now + lifetime
        values.append(f"{expiry:g}")
    return {"series": f"remora_certificate_expiry_timestamp_seconds{{{SIDECAR}}}", "values": " ".join(values)}


def healthy_mesh(hours: float, lifetime: float = 24 * HOUR) -> list[dict]:
    """A healthy mesh from its first second: up, 10 req/s with 0.5% 5xx, every request under
    100 ms, certificates renewed on time."""
    steps = int(hours * HOUR / STEP)
    return [{"series": f"up{{{SIDECAR}}}", "values": f"1x{steps}"},
            requests("200", 9.95, steps), requests("503", 0.05, steps),
            *latency({"25": 9.0, "100": 10.0, "+Inf": 10.0}, steps),
            certificate(hours, lifetime, rotate=True)]


def run_promtool(tmp_path: Path, series: list[dict], checks: list[dict], step: int = STEP):
    """`promtool test rules` on one test group of the given series, sampled every step seconds."""
    spec = {"rule_files": [str(ALERTS)], "evaluation_interval": "1m",
            "tests": [{"interval": f"{step}s", "input_series": series, "alert_rule_test": checks}]}
    test_file = tmp_path / "alerts_test.yaml"
    test_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    return subprocess.run([PROMTOOL, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120)


def silent(times: list[str]) -> list[dict]:
    return [{"eval_time": t, "alertname": name, "exp_alerts": []} for t in times for name in ALERT_NAMES]


def assert_passes(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


def test_healthy_mesh_is_silent_from_start_and_across_rotations(tmp_path):
    """No alert fires on a healthy mesh: in its first minutes, around each certificate
    rotation (24 h certificates renewed at about 12 h) and a day and a half later."""
    times = ["1m", "5m", "10m", "30m", "1h", "6h", "11h", "12h", "13h", "18h", "23h", "24h", "25h", "36h"]
    assert_passes(run_promtool(tmp_path, healthy_mesh(37), silent(times)))


def test_short_lived_certificates_rotating_on_time_are_silent(tmp_path):
    """With one-hour certificates (--cert-ttl 1h) renewed at half life, the certificate
    alert stays silent: its threshold follows the lifetime, not a fixed 24 h."""
    assert_passes(run_promtool(tmp_path, [certificate(30, HOUR, rotate=True)],
                               [{"eval_time": t, "alertname": "RemoraCertificateNearExpiry", "exp_alerts": []}
                                for t in ("10m", "40m", "2h", "12h", "29h")]))


def test_certificate_not_rotated_fires_before_expiry(tmp_path):
    """A 24 h certificate that is never renewed: silent while three quarters or more of its
    life is left, then critical once less than a quarter (6 h) is, for 5 minutes."""
    checks = [{"eval_time": "17h", "alertname": "RemoraCertificateNearExpiry", "exp_alerts": []},
              {"eval_time": "18h20m", "alertname": "RemoraCertificateNearExpiry", "exp_alerts": [{
                  "exp_labels": {"severity": "critical", "job": "remora-sidecars", "instance": "reviews-v1:15090"},
                  "exp_annotations": {
                      "summary": "Sidecar reviews-v1:15090: certificate expires in 5h 40m 0s",
                      "description": "The workload certificate is not being rotated (sidecars renew at half its "
                                     "lifetime); less than a quarter of it is left."}}]}]
    assert_passes(run_promtool(tmp_path, [certificate(19, 24 * HOUR, rotate=False)], checks))


def test_sidecar_down_fires_after_a_minute(tmp_path):
    """A sidecar Prometheus cannot scrape (up == 0) is critical after a minute, not before."""
    series = [{"series": f"up{{{SIDECAR}}}", "values": "1 1 0 0 0 0"}]
    checks = [{"eval_time": "10m", "alertname": "RemoraSidecarDown", "exp_alerts": []},
              {"eval_time": "12m", "alertname": "RemoraSidecarDown", "exp_alerts": [{
                  "exp_labels": {"severity": "critical", "job": "remora-sidecars", "instance": "reviews-v1:15090"},
                  "exp_annotations": {"summary": "Sidecar reviews-v1:15090 is down",
                                      "description": "Prometheus has not been able to scrape reviews-v1:15090 "
                                                     "for a minute."}}]}]
    assert_passes(run_promtool(tmp_path, series, checks))


def test_error_rate_fires_above_five_percent_with_traffic(tmp_path):
    """10% 5xx at 10 req/s fires (after its 5 minutes); the same 10% at 0.5 req/s does not."""
    busy = [requests("200", 9.0, 60, 60), requests("503", 1.0, 60, 60)]
    fired = [{"eval_time": "40m", "alertname": "RemoraHighErrorRate", "exp_alerts": [{
        "exp_labels": {"severity": "warning", "destination_service": "reviews.default.svc.cluster.local"},
        "exp_annotations": {
            "summary": "reviews.default.svc.cluster.local: 10% of requests fail with 5xx",
            "description": "Server-side sidecars report more than 5% 5xx answers for "
                           "reviews.default.svc.cluster.local over 5 minutes."}}]}]
    assert_passes(run_promtool(tmp_path, busy, fired, 60))
    quiet = [requests("200", 0.45, 60, 60), requests("503", 0.05, 60, 60)]
    assert_passes(run_promtool(tmp_path, quiet, [{"eval_time": "40m", "alertname": "RemoraHighErrorRate",
                                                  "exp_alerts": []}], 60))


def test_latency_fires_when_p99_is_over_a_second(tmp_path):
    """Every request between 1 s and 2.5 s makes p99 > 1 s: warning after 10 minutes."""
    series = latency({"100": 0.0, "1000": 0.0, "2500": 10.0, "+Inf": 10.0}, 60, 60)
    checks = [{"eval_time": "40m", "alertname": "RemoraHighLatencyP99", "exp_alerts": [{
        "exp_labels": {"severity": "warning", "destination_service": "reviews.default.svc.cluster.local"},
        "exp_annotations": {"summary": "reviews.default.svc.cluster.local: p99 latency 2.485k ms",
                            "description": "The 99th percentile of request duration for "
                                           "reviews.default.svc.cluster.local has been above 1 s for 10 minutes."}}]}]
    assert_passes(run_promtool(tmp_path, series, checks, 60))


def test_every_alert_has_a_firing_test():
    """Each alert in the rule file is one this module fires (a new alert needs a test here)."""
    rules = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    assert rules == set(ALERT_NAMES)
