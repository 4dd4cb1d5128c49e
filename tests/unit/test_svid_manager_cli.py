"""`remora proxy --token` / $REMORA_TOKEN: only with --control, and handed to the certificate manager."""
from __future__ import annotations

import pytest

from remora import cli
from remora.proxy.process import run as run_module


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("REMORA_CONTROL", raising=False)
    monkeypatch.delenv("REMORA_TOKEN", raising=False)


@pytest.fixture
def started(monkeypatch):
    """Capture the options run_proxy would start with, instead of starting."""
    seen = []
    monkeypatch.setattr(run_module, "run_proxy", lambda options, config: seen.append(options) or 0)
    return seen


def test_token_without_control_is_refused(capsys, tmp_path):
    """--token with files is an error naming --control: only the control server's CA takes tokens."""
    code = cli.main(["proxy", "--mesh-config", str(tmp_path), "--token", "rmt_x.y"])
    assert code == 2 and "--token" in capsys.readouterr().err


def test_token_flag_reaches_the_proxy_options(started):
    """--token is passed on to the proxy (and never shown in the options' repr)."""
    assert cli.main(["proxy", "--control", "http://127.0.0.1:1", "--token", "rmt_abc.secret"]) == 0
    assert started[0].token == "rmt_abc.secret" and "secret" not in repr(started[0])


def test_token_from_the_environment_with_control(monkeypatch, started):
    """$REMORA_TOKEN is the default token under --control."""
    monkeypatch.setenv("REMORA_TOKEN", "rmt_env.secret")
    assert cli.main(["proxy", "--control", "http://127.0.0.1:1"]) == 0
    assert started[0].token == "rmt_env.secret"


def test_environment_token_is_ignored_with_files(monkeypatch, started, tmp_path):
    """A $REMORA_TOKEN left in the environment does not stop a file-configured proxy."""
    monkeypatch.setenv("REMORA_TOKEN", "rmt_env.secret")
    (tmp_path / "empty.yaml").write_text("")
    assert cli.main(["proxy", "--mesh-config", str(tmp_path)]) == 0
    assert started[0].token is None


def test_empty_token_is_refused(capsys):
    """--token '' is an error, not a silent proxy without a certificate."""
    assert cli.main(["proxy", "--control", "http://127.0.0.1:1", "--token", " "]) == 2
    assert "--token: empty" in capsys.readouterr().err
