"""deploy/docker-compose.yml as the real Compose reads it: Debian's docker-compose (v1, 1.29)
and the `docker compose` plugin (v2) where installed. `config` needs no daemon and no registry."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yml"


def v2_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0


def compose_commands() -> list[list[str]]:
    found = []
    if shutil.which("docker-compose"):
        found.append(["docker-compose"])
    if v2_available():
        found.append(["docker", "compose"])
    return found


COMMANDS = compose_commands()
needs_compose = pytest.mark.skipif(not COMMANDS, reason="no Compose installed (apt-get install docker-compose)")


def config(command: list[str], path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*command, "-f", str(path), *extra, "config", "-q"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={"PATH": "/usr/local/bin:/usr/bin:/bin"})


@needs_compose
def test_every_installed_compose_accepts_the_file():
    """`config -q` exits 0 under each installed Compose, with and without the monitoring profile."""
    for command in COMMANDS:
        for extra in ((), ("--profile", "monitoring")):
            result = config(command, COMPOSE_FILE, *extra)
            assert result.returncode == 0, f"{' '.join(command)} {' '.join(extra)}: {result.stderr}"


@needs_compose
def test_compose_refuses_what_it_cannot_run(tmp_path):
    """The check can fail: an unknown key in a service is refused by each installed Compose (and
    Compose v1 refuses a top-level `name:`, which the Compose Specification allows)."""
    text = COMPOSE_FILE.read_text()
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace("  control:\n", "  control:\n    restartt: always\n", 1))
    for command in COMMANDS:
        assert config(command, broken).returncode != 0, " ".join(command)
    if ["docker-compose"] in COMMANDS:
        named = tmp_path / "named.yml"
        named.write_text("name: remora-demo\n" + text)
        result = config(["docker-compose"], named)
        assert result.returncode != 0 and "'name' does not match" in result.stderr
