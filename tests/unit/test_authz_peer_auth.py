"""PeerAuthentication scoping: mesh < namespace < workload < port, UNSET inherits, PERMISSIVE default."""
from __future__ import annotations

import textwrap

from remora.config.loader import load_mesh_text
from remora.proxy.security.peer_auth import effective_mtls_mode


def peer_auth(name: str, namespace: str, spec: str) -> str:
    body = textwrap.indent(textwrap.dedent(spec), "  ")
    return (f"---\napiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\n"
            f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{body}\n")


def mode(text: str, namespace: str = "foo", labels: dict | None = None, port: int | None = 8080) -> str:
    policies = load_mesh_text(text).peer_authentications
    return effective_mtls_mode(policies, namespace, labels or {"app": "api"}, port)


MESH_STRICT = peer_auth("default", "istio-system", "mtls: {mode: STRICT}")


def test_default_is_permissive() -> None:
    """No PeerAuthentication at all: PERMISSIVE, Istio's default."""
    assert effective_mtls_mode([], "foo", {}, 8080) == "PERMISSIVE"


def test_mesh_wide_policy_applies_everywhere() -> None:
    """A root-namespace policy without selector sets the mode for every namespace."""
    assert mode(MESH_STRICT) == "STRICT"
    assert mode(MESH_STRICT, namespace="bar") == "STRICT"


def test_namespace_policy_overrides_mesh() -> None:
    """A namespace-wide policy beats the mesh-wide one, only in its namespace."""
    text = MESH_STRICT + peer_auth("default", "foo", "mtls: {mode: PERMISSIVE}")
    assert mode(text) == "PERMISSIVE"
    assert mode(text, namespace="bar") == "STRICT"


def test_workload_policy_overrides_namespace_when_selector_matches() -> None:
    """A selector policy beats the namespace one for matching workloads only."""
    text = (peer_auth("default", "foo", "mtls: {mode: STRICT}")
            + peer_auth("api", "foo", "selector: {matchLabels: {app: api}}\nmtls: {mode: DISABLE}"))
    assert mode(text) == "DISABLE"
    assert mode(text, labels={"app": "web"}) == "STRICT"


def test_unset_inherits_from_broader_scope() -> None:
    """mode UNSET, or no mtls at all, inherits the next broader scope's mode."""
    text = (MESH_STRICT + peer_auth("default", "foo", "mtls: {mode: UNSET}")
            + peer_auth("api", "foo", "selector: {matchLabels: {app: api}}"))
    assert mode(text) == "STRICT"


def test_port_level_overrides_for_that_port_only() -> None:
    """portLevelMtls on the workload policy overrides its mode for that port; UNSET there inherits."""
    text = MESH_STRICT + peer_auth("api", "foo", """
        selector: {matchLabels: {app: api}}
        mtls: {mode: PERMISSIVE}
        portLevelMtls:
          9090: {mode: DISABLE}
          8080: {mode: UNSET}
        """)
    assert mode(text, port=9090) == "DISABLE"
    assert mode(text, port=8080) == "PERMISSIVE"
    assert mode(text, port=7070) == "PERMISSIVE"
    assert mode(text, port=None) == "PERMISSIVE"


def test_fixture_payment_service_ports() -> None:
    """The fixture 002-08: namespace STRICT, payment-service port 9090 DISABLE."""
    from pathlib import Path
    fixture = Path(__file__).resolve().parents[1] / "fixtures/istio-examples/002-08-PeerAuthentication-default.yaml"
    text = fixture.read_text()
    assert mode(text, namespace="default", labels={"app": "payment-service"}, port=9090) == "DISABLE"
    assert mode(text, namespace="default", labels={"app": "payment-service"}, port=8080) == "STRICT"
    assert mode(text, namespace="default", labels={"app": "web"}, port=9090) == "STRICT"
