"""Control-server replicas over a real three-member etcd cluster (`--store etcd://...`):
applies, registrations, join tokens and the CA root are shared; losing a replica or one
etcd member loses nothing; losing quorum fails applies clearly while sidecars keep serving."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import pytest
from cryptography import x509

from tests.integration.control_process import ControlProcess
from tests.integration.etcd_cluster import EtcdCluster
from tests.integration.proxy_process import ProxyProcess
from tests.integration.test_control_ca import create_token, sign
from tests.integration.test_control_failover import mesh, status, xds

pytestmark = pytest.mark.integration

VIRTUAL_SERVICE = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo]
  http:
  - match: [{uri: {prefix: /teapot}}]
    directResponse: {status: 418}
  - route: [{destination: {host: echo}}]
"""


@pytest.fixture(scope="module")
def secrets_dir():
    """The key file and admin token file every replica is given (a Kubernetes Secret's files)."""
    path = tempfile.mkdtemp(prefix="remora-replica-secrets-")
    with open(os.path.join(path, "store-key"), "w") as f:
        f.write(os.urandom(32).hex())
    with open(os.path.join(path, "admin-token"), "w") as f:
        f.write("rma_" + os.urandom(32).hex() + "\n")
    yield path
    shutil.rmtree(path)


@pytest.fixture
def cluster():
    c = EtcdCluster(3)
    yield c
    c.close()


def replica(cluster: EtcdCluster, secrets_dir: str, files: dict[str, str], grace: str = "3s") -> ControlProcess:
    return ControlProcess(files, "--store", cluster.url, "--store-key-file", os.path.join(secrets_dir, "store-key"),
                          "--admin-token-file", os.path.join(secrets_dir, "admin-token"),
                          state=False, grace=grace).wait_ready(30)


def teapot(sidecar: ProxyProcess) -> int:
    """The status of the path the applied VirtualService answers 418 for."""
    return status(sidecar, "/teapot")


def test_an_apply_on_one_replica_reaches_the_sidecars_of_another(cluster, secrets_dir, upstreams):
    """A VirtualService applied through replica A is served by a sidecar that streams from B,
    and B's API lists it as applied."""
    files = {"mesh.yaml": mesh(upstreams.ports["echo"])}
    a, b = replica(cluster, secrets_dir, files), replica(cluster, secrets_dir, files)
    sidecar = ProxyProcess(None, control=b.url).wait_ready(30)
    assert teapot(sidecar) == 200
    code, answer = a.apply(VIRTUAL_SERVICE)
    assert code == 200, answer
    b.wait_until(lambda: teapot(sidecar) == 418, what="B's sidecar to serve A's apply")
    listed = b.get("/v1/resources?kind=VirtualService")["items"]
    assert [(i["name"], i["origin"]) for i in listed] == [("echo", "applied")]
    assert b.status()["store"]["kind"] == "etcd" and b.status()["config"]["version"] == a.status()["config"]["version"]
    code, answer = b.request("DELETE", "/v1/resources/VirtualService/default/echo")
    assert code == 200, answer
    a.wait_until(lambda: not a.get("/v1/resources?kind=VirtualService")["items"], what="A to see B's delete")
    b.wait_until(lambda: teapot(sidecar) == 200, what="the route to go with the delete")


def test_an_invalid_apply_is_refused_and_nothing_reaches_the_store(cluster, secrets_dir, upstreams):
    """A VirtualService naming an unknown host is refused by A with 400; B never sees it."""
    files = {"mesh.yaml": mesh(upstreams.ports["echo"])}
    a, b = replica(cluster, secrets_dir, files), replica(cluster, secrets_dir, files)
    code, answer = a.apply(VIRTUAL_SERVICE.replace("destination: {host: echo}", "destination: {host: nowhere}"))
    assert code == 400 and any("nowhere" in e for e in answer["errors"]), answer
    time.sleep(0.5)
    assert b.get("/v1/resources?kind=VirtualService")["items"] == []


