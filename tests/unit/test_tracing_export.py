"""Span export bookkeeping (remora.proxy.telemetry.otlp) and telemetry settings applied on reload."""
from __future__ import annotations

import threading
import time

from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind

from remora.config.loader import load_mesh_text
from remora.proxy.security.identity import WorkloadIdentity
from remora.proxy.telemetry.otlp import SpanExporter
from remora.proxy.telemetry.access_log import format_json
from remora.proxy.telemetry.tracing import CLIENT, SpanRecord, begin
from remora.proxy.process.worker import ProxyOptions, Worker

MESH = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: upstream}
spec:
  hosts: [upstream]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 9}}]
"""


class FakeExporter:
    """Records batches; can block (a slow collector) or fail (a dead one)."""

    def __init__(self, result=SpanExportResult.SUCCESS) -> None:
        self.result = result
        self.batches: list = []
        self.gate = threading.Event()
        self.gate.set()
        self.shut = False

    def export(self, spans):
        self.gate.wait(10)
        self.batches.append(list(spans))
        return SpanExportResult.FAILURE if self.shut else self.result

    def shutdown(self):
        self.shut = True
        self.gate.set()


def record(i: int = 0) -> SpanRecord:
    ctx = begin(None, 1.0)
    return SpanRecord(f"span-{i}", CLIENT, ctx, 1_000, 2_000, {"i": i}, False)


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_spans_are_batched_and_converted():
    """Queued records become SDK ReadableSpans with their ids, kind, parent and times."""
    fake = FakeExporter()
    exp = SpanExporter("http://127.0.0.1:1/v1/traces", {"service.name": "t"}, interval=0.05, exporter=fake)
    exp.start()
    rec = record()
    exp.submit(rec)
    assert wait_until(lambda: exp.exported == 1)
    span = fake.batches[0][0]
    assert span.context.trace_id == rec.trace_id and span.context.span_id == rec.span_id
    assert span.parent is None and span.kind is SpanKind.CLIENT
    assert (span.start_time, span.end_time) == (1_000, 2_000)
    assert span.resource.attributes["service.name"] == "t"
    exp.close()


def test_full_queue_drops_and_counts_without_waiting():
    """A collector that does not answer fills the bounded queue; new spans are dropped and
    counted, and submit does not wait for the stuck export."""
    fake = FakeExporter()
    fake.gate.clear()                      # the first export hangs
    exp = SpanExporter("http://x", {}, max_queue=10, max_batch=5, interval=0.01, exporter=fake)
    exp.start()
    for i in range(5):
        exp.submit(record(i))
    assert wait_until(lambda: len(exp._queue) == 0)   # the thread took a batch and is stuck
    start = time.perf_counter()
    for i in range(100):
        exp.submit(record(i))
    assert time.perf_counter() - start < 1.0
    assert exp.dropped == 90 and exp.exported == 0
    exp.close(deadline_seconds=0.5)        # gives up on the stuck export, counts what is left
    assert fake.shut and exp.dropped >= 100


def test_failed_export_counts_an_error_and_drops_the_batch():
    """An export that fails adds one export error and counts its spans as dropped."""
    exp = SpanExporter("http://x", {}, interval=0.01, exporter=FakeExporter(SpanExportResult.FAILURE))
    exp.start()
    for i in range(3):
        exp.submit(record(i))
    assert wait_until(lambda: exp.export_errors == 1)
    assert exp.dropped == 3 and exp.exported == 0
    exp.close()


def test_close_flushes_what_is_queued():
    """Spans queued when the worker stops are exported before the thread ends."""
    fake = FakeExporter()
    exp = SpanExporter("http://x", {}, interval=60, exporter=fake)
    exp.start()
    for i in range(7):
        exp.submit(record(i))
    exp.close()
    assert exp.exported == 7 and sum(len(b) for b in fake.batches) == 7


def test_access_record_carries_the_trace():
    """The JSON access-log line of an exchange has its trace id and the proxy's span id."""
    ctx = begin([(b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")], 0.0)
    from remora.proxy.telemetry.access_log import AccessLogRecord
    line = format_json(AccessLogRecord(trace_id=ctx.trace_hex, span_id=ctx.span_hex))
    assert '"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"' in line
    assert f'"span_id":"{ctx.span_hex}"' in line


async def test_worker_apply_reconfigures_listeners_without_restart():
    """A new config with a Telemetry resource changes logging and sampling of the running
    listeners; removing it brings the flags' defaults back."""
    options = ProxyOptions(inbound_port=15999, app_port=15998, trace_sampling=1.0,
                           identity=WorkloadIdentity(namespace="shop", labels={"app": "reviews"}))
    worker = Worker(options, load_mesh_text(MESH))
    outbound, inbound = worker.listeners
    assert outbound.log_format is not None and outbound.sample_ratio == 0.01
    worker.apply(load_mesh_text(MESH + """---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: reviews, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  accessLogging: [{match: {mode: CLIENT}, disabled: true}]
  tracing: [{randomSamplingPercentage: 100}]
"""))
    assert outbound.log_format is None and inbound.log_format is not None
    assert outbound.sample_ratio == inbound.sample_ratio == 1.0
    worker.apply(load_mesh_text(MESH))
    assert outbound.log_format is not None and outbound.sample_ratio == 0.01
