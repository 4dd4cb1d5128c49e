"""Network namespaces made by a test: a hub namespace with a bridge, pods wired to it by veth pairs.

Everything lives inside namespaces the test creates (addresses 10.200.<net>.x/24, never in
the host's namespace), and `Lab.close` removes the namespaces and their /etc/netns/<name>
directories (hosts files) whatever happened. `ip netns exec` bind-mounts
/etc/netns/<name>/hosts over /etc/hosts for the commands it runs, which is how an
unmodified client resolves `reviews` to a test VIP.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from tests.integration import owned

TOOLS = ("ip", "iptables", "iptables-save", "iptables-restore")


def skip_unless_possible() -> None:
    """Skip (with the reason) where namespaces and iptables cannot be used."""
    if os.geteuid() != 0:
        pytest.skip("netns tests need root (ip netns, iptables)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"netns tests need {', '.join(missing)}")
    name = "rmprobe" + uuid.uuid4().hex[:6]
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        pytest.skip("cannot create network namespaces here (ip netns add failed)")
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def sh(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, **kw)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


class Pod:
    """One namespace: a name, an address on the lab's bridge, and a way to run things in it."""

    def __init__(self, lab: "Lab", name: str, ip: str) -> None:
        self.lab = lab
        self.name = name
        self.ip = ip

    def argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return sh(*self.argv(*argv), check=check, **kw)

    def python(self, code: str, check: bool = True, timeout: float = 60.0,
               stdin: str | None = None) -> subprocess.CompletedProcess:
        """Run Python code in this namespace (as root, gid 0: an app, captured)."""
        done = subprocess.run(self.argv(sys.executable, "-c", code), capture_output=True, text=True,
                              timeout=timeout, cwd=self.lab.repo, input=stdin)
        if check and done.returncode != 0:
            raise RuntimeError(f"python in {self.name}: exit {done.returncode}: {done.stderr.strip()}")
        return done

    def popen(self, argv: list[str], log_dir: str, label: str, **kw) -> subprocess.Popen:
        """A background process in this namespace, output kept in log_dir/<label>.log."""
        out = open(os.path.join(log_dir, f"{label}.log"), "wb")
        proc = subprocess.Popen(self.argv(*argv), stdout=out, stderr=subprocess.STDOUT,
                                cwd=self.lab.repo, **kw)
        self.lab.procs.append(proc)
        return proc

    def hosts(self, entries: dict[str, str]) -> None:
        """/etc/hosts for commands run in this namespace: name -> address (plus localhost)."""
        folder = os.path.join("/etc/netns", self.name)
        os.makedirs(folder, exist_ok=True)
        self.lab.dirs.append(folder)
        lines = ["127.0.0.1 localhost", "::1 localhost"] + [f"{ip} {name}" for name, ip in entries.items()]
        with open(os.path.join(folder, "hosts"), "w") as f:
            f.write("\n".join(lines) + "\n")


class Lab:
    """A hub namespace with a bridge and pods attached; close() removes everything it made."""

    def __init__(self, net: int = 200) -> None:
        self.tag = uuid.uuid4().hex[:5]
        self.net = net
        self.repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.namespaces: list[str] = []
        self.dirs: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self._serial = owned.register(self)   # closed at the end of the test or module that made it
        self.hub = self._namespace("hub")
        sh("ip", "netns", "exec", self.hub, "ip", "link", "add", "br0", "type", "bridge")
        sh("ip", "netns", "exec", self.hub, "ip", "link", "set", "br0", "up")
        self.pods: dict[str, Pod] = {}

    def _namespace(self, role: str) -> str:
        name = f"rm{self.tag}{role}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        return name

    def pod(self, role: str, host: int) -> Pod:
        """A namespace with address 10.200.<net>.<host>/24 on the hub's bridge."""
        name = self._namespace(role)
        outer, inner = f"v{self.tag}{host}", "eth0"
        sh("ip", "link", "add", outer, "netns", self.hub, "type", "veth", "peer", "name", inner, "netns", name)
        sh("ip", "netns", "exec", self.hub, "ip", "link", "set", outer, "master", "br0", "up")
        ip = f"10.{self.net}.0.{host}"
        sh("ip", "netns", "exec", name, "ip", "addr", "add", f"{ip}/24", "dev", inner)
        sh("ip", "netns", "exec", name, "ip", "link", "set", inner, "up")
        pod = Pod(self, name, ip)
        self.pods[role] = pod
        return pod

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for name in reversed(self.namespaces):
            sh("ip", "netns", "del", name, check=False)
        for folder in self.dirs:
            shutil.rmtree(folder, ignore_errors=True)
        owned.release(self._serial)


def wait_until(check, timeout: float = 30.0, what: str = "condition"):
    """Poll check() until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as error:   # noqa: BLE001 - keep polling; report the last error
            last = error
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")
