"""Readiness: the health port (15021) answers 200 only once config and certificate are there,
`remora wait` holds an app's start until then, and each listener sits on its own bind address.

Real processes on loopback: a control server (config and CA) that is down when the sidecar
starts and comes up later, a sidecar with --token, `remora wait` as an app's entrypoint runs it.
"""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.integration.conftest import service
from tests.integration.control_process import ControlProcess
from tests.integration.proxy_process import ProxyProcess
from tests.integration.upstreams import free_port

pytestmark = pytest.mark.integration

TIMEOUT = 60.0   # generous: a busy 2-core machine, and the certificate request backs off


def get(url: str) -> tuple[int | None, str]:
    """Status and body, or (None, error) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return None, str(error)


def remora_wait(*args: str, timeout: float = TIMEOUT + 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "remora", "wait", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_health_is_503_until_config_and_certificate_then_wait_lets_the_app_start(upstreams):
    """With the control server down the health port says 503 and why (config, certificate) and
    `remora wait` exits 1 with that reason; once the server is up it gets both, the health port
    answers 200 and `remora wait` exits 0."""
    control = ControlProcess({"mesh.yaml": service("echo", [(upstreams.ports["echo"], {})])}).wait_ready()
    created = control.cli("token", "create", "--namespace", "shop", "--service-account", "cart")
    assert created.returncode == 0, created.stderr
    token = created.stdout.splitlines()[-1]
    assert control.stop() == 0, control.stderr()
    p = ProxyProcess(None, "--token", token, "--namespace", "shop", "--service-account", "cart",
                     "--access-log", "off", "--drain-seconds", "1", control=control.url,
                     health_port=free_port()).wait_admin(TIMEOUT)
    health = f"http://127.0.0.1:{p.health_port}/healthz/ready"
    try:
        status, body = get(health)
        assert status == 503
        assert body.startswith("PRE_INITIALIZING\n")
        assert "waiting for the first configuration from the control server" in body
        assert "waiting for the workload certificate" in body
        early = remora_wait("--health", health, "--timeout", "1s", "--interval", "0.2s")
        assert early.returncode == 1
        assert early.stderr.startswith("remora wait: not ready after 1s: HTTP 503: PRE_INITIALIZING; waiting for")
        control.start_again()
        ready = remora_wait("--health", health, "--timeout", f"{TIMEOUT:g}s")
        assert ready.returncode == 0, (ready.stderr, p.stderr())
        assert get(health) == (200, "LIVE\n")
        assert get(p.admin("/ready")) == (200, "LIVE\n")
    finally:
        assert p.stop() == 0, p.stderr()
        control.stop()


def test_health_and_prometheus_have_their_own_bind_addresses(upstreams):
    """--health-bind and --prometheus-bind put those listeners on another address than admin
    (the injected sidecar: admin on loopback only); the health port serves no admin path."""
    health_port, prometheus_port = free_port(), free_port()
    p = ProxyProcess(service("echo", [(upstreams.ports["echo"], {})]), "--access-log", "off",
                     "--health-bind", "127.0.0.2", "--prometheus-bind", "127.0.0.2",
                     health_port=health_port, prometheus_port=prometheus_port).wait_ready()
    try:
        assert get(f"http://127.0.0.2:{health_port}/healthz/ready") == (200, "LIVE\n")
        status, text = get(f"http://127.0.0.2:{prometheus_port}/stats/prometheus")
        assert status == 200 and "envoy_server_live" in text
        assert get(f"http://127.0.0.1:{health_port}/healthz/ready")[0] is None   # not on admin's address
        assert get(f"http://127.0.0.1:{prometheus_port}/stats/prometheus")[0] is None
        assert get(f"http://127.0.0.2:{p.admin_port}/ready")[0] is None          # admin stays on 127.0.0.1
        assert get(f"http://127.0.0.2:{health_port}/stats")[0] == 404
        assert f"health 127.0.0.2:{health_port}" in p.stderr()
    finally:
        assert p.stop() == 0, p.stderr()


def test_health_port_taken_is_a_clear_start_error(upstreams):
    """A health port already in use stops the start with an error naming the address."""
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = ProxyProcess(service("echo", [(upstreams.ports["echo"], {})]), health_port=port)
        assert p.proc.wait(30) == 1
        assert "cannot start" in p.stderr() and str(port) in p.stderr()


def post(url: str) -> tuple[int | None, str]:
    """POST with no body: status and body."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.mark.parametrize("workers", [1, 2])
