"""Sidecars known to the control server, and the resources their registration adds.

Rules:
- A sidecar is known from its `Hello` until it has been disconnected for the grace period
  (default 10 s). A reconnect with the same node id within the grace period cancels the
  removal, so a restarting sidecar or a network blip does not flap the endpoints of a
  service.
- One live stream per node id: a second `Hello` with the id of a live stream is refused
  (`DuplicateNode`); the first stream keeps working. (Replacing the old stream would let two
  sidecars misconfigured with one id take the registration from each other in a loop.)
- A node with `service` and `inbound` set becomes a WorkloadEntry `auto-<node id>` in its
  namespace: address and port from `inbound`, labels = node labels plus app=<service>,
  serviceAccount. A node that has a workload certificate (`mtls`: --token or --cert-dir)
  also gets Istio's `security.istio.io/tlsMode: istio`, so the other sidecars dial it with
  mTLS (auto-mTLS); one without keeps plaintext, which is all it can answer. Its ports are keyed by the port names of the ServiceEntries for
  <service> in that namespace, so those entries map them to the inbound port.
- If no ServiceEntry (nor Kubernetes Service) in the node's namespace has the host <service>, one is synthesized
  like a Kubernetes Service: `auto-<service>`, host <service>, port app_port named http,
  STATIC, MESH_INTERNAL, selecting app=<service>.
- A sidecar bound to every address (`--inbound-bind 0.0.0.0` or `::`, as in a container or
  a pod) cannot know which of them its peers reach; its `inbound` and `admin` host become
  the address its stream comes from (`with_peer_address`), which is the pod or container
  IP, as Istio uses the pod IP. A specific bind address is taken as given.

- With a state file (`--state-dir`), the known sidecars are saved on every change, and a
  restarted control server restores them as *disconnected*, each with a fresh grace period.
  Their endpoints stay in every push meanwhile, so a control-server restart does not
  empty the services of the sidecars that are about to reconnect (Istio keeps
  auto-registered WorkloadEntries in the API server for the same reason); a sidecar that
  does not come back within the grace period is removed as usual.

- Replicas over a shared store (replicas.py): the `listener` hears of this replica's
  sidecars that register an endpoint (connect) and of their removal (grace period over),
  and writes them for the others; `remote` holds the other replicas' sidecars, which give
  WorkloadEntries here too. A node id held here and elsewhere is this replica's; a node
  held here in its grace period that registers elsewhere has moved and is dropped here.

The registry keeps no timers itself: the caller asks `expire(now)` when a grace period may
have run out, which keeps this module free of I/O (but the state file) and easy to test
with a fake clock.
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec

from remora.certs.files import PRIVATE_MODE, ensure_dir, write_atomically
from remora.config.kube_service import fqdn, workload_port_name
from remora.config.names import TLS_MODE_LABEL, qualify_host
from remora.config.object_names import SUBDOMAIN_MAX, subdomain_problem
from remora.wire.protocol import Node

API_VERSION = "networking.istio.io/v1"
REGISTRY_SOURCE = "registry"
_NOT_NAME = re.compile(r"[^a-z0-9.-]+")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SERVICE = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


class DuplicateNode(Exception):
    """A node id that already has a live stream."""


class InvalidNode(ValueError):
    """A Hello whose node cannot be registered; the message names the field."""


@dataclass
class Registration:
    """One sidecar, connected or within its grace period."""

    node: Node
    connected_at: float                # monotonic (registry clock)
    connected_wall: float              # wall clock, for display
    last_seen: float                   # wall clock of the last message on its stream
    live: bool = True
    removal_due: float | None = None   # monotonic time; set while disconnected


def split_host_port(text: str, field: str) -> tuple[str, int]:
    """"127.0.0.1:9080" or "[::1]:9080" -> (host, port); raise InvalidNode naming the field."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidNode(f"node.{field}: expected host:port, got {text!r}")
    return host, int(port)


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False   # a name: taken as given


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def with_peer_address(node: Node, peer: str | None) -> Node:
    """`node` with an unspecified host (0.0.0.0, ::) in `inbound`/`admin` replaced by `peer`,
    the address its stream comes from; unchanged when there is nothing to replace or no peer."""
    if not peer:
        return node
    if peer.startswith("::ffff:") and "." in peer:   # IPv4 client on a dual-stack listener
        peer = peer[len("::ffff:"):]
    changes = {}
    for field in ("inbound", "admin"):
        value = getattr(node, field)
        if value is None:
            continue
        host, port = split_host_port(value, field)
        if _is_unspecified(host):
            changes[field] = _join_host_port(peer, port)
    return msgspec.structs.replace(node, **changes) if changes else node


_LOCALITY = re.compile(r"[A-Za-z0-9._-]{1,63}(/[A-Za-z0-9._-]{1,63}){0,2}")

