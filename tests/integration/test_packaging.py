"""The package as a user installs it: its metadata builds cleanly and the command knows its version."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pyproject_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_version_flag_prints_the_project_version():
    """`remora --version` prints the version pyproject.toml declares, and exits 0."""
    out = subprocess.run([sys.executable, "-m", "remora", "--version"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"remora {_pyproject_version()}"


def test_wheel_builds_without_deprecation_and_with_spdx_license(tmp_path):
    """Building the wheel (as `pip install .` does, isolated) prints no setuptools deprecation
    and writes the license as an SPDX expression (PEP 639), not a legacy License: table."""
    src = tmp_path / "src"
    src.mkdir()
    # Only what the build reads (as .dockerignore), so nothing lands in the checkout.
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "remora", src / "remora", ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp_path / "dist"),
                          str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "SetuptoolsDeprecationWarning" not in log and "project.license` as a TOML table" not in log
    wheel = next((tmp_path / "dist").glob("remora-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read(f"remora-{_pyproject_version()}.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in meta.splitlines()


def test_make_says_how_to_put_remora_on_path(tmp_path):
    """`make` (its default goal) ends by printing a shell line that puts the venv's `remora` on
    PATH; run as printed, `remora --version` then works from any directory."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    # An installed venv has this console script; here it runs the checkout's package.
    script = venv / "bin" / "remora"
    script.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m remora \"$@\"\n")
    script.chmod(0o755)
    (venv / ".installed").touch()   # newer than pyproject.toml: nothing to install
    out = subprocess.run(["make", "-s", "-C", str(ROOT), f"VENV={venv}"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if l.strip().startswith("export PATH="))
    shell = subprocess.run(["bash", "-c", f"{line.split('#')[0]}\ncd /\nremora --version"],
                           capture_output=True, text=True, timeout=60,
                           env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.strip() == f"remora {_pyproject_version()}"
