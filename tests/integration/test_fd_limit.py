"""At the file-descriptor limit: the listeners back off instead of spinning, log one warning
per episode, count it, and serve again once descriptors are free."""
from __future__ import annotations

import os
import resource
import socket
import time

from tests.integration.client import RawClient
from tests.integration.conftest import service
from tests.integration.proxy_process import ProxyProcess, wait_until


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_descriptors_backs_off_logs_counts_and_recovers(upstreams):
    """RLIMIT_NOFILE reached by inbound connections: no busy loop, one warning, counted, served after."""
    p = ProxyProcess(service("echo", [(upstreams.ports["echo"], {})]),
                     inbound_app_port=upstreams.ports["echo"]).wait_ready()
    clients: list[socket.socket] = []
    try:
        pid = p.proc.pid
        limit = len(os.listdir(f"/proc/{pid}/fd")) + 8
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
        for _ in range(40):   # the proxy can accept about 8; the rest wait in the backlog
            clients.append(socket.create_connection(("127.0.0.1", p.inbound_port), timeout=10))
        wait_until(lambda: "cannot accept connections" in p.stderr(), "the inbound accept warning", p)
        for _ in range(10):   # outbound too: libuv accepts and closes them at once
            clients.append(socket.create_connection(("127.0.0.1", p.outbound_port), timeout=10))
        before = cpu_seconds(pid)
        time.sleep(2)
        used = cpu_seconds(pid) - before
        assert used < 1.0, f"the proxy used {used:.2f} s of CPU in 2 s at the descriptor limit"
        wait_until(lambda: "out of file descriptors" in p.stderr(), "the process-wide warning", p)
        for c in clients:
            c.close()
        clients.clear()

        def served() -> bool:
            try:
                return RawClient(p.inbound_port, timeout=5).request("GET", "/after", "echo").status == 200
            except OSError:
                return False

        wait_until(served, "the inbound listener to serve again", p)
        assert p.stderr().count("cannot accept connections") == 1, p.stderr()
        address = f"listener.127.0.0.1_{p.inbound_port}.downstream_global_cx_overflow"
        stats = dict(line.split(": ") for line in p.admin_get("/stats").splitlines() if ": " in line)
        assert int(stats[address]) >= 1, stats.get(address)
        assert int(stats["listener_manager.fd_exhausted"]) >= 1
        assert RawClient(p.outbound_port).request("GET", "/out", "echo").status == 200
    finally:
        for c in clients:
            c.close()
        p.stop()
