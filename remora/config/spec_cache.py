"""What each clean document became, remembered across builds of a large, slowly changing set.

The control server validates its whole set (files, applied resources, registrations) on
every change, and at 10,000 services most of that set is the same dict objects as last time
(the parse cache and the applied set hand back the very objects). For such a document the
loader skips the schema and per-resource checks and reuses what it made of it: the typed
spec, the hosts it adds to the reference index, and the `Resource` itself. Reusing the
Resource object is what lets later steps work in proportion to the change: the version
hash and the control server's snapshots recognise an unchanged resource by identity.

Cross-resource checks still run on the whole set. Entries are keyed by the document object
(which is held, so its id is not reused); only entries used by the latest build are kept.
Callers must not mutate the documents they pass.
"""
from __future__ import annotations

from typing import Any


class Remembered:
    """One document that validated cleanly, and what the loader made of it so far."""

    __slots__ = ("body", "kind", "name", "namespace", "api_version", "spec", "hosts", "resource")

    def __init__(self, body: Any, kind: str, name: str, namespace: str, api_version: str, spec: Any) -> None:
        self.body = body
        self.kind, self.name, self.namespace, self.api_version, self.spec = kind, name, namespace, api_version, spec
        self.hosts: Any = None      # its contribution to the reference index (references.py)
        self.resource: Any = None   # the Resource made of it (loader.py)


class SpecCache:
    """Remembered documents by the id of the document object."""

    def __init__(self) -> None:
        self.entries: dict[int, Remembered] = {}
        self.used: dict[int, Remembered] = {}

    def recall(self, body: Any) -> Remembered | None:
        hit = self.entries.get(id(body))
        if hit is None or hit.body is not body:
            return None
        self.used[id(body)] = hit
        return hit

    def remember(self, body: Any, kind: str, name: str, namespace: str, api_version: str, spec: Any) -> Remembered:
        entry = self.used[id(body)] = Remembered(body, kind, name, namespace, api_version, spec)
        return entry

    def turn(self) -> None:
        """The build is over: keep only what it used."""
        self.entries, self.used = self.used, {}
