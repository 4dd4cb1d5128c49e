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
    trust bundle it serves is that root; the ConfigMap's files are its --config-dir."""
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
    control = ControlProcess(dict(find("ConfigMap", "remora-mesh-config")["data"]), *ca_flags)
    try:
        control.wait_ready(timeout=60)
        bundle = control.get("/v1/trust-bundle")
        root = (cacerts / "root-cert.pem").read_text().strip()
        assert [pem.strip() for pem in bundle["trust_bundle"]] == [root]
        assert bundle["trust_domain"] == "cluster.local"
    finally:
        control.stop()
