"""An etcd v3 client over etcd's own JSON gateway (`/v3/...` on the client port), on aiohttp.

Why the gateway and not a gRPC client: every etcd since 3.4 serves it on the client URL,
its wire format is etcd's own API in JSON (keys and values base64, int64 as strings, fields
at their default value left out), and aiohttp is already the control server's HTTP stack.
The asyncio gRPC clients on PyPI carry generated protobuf stubs pinned to a protobuf
release, and the control server needs six calls (range, put, delete, txn, lease, watch).

Rules:
- Several endpoints (`etcd://a:2379,b:2379`): a call goes to the endpoint that answered
  last; a connection failure, a timeout or etcd's "unavailable" answers (no leader, leader
  changed: HTTP 503) move to the next. A member that lost quorum times out (it cannot commit
  a write nor serve a linearizable read), so it is skipped the same way. Rounds over every
  endpoint repeat until RETRY_FOR (8 s) has passed, which rides out a leader election;
  then the call fails with StoreUnavailable: a control server never hangs on its store.
- A write whose answer was lost may have been committed; the retry of a compare-and-swap
  then fails its compare, so the caller reads the keys back and takes finding its own
  values as success (replicas.EtcdState.save_applied).
- Reads are linearizable (etcd's default): a replica never acts on a value another replica
  has already replaced.
- `watch` is one long POST whose answer is a stream of JSON objects, one per line; it
  yields batches of events and raises WatchCompacted when etcd compacted past the
  revision asked for (the caller lists again), StoreUnavailable when the stream ends.
"""
from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

DEFAULT_TIMEOUT = 4.0       # one request to one member (a busy machine's fsync can take seconds)
RETRY_FOR = 8.0             # one call, over every member and round
RETRY_PAUSE = 0.2
MAX_WATCH_LINE = 64 << 20   # one watch response: a batch of events (values up to etcd's 1.5 MiB each)


class StoreUnavailable(Exception):
    """No etcd endpoint answered in time (down, or without quorum)."""


class StoreError(Exception):
    """etcd answered with an error (a request it refused)."""


class WatchCompacted(Exception):
    """The revision the watch asked for was compacted away: list again, then watch."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"watch start revision compacted (now {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int = 0


@dataclass(frozen=True)
class Event:
    kind: str          # "PUT" or "DELETE"
    key: str
    value: bytes
    mod_revision: int


def parse_store_url(url: str) -> tuple[list[str], str]:
    """`etcd://h1:2379,h2:2379[/prefix]` -> (["http://h1:2379", ...], "/prefix/"); ValueError names the problem."""
    if not url.startswith(("etcd://", "etcds://")):
        raise ValueError(f"--store {url!r}: expected etcd://HOST:PORT[,HOST:PORT...][/PREFIX]")
    scheme = "https" if url.startswith("etcds://") else "http"
    rest = url.split("://", 1)[1]
    hosts, _, prefix = rest.partition("/")
    endpoints = []
    for host in hosts.split(","):
        parts = urlsplit(f"//{host}")
        if not host or not parts.hostname or parts.port is None:
            raise ValueError(f"--store {url!r}: {host!r} is not HOST:PORT")
        endpoints.append(f"{scheme}://{host}")
    prefix = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/remora/"
    return endpoints, prefix


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def prefix_end(prefix: str) -> str:
    """The range end covering every key that starts with `prefix` (etcd's clientv3.GetPrefixRangeEnd)."""
    data = bytearray(prefix.encode())
    for i in range(len(data) - 1, -1, -1):
        if data[i] < 0xFF:
            data[i] += 1
            return _b64(bytes(data[: i + 1]))
    return _b64(b"\0")


def _kv(raw: dict) -> KeyValue:
    return KeyValue(base64.b64decode(raw["key"]).decode(), base64.b64decode(raw.get("value", "")),
                    int(raw.get("mod_revision", 0)), int(raw.get("create_revision", 0)), int(raw.get("lease", 0)))


class EtcdClient:
    """The calls the control server makes, against a list of etcd endpoints."""

    def __init__(self, endpoints: list[str], timeout: float = DEFAULT_TIMEOUT, retry_for: float = RETRY_FOR) -> None:
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self.retry_for = retry_for
        self._current = 0
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, path: str, body: dict) -> dict:
        """POST one request, trying each endpoint in turn, round after round until `retry_for`
        has passed (a leader election takes about a second); StoreUnavailable then."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_for
        while True:
            failures = []
            for attempt in range(len(self.endpoints)):
                index = (self._current + attempt) % len(self.endpoints)
                endpoint = self.endpoints[index]
                try:
                    async with self._http().post(endpoint + path, json=body,
                                                 timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
                        answer = await response.json(content_type=None)
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
                    failures.append(f"{endpoint}: {type(error).__name__} {error}".strip())
                    continue
                if response.status in (503, 504) or _unavailable(answer):
                    failures.append(f"{endpoint}: {answer.get('error') or answer.get('message') or response.status}")
                    continue
                self._current = index
                if response.status != 200:
                    raise StoreError(f"etcd {path}: HTTP {response.status}: "
                                     f"{answer.get('error') or answer.get('message') or answer}")
                return answer
            if loop.time() + RETRY_PAUSE >= deadline:
                raise StoreUnavailable("etcd unavailable: " + "; ".join(failures))
            await asyncio.sleep(RETRY_PAUSE)

    # ---- keys

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under `prefix` and the store revision they were read at."""
        answer = await self.call("/v3/kv/range", {"key": _b64(prefix), "range_end": prefix_end(prefix)})
        return [_kv(raw) for raw in answer.get("kvs", [])], int(answer["header"]["revision"])

    async def get(self, key: str) -> KeyValue | None:
        answer = await self.call("/v3/kv/range", {"key": _b64(key)})
        kvs = answer.get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        body: dict = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        answer = await self.call("/v3/kv/put", body)
        return int(answer["header"]["revision"])

    async def txn(self, compares: list[dict], success: list[dict], failure: list[dict] = ()) -> tuple[bool, dict]:
        """One transaction: (succeeded, etcd's answer)."""
        answer = await self.call("/v3/kv/txn", {"compare": compares, "success": success, "failure": list(failure)})
        return bool(answer.get("succeeded", False)), answer

    async def create(self, key: str, value: bytes) -> KeyValue | None:
        """Put `key` only if it does not exist; None if it was made, else the value already there."""
        made, answer = await self.txn([compare_absent(key)], [put_op(key, value)],
                                      [{"request_range": {"key": _b64(key)}}])
        if made:
            return None
        kvs = answer["responses"][0]["response_range"].get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    # ---- leases

    async def grant(self, ttl: int) -> int:
        answer = await self.call("/v3/lease/grant", {"TTL": str(ttl)})
        return int(answer["ID"])

    async def keep_alive(self, lease: int) -> bool:
        """Renew the lease once; False if it already expired (its keys are gone)."""
        answer = await self.call("/v3/lease/keepalive", {"ID": str(lease)})
        return int(answer.get("result", {}).get("TTL", 0)) > 0

    # ---- watch

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]:
        """Batches of events under `prefix` from `start_revision` on (see the module docstring)."""
        body = {"create_request": {"key": _b64(prefix), "range_end": prefix_end(prefix),
                                   "start_revision": str(start_revision)}}
        failures = []
        for attempt in range(len(self.endpoints)):
            index = (self._current + attempt) % len(self.endpoints)
            endpoint = self.endpoints[index]
            try:
                response = await self._http().post(
                    endpoint + "/v3/watch", json=body,
                    timeout=aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_connect=self.timeout),
                    read_bufsize=1 << 16)
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                failures.append(f"{endpoint}: {type(error).__name__} {error}".strip())
                continue
            self._current = index
            async with response:
                async for batch in _watch_batches(response):
                    yield batch
            raise StoreUnavailable(f"etcd watch on {endpoint} ended")
        raise StoreUnavailable("etcd unavailable: " + "; ".join(failures))


