"""Collection rules for the whole suite, and the session's temp folder guard."""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

DOCKER_TESTS = Path(__file__).resolve().parent / "docker"


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    """tests/docker (slow, needs a Docker daemon) runs only when named: `make test-docker`."""
    if collection_path == DOCKER_TESTS:
        named = [Path(arg.split("::")[0]).resolve() for arg in config.args]
        return not any(p == DOCKER_TESTS or DOCKER_TESTS in p.parents for p in named)
    return None


def processes_started_from(tmpdir: str) -> dict[int, str]:
    """Live processes whose environment has TMPDIR=tmpdir (every child this session started,
    and theirs, even once re-parented): pid -> command line."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{entry}/stat", "rb") as f:
                zombie = f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except OSError:
            continue   # gone, or not ours to read
        if not zombie and f"TMPDIR={tmpdir}".encode() in env:
            found[int(entry)] = cmdline
    return found


@pytest.fixture(autouse=True, scope="session")
def _session_tmpdir(tmp_path_factory):
    """Every temp file and folder of the session (tempfile.* here and, through TMPDIR, in every
    child process) lands in one fresh folder; the session fails if anything is left in it, or
    any process started from it still runs, once every fixture is torn down. Then both go.

    pytest's own tmp_path folders are kept out (its base folder is fixed first): pytest
    manages them (tmp_path_retention_policy in pyproject.toml)."""
    tmp_path_factory.getbasetemp()
    folder = tempfile.mkdtemp(prefix="session-", dir=tempfile.gettempdir())
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = folder
    try:
        yield folder
    finally:
        if saved[0] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[0]
        tempfile.tempdir = saved[1]
        running = processes_started_from(folder)
        for pid in running:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        left = sorted(os.listdir(folder))
        shutil.rmtree(folder, ignore_errors=True)
    problems = []
    if running:
        problems.append("processes still running (killed now):\n" + "\n".join(
            f"  {pid}: {cmd}" for pid, cmd in sorted(running.items())))
    if left:
        problems.append(f"left in the session's temp folder {folder} (removed now):\n" + "\n".join(
            f"  {name}" for name in left))
    if problems:
        pytest.fail("the test session did not clean up after itself; "
                    + "\n".join(problems), pytrace=False)
