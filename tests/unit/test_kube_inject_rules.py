"""`remora inject` rules: what the sidecar is told, which annotations count, and errors on bad input."""
from __future__ import annotations

import pytest
import yaml

from remora.cli import build_parser
from remora.kube.inject import InjectError, inject_text
from remora.kube.sidecar import SidecarSettings

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews-v2}
spec:
  selector: {matchLabels: {app: reviews}}
  template:
    metadata:
      labels: {app: reviews, version: v2}
      annotations: {ANNOTATIONS}
    spec:
      serviceAccountName: bookinfo-reviews
      containers:
      - {name: reviews, image: example/reviews, ports: [{containerPort: 9080}, {containerPort: 9090}]}
      - {name: helper, image: example/helper, ports: [{containerPort: 7000}]}
"""


def _pod_spec(text: str, settings: SidecarSettings = SidecarSettings()) -> dict:
    output = inject_text(text, settings).output
    return yaml.safe_load(output)["spec"]["template"]["spec"]


def _containers(annotations: str = "{}", settings: SidecarSettings = SidecarSettings()) -> dict:
    spec = _pod_spec(DEPLOYMENT.replace("{ANNOTATIONS}", annotations), settings)
    return {c["name"]: c for c in spec["initContainers"]}


def _flags(args: list[str]) -> dict[str, str]:
    return dict(zip(args[1::2], args[2::2]))


def test_proxy_gets_identity_and_ports_from_the_pod_template():
    """Service from the app label, workload from the Deployment name, service account, labels,
    and the first container's first port as the app port."""
    args = _containers()["remora-proxy"]["args"]
    flags = _flags(args)
    assert args[-1] == "--capture"   # remora-init redirects the pod's traffic to the sidecar
    assert flags["--service"] == "reviews"
    assert flags["--workload"] == "reviews-v2"
    assert flags["--service-account"] == "bookinfo-reviews"
    assert flags["--labels"] == "app=reviews,version=v2"
    assert flags["--namespace"] == "$(POD_NAMESPACE)"
    assert (flags["--inbound-port"], flags["--app-port"]) == ("15006", "9080")


def test_proxy_args_are_accepted_by_remora_proxy():
    """Every flag given to the sidecar exists in `remora proxy` and parses."""
    args = _containers()["remora-proxy"]["args"]
    parsed = build_parser().parse_args([a.replace("$(POD_NAMESPACE)", "default") for a in args])
    assert parsed.command == "proxy"
    assert parsed.app_port == 9080 and parsed.labels == {"app": "reviews", "version": "v2"}
    assert parsed.control == "http://remora-control.remora-system.svc:15010"


def test_admin_stays_on_loopback_while_probes_and_scrapes_reach_the_pod():
    """The sidecar binds admin (which can quit it) to 127.0.0.1 and 15021 / 15090 to 0.0.0.0,
    and its probes use the health port."""
    proxy = _containers()["remora-proxy"]
    parsed = build_parser().parse_args([a.replace("$(POD_NAMESPACE)", "default") for a in proxy["args"]])
    assert parsed.admin_bind == "127.0.0.1"
    assert (parsed.health_bind, parsed.health_port) == ("0.0.0.0", 15021)
    assert (parsed.prometheus_bind, parsed.prometheus_port) == ("0.0.0.0", 15090)
    for probe in ("startupProbe", "readinessProbe"):
        assert proxy[probe]["httpGet"] == {"path": "/healthz/ready", "port": parsed.health_port}


def test_image_and_control_flags_reach_both_containers():
    """--image is used by both added containers, --control by the sidecar."""
    containers = _containers(settings=SidecarSettings(image="reg.example/remora:1.2",
                                                      control="http://cp.mesh:15010"))
    assert {c["image"] for c in containers.values() if c["name"].startswith("remora-")} == {"reg.example/remora:1.2"}
    assert _flags(containers["remora-proxy"]["args"])["--control"] == "http://cp.mesh:15010"


