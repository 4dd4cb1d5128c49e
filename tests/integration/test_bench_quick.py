"""The benchmark harness end to end (`python -m benchmarks --quick`), plus its pure parts."""
from __future__ import annotations

import json
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from benchmarks import wrk
from benchmarks.catalog import SCENARIOS
from benchmarks.load_scenarios import FIXED_RATE_SCENARIOS
from benchmarks.certs import issue_cert_dirs
from remora.xds.envoy import render_bootstrap, render_inbound_bootstrap
from benchmarks.mesh import (MESH_NAMESPACE, SERVER_LABELS, load_documents, one_hop_yaml,
                             two_hop_yaml)
from benchmarks.procs import ProcessFailed, free_port, http_get
from benchmarks.runner import Options, start_data_plane
from benchmarks.scenarios import prepare_mesh_2hop_mtls, verify_plaintext_refused
from benchmarks.tools import MissingTool, find_envoy, have_tool, install_hint
from benchmarks.upstream import start_upstream

REPO_ROOT = Path(__file__).resolve().parents[2]

WRK_OUTPUT = """\
Running 2s test @ http://127.0.0.1:8080/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     6.44ms    2.10ms  25.83ms   85.81%
    Req/Sec     9.99k     1.13k   11.27k    80.00%
  Latency Distribution
     50%  812.00us
     75%    7.06ms
     90%    8.45ms
     99%    1.20s
  19925 requests in 2.01s, 3.65MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:   9931.55
Transfer/sec:      1.82MB
"""


def _require(tool: str) -> None:
    if not have_tool(tool):
        pytest.skip(f"`{tool}` not installed: {install_hint(tool)}")


def test_wrk_report_parsed_with_units_and_errors() -> None:
    """wrk's --latency report yields rps, percentiles in ms across us/ms/s, and error counts."""
    res = wrk.parse(WRK_OUTPUT)
    assert (res.requests, res.seconds, res.rps) == (19925, 2.01, 9931.55)
    assert (res.p50_ms, res.p75_ms, res.p99_ms) == (0.812, 7.06, 1200.0)
    assert (res.non_2xx_3xx, res.socket_errors, res.timeouts) == (7, 5, 3)


