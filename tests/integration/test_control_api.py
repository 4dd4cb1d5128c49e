"""The REST API of `remora control`: apply, get, delete, validation, persistence, config-dir errors."""
from __future__ import annotations

import pytest

from remora.wire.protocol import CLUSTERS, ROUTES, Node
from tests.integration.conftest import destination_rule, service, virtual_service
from tests.integration.control_process import ControlProcess
from tests.integration.xds_client import XdsTestClient, names

BASE = service("reviews", [(18080, {"version": "v1"})]) + service("ratings", [(18081, {})])


def route_to(name: str, destination: str) -> str:
    """A VirtualService `name` for host `name` that sends everything to `destination`."""
    return virtual_service(name, "name: all").replace(f"destination: {{host: {name}}}", f"destination: {{host: {destination}}}")


@pytest.fixture
def control():
    c = ControlProcess({"base.yaml": BASE}).wait_ready()
    yield c
    assert c.stop() == 0, c.stderr()


def test_apply_reports_created_configured_unchanged_and_the_new_version(control):
    """apply answers per resource what it did, like kubectl, and the config version now in force."""
    status, first = control.apply(virtual_service("reviews", "name: a") + destination_rule("reviews", "{}"))
    assert status == 200, first
    assert first["results"] == [{"resource": "VirtualService/default/reviews", "action": "created"},
                                {"resource": "DestinationRule/default/reviews", "action": "created"}]
    status, second = control.apply(virtual_service("reviews", "name: b") + destination_rule("reviews", "{}"))
    assert [r["action"] for r in second["results"]] == ["configured", "unchanged"]
    assert second["version"] != first["version"]
    assert control.status()["config"]["version"] == second["version"]


async def test_invalid_apply_is_400_with_every_error_and_the_old_config_stays(control):
    """A bad apply is refused whole: 400 lists file: resource: field path: message, nothing is pushed."""
    c = await XdsTestClient(control.url, Node(id="s")).connect()
    try:
        await c.sync()
        version = control.status()["config"]["version"]
        bad = (virtual_service("ratings", "name: ok")
               + virtual_service("reviews", "timeout: soon").replace("name: reviews", "name: broken")
               + route_to("nowhere", "missing"))
        status, answer = control.apply(bad, source="bad.yaml")
        assert status == 400
        assert answer["errors"][0].startswith("bad.yaml: VirtualService/default/broken: spec.http[0].timeout: ")
        assert any(e.startswith("bad.yaml: VirtualService/default/nowhere: spec.http[0].route[0].destination.host:")
                   for e in answer["errors"]), answer
        assert control.status()["config"]["version"] == version
        assert control.request("GET", "/v1/resources/vs/default/ratings")[0] == 404
        await c.no_message(1.0)
        assert 'remora_control_config_errors_total{source="api"} 1.0' in control.metrics()
    finally:
        await c.close()


def test_apply_overrides_a_file_resource_and_delete_restores_it(control):
    """Applying a resource a file in --config-dir defines is 200 `configured` and shows the file it
    overrides; deleting it restores the file's version; deleting a file-only resource is 409."""
    status, answer = control.apply(service("reviews", [(18090, {})]))
    assert status == 200 and answer["results"] == [{"resource": "ServiceEntry/default/reviews", "action": "configured"}]
    status, document = control.request("GET", "/v1/resources/se/default/reviews")
    assert status == 200 and document["metadata"]["annotations"]["remora.io/overrides"].endswith("base.yaml")
    status, answer = control.request("DELETE", "/v1/resources/se/default/reviews")
    assert status == 200 and answer["results"][0]["action"].startswith("deleted (back to ")
    status, answer = control.request("DELETE", "/v1/resources/se/default/reviews")
    assert status == 409 and "remove it from the file" in answer["error"] and "base.yaml" in answer["error"]
    status, answer = control.request("DELETE", "/v1/resources/vs/default/missing")
    assert status == 404 and answer["error"] == "VirtualService/default/missing not found"


async def test_delete_pushes_the_removal_and_refuses_to_leave_dangling_references(control):
    """Deleting an applied resource is pushed; deleting one that others still reference is 400."""
    assert control.apply(service("details", [(18082, {})]))[0] == 200
    assert control.apply(route_to("details-v2", "details"), source="vs.yaml")[0] == 200
    status, answer = control.request("DELETE", "/v1/resources/ServiceEntries/default/details")
    assert status == 400 and "would leave the config invalid" in answer["error"]
    assert any("vs.yaml: VirtualService/default/details-v2" in e for e in answer["errors"]), answer
    control.wait_served()
    c = await XdsTestClient(control.url, Node(id="s")).connect()
    try:
        await c.sync()
        status, answer = control.request("DELETE", "/v1/resources/vs/default/details-v2")
        assert status == 200 and answer["results"] == [{"resource": "VirtualService/default/details-v2", "action": "deleted"}]
        assert names(await c.response(ROUTES)) == []
    finally:
        await c.close()


