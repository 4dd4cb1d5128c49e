"""Start `remora control` as a real subprocess on a free loopback port, and talk to it.

Reusable by end-to-end tests: `ControlProcess(files)` writes the files into a fresh
--config-dir, `wait_ready()` polls /healthz, `cli(...)` runs a `remora` client command
against it, `restart()` keeps the config and state directories. `request()` and `cli()` send
the server's admin token (`admin_token`: read from <state-dir>/admin-token, from an
--admin-token-file among the extra flags, or from the line a stateless server prints once);
`auth=False` sends none. `close()` (or the end of the test that made it, see owned.py)
stops it and removes its folder, CA key included.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from tests.integration.owned import OwnedProcess
from tests.integration.upstreams import free_port


class ControlProcess(OwnedProcess):
    """A running control server: its URL, directories, log and a clean stop."""

    def __init__(self, files: dict[str, str] | None = None, *extra: str, grace: str = "10s",
                 debounce: str = "50ms", state: bool = True) -> None:
        self.dir = tempfile.mkdtemp(prefix="remora-control-")
        self._own()
        self.config_dir = os.path.join(self.dir, "config")
        self.state_dir = os.path.join(self.dir, "state") if state else None
        os.mkdir(self.config_dir)
        for name, text in (files or {}).items():
            self.write_file(name, text)
        self.port = free_port()
        self.args = [sys.executable, "-m", "remora", "control", "--config-dir", self.config_dir,
                     "--listen", f"127.0.0.1:{self.port}", "--grace-period", grace, "--debounce", debounce,
                     *(["--state-dir", self.state_dir] if self.state_dir else []), *extra]
        self.err_path = os.path.join(self.dir, "stderr.log")
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ControlProcess":
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL,
                                     stderr=self._log_file(self.err_path, "ab"))
        return self

    def wait_ready(self, timeout: float = 20.0) -> "ControlProcess":
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"control exited {self.proc.returncode}: {self.stderr()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"control not ready: {self.stderr()}")

    @property
    def admin_token(self) -> str:
        """The admin token this server uses (call after wait_ready)."""
        if "--admin-token-file" in self.args:
            path = self.args[self.args.index("--admin-token-file") + 1]
        elif self.state_dir:
            path = os.path.join(self.state_dir, "admin-token")
        else:
            found = re.findall(r"is shown once: (\S+)", self.stderr())
            assert found, f"no admin token printed on stderr:\n{self.stderr()}"
            return found[-1]
        with open(path) as f:
            return f.read().strip()

    def request(self, method: str, path: str, body: str | None = None, *, auth: bool = True,
                headers: dict[str, str] | None = None) -> tuple[int, dict | str]:
        """(status, JSON answer or text) of one API call, with the admin token unless auth=False."""
        headers = dict(headers or {})
        if auth:
            headers["Authorization"] = f"Bearer {self.admin_token}"
        req = urllib.request.Request(f"{self.url}{path}", data=body.encode() if body is not None else None,
                                     method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, raw = r.status, r.read().decode()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read().decode()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def get(self, path: str):
        status, answer = self.request("GET", path)
        assert status == 200, (path, status, answer)
        return answer

    def apply(self, text: str, source: str = "test.yaml") -> tuple[int, dict]:
        return self.request("POST", f"/v1/apply?source={source}", text)

    def status(self) -> dict:
        return self.get("/v1/status")

    def sidecar(self, node_id: str) -> dict | None:
        return next((s for s in self.status()["sidecars"] if s["id"] == node_id), None)

    def wait_until(self, predicate, timeout: float = 15.0, what: str = "condition"):
        """Poll `predicate()` until it returns something truthy; fail naming `what`."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; control stderr:\n{self.stderr()}")

    def wait_served(self) -> str:
        """Wait until the debounced push of the latest accepted version happened; return it."""
        return self.wait_until(lambda: (c := self.status()["config"])["served_version"] == c["version"]
                               and c["version"], what="the latest version to be served")

    def write_file(self, name: str, text: str) -> None:
        """Write a config file atomically (temp + rename), as a careful operator or tool would."""
        tmp = os.path.join(self.config_dir, f".{name}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(self.config_dir, name))

    def cli(self, *args: str, stdin: str | None = None, auth: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run `remora <args>` against this server, the admin token in $REMORA_ADMIN_TOKEN unless
        auth=False; `env` adds or overrides variables. Returns the completed process (text)."""
        env = {**{k: v for k, v in os.environ.items() if k != "REMORA_ADMIN_TOKEN"}, "REMORA_CONTROL": self.url,
               **({"REMORA_ADMIN_TOKEN": self.admin_token} if auth else {}), **(env or {})}
        return subprocess.run([sys.executable, "-m", "remora", *args], input=stdin, capture_output=True,
                              text=True, env=env, timeout=60)

    def metrics(self) -> str:
        status, text = self.request("GET", "/metrics")
        assert status == 200
        return text

    def stderr(self) -> str:
        with open(self.err_path) as f:
            return f.read()

    def restart(self) -> "ControlProcess":
        assert self.stop() == 0, self.stderr()
        return self.start_again()

    def start_again(self, attempts: int = 10) -> "ControlProcess":
        """Start on the same port after a stop. Sidecars reconnecting meanwhile use
        ephemeral ports from the same range, and one may hold this port for a moment
        (a loopback connect to a closed port can even connect to itself), so a bind that
        fails with EADDRINUSE is retried."""
        for _ in range(attempts):
            mark = len(self.stderr())
            self.start()
            try:
                return self.wait_ready()
            except RuntimeError:
                if "address already in use" not in self.stderr()[mark:].lower():
                    raise
                time.sleep(0.2)
        raise RuntimeError(f"control could not bind port {self.port} again: {self.stderr()}")