def check_node(node: Node) -> None:
    """Raise InvalidNode for a node that cannot be registered or scoped."""
    if not node.id.strip():
        raise InvalidNode("node.id: must not be empty")
    if not _NAMESPACE.fullmatch(node.namespace):
        raise InvalidNode(f"node.namespace: {node.namespace!r} is not a DNS label (lowercase letters, digits, '-')")
    # auto-<service> becomes a ServiceEntry's metadata.name: it must be a DNS-1123 subdomain too.
    if node.service is not None and (not _SERVICE.fullmatch(node.service)
                                     or subdomain_problem(f"auto-{node.service}") is not None):
        raise InvalidNode(f"node.service: {node.service[:80]!r} is not a valid service name "
                          f"(a DNS-1123 subdomain of at most {SUBDOMAIN_MAX - len('auto-')} characters)")
    if node.inbound is not None:
        split_host_port(node.inbound, "inbound")
    if node.admin is not None:
        split_host_port(node.admin, "admin")
    if node.app_port is not None and not 0 < node.app_port < 65536:
        raise InvalidNode(f"node.app_port: {node.app_port} is not a port number")
    if node.locality and not _LOCALITY.fullmatch(node.locality):
        raise InvalidNode(f"node.locality: {node.locality[:80]!r} is not REGION[/ZONE[/SUBZONE]]")


def entry_name(node_id: str) -> str:
    """`auto-` + the node id as a resource name; a short hash keeps changed ids distinct."""
    name = _subdomain(_NOT_NAME.sub("-", node_id.lower()))
    if name != node_id:
        name = f"{_subdomain(name[:200]) or 'node'}-{hashlib.sha256(node_id.encode()).hexdigest()[:6]}"
    return f"auto-{name}"


def _subdomain(text: str) -> str:
    """`text` made a DNS-1123 subdomain: no empty dot-separated part, none starting or ending with '-'."""
    return ".".join(part for part in (p.strip("-") for p in text.split(".")) if part)


class RegistryListener(Protocol):
    """Told of this replica's registrations, to share them with the other replicas."""

    def registered(self, node: Node) -> None: ...

    def removed(self, node_id: str) -> None: ...


class Registry:
    """Known sidecars by node id, and the WorkloadEntries / ServiceEntries they imply."""

    def __init__(self, grace_period: float, clock: Callable[[], float] = time.monotonic,
                 state_path: str | Path | None = None) -> None:
        self.grace_period = grace_period
        self.clock = clock
        self.nodes: dict[str, Registration] = {}
        self.state_path = Path(state_path) if state_path is not None else None
        # Replicas over a shared store (replicas.py): the sidecars other replicas hold, and who
        # hears of this replica's connects and removals to publish them.
        self.remote: dict[str, Node] = {}
        self.listener: RegistryListener | None = None

    def restore(self) -> int:
        """Load the sidecars saved before a restart, as disconnected with a fresh grace period;
        return how many. A missing file is an empty registry; an unreadable one is reported
        and ignored (the sidecars re-register when they reconnect)."""
        if self.state_path is None or not self.state_path.exists():
            return 0
        try:
            nodes = msgspec.json.decode(self.state_path.read_bytes(), type=list[Node])
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as error:
            print(f"remora control: ignoring registry state {self.state_path}: {error}", file=sys.stderr)
            return 0
        now, wall = self.clock(), time.time()
        for node in nodes:
            self.nodes[node.id] = Registration(node, now, wall, wall, live=False,
                                               removal_due=now + self.grace_period)
        return len(nodes)

    def _save(self) -> None:
        """Write the known sidecars; a failure is reported, never fatal to a stream (the
        registry in memory is still right; only a restart would forget the entry)."""
        if self.state_path is None:
            return
        nodes = [self.nodes[node_id].node for node_id in sorted(self.nodes)]
        try:
            ensure_dir(self.state_path.parent)
            write_atomically(self.state_path, msgspec.json.encode(nodes), PRIVATE_MODE)
        except OSError as error:
            print(f"remora control: cannot save registry state {self.state_path}: {error}", file=sys.stderr)

    def connect(self, node: Node) -> Registration:
        """Register a sidecar that sent Hello; raise DuplicateNode if its id has a live stream."""
        now = self.clock()
        known = self.nodes.get(node.id)
        if known is not None and known.live:
            raise DuplicateNode(f"node id {node.id!r} already has a live stream (connected "
                                f"{now - known.connected_at:.0f}s ago); give each sidecar a unique --node-id")
        wall = time.time()
        self.nodes[node.id] = Registration(node, now, wall, wall)
        self._save()
        if self.listener is not None and self.registers_endpoint(node):   # the others need only endpoints
            self.listener.registered(node)
        return self.nodes[node.id]

    def disconnect(self, node_id: str) -> float:
        """Its stream ended: schedule the removal; return the delay until it is due."""
        registration = self.nodes.get(node_id)
        if registration is not None and registration.live:
            registration.live = False
            registration.removal_due = self.clock() + self.grace_period
        return self.grace_period

    def expire(self) -> list[str]:
        """Remove sidecars whose grace period ran out; return their ids."""
        now = self.clock()
        gone = [node_id for node_id, r in self.nodes.items()
                if not r.live and r.removal_due is not None and r.removal_due <= now]
        for node_id in gone:
            del self.nodes[node_id]
            if self.listener is not None:
                self.listener.removed(node_id)
        if gone:
            self._save()
        return gone

    def remote_changed(self, node_id: str, node: Node | None) -> bool:
        """Another replica registered (`node`) or removed (None) a sidecar; True if the
        documents change. A node that moved there from here is no longer held here."""
        known = self.nodes.get(node_id)
        if node is not None and known is not None and not known.live:
            del self.nodes[node_id]    # it reconnected to another replica within its grace period
        before = self.remote.get(node_id)
        if node is None:
            self.remote.pop(node_id, None)
        else:
            self.remote[node_id] = node
        return before != node and node_id not in self.nodes

    def _known(self) -> dict[str, Node]:
        """Every registered node: this replica's own over another replica's of the same id."""
        known = dict(self.remote)
        known.update((node_id, r.node) for node_id, r in self.nodes.items())
        return known

    def registers_endpoint(self, node: Node) -> bool:
        return node.service is not None and node.inbound is not None

    def documents(self, user_docs: list[tuple[Any, str]]) -> list[tuple[dict, str]]:
        """The WorkloadEntries (and synthesized ServiceEntries) of the registered sidecars."""
        ports_by_service = _declared_ports(user_docs)
        docs: list[tuple[dict, str]] = []
        synthesized: dict[tuple[str, str], dict] = {}
        known = self._known()
        for node_id in sorted(known):
            node = known[node_id]
            if not self.registers_endpoint(node):
                continue
            host, port = split_host_port(node.inbound, "inbound")
            key = (node.namespace, qualify_host(node.service, node.namespace))
            names = ports_by_service.get(key)
            if names is None:
                names = ["http"]
                synthesized.setdefault(key, _service_entry(node, port))
            labels = {**node.labels}
            labels.setdefault("app", node.service)
            if node.mtls:
                labels[TLS_MODE_LABEL] = "istio"
            spec = {"address": host, "ports": {name: port for name in names or ["http"]}, "labels": labels,
                    "serviceAccount": node.service_account}
            if node.locality:
                spec["locality"] = node.locality
            docs.append((_document("WorkloadEntry", entry_name(node.id), node.namespace, spec),
                         f"{REGISTRY_SOURCE} (sidecar {node.id})"))
        docs += [(doc, REGISTRY_SOURCE) for _, doc in sorted(synthesized.items())]
        return docs


