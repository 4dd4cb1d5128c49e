"""The shipped control Deployment's CA set-up works: make-cacerts.sh output, mounted where the args say."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.integration.control_process import ControlProcess
from tests.kube_manifests import DEPLOY, control_pod, find, flag

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def test_control_starts_with_the_shipped_ca_flags_and_mesh_config(tmp_path):
    """make-cacerts.sh makes a CA the server accepts through the Deployment's --ca-* flags; the
    trust bundle it serves is that root; the ConfigMap's files are its --config-dir; the admin
    token Secret's file guards the admin API."""
    cacerts = tmp_path / "cacerts"
    made = subprocess.run(["sh", str(DEPLOY / "make-cacerts.sh"), str(cacerts)], capture_output=True,
                          text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert "create secret generic cacerts" in made.stdout
    _, container = control_pod()
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "cacerts")
    ca_flags = []
    for name in ("--ca-cert", "--ca-key", "--ca-chain"):
        ca_flags += [name, flag(container["args"], name).replace(mount, str(cacerts))]
    admin = flag(container["args"], "--admin-token-file")
    (tmp_path / "admin").mkdir()
    made_token = "0123456789abcdef" * 4   # as `openssl rand -hex 32` makes one
    (tmp_path / "admin" / "token").write_text(made_token)
    ca_flags += ["--admin-token-file", str(tmp_path / "admin" / admin.rsplit("/", 1)[1])]
    control = ControlProcess(dict(find("ConfigMap", "remora-mesh-config")["data"]), *ca_flags)
    try:
        control.wait_ready(timeout=60)
        assert control.admin_token == made_token and control.request("GET", "/v1/status")[0] == 200
        assert control.request("GET", "/v1/status", auth=False)[0] == 401
        bundle = control.get("/v1/trust-bundle")
        root = (cacerts / "root-cert.pem").read_text().strip()
        assert [pem.strip() for pem in bundle["trust_bundle"]] == [root]
        assert bundle["trust_domain"] == "cluster.local"
    finally:
        control.stop()
