"""The control-side CLI: `remora apply | get | delete | status | proxy-config | analyze` output and exit codes."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from remora.wire.protocol import Node
from tests.integration.conftest import mesh_yaml, service, virtual_service
from tests.integration.control_process import ControlProcess
from tests.integration.proxy_process import ProxyProcess
from tests.integration.xds_client import XdsTestClient

BASE = service("reviews", [(18080, {"version": "v1"})]) + service("ratings", [(18081, {})])


def _columns(line: str) -> list[str]:
    return re.split(r"\s{3,}", line.strip())


@pytest.fixture(scope="module")
def control():
    c = ControlProcess({"base.yaml": BASE}).wait_ready()
    yield c
    assert c.stop() == 0, c.stderr()


def test_apply_prints_one_line_per_resource_like_kubectl(control, tmp_path):
    """`remora apply -f FILE` prints `Kind/ns/name created|configured|unchanged`; `-f -` reads stdin."""
    path = tmp_path / "vs.yaml"
    path.write_text(virtual_service("ratings", "name: a"))
    first = control.cli("apply", "-f", str(path))
    assert (first.returncode, first.stdout) == (0, "VirtualService/default/ratings created\n"), first.stderr
    again = control.cli("apply", "-f", str(path))
    assert again.stdout == "VirtualService/default/ratings unchanged\n"
    piped = control.cli("apply", "-f", "-", stdin=virtual_service("ratings", "name: b"))
    assert piped.stdout == "VirtualService/default/ratings configured\n"


def test_apply_of_invalid_config_exits_1_with_the_errors(control, tmp_path):
    """An invalid apply exits 1 and prints every error as file: resource: field path: message."""
    path = tmp_path / "bad.yaml"
    path.write_text(virtual_service("reviews", "timeout: soon").replace("name: reviews", "name: slow"))
    result = control.cli("apply", "-f", str(path))
    assert result.returncode == 1 and result.stdout == ""
    assert f"{path}: VirtualService/default/slow: spec.http[0].timeout: invalid duration 'soon'" in result.stderr


def test_get_lists_with_origin_and_shows_one_as_yaml(control):
    """`remora get` accepts short and plural kinds, lists origin and source, and prints one resource as YAML."""
    listed = control.cli("get", "ServiceEntries", "-n", "default")
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "ORIGIN", "SOURCE"]
    assert lines[1].split()[:3] == ["default", "ratings", "file"] and lines[1].endswith("base.yaml")
    one = control.cli("get", "se", "reviews", "-o", "yaml")
    assert one.returncode == 0 and "kind: ServiceEntry" in one.stdout and "name: reviews" in one.stdout
    missing = control.cli("get", "dr", "nothing")
    assert missing.returncode == 1 and "DestinationRule/default/nothing not found" in missing.stderr
    unknown = control.cli("get", "envoyfilters")
    assert unknown.returncode == 1 and "unknown kind 'envoyfilters'" in unknown.stderr


def test_delete_removes_applied_and_refuses_file_resources(control):
    """`remora delete` deletes an applied resource; a file-only resource exits 1 telling to remove it from the file."""
    assert control.cli("apply", "-f", "-", stdin=service("details", [(18082, {})])).returncode == 0
    deleted = control.cli("delete", "se", "details")
    assert (deleted.returncode, deleted.stdout) == (0, "ServiceEntry/default/details deleted\n")
    refused = control.cli("delete", "se", "reviews")
    assert refused.returncode == 1 and "remove it from the file" in refused.stderr


async def test_status_prints_a_row_per_sidecar_with_sync_state(control):
    """`remora status` shows each sidecar's node id, namespace, workload, identity, per-type sync
    state, the Remora version it runs and its uptime."""
    c = await XdsTestClient(control.url, Node(id="productpage-v1.default~h~7", workload="productpage-v1",
                                              service_account="bookinfo-productpage", remora_version="9.8.7",
                                              started_at=time.time() - 300)).connect()
    try:
        await c.sync()
        control.wait_until(lambda: control.sidecar(c.node.id)["types"]["routes"]["status"] == "SYNCED", what="SYNCED")
        result = control.cli("status")
        assert result.returncode == 0, result.stderr
        header, row = [line for line in result.stdout.splitlines() if line.startswith(("NAME", "productpage"))]
        assert _columns(header) == ["NAME", "NAMESPACE", "WORKLOAD", "IDENTITY", "CLUSTERS", "ENDPOINTS", "ROUTES",
                                    "POLICIES", "VERSION", "UPTIME", "LAST SEEN"]
        assert row.split() == ["productpage-v1.default~h~7", "default", "productpage-v1",
                               "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
                               "SYNCED", "SYNCED", "SYNCED", "SYNCED", "9.8.7", "5m", row.split()[-2], "ago"]
        assert result.stdout.startswith("config version ")
    finally:
        await c.close()


async def test_proxy_config_reads_the_sidecar_admin_found_through_status(control, upstreams):
    """`remora proxy-config routes|clusters|endpoints ID` finds the admin address in status and prints tables."""
    proxy = ProxyProcess(mesh_yaml(upstreams.ports)).wait_ready()
    c = await XdsTestClient(control.url, Node(id="sidecar-pc", admin=f"127.0.0.1:{proxy.admin_port}")).connect()
    try:
        control.wait_until(lambda: control.sidecar("sidecar-pc"), what="registration")
        routes = control.cli("proxy-config", "routes", "sidecar-pc")
        assert routes.returncode == 0, routes.stderr
        rows = [_columns(line) for line in routes.stdout.splitlines()[1:]]
        assert rows[0] == ["VIRTUAL SERVICE", "HOSTS", "ROUTE", "MATCH", "DESTINATIONS"]
        assert ["default/reviews", "reviews", "jason", "header end-user exact jason", "reviews|v2"] in rows
        assert ["default/reviews", "reviews", "split", "*", "reviews|v1 80%, reviews|v2 20%"] in rows
        clusters = control.cli("proxy-config", "clusters", "sidecar")   # a unique prefix is enough
        assert any(line.split()[:4] == ["reviews.default.svc.cluster.local", "9080", "v1", "outbound"]
                   for line in clusters.stdout.splitlines()), clusters.stdout
        endpoints = control.cli("proxy-config", "endpoints", "sidecar-pc")
        assert f"127.0.0.1:{upstreams.ports['v2']}   HEALTHY" in endpoints.stdout
        missing = control.cli("proxy-config", "routes", "nobody")
        assert missing.returncode == 1 and "no sidecar matching 'nobody'" in missing.stderr
    finally:
        await c.close()
        assert proxy.stop() == 0


def test_client_names_an_unreachable_server():
    """A client command against a server that is not there exits 1 naming the URL."""
    env = {**os.environ, "REMORA_CONTROL": "http://127.0.0.1:1"}
    result = subprocess.run([sys.executable, "-m", "remora", "status"], capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode == 1 and "cannot reach http://127.0.0.1:1/v1/status" in result.stderr


def test_analyze_validates_like_the_server(tmp_path):
    """`remora analyze DIR` rejects what `remora control` rejects, with the same error lines."""
    bad = virtual_service("reviews", "timeout: soon")
    (tmp_path / "vs.yaml").write_text(bad)
    control = ControlProcess({"vs.yaml": bad})
    assert control.proc.wait(20) == 1
    result = control.cli("analyze", str(tmp_path))
    assert result.returncode == 1
    line = "VirtualService/default/reviews: spec.http[0].timeout: invalid duration 'soon'"
    assert line in result.stderr and line in control.stderr()
