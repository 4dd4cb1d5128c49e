"""The sidecar's glibc tuning keeps large, short-lived buffers (TLS reads) in the heap."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from remora.proxy.process.allocator import keep_tls_buffers_in_heap

# 200 buffers of 256 KiB made, shrunk to what "was read" and dropped, as uvloop's TLS reads
# make them; the minor page faults they cost (a fresh mmap per buffer faults in every page it
# touches; freed after the shrink, the block is too small for glibc to raise its threshold).
PROBE = """
import resource, sys
from remora.proxy.process.allocator import keep_tls_buffers_in_heap
tuned = keep_tls_buffers_in_heap()
def read():
    buffer = bytearray(256 * 1024)
    del buffer[300:]
    return buffer
read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    read()
print(int(tuned), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(tuning: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, "REMORA_MALLOC_TUNING": tuning}).stdout.split()
    return out[0] == "1", int(out[1])


def test_large_buffers_are_reused_instead_of_mapped_each_time():
    """Tuned, 200 TLS-sized buffers cost almost no page faults; untuned, each one faults its pages in."""
    if not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
        pytest.skip("glibc only")
    tuned, tuned_faults = faults("1")
    untuned, untuned_faults = faults("0")
    assert tuned and not untuned
    assert tuned_faults < 500 and untuned_faults > 5000, (tuned_faults, untuned_faults)


def test_the_switch_turns_it_off(monkeypatch):
    """REMORA_MALLOC_TUNING=0 leaves the allocator alone (for before/after measurements)."""
    monkeypatch.setenv("REMORA_MALLOC_TUNING", "0")
    assert keep_tls_buffers_in_heap() is False
