"""Start, watch and stop the demo's child processes.

Each child runs in its own process group so that Ctrl-C in the terminal reaches only the
demo, which then stops the children in order (SIGTERM, grace period, SIGKILL to the group)
instead of every process tearing itself down at once and printing tracebacks.
Output goes to files, not pipes: a pipe nobody reads would fill up and block the child.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Child:
    name: str
    argv: list[str]
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict, repr=False)   # added to the supervisor's (secrets stay out of argv)
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def stdout_path(self) -> Path:
        return self.log_dir / f"{self.name}.out"

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / f"{self.name}.err"

    def start(self, cwd: Path, env: dict[str, str]) -> None:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            # The child holds its own copies of the descriptors; ours can close right away.
            self.proc = subprocess.Popen(
                self.argv, cwd=cwd, env={**env, **self.env}, stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, process_group=0,
            )  # fmt: skip

    def returncode(self) -> int | None:
        """None while running, else the exit code (negative: killed by that signal)."""
        return None if self.proc is None else self.proc.poll()

    def stderr_tail(self, lines: int = 20) -> list[str]:
        try:
            with open(self.stderr_path, errors="replace") as f:
                return [line.rstrip("\n") for line in deque(f, maxlen=lines)]
        except OSError:
            return []


class Supervisor:
    """Owns the children: starts them, reports the first unexpected exit, stops them all."""

    def __init__(self, cwd: Path, env: dict[str, str], log_dir: Path):
        self.cwd = cwd
        self.env = env
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(self, child: Child) -> Child:
        child.start(self.cwd, self.env)
        self.children.append(child)
        return child

    def first_dead(self) -> Child | None:
        return next((c for c in self.children if c.returncode() is not None), None)

    def stop_all(self, grace: float) -> list[str]:
        """SIGTERM every child, wait up to `grace` s, then SIGKILL whatever is left.

        The polite signal goes to the child itself so a sidecar can drain and stop its own
        workers; the SIGKILL goes to the whole group so no worker outlives the demo.
        Returns the names of children that had to be killed.
        """
        for child in self.children:
            if child.returncode() is None:
                _signal(child.proc.pid, signal.SIGTERM, group=False)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(c.returncode() is None for c in self.children):
            time.sleep(0.05)
        killed = []
        for child in self.children:
            if child.returncode() is None:
                killed.append(child.name)
            # Also for children that exited: a worker may linger in their group.
            _signal(child.proc.pid, signal.SIGKILL, group=True)
        for child in self.children:
            child.proc.wait()
        return killed


def _signal(pid: int, sig: int, *, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)  # the child is its group's leader, so pgid == pid
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # already gone
