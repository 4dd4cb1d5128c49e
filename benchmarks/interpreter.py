"""The Python interpreter that runs Remora's sidecars (and the bare relay) in a benchmark.

How CPython was built moves Remora's CPU per request by tens of percent: a default
`./configure` build (what pyenv makes unless told `--enable-optimizations --with-lto`) with
libpython as a shared library runs the same code markedly slower than the release builds
people deploy (the python:3.11-slim image, Debian's /usr/bin/python3). Envoy is measured as
its release build, so the harness lets Remora run on the interpreter its image ships
(`--python`) and records what that interpreter is, next to every result.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

# Printed by the interpreter under test: its version and what its build says about itself.
_PROBE = """
import json, platform, sys, sysconfig
import remora, uvloop, httptools
args = sysconfig.get_config_var("CONFIG_ARGS") or ""
print(json.dumps({"version": platform.python_version(), "executable": sys.executable,
                  "base": sys.base_prefix,
                  "optimizations": "--enable-optimizations" in args, "lto": "--with-lto" in args}))
"""


class UnusableInterpreter(Exception):
    """The interpreter cannot run Remora (missing, or Remora and its dependencies not installed)."""


def absolute(python: str) -> str:
    """A path given with a directory made absolute (children start in other directories);
    not resolved: a venv's python is a symlink, and resolving it would leave the venv. A bare
    name is left for PATH."""
    return os.path.abspath(python) if os.sep in python else python


def describe(python: str = sys.executable) -> dict:
    """What `python` is: version, base install, libpython static or shared, configure's
    optimization flags. Raises UnusableInterpreter if it cannot import Remora and uvloop."""
    try:
        probe = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise UnusableInterpreter(f"--python {python}: {exc.strerror or exc}") from exc
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise UnusableInterpreter(
            f"--python {python} cannot run Remora ({last}); make a virtual environment with it "
            f"and install the project there: {python} -m venv DIR && DIR/bin/pip install -e '.[bench]'")
    info = json.loads(probe.stdout)
    info["libpython"] = _libpython_linkage(info["executable"])
    return info


def _libpython_linkage(executable: str) -> str:
    """"shared" when the executable loads libpython at run time (calls between the
    interpreter's own functions then go through the PLT), "static" when it is linked in."""
    try:
        out = subprocess.run(["ldd", executable], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return "unknown"
    return "shared" if "libpython" in out else "static"


def label(info: dict) -> str:
    """One line for the report: `3.11.2 (/usr, libpython static)` plus configure's flags."""
    flags = [name for name, on in (("--enable-optimizations", info.get("optimizations")),
                                   ("--with-lto", info.get("lto"))) if on]
    built = f", configured {' '.join(flags)}" if flags else ""
    return f"{info['version']} ({info['base']}, libpython {info['libpython']}{built})"
