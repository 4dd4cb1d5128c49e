"""A tiny OTLP/HTTP trace receiver on loopback: decodes ExportTraceServiceRequest bodies."""
from __future__ import annotations

import asyncio
import time

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.integration.upstreams import LoopThread, free_port

KINDS = {Span.SPAN_KIND_CLIENT: "client", Span.SPAN_KIND_SERVER: "server"}


def _value(any_value):
    field = any_value.WhichOneof("value")
    return getattr(any_value, field) if field else None


class ReceivedSpan:
    """One decoded span: ids as hex, kind as "client"/"server", attributes as a dict."""

    def __init__(self, span, resource: dict) -> None:
        self.name = span.name
        self.kind = KINDS.get(span.kind, str(span.kind))
        self.trace_id = span.trace_id.hex()
        self.span_id = span.span_id.hex()
        self.parent_id = span.parent_span_id.hex()
        self.attributes = {a.key: _value(a.value) for a in span.attributes}
        self.resource = resource
        self.status_code = span.status.code
        self.duration_ns = span.end_time_unix_nano - span.start_time_unix_nano


class Collector(LoopThread):
    """Runs an aiohttp OTLP receiver on its own loop thread; `spans` fills as batches arrive."""

    name = "collector"

    def __init__(self) -> None:
        super().__init__()
        self.port = free_port()
        self.spans: list[ReceivedSpan] = []
        self.requests = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    async def _start(self) -> None:
        async def traces(request: web.Request) -> web.Response:
            body = ExportTraceServiceRequest.FromString(await request.read())
            self.requests += 1
            for rs in body.resource_spans:
                resource = {a.key: _value(a.value) for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    self.spans.extend(ReceivedSpan(s, resource) for s in ss.spans)
            return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                                content_type="application/x-protobuf")

        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/traces", traces)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def wait_for(self, predicate, count: int = 1, timeout: float = 30.0) -> list[ReceivedSpan]:
        """Poll until `count` spans match `predicate`; return those found by then."""
        deadline = time.time() + timeout
        while True:
            found = [s for s in list(self.spans) if predicate(s)]
            if len(found) >= count or time.time() > deadline:
                return found
            time.sleep(0.1)

    def stop(self) -> None:
        async def shutdown() -> None:
            await self.runner.cleanup()
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop)
        self._thread.join(10)
