"""Control-server replicas over etcd (`remora control --store etcd://...`): the shared state.

Every replica reads and writes the same keys under the store's prefix (`/remora/` by
default) and watches them; each pushes to its own sidecars (docs/control.md, "Replicas").

Keys:
- `applied/<Kind>/<namespace>/<name>`: a resource applied through the API (JSON: document,
  source, applied_at, file_fingerprint). An apply or delete is one transaction that holds
  only if none of the resources it changes was changed meanwhile (compare on each key's
  revision, Kubernetes' optimistic concurrency per object); else 409 and the client retries.
  Each replica validates the whole set before it writes, and again when another replica's
  change arrives (the config directory is the same on every replica, so they agree).
- `registry/<node id>`: a sidecar registered on some replica (JSON: replica, node), held
  by that replica's lease (TTL = the grace period, renewed at a third of it). A replica
  that dies stops renewing, etcd deletes its keys when the lease expires, and the other
  replicas drop those endpoints. A replica removes a key only while it is still its own
  write (compare on the revision it wrote): a sidecar that moved to another replica keeps
  the registration the other one made.
- `ca/root`: the mesh root certificate and its key, the key sealed with --store-key-file
  (certs/sealing.py). The first replica makes it (create-if-absent); the others load it.
- `ca/join-tokens`: the join-token records (hashed secrets, certs/tokens.py format). Read
  on every use, linearizably, so a token revoked on one replica is refused by all at once;
  written with compare-and-swap.
- `admin-token`: the admin token, sealed; the first replica makes it (or takes
  --admin-token-file's) and every replica checks requests against it.

Failure: without quorum, applies, token changes and certificate requests fail with 503
(store unavailable) and name etcd; the replica keeps serving its sidecars the config it
holds, and registrations it could not write are written again once etcd answers.
"""
from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from remora.certs import CertificateAuthority
from remora.certs.sealing import SealingKey
from remora.wire.protocol import Node
from remora.xds.admin_auth import AdminCredential, read_token_file
from remora.xds.etcd_client import (
    EtcdClient, Event, StoreError, StoreUnavailable, WatchCompacted, compare_revision, delete_op, parse_store_url,
    put_op,
)
from remora.xds.replica_secrets import SharedSecrets
from remora.xds.store import AppliedResource, ChangeRefused

MAX_TXN_OPS = 128          # etcd's default --max-txn-ops (--store-max-txn-ops when etcd's is raised)
RETRY_SECONDS = 1.0


def _applied_value(item: AppliedResource) -> bytes:
    return json.dumps({"document": item.document, "source": item.source, "applied_at": item.applied_at,
                       "file_fingerprint": item.file_fingerprint}, sort_keys=True, separators=(",", ":")).encode()


def _applied_item(value: bytes) -> AppliedResource:
    data = json.loads(value)
    return AppliedResource(data["document"], data["source"], float(data["applied_at"]), data.get("file_fingerprint"))