def test_certificates_from_either_replica_verify_against_one_bundle_and_revocation_is_shared(
        cluster, secrets_dir):
    """The root is made once for all replicas; a token made on A signs on B; revoked on A, B refuses it."""
    a, b = replica(cluster, secrets_dir, {}), replica(cluster, secrets_dir, {})
    bundle_a, bundle_b = a.get("/v1/trust-bundle"), b.get("/v1/trust-bundle")
    assert bundle_a == bundle_b and len(bundle_a["trust_bundle"]) == 1
    root = x509.load_pem_x509_certificate(bundle_a["trust_bundle"][0].encode())
    token = create_token(a, "default", "reviews")
    spiffe_id = "spiffe://cluster.local/ns/default/sa/reviews"
    for server in (a, b):
        code, answer, _ = sign(server, spiffe_id, token)
        assert code == 200, answer
        leaf = x509.load_pem_x509_certificate(answer["certificate"].encode())
        leaf.verify_directly_issued_by(root)
    result = a.cli("token", "revoke", token.split(".")[0])
    assert result.returncode == 0, result.stderr
    code, answer, _ = sign(b, spiffe_id, token)
    assert code == 401 and answer["reason"] == "token-revoked", answer
    assert "root-key" not in json.dumps(b.status()) and "BEGIN" not in b.stderr()


def test_a_replica_killed_under_traffic_loses_no_request(cluster, secrets_dir, upstreams):
    """SIGKILL the replica a sidecar streams from: it moves to the other within seconds, every
    request meanwhile is answered, and the other replica takes over its registration."""
    files = {"mesh.yaml": mesh(upstreams.ports["echo"])}
    a, b = replica(cluster, secrets_dir, files), replica(cluster, secrets_dir, files)
    sidecar = ProxyProcess(None, "--service", "web", "--node-id", "web-1", control=f"{a.url},{b.url}",
                           inbound_app_port=upstreams.ports["echo"]).wait_ready(30)
    b.wait_until(lambda: any(i["name"].startswith("auto-web-1") for i in
                             b.get("/v1/resources?kind=WorkloadEntry")["items"]),
                 what="B to see the sidecar A registered")
    a.proc.kill()
    a.proc.wait(10)
    killed, failures = time.monotonic(), 0
    while not (xds(sidecar)["connected"] and xds(sidecar)["control"] == b.url):
        failures += status(sidecar) != 200
        assert time.monotonic() - killed < 15, xds(sidecar)
        time.sleep(0.1)
    assert failures == 0 and status(sidecar) == 200
    b.wait_until(lambda: b.sidecar("web-1") is not None, what="B to hold the registration")
    time.sleep(4)   # past A's lease: the entry is B's own now, not expired with A
    assert any(i["name"].startswith("auto-web-1") for i in b.get("/v1/resources?kind=WorkloadEntry")["items"])


def test_a_dead_replicas_registrations_expire_with_its_lease(cluster, secrets_dir, upstreams):
    """A sidecar registered only on A disappears from B once A dies and its lease runs out."""
    files = {"mesh.yaml": mesh(upstreams.ports["echo"])}
    a, b = replica(cluster, secrets_dir, files), replica(cluster, secrets_dir, files)
    sidecar = ProxyProcess(None, "--service", "web", "--node-id", "web-2", control=a.url,
                           inbound_app_port=upstreams.ports["echo"]).wait_ready(30)

    def registered() -> bool:
        return any(i["name"].startswith("auto-web-2") for i in b.get("/v1/resources?kind=WorkloadEntry")["items"])

    b.wait_until(registered, what="B to see the sidecar A registered")
    sidecar.stop()
    a.proc.kill()
    a.proc.wait(10)
    b.wait_until(lambda: not registered(), timeout=20, what="A's registrations to expire with its lease")


