"""`remora inject` as a command: stdin and files in, manifests on stdout, errors with exit 1 and no output."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "inject"


def _inject(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "remora", "inject", *args], input=stdin,
                          capture_output=True, timeout=60)


def test_stdin_in_stdout_out():
    """`-f -` reads the manifests from stdin and writes the injected ones (the golden file) to stdout."""
    result = _inject("-f", "-", stdin=(FIXTURES / "multi-document.yaml").read_bytes())
    assert result.returncode == 0, result.stderr
    assert result.stdout == (FIXTURES / "expected" / "multi-document.yaml").read_bytes()
    assert result.stderr == b""


def test_file_argument_and_flags():
    """A file path works like stdin; --image and --control end up in the pod spec."""
    result = _inject("-f", str(FIXTURES / "pod.yaml"), "--image", "reg.example/remora:9",
                     "--control", "http://control.mesh:15010")
    assert result.returncode == 0, result.stderr
    assert b"image: reg.example/remora:9" in result.stdout
    assert b"- http://control.mesh:15010" in result.stdout


def test_skip_notes_go_to_stderr_only():
    """Skipped workloads are named on stderr; stdout carries the unchanged manifest alone."""
    result = _inject("-f", str(FIXTURES / "host-network.yaml"))
    assert result.returncode == 0
    assert result.stdout == (FIXTURES / "host-network.yaml").read_bytes()
    assert b"DaemonSet/node-exporter: not injected: hostNetwork" in result.stderr


def test_missing_file_fails_cleanly(tmp_path):
    """A file that does not exist: exit 1, its name on stderr, nothing on stdout."""
    missing = tmp_path / "nope.yaml"
    result = _inject("-f", str(missing))
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode().strip() == f"remora inject: cannot read {missing}: No such file or directory"


def test_invalid_document_fails_without_half_output():
    """A bad document after good ones: exit 1, the document named, and not a byte on stdout."""
    good = (FIXTURES / "pod.yaml").read_bytes()
    bad = b"---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: broken}\nspec: {template: {spec: {}}}\n"
    result = _inject("-f", "-", stdin=good + bad)
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode().strip() == (
        "remora inject: -: document 2 (line 15) Deployment/broken: "
        "spec.template.spec.containers: expected at least one container")


def test_control_flag_must_be_a_url():
    """--control that is not an http(s) URL is refused by the argument parser (exit 2)."""
    result = _inject("-f", "-", "--control", "remora-control:15010", stdin=b"")
    assert result.returncode == 2
    assert b"expected an http:// or https:// URL" in result.stderr
