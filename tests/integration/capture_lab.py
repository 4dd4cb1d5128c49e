"""A small mesh in network namespaces for the capture tests: pods, sidecars, apps, clients.

Sidecars run inside their pod's namespace with gid 1337 (uid stays root so they can read
the test's files): `remora iptables` exempts that gid, so the sidecar's own connections
are never captured while the app's (root, gid 0) are.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

from tests.integration.netns import Lab, Pod, wait_until

PROXY_GID = 1337


class Sidecar:
    """`remora proxy --capture` in a pod, config from a file, admin on the pod's 127.0.0.1:15000."""

    def __init__(self, pod: Pod, mesh_yaml: str, *args: str) -> None:
        self.pod = pod
        self.dir = tempfile.mkdtemp(prefix=f"remora-{pod.name}-")
        pod.lab.dirs.append(self.dir)
        self.config = os.path.join(self.dir, "mesh.yaml")
        with open(self.config, "w") as f:
            f.write(mesh_yaml)
        argv = [sys.executable, "-m", "remora", "proxy", "--mesh-config", self.config, "--capture",
                "--bind", "127.0.0.1", *args]
        self.proc = pod.popen(argv, self.dir, "sidecar", group=PROXY_GID, extra_groups=[])
        wait_until(lambda: self.admin("/ready") == "LIVE" or self._exited(), 30, f"sidecar in {pod.name} ready")

    def _exited(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"sidecar in {self.pod.name} exited: {self.log()}")
        return False

    def log(self) -> str:
        with open(os.path.join(self.dir, "sidecar.log"), errors="replace") as f:
            return f.read()

    def admin(self, path: str) -> str:
        code = ("import urllib.request,sys\n"
                f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:15000{path}', timeout=5).read().decode())")
        return self.pod.python(code).stdout.strip()

    def stats(self) -> dict[str, int]:
        out = {}
        for line in self.admin("/stats").splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out


def http_get(pod: Pod, url: str, headers: dict | None = None) -> tuple[int, dict, str]:
    """An unmodified client in the pod: urllib GET; (status, response headers, body)."""
    code = f"""
import json, sys, urllib.request, urllib.error
req = urllib.request.Request({url!r}, headers={headers or {}!r})
try:
    r = urllib.request.urlopen(req, timeout=20)
    status, hdrs, body = r.status, dict(r.headers), r.read().decode()
except urllib.error.HTTPError as e:
    status, hdrs, body = e.code, dict(e.headers), e.read().decode()
json.dump([status, {{k.lower(): v for k, v in hdrs.items()}}, body], sys.stdout)
"""
    status, hdrs, body = json.loads(pod.python(code).stdout)
    return status, hdrs, body


def tcp_exchange(pod: Pod, host: str, port: int, payload: bytes, half_close: bool = True) -> bytes | str:
    """Connect, send payload, half-close (or not), read to EOF (or len(payload) bytes);
    the bytes read or the error's name."""
    code = f"""
import socket, sys
try:
    s = socket.create_connection(({host!r}, {port}), timeout=20)
    data = bytes.fromhex(sys.stdin.read())
    s.sendall(data)
    if {half_close!r}: s.shutdown(socket.SHUT_WR)
    got = b""
    while {half_close!r} or len(got) < len(data):
        chunk = s.recv(65536)
        if not chunk: break
        got += chunk
    sys.stdout.write(got.hex())
except OSError as e:
    sys.stdout.write("error:" + type(e).__name__)
"""
    out = pod.python(code, stdin=payload.hex()).stdout
    return out if out.startswith("error:") else bytes.fromhex(out)


def start_app(pod: Pod, kind: str, port: int, name: str = "app") -> None:
    """An http or echo app (tests/integration/netns_apps.py) in the pod, listening before return."""
    folder = tempfile.mkdtemp(prefix="remora-app-")
    pod.lab.dirs.append(folder)
    pod.popen([sys.executable, "-m", "tests.integration.netns_apps", kind, str(port), name],
              folder, f"{kind}-{port}")
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1).close()"
    wait_until(lambda: pod.python(probe, check=False).returncode == 0, 20, f"{kind} app on {pod.name}:{port}")


def capture(pod: Pod, *flags: str) -> None:
    """`remora iptables` in the pod (default flags plus these)."""
    pod.run(sys.executable, "-m", "remora", "iptables", *flags)


__all__ = ["Lab", "Sidecar", "http_get", "tcp_exchange", "start_app", "capture", "wait_until"]
