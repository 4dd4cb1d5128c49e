"""What a plaintext sidecar on a static file loads: no web framework, no X.509 library.

Each module a sidecar imports stays in its RSS for good (docs/benchmarks.md, "Where Remora
falls short"): admin, :15090 and :15021 are served by Remora's own HTTP server, aiohttp is
for --control alone, cryptography for certificates alone. The sidecar here serves a
request, a scrape and a probe, then quits; it writes sys.modules at exit.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.integration.conftest import mesh_yaml
from tests.integration.test_mtls_outbound import get
from tests.integration.upstreams import free_port

# Writes sys.modules to argv[1] at exit, then runs `remora ARGS...`.
LAUNCH = ("import atexit, sys\n"
          "out = sys.argv.pop(1)\n"
          "atexit.register(lambda: open(out, 'w').write('\\n'.join(sorted(sys.modules))))\n"
          "from remora.cli import main\n"
          "sys.exit(main(sys.argv[1:]))\n")


@pytest.fixture(scope="module")
def sidecar_modules(upstreams, tmp_path_factory) -> set[str]:
    work = tmp_path_factory.mktemp("imports")
    (work / "mesh.yaml").write_text(mesh_yaml(upstreams.ports))
    ports = {name: free_port() for name in ("outbound", "admin", "prometheus", "health")}
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, str(work / "modules.txt"), "proxy", "--mesh-config", str(work / "mesh.yaml"),
         "--outbound-port", str(ports["outbound"]), "--admin-port", str(ports["admin"]),
         "--prometheus-port", str(ports["prometheus"]), "--health-port", str(ports["health"]),
         "--access-log", "off"],
        stdout=subprocess.DEVNULL, stderr=open(work / "stderr.log", "wb"))
    try:
        deadline = time.time() + 20
        while True:
            try:
                if get(ports["admin"], "127.0.0.1", "/ready")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, (work / "stderr.log").read_text()
            time.sleep(0.05)
        assert get(ports["outbound"], "echo", "/")[0] == 200
        assert b"istio_requests_total" in get(ports["prometheus"], "127.0.0.1", "/stats/prometheus")[1]
        assert get(ports["health"], "127.0.0.1", "/healthz/ready") == (200, b"LIVE\n")
        request = urllib.request.Request(f"http://127.0.0.1:{ports['admin']}/quitquitquit", method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return set((work / "modules.txt").read_text().split())


def _loaded(modules: set[str], package: str) -> list[str]:
    return sorted(m for m in modules if m == package or m.startswith(package + "."))


def test_plaintext_sidecar_loads_no_aiohttp(sidecar_modules):
    """Admin, :15090 and :15021 need no web framework: aiohttp and yarl stay unloaded without --control."""
    assert _loaded(sidecar_modules, "aiohttp") == []
    assert _loaded(sidecar_modules, "yarl") == []


def test_plaintext_sidecar_loads_no_yaml_reference_or_jwt(sidecar_modules):
    """libyaml reads a plain static config (no ruamel.yaml); no RequestAuthentication, no PyJWT."""
    assert _loaded(sidecar_modules, "ruamel") == []
    assert _loaded(sidecar_modules, "jwt") == []


def test_plaintext_sidecar_loads_no_cryptography(sidecar_modules):
    """Without certificates, TLS origination or JWKS, cryptography (x509) stays unloaded."""
    assert _loaded(sidecar_modules, "cryptography") == [], os.linesep.join(_loaded(sidecar_modules, "cryptography"))
