"""The read side of the resource API: `GET /v1/resources` and `GET /v1/resources/{kind}/{namespace}/{name}`
(what `remora get` calls); apply and delete stay with the server, which commits them.
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

from remora.config import yaml_text
from remora.config.model import Resource
from remora.config.object_names import identity_problems, label_problem, shown_ref
from remora.xds.kinds import UnknownKind, resolve_kind
from remora.xds.store import ConfigStore


class BadIdentity(ValueError):
    """A namespace or name in a request path that no resource can have (Kubernetes' name rules)."""


def resource_ref(request: web.Request) -> str:
    """Kind/namespace/name from the path; UnknownKind, or BadIdentity for a name Kubernetes refuses."""
    kind = resolve_kind(request.match_info["kind"])
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    problems = identity_problems(namespace, name)
    if problems:
        raise BadIdentity(f"{shown_ref(kind, namespace, name)}: "
                          + "; ".join(f"{path}: {message}" for path, message in problems))
    return f"{kind}/{namespace}/{name}"

def _item(store: ConfigStore, resource: Resource) -> dict:
    return {"kind": resource.kind, "namespace": resource.namespace, "name": resource.name,
            "origin": store.origin(resource.ref), "source": resource.source,
            "overrides": store.overrides(resource.ref), "document": resource.document()}

async def _list(store: ConfigStore, request: web.Request) -> web.Response:
    try:
        kind = resolve_kind(request.query["kind"]) if request.query.get("kind") else None
    except UnknownKind as error:
        return _error(400, str(error))
    namespace = request.query.get("namespace")
    if namespace is not None and (problem := label_problem(namespace)) is not None:
        return _error(400, f"namespace: metadata.namespace: {problem}")
    items = [_item(store, r) for r in store.resources()
             if (kind is None or r.kind == kind) and (namespace is None or r.namespace == namespace)]
    return web.json_response({"version": store.config.version, "items": items})

async def _get(store: ConfigStore, request: web.Request) -> web.Response:
    try:
        ref = resource_ref(request)
    except (UnknownKind, BadIdentity) as error:
        return _error(400, str(error))
    resource = store.lookup(ref)
    if resource is None:
        return _error(404, f"{ref} not found")
    document = resource.document()
    document["metadata"]["annotations"] = {"remora.io/origin": store.origin(ref),
                                           "remora.io/source": resource.source}
    if (overridden := store.overrides(ref)) is not None:   # the file version it is in force over
        document["metadata"]["annotations"]["remora.io/overrides"] = overridden
    wants_yaml = (request.query.get("format") == "yaml"
                  or "yaml" in request.headers.get("Accept", "") and request.query.get("format") != "json")
    if wants_yaml:
        return web.Response(text=yaml_text.dump(document), content_type="application/yaml")
    return web.json_response(document)


def error_response(status: int, message: str, errors: list[str] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if errors:
        body["errors"] = errors
    return web.json_response(body, status=status)


_error = error_response


def add_resource_routes(router: web.UrlDispatcher, store: ConfigStore) -> None:
    async def list_resources(request: web.Request) -> web.Response:
        return await _list(store, request)

    async def get_resource(request: web.Request) -> web.Response:
        return await _get(store, request)

    router.add_get("/v1/resources", list_resources)
    router.add_get("/v1/resources/{kind}/{namespace}/{name}", get_resource)
