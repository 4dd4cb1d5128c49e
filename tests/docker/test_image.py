"""The container image: built on a local base, it runs the sidecar as uid 1337, gets ready and proxies.

The sidecar container uses the host network on free loopback ports, so it reaches an
upstream that this test serves on 127.0.0.1, and the test reaches its listeners.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request

import pytest
from aiohttp import web

from remora.kube.annotations import TrafficCapture
from remora.kube.sidecar import iptables_args
from tests.docker.docker_env import docker
from tests.integration.upstreams import LoopThread, free_port, make_echo_app

READY_TIMEOUT = 90.0   # a busy 2-core machine: Python start-up in a fresh container is slow


class EchoUpstream(LoopThread):
    name = "echo upstream"

    async def _start(self) -> None:
        runner = web.AppRunner(make_echo_app("in-docker-test"), access_log=None)
        await runner.setup()
        self.port = free_port()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()


def http_status(url: str, headers: dict[str, str] | None = None) -> tuple[int | None, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return None, b""


def wait_until(predicate, what: str, container: str, timeout: float = READY_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        state = inspect(container)["State"]
        if not state["Running"]:
            pytest.fail(f"container exited {state['ExitCode']} while waiting for {what}:\n{logs(container)}")
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}:\n{logs(container)}")


def inspect(what: str) -> dict:
    return json.loads(docker("inspect", what).stdout)[0]


def logs(container: str) -> str:
    result = docker("logs", "--tail", "30", container, check=False)
    return (result.stdout + result.stderr)[-4000:]


@functools.lru_cache(maxsize=None)
def image_has(image: str, *command: str) -> bool:
    """Whether `remora <command> --help` works in the image (a subcommand or flag exists)."""
    result = docker("run", "--rm", "--network", "none", image, *command, "--help", check=False)
    return result.returncode == 0


@functools.lru_cache(maxsize=None)
def proxy_has_flag(image: str, flag: str) -> bool:
    result = docker("run", "--rm", "--network", "none", image, "proxy", "--help", check=False)
    return flag in result.stdout


@pytest.fixture(scope="module")
def upstream():
    server = EchoUpstream().start()
    yield server
    server.loop.call_soon_threadsafe(server.loop.stop)


@pytest.fixture(scope="module")
def sidecar(remora_image, upstream):
    """`remora proxy` in the image, host network, a mesh config with the upstream mounted read-only."""
    config_dir = tempfile.mkdtemp(prefix="remora-docker-test-")
    os.chmod(config_dir, 0o755)   # read by uid 1337 in the container
    with open(os.path.join(config_dir, "mesh.yaml"), "w") as f:
        f.write(f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo}}
spec:
  hosts: [echo]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {upstream.port}}}}}]
""")
    os.chmod(os.path.join(config_dir, "mesh.yaml"), 0o644)
    ports = {"outbound": free_port(), "admin": free_port(), "prometheus": free_port(), "health": free_port()}
    health = proxy_has_flag(remora_image, "--health-port")
    name = f"remora-docker-test-{os.getpid()}"
    args = ["run", "-d", "--name", name, "--network", "host", "-v", f"{config_dir}:/etc/remora:ro",
            "--health-interval", "1s", "--health-start-period", "1s", "--health-timeout", "3s"]
    proxy = ["proxy", "--mesh-config", "/etc/remora/mesh.yaml", "--outbound-port", str(ports["outbound"]),
             "--admin-port", str(ports["admin"]), "--prometheus-port", str(ports["prometheus"])]
    if health:
        args += ["-e", f"REMORA_HEALTH_PORT={ports['health']}"]
        proxy += ["--health-port", str(ports["health"])]
    docker(*args, remora_image, *proxy)
    try:
        yield {"name": name, "ports": ports, "health": health, "image": remora_image}
    finally:
        docker("rm", "-f", name, check=False)
        shutil.rmtree(config_dir, ignore_errors=True)


def test_image_metadata_is_the_contract(remora_image):
    """Entrypoint remora, user 1337:1337, Istio's ports exposed, HEALTHCHECK on /healthz/ready."""
    config = inspect(remora_image)["Config"]
    assert config["Entrypoint"] == ["remora"]
    assert config["User"] == "1337:1337"
    assert set(config["ExposedPorts"]) == {f"{p}/tcp" for p in (15000, 15001, 15006, 15021, 15090)}
    assert "/healthz/ready" in " ".join(config["Healthcheck"]["Test"])


