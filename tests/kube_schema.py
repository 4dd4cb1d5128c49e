"""Kubernetes objects checked against the `kubernetes` client's OpenAPI models.

Two checks, both needed: a walk over the model's attribute_map / openapi_types that
rejects unknown fields and wrong types (the client itself ignores unknown keys), and the
client's own deserialisation with client-side validation (required fields, enums).
"""
from __future__ import annotations

import pytest

k8s = pytest.importorskip("kubernetes.client", reason="the `kubernetes` package (test extra) is not installed")

_SCALARS = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str, "date": str,
            "bytes": str}   # base64 text in YAML (caBundle)


def model_name(api_version: str, kind: str) -> str:
    """apps/v1 + Deployment -> V1Deployment (the client's naming of core and group kinds)."""
    return api_version.rsplit("/", 1)[-1].capitalize() + kind


def problems(obj: dict) -> list[str]:
    """Every reason the object is not valid for its kind; [] when it is."""
    if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
        return ["not an object with apiVersion and kind"]
    if obj["kind"] == "List":
        return [f"items[{i}]: {p}" for i, item in enumerate(obj.get("items") or []) for p in problems(item)]
    name = model_name(obj["apiVersion"], obj["kind"])
    if getattr(k8s, name, None) is None:
        return [f"no model {name} for {obj['apiVersion']} {obj['kind']}"]
    found: list[str] = []
    _walk(obj, name, "", found)
    if not found:
        try:
            k8s.ApiClient()._ApiClient__deserialize(obj, name)
        except (ValueError, TypeError) as err:
            found.append(f"{name}: {err}")
    return found


def _walk(value, type_name: str, path: str, found: list[str]) -> None:
    if value is None:
        return
    for prefix in ("list[", "List["):
        if type_name.startswith(prefix):
            if not isinstance(value, list):
                found.append(f"{path}: expected a list")
                return
            for i, item in enumerate(value):
                _walk(item, type_name[len(prefix):-1], f"{path}[{i}]", found)
            return
    for prefix in ("dict(str, ", "Dict[str, "):
        if type_name.startswith(prefix):
            if not isinstance(value, dict):
                found.append(f"{path}: expected a mapping")
                return
            for key, item in value.items():
                _walk(item, type_name[len(prefix):-1], f"{path}.{key}", found)
            return
    if type_name == "object":
        return
    if type_name in _SCALARS:
        if not isinstance(value, _SCALARS[type_name]) or (type_name != "bool" and isinstance(value, bool)):
            found.append(f"{path}: expected {type_name}, got {type(value).__name__} {value!r}")
        return
    model = getattr(k8s, type_name)
    if not isinstance(value, dict):
        found.append(f"{path}: expected a {type_name} mapping")
        return
    attributes = {json_name: attr for attr, json_name in model.attribute_map.items()}
    for key, item in value.items():
        if key not in attributes:
            found.append(f"{path}.{key}: unknown field of {type_name}")
            continue
        _walk(item, model.openapi_types[attributes[key]], f"{path}.{key}" if path else key, found)
