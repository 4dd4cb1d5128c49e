"""Shared fixtures: one set of test upstreams and one sidecar in front of them per module;
every sidecar, control server and netns lab a test or module made is closed at its end."""
from __future__ import annotations

import pytest

from tests.integration import owned
from tests.integration.proxy_process import ProxyProcess
from tests.integration.upstreams import Upstreams


def service(name: str, endpoints: list[tuple[int, dict]], port: int = 80,
            location: str = "MESH_INTERNAL") -> str:
    """A STATIC ServiceEntry for `name` with loopback endpoints (port, labels)."""
    eps = "".join(
        f"\n  - address: 127.0.0.1\n    ports: {{http: {p}}}\n    labels: {labels or {'app': name}}"
        for p, labels in endpoints)
    return f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{name}]
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  resolution: STATIC
  location: {location}
{"  endpoints:" + eps if eps else "  workloadSelector: {labels: {app: nothing-matches}}"}
---
"""


def virtual_service(host: str, http_extra: str) -> str:
    """A VirtualService for `host` with one http route to it, plus route fields (flow YAML)."""
    return f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {host}}}
spec:
  hosts: [{host}]
  http:
  - {http_extra}
    route: [{{destination: {{host: {host}}}}}]
---
"""


def destination_rule(host: str, traffic_policy: str) -> str:
    """A DestinationRule for `host` with a trafficPolicy (flow YAML)."""
    return f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {host}}}
spec:
  host: {host}
  trafficPolicy: {traffic_policy}
---
"""


def mesh_yaml(ports: dict[str, int]) -> str:
    """The test mesh: a service per upstream behaviour, plus a split and a rewrite route."""
    docs = [service(n, [(ports[n], {})]) for n in ("echo", "race", "garbage", "nolen", "sink", "source", "down")]
    docs.append(service("reviews", [(ports["v1"], {"version": "v1"}), (ports["v2"], {"version": "v2"})], 9080))
    docs.append(service("empty", []))
    docs.append("""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: api-rewrite
    match: [{uri: {prefix: /api/v1/}}]
    rewrite: {uri: /v1/}
    headers:
      request: {set: {x-route: api}, remove: [x-secret]}
      response: {add: {x-served-by: remora}}
    route: [{destination: {host: reviews, subset: v1}}]
  - name: split
    route:
    - {destination: {host: reviews, subset: v1}, weight: 80}
    - {destination: {host: reviews, subset: v2}, weight: 20}
---
""")
    return "".join(docs)


@pytest.fixture(autouse=True, scope="module")
def _close_what_the_module_made():
    """Module-scoped fixtures' processes and folders (autouse: set up before them, so torn down after)."""
    mark = owned.mark()
    yield
    owned.close_since(mark)


@pytest.fixture(autouse=True)
def _close_what_the_test_made():
    """A test's own processes and folders, even when it failed before its `stop()`."""
    mark = owned.mark()
    yield
    owned.close_since(mark)


@pytest.fixture(scope="session")
def upstreams():
    ups = Upstreams().start()
    yield ups
    ups.stop()


@pytest.fixture(scope="module")
def proxy(upstreams):
    """A sidecar whose outbound listener knows every test upstream."""
    p = ProxyProcess(mesh_yaml(upstreams.ports), "--request-headers-timeout", "1s",
                     "--idle-timeout", "2s", "--drain-seconds", "2")
    p.wait_ready()
    yield p
    try:
        assert p.stop() == 0, p.stderr()
    finally:
        p.close()
