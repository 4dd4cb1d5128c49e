"""`remora gateway --credentials-from-kubernetes`: credentialName from the Secrets of the
gateway's namespace (the CredentialSource Protocol of proxy/security/credentials.py, by shape: remora/kube
does not import remora/proxy; the CLI hands this source to the gateway).

Istio's older gateway SDS design: the gateway reads the Secrets itself, with its own
service account (a Role allowing get/list/watch on secrets in its namespace), so private
keys never travel on the control server's stream (plain HTTP). One LIST + WATCH of
`/api/v1/namespaces/<ns>/secrets` (list_watch.KindWatch: resume, relist on 410, backoff).

Which keys are read, as Istio's pilot/pkg/credentials/kube/secrets.go:
- certificate and key: `cert` + `key` (Istio's generic Secret), else `tls.crt` + `tls.key`
  (type kubernetes.io/tls); an empty value counts as absent. The Secret's type is not
  checked, as Istio does not: the keys decide.
- CA (MUTUAL): the Secret `<name>-cacert` if it exists (even one without a CA: then there
  is none), else `<name>` itself (GetCaCert); from `cacert`, else `ca.crt`.
A Secret that is missing, or lacks both pairs, gives no credential: the config naming it is
refused (fail closed), and a listener already serving it refuses handshakes
(proxy/security/gateway_credentials.py).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import sys
import time
from collections.abc import Callable
from functools import partial

from kubernetes_asyncio import client

from remora.kube.list_watch import Kind, KindWatch
from remora.kube.registry import KubeConfigError, client_configuration
from remora.certs.credential import Credential, CredentialSourceError

SECRET = Kind("Secret", "", "v1", "secrets")
CA_SUFFIX = "-cacert"
SYNC_TIMEOUT = 30.0
GENERIC = ("cert", "key", "cacert")
TLS = ("tls.crt", "tls.key", "ca.crt")


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} remora gateway: kubernetes: {message}",
          file=sys.stderr, flush=True)


def _data(secret: dict) -> dict[str, bytes]:
    """The Secret's `data`, decoded; values that are not base64 are left out."""
    out = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            out[key] = base64.b64decode(value or "", validate=True)
        except (binascii.Error, ValueError, TypeError):
            continue
    return out


def secret_root(secret: dict) -> bytes | None:
    """The CA bundle of a Secret: `cacert`, else `ca.crt` (Istio's ExtractRoot); None if neither."""
    data = _data(secret)
    return data.get("cacert") or data.get("ca.crt") or None


def secret_credential(secret: dict, ca_secret: dict | None = None) -> Credential | None:
    """The credential of a Secret (see the module doc); `ca_secret` is `<name>-cacert`, if any."""
    data = _data(secret)
    meta = secret.get("metadata") or {}
    for cert_key, key_key, _ in (GENERIC, TLS):
        if data.get(cert_key) and data.get(key_key):
            origin = f"secret {meta.get('namespace')}/{meta.get('name')} ({secret.get('type') or 'Opaque'}, " \
                     f"resourceVersion {meta.get('resourceVersion')})"
            if ca_secret is None:
                return Credential(data[cert_key], data[key_key], secret_root(secret), origin)
            # Istio's GetCaCert: an existing <name>-cacert is the CA, even when it holds none.
            origin += f", CA from secret {(ca_secret.get('metadata') or {}).get('name')}"
            return Credential(data[cert_key], data[key_key], secret_root(ca_secret), origin)
    return None


class KubernetesCredentials:
    """The Secrets of one namespace, watched, as a CredentialSource."""

    def __init__(self, namespace: str, kubeconfig: str | None = None, log: Callable[[str], None] = _log,
                 sync_timeout: float = SYNC_TIMEOUT) -> None:
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.log = log
        self.sync_timeout = sync_timeout
        self.description = f"Secrets of namespace {namespace} (Kubernetes API)"
        self.watches = True
        self.watch: KindWatch | None = None
        self._api: client.ApiClient | None = None
        self._task: asyncio.Task | None = None
        self._callbacks: list[Callable[[], None]] = []

    def _secret(self, name: str) -> dict | None:
        return self.watch.objects.get(f"{self.namespace}/{name}") if self.watch is not None else None

    def get(self, name: str) -> Credential | None:
        secret = self._secret(name)
        if secret is None:
            return None
        return secret_credential(secret, self._secret(name + CA_SUFFIX))

    def missing(self, name: str) -> str:
        if self.watch is None or not self.watch.synced.is_set():
            return f"the Secrets of namespace {self.namespace} are not read yet ({self._error()})"
        if self._secret(name) is None:
            return f"no Secret {self.namespace}/{name}"
        return (f"Secret {self.namespace}/{name} has neither cert and key nor tls.crt and tls.key "
                "(non-empty, base64)")

    def _error(self) -> str:
        if self.watch is None:
            return "not started"
        return self.watch.last_error or "no answer yet"

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def _changed(self) -> None:
        for callback in self._callbacks:
            callback()

    async def start(self) -> None:
        """Start the watch; wait up to sync_timeout for the first LIST (CredentialSourceError if
        no client configuration; a server that does not answer leaves the Secrets unread, so
        configs naming them are refused until it does)."""
        try:
            configuration = await client_configuration(self.kubeconfig)
        except KubeConfigError as error:
            raise CredentialSourceError(f"--credentials-from-kubernetes: {error}") from None
        self._api = client.ApiClient(configuration)
        list_secrets = partial(client.CoreV1Api(self._api).list_namespaced_secret, self.namespace)
        self.watch = KindWatch(SECRET, list_secrets, self._changed, log=self.log)
        self._task = asyncio.create_task(self.watch.run(), name=f"watch secrets {self.namespace}")
        try:
            await asyncio.wait_for(self.watch.synced.wait(), self.sync_timeout)
        except asyncio.TimeoutError:
            self.log(f"Secrets of {self.namespace} not listed after {self.sync_timeout:g}s ({self._error()}); "
                     "still trying")
        else:
            self.log(f"watching the Secrets of namespace {self.namespace} at {configuration.host} "
                     f"({len(self.watch.objects)} now)")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._api is not None:
            await self._api.close()
            self._api = None
