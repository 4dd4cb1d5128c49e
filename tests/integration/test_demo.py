"""The `make demo` mesh: the apps' calling contract, the mesh template, and whole runs."""
from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import msgspec
import pytest
import yaml
from aiohttp import web

from examples import topology
from remora.config.model import DestinationRuleSpec, ServiceEntrySpec, VirtualServiceSpec

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LIVE_LINE = re.compile(
    r"^\[\s*(\d+)s\] reviews split\s+v1\s+(\d+)% \((\d+)\)\s+v2\s+(\d+)% \((\d+)\)"
    r"\s+v3\s+(\d+)% \((\d+)\)\s+errors (\d+)",
    re.M,
)


def remove_kept_logs(out: str) -> None:
    """The demo keeps its folder (logs, control state, CA key) after a failure, for people;
    a test has the demo's output and needs no folder left behind."""
    kept = re.search(r"^logs kept in (.+)$", out, re.M)
    if kept:
        shutil.rmtree(kept.group(1), ignore_errors=True)


def run_demo(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "examples.demo", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    remove_kept_logs(result.stdout)
    return result


# ---- the apps, with a stand-in for the sidecar --------------------------------------------

async def _wait_http(url: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(url)
            await asyncio.sleep(0.1)


async def test_apps_call_peers_only_through_outbound_proxy():
    """productpage -> reviews v2 -> ratings works when every hop is an absolute-form proxy request."""
    proxy_port, pp_port, rv_port, rt_port = topology.free_ports(4)
    routes = {"reviews:9080": rv_port, "ratings:9080": rt_port}
    seen: list[str] = []

    async def relay(request: web.Request) -> web.Response:
        # A sidecar's outbound listener sees the absolute URL and routes on Host.
        seen.append(f"{request.method} {request.url} Host={request.headers['Host']}")
        target = f"http://127.0.0.1:{routes[request.headers['Host']]}{request.path_qs}"
        async with aiohttp.ClientSession() as s, s.get(target) as r:
            return web.Response(body=await r.read(), status=r.status, content_type=r.content_type)

    stub = web.Application()
    stub.router.add_route("*", "/{tail:.*}", relay)
    runner = web.AppRunner(stub)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", proxy_port).start()
    outbound = f"http://127.0.0.1:{proxy_port}"
    procs = [
        subprocess.Popen([sys.executable, "-m", f"examples.apps.{app}", "--port", str(port),
                          "--outbound", outbound, *extra], cwd=ROOT)
        for app, port, extra in (
            ("productpage", pp_port, ()),
            ("reviews", rv_port, ("--version", "v2")),
            ("ratings", rt_port, ()),
        )
    ]  # fmt: skip
    try:
        for port in (pp_port, rv_port, rt_port):
            await _wait_http(f"http://127.0.0.1:{port}/healthz")
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{pp_port}/api/productpage") as r:
                assert r.status == 200
                assert await r.json() == {"reviews_version": "v2", "rating": 5, "stars": "black"}
            async with s.get(f"http://127.0.0.1:{pp_port}/") as r:
                assert "reviews v2" in await r.text()
        assert seen[0] == "GET http://reviews:9080/reviews/0 Host=reviews:9080"
        assert seen[1] == "GET http://ratings:9080/ratings/0 Host=ratings:9080"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            assert p.wait(timeout=10) == 0  # SIGTERM is a clean exit for the apps
        await runner.cleanup()


# ---- the mesh template ------------------------------------------------------------------

def test_mesh_config_selects_the_registering_workloads():
    """Each service selects its instances by the `app` label their sidecars register with."""
    docs = list(yaml.safe_load_all(topology.MESH_CONFIG.read_text()))
    spec_types = {"ServiceEntry": ServiceEntrySpec, "DestinationRule": DestinationRuleSpec}
    specs = {(d["kind"], d["metadata"]["name"]): msgspec.convert(d["spec"], spec_types[d["kind"]]) for d in docs}
    for inst in topology.INSTANCES:
        selector = specs["ServiceEntry", inst.app].workload_selector
        labels = dict(item.split("=") for item in inst.labels.split(","))
        assert selector.labels.items() <= labels.items(), inst
    subsets = {s.name: s.labels for s in specs["DestinationRule", "reviews"].subsets}
    assert subsets == {v: {"version": v} for v in ("v1", "v2", "v3")}


def test_route_template_fills_the_weights():
    """The reviews route template renders into a VirtualService with the asked weights."""
    doc = yaml.safe_load(topology.render_route((50, 30, 20)))
    split = msgspec.convert(doc["spec"], VirtualServiceSpec).http[-1]
    assert [(d.destination.subset, d.weight) for d in split.route] == [("v1", 50), ("v2", 30), ("v3", 20)]


# ---- whole runs ---------------------------------------------------------------------------

def test_demo_splits_traffic_through_real_sidecars():
    """A 6 s demo run prints the URL, live lines with all three versions, no errors, and exits 0."""
    result = run_demo("--duration", "6")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Traceback" not in out, out
    assert re.search(r"^Open http://127\.0\.0\.1:\d+/ ", result.stdout, re.M), out
    lines = LIVE_LINE.findall(result.stdout)
    assert len(lines) >= 3, out
    last = [int(x) for x in lines[-1]]
    v1, v2, v3, errors = last[2], last[4], last[6], last[7]
    assert v1 > 0 and v2 > 0 and v3 > 0, out
    assert errors == 0, out
    assert re.search(r"header route  end-user: jason -> (v2 ){5} ok", result.stdout), out
    assert re.search(r"^Shift reviews traffic to v3: .* apply -f \S+reviews-v3\.yaml --control http://", result.stdout, re.M), out
    # Every sidecar got a certificate from the control server's CA: all hops were mutual TLS.
    secured = re.search(r"^requests between sidecars: (\d+) \((\d+) mutual_tls\)$", result.stdout, re.M)
    assert secured and int(secured[1]) > 0 and secured[1] == secured[2], out


def test_demo_shift_shows_on_the_next_lines():
    """`--shift-after` runs the printed `remora apply`; within two lines the last second is all v3."""
    result = run_demo("--duration", "7", "--shift-after", "3")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    before, applied, after = re.split(r"^  remora apply: (VirtualService/default/reviews \w+)$", result.stdout,
                                      maxsplit=1, flags=re.M)
    assert applied.endswith(("configured", "created")), out
    lines_after = re.findall(r"\| last 1s +v1 +(\d+)% +v2 +(\d+)% +v3 +(\d+)%", after)
    assert ("0", "0", "100") in lines_after[1:3], out
    assert int(LIVE_LINE.findall(after)[-1][7]) == 0, out   # no errors across the shift


def test_demo_stops_cleanly_on_sigint():
    """Ctrl-C after traffic started stops every child and exits 0 without a traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.demo"], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    seen = []
    watchdog = threading.Timer(90, proc.kill)  # reading stdout must not block the suite forever
    watchdog.start()
    try:
        for line in proc.stdout:  # wait for the first live line, then interrupt
            seen.append(line)
            if LIVE_LINE.match(line) or line.startswith("demo:"):
                break
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        watchdog.cancel()
        proc.kill()
    out = "".join(seen) + rest
    remove_kept_logs(out)
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    assert re.search(r"^stopped 11 processes$", out, re.M), out


def test_demo_reports_a_dying_sidecar():
    """A sidecar that exits on its own makes the demo print its stderr and exit non-zero."""
    crash = f"{sys.executable} -c 'import sys; sys.stderr.write(\"sidecar boom\\n\"); sys.exit(3)'"
    result = run_demo("--duration", "5", "--sidecar", crash, timeout=60)
    assert result.returncode != 0
    assert "exited with code 3 unexpectedly" in result.stdout
    assert "| sidecar boom" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
