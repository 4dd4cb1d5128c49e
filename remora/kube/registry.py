"""`remora control --kubernetes`: the Kubernetes API as a registry (a DocumentSource).

What is read, all namespaces, each kind by its own LIST + WATCH (list_watch.py):
- core/v1 Services, Pods, Namespaces and discovery.k8s.io/v1 EndpointSlices, turned into
  documents by translate.py (Services as Service documents, ready pods as WorkloadEntries,
  the ready endpoints of selector-less Services' slices as WorkloadEntries);
- the Istio kinds Remora reads, from their CRDs at ISTIO_VERSION, passed through as
  documents with their spec as stored.
Namespaces are kept with their labels and shown in /v1/status; nothing reads them yet.

Client: kubernetes-asyncio (the official generator's asyncio client): it reads
kubeconfig (exec plugins, client certificates, tokens) and in-cluster service-account
config, and its Watch speaks the watch wire format; the reflector's rules (resume,
relist on 410, backoff) are ours, in list_watch.py, because its own 410 retry reuses the
expired version. A kind the server does not serve (an Istio CRD not installed: 404) is
retried with the same backoff, so installing the CRD later is picked up.

Configuration: --kubeconfig PATH, else in-cluster (KUBERNETES_SERVICE_HOST and the
service account's token), else $KUBECONFIG or ~/.kube/config.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from kubernetes_asyncio import client, config
from kubernetes_asyncio.config.config_exception import ConfigException

from remora.kube import translate
from remora.kube.list_watch import Kind, KindWatch

ISTIO_VERSION = "v1"     # served by Istio >= 1.22 for every kind below
SYNC_TIMEOUT = 30.0      # start() waits this long for the first LIST of every kind

SERVICE = Kind("Service", "", "v1", "services")
POD = Kind("Pod", "", "v1", "pods")
NAMESPACE = Kind("Namespace", "", "v1", "namespaces", namespaced=False)
ENDPOINT_SLICE = Kind("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices")
ISTIO_KINDS = tuple(Kind(name, group, ISTIO_VERSION, plural) for name, group, plural in (
    ("VirtualService", "networking.istio.io", "virtualservices"),
    ("DestinationRule", "networking.istio.io", "destinationrules"),
    ("ServiceEntry", "networking.istio.io", "serviceentries"),
    ("Gateway", "networking.istio.io", "gateways"),
    ("Sidecar", "networking.istio.io", "sidecars"),
    ("WorkloadEntry", "networking.istio.io", "workloadentries"),
    ("PeerAuthentication", "security.istio.io", "peerauthentications"),
    ("AuthorizationPolicy", "security.istio.io", "authorizationpolicies"),
    ("RequestAuthentication", "security.istio.io", "requestauthentications"),
    ("Telemetry", "telemetry.istio.io", "telemetries"),
))
VIRTUAL_SERVICE = ISTIO_KINDS[0]
KINDS = (SERVICE, POD, NAMESPACE, ENDPOINT_SLICE, *ISTIO_KINDS)


class KubeConfigError(Exception):
    """No usable client configuration: the control server does not start (xds/external.py)."""


class Counters(Protocol):
    """The counter families of the control server's metrics this source feeds (xds/metrics.py);
    remora/kube does not import remora/xds, so they are named here by shape."""

    kube_watch_events: Any
    kube_relists: Any
    kube_watch_errors: Any


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} remora control: kubernetes: {message}",
          file=sys.stderr, flush=True)


def list_function(api: client.ApiClient, kind: Kind) -> Callable[..., Any]:
    """The generated LIST method (all namespaces) of a kind; it also watches (watch=True)."""
    if kind is SERVICE:
        return client.CoreV1Api(api).list_service_for_all_namespaces
    if kind is POD:
        return client.CoreV1Api(api).list_pod_for_all_namespaces
    if kind is NAMESPACE:
        return client.CoreV1Api(api).list_namespace
    if kind is ENDPOINT_SLICE:
        return client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces
    return partial(client.CustomObjectsApi(api).list_cluster_custom_object, kind.group, kind.version, kind.plural)


async def client_configuration(kubeconfig: str | None) -> client.Configuration:
    """--kubeconfig, else in-cluster, else $KUBECONFIG / ~/.kube/config; KubeConfigError if none works."""
    configuration = client.Configuration()
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
            if not os.path.isfile(path.split(os.pathsep)[0]):
                raise KubeConfigError(f"no kubeconfig at {path} and not running in a cluster "
                                  "(KUBERNETES_SERVICE_HOST unset): pass --kubeconfig PATH")
            await config.load_kube_config(config_file=path, client_configuration=configuration)
    except ConfigException as error:
        raise KubeConfigError(f"cannot load the Kubernetes client configuration: {error}") from None
    return configuration


class _Stats:
    """list_watch.WatchStats onto the control server's metrics."""

    def __init__(self, metrics: Counters) -> None:
        self.metrics = metrics

    def event(self, kind: str, event_type: str) -> None:
        self.metrics.kube_watch_events.labels(kind, event_type).inc()

    def relist(self, kind: str, reason: str) -> None:
        self.metrics.kube_relists.labels(kind, reason).inc()

    def error(self, kind: str, reason: str) -> None:
        self.metrics.kube_watch_errors.labels(kind, reason).inc()


