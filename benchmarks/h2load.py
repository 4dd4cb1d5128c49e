"""Drive h2load (Debian nghttp2-client) as an open-loop, fixed-rate HTTP/1.1 load.

h2load's `--rps N` paces each client at N requests/s whatever the answers' latency, and its
`--log-file` records every request (start in us since the epoch, status, latency in us):
the percentiles come from that file, since h2load's own report gives only min/mean/max.
The rate is spread over ceil(rate / 100) clients, so no client has to send faster than one
request per 10 ms and a slow answer delays few of the scheduled requests.
"""
from __future__ import annotations

import math
import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

PER_CLIENT_RPS = 100


class H2loadError(RuntimeError):
    """h2load failed, or its log could not be read."""


@dataclass
class RateResult:
    rate: int           # the rate asked for, requests/s
    requests: int
    seconds: float
    rps: float          # the rate achieved
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non_2xx_3xx: int
    socket_errors: int  # h2load's failed requests (errored + timed out)

    def as_dict(self) -> dict:
        return asdict(self)


def clients_for(rate: int) -> tuple[int, int]:
    """(clients, requests/s per client) for a total of `rate` requests/s."""
    clients = max(1, math.ceil(rate / PER_CLIENT_RPS))
    return clients, max(1, round(rate / clients))


def command(h2load: str, url: str, rate: int, seconds: int, host: str | None,
            log_file: Path, h1: bool = True, data: Path | None = None,
            headers: Sequence[str] = ()) -> list[str]:
    """The h2load command line for `seconds` of `rate` requests/s over keep-alive connections.

    h1=False speaks HTTP/2 (h2c prior knowledge for an http:// URL), still one request in
    flight per connection (h2load's default `-m 1`), so the pacing is the same as over
    HTTP/1.1. `data` is a file sent as every request's body (h2load then POSTs); `headers`
    are extra "name: value" request headers (e.g. gRPC's content-type and te)."""
    clients, per_client = clients_for(rate)
    cmd = [h2load, *(["--h1"] if h1 else []), "-c", str(clients), "--rps", str(per_client),
           "-D", str(seconds), "-T", "5", "--log-file", str(log_file)]
    if data is not None:
        cmd += ["-d", str(data)]
    for header in headers:
        cmd += ["-H", header]
    if host:  # `-H "Host: x"` would send a second Host header; :authority replaces the first
        cmd += ["-H", f":authority: {host}"]
    return cmd + [url]


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (pct in 0..100)."""
    if not sorted_values:
        raise H2loadError("no request completed: no latency to report")
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def parse(log_text: str, report: str, rate: int, seconds: float) -> RateResult:
    """A RateResult from h2load's per-request log and its text report (for the failures)."""
    latencies, bad = [], 0
    for number, line in enumerate(log_text.splitlines(), 1):
        fields = line.split("\t")
        if len(fields) != 3:
            raise H2loadError(f"h2load log line {number}: expected 3 tab-separated fields, "
                              f"got {line!r}")
        status, micros = int(fields[1]), int(fields[2])
        latencies.append(micros / 1000)
        if not 200 <= status < 400:
            bad += 1
    latencies.sort()
    failed = re.search(r"(\d+) errored, (\d+) timeout", report)
    return RateResult(
        rate=rate, requests=len(latencies), seconds=seconds,
        rps=round(len(latencies) / seconds, 1) if seconds else 0.0,
        p50_ms=percentile(latencies, 50), p90_ms=percentile(latencies, 90),
        p99_ms=percentile(latencies, 99), max_ms=latencies[-1],
        non_2xx_3xx=bad,
        socket_errors=int(failed.group(1)) + int(failed.group(2)) if failed else 0,
    )


def run(cmd: list[str], rate: int, seconds: int, log_file: Path) -> RateResult:
    """Run h2load to completion and read its log; raise H2loadError if it fails."""
    report, log_text = run_raw(cmd, seconds, log_file)
    return parse(log_text, report, rate, seconds)


def run_raw(cmd: list[str], seconds: int, log_file: Path) -> tuple[str, str]:
    """Run h2load to completion: (its text report, its per-request log); the report is kept
    beside the log as .txt. Raises H2loadError if it fails or wrote no log."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    except subprocess.TimeoutExpired as exc:
        raise H2loadError(f"h2load did not finish within {seconds + 60}s") from exc
    if out.returncode != 0:
        raise H2loadError(f"h2load exited {out.returncode}: {out.stderr.strip() or out.stdout}")
    log_file.with_suffix(".txt").write_text(out.stdout)
    try:
        log_text = log_file.read_text()
    except OSError as exc:
        raise H2loadError(f"h2load wrote no log {log_file}: {exc}") from exc
    return out.stdout, log_text