def test_sidecar_is_native_and_runs_as_1337_and_init_has_only_network_capabilities():
    """The sidecar is an init container with restartPolicy Always, uid/gid 1337; remora-init runs
    first, as root, with NET_ADMIN and NET_RAW added and everything else dropped."""
    spec = _pod_spec(DEPLOYMENT.replace("{ANNOTATIONS}", "{}"))
    init, proxy = spec["initContainers"][:2]
    assert (init["name"], proxy["name"]) == ("remora-init", "remora-proxy")
    assert proxy["restartPolicy"] == "Always"
    assert (proxy["securityContext"]["runAsUser"], proxy["securityContext"]["runAsGroup"]) == (1337, 1337)
    assert init["securityContext"]["runAsUser"] == 0 and init["securityContext"]["runAsNonRoot"] is False
    assert init["securityContext"]["capabilities"] == {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
    assert proxy["startupProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    assert proxy["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}
    token = next(e for e in proxy["env"] if e["name"] == "REMORA_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "remora-token-bookinfo-reviews", "key": "token"}


def test_existing_init_containers_run_after_the_sidecar():
    """The app's own init containers keep their order, after remora-init and remora-proxy."""
    text = DEPLOYMENT.replace("{ANNOTATIONS}", "{}").replace(
        "      containers:", "      initContainers:\n      - {name: migrate, image: m}\n      containers:")
    assert [c["name"] for c in _pod_spec(text)["initContainers"]] == ["remora-init", "remora-proxy", "migrate"]


def test_default_capture_flags():
    """By default all outbound CIDRs and all inbound ports are captured, nothing excluded."""
    flags = _flags(_containers()["remora-init"]["args"])
    assert flags == {"--outbound-capture-port": "15001", "--inbound-capture-port": "15006",
                     "--proxy-uid": "1337", "--proxy-gid": "1337",
                     "--include-outbound-cidrs": "*", "--exclude-outbound-cidrs": "",
                     "--include-inbound-ports": "*", "--exclude-inbound-ports": "",
                     "--exclude-outbound-ports": ""}


def test_pod_without_ports_captures_no_inbound_and_has_no_inbound_listener():
    """No containerPort and no appPort annotation: no --app-port, and inbound capture is empty."""
    text = DEPLOYMENT.replace("{ANNOTATIONS}", "{}").replace(
        ", ports: [{containerPort: 9080}, {containerPort: 9090}]", "")
    containers = {c["name"]: c for c in _pod_spec(text)["initContainers"]}
    assert "--app-port" not in containers["remora-proxy"]["args"]
    assert _flags(containers["remora-init"]["args"])["--include-inbound-ports"] == ""


def test_app_port_annotation_wins_over_container_port():
    """sidecar.remora.io/appPort picks the port the inbound listener forwards to."""
    flags = _flags(_containers('{sidecar.remora.io/appPort: "9090"}')["remora-proxy"]["args"])
    assert flags["--app-port"] == "9090"


def test_service_falls_back_to_the_kubernetes_name_label_then_the_workload_name():
    """Without `app`, app.kubernetes.io/name names the service; without both, the workload does."""
    text = DEPLOYMENT.replace("{ANNOTATIONS}", "{}").replace(
        "labels: {app: reviews, version: v2}", "labels: {app.kubernetes.io/name: reviews-api}")
    assert _flags(_pod_spec(text)["initContainers"][1]["args"])["--service"] == "reviews-api"
    text = DEPLOYMENT.replace("{ANNOTATIONS}", "{}").replace("labels: {app: reviews, version: v2}", "labels: {}")
    args = _pod_spec(text)["initContainers"][1]["args"]
    assert _flags(args)["--service"] == "reviews-v2" and "--labels" not in args


@pytest.mark.parametrize("value", ["false", "False", "no", "off"])
def test_inject_false_annotation_skips(value):
    """Istio's spellings of false opt the pod out and leave the text unchanged."""
    text = DEPLOYMENT.replace("{ANNOTATIONS}", f'{{sidecar.remora.io/inject: "{value}"}}')
    result = inject_text(text)
    assert result.output == text and result.injected == 0
    assert "sidecar.remora.io/inject is false" in result.notes[0]


def test_host_network_pod_is_skipped_with_a_note():
    """hostNetwork: true is never injected; the note says why and names the workload."""
    text = DEPLOYMENT.replace("{ANNOTATIONS}", "{}").replace("      containers:", "      hostNetwork: true\n      containers:")
    result = inject_text(text)
    assert result.output == text
    assert result.notes == ["document 1 (line 1) Deployment/reviews-v2: not injected: hostNetwork pods "
                            "share the node's network, which must not be captured"]


@pytest.mark.parametrize("annotations, message", [
    ('{sidecar.remora.io/inject: "maybe"}', "annotation sidecar.remora.io/inject: expected true or false, got 'maybe'"),
    ('{traffic.sidecar.remora.io/excludeOutboundIPRanges: "10.0.0.0/33"}',
     "annotation traffic.sidecar.remora.io/excludeOutboundIPRanges: '10.0.0.0/33' is not an IP range"),
    ('{traffic.sidecar.remora.io/excludeOutboundIPRanges: "*"}', "'*' is not allowed here"),
    ('{traffic.sidecar.remora.io/includeInboundPorts: "*,80"}', "'*' must be alone"),
    ('{traffic.sidecar.remora.io/excludeInboundPorts: "80,http"}',
     "annotation traffic.sidecar.remora.io/excludeInboundPorts: 'http' is not a port number (1-65535)"),
    ('{traffic.sidecar.remora.io/excludeOutboundPorts: "70000"}', "'70000' is not a port number"),
    ('{traffic.sidecar.remora.io/excludeOutboundIpRanges: "10.0.0.0/8"}',
     "annotation traffic.sidecar.remora.io/excludeOutboundIpRanges: unknown"),
    ('{sidecar.remora.io/appPort: "0"}', "annotation sidecar.remora.io/appPort: '0' is not a port number"),
])
def test_bad_annotation_values_name_the_annotation_and_the_workload(annotations, message):
    """A bad annotation fails the whole run with the document, the workload and the annotation."""
    with pytest.raises(InjectError) as err:
        inject_text(DEPLOYMENT.replace("{ANNOTATIONS}", annotations))
    assert str(err.value).startswith("document 1 (line 1) Deployment/reviews-v2: ")
    assert message in str(err.value)


def test_inbound_capture_without_an_app_port_is_an_error():
    """includeInboundPorts on a pod with no port would capture into nothing: refused."""
    text = DEPLOYMENT.replace("{ANNOTATIONS}", '{traffic.sidecar.remora.io/includeInboundPorts: "8080"}').replace(
        ", ports: [{containerPort: 9080}, {containerPort: 9090}]", "")
    with pytest.raises(InjectError, match="inbound capture needs an app port"):
        inject_text(text)


@pytest.mark.parametrize("text, message", [
    ("apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n- just\n- a list\n",
     "document 2 (line 5): expected a Kubernetes object (a mapping with apiVersion and kind), got a list"),
    ("apiVersion: v1\nmetadata: {name: a}\n", "document 1 (line 1): no kind"),
    ("kind: Service\n---\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [}\n",
     "document 2 (line 5): invalid YAML"),
    ("kind: Deployment\nmetadata: {name: web}\nspec: {replicas: 1}\n",
     "document 1 (line 1) Deployment/web: spec.template: expected a mapping, got nothing"),
    ("kind: CronJob\nmetadata: {name: nightly}\nspec: {jobTemplate: {spec: {template: {spec: {containers: []}}}}}\n",
     "CronJob/nightly: spec.jobTemplate.spec.template.spec.containers: expected at least one container"),
    ("kind: Pod\nmetadata: {name: p}\nspec: {containers: [{image: x}]}\n",
     "Pod/p: spec.containers[0]: expected a container with a name"),
    ("kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, ports: [{containerPort: http}]}]}\n",
     "Pod/p: spec.containers[0].ports[0].containerPort: expected a port number (1-65535), got 'http'"),
    ("kind: Pod\nspec: {containers: [{name: a}]}\n", "document 1 (line 1) Pod: metadata.name: missing"),
    ("kind: Pod\nmetadata: {name: p}\nspec: {initContainers: [{name: remora-init}], containers: [{name: a}]}\n",
     "Pod/p: spec: has remora-init but no remora-proxy"),
    ("kind: Pod\nmetadata: {name: p}\nspec: {volumes: [{name: remora-state}], containers: [{name: a}]}\n",
     "Pod/p: spec.volumes: the name remora-state is taken"),
    ("kind: List\nitems:\n- kind: Pod\n  metadata: {name: p}\n  spec: {}\n",
     "document 1 (line 1) items[0] Pod/p: spec.containers: expected at least one container"),
])
def test_bad_documents_name_the_document_the_object_and_the_field(text, message):
    """Errors say which document (index and line), which object and which field is wrong."""
    with pytest.raises(InjectError) as err:
        inject_text(text)
    assert message in str(err.value)


def test_pod_with_generate_name_uses_it_as_the_workload():
    """A bare Pod named by generateName is injected, its workload is the prefix."""
    text = "apiVersion: v1\nkind: Pod\nmetadata: {generateName: batch-}\nspec: {containers: [{name: a, image: x}]}\n"
    args = yaml.safe_load(inject_text(text).output)["spec"]["initContainers"][1]["args"]
    assert _flags(args)["--workload"] == "batch"


def test_crlf_documents_that_are_not_injected_keep_their_line_endings():
    """Untouched documents are copied with their CRLF line endings."""
    service = "apiVersion: v1\r\nkind: Service\r\nmetadata: {name: a}\r\n"
    pod = "---\r\napiVersion: v1\r\nkind: Pod\r\nmetadata: {name: p}\r\nspec: {containers: [{name: a, image: x}]}\r\n"
    output = inject_text(service + pod).output
    assert output.startswith(service + "---\r\n")
    assert "remora-proxy" in output
