"""The MutatingWebhookConfiguration of Remora's sidecar injector (deploy/kubernetes/
injection-webhook.yaml is this with an empty caBundle; `remora webhook-config` fills it).

- Pods CREATEd in namespaces labelled `remora-injection: enabled` (Istio's
  `istio-injection: enabled`) go to POST /inject of the control server's Service (port 443
  -> the `--webhook-listen` port), except pods labelled `sidecar.remora.io/inject: "false"`.
- `failurePolicy: Fail`: when the webhook cannot answer, the pod is not created, rather
  than created without its sidecar (fail closed); `sideEffects: None`, AdmissionReview v1,
  10 s timeout, `reinvocationPolicy: Never`.
"""
from __future__ import annotations

import base64

NAMESPACE_LABEL = "remora-injection"
SERVICE = "remora-control"
SERVICE_NAMESPACE = "remora-system"
SERVICE_PORT = 443
PATH = "/inject"


def webhook_configuration(ca_bundle_pem: str = "") -> dict:
    """The object, with `ca_bundle_pem` (the mesh trust bundle) as its caBundle."""
    bundle = base64.b64encode(ca_bundle_pem.encode()).decode() if ca_bundle_pem else ""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "remora-sidecar-injector", "labels": {"app.kubernetes.io/part-of": "remora"}},
        "webhooks": [{
            "name": "sidecar-injector.remora.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "reinvocationPolicy": "Never",
            "timeoutSeconds": 10,
            "clientConfig": {
                "service": {"name": SERVICE, "namespace": SERVICE_NAMESPACE, "path": PATH, "port": SERVICE_PORT},
                "caBundle": bundle,
            },
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: "enabled"}},
            "objectSelector": {"matchExpressions": [
                {"key": "sidecar.remora.io/inject", "operator": "NotIn", "values": ["false"]}]},
        }],
    }