def test_envoy_bootstrap_carries_the_istio_route() -> None:
    """The rendered bootstrap keeps the route's retries, timeout, outlier detection, limits off."""
    boot = render_bootstrap(load_documents(one_hop_yaml(8081)), 8080, 8082)
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    vhost = hcm["typed_config"]["route_config"]["virtual_hosts"][0]
    action = vhost["routes"][0]["route"]
    assert {"upstream", "upstream:*"} <= set(vhost["domains"])  # what the load generator sends
    assert action["timeout"] == "15s"
    assert action["cluster"] == "outbound|80||upstream.default.svc.cluster.local"
    assert action["retry_policy"]["num_retries"] == 2
    assert action["retry_policy"]["retriable_status_codes"] == [503]
    assert hcm["typed_config"]["generate_request_id"] is False
    cluster = boot["static_resources"]["clusters"][0]
    assert cluster["outlier_detection"]["consecutive_5xx"] == 5
    assert cluster["circuit_breakers"]["thresholds"][0]["max_requests"] >= 10**9
    ep = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert ep["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 8081}


@pytest.mark.integration
def test_envoy_accepts_rendered_bootstrap(tmp_path: Path) -> None:
    """`envoy --mode validate` accepts the bootstrap rendered from the scenario's YAML."""
    try:
        envoy = find_envoy()
    except MissingTool as exc:
        pytest.skip(str(exc))
    import yaml

    config = tmp_path / "envoy.yaml"
    config.write_text(yaml.safe_dump(render_bootstrap(load_documents(one_hop_yaml(8081)),
                                                      8080, 8082)))
    out = subprocess.run([envoy, "--mode", "validate", "-c", str(config),
                          "--disable-hot-restart"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def _envoy_or_skip() -> str:
    try:
        return find_envoy()
    except MissingTool as exc:
        pytest.skip(str(exc))


@pytest.mark.integration
def test_envoy_accepts_rendered_mtls_bootstraps(tmp_path: Path) -> None:
    """`envoy --mode validate` accepts both 2-hop bootstraps, with the real certificate files."""
    import yaml

    envoy = _envoy_or_skip()
    certs = issue_cert_dirs(tmp_path, MESH_NAMESPACE, ["client", "server"])
    docs = load_documents(two_hop_yaml(8081))
    configs = {
        "client": render_bootstrap(docs, 8080, 8082, certs["client"]),
        "server": render_inbound_bootstrap(docs, namespace=MESH_NAMESPACE, labels=SERVER_LABELS,
                                           inbound_port=8081, app_port=8083, admin_port=8084,
                                           cert_dir=certs["server"]),
    }
    for role, boot in configs.items():
        config = tmp_path / f"envoy-{role}.yaml"
        config.write_text(yaml.safe_dump(boot))
        out = subprocess.run([envoy, "--mode", "validate", "-c", str(config),
                              "--disable-hot-restart"], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, role + ": " + out.stdout + out.stderr


@pytest.mark.integration
def test_mtls_check_fails_loudly_on_a_plaintext_hop(tmp_path: Path) -> None:
    """A 2-hop data plane whose hops run plaintext is refused by the scenario's mTLS check."""
    opts = Options(out=tmp_path, envoy=_envoy_or_skip())
    with ExitStack() as stack:
        port = free_port()
        upstream, _kind = start_upstream(port, tmp_path / "upstream", opts.pinning)
        stack.callback(upstream.stop)
        plane = prepare_mesh_2hop_mtls(tmp_path, port, opts, mtls=False,
                                       check_mtls=True)["envoy"]()
        children = start_data_plane(plane, 1, opts, tmp_path, stack)
        status, _body = http_get(plane.port, "/", host=plane.host, timeout=5.0)
        assert status == 200
        with pytest.raises(ProcessFailed, match="ran in plaintext"):
            plane.verify(plane, children)


@pytest.mark.integration
def test_quick_run_measures_both_proxies(tmp_path: Path) -> None:
    """`--quick` runs every scenario (mesh-2hop-mtls with both hops' mTLS checked) and writes
    results.json with Remora and Envoy rps > 0, CPU per request and their ratios, each new
    scenario's own metrics, the issue's targets, summary.md and the charts."""
    _require("wrk")
    _require("envoy")
    out = subprocess.run([sys.executable, "-m", "remora", "bench", "--quick",
                          "--out", str(tmp_path)], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=460)
    assert out.returncode == 0, out.stdout + out.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["scenarios"]) == set(SCENARIOS)
    scenarios = {name: sc for name, sc in results["scenarios"].items() if not sc.get("skipped")}
    if not have_tool("h2load"):
        for name in FIXED_RATE_SCENARIOS:
            assert "nghttp2-client" in results["scenarios"][name]["skipped"]
    for name, scenario in scenarios.items():
        rps = "r1000_rps" if name in FIXED_RATE_SCENARIOS else "rps"  # one row per rate
        for proxy in ("remora", "envoy"):
            assert scenario["summary"][proxy][rps]["median"] > 0, (name, proxy)
            assert scenario["summary"][proxy]["cpu_s_per_1k"]["median"] > 0, (name, proxy)
        assert set(scenario["ratios"]) >= {"cpu_s_per_1k", "rss_mib"}, name
    two_hop = results["scenarios"]["mesh-2hop-mtls"]["runs"]
    assert {tuple(r["rss_mib_by_sidecar"]) for r in two_hop} == {("client", "server")}
    assert {g["text"] for g in results["scenarios"]["http1-1hop"]["goals"]} == {
        "requests/s >= 1.5x Envoy's"}
    for proxy in ("remora", "envoy"):
        large = scenarios["large-bodies"]["summary"][proxy]
        assert large["mb_per_s"]["median"] > large["rps"]["median"]  # 1 MiB each
        many = scenarios["many-connections"]["summary"][proxy]
        assert many["rss_load_mib"]["median"] > 0 and "rss_kib_per_conn" in many
        for name in FIXED_RATE_SCENARIOS:  # the one-hop route and both 2-hop routes
            if name in scenarios:
                fixed = scenarios[name]["summary"][proxy]
                assert {"r200_added_p99_ms", "r1000_added_max_ms"} <= set(fixed), name
                assert fixed["r1000_rps"]["median"] > 500, name
    # without retries 1 in 6 requests would fail; Envoy's retries (2 on 5xx) hide nearly all
    retries = scenarios["retries-under-failure"]["summary"]
    assert retries["envoy"]["success_pct"]["median"] > 95, retries
    summary = (tmp_path / "summary.md").read_text()
    # 6 HTTP/1 scenarios with a requests/s row, plus h2-1hop and grpc-2hop-mtls
    assert summary.count("| requests/s |") == 8 and "Target: requests/s >= 1.5x" in summary
    assert {g["text"] for g in results["scenarios"]["grpc-2hop-mtls"]["goals"]} == {
        "requests/s >= 1.0x Envoy's"}
    pytest.importorskip("matplotlib")
    assert (tmp_path / "requests-per-second.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.integration
def test_the_relay_pair_relays_over_mutual_tls_and_refuses_plaintext(tmp_path: Path) -> None:
    """mesh-2hop-mtls's floor: a request crosses the relay pair intact, B takes only mutual TLS
    (its mTLS check passes), and a plaintext relay pair fails that check."""
    _require("nginx")
    opts = Options(out=tmp_path)
    with ExitStack() as stack:
        port = free_port()
        upstream, _kind = start_upstream(port, tmp_path / "upstream", opts.pinning)
        stack.callback(upstream.stop)
        plane = prepare_mesh_2hop_mtls(tmp_path, port, opts)["relay"]()
        children = start_data_plane(plane, 1, opts, tmp_path, stack)
        status, body = http_get(plane.port, "/", host=plane.host, timeout=5.0)
        assert status == 200 and body
        plane.verify(plane, children)
    with ExitStack() as stack:
        port = free_port()
        upstream, _kind = start_upstream(port, tmp_path / "upstream2", opts.pinning)
        stack.callback(upstream.stop)
        plain = prepare_mesh_2hop_mtls(tmp_path / "plain", port, opts, mtls=False)["relay"]()
        children = start_data_plane(plain, 1, opts, tmp_path, stack)
        assert http_get(plain.port, "/", host=plain.host, timeout=5.0)[0] == 200
        server = plain.sidecars[1].cmd
        inbound = int(server[server.index("--listen") + 1])
        with pytest.raises(ProcessFailed, match="was answered"):
            verify_plaintext_refused(inbound)(plain, children)
