"""The list/watch state machine (kube/list_watch.py) against the API server double on loopback."""
from __future__ import annotations

import asyncio

import pytest
from kubernetes_asyncio import client

from remora.kube.list_watch import Backoff, KindWatch
from remora.kube.registry import KINDS, POD, VIRTUAL_SERVICE, client_configuration, list_function
from tests.kube_api import FakeKubeApi


def a_pod(name: str, ip: str = "10.1.0.1") -> dict:
    return {"metadata": {"name": name, "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}


class Recorder:
    """WatchStats that keeps every call, and sleeps that are recorded and return at once."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.relists: list[tuple[str, str]] = []
        self.errors: list[tuple[str, str]] = []
        self.sleeps: list[float] = []

    def event(self, kind, event_type):
        self.events.append((kind, event_type))

    def relist(self, kind, reason):
        self.relists.append((kind, reason))

    def error(self, kind, reason):
        self.errors.append((kind, reason))

    async def sleep(self, seconds):
        self.sleeps.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
async def api():
    server = await FakeKubeApi(KINDS).start()
    yield server
    await server.close()


@pytest.fixture
async def api_client(api):
    c = client.ApiClient(await client_configuration(api.kubeconfig()))
    yield c
    await c.close()


async def until(predicate, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def running(watch: KindWatch):
    task = asyncio.create_task(watch.run())
    await asyncio.wait_for(watch.synced.wait(), 5)
    return task


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def server_state(api: FakeKubeApi, kind: str) -> dict[str, str]:
    return {key: obj["metadata"]["resourceVersion"] for key, obj in api.by_kind[kind].objects.items()}


def cache_state(watch: KindWatch) -> dict[str, str]:
    return {f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}": o["metadata"]["resourceVersion"]
            for o in watch.objects.values()}


async def test_list_then_watch_events_keep_the_cache_and_call_on_change(api, api_client):
    """LIST fills the cache; ADDED, MODIFIED and DELETED events follow, each calling on_change once."""
    api.put("Pod", a_pod("a"))
    changes, stats = [], Recorder()
    watch = KindWatch(POD, list_function(api_client, POD), lambda: changes.append(1), stats)
    task = await running(watch)
    assert set(watch.objects) == {"shop/a"} and changes == [1]
    await until(lambda: api.watch_count() == 1)
    watch_query = api.requests[-1][2]
    assert watch_query["watch"].lower() == "true" and watch_query["allowWatchBookmarks"].lower() == "true"
    assert watch_query["resourceVersion"] == watch.resource_version == str(api.version)
    api.put("Pod", a_pod("b"))
    api.put("Pod", a_pod("a", ip="10.1.0.9"))
    api.delete("Pod", "shop", "b")
    await until(lambda: len(changes) == 4)
    assert cache_state(watch) == server_state(api, "Pod")
    assert watch.objects["shop/a"]["status"]["podIP"] == "10.1.0.9"
    assert [t for _, t in stats.events] == ["ADDED", "MODIFIED", "DELETED"]
    await stop(task)


async def test_bookmark_advances_the_resource_version_without_a_change(api, api_client):
    """A BOOKMARK moves the position forward and calls on_change never."""
    changes, stats = [], Recorder()
    watch = KindWatch(POD, list_function(api_client, POD), lambda: changes.append(1), stats)
    task = await running(watch)
    await until(lambda: api.watch_count() == 1)
    before = watch.resource_version
    api.bookmark()
    await until(lambda: watch.resource_version != before)
    assert watch.resource_version == str(api.version) and int(watch.resource_version) > int(before)
    assert changes == [] and stats.events == [("Pod", "BOOKMARK")]
    await stop(task)


async def test_watch_that_ends_resumes_from_the_last_version_without_a_list(api, api_client):
    """A dropped watch is resumed at the resourceVersion it reached: no LIST, no missed event."""
    watch = KindWatch(POD, list_function(api_client, POD), lambda: None)
    task = await running(watch)
    await until(lambda: api.watch_count() == 1)
    api.put("Pod", a_pod("a"))
    await until(lambda: "shop/a" in watch.objects)
    position = watch.resource_version
    api.drop_watches()
    api.put("Pod", a_pod("b"))   # while no watch is open: in the history, sent on resume
    await until(lambda: "shop/b" in watch.objects)
    watches = [q for _, path, q in api.requests if path == "/api/v1/pods" and q.get("watch")]
    lists = [q for _, path, q in api.requests if path == "/api/v1/pods" and not q.get("watch")]
    assert len(lists) == 1 and watches[-1]["resourceVersion"] == position
    await stop(task)


async def test_410_gone_relists_and_the_cache_equals_the_servers_state(api, api_client):
    """ERROR 410 (Expired) makes a new LIST: changes whose events were lost are in the cache after it."""
    api.put("Pod", a_pod("a"))
    api.put("Pod", a_pod("b"))
    changes, stats = [], Recorder()
    watch = KindWatch(POD, list_function(api_client, POD), lambda: changes.append(1), stats)
    task = await running(watch)
    await until(lambda: api.watch_count() == 1)
    api.delete("Pod", "shop", "a", silent=True)          # events the watch never gets
    api.put("Pod", a_pod("b", ip="10.1.0.2"), silent=True)
    api.put("Pod", a_pod("c"), silent=True)
    api.expire()
    await until(lambda: watch.relists == 2)
    assert cache_state(watch) == server_state(api, "Pod")
    assert stats.relists == [("Pod", "start"), ("Pod", "gone")] and stats.errors == []
    assert len(changes) == 2   # the first LIST, the relist
    await until(lambda: api.watch_count() == 1)   # and watching again, from the new list's version
    api.put("Pod", a_pod("d"))
    await until(lambda: "shop/d" in watch.objects)
    await stop(task)


async def test_failures_back_off_exponentially_then_reset_after_success(api, api_client):
    """HTTP 500s wait 0.5, 1, 2 s (jitter at its top) before trying again; a success resets the backoff."""
    api.fail(3, 500)
    stats = Recorder()
    watch = KindWatch(POD, list_function(api_client, POD), lambda: None, stats,
                      backoff=Backoff(rand=lambda: 1.0), sleep=stats.sleep)
    task = await running(watch)
    assert stats.sleeps == [0.5, 1.0, 2.0]
    assert stats.errors == [("Pod", "http_500")] * 3
    assert watch.backoff.failures == 0 and watch.last_error is None
    await stop(task)


async def test_connection_refused_is_retried_with_backoff_and_the_error_kept():
    """No server listening: every attempt fails as `connection`, delays grow, the status says why."""
    configuration = client.Configuration(host="http://127.0.0.1:9")   # discard port: nothing listens
    async with client.ApiClient(configuration) as api_client:
        stats = Recorder()
        watch = KindWatch(POD, list_function(api_client, POD), lambda: None, stats,
                          backoff=Backoff(rand=lambda: 0.0), sleep=stats.sleep)
        task = asyncio.create_task(watch.run())
        await until(lambda: len(stats.sleeps) >= 4)
        await stop(task)
    assert stats.sleeps[:4] == [0.25, 0.5, 1.0, 2.0]   # jitter at its bottom: half of each delay
    assert {reason for _, reason in stats.errors} == {"connection"}
    assert not watch.synced.is_set() and watch.status()["lastError"].startswith("connection")


async def test_a_kind_the_server_does_not_serve_is_retried_not_fatal(api_client):
    """An Istio CRD not installed (404): the watch keeps retrying and reports not_found."""
    server = await FakeKubeApi([POD]).start()   # serves pods only
    try:
        c = client.ApiClient(await client_configuration(server.kubeconfig()))
        stats = Recorder()
        watch = KindWatch(VIRTUAL_SERVICE, list_function(c, VIRTUAL_SERVICE), lambda: None, stats,
                          sleep=stats.sleep)
        task = asyncio.create_task(watch.run())
        await until(lambda: len(stats.sleeps) >= 2)
        await stop(task)
        await c.close()
        assert stats.errors[:2] == [("VirtualService", "not_found")] * 2
    finally:
        await server.close()


def test_backoff_doubles_to_its_cap_with_jitter_in_the_upper_half():
    """Backoff: 0.5 s doubling, capped at 30 s, each delay in [d/2, d]; reset starts over."""
    top = Backoff(rand=lambda: 1.0)
    assert [top.next() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    top.reset()
    assert top.next() == 0.5
    assert Backoff(rand=lambda: 0.0).next() == 0.25


async def test_a_watch_closed_at_once_without_events_is_backed_off(api, api_client):
    """A server that ends every watch at once: each retry waits the backoff, no tight loop."""
    stats = Recorder()
    watch = KindWatch(POD, list_function(api_client, POD), lambda: None, stats,
                      backoff=Backoff(rand=lambda: 1.0), sleep=stats.sleep, watch_seconds=0)
    task = await running(watch)
    await until(lambda: len(stats.sleeps) >= 3)
    await stop(task)
    assert stats.sleeps[:3] == [0.5, 1.0, 2.0] and stats.errors == []
