"""`remora proxy` flags for the config source: exactly one of --mesh-config / --control."""
from __future__ import annotations

import pytest

from remora import cli


@pytest.fixture(autouse=True)
def no_env_control(monkeypatch):
    monkeypatch.delenv("REMORA_CONTROL", raising=False)


def run(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(["proxy", *argv])
    return code, capsys.readouterr().err


def test_both_sources_are_refused(capsys, tmp_path):
    """--mesh-config with --control is an error naming both flags."""
    code, err = run(capsys, "--mesh-config", str(tmp_path), "--control", "http://127.0.0.1:15010")
    assert code == 2 and "either --mesh-config" in err and "not both" in err


def test_no_source_is_refused_naming_the_environment_variable(capsys):
    """Neither flag (and no REMORA_CONTROL) is an error that says how to give one."""
    code, err = run(capsys)
    assert code == 2 and "--mesh-config PATH" in err and "--control URL" in err and "REMORA_CONTROL" in err


def test_a_bad_control_url_is_refused_before_starting(capsys):
    """An unusable URL is reported with the flag and the reason, exit 2."""
    code, err = run(capsys, "--control", "ftp://127.0.0.1:1")
    assert code == 2 and "--control" in err and "expected http://HOST:PORT" in err


def test_state_dir_needs_control(capsys, tmp_path):
    """--state-dir with files is an error: only pushed config is kept on disk."""
    code, err = run(capsys, "--mesh-config", str(tmp_path), "--state-dir", str(tmp_path))
    assert code == 2 and "--state-dir" in err


def test_remora_control_is_the_default_source(capsys, monkeypatch):
    """Without flags REMORA_CONTROL names the control server (a bad one is reported as --control)."""
    monkeypatch.setenv("REMORA_CONTROL", "gopher://x:1")
    code, err = run(capsys)
    assert code == 2 and "gopher://x:1" in err


def test_an_explicit_mesh_config_wins_over_remora_control(capsys, monkeypatch, tmp_path):
    """--mesh-config given on the command line is used even when REMORA_CONTROL is set."""
    monkeypatch.setenv("REMORA_CONTROL", "http://127.0.0.1:15010")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Nope\n")
    code, err = run(capsys, "--mesh-config", str(bad))
    assert code == 1 and "invalid configuration" in err
