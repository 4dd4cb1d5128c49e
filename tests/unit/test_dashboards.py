"""deploy/grafana/remora-mesh.json and deploy/prometheus/alerts.yaml only use metrics and
labels that Remora's exporter actually renders."""
from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from remora.config.loader import load_mesh_text
from remora.proxy.admin.server import prometheus_text
from remora.proxy.codec.message import RequestHead
from remora.proxy.telemetry.request_info import RequestInfo
from remora.proxy.admin.admin_source import WorkerAdminSource
from remora.proxy.process.worker import ProxyOptions, Worker

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "remora-mesh.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"

MESH = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 9}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy: {outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}}
"""
# Series Prometheus makes itself for every scrape target, and the labels it attaches.
PROMETHEUS_OWN = {"up"}
TARGET_LABELS = {"job", "instance"}
# PromQL words that look like identifiers but are not metric names.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan"}


def _finished(cluster) -> RequestInfo:
    """A finished request's record: all the recorder reads."""
    info = RequestInfo(RequestHead(b"GET", b"/", b"reviews", []), 0.0)
    info.status, info.bytes_received, info.bytes_sent, info.cluster = 200, 1, 1, cluster
    return info


def exported_scrape() -> str:
    """A real scrape: Envoy-style stats plus Istio families, with one request per reporter."""
    async def build() -> str:
        worker = Worker(ProxyOptions(access_log="off", inbound_port=1, app_port=2),
                        load_mesh_text(MESH))
        cluster = next(c for c in worker.snapshot.clusters() if c.name.startswith("outbound"))
        worker.istio.record_outbound(_finished(cluster))
        worker.istio.record_inbound(_finished(None))
        source = WorkerAdminSource(worker, asyncio.Event())
        stats = await source.stats()
        text = prometheus_text(sorted(stats.items()), source.gauge_names().__contains__)
        return text + await source.prometheus_extra()
    return asyncio.run(build())


def exported_names_and_labels() -> tuple[dict[str, str], set[str]]:
    """Family name -> type, and every label name on any sample."""
    text = exported_scrape()
    # Names as the scrape declares them (the parser would drop a counter's _total).
    families = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    labels = {name for family in text_string_to_metric_families(text)
              for sample in family.samples for name in sample.labels}
    return families, labels


def dashboard_expressions() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", ())]
    for var in dash["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def alert_expressions() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def promql_references(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) an expression uses: selectors, by/without/on lists,
    Grafana's label_values(selector, label)."""
    labels: set[str] = set()
    m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", expr, re.S)
    if m:
        expr = m.group(1)
        labels.add(m.group(2))
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)          # string literals
    for group in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        labels.update(n.strip() for n in group.split(",") if n.strip())
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    for body in re.findall(r"\{([^}]*)\}", expr):
        labels.update(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", body))
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)                   # range selectors
    metrics = set()
    for name, call in re.findall(r"(?<![\w.$])([A-Za-z_:][\w:]*)\s*(\()?", expr):
        if not call and name not in KEYWORDS:
            metrics.add(name)
    return metrics, labels


def family_of(name: str, families: dict[str, str]) -> str | None:
    """The exported family a sample name belongs to (histogram suffixes stripped)."""
    if name in families:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if name.endswith(suffix) and families.get(base) == "histogram":
            return base
    return None


def test_dashboard_and_alerts_use_exported_metrics_and_labels():
    """Every metric name and label name in the dashboard and the alert rules is one the
    exporter renders (or one Prometheus adds itself: `up`, job, instance)."""
    families, labels = exported_names_and_labels()
    allowed_labels = labels | TARGET_LABELS | {"le"}
    exprs = dashboard_expressions() + alert_expressions()
    assert len(exprs) >= 10
    used_metrics: set[str] = set()
    for expr in exprs:
        metrics, used_labels = promql_references(expr)
        assert metrics, f"no metric found in {expr!r}"
        for name in metrics:
            assert name in PROMETHEUS_OWN or family_of(name, families), f"{name} is not exported ({expr!r})"
        assert used_labels <= allowed_labels, f"unknown labels {used_labels - allowed_labels} in {expr!r}"
        used_metrics |= metrics
    # The dashboard covers what the issue asks for.
    assert {"istio_requests_total", "istio_request_duration_milliseconds_bucket"} <= used_metrics
    assert {"up", "remora_certificate_expiry_timestamp_seconds"} <= used_metrics


def test_reference_parser_catches_unknown_names():
    """The check above can fail: a misspelt metric or label is reported."""
    metrics, labels = promql_references(
        'histogram_quantile(0.99, sum by (le, dest_svc) (rate(istio_request_duration_ms_bucket'
        '{reporter="destination", code=~"5.."}[5m]))) > 1000')
    assert metrics == {"istio_request_duration_ms_bucket"}
    assert labels == {"le", "dest_svc", "reporter", "code"}
    families, _ = exported_names_and_labels()
    assert family_of("istio_request_duration_ms_bucket", families) is None
    assert family_of("istio_request_duration_milliseconds_bucket", families) == \
        "istio_request_duration_milliseconds"
    assert family_of("istio_requests_total_bucket", families) is None   # not a histogram


def test_alerts_cover_the_required_conditions():
    """The rule file has the four alerts operators need, each with a severity and summary."""
    rules = {r["alert"]: r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    assert set(rules) == {"RemoraHighErrorRate", "RemoraHighLatencyP99", "RemoraSidecarDown",
                          "RemoraCertificateNearExpiry"}
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
