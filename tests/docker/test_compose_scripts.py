"""The compose mesh's start-up path in real containers: control server, token minting, token-started sidecar.

What deploy/docker-compose.yml runs, minus Compose and its network: the same image,
entrypoints and scripts, on the host network and loopback ports, one by one (the whole
mesh under Compose is tests/integration/test_compose_mesh.py).
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile

import pytest

from tests.compose_check import DEFAULT_FILE, load
from tests.docker.docker_env import docker
from tests.docker.test_image import http_status, logs, proxy_has_flag, wait_until
from tests.integration.upstreams import free_port

COMPOSE = load(DEFAULT_FILE, env={})
SERVICES = COMPOSE["services"]
SCRIPTS = DEFAULT_FILE.parent / "compose"


def mounted_script(name: str) -> list[str]:
    return ["-v", f"{SCRIPTS / name}:/etc/remora/compose/{name}:ro"]


@pytest.fixture(scope="module")
def control(remora_image):
    """`remora control` as the compose file runs it, on a loopback port, with the compose mesh config;
    its state volume is a host directory, where the admin token it creates can be read."""
    port = free_port()
    state = tempfile.mkdtemp(prefix="remora-docker-control-state-")
    os.chown(state, 1337, 1337)   # as a fresh named volume the image's uid 1337 writes to
    name = f"remora-docker-test-control-{os.getpid()}"
    command = SERVICES["control"]["command"]
    command = [*command[:command.index("--listen")], "--listen", f"127.0.0.1:{port}",
               *command[command.index("--listen") + 2:]]
    docker("run", "-d", "--name", name, "--network", "host",
           "-v", f"{SCRIPTS / 'mesh'}:/etc/remora/mesh:ro",   # the directory, as compose mounts it
           "-v", f"{state}:/var/lib/remora", remora_image, *command)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_status(f"{url}/healthz")[0] == 200, "the control server's /healthz", name)
        yield {"name": name, "url": url, "state": state}
    finally:
        docker("rm", "-f", name, check=False)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def tokens(remora_image, control):
    """The `tokens` service's script, run once as in compose; returns the tokens directory."""
    directory = tempfile.mkdtemp(prefix="remora-docker-tokens-")
    os.chmod(directory, 0o755)   # as a fresh named volume: root's, and uid 1337 may enter it
    svc = SERVICES["tokens"]
    result = docker("run", "--rm", "--network", "host", "--user", svc["user"],
                    "-e", f"CONTROL={control['url']}", "-e", f"SERVICE_ACCOUNTS={svc['environment']['SERVICE_ACCOUNTS']}",
                    "-e", f"ADMIN_TOKEN_FILE={svc['environment']['ADMIN_TOKEN_FILE']}",
                    "-v", f"{control['state']}:/var/lib/remora:ro",
                    *mounted_script("mint-tokens.sh"), "-v", f"{directory}:/var/run/remora-tokens",
                    "--entrypoint", svc["entrypoint"][0], remora_image, *svc["entrypoint"][1:], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_minted_tokens_belong_to_the_sidecar_uid_and_are_private(tokens):
    """One token file per service account, owned by uid 1337, mode 0400, not empty."""
    for account in SERVICES["tokens"]["environment"]["SERVICE_ACCOUNTS"].split():
        info = os.stat(os.path.join(tokens, account))
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (1337, 1337, 0o400)
        assert info.st_size > 0


def run_sidecar(image: str, control_url: str, tokens_dir: str, account: str, name: str) -> dict:
    ports = {"outbound": free_port(), "admin": free_port(), "prometheus": free_port()}
    # Never the host's :15021 (the default once the health port exists): a free port instead.
    health = ["--health-port", str(free_port())] if proxy_has_flag(image, "--health-port") else []
    svc = SERVICES["reviews-v1-proxy"]
    flags = svc["command"]
    identity = flags[flags.index("--service"):flags.index("--inbound-port")]   # service .. labels
    docker("run", "-d", "--name", name, "--network", "host", "-e", f"SERVICE_ACCOUNT={account}",
           *mounted_script("sidecar.sh"), "-v", f"{tokens_dir}:/var/run/remora-tokens:ro",
           "--entrypoint", svc["entrypoint"][0], image, *svc["entrypoint"][1:],
           "--control", control_url, *identity, "--state-dir", "/var/lib/remora/state",
           "--outbound-port", str(ports["outbound"]), "--admin-port", str(ports["admin"]),
           "--prometheus-port", str(ports["prometheus"]), *health)
    return ports


def test_token_started_sidecar_gets_config_and_its_certificate(remora_image, control, tokens):
    """The sidecar script starts `remora proxy` with the minted token: ready, SPIFFE certificate, registered."""
    name = f"remora-docker-test-reviews-{os.getpid()}"
    try:
        ports = run_sidecar(remora_image, control["url"], tokens, "reviews", name)
        admin = f"http://127.0.0.1:{ports['admin']}"
        wait_until(lambda: http_status(f"{admin}/ready")[0] == 200, "admin /ready (config and certificate)", name)
        status, body = http_status(f"{admin}/certs")
        assert status == 200 and b"spiffe://cluster.local/ns/default/sa/reviews" in body, body
        admin_token = open(os.path.join(control["state"], "control", "admin-token")).read().strip()
        status, body = http_status(f"{control['url']}/v1/status", {"Authorization": f"Bearer {admin_token}"})
        assert status == 200 and b"reviews-v1" in body, logs(control["name"])
    finally:
        docker("rm", "-f", name, check=False)


def test_sidecar_without_a_token_says_so(remora_image, control, tokens):
    """A sidecar whose service account has no minted token exits 1 naming the missing file."""
    name = f"remora-docker-test-notoken-{os.getpid()}"
    try:
        run_sidecar(remora_image, control["url"], tokens, "nobody", name)
        result = docker("wait", name, timeout=60)
        assert result.stdout.strip() == "1"
        assert "no join token at /var/run/remora-tokens/nobody" in logs(name)
    finally:
        docker("rm", "-f", name, check=False)
