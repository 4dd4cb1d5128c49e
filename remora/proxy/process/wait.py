"""`remora wait`: block until the sidecar answers 200 on its readiness URL, for an app's
entrypoint (`remora wait && exec app`), so the app never starts before its sidecar.

Rules: poll `--health` (default the health port's /healthz/ready) every `--interval`
until it answers 200 (exit 0) or `--timeout` passes (exit 1, naming the last reason: the
503 body, which says what the sidecar still waits for, or why the URL could not be
reached). Each poll is bounded by the time left, so the timeout holds even against a
server that accepts and never answers. Only the standard library: the app's image may
have nothing else of Remora's at that point.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

DEFAULT_HEALTH_URL = "http://127.0.0.1:15021/healthz/ready"
BODY_LIMIT = 4096        # a readiness answer is a few lines; never read more than this


@dataclass(frozen=True)
class Probe:
    """One poll's outcome: ready or not, and in words why not."""

    ready: bool
    reason: str


def probe(url: str, timeout: float) -> Probe:
    """GET `url` once: 200 is ready; anything else is not, with the reason in one line."""
    # Here, not at import: cli.py imports this module to build its parser, and urllib.request
    # (email, http.client, ...) would otherwise be loaded by `remora proxy` too.
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.status == 200:
                return Probe(True, "ready")
            return Probe(False, f"HTTP {response.status}: {_body(response)}")
    except urllib.error.HTTPError as error:
        return Probe(False, f"HTTP {error.code}: {_body(error)}")
    except urllib.error.URLError as error:
        return Probe(False, f"cannot reach {url}: {error.reason}")
    except OSError as error:      # timeouts and resets after the connection was made
        return Probe(False, f"cannot reach {url}: {error}")


def _body(response) -> str:
    text = response.read(BODY_LIMIT).decode("utf-8", "replace").strip()
    return "; ".join(line for line in text.splitlines() if line) or "(empty body)"


def wait_until_ready(url: str, timeout: float, interval: float = 0.5,
                     clock=time.monotonic, sleep=time.sleep, poll=probe) -> Probe:
    """Poll until ready or `timeout` seconds have passed; return the last probe."""
    deadline = clock() + timeout
    while True:
        left = deadline - clock()
        result = poll(url, max(0.1, min(5.0, left)))
        if result.ready:
            return result
        left = deadline - clock()
        if left <= 0:
            return result
        sleep(min(interval, left))


def add_wait_parser(sub, http_url, seconds) -> None:
    """The `wait` subcommand's flags (`http_url`, `seconds`: the CLI's argument checkers)."""
    wait = sub.add_parser("wait", help="wait until the sidecar is ready (for an app's entrypoint: "
                                       "remora wait && exec app)")
    wait.add_argument("--health", type=http_url, default=DEFAULT_HEALTH_URL, metavar="URL",
                      help=f"readiness URL to poll (default {DEFAULT_HEALTH_URL})")
    wait.add_argument("--timeout", type=seconds, default=60.0,
                      help="give up after this long and exit 1 (default 60s)")
    wait.add_argument("--interval", type=seconds, default=0.5,
                      help="time between polls (default 0.5s)")


def run_wait(args) -> int:
    if args.timeout <= 0 or args.interval <= 0:
        print("remora wait: --timeout and --interval must be positive", file=sys.stderr)
        return 2
    result = wait_until_ready(args.health, args.timeout, args.interval)
    if result.ready:
        return 0
    print(f"remora wait: not ready after {args.timeout:g}s: {result.reason}", file=sys.stderr)
    return 1
