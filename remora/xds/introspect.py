"""`GET /v1/sidecars/{node}/config_dump`: a sidecar's admin views, asked over its stream.

`remora proxy-config` needs what a sidecar's admin server shows (its config and clusters).
The admin server listens on the sidecar's loopback (in a pod, a compose namespace, or on a
host), out of the operator's reach; the control server already holds a stream to every
sidecar, so it asks there (protocol.ConfigDumpRequest) and relays the answer. The route is
an admin route: the admin token is required, like every operator endpoint.

Answers: 200 {"node", "documents": {path: JSON}}; 404 no such connected sidecar; 501 a
sidecar too old to answer; 504 no answer in time; 502 the sidecar failed to read its admin.
"""
from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from remora.wire import protocol
from remora.xds.stream import ConfigDumpFailed, StreamSession

ROUTE = "/v1/sidecars/{node}/config_dump"


def add_routes(router: web.UrlDispatcher, sessions: Mapping[str, StreamSession]) -> None:
    async def config_dump(request: web.Request) -> web.Response:
        node_id = request.match_info["node"]
        session = sessions.get(node_id)
        if session is None:
            return web.json_response({"error": f"no connected sidecar {node_id!r}"}, status=404)
        if protocol.CONFIG_DUMP not in session.node.capabilities:
            return web.json_response({"error": f"sidecar {node_id} (remora {session.node.remora_version or 'unknown'}) "
                                               "cannot send its config over the stream; upgrade it, or read "
                                               f"its admin server at {session.node.admin}"}, status=501)
        try:
            documents = await session.config_dump(list(protocol.INTROSPECTION_PATHS))
        except ConfigDumpFailed as error:
            status = 504 if "did not answer" in str(error) else 502
            return web.json_response({"error": str(error)}, status=status)
        return web.json_response({"node": node_id, "documents": documents})

    router.add_get(ROUTE, config_dump)
