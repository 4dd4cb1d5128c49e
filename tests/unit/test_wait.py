"""`remora wait`: poll the readiness URL until 200 or the timeout, naming the last reason."""
from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from remora import cli
from remora.proxy.process.wait import Probe, probe, wait_until_ready


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_returns_as_soon_as_a_poll_is_ready():
    """The wait ends at the first 200, without sleeping further."""
    clock = FakeClock()
    answers = iter([Probe(False, "HTTP 503: PRE_INITIALIZING"), Probe(False, "HTTP 503: x"), Probe(True, "ready")])
    result = wait_until_ready("http://h/", 60, 0.5, clock, clock.sleep, lambda url, t: next(answers))
    assert result.ready and clock.now == 1.0


def test_gives_up_at_the_timeout_with_the_last_reason():
    """Never ready: the wait lasts the timeout (not more) and returns the last poll's reason."""
    clock = FakeClock()
    polls = []

    def poll(url, timeout):
        polls.append(timeout)
        return Probe(False, f"HTTP 503: poll {len(polls)}")
    result = wait_until_ready("http://h/", 2.0, 0.5, clock, clock.sleep, poll)
    assert not result.ready
    assert clock.now == 2.0
    assert result.reason == f"HTTP 503: poll {len(polls)}"
    assert all(0 < t <= 5.0 for t in polls)   # each poll bounded by the time left


@pytest.fixture
def health_server():
    """A loopback server answering /healthz/ready with the status and body the test sets."""
    state = {"status": 503, "body": b"PRE_INITIALIZING\nwaiting for the first configuration\n"}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(state["status"])
            self.send_header("Content-Length", str(len(state["body"])))
            self.end_headers()
            self.wfile.write(state["body"])

        def log_message(self, *args):
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/healthz/ready"
    server.shutdown()
    server.server_close()


def test_probe_reads_the_reason_from_a_503_body(health_server):
    """A 503's body lines become the reason, joined on one line."""
    _, url = health_server
    assert probe(url, 5) == Probe(False, "HTTP 503: PRE_INITIALIZING; waiting for the first configuration")


def test_probe_names_an_unreachable_url():
    """Nothing listening: the reason names the URL and the connection error."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/healthz/ready"
    result = probe(url, 5)
    assert not result.ready
    assert result.reason.startswith(f"cannot reach {url}: ") and "refused" in result.reason.lower()


def test_cli_exit_codes_and_message(health_server, capsys):
    """`remora wait` exits 1 naming the reason at the timeout, 0 once the URL answers 200."""
    state, url = health_server
    assert cli.main(["wait", "--health", url, "--timeout", "0.3s", "--interval", "0.1"]) == 1
    err = capsys.readouterr().err
    assert err == ("remora wait: not ready after 0.3s: "
                   "HTTP 503: PRE_INITIALIZING; waiting for the first configuration\n")
    state.update(status=200, body=b"LIVE\n")
    assert cli.main(["wait", "--health", url, "--timeout", "5s"]) == 0


def test_cli_rejects_a_non_http_url_and_a_zero_timeout(capsys):
    """Bad flags are refused by name before any poll."""
    with pytest.raises(SystemExit):
        cli.main(["wait", "--health", "127.0.0.1:15021"])
    assert "expected an http:// or https:// URL" in capsys.readouterr().err
    assert cli.main(["wait", "--timeout", "0"]) == 2
    assert "--timeout and --interval must be positive" in capsys.readouterr().err
