"""What `GET /v1/status` answers (`remora status` shows it): config, JWKS, store, sidecars.

Sidecars are this replica's (connected, or within their grace period); with replicas over
etcd, `elsewhere` lists the ids of the sidecars other replicas hold, whose endpoints this
replica serves too.
"""
from __future__ import annotations

import time
from typing import Any

from remora.xds.registry import Registry
from remora.xds.store import ConfigStore


def iso(at: float | None) -> str | None:
    return None if not at else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def status_body(store: ConfigStore, served_version: str, jwks: dict, registry: Registry, sessions: dict,
                trust_domain: str, shared: Any | None, sources: dict[str, dict]) -> dict:
    state = store.state
    error = state.last_error
    config = {"version": state.version, "served_version": served_version, "source": state.source,
              "updated_at": iso(state.updated_at), "files_valid": state.files_valid,
              "resources": len(store.resources()),
              "last_error": None if error is None else {"at": iso(error.at), "source": error.source,
                                                        "errors": error.errors}}
    return {"config": config, "jwks": jwks,
            "store": shared.status() if shared is not None else {"kind": "local"},
            **({"sources": sources} if sources else {}),
            "sidecars": [sidecar_view(registry, sessions, trust_domain, node_id) for node_id in sorted(registry.nodes)],
            "elsewhere": sorted(set(registry.remote) - set(registry.nodes))}


def sidecar_view(registry: Registry, sessions: dict, trust_domain: str, node_id: str) -> dict:
    registration = registry.nodes[node_id]
    node = registration.node
    session = sessions.get(node_id)
    removal = registration.removal_due
    return {
        "id": node.id, "namespace": node.namespace, "service": node.service, "workload": node.workload,
        "identity": f"spiffe://{trust_domain}/ns/{node.namespace}/sa/{node.service_account}",
        "labels": node.labels, "inbound": node.inbound, "admin": node.admin, "version": node.remora_version,
        "started_at": iso(node.started_at),
        "uptime_seconds": round(time.time() - node.started_at, 1) if node.started_at else None,
        "capabilities": list(node.capabilities),
        "connected": session is not None, "connected_at": iso(registration.connected_wall),
        "last_seen": iso(registration.last_seen),
        "last_seen_seconds": round(time.time() - registration.last_seen, 1),
        "removal_in_seconds": None if removal is None else round(max(0.0, removal - registry.clock()), 1),
        "types": session.status() if session is not None else {},
    }