async def _watch_batches(response: aiohttp.ClientResponse) -> AsyncIterator[list[Event]]:
    buffer = b""
    try:
        async for chunk in response.content.iter_any():
            buffer += chunk
            if len(buffer) > MAX_WATCH_LINE:
                raise StoreError("etcd watch: a response line over 64 MiB")
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                message = json.loads(line)
                if "error" in message:
                    raise StoreUnavailable(f"etcd watch: {message['error'].get('message', message['error'])}")
                result = message.get("result", {})
                if result.get("canceled"):
                    if int(result.get("compact_revision", 0)):
                        raise WatchCompacted(int(result["compact_revision"]))
                    raise StoreUnavailable(f"etcd watch canceled: {result.get('cancel_reason', '')}")
                events = [Event(raw.get("type", "PUT"), base64.b64decode(raw["kv"]["key"]).decode(),
                                base64.b64decode(raw["kv"].get("value", "")), int(raw["kv"].get("mod_revision", 0)))
                          for raw in result.get("events", [])]
                if events:
                    yield events
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
        raise StoreUnavailable(f"etcd watch: {type(error).__name__} {error}") from None


def _unavailable(answer: object) -> bool:
    """An error etcd gives while it cannot serve (no leader, leader changed, timed out: gRPC
    UNAVAILABLE 14 or DEADLINE_EXCEEDED 4), as opposed to a refusal."""
    if not isinstance(answer, dict) or ("error" not in answer and "code" not in answer):
        return False
    text = str(answer.get("error") or answer.get("message") or "")
    return answer.get("code") in (4, 14) or any(
        word in text for word in ("no leader", "leader changed", "timed out", "timeout", "unavailable"))


# ---- transaction building blocks (etcd's Compare and RequestOp in JSON)

def compare_absent(key: str) -> dict:
    return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def compare_revision(key: str, mod_revision: int) -> dict:
    """The key is as it was at `mod_revision` (0: it does not exist)."""
    if mod_revision == 0:
        return compare_absent(key)
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}


def put_op(key: str, value: bytes, lease: int = 0) -> dict:
    request: dict = {"key": _b64(key), "value": _b64(value)}
    if lease:
        request["lease"] = str(lease)
    return {"request_put": request}


def delete_op(key: str) -> dict:
    return {"request_delete_range": {"key": _b64(key)}}