class KubernetesSource:
    """Every kind of KINDS watched, and the documents they make (see the module doc)."""

    name = translate.SOURCE

    def __init__(self, kubeconfig: str | None = None, log: Callable[[str], None] = _log,
                 sync_timeout: float = SYNC_TIMEOUT, kinds: tuple[Kind, ...] = KINDS) -> None:
        self.kubeconfig = kubeconfig
        self.log = log
        self.sync_timeout = sync_timeout
        self.kinds = kinds
        self.watches: dict[str, KindWatch] = {}
        self._api: client.ApiClient | None = None
        self._tasks: list[asyncio.Task] = []
        self._documents: list[tuple[dict, str]] | None = None   # None: recompute on next read
        self._on_change: Callable[[], None] = lambda: None
        self.host = ""

    async def start(self, on_change: Callable[[], None], metrics: Counters) -> None:
        configuration = await client_configuration(self.kubeconfig)
        self.host = configuration.host
        self._api = client.ApiClient(configuration)
        self._on_change = on_change
        stats = _Stats(metrics)
        for kind in self.kinds:
            watch = KindWatch(kind, list_function(self._api, kind), self._changed, stats, self.log)
            self.watches[kind.name] = watch
            self._tasks.append(asyncio.create_task(watch.run(), name=f"{self.name} watch {kind.name}"))
        self.log(f"watching {len(self.kinds)} kinds at {self.host}")
        waits = [asyncio.ensure_future(w.synced.wait()) for w in self.watches.values()]
        done, pending = await asyncio.wait(waits, timeout=self.sync_timeout)
        for wait in pending:
            wait.cancel()
        if pending:
            missing = [name for name, w in self.watches.items() if not w.synced.is_set()]
            self.log(f"not synced after {self.sync_timeout:g}s: {', '.join(missing)}; serving without them, "
                     "still trying")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._api is not None:
            await self._api.close()
            self._api = None

    def _changed(self) -> None:
        self._documents = None
        self._on_change()

    def _objects(self, kind: Kind) -> list[dict]:
        watch = self.watches.get(kind.name)
        return [watch.objects[key] for key in sorted(watch.objects)] if watch is not None else []

    def documents(self) -> list[tuple[dict, str]]:
        if self._documents is None:
            docs = translate.service_documents(self._objects(SERVICE), self._objects(ENDPOINT_SLICE))
            docs += [doc for pod in self._objects(POD) if (doc := translate.pod_document(pod)) is not None]
            for kind in ISTIO_KINDS:
                docs += [translate.istio_document(obj, kind.name, kind.api_version) for obj in self._objects(kind)]
            self._documents = docs
        return list(self._documents)

    def namespaces(self) -> dict[str, dict[str, str]]:
        """Every namespace and its labels."""
        return {(obj.get("metadata") or {}).get("name", ""): dict((obj.get("metadata") or {}).get("labels") or {})
                for obj in self._objects(NAMESPACE)}

    def status(self) -> dict[str, Any]:
        return {"server": self.host, "synced": all(w.synced.is_set() for w in self.watches.values()),
                "kinds": [w.status() for w in self.watches.values()], "namespaces": self.namespaces(),
                "documents": len(self.documents())}