def test_image_has_iptables_for_the_init_step(remora_image):
    """As root, the image runs iptables (the `remora iptables` init step needs it)."""
    result = docker("run", "--rm", "--network", "none", "--user", "0:0", "--entrypoint", "iptables",
                    remora_image, "--version", check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("iptables v")


def test_remora_iptables_dry_run_takes_the_contract_flags(remora_image):
    """`remora iptables --dry-run` with the init container's flags prints rules (once interception is merged)."""
    if not image_has(remora_image, "iptables"):
        pytest.skip("`remora iptables` is not in this build yet (the interception work adds it)")
    result = docker("run", "--rm", "--network", "none", "--user", "0:0", "--cap-add", "NET_ADMIN",
                    remora_image, *iptables_args(TrafficCapture()), "--dry-run", check=False)
    assert result.returncode == 0, result.stderr
    assert "15001" in result.stdout and "15006" in result.stdout


def test_remora_iptables_installs_capture_rules_in_a_container_namespace(remora_image):
    """As the init step runs it (root, NET_ADMIN/NET_RAW, its own namespace), `remora iptables` adds nat rules."""
    if not image_has(remora_image, "iptables"):
        pytest.skip("`remora iptables` is not in this build yet (the interception work adds it)")
    script = f"remora {' '.join(repr(a) for a in iptables_args(TrafficCapture()))} && iptables-save -t nat"
    result = docker("run", "--rm", "--network", "none", "--user", "0:0", "--cap-add", "NET_ADMIN",
                    "--cap-add", "NET_RAW", "--entrypoint", "/bin/sh", remora_image, "-c", script, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "REDIRECT" in result.stdout and "--to-ports 15001" in result.stdout
    assert "--uid-owner 1337" in result.stdout


def test_sidecar_becomes_ready(sidecar):
    """The sidecar in the container answers admin /ready with 200 once its config is loaded."""
    admin = f"http://127.0.0.1:{sidecar['ports']['admin']}/ready"
    wait_until(lambda: http_status(admin)[0] == 200, "admin /ready", sidecar["name"])


def test_sidecar_proxies_to_an_upstream_on_the_host(sidecar):
    """A request to the outbound listener with Host: echo reaches the test's upstream on 127.0.0.1."""
    test_sidecar_becomes_ready(sidecar)
    status, body = http_status(f"http://127.0.0.1:{sidecar['ports']['outbound']}/hello",
                               headers={"Host": "echo"})
    assert status == 200, body
    answer = json.loads(body)
    assert answer["server"] == "in-docker-test" and answer["path"] == "/hello"


def test_sidecar_process_runs_as_uid_1337(sidecar):
    """The container's main process (the proxy) has real and effective uid and gid 1337."""
    test_sidecar_becomes_ready(sidecar)
    pid = inspect(sidecar["name"])["State"]["Pid"]
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    assert status["Uid"].split()[:2] == ["1337", "1337"]
    assert status["Gid"].split()[:2] == ["1337", "1337"]


def test_healthcheck_reports_healthy(sidecar):
    """Docker runs the image's HEALTHCHECK against the health port and reports the container healthy."""
    if not sidecar["health"]:
        pytest.skip("`remora proxy --health-port` is not in this build yet (the readiness work adds "
                    "port 15021 /healthz/ready); readiness was checked on admin /ready")
    wait_until(lambda: inspect(sidecar["name"])["State"]["Health"]["Status"] == "healthy",
               "the HEALTHCHECK to report healthy", sidecar["name"])


def test_sidecar_stops_cleanly_on_docker_stop(sidecar):
    """`docker stop` (SIGTERM to the proxy as PID 1) ends it with exit code 0, not by SIGKILL."""
    test_sidecar_becomes_ready(sidecar)
    docker("stop", "--time", "60", sidecar["name"], timeout=120)
    state = inspect(sidecar["name"])["State"]
    assert (state["Running"], state["ExitCode"], state["OOMKilled"]) == (False, 0, False), logs(sidecar["name"])
