"""The access log's writer: buffered lines that never stall or break the proxy.

- ``AccessLogWriter.log`` only appends to a list: the request path pays for formatting,
  never for I/O. Flushes happen when ~64 KiB are buffered, on a timer, or on close.
- Writing never blocks the event loop and never raises into the caller. Pipes and sockets
  are polled before each chunk; what does not fit stays queued (up to a cap, beyond which
  whole new lines are dropped), and a broken stream drops lines. ``dropped`` counts lines.
"""
from __future__ import annotations

import asyncio
import io
import os
import select
import stat
import sys
from collections.abc import Callable
from typing import Any, TextIO

from remora.proxy.telemetry.access_log import FORMATTERS, AccessLogRecord, format_envoy_default

FLUSH_BYTES = 64 * 1024
MAX_PENDING_BYTES = 1024 * 1024
_CHUNK = getattr(select, "PIPE_BUF", 512)  # a polled-writable pipe takes this much


class AccessLogWriter:
    """Buffers formatted lines and writes them out in batches; see the module rules."""

    def __init__(self, stream: TextIO | Any = None, fmt: str = "text", *,
                 flush_bytes: int = FLUSH_BYTES, max_pending_bytes: int = MAX_PENDING_BYTES):
        if fmt not in FORMATTERS and fmt != "off":
            raise ValueError(f"access log format must be text, json or off, not {fmt!r}")
        self.enabled = fmt != "off"
        self.format = fmt
        self.dropped = 0          # lines lost to a broken or persistently full stream
        self._format = FORMATTERS.get(fmt, format_envoy_default)
        self._stream = sys.stdout if stream is None else stream
        self._flush_bytes = flush_bytes
        self._max_pending = max_pending_bytes
        self._lines: list[str] = []
        self._size = 0
        self._pending = b""       # encoded bytes a full pipe did not take yet
        self._broken = False
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._fd, self._poll = self._probe(self._stream) if self.enabled else (None, None)

    @classmethod
    def disabled(cls) -> AccessLogWriter:
        """A writer whose log() does nothing; check ``.enabled`` to skip building records."""
        return cls(io.StringIO(), fmt="off")

    @staticmethod
    def _probe(stream: Any) -> tuple[int | None, Any]:
        """The fd to write to directly, and a poller when that fd can fill up."""
        try:
            fd = stream.fileno()
            mode = os.fstat(fd).st_mode
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            return None, None
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            return fd, poller
        return fd, None

    # -- hot path

    def log(self, rec: AccessLogRecord, fmt: Callable[[AccessLogRecord], str] | None = None) -> None:
        """Buffer one record, formatted with `fmt` (a listener's choice) or the writer's format."""
        if not self.enabled:
            return
        if self._broken:
            self.dropped += 1
            return
        line = (fmt or self._format)(rec)
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self._flush_bytes:
            self.flush()

    # -- output

    def flush(self) -> None:
        """Write what is buffered, as far as the stream takes it without blocking."""
        lines, self._lines, self._size = self._lines, [], 0
        if self._broken:
            self.dropped += len(lines)
            return
        try:
            if self._fd is None:
                self._write_stream(lines)
            else:
                self._write_fd(lines)
        except Exception:  # a log sink must never take the proxy down
            self._broken = True
            self.dropped += len(lines)

    def _write_stream(self, lines: list[str]) -> None:
        if not lines:
            return
        text = "".join(lines)
        try:
            if isinstance(self._stream, io.TextIOBase) or hasattr(self._stream, "encoding"):
                self._stream.write(text)
            else:
                self._stream.write(text.encode("utf-8", "backslashreplace"))
            self._stream.flush()
        except (BlockingIOError, InterruptedError):
            self.dropped += len(lines)   # no way to know how much went out; count it lost
        except (OSError, ValueError):
            self._broken = True
            self.dropped += len(lines)

    def _write_fd(self, lines: list[str]) -> None:
        if lines:
            if len(self._pending) > self._max_pending:
                self.dropped += len(lines)   # reader stuck: keep what's queued, drop new
            else:
                self._pending += "".join(lines).encode("utf-8", "backslashreplace")
        data = memoryview(self._pending)
        sent = 0
        try:
            while sent < len(data):
                if self._poll is not None:
                    if not self._poll.poll(0):
                        break
                    n = os.write(self._fd, data[sent:sent + _CHUNK])
                else:
                    n = os.write(self._fd, data[sent:])
                sent += n
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # EPIPE, EBADF, ...
            self._broken = True
            self.dropped += self._pending.count(b"\n", sent)
            data.release()
            self._pending = b""
            return
        data.release()
        self._pending = self._pending[sent:]

    @property
    def pending_bytes(self) -> int:
        """Bytes written by flush() that the stream has not accepted yet."""
        return len(self._pending)

    # -- lifecycle

    def start(self, loop: asyncio.AbstractEventLoop | None = None, interval: float = 0.1) -> None:
        """Flush every ``interval`` seconds on ``loop`` until close()."""
        if not self.enabled or self._closed:
            return
        loop = loop or asyncio.get_running_loop()

        def tick() -> None:
            if self._closed:
                return
            if self._lines or self._pending:
                self.flush()
            self._timer = loop.call_later(interval, tick)

        self._timer = loop.call_later(interval, tick)

    def close(self) -> None:
        """Stop the timer and flush what is left (as far as the stream takes it)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.enabled:
            self.flush()
