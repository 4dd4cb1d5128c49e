"""End to end: `remora control --kubernetes` reading the API server double, feeding a real sidecar.

Real processes and sockets on loopback: the double (tests/kube_api.py) on a thread of the
test, `remora control --kubernetes --kubeconfig` pointed at it, a client `remora proxy`
sidecar taking config from the control server, and two HTTP backends on 127.0.0.2 and
127.0.0.3 standing in for pods without a sidecar (plaintext endpoints). Objects created,
changed and deleted in the double must change where the client's requests go.
"""
from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time

import pytest

from remora.kube.registry import KINDS
from tests.integration.control_process import ControlProcess
from tests.integration.proxy_process import ProxyProcess
from tests.integration.upstreams import free_port, make_echo_app
from tests.kube_api import ThreadedKubeApi

pytestmark = pytest.mark.integration

HOST = "web.default.svc.cluster.local"
POD_IPS = {"v1": "127.0.0.2", "v2": "127.0.0.3"}


def web_service(port: int) -> dict:
    return {"metadata": {"name": "web", "namespace": "default", "uid": "s-1"},
            "spec": {"selector": {"app": "web"}, "type": "ClusterIP", "clusterIP": "10.96.0.10",
                     "clusterIPs": ["10.96.0.10"], "ipFamilies": ["IPv4"],
                     "ports": [{"name": "http", "port": 80, "targetPort": port, "protocol": "TCP"}]}}


