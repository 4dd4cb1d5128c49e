"""Injection at admission: AdmissionReview v1 in (the shape of Kubernetes' API reference
example, tests/fixtures/inject/admission-review.json), a JSONPatch out that turns the pod
into exactly what `remora inject` makes of it (the golden files of tests/fixtures/inject)."""
from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

import pytest
import yaml

from remora.kube.admission import ReviewError, json_patch, review
from remora.kube.inject import inject_text
from remora.kube.sidecar import SidecarSettings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "inject"
SETTINGS = SidecarSettings()


def apply_patch(document, patch: list[dict]):
    """RFC 6902 add / remove / replace on mappings (what the webhook emits)."""
    document = copy.deepcopy(document)
    for op in patch:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = document
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        if op["op"] == "remove":
            del parent[last]
        elif op["op"] in ("add", "replace"):
            if op["op"] == "replace":
                assert last in parent, op
            parent[last] = op["value"]
        else:
            raise AssertionError(op)
    return document


def admission(pod: dict, namespace: str = "default") -> dict:
    body = json.loads((FIXTURES / "admission-review.json").read_text())
    body["request"]["object"] = pod
    body["request"]["namespace"] = namespace
    return body


def pod_of(obj: dict) -> dict:
    """A workload's pod as the API server sees it at admission (its template, as a Pod)."""
    if obj["kind"] == "Pod":
        return obj
    template = obj["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": obj["metadata"]["name"] + "-", **template.get("metadata", {})},
            "spec": template["spec"]}


@pytest.mark.parametrize("name", ["pod.yaml", "deployment-multi-container.yaml", "statefulset.yaml",
                                  "traffic-annotations.yaml"])
def test_the_patch_gives_the_pod_remora_inject_gives(name):
    """The patched pod equals the pod of `remora inject`'s output for the same manifest."""
    text = (FIXTURES / name).read_text()
    source = pod_of(next(d for d in yaml.safe_load_all(text) if d))
    injected = pod_of(next(d for d in yaml.safe_load_all(inject_text(text, SETTINGS).output) if d))
    answer = review(admission(json.loads(json.dumps(source))), SETTINGS)
    response = answer["response"]
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert response["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002" and response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    assert apply_patch(source, patch) == json.loads(json.dumps(injected))


@pytest.mark.parametrize("name", ["opt-out.yaml", "host-network.yaml", "already-injected.yaml"])
def test_pods_left_alone_get_no_patch(name):
    """Opted out, hostNetwork, already injected: allowed, and no patch (as remora inject leaves them)."""
    pod = pod_of(next(d for d in yaml.safe_load_all((FIXTURES / name).read_text()) if d))
    response = review(admission(pod), SETTINGS)["response"]
    assert response["allowed"] is True and "patch" not in response


def test_a_pod_that_cannot_be_injected_is_refused_with_the_reason():
    """A partly injected pod is refused (allowed false, 400), never admitted without its sidecar."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "half"},
           "spec": {"initContainers": [{"name": "remora-init", "image": "x"}],
                    "containers": [{"name": "app", "image": "x"}]}}
    response = review(admission(pod), SETTINGS)["response"]
    assert response["allowed"] is False and response["status"]["code"] == 400
    assert "remora-init" in response["status"]["message"]


@pytest.mark.parametrize("body", [{}, {"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"},
                                  {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}])
def test_not_an_admission_review_is_an_error(body):
    """Anything but an AdmissionReview v1 with a request uid is refused as invalid."""
    with pytest.raises(ReviewError):
        review(body, SETTINGS)


def test_json_patch_escapes_keys_as_rfc_6901_says():
    """Annotation keys with `/` and `~` become `~1` and `~0` in the pointer."""
    ops = json_patch({"a": {}}, {"a": {"sidecar.remora.io/status": "x", "t~": 1}})
    assert {op["path"] for op in ops} == {"/a/sidecar.remora.io~1status", "/a/t~0"}
