"""A real etcd cluster on loopback for the tests (Debian's `etcd-server`): `EtcdCluster(3)`.

Each member is an `etcd` process with its own data folder and client/peer ports; `kill(i)`
stops one (SIGKILL, as a lost machine), `start(i)` brings it back with its data. `url` is the
`--store` value naming every member. `close()` (or the end of the test, see owned.py) stops
the members and removes the folder. Tests skip, naming the package, when etcd is not
installed (.ci/run installs it).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

import pytest

from benchmarks.procs import etcd_cluster_args
from tests.integration.owned import register, release
from tests.integration.upstreams import free_port


def require_etcd() -> str:
    path = shutil.which("etcd")
    if path is None:
        pytest.skip("etcd not installed (Debian package etcd-server)")
    return path


class EtcdCluster:
    """Members 0..n-1 of one etcd cluster, each a subprocess."""

    def __init__(self, members: int = 3, extra: tuple[str, ...] = ()) -> None:
        """`extra`: more etcd flags for every member (e.g. --max-txn-ops)."""
        self.binary = require_etcd()
        self.dir = tempfile.mkdtemp(prefix="remora-etcd-")
        self._serial = register(self)
        self.client_ports = [free_port() for _ in range(members)]
        self.peer_ports = [free_port() for _ in range(members)]
        self.names = [f"m{i}" for i in range(members)]
        self.procs: list[subprocess.Popen | None] = [None] * members
        self._logs: list = []
        self._args = etcd_cluster_args(self.binary, self.dir, self.client_ports, self.peer_ports,
                                       token=os.path.basename(self.dir))
        self._args = [[*args, *extra] for args in self._args]
        for i in range(members):
            self.start(i)
        self.wait_healthy()

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(f"127.0.0.1:{port}" for port in self.client_ports)

    def start(self, i: int) -> None:
        log = open(os.path.join(self.dir, f"{self.names[i]}.log"), "ab")
        self._logs.append(log)
        self.procs[i] = subprocess.Popen(self._args[i], stdout=log, stderr=log)

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        self.procs[i] = None

    def healthy(self, i: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.client_ports[i]}/health", timeout=2) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Every running member reports health (a leader is elected and it can serve)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.healthy(i) for i, proc in enumerate(self.procs) if proc is not None):
                return
            time.sleep(0.1)
        raise RuntimeError("etcd cluster not healthy:\n" + self.logs())

    def logs(self) -> str:
        out = []
        for name in self.names:
            path = os.path.join(self.dir, f"{name}.log")
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    out.append(f"--- {name}\n" + f.read()[-3000:])
        return "\n".join(out)

    def close(self) -> None:
        for i in range(len(self.procs)):
            self.kill(i)
        for log in self._logs:
            log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        release(self._serial)

    def __repr__(self) -> str:
        return f"EtcdCluster({self.url})"
