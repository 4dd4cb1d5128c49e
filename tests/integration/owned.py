"""What a test starts (child processes, their folders) is closed when the test ends.

ProxyProcess, ControlProcess and netns Lab register here when created. The autouse
fixtures in tests/integration/conftest.py take a `mark()` when a test (and a module)
begins and `close_since(mark)` when it ends: whatever was made in between and is still
open gets `close()`d, newest first (sidecars before their control server). So a test that
fails half way, or forgets a `stop()`, leaves neither a running process nor a folder
holding keys behind. Objects made by a module- or session-scoped fixture were made before
the test's mark and are left to that fixture (or to the module's own mark).
"""
from __future__ import annotations

import itertools
import shutil
import signal
import subprocess
from typing import Protocol


class Closable(Protocol):
    def close(self) -> None: ...


_serials = itertools.count()
_open: dict[int, Closable] = {}


def register(thing: Closable) -> int:
    """Own `thing` from now on; the serial returned is what `release` takes."""
    serial = next(_serials)
    _open[serial] = thing
    return serial


def release(serial: int) -> None:
    """`thing` was closed by its user: nothing left to do for it."""
    _open.pop(serial, None)


def mark() -> int:
    """A point in time: `close_since` closes what was registered after it."""
    return next(_serials)


def close_since(mark_: int) -> list[str]:
    """Close everything registered after `mark_` and still open, newest first; return
    what was closed (repr), and raise the first error after trying them all."""
    errors, closed = [], []
    for serial in sorted((s for s in _open if s > mark_), reverse=True):
        thing = _open.pop(serial)
        closed.append(repr(thing))
        try:
            thing.close()
        except Exception as error:  # noqa: BLE001 - close the others first
            errors.append(error)
    if errors:
        raise errors[0]
    return closed


class OwnedProcess:
    """Base of a test's child process with a folder of its own (`dir`, made by the subclass
    before `_own()`): `stop()` ends the process, `close()` also removes the folder and closes
    the log files the process writes (`_logs`)."""

    dir: str
    proc: subprocess.Popen | None

    def _own(self) -> None:
        self.proc = None
        self._logs: list = []
        self._serial = register(self)

    def _log_file(self, path: str, mode: str):
        """A log file the child writes, closed by close()."""
        self._logs.append(open(path, mode))
        return self._logs[-1]

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` seconds; the exit code."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc is not None else None

    def close(self) -> None:
        """Stop, then remove the folder (config, state, keys, logs) for good."""
        try:
            self.stop()
        finally:
            for log in self._logs:
                log.close()
            shutil.rmtree(self.dir, ignore_errors=True)
            release(self._serial)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pid={self.proc.pid if self.proc else None}, dir={self.dir})"
