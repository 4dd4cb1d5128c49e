"""A config's version: sha256 (first 12 hex digits) of the canonical JSON of its resources'
identity and spec, sorted by (kind, namespace, name).

The canonical JSON of each spec is remembered while the spec object lives on: the loader's
SpecCache hands back the same spec for an unchanged document, so a change to one resource
of ten thousand encodes one spec, not ten thousand (the version of a 10,000-service config
took 0.6 s to compute on every change). The bytes hashed are those of encoding the whole
list at once, `[{"kind":..,"name":..,"namespace":..,"spec":..}, ...]` with sorted keys, so
versions are the same as before the cache.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable

import msgspec

from remora.config.model import Resource

_encode = msgspec.json.Encoder(order="sorted").encode
# id(spec) -> (spec, its canonical JSON); the spec is held so its id is not reused meanwhile.
_SPEC_JSON: dict[int, tuple[object, bytes]] = {}


def config_version(resources: Iterable[Resource]) -> str:
    ordered = sorted(resources, key=lambda r: (r.kind, r.namespace, r.name))
    used: dict[int, tuple[object, bytes]] = {}
    parts = []
    for r in ordered:
        key = id(r.spec)
        known = _SPEC_JSON.get(key)
        if known is None or known[0] is not r.spec:
            # str_keys: PeerAuthentication's portLevelMtls is keyed by port number.
            known = (r.spec, _encode(msgspec.to_builtins(r.spec, str_keys=True)))
        used[key] = known
        parts.append(b'{"kind":' + _encode(r.kind) + b',"name":' + _encode(r.name) + b',"namespace":'
                     + _encode(r.namespace) + b',"spec":' + known[1] + b"}")
    _SPEC_JSON.clear()   # keep only the specs of the latest config
    _SPEC_JSON.update(used)
    return hashlib.sha256(b"[" + b",".join(parts) + b"]").hexdigest()[:12]