def _document(kind: str, name: str, namespace: str, spec: dict) -> dict:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name, "namespace": namespace},
            "spec": spec}


def _service_entry(node: Node, inbound_port: int) -> dict:
    return _document("ServiceEntry", f"auto-{node.service}", node.namespace, {
        "hosts": [node.service],
        "ports": [{"number": node.app_port or inbound_port, "name": "http", "protocol": "HTTP"}],
        "resolution": "STATIC", "location": "MESH_INTERNAL",
        "workloadSelector": {"labels": {"app": node.service}},
    })


def _declared_ports(user_docs: list[tuple[Any, str]]) -> dict[tuple[str, str], list[str]]:
    """(namespace, service FQDN) -> port names, for every ServiceEntry (or Kubernetes Service) the users wrote.

    Read from the raw documents (before validation, tolerating bad shapes: the validation
    of the whole set reports those), because the registry's documents are part of the set.
    """
    found: dict[tuple[str, str], list[str]] = {}
    for body, _ in user_docs:
        if not isinstance(body, dict) or body.get("kind") not in ("ServiceEntry", "Service"):
            continue
        metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        namespace = metadata.get("namespace") or "default"
        spec = body.get("spec") if isinstance(body.get("spec"), dict) else {}
        if body["kind"] == "Service":
            # A Kubernetes Service: its host, and the key of each port in a workload's ports.
            if isinstance(metadata.get("name"), str) and isinstance(namespace, str):
                ports = spec.get("ports") if isinstance(spec.get("ports"), list) else []
                found.setdefault((namespace, fqdn(metadata["name"], namespace)), []).extend(
                    workload_port_name(p.get("name"), p.get("targetPort"), p.get("port"))
                    for p in ports if isinstance(p, dict))
            continue
        hosts = spec.get("hosts") if isinstance(spec.get("hosts"), list) else []
        ports = spec.get("ports") if isinstance(spec.get("ports"), list) else []
        names = [p["name"] for p in ports if isinstance(p, dict) and isinstance(p.get("name"), str)]
        for host in hosts:
            if isinstance(host, str) and isinstance(namespace, str):
                found.setdefault((namespace, qualify_host(host, namespace)), []).extend(names)
    return found
