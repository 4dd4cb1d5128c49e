"""Sidecar injection at admission: a Kubernetes mutating webhook (AdmissionReview v1).

`review(body, settings)` takes the AdmissionReview the API server POSTs and returns the
one to send back:
- The pod in `request.object` gets exactly what `remora inject` gives a pod (the same
  code: kube/inject.py), honouring its annotations and labels
  (`sidecar.remora.io/inject: "false"` opts out, hostNetwork pods are left alone, an
  injected pod is not injected twice). Which namespaces are injected is the webhook
  configuration's `namespaceSelector` (`remora-injection: enabled`), as Istio's
  `istio-injection` label.
- The change is returned as an RFC 6902 JSONPatch (base64, `patchType: JSONPatch`); a pod
  left alone gets `allowed: true` and no patch.
- A pod that cannot be injected (a malformed spec, a partly injected pod) is refused with
  the reason (`allowed: false`, code 400): with `failurePolicy: Fail` the pod is not
  created without its sidecar, rather than created unprotected.
- A review that is not an AdmissionReview v1 for a Pod raises ReviewError (answered 400).
"""
from __future__ import annotations

import base64
import copy
import json

from remora.kube.inject import InjectError, InjectResult, inject_object
from remora.kube.sidecar import SidecarSettings

API_VERSION = "admission.k8s.io/v1"


class ReviewError(ValueError):
    """The request body is not an AdmissionReview this webhook can answer."""


def review(body: dict, settings: SidecarSettings) -> dict:
    """The AdmissionReview response to one AdmissionReview request (see the module docstring)."""
    if not isinstance(body, dict) or body.get("apiVersion") != API_VERSION or body.get("kind") != "AdmissionReview":
        raise ReviewError(f"expected an AdmissionReview of {API_VERSION}")
    request = body.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise ReviewError("request.uid: missing")
    response: dict = {"uid": request["uid"], "allowed": True}
    kind = request.get("kind") or {}
    pod = request.get("object")
    if kind.get("kind") != "Pod" or not isinstance(pod, dict):
        return _answer(response)      # not a pod: nothing to do (the configuration asks for pods only)
    injected = copy.deepcopy(pod)
    injected.setdefault("kind", "Pod")
    metadata = injected.setdefault("metadata", {})
    if not metadata.get("name") and not metadata.get("generateName"):
        metadata["generateName"] = (request.get("name") or "pod") + "-"
    result = InjectResult(output="")
    try:
        inject_object(injected, f"AdmissionReview {request['uid']}", settings, result)
    except InjectError as error:
        response.update(allowed=False, status={"code": 400, "message": f"remora sidecar injection: {error}"})
        return _answer(response)
    if "kind" not in pod:
        injected.pop("kind")     # added only to let the injector see a Pod
    patch = json_patch(pod, injected)
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode()
    return _answer(response)


def _answer(response: dict) -> dict:
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}


def _pointer(path: list) -> str:
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def json_patch(before, after, path: list | None = None) -> list[dict]:
    """RFC 6902 operations turning `before` into `after`: mappings compared key by key
    (add / remove / replace), anything else replaced whole when it differs."""
    path = path or []
    if isinstance(before, dict) and isinstance(after, dict):
        ops: list[dict] = []
        for key in before:
            if key not in after:
                ops.append({"op": "remove", "path": _pointer(path + [key])})
        for key, value in after.items():
            if key not in before:
                ops.append({"op": "add", "path": _pointer(path + [key]), "value": value})
            elif before[key] != value:
                ops += json_patch(before[key], value, path + [key])
        return ops
    if before == after:
        return []
    return [{"op": "replace", "path": _pointer(path), "value": after}]
