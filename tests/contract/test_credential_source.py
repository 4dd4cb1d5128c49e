"""The CredentialSource seam (proxy/security/credentials.py): what a gateway relies on, run
against both implementations: files under --credentials-dir, and the Secrets of a namespace
read from the Kubernetes API double (kube/secrets.py).

A harness gives a started source and a way to write a credential `name` (certificate, key,
optional CA, optionally in the `<name>-cacert` credential) into its backend, and to remove it.
"""
from __future__ import annotations

import asyncio
import base64
import os
import shutil
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from remora.kube.secrets import SECRET, KubernetesCredentials
from remora.proxy.security.credentials import DirectoryCredentials
from tests.kube_api import FakeKubeApi

CERT, KEY, CA, CA2 = b"-----CERT-----\n", b"-----KEY-----\n", b"-----CA-----\n", b"-----CA2-----\n"


@dataclass
class Harness:
    source: Any
    write: Callable[..., None]     # write(name, cert, key, ca=None, separate_ca=None)
    remove: Callable[[str], None]
    notifies: bool                 # the source announces changes (a watch) rather than rereading


@asynccontextmanager
async def files(tmp_path):
    root = tmp_path / "credentials"
    root.mkdir()

    def write(name, cert, key, ca=None, separate_ca=None):
        for directory, items in ((name, {"tls.crt": cert, "tls.key": key, "ca.crt": ca}),
                                 (name + "-cacert", {"ca.crt": separate_ca})):
            if any(items.values()):
                os.makedirs(root / directory, exist_ok=True)
            for file, data in items.items():
                if data is not None:
                    (root / directory / file).write_bytes(data)

    def remove(name):
        shutil.rmtree(root / name)

    yield Harness(DirectoryCredentials(str(root)), write, remove, notifies=False)


@asynccontextmanager
async def kubernetes(tmp_path):
    api = await FakeKubeApi([SECRET]).start()

    def secret(name, data, kind="kubernetes.io/tls", namespace="istio-system"):
        return {"metadata": {"name": name, "namespace": namespace}, "type": kind,
                "data": {k: base64.b64encode(v).decode() for k, v in data.items() if v is not None}}

    def write(name, cert, key, ca=None, separate_ca=None):
        api.put("Secret", secret(name, {"tls.crt": cert, "tls.key": key, "ca.crt": ca}))
        if separate_ca is not None:
            api.put("Secret", secret(name + "-cacert", {"cacert": separate_ca}, "Opaque"))
        # The same name in another namespace: never read by this gateway.
        api.put("Secret", secret(name, {"tls.crt": b"other", "tls.key": b"other"}, namespace="other"))

    def remove(name):
        api.delete("Secret", "istio-system", name)

    try:
        yield Harness(KubernetesCredentials("istio-system", api.kubeconfig(), log=lambda m: None, sync_timeout=5),
                      write, remove, notifies=True)
    finally:
        await api.close()


HARNESSES = {"files": files, "kubernetes": kubernetes}


@pytest.fixture(params=sorted(HARNESSES))
async def harness(request, tmp_path):
    async with HARNESSES[request.param](tmp_path) as made:
        yield made
        await made.source.stop()


async def until(condition, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_credential_present_at_start_is_served_with_its_origin(harness):
    """get(name) after start() gives the certificate, key and CA written before, and says where they came from."""
    harness.write("web", CERT, KEY, CA)
    await harness.source.start()
    got = harness.source.get("web")
    assert (got.cert_pem, got.key_pem, got.ca_pem) == (CERT, KEY, CA)
    assert got.origin and "web" in got.origin
    assert "KEY" not in repr(got)


async def test_a_missing_credential_is_none_and_explained(harness):
    """get() of an unknown name is None and missing() names it: the config is refused with that reason."""
    await harness.source.start()
    assert harness.source.get("nope") is None
    assert "nope" in harness.source.missing("nope")


async def test_a_credential_without_key_is_none(harness):
    """A certificate without its key is no credential (fail closed, never half a pair)."""
    harness.write("half", CERT, None)
    await harness.source.start()
    assert harness.source.get("half") is None


async def test_the_cacert_credential_is_the_ca(harness):
    """`<name>-cacert` gives the CA (Istio's GetCaCert), taking precedence over the credential's own."""
    harness.write("mtls", CERT, KEY, CA, separate_ca=CA2)
    await harness.source.start()
    assert harness.source.get("mtls").ca_pem == CA2


async def test_rotation_and_removal_are_seen(harness):
    """A rewritten credential gives the new certificate, a removed one None; a watching source calls back."""
    calls: list[int] = []
    harness.source.subscribe(lambda: calls.append(1))
    harness.write("web", CERT, KEY)
    await harness.source.start()
    harness.write("web", b"-----NEW-----\n", KEY)
    await until(lambda: harness.source.get("web").cert_pem == b"-----NEW-----\n")
    harness.remove("web")
    await until(lambda: harness.source.get("web") is None)
    assert bool(calls) == harness.notifies
