"""--workers N under --control: the parent's apply fan-out and a child's half of it."""
from __future__ import annotations

import pytest

from remora.proxy.process.fanout import apply_to_workers
from remora.proxy.process.worker_channel import apply_documents
from remora.proxy.control.xds_state import XdsState
from remora.wire import protocol


class FakeWorkers:
    """Stands in for FanoutAdminSource.apply: records what was sent, answers scripted errors."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.sent: list[list] = []

    async def apply(self, documents: list) -> list[str]:
        self.sent.append(documents)
        return self.answers.pop(0) if self.answers else []


class FakeWorker:
    worker_id = 1

    def __init__(self) -> None:
        self.applied = []

    def apply(self, config) -> None:
        self.applied.append(config)


def candidate():
    route = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
             "metadata": {"name": "r", "namespace": "default"},
             "spec": {"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}}]}]}}
    return XdsState().candidate(protocol.DiscoveryResponse(
        type_url=protocol.ROUTES, version_info="v2", nonce="n", resources=[route]))


async def test_all_workers_applied_sends_once_and_returns():
    """When every worker applies the push, the documents go out once and nothing is raised (ACK)."""
    workers, pushed = FakeWorkers(), candidate()
    await apply_to_workers(workers, pushed, lambda: ["held"])
    assert workers.sent == [pushed.documents]


async def test_one_worker_failing_rolls_every_worker_back_and_raises():
    """A worker that cannot apply makes all go back to the held documents, and the error (for the NACK) names it."""
    workers, pushed = FakeWorkers(["worker 1: boom"]), candidate()
    with pytest.raises(RuntimeError, match="worker 1: boom"):
        await apply_to_workers(workers, pushed, lambda: ["held"])
    assert workers.sent == [pushed.documents, ["held"]]


async def test_a_child_builds_and_swaps_the_documents_it_is_sent():
    """A child turns the forwarded documents into a config and swaps it in; no error answered."""
    worker = FakeWorker()
    docs = [[doc, source] for doc, source in candidate().documents]   # as they arrive, from JSON
    assert await apply_documents(worker, docs) is None
    assert [r.source for r in worker.applied[0].virtual_services] == ["xds:routes@v2"]


async def test_a_child_answers_its_build_error_naming_itself():
    """A child that cannot build answers the error with its worker id, and keeps its config."""
    worker = FakeWorker()
    bad = [[{"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "x"},
             "spec": {"hosts": ["x"], "http": [{"route": [{"destination": {"host": "x"}, "weight": -1}]}]}},
            "xds:routes@v9"]]
    answer = await apply_documents(worker, bad)
    assert answer.startswith("worker 1: ") and "weight" in answer
    assert worker.applied == []
