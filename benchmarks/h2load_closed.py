"""Drive h2load as a closed-loop HTTP/2 load: C connections, each keeping M streams in flight.

This is the HTTP/2 counterpart of wrk: every connection keeps `streams` requests open at
once (h2load's `-m`) and sends the next as soon as one completes, so requests/s measures the
proxy's capacity with many streams multiplexed per connection. Cleartext URLs are spoken as
h2c with prior knowledge (no Upgrade), the way an app talks HTTP/2 to its sidecar. The
latency percentiles come from `--log-file` (one line per request), as in h2load.py.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.h2load import H2loadError, percentile, run_raw


@dataclass
class ClosedResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx_3xx: int
    socket_errors: int  # h2load's errored + timed-out requests

    def as_dict(self) -> dict:
        return asdict(self)


def command(h2load: str, url: str, seconds: int, clients: int, streams: int, threads: int,
            host: str | None, log_file: Path, h1: bool = False) -> list[str]:
    """The h2load command line: `clients` connections x `streams` concurrent streams each.

    h1=True measures the same shape over HTTP/1.1 (one request in flight per connection:
    `-m` means pipelining there, which no proxy under test is asked to do)."""
    cmd = [h2load, "-c", str(clients), "-t", str(max(1, min(threads, clients))),
           "-D", str(seconds), "-T", "5", "--log-file", str(log_file)]
    cmd += ["--h1"] if h1 else ["-m", str(streams)]
    if host:  # :authority replaces the URL's authority (Host on HTTP/1.1)
        cmd += ["-H", f":authority: {host}"]
    return cmd + [url]


def parse(log_text: str, report: str, seconds: float) -> ClosedResult:
    """A ClosedResult from h2load's per-request log and its text report."""
    latencies, bad = [], 0
    for number, line in enumerate(log_text.splitlines(), 1):
        fields = line.split("\t")
        if len(fields) != 3:
            raise H2loadError(f"h2load log line {number}: expected 3 tab-separated fields, "
                              f"got {line!r}")
        latencies.append(int(fields[2]) / 1000)
        if not 200 <= int(fields[1]) < 400:
            bad += 1
    latencies.sort()
    failed = re.search(r"(\d+) errored, (\d+) timeout", report)
    return ClosedResult(
        requests=len(latencies), seconds=seconds,
        rps=round(len(latencies) / seconds, 1) if seconds else 0.0,
        p50_ms=percentile(latencies, 50), p90_ms=percentile(latencies, 90),
        p99_ms=percentile(latencies, 99), non_2xx_3xx=bad,
        socket_errors=int(failed.group(1)) + int(failed.group(2)) if failed else 0)


def run(cmd: list[str], seconds: int, log_file: Path) -> ClosedResult:
    """Run h2load to completion and read its log; raise H2loadError if it fails."""
    try:
        report, log_text = run_raw(cmd, seconds, log_file)
    finally:
        # the per-request log is large (a line per request); the report beside it stays
        log_file.unlink(missing_ok=True)
    return parse(log_text, report, seconds)
