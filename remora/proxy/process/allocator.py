"""glibc's allocator, told to keep the 256 KiB read buffers TLS makes per read in its heap.

uvloop's SSL transport reads decrypted bytes with `SSLObject.read(256 KiB)`: CPython makes
a 256 KiB bytes object and shrinks it to what was read. glibc serves a block that large
with mmap, shrinks it with mremap and gives it back with munmap, so every TLS read costs
three syscalls and page faults (strace of an inbound sidecar under mesh-2hop-mtls: one
mmap + mremap + munmap per request, about 2.5 minor faults each). glibc would raise its
mmap threshold after such a free, but the block is freed after the shrink, small, so it
never does. A fixed threshold of 1 MiB (and a trim threshold above it, so the heap is not
given back and taken again on every free) keeps those blocks in the heap, reused.

Linux with glibc only (musl and others: left as they are). `REMORA_MALLOC_TUNING=0` turns
it off, for a before/after measurement.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20     # above the 256 KiB TLS read buffer
TRIM_THRESHOLD = 8 << 20


def keep_tls_buffers_in_heap() -> bool:
    """Set glibc's thresholds (see the module doc); True if they were set."""
    if os.environ.get("REMORA_MALLOC_TUNING", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):    # not glibc
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
