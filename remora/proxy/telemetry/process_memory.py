"""This process's memory as Envoy's `server.memory_*` gauges, read from /proc/self/statm.

Envoy reports tcmalloc's numbers; a Python process has no such allocator view, so the two
gauges that have a kernel equivalent are given and the allocator-only ones are left out:
- `server.memory_physical_size`: resident set size (statm's `resident`), bytes.
- `server.memory_heap_size`: data segment and anonymous mappings (statm's `data`), bytes:
  what the process has reserved for its heap, whether or not it is touched.
With --workers N the supervisor's admin sums the workers (fanout.py).
"""
from __future__ import annotations

import os

_PAGE = os.sysconf("SC_PAGE_SIZE")


def memory_stats() -> dict[str, int]:
    """`server.memory_physical_size` and `server.memory_heap_size` in bytes ({} without /proc)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            fields = statm.read().split()
    except OSError:
        return {}
    return {"server.memory_physical_size": int(fields[1]) * _PAGE,
            "server.memory_heap_size": int(fields[5]) * _PAGE}