def test_one_etcd_member_down_applies_work_two_down_they_fail_clearly(cluster, secrets_dir, upstreams):
    """With one member of three gone applies succeed; with two gone they fail with 503 naming
    etcd, and the sidecars keep serving the config they hold; quorum back, applies work again."""
    files = {"mesh.yaml": mesh(upstreams.ports["echo"])}
    a = replica(cluster, secrets_dir, files)
    sidecar = ProxyProcess(None, control=a.url).wait_ready(30)
    cluster.kill(0)
    code, answer = a.apply(VIRTUAL_SERVICE)
    assert code == 200, answer
    a.wait_until(lambda: teapot(sidecar) == 418, what="the apply to reach the sidecar")
    cluster.kill(1)
    code, answer = a.apply(VIRTUAL_SERVICE.replace("418", "503"))
    assert code == 503 and "etcd" in answer["error"], answer
    assert teapot(sidecar) == 418 and status(sidecar) == 200
    cluster.start(0)
    cluster.wait_healthy()
    a.wait_until(lambda: a.apply(VIRTUAL_SERVICE.replace("418", "503"))[0] == 200, timeout=30,
                 what="applies to work again with quorum back")
    a.wait_until(lambda: teapot(sidecar) == 503, what="the new route to reach the sidecar")


def test_a_replica_refuses_to_start_without_the_key_file(cluster, secrets_dir):
    """`--store` without `--store-key-file` stops at once, saying why."""
    control = ControlProcess({}, "--store", cluster.url, state=False)
    assert control.proc.wait(30) == 1
    assert "--store-key-file" in control.stderr()


def service_entries(count: int) -> str:
    """`count` ServiceEntries in one apply (the shape of Istio's external-services samples)."""
    return "---\n".join(f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api-{i}, namespace: default}}
spec:
  hosts: [api-{i}.example.com]
  location: MESH_EXTERNAL
  ports: [{{number: 443, name: https, protocol: TLS}}]
  resolution: DNS
""" for i in range(count))


def applied_entries(control: ControlProcess) -> int:
    """ServiceEntries applied through the API (the files' own are not counted)."""
    return sum(item["origin"] == "applied" for item in control.get("/v1/resources?kind=ServiceEntry")["items"])


def limited_replica(cluster: EtcdCluster, secrets_dir: str, files: dict[str, str], ops: int) -> ControlProcess:
    return ControlProcess(files, "--store", cluster.url, "--store-key-file", os.path.join(secrets_dir, "store-key"),
                          "--admin-token-file", os.path.join(secrets_dir, "admin-token"),
                          "--store-max-txn-ops", str(ops), state=False).wait_ready(30)


def test_an_apply_over_the_transaction_limit_is_refused_whole(secrets_dir, upstreams):
    """One apply is one etcd transaction: 129 resources against etcd's default limit (128)
    is 400 naming both numbers and the flag, and not one of them is stored."""
    cluster = EtcdCluster(1)
    try:
        a = replica(cluster, secrets_dir, {"mesh.yaml": mesh(upstreams.ports["echo"])})
        code, answer = a.apply(service_entries(129))
        assert code == 400, answer
        assert "touches 129 resources" in answer["error"] and "at most 128 (--store-max-txn-ops" in answer["error"]
        assert applied_entries(a) == 0
        code, answer = a.apply(service_entries(128))
        assert code == 200 and len(answer["results"]) == 128, answer
    finally:
        cluster.close()


def test_a_raised_limit_takes_larger_applies_and_a_too_high_one_is_refused_clearly(secrets_dir, upstreams):
    """With etcd's --max-txn-ops 300 and --store-max-txn-ops 300, 200 resources are one apply
    that another replica sees whole; a replica set above what etcd allows gets etcd's refusal
    as a 400 that names both flags, and nothing changes."""
    files = {"mesh.yaml": mesh(upstreams.ports["echo"])}
    raised = EtcdCluster(1, extra=("--max-txn-ops", "300"))
    default = EtcdCluster(1)
    try:
        a = limited_replica(raised, secrets_dir, files, 300)
        b = replica(raised, secrets_dir, files)
        code, answer = a.apply(service_entries(200))
        assert code == 200 and len(answer["results"]) == 200, answer
        b.wait_until(lambda: applied_entries(b) == 200, what="the other replica to see all 200")

        over = limited_replica(default, secrets_dir, files, 300)
        code, answer = over.apply(service_entries(200))
        assert code == 400, answer
        assert "too many operations" in answer["error"] and "--store-max-txn-ops 300" in answer["error"]
        assert "--max-txn-ops" in answer["error"] and "nothing changed" in answer["error"]
        assert applied_entries(over) == 0
    finally:
        raised.close()
        default.close()