class EtcdState(SharedSecrets):
    """One replica's reads, writes and watch of the shared state (see the module docstring)."""

    def __init__(self, client: EtcdClient, prefix: str, key: SealingKey, lease_ttl: int,
                 log: Callable[[str], None]) -> None:
        self.client = client
        self.prefix = prefix
        self.key = key
        self.lease_ttl = lease_ttl
        self.log = log
        self.replica = secrets.token_hex(6)
        self.max_txn_ops = MAX_TXN_OPS    # resources one apply may change: one put or delete each
        self.lease = 0
        self.revision = 0                                       # watched up to
        self._applied: dict[str, tuple[bytes, int]] = {}        # ref -> (value, mod_revision)
        self._decoded: dict[str, tuple[bytes, AppliedResource]] = {}   # ref -> (value, what applied_now made of it)
        self._registry: dict[str, tuple[bytes, int]] = {}       # node id -> (value, mod_revision)
        self._own: dict[str, Node] = {}                         # this replica's registrations
        self._unwritten: set[str] = set()                       # registrations to write again
        self._writing: dict[str, bytes | None] = {}             # this replica's apply on its way
        self.foreign_changes = 0                                # applied-set changes by other replicas
        self._tasks: list[asyncio.Task] = []

    @classmethod
    async def open(cls, url: str, key_file: str, grace_period: float, log: Callable[[str], None]) -> EtcdState:
        endpoints, prefix = parse_store_url(url)
        client = EtcdClient(endpoints)
        state = cls(client, prefix, SealingKey.from_file(key_file), max(2, round(grace_period)), log)
        log(f"store: etcd {', '.join(endpoints)} prefix {prefix}, replica {state.replica}")
        return state

    async def close(self) -> None:
        """Stop watching. The lease is left to expire, not revoked: this replica's sidecars
        keep their endpoints for a grace period while they reconnect to another replica."""
        for task in self._tasks:
            task.cancel()
        await self.client.close()

    # ---- applied resources

    async def load(self) -> tuple[dict[str, AppliedResource], dict[str, Node]]:
        """The applied resources and the other replicas' sidecars, as of one revision."""
        kvs, self.revision = await self.client.get_prefix(self.prefix)
        applied, remote = {}, {}
        for kv in kvs:
            self._take(kv.key, kv.value, kv.mod_revision, applied, remote)
        return applied, remote

    def _take(self, key: str, value: bytes, revision: int, applied: dict, remote: dict) -> None:
        relative = key[len(self.prefix):]
        if relative.startswith("applied/"):
            ref = relative[len("applied/"):]
            self._applied[ref] = (value, revision)
            applied[ref] = _applied_item(value)
        elif relative.startswith("registry/"):
            node_id = relative[len("registry/"):]
            self._registry[node_id] = (value, revision)
            data = json.loads(value)
            if data["replica"] != self.replica:
                remote[node_id] = msgspec.convert(data["node"], Node)

    async def save_applied(self, before: dict[str, AppliedResource], after: dict[str, AppliedResource]) -> None:
        """Write the applied set's changes in one transaction; ChangeRefused (409 or 503) if it did not hold."""
        compares, ops, written = [], [], {}
        for ref in sorted(set(before) | set(after)):
            value = _applied_value(after[ref]) if ref in after else None
            known = self._applied.get(ref)
            if (known[0] if known else None) == value:
                continue
            name = f"{self.prefix}applied/{ref}"
            compares.append(compare_revision(name, known[1] if known else 0))
            ops.append(put_op(name, value) if value is not None else delete_op(name))
            written[ref] = value
        if not ops:
            return
        if len(ops) > self.max_txn_ops:
            raise ChangeRefused(400, f"the change touches {len(ops)} resources; with the etcd store one apply "
                                     f"changes at most {self.max_txn_ops} (--store-max-txn-ops, which must not "
                                     f"exceed etcd's --max-txn-ops, default 128): split it, nothing changed")
        self._writing = written   # its watch event may come before the answer: not another replica's
        try:
            done, answer = await self.client.txn(compares, ops)
            revision = int(answer["header"]["revision"])
            if not done:
                # A retried write whose first answer was lost finds its own write: that is success.
                revision = await self._already_written(written)
        except StoreUnavailable as error:
            raise ChangeRefused(503, f"config store unavailable, nothing changed: {error}") from None
        except StoreError as error:
            if "too many operations" in str(error):
                raise ChangeRefused(400, f"etcd refused a transaction of {len(ops)} operations ({error}): "
                                         f"--store-max-txn-ops {self.max_txn_ops} is more than this etcd's "
                                         "--max-txn-ops allows; lower it or raise etcd's; nothing changed") from None
            raise ChangeRefused(503, f"config store refused the write, nothing changed: {error}") from None
        finally:
            self._writing = {}
        if not revision:
            raise ChangeRefused(409, "a resource of this change was changed on another replica meanwhile; "
                                     "nothing changed: read it again and retry")
        for ref, value in written.items():
            if value is None:
                self._applied.pop(ref, None)
            else:
                self._applied[ref] = (value, revision)

    async def _already_written(self, written: dict[str, bytes | None]) -> int:
        """The revision at which every key holds what `written` says (None: absent), or 0."""
        revision = 0
        for ref, value in written.items():
            found = await self.client.get(f"{self.prefix}applied/{ref}")
            if (found.value if found else None) != value:
                return 0
            revision = max(revision, found.mod_revision if found else 0)
        return revision or -1   # deletes only: no revision to record, but done

    # ---- registrations (Registry's listener)

    def registered(self, node: Node) -> None:
        self._own[node.id] = node
        self._unwritten.add(node.id)
        self._spawn(self._write_registrations())

    def removed(self, node_id: str) -> None:
        self._own.pop(node_id, None)
        self._unwritten.discard(node_id)
        known = self._registry.get(node_id)
        if known is not None and json.loads(known[0])["replica"] == self.replica:
            self._spawn(self._remove_registration(node_id, known[1]))

    async def _write_registrations(self) -> None:
        if not self.lease:
            return   # written by _keep_lease once it holds one
        for node_id in sorted(self._unwritten):
            node = self._own.get(node_id)
            if node is None:
                continue
            value = json.dumps({"replica": self.replica, "node": msgspec.to_builtins(node)},
                               sort_keys=True).encode()
            try:
                revision = await self.client.put(f"{self.prefix}registry/{node_id}", value, self.lease)
            except StoreUnavailable as error:
                self.log(f"store: cannot write the registration of {node_id} yet: {error}")
                return
            self._registry[node_id] = (value, revision)
            self._unwritten.discard(node_id)
            if node_id not in self._own:   # removed while the write was on its way
                await self._remove_registration(node_id, revision)

    async def _remove_registration(self, node_id: str, revision: int) -> None:
        name = f"{self.prefix}registry/{node_id}"
        try:
            await self.client.txn([compare_revision(name, revision)], [delete_op(name)])
        except StoreUnavailable as error:   # the lease removes it when this replica goes
            self.log(f"store: cannot remove the registration of {node_id}: {error}")

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    # ---- running

    def start(self, on_applied: Callable[[dict[str, AppliedResource]], None],
              on_remote: Callable[[str, Node | None], None]) -> None:
        """Watch the shared keys and keep the lease; changes by other replicas reach the callbacks."""
        self._tasks.append(asyncio.get_running_loop().create_task(self._watch(on_applied, on_remote)))
        self._tasks.append(asyncio.get_running_loop().create_task(self._keep_lease()))

    async def _watch(self, on_applied, on_remote) -> None:
        while True:
            try:
                async for batch in self.client.watch(self.prefix, self.revision + 1):
                    self._apply_events(batch, on_applied, on_remote)
            except WatchCompacted:
                self.log("store: watch compacted, listing again")
                await self._relist(on_applied, on_remote)
            except StoreUnavailable as error:
                self.log(f"store: watch interrupted ({error}); again in {RETRY_SECONDS:g}s")
                await asyncio.sleep(RETRY_SECONDS)

    def _apply_events(self, batch: list[Event], on_applied, on_remote) -> None:
        applied_changed = False
        for event in batch:
            self.revision = max(self.revision, event.mod_revision)
            relative = event.key[len(self.prefix):]
            if relative.startswith("applied/"):
                ref = relative[len("applied/"):]
                known = self._applied.get(ref)
                ours = ref in self._writing and self._writing[ref] == (None if event.kind == "DELETE" else event.value)
                if event.kind == "DELETE":
                    applied_changed |= self._applied.pop(ref, None) is not None and not ours
                elif known is None or known[0] != event.value:
                    self._applied[ref] = (event.value, event.mod_revision)
                    applied_changed |= not ours
            elif relative.startswith("registry/"):
                self._registry_event(relative[len("registry/"):], event, on_remote)
        if applied_changed:
            self.foreign_changes += 1
            on_applied(self.applied_now())

    def applied_now(self) -> dict[str, AppliedResource]:
        """The applied set as this replica has seen it in the store.

        An unchanged value gives the AppliedResource (and document object) decoded last
        time, so the store's SpecCache knows it and only what changed is validated again."""
        decoded = {}
        for ref, (value, _) in self._applied.items():
            known = self._decoded.get(ref)
            decoded[ref] = known if known is not None and known[0] == value else (value, _applied_item(value))
        self._decoded = decoded
        return {ref: item for ref, (_, item) in decoded.items()}

    def _registry_event(self, node_id: str, event: Event, on_remote) -> None:
        if event.kind == "DELETE":
            self._registry.pop(node_id, None)
            if node_id in self._own:     # ours, gone with a lease etcd expired: write it again
                self._unwritten.add(node_id)
                self._spawn(self._write_registrations())
            else:
                on_remote(node_id, None)
            return
        self._registry[node_id] = (event.value, event.mod_revision)
        data = json.loads(event.value)
        if data["replica"] != self.replica:
            self._own.pop(node_id, None)    # it moved to another replica
            self._unwritten.discard(node_id)
            on_remote(node_id, msgspec.convert(data["node"], Node))

    async def _relist(self, on_applied, on_remote) -> None:
        before = set(self._registry)
        self._applied, self._registry = {}, {}
        try:
            applied, remote = await self.load()
        except StoreUnavailable as error:
            self.log(f"store: cannot list ({error}); again in {RETRY_SECONDS:g}s")
            await asyncio.sleep(RETRY_SECONDS)
            return
        on_applied(applied)
        for node_id in before - set(self._registry):
            on_remote(node_id, None)
        for node_id, node in remote.items():
            on_remote(node_id, node)

    async def _keep_lease(self) -> None:
        """Hold a lease from the moment the replica serves (granted here, not at open: loading
        a large config blocks the loop for longer than a TTL) and renew it every third of it."""
        while not self.lease:
            try:
                self.lease = await self.client.grant(self.lease_ttl)
                self.log(f"store: lease {self.lease:x} ({self.lease_ttl}s) holds this replica's registrations")
            except StoreUnavailable as error:
                self.log(f"store: cannot get a lease yet: {error}")
                await asyncio.sleep(RETRY_SECONDS)
        await self._write_registrations()
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            try:
                if not await self.client.keep_alive(self.lease):
                    self.lease = await self.client.grant(self.lease_ttl)
                    self.log(f"store: lease expired; new lease {self.lease:x}, registrations written again")
                    self._unwritten |= set(self._own)
                if self._unwritten:
                    await self._write_registrations()
            except StoreUnavailable as error:
                self.log(f"store: cannot renew the lease: {error}")

    def status(self) -> dict[str, Any]:
        """What /v1/status shows of the store."""
        return {"kind": "etcd", "endpoints": self.client.endpoints, "prefix": self.prefix, "replica": self.replica,
                "revision": self.revision, "applied": len(self._applied), "registrations": len(self._registry),
                "own_registrations": len(self._own), "unwritten_registrations": len(self._unwritten)}


