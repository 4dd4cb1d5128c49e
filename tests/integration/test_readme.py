"""README.md as a new user runs it: the quick tour and the control-server section run as written
(in a network namespace of their own, so Istio's fixed ports are free); the setup and compose
blocks are checked line by line against a list kept here."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from remora.cli import build_parser
from tests.integration.readme_blocks import README, ROOT, Block, blocks, commands, to_shell

RUN_TIMEOUT = 240.0
# Commands of the setup and compose blocks that the loopback tests do not run, with why; the
# test below fails when the README and this list disagree. (The compose block's own commands
# run for real in test_compose_mesh.py, where a Docker daemon can be had.)
NOT_RUN_HERE = {
    "make": "installs .venv (the test runs the checkout's remora instead)",
    "make demo": "runs until interrupted (tests/integration/test_demo.py covers it)",
    "make test": "this suite",
    "make base-image": "debootstrap and dockerd (make test-docker)",
    "make compose-check": "tests/unit/test_compose_cli.py",
    "make test-docker": "tests/docker",
}


def by_name(name: str) -> list[Block]:
    found = [b for b in blocks() if b.name == name]
    assert found, f"README.md has no block marked `README test: {name}`"
    return found


def netns_ready() -> str | None:
    """Why the README cannot run in a private network namespace here, or None."""
    if os.geteuid() != 0:
        return "needs root for a private network namespace (unshare --net)"
    for tool in ("unshare", "ip", "curl"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True)
    return None if probe.returncode == 0 else f"unshare --net failed: {probe.stderr.decode().strip()}"


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A fresh directory as a user's clone looks to the README: examples/ and deploy/ of the
    checkout, and .venv/bin/remora (the checkout's remora) where `make` would put it."""
    for name in ("examples", "deploy"):
        (tmp_path / name).symlink_to(ROOT / name)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "remora").write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m remora \"$@\"\n")
    (bin_dir / "remora").chmod(0o755)
    return tmp_path


def setup_lines() -> str:
    """The setup block's lines that put remora on PATH (the rest is in NOT_RUN_HERE)."""
    (setup,) = by_name("setup")
    return "".join(f"{command}\n" for _, command in commands(setup)
                   if command.split("#")[0].strip() not in NOT_RUN_HERE)


def run_in_netns(workdir: Path, script: str) -> subprocess.CompletedProcess:
    """bash -c script in a new network namespace (loopback up), every background job killed at
    the end; the whole process group is killed if it overruns."""
    wrapped = ("set -euo pipefail\n"
               "trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true' EXIT\n"
               "ip link set lo up\n" + script)
    env = {k: v for k, v in os.environ.items() if k not in ("REMORA_ADMIN_TOKEN", "REMORA_CONTROL", "REMORA_TOKEN")}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    proc = subprocess.Popen(["unshare", "--net", "bash", "-c", wrapped], cwd=workdir, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"README block still running after {RUN_TIMEOUT:g}s:\n{out[-3000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_blocks(workdir: Path, name: str) -> subprocess.CompletedProcess:
    script = setup_lines()
    for block in by_name(name):
        if block.file:
            (workdir / block.file).write_text(block.text)
        else:
            script += to_shell(block)
    result = run_in_netns(workdir, script)
    assert result.returncode == 0, f"README `{name}` failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.mark.skipif(netns_ready() is not None, reason=str(netns_ready()))
def test_quick_tour_runs_as_written(workdir):
    """The quick tour (mesh.yaml, stand-in versions, a sidecar, the curl lines) runs as written
    and every `# =>` output it shows is what the commands print."""
    result = run_blocks(workdir, "quick-tour")
    assert "reviews v2" in result.stdout and "LIVE" in result.stdout


@pytest.mark.skipif(netns_ready() is not None, reason=str(netns_ready()))
def test_control_server_section_runs_as_written(workdir):
    """The control-server section runs as written: apply over the config directory, get, delete,
    a file edit with sed -i taking effect, a sidecar joining with a token, status and proxy-config."""
    sidecar_state = Path(tempfile.gettempdir()) / "remora-proxy-default-reviews-v1-15000"
    try:
        result = run_blocks(workdir, "control")
    finally:
        shutil.rmtree(sidecar_state, ignore_errors=True)   # the sidecar's default --state-dir
    assert "SYNCED" in result.stdout
    assert "weight: 70" in (workdir / "mesh" / "reviews-route.yaml").read_text()


def test_not_run_list_matches_the_readme():
    """Every setup/compose line either runs in a test, is checked below, or is in NOT_RUN_HERE
    with its reason; and every NOT_RUN_HERE entry is still in the README."""
    lines = [c.split("#")[0].strip() for name in ("setup", "compose") for b in by_name(name) for _, c in commands(b)]
    make_lines = {line for line in lines if line.startswith("make")}
    assert make_lines <= set(NOT_RUN_HERE), f"README make lines not listed here: {make_lines - set(NOT_RUN_HERE)}"
    assert set(NOT_RUN_HERE) <= make_lines, f"listed here, gone from README: {set(NOT_RUN_HERE) - make_lines}"
    makefile = (ROOT / "Makefile").read_text()
    for line in make_lines - {"make"}:
        assert f"\n{line.split()[1]}:" in makefile, f"no target for `{line}` in the Makefile"


def test_compose_block_commands_are_valid():
    """The compose block's commands work as written: docker-compose names the shipped file and
    uses `exec -T` to capture output, the remora lines parse and name files that exist, and
    no line uses a registry-only step (a plain `up` without the monitoring profile)."""
    (compose,) = by_name("compose")
    for number, command in commands(compose):
        text = command.split("  #")[0].strip()
        if "docker-compose" in text or "docker compose" in text:
            assert "-f deploy/docker-compose.yml" in text, f"README.md:{number}"
            assert (ROOT / "deploy/docker-compose.yml").is_file()
            if "$(docker" in text and " exec " in text:
                assert " exec -T " in text, f"README.md:{number}: exec in $(...) needs -T"
            assert "--profile" not in text, f"README.md:{number}: the default up must need no registry"
        elif text.startswith("remora "):
            argv = text.split()[1:]
            build_parser().parse_args(argv)
            for i, arg in enumerate(argv):
                if argv[i - 1] in ("-f", "--filename"):
                    assert (ROOT / arg).is_file(), f"README.md:{number}: {arg} is not in the repository"


def test_every_file_the_readme_names_exists():
    """Every examples/ or deploy/ path the README names is in the repository."""
    import re
    for path in set(re.findall(r"\b((?:examples|deploy)/[\w./-]+[\w/])", README.read_text())):
        assert (ROOT / path).exists(), f"README names {path}, which is not in the repository"
