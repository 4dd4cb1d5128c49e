"""`remora gateway` under the control server: its certificate from the CA with a join token,
Gateways pushed at runtime open and close its listeners, and the backend's
AuthorizationPolicy sees the gateway's principal."""
from __future__ import annotations

import socket

import pytest

from tests.integration.proxy_process import ProxyProcess
from tests.integration.test_gateway_ingress import GATEWAY_PRINCIPAL, get, only_from_the_gateway
from tests.integration.test_mesh_control import wait_for
from tests.integration.test_mesh_mtls import TokenMesh

pytestmark = pytest.mark.integration

INGRESS = """apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: reviews-gateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["default/reviews.example.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-ingress, namespace: default}
spec:
  hosts: [reviews.example.com]
  gateways: [istio-system/reviews-gateway]
  http:
  - match: [{uri: {prefix: /reviews}}]
    route: [{destination: {host: reviews, port: {number: 9080}}}]
---
""" + only_from_the_gateway("reviews")


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except OSError:
        return True


@pytest.fixture
def mesh(upstreams):
    m = TokenMesh(upstreams)
    token = m.control.cli("token", "create", "--namespace", "istio-system", "--service-account",
                          "istio-ingressgateway-service-account").stdout.splitlines()[-1]
    m.gateway = ProxyProcess(None, "--token", token, "--node-id", "ingress", "--drain-seconds", "1",
                             control=m.control.url, gateway_ports=(80,))
    m.sidecars.append(m.gateway)
    m.gateway.wait_ready(40)
    yield m
    m.stop()


def test_a_pushed_gateway_opens_its_port_and_reaches_the_backend_as_the_gateway(mesh):
    """No Gateway: nothing listens. Applied: port 80 serves reviews.example.com over mTLS, and
    the backend allows it by the gateway's principal alone. Deleted: the port closes."""
    port = mesh.gateway.ports[80]
    assert refused(port)
    status, answer = mesh.control.apply(INGRESS)
    assert status == 200, answer
    wait_for(lambda: not refused(port) and get(port, "/reviews/1", "reviews.example.com").status == 200,
             "the gateway to serve the pushed Gateway")
    echo = get(port, "/reviews/1", "reviews.example.com").json()
    assert echo["headers"]["x-forwarded-client-cert"].endswith(f";URI=spiffe://{GATEWAY_PRINCIPAL}")
    assert get(port, "/reviews/1", "other.example.com").status == 404
    # The productpage sidecar is not the gateway: the same backend refuses it.
    from tests.integration.test_mesh_mtls import ask
    wait_for(lambda: ask(mesh.client)[0] == 403, "the policy to refuse other callers")
    deleted = mesh.control.cli("delete", "gateway", "reviews-gateway", "-n", "istio-system")
    assert deleted.returncode == 0, deleted.stderr
    wait_for(lambda: refused(port), "the gateway to close the port of the deleted Gateway")
