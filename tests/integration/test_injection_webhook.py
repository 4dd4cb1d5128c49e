"""`remora control --webhook-listen`: the mutating admission webhook over TLS, its certificate
issued by the mesh CA for the webhook Service's name (what caBundle trusts), answering the
API server's AdmissionReview with the JSONPatch of `remora inject`."""
from __future__ import annotations

import base64
import json
import ssl

import pytest

from tests.integration.client import RawClient
from tests.integration.control_process import ControlProcess
from tests.integration.upstreams import free_port
from tests.unit.test_kube_admission import admission, apply_patch

pytestmark = pytest.mark.integration

SERVICE_NAME = "remora-control.remora-system.svc"
POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "debug", "labels": {"app": "debug"}},
       "spec": {"containers": [{"name": "shell", "image": "busybox:1.36", "ports": [{"containerPort": 8000}]}]}}


@pytest.fixture(scope="module")
def control():
    port = free_port()
    server = ControlProcess({}, "--webhook-listen", f"127.0.0.1:{port}", "--webhook-names", SERVICE_NAME)
    server.webhook_port = port
    server.wait_ready()
    yield server
    server.stop()


def post(control, body: bytes, name: str = SERVICE_NAME):
    bundle = "".join(control.get("/v1/trust-bundle")["trust_bundle"])
    context = ssl.create_default_context(cadata=bundle)   # caBundle: the mesh trust bundle

    class ForName:
        def wrap_socket(self, sock):
            return context.wrap_socket(sock, server_hostname=name)
    client = RawClient(control.webhook_port, tls=ForName())
    try:
        client.send(b"POST /inject HTTP/1.1\r\nHost: %s\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (name.encode(), len(body), body))
        return client.read_response()
    finally:
        client.close()


def test_the_webhook_injects_the_pod_over_tls_the_bundle_trusts(control):
    """The API server's call: TLS verified against the trust bundle for the Service name, and a
    JSONPatch adding remora-init and remora-proxy; counted in the control server's metrics."""
    resp = post(control, json.dumps(admission(POD)).encode())
    assert resp.status == 200, resp.body
    answer = resp.json()["response"]
    assert answer["allowed"] is True and answer["patchType"] == "JSONPatch"
    pod = apply_patch(POD, json.loads(base64.b64decode(answer["patch"])))
    names = [c["name"] for c in pod["spec"]["initContainers"]]
    assert names == ["remora-init", "remora-proxy"]
    assert 'remora_control_injections_total{result="injected"} 1.0' in control.metrics()


def test_a_certificate_for_another_name_is_not_trusted(control):
    """The serving certificate names the webhook Service only: another name fails verification."""
    with pytest.raises(ssl.SSLCertVerificationError):
        post(control, b"{}", name="other.example.com")


def test_a_body_that_is_no_admission_review_is_400(control):
    """Anything but an AdmissionReview v1 is refused with the reason."""
    resp = post(control, b'{"kind": "Pod"}')
    assert resp.status == 400 and "not an AdmissionReview" in resp.json()["error"]


def test_webhook_config_prints_the_configuration_with_the_trust_bundle(control):
    """`remora webhook-config` prints the shipped configuration with caBundle = the trust bundle."""
    import subprocess
    import sys

    import yaml
    result = subprocess.run([sys.executable, "-m", "remora", "webhook-config", "--control", control.url],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    bundle = "".join(control.get("/v1/trust-bundle")["trust_bundle"])
    assert base64.b64decode(printed["webhooks"][0]["clientConfig"]["caBundle"]).decode() == bundle
    assert printed["webhooks"][0]["failurePolicy"] == "Fail"