def test_get_one_resource_as_yaml_or_json_with_its_origin(control):
    """GET /v1/resources/{kind}/{ns}/{name} answers the document (YAML or JSON) annotated with its origin."""
    control.apply(virtual_service("ratings", "name: r"), source="r.yaml")
    status, doc = control.request("GET", "/v1/resources/virtualservice/default/ratings")
    assert status == 200 and doc["metadata"]["annotations"] == {"remora.io/origin": "applied", "remora.io/source": "r.yaml"}
    status, text = control.request("GET", "/v1/resources/se/default/reviews?format=yaml")
    assert status == 200 and "kind: ServiceEntry" in text and "remora.io/origin: file" in text
    status, listed = control.request("GET", "/v1/resources?kind=se")
    assert [i["name"] for i in listed["items"]] == ["ratings", "reviews"]
    status, answer = control.request("GET", "/v1/resources/envoyfilter/default/x")
    assert status == 400 and "unknown kind 'envoyfilter'" in answer["error"]


def test_applied_resources_survive_a_restart(control):
    """Resources applied through the API are persisted in --state-dir and served again after a restart."""
    status, answer = control.apply(virtual_service("ratings", "name: r"))
    assert status == 200
    control.restart()
    assert control.status()["config"]["version"] == answer["version"]
    status, doc = control.request("GET", "/v1/resources/vs/default/ratings")
    assert status == 200 and doc["metadata"]["annotations"]["remora.io/origin"] == "applied"


async def test_bad_file_keeps_the_last_good_config_and_is_reported(control):
    """A broken file in --config-dir leaves the last good version in force, shown in status, log and metrics."""
    c = await XdsTestClient(control.url, Node(id="s")).connect()
    try:
        await c.sync()
        good = control.status()["config"]["version"]
        control.write_file("broken.yaml", virtual_service("reviews", "timeout: soon"))
        config = control.wait_until(lambda: (cfg := control.status()["config"])["last_error"] and cfg,
                                    what="the file error in status")
        assert config["version"] == good and not config["files_valid"]
        assert any("broken.yaml: VirtualService/default/reviews: spec.http[0].timeout" in e
                   for e in config["last_error"]["errors"])
        assert "broken.yaml: VirtualService/default/reviews" in control.stderr()
        assert 'remora_control_config_errors_total{source="files"}' in control.metrics()
        await c.no_message(0.5)
        control.write_file("broken.yaml", virtual_service("reviews", "timeout: 2s"))
        routes = await c.response(ROUTES)
        assert names(routes) == ["VirtualService/default/reviews"]
        assert control.status()["config"]["files_valid"]
    finally:
        await c.close()


async def test_new_file_is_pushed(control):
    """Adding a file to --config-dir pushes its resources to subscribed sidecars."""
    c = await XdsTestClient(control.url, Node(id="s")).connect()
    try:
        await c.sync()
        control.write_file("more.yaml", service("details", [(18083, {})]))
        clusters = await c.response(CLUSTERS)
        assert "ServiceEntry/default/details" in names(clusters)
    finally:
        await c.close()


def test_invalid_config_dir_refuses_to_start():
    """`remora control` exits 1 with every error when --config-dir does not validate at startup."""
    c = ControlProcess({"bad.yaml": route_to("nowhere", "missing")})
    assert c.proc.wait(20) == 1
    assert "bad.yaml: VirtualService/default/nowhere: spec.http[0].route[0].destination.host" in c.stderr()


SECURITY = """---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-logs, namespace: default}
spec: {accessLogging: [{disabled: true}]}
"""


def test_security_and_telemetry_resources_apply_and_list(control):
    """PeerAuthentication, AuthorizationPolicy and Telemetry are applied, listed and fetched like the rest."""
    status, answer = control.apply(SECURITY)
    assert status == 200, answer
    assert [r["action"] for r in answer["results"]] == ["created"] * 3
    for kind, name in (("peerauthentication", "default"), ("authorizationpolicy", "deny-admin"),
                       ("telemetry", "mesh-logs")):
        status, listed = control.request("GET", f"/v1/resources?kind={kind}")
        assert status == 200 and [i["name"] for i in listed["items"]] == [name], (kind, listed)
        status, doc = control.request("GET", f"/v1/resources/{kind}/default/{name}")
        assert status == 200 and doc["metadata"]["name"] == name
    status, again = control.apply(SECURITY)
    assert [r["action"] for r in again["results"]] == ["unchanged"] * 3
