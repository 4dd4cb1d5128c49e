"""A config's version: sha256 (first 12 hex digits) of the canonical JSON of its resources'
identity and spec, sorted by (kind, namespace, name).

The canonical JSON of each resource is remembered while the Resource object lives on: the
loader's SpecCache hands back the same Resource for an unchanged document, so a change to
one resource of ten thousand encodes one, not ten thousand (the version of a 10,000-service
config took 0.6 s to compute on every change). The bytes hashed are those of encoding the whole
list at once, `[{"kind":..,"name":..,"namespace":..,"spec":..}, ...]` with sorted keys, so
versions are the same as before the cache.
"""
from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterable

import msgspec

from remora.config.model import Resource

_encode = msgspec.json.Encoder(order="sorted").encode
_ORDER = operator.attrgetter("order")   # (kind, namespace, name), made once per Resource
# id(resource) -> (resource, its canonical JSON); the resource is held so its id is not reused.
_PARTS: dict[int, tuple[Resource, bytes]] = {}


def config_version(resources: Iterable[Resource]) -> str:
    ordered = sorted(resources, key=_ORDER)
    used: dict[int, tuple[Resource, bytes]] = {}
    parts = []
    for r in ordered:
        known = _PARTS.get(id(r))
        if known is None or known[0] is not r:
            # str_keys: PeerAuthentication's portLevelMtls is keyed by port number.
            known = (r, b'{"kind":' + _encode(r.kind) + b',"name":' + _encode(r.name) + b',"namespace":'
                     + _encode(r.namespace) + b',"spec":' + _encode(msgspec.to_builtins(r.spec, str_keys=True)) + b"}")
        used[id(r)] = known
        parts.append(known[1])
    _PARTS.clear()   # keep only the resources of the latest config
    _PARTS.update(used)
    return hashlib.sha256(b"[" + b",".join(parts) + b"]").hexdigest()[:12]