def test_healthcheck_fail_takes_the_pod_out_of_rotation_and_keeps_serving(upstreams, workers):
    """POST /healthcheck/fail (Envoy's) turns /ready, the health port and server.live to
    DRAINING/503/0 while requests still go through; /server_info says DRAINING; POST
    /healthcheck/ok brings it back. With --workers 2 the supervisor's admin holds the flag."""
    from tests.integration.client import RawClient

    p = ProxyProcess(service("echo", [(upstreams.ports["echo"], {})]), "--access-log", "off",
                     "--workers", str(workers), health_port=free_port()).wait_ready()
    health = f"http://127.0.0.1:{p.health_port}/healthz/ready"
    try:
        info = json.loads(p.admin_get("/server_info"))
        assert info["state"] == "LIVE" and info["command_line_options"]["concurrency"] == workers
        assert post(p.admin("/healthcheck/fail")) == (200, "OK\n")
        assert get(health)[0] == 503 and get(p.admin("/ready"))[1].startswith("DRAINING\n")
        assert "server.live: 0\n" in p.admin_get("/stats?filter=^server.live$")
        assert json.loads(p.admin_get("/server_info"))["state"] == "DRAINING"
        assert RawClient(p.outbound_port).request("GET", "/still", "echo").status == 200
        assert post(p.admin("/healthcheck/ok")) == (200, "OK\n")
        assert get(health) == (200, "LIVE\n")
        assert "server.live: 1\n" in p.admin_get("/stats?filter=^server.live$")
    finally:
        assert p.stop() == 0, p.stderr()


@pytest.mark.parametrize("workers", [1, 2])
def test_listeners_lists_every_listener_with_its_address(upstreams, workers):
    """GET /listeners names each listener with the address it accepts on (Envoy's
    name::address lines; ?format=json gives listener_statuses with socket addresses)."""
    app_port = upstreams.ports["echo"]
    p = ProxyProcess(service("echo", [(app_port, {})]), "--access-log", "off", "--workers", str(workers),
                     inbound_app_port=app_port).wait_ready()
    try:
        lines = p.admin_get("/listeners").splitlines()
        assert f"outbound::127.0.0.1:{p.outbound_port}" in lines, lines
        assert any(line.endswith(f"127.0.0.1:{p.inbound_port}") for line in lines), lines
        statuses = json.loads(p.admin_get("/listeners?format=json"))["listener_statuses"]
        ports = {s["local_address"]["socket_address"]["port_value"] for s in statuses}
        assert {p.outbound_port, p.inbound_port} <= ports
    finally:
        assert p.stop() == 0, p.stderr()


@pytest.mark.parametrize("workers", [1, 2])
def test_reset_counters_usedonly_and_memory(upstreams, workers):
    """POST /reset_counters makes counters read from zero (gauges untouched) and they count on
    from there; ?usedonly hides zero stats; GET /memory gives the workers' resident bytes."""
    from tests.integration.client import RawClient

    p = ProxyProcess(service("echo", [(upstreams.ports["echo"], {})]), "--access-log", "off",
                     "--workers", str(workers), prometheus_port=free_port()).wait_ready()
    total = "http.outbound.downstream_rq_total"

    def stat(name: str) -> int:
        return json.loads(p.admin_get(f"/stats?format=json&filter=^{name}$"))["stats"][0]["value"]
    try:
        for _ in range(3):
            assert RawClient(p.outbound_port).request("GET", "/", "echo").status == 200
        assert stat(total) == 3
        assert post(p.admin("/reset_counters")) == (200, "OK\n")
        assert get(p.admin("/reset_counters"))[0] == 405
        assert stat(total) == 0 and stat("server.live") == 1 and stat("server.concurrency") == workers
        zero = "envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix=\"outbound\"} 0\n"
        assert zero in p.admin_get("/stats/prometheus")
        assert zero in get(f"http://127.0.0.1:{p.prometheus_port}/stats/prometheus")[1]   # the scrape port too
        used = p.admin_get("/stats?usedonly")
        assert f"{total}:" not in used and "server.live: 1\n" in used
        assert RawClient(p.outbound_port).request("GET", "/", "echo").status == 200
        assert stat(total) == 1 and f"{total}: 1\n" in p.admin_get("/stats?usedonly")
        memory = json.loads(p.admin_get("/memory"))
        resident = int(memory["total_physical_bytes"])
        assert 10 * 2**20 * workers < resident < 500 * 2**20 * workers, memory
        assert int(memory["heap_size"]) > 0
        assert stat("server.memory_physical_size") > 0
    finally:
        assert p.stop() == 0, p.stderr()
