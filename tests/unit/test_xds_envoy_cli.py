"""`remora envoy-config`: the bootstrap JSON for a config, clear errors for what cannot be rendered."""
from __future__ import annotations

import json

from remora.cli import main
from tests.envoy_render_inputs import FIXTURES, ROOT

MESH = str(ROOT / "examples" / "mesh.yaml")


def test_prints_the_outbound_bootstrap_of_the_demo_mesh(capsys):
    """The demo mesh renders to JSON with its subset clusters and the chosen ports."""
    assert main(["envoy-config", "-f", MESH, "--listen-port", "16001", "--admin-port", "16000"]) == 0
    boot = json.loads(capsys.readouterr().out)
    names = {c["name"] for c in boot["static_resources"]["clusters"]}
    assert "outbound|9080|v2|reviews.default.svc.cluster.local" in names
    listener = boot["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"]["port_value"] == 16001
    assert boot["admin"]["address"]["socket_address"]["port_value"] == 16000


def test_inbound_writes_the_server_sidecar_to_out(tmp_path):
    """--inbound --out FILE: the server side (inbound listener -> app port) is written to FILE."""
    out = tmp_path / "envoy.json"
    assert main(["envoy-config", "-f", MESH, "--inbound", "--app-port", "9999",
                 "--cert-dir", str(tmp_path / "certs"), "--out", str(out)]) == 0
    boot = json.loads(out.read_text())
    assert [c["name"] for c in boot["static_resources"]["clusters"]] == ["inbound|9999||"]
    # no PeerAuthentication: PERMISSIVE, so a TLS chain and a plaintext chain
    assert len(boot["static_resources"]["listeners"][0]["filter_chains"]) == 2


def test_inbound_permissive_without_certificates_says_what_is_missing(capsys):
    """PERMISSIVE/STRICT inbound needs --cert-dir; the error says so instead of a traceback."""
    assert main(["envoy-config", "-f", MESH, "--inbound"]) == 1
    assert "PERMISSIVE needs a certificate directory" in capsys.readouterr().err


def test_invalid_config_is_reported_like_analyze(capsys):
    """Config Remora rejects is reported with Remora's own error (file, resource, field)."""
    assert main(["envoy-config", "-f", str(FIXTURES / "000-01-VirtualService-my-service.yaml")]) == 1
    err = capsys.readouterr().err
    assert "invalid configuration" in err and "spec.http[0].route[0].destination.subset" in err


def test_unrenderable_config_names_what_is_not_translated(capsys):
    """Valid config Envoy rendering does not cover fails with the kind it cannot render."""
    assert main(["envoy-config", "-f", str(FIXTURES / "002-14-Sidecar-default.yaml")]) == 1
    assert "cannot render for Envoy: kinds Sidecar" in capsys.readouterr().err
