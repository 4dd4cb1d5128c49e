"""Child processes the harness owns: start in their own process group, stop for sure.

Each child gets a new session (so a terminal Ctrl-C reaches only the harness, which then
stops the children in order) and its output goes to a log file, never to a pipe that could
fill up. CPU time and memory are read from /proc for the child's whole process group, so a
proxy that forks workers is still measured in full.
"""
from __future__ import annotations

import http.client
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


class ProcessFailed(RuntimeError):
    """A child exited or never became ready; the message includes the tail of its log."""


class Child:
    """One started program, its process group, and its log file."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.cmd = cmd
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                         start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join("    " + line for line in text[-lines:])

    def fail(self, why: str) -> ProcessFailed:
        return ProcessFailed(f"{self.name}: {why} (log: {self.log_path})\n{self.log_tail()}")

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the whole group, then SIGKILL whatever is left after `grace` seconds."""
        if self.proc.returncode is None:
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.pid, signal.SIGKILL)  # stragglers forked by the child
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:  # field 5 (pgrp); fields[0] is field 3 (state)
            pids.append(int(entry))
    return pids


def group_cpu_seconds(pgid: int) -> float:
    """utime + stime, in seconds, summed over the live processes of group `pgid`."""
    ticks = 0
    for pid in _group_pids(pgid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15: utime, stime
    return ticks / CLK_TCK


def group_size(pgid: int) -> int:
    """How many live processes group `pgid` has (1 for a single-process proxy)."""
    return len(_group_pids(pgid))


def group_rss_mib(pgid: int) -> float:
    """VmRSS, in MiB, summed over the live processes of group `pgid`."""
    kib = 0
    for pid in _group_pids(pgid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kib += int(line.split()[1])
        except OSError:
            continue
    return round(kib / 1024, 1)


def http_get(port: int, path: str = "/", host: str | None = None,
             timeout: float = 2.0) -> tuple[int, bytes]:
    """One GET to 127.0.0.1:port; returns (status, body). Raises OSError on failure."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Host": host} if host else {}
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(child: Child, port: int, path: str, timeout: float = 30.0) -> None:
    """Poll GET path on port until it answers 200; fail early if the child exits."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not child.alive():
            raise child.fail(f"exited with code {child.proc.returncode} before it was ready")
        try:
            status, _ = http_get(port, path, timeout=1.0)
            if status == 200:
                return
            last = f"HTTP {status}"
        except (OSError, http.client.HTTPException) as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise child.fail(f"not ready after {timeout:.0f}s: GET 127.0.0.1:{port}{path} -> {last}")


def wait_port(child: Child, port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise child.fail(f"exited with code {child.proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise child.fail(f"not listening on 127.0.0.1:{port} after {timeout:.0f}s")


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports come from below the kernel's ephemeral range: a port the kernel picked there (bind to 0)
# can become the source port of any outgoing connection between this call and the child's own
# bind, and the child then fails with EADDRINUSE (CI saw it). Each port is handed out once per run.
_PORT_RANGE = range(max(1024, _ephemeral_low() - 12000), _ephemeral_low())
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback TCP port that was free a moment ago and that no connection will take as its
    source port; never the same one twice in a test run."""
    for _ in range(2000):
        port = random.choice(_PORT_RANGE)
        if port in _handed_out:
            continue
        _handed_out.add(port)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free loopback port in {_PORT_RANGE}")


def etcd_cluster_args(binary: str, data_dir: str, client_ports: list[int], peer_ports: list[int],
                      token: str = "etcd-cluster") -> list[list[str]]:
    """The command line of each member of a loopback etcd cluster (member i: name m<i>, data in
    <data_dir>/m<i>); shared by the benchmarks and the tests' EtcdCluster."""
    cluster = ",".join(f"m{i}=http://127.0.0.1:{port}" for i, port in enumerate(peer_ports))
    return [[binary, "--name", f"m{i}", "--data-dir", os.path.join(data_dir, f"m{i}"),
             "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", cluster, "--initial-cluster-token", token, "--initial-cluster-state", "new",
             # Loopback on a busy 2-core machine: elections quick, but not flapping.
             "--heartbeat-interval", "100", "--election-timeout", "1000"]
            for i, (client, peer) in enumerate(zip(client_ports, peer_ports))]

