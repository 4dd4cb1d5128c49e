"""The Docker side of `make test-docker`: a daemon, the locally made base image, the Remora image.

- Daemon: the running one if `docker info` answers; else, as root with Debian's docker.io
  installed, a `dockerd` started here with `--bridge=none --iptables=false` (the tests use
  the host network only, so the host's firewall is left alone) and stopped at the end.
  Otherwise the tests skip, saying what to install.
- Image: `docker build --network host` of the project's Dockerfile on the base image of
  base_image.py, passing pip's index settings from the environment.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.docker.base_image import BUNDLE_IN_IMAGE

ROOT = Path(__file__).resolve().parents[2]
IMAGE_TAG = "remora:test"
DAEMON_START_TIMEOUT = 60.0
BUILD_TIMEOUT = 1200.0


class DockerUnavailable(Exception):
    """No daemon can be had here; the message says why and what to install."""


def docker(*args: str, timeout: float = 120.0, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run the docker CLI; raise with its stderr when `check` and it fails."""
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])} ... failed ({result.returncode}): {result.stderr.strip()}")
    return result


def daemon_answers() -> bool:
    try:
        return docker("info", "--format", "{{.ServerVersion}}", timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class Daemon:
    """A dockerd this test run started, or None-like when one was already running."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.log_path: str | None = None

    def ensure(self) -> "Daemon":
        if shutil.which("docker") is None:
            raise DockerUnavailable("no docker CLI (apt-get install docker.io)")
        if daemon_answers():
            return self
        if shutil.which("dockerd") is None:
            raise DockerUnavailable("no Docker daemon running and no dockerd to start "
                                    "(as root: apt-get install docker.io)")
        if os.geteuid() != 0:
            raise DockerUnavailable("no Docker daemon running, and starting dockerd needs root")
        fd, self.log_path = tempfile.mkstemp(prefix="remora-dockerd-", suffix=".log")
        self.proc = subprocess.Popen(
            ["dockerd", "--bridge=none", "--iptables=false", "--ip6tables=false"],
            stdout=fd, stderr=fd, stdin=subprocess.DEVNULL)
        os.close(fd)
        deadline = time.monotonic() + DAEMON_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DockerUnavailable(f"dockerd exited {self.proc.returncode}: {self.log_tail()}")
            if daemon_answers():
                return self
            time.sleep(0.5)
        self.stop()
        raise DockerUnavailable(f"dockerd did not answer within {DAEMON_START_TIMEOUT:g}s: {self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except (OSError, TypeError):
            return "(no log)"

    def stop(self) -> None:
        """Stop the dockerd this run started (SIGTERM, then SIGKILL) and remove its log; a
        pre-existing one is left alone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.log_path is not None:
            Path(self.log_path).unlink(missing_ok=True)
            self.log_path = None


def pip_build_args(environ: dict[str, str]) -> list[str]:
    """pip's index settings of this environment as --build-arg flags for the builder stage.

    Local (file://) indexes do not exist inside the build, so they are not passed. A CA bundle
    (PIP_CERT) is passed as the path where base_image.py put this machine's bundle."""
    args = []
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        urls = [u for u in environ.get(name, "").split() if not u.startswith("file:")]
        if urls:
            args += ["--build-arg", f"{name}={' '.join(urls)}"]
    if environ.get("PIP_CERT"):
        args += ["--build-arg", f"PIP_CERT={BUNDLE_IN_IMAGE}"]
    return args


def build_image(base: str, tag: str = IMAGE_TAG) -> float:
    """Build the Dockerfile on `base`; returns the seconds it took."""
    started = time.monotonic()
    # The legacy builder: Debian's docker.io has no buildx plugin, and the Dockerfile needs
    # nothing BuildKit-only. Host network: no bridge here, and pip reaches the registry.
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    result = subprocess.run(
        ["docker", "build", "--network", "host", "--build-arg", f"BASE_IMAGE={base}",
         *pip_build_args(os.environ), "-t", tag, str(ROOT)],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT, env=env)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
        raise RuntimeError(f"docker build failed ({result.returncode}):\n{tail}")
    return time.monotonic() - started
