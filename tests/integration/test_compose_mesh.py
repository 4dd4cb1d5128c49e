"""The compose mesh for real, in `make test` when a Docker daemon can be had (else skipped,
saying what is missing): built on the locally made base image, brought up with each
installed Compose (v1 `docker-compose`; v2 where present), traffic through the captured
sidecars with mutual TLS, a traffic shift with the documented command, torn down to nothing."""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections import Counter

import pytest

from tests.docker.base_image import BaseImageError
from tests.docker.docker_env import Daemon, DockerUnavailable, docker
from tests.integration.compose_mesh import (
    ComposeMesh, all_image_ids, compose_commands, copy_checkout, provide_base_image,
)

PODS = ("productpage", "reviews-v1", "reviews-v2", "reviews-v3", "ratings")
COMMANDS = compose_commands() if shutil.which("docker") else []


@pytest.fixture(scope="module")
def daemon():
    """A Docker daemon: the running one, or a dockerd started (and stopped) here."""
    if not COMMANDS:
        pytest.skip("compose mesh: no Compose installed (apt-get install docker.io docker-compose)")
    started = Daemon()
    try:
        started.ensure()
    except DockerUnavailable as why:
        started.stop()
        pytest.skip(f"compose mesh: {why}")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def base_image(daemon):
    """remora-base:bookworm (the compose file's default base) for the module; a tag this made
    is removed at the end."""
    try:
        made = provide_base_image()
    except BaseImageError as why:
        pytest.skip(f"compose mesh: cannot make the base image: {why}")
    yield
    for tag in made:
        docker("rmi", tag, check=False)


@pytest.fixture(params=COMMANDS, ids=lambda command: " ".join(command))
def mesh(base_image, request, tmp_path):
    """The mesh up with one Compose, from a copy of the checkout; down, with every image the
    run made, whatever happened."""
    before = all_image_ids()
    project = ComposeMesh(request.param, copy_checkout(tmp_path / "checkout"))
    try:
        project.compose("up", "--build", "-d", timeout=1500.0)
        yield project
    finally:
        project.down()
        for image in sorted(all_image_ids() - before):   # the built image and the build's intermediates
            docker("rmi", "-f", image, check=False)


def wait_route(mesh: ComposeMesh, token: str, text: str, timeout: float = 30.0) -> None:
    """Until productpage's sidecar serves a reviews route whose table shows `text`."""
    deadline = time.monotonic() + timeout
    while text not in (out := mesh.remora("proxy-config", "routes", "productpage", token=token).stdout):
        assert time.monotonic() < deadline, f"productpage's sidecar never got {text!r}:\n{out}"
        time.sleep(0.5)


def wait_synced(mesh: ComposeMesh, token: str, timeout: float = 120.0) -> str:
    """`remora status` once every pod's sidecar is SYNCED on every type."""
    deadline, out = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        result = mesh.remora("status", token=token)
        out = result.stdout + result.stderr
        rows = [line for line in result.stdout.splitlines() if line.split()[:1] and "~" in line.split()[0]]
        workloads = {row.split()[2] for row in rows if row.split()[4:8] == ["SYNCED"] * 4}
        if result.returncode == 0 and workloads >= set(PODS):
            return result.stdout
        time.sleep(1)
    raise AssertionError(f"not every sidecar SYNCED within {timeout:g}s:\n{out}\n{mesh.logs()}")


def mtls_requests(metrics: str, source: str) -> float:
    """Server-side requests from `source` over mutual TLS, from a sidecar's Istio metrics."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("istio_requests_total{") and 'reporter="destination"' in line \
                and 'connection_security_policy="mutual_tls"' in line \
                and f'source_principal="spiffe://cluster.local/ns/default/sa/{source}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.integration
def test_compose_mesh_serves_with_mtls_shifts_traffic_and_leaves_nothing(mesh):
    """The documented compose flow works for real: productpage answers through its captured
    sidecar, the admin token comes out with `exec -T`, every sidecar is SYNCED, proxy-config
    reaches a sidecar in its pod over the control stream, hops are mutual TLS in the Istio
    metrics, `remora apply -f examples/reviews-canary.yaml` shifts reviews traffic, and `down
    -v` leaves no container, network or volume of the project. Then `remora delete` brings the
    file's route back, and editing the bind-mounted file with `sed -i` takes effect."""
    first = mesh.wait_productpage()
    assert first["reviews_version"] in ("v1", "v2", "v3")
    # The ingress gateway (bookinfo-gateway) reaches productpage too, over mTLS as its own identity.
    assert mesh.productpage(ingress=True)["reviews_version"] in ("v1", "v2", "v3")
    token = mesh.compose("exec", "-T", "control", "cat", "/var/lib/remora/control/admin-token").stdout
    assert re.fullmatch(r"\S+\n?", token), f"the admin token should be one clean line: {token!r}"
    token = token.strip()
    status = wait_synced(mesh, token)
    assert re.search(r"\s0\.\d+\.\d+\s", status), status   # each sidecar's Remora version is shown

    routes = mesh.remora("proxy-config", "routes", "productpage", token=token)
    assert routes.returncode == 0, routes.stderr
    assert "(over the control stream)" in routes.stdout.splitlines()[0]
    assert "reviews|v1 50%, reviews|v2 30%, reviews|v3 20%" in routes.stdout

    before = Counter(mesh.versions(40))
    assert set(before) <= {"v1", "v2", "v3"} and before["v1"] > 0, before
    assert mesh.productpage({"end-user": "jason"})["reviews_version"] == "v2"
    reviews_seen = sum(mtls_requests(mesh.sidecar_metrics(f"reviews-{v}"), "productpage") for v in before)
    assert reviews_seen >= 40, "productpage -> reviews should be mutual TLS in the server-side metrics"
    assert mtls_requests(mesh.sidecar_metrics("ratings"), "reviews") > 0   # reviews v2/v3 -> ratings

    applied = mesh.remora("apply", "-f", "examples/reviews-canary.yaml", token=token)
    assert applied.returncode == 0 and "VirtualService/default/reviews configured" in applied.stdout, applied.stderr
    wait_route(mesh, token, "reviews|v1 90%, reviews|v3 10%")
    after = Counter(mesh.versions(60))
    assert after["v2"] == 0 and after["v1"] > 0 and set(after) <= {"v1", "v3"}, after
    assert mesh.productpage({"end-user": "jason"})["reviews_version"] == "v2"

    deleted = mesh.remora("delete", "vs", "reviews", token=token)
    assert "deleted (back to /etc/remora/mesh/reviews-route.yaml)" in deleted.stdout, deleted.stdout + deleted.stderr
    wait_route(mesh, token, "reviews|v1 50%, reviews|v2 30%, reviews|v3 20%")
    # As a user edits the file on the host: sed -i writes a new file (a new inode).
    route = mesh.root / "deploy/compose/mesh/reviews-route.yaml"
    subprocess.run(["sed", "-i", "s/weight: 50/weight: 0/; s/weight: 30/weight: 0/; s/weight: 20/weight: 100/",
                    str(route)], check=True)
    wait_route(mesh, token, "reviews|v3 100%")
    assert set(mesh.versions(20)) == {"v3"}

    mesh.down()
    assert mesh.leftovers() == []
