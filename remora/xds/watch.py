"""Watching --config-dir: poll names, sizes and mtimes; no inotify, no extra dependency.

A change is reported once the directory has looked the same for one short settle check,
so an editor writing a file in several steps is read once, after it finished. A file that
is still invalid after that is reported by the store like any bad config.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

SETTLE_SECONDS = 0.1


def directory_signature(path: Path) -> tuple:
    """What changes when a YAML file in `path` is added, removed, renamed or rewritten."""
    try:
        entries = list(os.scandir(path))
    except OSError as error:
        return (("<unreadable>", str(error)),)
    signature = []
    for entry in entries:
        if not entry.name.endswith((".yaml", ".yml")):
            continue
        try:
            stat = entry.stat()
        except OSError:
            continue  # removed between scandir and stat: the next poll sees it gone
        signature.append((entry.name, stat.st_mtime_ns, stat.st_size, stat.st_ino))
    return tuple(sorted(signature))


class DirectoryWatcher:
    """Calls `on_change()` after the YAML files of a directory changed."""

    def __init__(self, path: Path, interval: float, on_change: Callable[[], None]) -> None:
        self.path = path
        self.interval = interval
        self.on_change = on_change
        self.signature = directory_signature(path)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            seen = directory_signature(self.path)
            if seen == self.signature:
                continue
            await asyncio.sleep(min(SETTLE_SECONDS, self.interval / 2))
            if directory_signature(self.path) != seen:
                continue  # still being written: look again at the next poll
            self.signature = seen
            self.on_change()
