"""Access log over real sockets: JSON lines carry the trace, and a Telemetry resource
turns logging off for the workloads its selector matches."""
from __future__ import annotations

import json
import time

import pytest

from tests.integration.client import RawClient
from tests.integration.conftest import service
from tests.integration.proxy_process import ProxyProcess

pytestmark = pytest.mark.integration

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"

QUIET_REVIEWS = """apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: quiet-reviews, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  accessLogging:
  - disabled: true
"""


def get(port: int, path: str, headers: dict | None = None):
    client = RawClient(port)
    try:
        return client.request("GET", path, "echo", headers)
    finally:
        client.close()


def wait_log(proxy: ProxyProcess, needle: str, timeout: float = 10.0) -> str:
    deadline = time.time() + timeout
    while True:
        log = proxy.access_log()
        if needle in log or time.time() > deadline:
            return log


def test_json_access_log_carries_trace_and_span_id(upstreams):
    """--access-log-format json: the line has the request's trace id and the proxy's span id
    (the parent the upstream saw)."""
    p = ProxyProcess(service("echo", [(upstreams.ports["echo"], {})]),
                     "--access-log-format", "json").wait_ready()
    try:
        resp = get(p.outbound_port, "/json-trace", {"traceparent": f"00-{TRACE}-{PARENT}-01"})
        upstream_span = resp.json()["headers"]["traceparent"].split("-")[2]
        log = wait_log(p, "/json-trace")
        line = next(json.loads(l) for l in log.splitlines() if "/json-trace" in l)
        assert line["trace_id"] == TRACE
        assert line["span_id"] == upstream_span
        assert line["response_code"] == 200 and line["upstream_cluster"].startswith("outbound|80||echo")
    finally:
        assert p.stop() == 0


def test_telemetry_selector_disables_access_log_for_that_workload_only(upstreams):
    """A Telemetry with selector app=reviews and accessLogging disabled silences the reviews
    sidecar; a ratings sidecar loading the same config keeps logging."""
    mesh = service("echo", [(upstreams.ports["echo"], {})]) + QUIET_REVIEWS
    reviews = ProxyProcess(mesh, "--labels", "app=reviews").wait_ready()
    ratings = ProxyProcess(mesh, "--labels", "app=ratings").wait_ready()
    try:
        assert get(reviews.outbound_port, "/from-reviews").status == 200
        assert get(ratings.outbound_port, "/from-ratings").status == 200
        assert "/from-ratings" in wait_log(ratings, "/from-ratings")
        assert get(reviews.outbound_port, "/from-reviews-2").status == 200
        time.sleep(0.3)
        assert "/from-reviews" not in reviews.access_log()
        dump = json.loads(reviews.admin_get("/config_dump"))
        assert dump["telemetry"]["outbound"]["access_log"] is None
        assert [r["name"] for r in dump["resources"]["Telemetry"]] == ["quiet-reviews"]
    finally:
        assert reviews.stop() == 0
        assert ratings.stop() == 0
