"""The Grafana dashboard and the alert rules against a real sidecar's scrape: every metric they
query is a family a running `remora proxy` serves on its Prometheus port."""
from __future__ import annotations

import re
import urllib.request

from tests.integration.proxy_process import ProxyProcess
from tests.integration.upstreams import free_port
from tests.unit.test_dashboards import (
    MESH, PROMETHEUS_OWN, alert_expressions, dashboard_expressions, family_of, promql_references,
)


def test_every_dashboard_and_alert_metric_is_in_a_live_scrape():
    """A sidecar with the dashboard test's mesh (outlier detection on), after one request,
    serves every metric family the dashboard and the alerts use on :15090/stats/prometheus."""
    port = free_port()
    proxy = ProxyProcess(MESH, prometheus_port=port).wait_ready()
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{proxy.outbound_port}/", headers={"Host": "reviews:9080"})
        try:
            urllib.request.urlopen(request, timeout=10).read()
        except OSError:
            pass   # the endpoint refuses (port 9): a 503 is still a request the metrics count
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats/prometheus", timeout=10) as response:
            scrape = response.read().decode()
    finally:
        assert proxy.stop() == 0
    families = dict(re.findall(r"^# TYPE (\S+) (\S+)$", scrape, re.M))
    assert 'istio_requests_total{' in scrape   # the request was counted, not only declared
    missing = {}
    for expr in dashboard_expressions() + alert_expressions():
        metrics, _ = promql_references(expr)
        for name in metrics - PROMETHEUS_OWN:
            if family_of(name, families) is None:
                missing.setdefault(name, expr)
    assert not missing, f"not in a live scrape: {missing}"
