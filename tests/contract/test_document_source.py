"""The DocumentSource seam (xds/external.py): what the control server relies on, run against
every implementation (today the Kubernetes API source, kube/registry.py, with the API double).

A harness gives the test a started backend, a way to add one object there, the ref
(Kind/namespace/name) of the document that object becomes, and a source pointed at it.
"""
from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from remora.kube.registry import KINDS, KubeConfigError, KubernetesSource
from remora.xds.metrics import ControlMetrics
from remora.xds.sources import identity
from tests.kube_api import FakeKubeApi


@dataclass
class Harness:
    source: Any
    add: Callable[[str], str]     # add object `name` in the backend; returns its document's ref
    broken: Any                   # a source that cannot start


@asynccontextmanager
async def kubernetes(tmp_path):
    api = await FakeKubeApi(KINDS).start()

    def add(name: str) -> str:
        api.put("VirtualService", {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                                   "metadata": {"name": name, "namespace": "default"},
                                   "spec": {"hosts": [name], "http": [{"route": [{"destination": {"host": name}}]}]}})
        return f"VirtualService/default/{name}"

    try:
        yield Harness(KubernetesSource(api.kubeconfig(), log=lambda m: None, sync_timeout=5), add,
                      KubernetesSource(str(tmp_path / "missing-kubeconfig"), log=lambda m: None))
    finally:
        await api.close()


HARNESSES = {"kubernetes": kubernetes}


@pytest.fixture(params=sorted(HARNESSES))
async def harness(request, tmp_path):
    async with HARNESSES[request.param](tmp_path) as made:
        yield made
        await made.source.stop()


def refs(source) -> set[str]:
    return {identity(body) for body, _ in source.documents()}


async def until(condition, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_start_returns_with_what_the_backend_already_had(harness):
    """After start(), documents() holds the objects that existed before it, each with a source string."""
    ref = harness.add("before")
    await harness.source.start(lambda: None, ControlMetrics())
    assert ref in refs(harness.source)
    assert all(isinstance(where, str) and where for _, where in harness.source.documents())


async def test_a_change_calls_on_change_and_shows_in_documents(harness):
    """A new object calls on_change and is in the next documents(); nothing else calls it."""
    calls: list[int] = []
    await harness.source.start(lambda: calls.append(1), ControlMetrics())
    settled = len(calls)
    await asyncio.sleep(0.2)
    assert len(calls) == settled   # quiet backend, no calls
    ref = harness.add("later")
    await until(lambda: len(calls) > settled)
    assert ref in refs(harness.source)


async def test_documents_are_stable_and_status_is_json(harness):
    """Unchanged backend: equal documents on every call; status() serialises as JSON."""
    harness.add("one")
    await harness.source.start(lambda: None, ControlMetrics())
    assert harness.source.documents() == harness.source.documents()
    json.dumps(harness.source.status())


async def test_stop_leaves_no_task_running(harness):
    """stop() ends every task start() made (named after the source, so a leak is found by name)."""
    await harness.source.start(lambda: None, ControlMetrics())
    mine = lambda: {t for t in asyncio.all_tasks() if t.get_name().startswith(harness.source.name)}  # noqa: E731
    assert mine()
    await harness.source.stop()
    await asyncio.sleep(0)
    assert {t for t in mine() if not t.done()} == set()


async def test_a_source_that_cannot_start_raises(harness):
    """start() raises when the backend cannot be used at all (the server then exits 1)."""
    with pytest.raises(KubeConfigError):
        await harness.broken.start(lambda: None, ControlMetrics())