def web_pod(version: str) -> dict:
    """A Running, Ready pod without the Remora sidecar, at its version's backend address."""
    return {"metadata": {"name": f"web-{version}", "namespace": "default",
                         "labels": {"app": "web", "version": version}},
            "spec": {"serviceAccountName": "web", "containers": [{"name": "web"}]},
            "status": {"phase": "Running", "podIP": POD_IPS[version],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def istio(kind: str, name: str, spec: dict) -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": kind,
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}


SUBSETS = istio("DestinationRule", "web", {"host": HOST, "subsets": [
    {"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]})
ONLY_V2 = istio("VirtualService", "web", {"hosts": [HOST], "http": [
    {"route": [{"destination": {"host": HOST, "subset": "v2"}}]}]})
INVALID = istio("VirtualService", "broken", {"hosts": [HOST], "http": [
    {"route": [{"destination": {"host": HOST}, "weight": "most"}]}]})


def ask(sidecar: ProxyProcess) -> tuple[int, str]:
    """One request to web through the client sidecar: (status, backend name or body)."""
    return ask_host(sidecar, HOST)


def ask_host(sidecar: ProxyProcess, host: str) -> tuple[int, str]:
    """One request to `host` through the client sidecar: (status, backend name or body)."""
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.outbound_port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Host": host})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, json.loads(body)["server"] if resp.status == 200 else body.decode(errors="replace")
    finally:
        conn.close()


def wait_answers(sidecar: ProxyProcess, expected: set[str], timeout: float = 20.0, run: int = 10) -> None:
    """Until `run` consecutive answers come only from `expected` and cover all of it."""
    deadline = time.time() + timeout
    seen: list = []
    while time.time() < deadline:
        seen = [ask(sidecar) for _ in range(run)]
        if all(status == 200 for status, _ in seen) and {name for _, name in seen} == expected:
            return
        time.sleep(0.1)
    raise AssertionError(f"wanted answers from {sorted(expected)}, last saw {seen}")


@pytest.fixture
def mesh():
    """The double with two backends, a control server reading it, and a client sidecar."""
    kube = ThreadedKubeApi(KINDS)
    control = client = None
    try:
        port = kube.backend_port = free_port()   # both backends listen on it, each at its pod IP
        for version, address in POD_IPS.items():
            kube.serve(make_echo_app(version), address, port)
        kube.put("Namespace", {"metadata": {"name": "default", "labels": {"team": "shop"}}})
        kube.put("Service", web_service(port))
        kube.put("Pod", web_pod("v1"))
        control = ControlProcess({}, "--kubernetes", "--kubeconfig", kube.kubeconfig()).wait_ready()
        client = ProxyProcess(None, "--service", "client", "--node-id", "client", control=control.url).wait_ready()
        yield kube, control, client
    finally:
        for thing in (client, control):
            if thing is not None:
                thing.close()
        kube.close()


def test_service_and_pods_from_the_api_are_routable_and_follow_pod_changes(mesh):
    """A Service and a pod without a sidecar are routable; a new pod joins; a deleted pod's endpoint goes."""
    kube, control, client = mesh
    wait_answers(client, {"v1"})
    kube.put("Pod", web_pod("v2"))
    wait_answers(client, {"v1", "v2"})
    kube.delete("Pod", "default", "web-v1")
    wait_answers(client, {"v2"})
    source = control.status()["sources"]["kubernetes"]
    assert source["synced"] and {k["kind"] for k in source["kinds"]} >= {"Service", "Pod", "EndpointSlice",
                                                                          "Namespace", "VirtualService"}
    assert source["namespaces"] == {"default": {"team": "shop"}}
    shown = control.cli("status").stdout
    assert f"kubernetes {kube.url}: synced, 2 documents" in shown
    assert "kubernetes Pod default/web-v2" in control.get("/v1/resources/WorkloadEntry/default/pod-web-v2")[
        "metadata"]["annotations"]["remora.io/source"]


def test_a_service_without_selector_routes_to_its_endpoint_slices_ready_addresses(mesh):
    """A selector-less Service: its EndpointSlice's ready address is the endpoint; marked not ready, it goes."""
    kube, control, client = mesh
    wait_answers(client, {"v1"})
    port = kube.backend_port
    kube.put("Service", {"metadata": {"name": "legacy", "namespace": "default"},
                         "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.11",
                                  "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
    slice_ = {"metadata": {"name": "legacy-x1", "namespace": "default",
                           "labels": {"kubernetes.io/service-name": "legacy"}},
              "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
              "endpoints": [{"addresses": [POD_IPS["v2"]], "conditions": {"ready": True}}]}
    kube.put("EndpointSlice", slice_)
    legacy = "legacy.default.svc.cluster.local"
    control.wait_until(lambda: ask_host(client, legacy) == (200, "v2"), what="legacy routed to its slice")
    slice_["endpoints"][0]["conditions"]["ready"] = False
    kube.put("EndpointSlice", slice_)
    control.wait_until(lambda: ask_host(client, legacy)[0] == 503, what="the not-ready endpoint to go")


def test_istio_resources_take_effect_and_an_invalid_one_is_rejected_whole(mesh):
    """A VirtualService CRD object routes; an invalid one is refused naming it, the last good config stays."""
    kube, control, client = mesh
    kube.put("Pod", web_pod("v2"))
    wait_answers(client, {"v1", "v2"})
    kube.put("DestinationRule", SUBSETS)
    kube.put("VirtualService", ONLY_V2)
    wait_answers(client, {"v2"})
    good = control.wait_served()
    kube.put("VirtualService", INVALID)
    kube.delete("Pod", "default", "web-v2")   # same batch as the invalid object: not applied either
    error = control.wait_until(lambda: control.status()["config"]["last_error"], what="the rejection")
    assert error["source"] == "kubernetes"
    assert any("kubernetes VirtualService default/broken" in line and "weight" in line for line in error["errors"])
    assert control.status()["config"]["version"] == good
    wait_answers(client, {"v2"})   # v2's endpoint is still there: nothing of the rejected set was applied
    assert "config from kubernetes rejected" in control.stderr()
    kube.delete("VirtualService", "default", "broken")
    kube.delete("VirtualService", "default", "web")
    kube.put("Pod", web_pod("v2"))
    wait_answers(client, {"v1", "v2"})


def test_a_forced_410_relists_and_converges_on_the_servers_state(mesh):
    """After 410 Gone the control server lists again: changes whose events were lost are applied."""
    kube, control, client = mesh
    wait_answers(client, {"v1"})
    kube.put("Pod", web_pod("v2"), silent=True)      # events the open watches never get
    kube.delete("Pod", "default", "web-v1", silent=True)
    kube.bookmark()
    time.sleep(0.3)
    assert ask(client) == (200, "v1")                  # nothing seen yet: a bookmark changes nothing
    kube.expire()
    wait_answers(client, {"v2"})
    metrics = control.request("GET", "/metrics")[1]
    assert 'remora_control_kube_relists_total{kind="Pod",reason="gone"} 1.0' in metrics
    assert 'remora_control_kube_watch_events_total{kind="Pod",type="BOOKMARK"}' in metrics
    lists = [q for _, path, q in kube.requests() if path == "/api/v1/pods" and not q.get("watch")]
    assert len(lists) == 2


def test_no_usable_kubeconfig_stops_the_server_with_one_clear_line(tmp_path):
    """--kubernetes with a kubeconfig that does not exist: exit 1 naming the path; --kubeconfig alone: exit 2."""
    base = [sys.executable, "-m", "remora", "control", "--config-dir", str(tmp_path),
            "--listen", f"127.0.0.1:{free_port()}"]
    missing = str(tmp_path / "nowhere.yaml")
    done = subprocess.run([*base, "--kubernetes", "--kubeconfig", missing], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert f"remora: kubernetes: no kubeconfig at {missing}" in done.stderr
    alone = subprocess.run([*base, "--kubeconfig", missing], capture_output=True, text=True, timeout=60)
    assert alone.returncode == 2 and "--kubeconfig needs --kubernetes" in alone.stderr


def yaml_of(*documents: dict) -> str:
    return "---\n".join(json.dumps(document) + "\n" for document in documents)   # JSON is YAML


def test_files_may_name_what_only_the_api_defines():
    """A VirtualService file routing to a subset of a DestinationRule in the API: the server starts
    (validated again with the API's objects) and routes by it."""
    kube = ThreadedKubeApi(KINDS)
    control = client = None
    try:
        port = free_port()
        for version, address in POD_IPS.items():
            kube.serve(make_echo_app(version), address, port)
        kube.put("Service", web_service(port))
        kube.put("Pod", web_pod("v1"))
        kube.put("Pod", web_pod("v2"))
        kube.put("DestinationRule", SUBSETS)
        only_v1 = istio("VirtualService", "web", {"hosts": [HOST], "http": [
            {"route": [{"destination": {"host": HOST, "subset": "v1"}}]}]})
        control = ControlProcess({"web.yaml": yaml_of(only_v1)}, "--kubernetes",
                                 "--kubeconfig", kube.kubeconfig()).wait_ready()
        client = ProxyProcess(None, "--service", "client", "--node-id", "client", control=control.url).wait_ready()
        wait_answers(client, {"v1"})
        assert "validating again once they are read" in control.stderr()
    finally:
        for thing in (client, control):
            if thing is not None:
                thing.close()
        kube.close()


def test_files_still_invalid_with_the_api_objects_stop_the_server():
    """A file naming a service neither the files nor the API define: exit 1, the error names the file's resource."""
    kube = ThreadedKubeApi(KINDS)
    control = None
    try:
        nowhere = istio("VirtualService", "lost", {"hosts": ["lost.default.svc.cluster.local"], "http": [
            {"route": [{"destination": {"host": "lost.default.svc.cluster.local", "subset": "v9"}}]}]})
        control = ControlProcess({"lost.yaml": yaml_of(nowhere)}, "--kubernetes", "--kubeconfig", kube.kubeconfig())
        assert control.proc.wait(60) == 1
        assert "invalid configuration with the documents of kubernetes, not starting" in control.stderr()
        assert "VirtualService/default/lost" in control.stderr()
    finally:
        if control is not None:
            control.close()
        kube.close()
