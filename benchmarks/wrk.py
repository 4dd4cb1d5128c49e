"""Drive wrk and parse its `--latency` report into numbers.

wrk prints latencies with units (us, ms, s, m, h) and counts as plain integers; the
percentile table appears only with `--latency`. "Non-2xx or 3xx responses" and the
"Socket errors" line appear only when non-zero, so both default to 0.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass

_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


class WrkError(RuntimeError):
    """wrk failed or printed something this parser does not understand."""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx_3xx: int
    socket_errors: int  # connect + read + write + timeout
    timeouts: int
    raw: str = ""

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "raw"}


def latency_ms(text: str) -> float:
    """'812.00us' -> 0.812, '1.50ms' -> 1.5, '2.00s' -> 2000.0."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise WrkError(f"cannot parse wrk latency {text!r}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def parse(output: str) -> WrkResult:
    """Numbers from wrk's text report (run with --latency)."""
    pct = {int(p): latency_ms(v) for p, v in
           re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", output, re.MULTILINE)}
    done = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", output, re.MULTILINE)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    if not (done and rps and len(pct) == 4):
        raise WrkError("unexpected wrk output (was --latency given?):\n" + output)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                     output)
    errors = [int(x) for x in sock.groups()] if sock else [0, 0, 0, 0]
    return WrkResult(
        requests=int(done.group(1)),
        seconds=latency_ms(done.group(2) + done.group(3)) / 1e3,
        rps=float(rps.group(1)),
        p50_ms=pct[50], p75_ms=pct[75], p90_ms=pct[90], p99_ms=pct[99],
        non_2xx_3xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(errors),
        timeouts=errors[3],
        raw=output,
    )


def command(wrk: str, url: str, seconds: int, connections: int, threads: int,
            host: str | None) -> list[str]:
    """The wrk command line for one run (keep-alive is wrk's default)."""
    cmd = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
           "--timeout", "5s", "--latency"]
    if host:
        cmd += ["-H", f"Host: {host}"]
    return cmd + [url]


def run(cmd: list[str], seconds: int) -> WrkResult:
    """Run wrk to completion and parse its report; raise WrkError if it fails."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish within {seconds + 60}s") from exc
    if out.returncode != 0:
        raise WrkError(f"wrk exited {out.returncode}: {out.stderr.strip() or out.stdout}")
    return parse(out.stdout)
