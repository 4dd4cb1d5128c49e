"""A worker process's end of its socketpair with the supervisor (`--workers N`, run.py).

The supervisor (fanout.py) asks, the worker answers: one JSON line each way, in order, one
question at a time. Every op is answered, an unknown one with null, so the supervisor's
reader never falls out of step; a worker that fails an op answers its error as text, naming
itself, and goes on serving (the supervisor NACKs the push or logs the certificate error).
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from remora.config.loader import build_mesh_config
from remora.proxy import log_levels
from remora.proxy.control import xds_client
from remora.proxy.process.worker import Worker

# One line on the parent/child socketpair carries a whole pushed config ("apply").
CHANNEL_LINE_LIMIT = 2 * xds_client.MAX_FRAME_BYTES


def certificate_installer(worker: Worker) -> Callable[[Any, Any], None]:
    """A subscriber feeding the worker's MeshTls and the certificate-expiry gauge."""
    def install(svid, bundle) -> None:
        worker.tls.update(svid, bundle)
        if worker.istio is not None:
            worker.istio.certificate_expiry = svid.not_after.timestamp()
    return install


async def apply_documents(worker: Worker, documents: list) -> str | None:
    """"apply": build the documents the parent accepted and swap them in (built in a thread:
    this worker's listeners keep serving meanwhile)."""
    try:
        config = await asyncio.to_thread(
            build_mesh_config, [(doc, source) for doc, source in documents], False)
        worker.apply(config)
    except Exception as error:   # answered to the parent, which NACKs; the worker goes on
        return f"worker {worker.worker_id}: {error}"
    return None


def apply_certificate(worker: Worker, message: dict) -> str | None:
    """"certs": install the SVID the supervisor holds (None, or the error)."""
    from remora.proxy.security.cert_source import svid_from_message   # cryptography: only with certificates
    try:
        certificate_installer(worker)(*svid_from_message(message))
    except Exception as error:   # answered to the parent, which logs it; the old certificate stays
        return f"worker {worker.worker_id}: certificate not applied: {error}"
    return None


def _drain(worker: Worker, request: dict) -> bool:
    worker.stop_accepting()
    return True


def _set_log_levels(worker: Worker, request: dict) -> bool:
    log_levels.apply_levels(request["levels"])
    return True


def _serving_serial(worker: Worker, request: dict) -> str | None:
    return None if worker.tls.svid is None else format(worker.tls.svid.serial, "x")


# op -> its answer (plain functions; "apply" is the one that waits)
_OPS: dict[str, Callable[[Worker, dict], Any]] = {
    "ready": lambda worker, request: worker.ready and not worker.draining,
    "stats": lambda worker, request: worker.stats(),
    "istio": lambda worker, request: worker.istio.export() if worker.istio is not None else None,
    "certs": apply_certificate,
    "serving_serial": _serving_serial,
    "clusters": lambda worker, request: worker.clusters(),
    "listeners": lambda worker, request: worker.listener_addresses(),
    "config_dump": lambda worker, request: worker.config_dump(),
    "drain": _drain,
    "logging": _set_log_levels,
}
_ASYNC_OPS: dict[str, Callable[[Worker, dict], Awaitable[Any]]] = {
    "apply": lambda worker, request: apply_documents(worker, request["documents"]),
}


async def answer_parent(worker: Worker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer the supervisor's questions until it closes the channel."""
    while not reader.at_eof():
        line = await reader.readline()
        if not line:
            break
        request = json.loads(line)
        op = request["op"]
        if op in _ASYNC_OPS:
            answer = await _ASYNC_OPS[op](worker, request)
        else:
            handler = _OPS.get(op)
            answer = handler(worker, request) if handler is not None else None
        writer.write(json.dumps(answer).encode() + b"\n")
        await writer.drain()
