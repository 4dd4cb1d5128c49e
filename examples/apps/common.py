"""What the three demo apps share: flags, header propagation and the mesh-bound client.

Every call to another service goes to the sidecar's outbound listener as an absolute-form
proxy request (`GET http://reviews:9080/reviews/0`), so the app never resolves or dials a
peer itself: the sidecar picks the version and the endpoint. That is the whole point of
the demo, so there is deliberately no "call it directly" fallback.
"""
from __future__ import annotations

import argparse
import os

import aiohttp
from aiohttp import web

# Headers an app copies from its inbound request onto its outbound calls, as bookinfo
# does: `end-user` so the header route in mesh.yaml sees it one hop later, the tracing
# headers so a proxy that traces can join the spans into one trace.
PROPAGATED_HEADERS = (
    "end-user",
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
)

# One timeout for the whole call; short so a broken hop shows up as an error in the demo's
# live line within a tick instead of stalling it.
CALL_TIMEOUT = aiohttp.ClientTimeout(total=3)

SESSION = web.AppKey("session", aiohttp.ClientSession)
OUTBOUND = web.AppKey("outbound", str)


def parse_args(description: str, *, needs_outbound: bool, extra=None) -> argparse.Namespace:
    """Parse `--port` and `--outbound` (default: $REMORA_OUTBOUND) plus app-specific flags."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True, help="port to listen on (127.0.0.1)")
    parser.add_argument(
        "--outbound",
        default=os.environ.get("REMORA_OUTBOUND", ""),
        help="sidecar outbound listener as a proxy URL, e.g. http://127.0.0.1:15001 "
        "(default: $REMORA_OUTBOUND)",
    )
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    if needs_outbound and not args.outbound:
        parser.error("--outbound (or REMORA_OUTBOUND) is required: calls go through the sidecar")
    return args


def propagated(request: web.Request) -> dict[str, str]:
    """The subset of the inbound request's headers that must follow the call downstream."""
    return {name: request.headers[name] for name in PROPAGATED_HEADERS if name in request.headers}


async def mesh_get(app: web.Application, url: str, headers: dict[str, str]) -> dict:
    """GET `url` through the sidecar and return its JSON; raise on any non-200 answer."""
    async with app[SESSION].get(url, proxy=app[OUTBOUND], headers=headers) as resp:
        if resp.status != 200:
            body = (await resp.text())[:200]
            raise RuntimeError(f"{url} answered {resp.status}: {body.strip()}")
        return await resp.json()


def make_app(outbound: str) -> web.Application:
    """An aiohttp app with /healthz and, when `outbound` is set, a client session for it."""
    app = web.Application()
    app[OUTBOUND] = outbound

    async def client_session(app: web.Application):
        # trust_env=False: an http_proxy in the developer's shell must not reroute calls
        # that are meant for the sidecar.
        async with aiohttp.ClientSession(timeout=CALL_TIMEOUT, trust_env=False) as session:
            app[SESSION] = session
            yield

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    if outbound:
        app.cleanup_ctx.append(client_session)
    app.router.add_get("/healthz", healthz)
    return app


def run(app: web.Application, port: int) -> None:
    """Serve on 127.0.0.1 until SIGINT/SIGTERM; aiohttp turns both into a clean exit."""
    # No per-request access log here: the sidecars log every request already, and the
    # demo keeps the app logs for startup errors.
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
