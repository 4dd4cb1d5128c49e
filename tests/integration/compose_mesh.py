"""deploy/docker-compose.yml brought up for real by a test: one project, and everything it made.

- Project name, image tag and host ports are the test's own (COMPOSE_PROJECT_NAME,
  REMORA_IMAGE, REMORA_CONTROL_PORT, REMORA_PRODUCTPAGE_PORT, REMORA_INGRESS_PORT), so a run
  never touches a user's `remora-demo` project or `remora:latest`, and never needs 9080,
  8080 or 15010 free.
- The base image is the compose file's default, remora-base:bookworm: an existing one is
  used; else the suite's remora-base:test is tagged as it; else it is made with debootstrap
  (base_image.py). Whatever the run made (that tag, the built image, the build's
  intermediate images) is removed at the end, with the containers, network and volumes.
- Commands are the documented ones (docs/containers.md), run with the compose command
  under test (v1 `docker-compose`, v2 `docker compose`) from a copy of the checkout, so the
  test can edit the bind-mounted config directory as a user would, without touching the
  checkout.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.docker.base_image import BASE_TAG, ensure_base_image, image_exists
from tests.docker.docker_env import BUNDLE_IN_IMAGE, docker
from tests.integration.upstreams import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = "deploy/docker-compose.yml"
COMPOSE_BASE = "remora-base:bookworm"
UP_TIMEOUT = 1500.0   # a first build downloads the wheels


def compose_commands() -> list[list[str]]:
    """The Compose implementations installed here: v1 and, where present, v2."""
    found = []
    if subprocess.run(["sh", "-c", "command -v docker-compose"], capture_output=True).returncode == 0:
        found.append(["docker-compose"])
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        found.append(["docker", "compose"])
    return found


def copy_checkout(target: Path) -> Path:
    """What compose needs of the checkout (build context, deploy/, examples/), copied."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, target / name)
    junk = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("remora", "deploy", "examples"):
        shutil.copytree(ROOT / name, target / name, ignore=junk)
    return target


def all_image_ids() -> set[str]:
    return set(docker("images", "-a", "-q", "--no-trunc").stdout.split())


def provide_base_image() -> list[str]:
    """Make COMPOSE_BASE exist; returns the tags this made (to remove at the end)."""
    if image_exists(COMPOSE_BASE):
        return []
    if image_exists(BASE_TAG):   # the same debootstrap image, made by make test-docker
        docker("tag", BASE_TAG, COMPOSE_BASE)
    else:
        ensure_base_image(COMPOSE_BASE)
    return [COMPOSE_BASE]


class ComposeMesh:
    """One compose project of the demo mesh, driven with the documented commands."""

    def __init__(self, command: list[str], root: Path = ROOT) -> None:
        self.command = command
        self.root = root
        self.project = f"remora-test-{os.getpid()}-{len(command)}"
        self.image = f"remora-compose-test:{os.getpid()}"
        self.control_port, self.productpage_port, self.ingress_port = free_port(), free_port(), free_port()
        self.env = {**os.environ, "COMPOSE_PROJECT_NAME": self.project, "REMORA_IMAGE": self.image,
                    "REMORA_CONTROL_PORT": str(self.control_port),
                    "REMORA_PRODUCTPAGE_PORT": str(self.productpage_port),
                    "REMORA_INGRESS_PORT": str(self.ingress_port)}
        if os.environ.get("PIP_CERT"):   # this machine's bundle, which the base image carries there
            self.env["REMORA_PIP_CERT"] = BUNDLE_IN_IMAGE
        for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):   # a file:// index is not in the build
            if self.env.get(name, "").startswith("file:"):
                self.env.pop(name)
        self.env.pop("REMORA_ADMIN_TOKEN", None)
        self.control = f"http://127.0.0.1:{self.control_port}"

    def compose(self, *args: str, timeout: float = 300.0, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.command, "-f", COMPOSE_FILE, *args], cwd=self.root, env=self.env,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(self.command)} {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n{self.logs()}")
        return result

    def logs(self) -> str:
        try:
            result = subprocess.run([*self.command, "-f", COMPOSE_FILE, "logs", "--no-color", "--tail", "15"],
                                    cwd=self.root, env=self.env, capture_output=True, text=True, timeout=120)
            return result.stdout[-8000:]
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"(no logs: {error})"

    def remora(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
        """The host's `remora` CLI (this checkout) against the published control server."""
        env = {**self.env, "PYTHONPATH": str(ROOT), "REMORA_CONTROL": self.control}
        if token:
            env["REMORA_ADMIN_TOKEN"] = token
        return subprocess.run([sys.executable, "-m", "remora", *args], cwd=self.root, env=env,
                              capture_output=True, text=True, timeout=60)

    def productpage(self, headers: dict[str, str] | None = None, ingress: bool = False) -> dict:
        """productpage's API, through its sidecar (its published port) or the ingress gateway."""
        port = self.ingress_port if ingress else self.productpage_port
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/productpage",
                                         headers=headers or {})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def wait_productpage(self, timeout: float = 240.0) -> dict:
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                return self.productpage()
            except (OSError, urllib.error.URLError, ValueError) as error:
                last = error
                time.sleep(1)
        raise AssertionError(f"productpage did not answer within {timeout:g}s ({last}):\n{self.logs()}")

    def versions(self, count: int) -> list[str]:
        return [self.productpage()["reviews_version"] for _ in range(count)]

    def sidecar_metrics(self, pod: str) -> str:
        """A sidecar's :15090/stats/prometheus, read inside its pod (the port is not published)."""
        return self.compose("exec", "-T", f"{pod}-proxy", "python3", "-c",
                            "import urllib.request as u; print(u.urlopen("
                            "'http://127.0.0.1:15090/stats/prometheus', timeout=5).read().decode())").stdout

    def leftovers(self) -> list[str]:
        """Containers, networks and volumes still labelled with this project."""
        label = f"label=com.docker.compose.project={self.project}"
        found = []
        for what in (["ps", "-a"], ["network", "ls"], ["volume", "ls"]):
            names = docker(*what, "--filter", label, "--format", "{{.Names}}" if what[0] == "ps" else "{{.Name}}").stdout
            found += [f"{what[0]} {name}" for name in names.split()]
        return found

    def down(self) -> None:
        """`down -v --rmi all`: containers, network, volumes and the built image."""
        self.compose("down", "-v", "--rmi", "all", "--remove-orphans", timeout=300, check=False)