@dataclass
class SharedStart:
    """What a replica reads from the store before it serves: ControlServer.load takes it."""

    state: EtcdState
    ca: CertificateAuthority
    admin: AdminCredential
    applied: dict[str, AppliedResource]
    remote: dict[str, Node]


async def start_shared(url: str, key_file: str | None, trust_domain: str, grace_period: float,
                       admin_token_file: str | None, log: Callable[[str], None],
                       max_txn_ops: int = MAX_TXN_OPS) -> SharedStart:
    """Connect to etcd and read (or make) the shared CA root, admin token and applied set.
    ValueError, CaError, SealError, AdminTokenError or StoreUnavailable say why not."""
    if not key_file:
        raise ValueError("--store etcd:// needs --store-key-file: the CA key and the admin token are sealed "
                         "with it in etcd (give every replica the same file)")
    given = read_token_file(Path(admin_token_file)) if admin_token_file else None
    state = await EtcdState.open(url, key_file, grace_period, log)
    state.max_txn_ops = max_txn_ops
    try:
        ca, made = await state.certificate_authority(trust_domain)
        log(f"CA: {'made the' if made else 'the'} shared root in etcd, trust domain {trust_domain}")
        token, created = await state.admin_token(given)
        if created:
            log(f"admin API: token made and kept sealed in etcd; shown once: {token}")
        applied, remote = await state.load()
    except BaseException:
        await state.close()
        raise
    log(f"store: {len(applied)} applied resource(s), {len(remote)} sidecar(s) on other replicas "
        f"(revision {state.revision})")
    return SharedStart(state, ca, AdminCredential.from_token(token), applied, remote)
