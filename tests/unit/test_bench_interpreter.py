"""The benchmark's sidecar interpreter: described from the interpreter itself, refused when unusable."""
from __future__ import annotations

import platform
import sys

import pytest

from benchmarks import scenarios
from benchmarks.interpreter import UnusableInterpreter, absolute, describe, label
from benchmarks.runner import remora_cmd


def test_describe_reports_the_interpreter_that_will_run_the_sidecars() -> None:
    """The version, base install and libpython linkage come from running the interpreter."""
    info = describe(sys.executable)
    assert info["version"] == platform.python_version()
    assert info["base"] == sys.base_prefix
    assert info["libpython"] in ("shared", "static")
    text = label(info)
    assert text.startswith(f"{info['version']} ({sys.base_prefix}, libpython {info['libpython']}")


def test_an_interpreter_without_remora_is_refused_with_the_fix(tmp_path) -> None:
    """A python that cannot import Remora is an error that says how to make one that can."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named remora' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(UnusableInterpreter, match=r"No module named remora.*-m venv DIR"):
        describe(str(fake))
    with pytest.raises(UnusableInterpreter, match="no-such-python"):
        describe(str(tmp_path / "no-such-python"))


def test_sidecar_and_relay_commands_use_the_chosen_interpreter() -> None:
    """--python reaches both Remora's command line and the bare relay's."""
    assert remora_cmd("--x", python="/opt/py/bin/python")[:4] == ["/opt/py/bin/python", "-m", "remora", "proxy"]
    assert scenarios.relay_cmd("/opt/py/bin/python", "--listen", "1")[:3] == [
        "/opt/py/bin/python", "-m", "benchmarks.tls_relay"]


def test_label_names_configure_optimizations_when_present() -> None:
    """A build configured with PGO and LTO says so in the report line."""
    info = {"version": "3.11.7", "base": "/opt/py", "libpython": "shared", "optimizations": True, "lto": True}
    assert label(info) == "3.11.7 (/opt/py, libpython shared, configured --enable-optimizations --with-lto)"


def test_a_relative_interpreter_path_becomes_absolute_without_leaving_its_venv(tmp_path, monkeypatch) -> None:
    """`.venv-release/bin/python` works from any directory the sidecars start in, and the
    venv's symlink is kept (resolving it would run the base interpreter without Remora)."""
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").symlink_to(sys.executable)
    monkeypatch.chdir(tmp_path)
    assert absolute("venv/bin/python") == str(tmp_path / "venv" / "bin" / "python")
    assert absolute("python3") == "python3"
