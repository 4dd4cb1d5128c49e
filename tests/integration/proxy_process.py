"""Start `remora proxy` as a real subprocess on free loopback ports and wait until ready."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from tests.integration.owned import OwnedProcess
from tests.integration.upstreams import free_port


class ProxyProcess(OwnedProcess):
    """A running sidecar: its ports, its access log, and a clean stop; `close()` (or the end
    of the test that made it, see owned.py) also removes its folder."""

    def __init__(self, mesh_yaml: str | None, *extra: str, inbound_app_port: int | None = None,
                 control: str | None = None, state_dir: str | None = None,
                 prometheus_port: int = 0, health_port: int = 0,
                 inbound_port: int | None = None, gateway_ports: tuple[int, ...] = ()) -> None:
        """Config from `mesh_yaml` (written to a file), or with mesh_yaml=None from the
        control server at `control`, keeping its snapshot in `state_dir` (default: a fresh
        directory of this process, so tests never share one). With `gateway_ports` it is
        `remora gateway` instead: each Gateway server port listens on a free local port
        (`self.ports[server_port]`, through --port-map)."""
        self.dir = tempfile.mkdtemp(prefix="remora-test-")
        self._own()
        self.outbound_port = free_port()
        self.admin_port = free_port()
        # inbound_port: chosen by the test when the mesh YAML must name it (an endpoint)
        self.inbound_port = (inbound_port or free_port()) if inbound_app_port else None
        if control is not None:
            self.state_dir = state_dir or os.path.join(self.dir, "state")
            source = ["--control", control, "--state-dir", self.state_dir]
        else:
            self.config_path = os.path.join(self.dir, "mesh.yaml")
            with open(self.config_path, "w") as f:
                f.write(mesh_yaml)
            source = ["--mesh-config", self.config_path]
        # Several sidecars run at once in tests: no :15090 or :15021 unless the test asks for a port.
        self.prometheus_port = prometheus_port
        self.health_port = health_port
        self.ports = {port: free_port() for port in gateway_ports}
        listeners = (["gateway", "--port-map", ",".join(f"{p}={local}" for p, local in self.ports.items())]
                     if gateway_ports else ["proxy", "--outbound-port", str(self.outbound_port)])
        args = [sys.executable, "-m", "remora", listeners[0], *source, *listeners[1:], "--admin-port", str(self.admin_port),
                "--prometheus-port", str(prometheus_port), "--health-port", str(health_port), *extra]
        if inbound_app_port:
            args += ["--inbound-port", str(self.inbound_port), "--app-port", str(inbound_app_port)]
        self.log_path = os.path.join(self.dir, "stdout.log")
        self.err_path = os.path.join(self.dir, "stderr.log")
        self.proc = subprocess.Popen(args, stdout=self._log_file(self.log_path, "wb"),
                                     stderr=self._log_file(self.err_path, "wb"))

    def wait_ready(self, timeout: float = 20.0) -> "ProxyProcess":
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited {self.proc.returncode}: {self.stderr()}")
            try:
                with urllib.request.urlopen(self.admin("/ready"), timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"proxy not ready: {self.stderr()}")

    def ready_status(self) -> int | None:
        """/ready's status code, or None while admin does not answer."""
        try:
            with urllib.request.urlopen(self.admin("/ready"), timeout=1) as r:
                return r.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return None

    def wait_admin(self, timeout: float = 20.0) -> "ProxyProcess":
        """Wait until the admin server answers (ready or not)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited {self.proc.returncode}: {self.stderr()}")
            if self.ready_status() is not None:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"proxy admin not up: {self.stderr()}")

    def admin(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"

    def admin_get(self, path: str) -> str:
        with urllib.request.urlopen(self.admin(path), timeout=5) as r:
            return r.read().decode()

    def access_log(self) -> str:
        time.sleep(0.3)   # the access log is flushed every 100 ms
        with open(self.log_path) as f:
            return f.read()

    def stderr(self) -> str:
        with open(self.err_path) as f:
            return f.read()

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


def wait_until(predicate, what: str, p: ProxyProcess, timeout: float = 30.0):
    """Poll `predicate` until it returns something true (returned); fail naming `what`, with
    the proxy's stderr, after `timeout` seconds (generous: a busy 2-core machine)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; proxy stderr:\n{p.stderr()}")
