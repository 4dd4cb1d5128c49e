"""OTLP/HTTP span export off the event loop, with a bounded queue and counted drops.

Rules:
- `submit` runs on the event loop and only appends to a deque: when the queue holds
  `max_queue` spans the new span is dropped and counted, so a slow or dead collector
  costs the data path one length check and one integer increment, never a wait.
- One daemon thread per worker wakes every `interval` seconds (or as soon as a full
  batch is queued), turns up to `max_batch` SpanRecords into SDK ReadableSpans and hands
  them to opentelemetry-exporter-otlp-proto-http's OTLPSpanExporter (protobuf over HTTP,
  its own retries bounded by `timeout`). A failed batch counts one export error and its
  spans as dropped.
- Counters are plain ints, each written by one thread only (queue drops by the loop,
  export results by the export thread), read by admin as a sum.
- Failures are reported on stderr once, then at most once a minute, with the counts;
  the OpenTelemetry exporter's own per-retry log lines are silenced.
- `close` exports what is queued within a deadline, then abandons the rest (counted).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque

from remora.proxy import log_levels
from remora.proxy.telemetry.tracing import CLIENT, SpanRecord

MAX_QUEUE = 2048
MAX_BATCH = 512
INTERVAL = 1.0
EXPORT_TIMEOUT = 5.0
_REPORT_EVERY = 60.0


def _default_exporter(endpoint: str, timeout: float):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    logging.getLogger("opentelemetry.exporter").setLevel(logging.CRITICAL)
    return OTLPSpanExporter(endpoint=endpoint, timeout=timeout)


class SpanExporter:
    """Per-worker span queue and export thread (see the module rules)."""

    def __init__(self, endpoint: str, resource_attributes: dict, *, max_queue: int = MAX_QUEUE,
                 max_batch: int = MAX_BATCH, interval: float = INTERVAL,
                 timeout: float = EXPORT_TIMEOUT, exporter=None) -> None:
        self.endpoint = endpoint
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.interval = interval
        self.timeout = timeout
        self.exported = 0
        self.export_errors = 0
        self.dropped_queue_full = 0     # written by the event loop only
        self.dropped_failed = 0         # written by the export thread only
        self._resource_attributes = resource_attributes
        self._exporter = exporter
        self._queue: deque[SpanRecord] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._last_report = 0.0
        self._converter = None

    @property
    def dropped(self) -> int:
        return self.dropped_queue_full + self.dropped_failed

    # -- event loop side
    def submit(self, span: SpanRecord) -> None:
        queue = self._queue
        if len(queue) >= self.max_queue or self._stopping:
            self.dropped_queue_full += 1
            return
        queue.append(span)
        if len(queue) == self.max_batch:
            self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="remora-otlp", daemon=True)
            self._thread.start()

    def close(self, deadline_seconds: float = 2.0) -> None:
        """Flush what is queued within the deadline; spans left behind count as dropped."""
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(deadline_seconds)
            if thread.is_alive() and self._exporter is not None:
                self._exporter.shutdown()   # aborts the exporter's retry backoff
                thread.join(1.0)
        left = len(self._queue)
        self._queue.clear()
        self.dropped_queue_full += left

    # -- export thread
    def _run(self) -> None:
        try:
            if self._exporter is None:
                self._exporter = _default_exporter(self.endpoint, self.timeout)
            self._converter = _Converter(self._resource_attributes)
        except Exception as exc:   # a broken exporter install must not kill the worker
            self._report(f"cannot start the OTLP exporter: {exc!r}", force=True)
            return
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            stopping = self._stopping
            while self._queue:
                self._export_batch()
                if self._stopping and not stopping:
                    break   # close() was called mid-way: flush once more below
            if stopping:
                return

    def _export_batch(self) -> None:
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
        if not batch:
            return
        ok = False
        error = "the collector refused the batch or did not answer"
        try:
            from opentelemetry.sdk.trace.export import SpanExportResult
            ok = self._exporter.export(self._converter.convert(batch)) is SpanExportResult.SUCCESS
        except Exception as exc:
            error = repr(exc)
        if ok:
            self.exported += len(batch)
            return
        self.export_errors += 1
        self.dropped_failed += len(batch)
        self._report(f"span export to {self.endpoint} failed: {error}")

    def _report(self, message: str, force: bool = False) -> None:
        now = time.monotonic()
        if force or not self._last_report or now - self._last_report >= _REPORT_EVERY:
            self._last_report = now
            log_levels.logger("tracing").warning("%s (export errors %d, spans dropped %d)",
                                                 message, self.export_errors, self.dropped)


class _Converter:
    """SpanRecord -> opentelemetry.sdk ReadableSpan (in the export thread only)."""

    def __init__(self, resource_attributes: dict) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, TraceFlags, TraceState
        from opentelemetry.trace.status import Status, StatusCode

        self.ReadableSpan, self.SpanContext, self.TraceState = ReadableSpan, SpanContext, TraceState
        self.resource = Resource.create(resource_attributes)
        self.scope = InstrumentationScope("remora.proxy")
        self.kinds = {CLIENT: SpanKind.CLIENT}
        self.server = SpanKind.SERVER
        self.sampled = TraceFlags(TraceFlags.SAMPLED)
        self.error = Status(StatusCode.ERROR)
        self.unset = Status(StatusCode.UNSET)

    def _state(self, raw: bytes | None):
        if not raw:
            return None
        try:
            return self.TraceState.from_header([raw.decode("latin-1")])
        except Exception:
            return None

    def convert(self, batch: list[SpanRecord]) -> list:
        spans = []
        for rec in batch:
            state = self._state(rec.tracestate)
            context = self.SpanContext(rec.trace_id, rec.span_id, False, self.sampled, state)
            parent = (self.SpanContext(rec.trace_id, rec.parent_id, True, self.sampled, state)
                      if rec.parent_id else None)
            spans.append(self.ReadableSpan(
                name=rec.name, context=context, parent=parent, resource=self.resource,
                attributes=rec.attributes, kind=self.kinds.get(rec.kind, self.server),
                status=self.error if rec.error else self.unset,
                start_time=rec.start_ns, end_time=rec.end_ns, instrumentation_scope=self.scope))
        return spans
