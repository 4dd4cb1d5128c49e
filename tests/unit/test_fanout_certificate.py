"""--workers N readiness and the certificate: the supervisor holding an SVID is not enough, every
worker must have installed it (a worker without one would dial auto-mTLS endpoints in plaintext)."""
from __future__ import annotations

import asyncio
import json
import socket

from remora.certs.ca import CertificateAuthority
from remora.proxy.process.fanout import FanoutAdminSource
from tests.integration.mtls_peers import issue


class HeldCertificate:
    """The supervisor's certificate source, holding one SVID."""

    def __init__(self, svid, bundle) -> None:
        self.svid, self.trust_bundle, self.last_error = svid, bundle, None

    def current(self):
        return self.svid


async def fake_workers(answers: list[str | None]):
    """One channel per answer: the worker's end reads each request and replies with its answer
    (None: installed; a string: the worker's error). Returns (channels, the ops each saw, tasks)."""
    channels, seen, tasks = [], [], []
    for answer in answers:
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        their_reader, their_writer = await asyncio.open_connection(sock=theirs)
        ops: list[str] = []
        seen.append(ops)

        async def serve(r=their_reader, w=their_writer, ops=ops, answer=answer):
            while line := await r.readline():
                ops.append(json.loads(line)["op"])
                w.write(json.dumps(answer).encode() + b"\n")
                await w.drain()
        tasks.append(asyncio.create_task(serve()))
        channels.append((reader, writer, asyncio.Lock()))
    return channels, seen, tasks


async def close(channels, tasks) -> None:
    for _, writer, _ in channels:
        writer.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def svid_and_bundle(tmp_path):
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local")
    return issue(ca, "shop", "web"), ca.trust_bundle()


async def test_not_ready_until_every_worker_installed_the_certificate(tmp_path):
    """With the supervisor holding an SVID, /ready waits for the push to both workers to succeed."""
    svid, bundle = svid_and_bundle(tmp_path)
    channels, seen, tasks = await fake_workers([None, None])
    try:
        source = FanoutAdminSource(channels, asyncio.Event())
        source.ready = True
        source.certs = HeldCertificate(svid, bundle)
        assert not source.certificate_ready() and not source.is_ready()
        assert "waiting for the workload certificate" in source.not_ready_reason()
        await source.push_certificate(svid, bundle)
        assert seen == [["certs"], ["certs"]]
        assert source.certificate_ready() and source.is_ready()
    finally:
        await close(channels, tasks)


async def test_a_worker_refusing_the_certificate_keeps_the_sidecar_not_ready(tmp_path, caplog):
    """One worker answering an error leaves readiness off and logs the worker's error (`secret`)."""
    svid, bundle = svid_and_bundle(tmp_path)
    channels, _, tasks = await fake_workers([None, "worker 1: certificate not applied: bad key"])
    try:
        source = FanoutAdminSource(channels, asyncio.Event())
        source.ready = True
        source.certs = HeldCertificate(svid, bundle)
        await source.push_certificate(svid, bundle)
        assert not source.is_ready()
        assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
            ("remora.secret", "ERROR", "worker 1: certificate not applied: bad key")]
    finally:
        await close(channels, tasks)


async def test_without_a_certificate_source_readiness_does_not_wait():
    """No --token or --cert-dir: nothing to deliver, readiness is the workers' own."""
    channels, _, tasks = await fake_workers([None])
    try:
        source = FanoutAdminSource(channels, asyncio.Event())
        source.ready = True
        assert source.certificate_ready() and source.is_ready()
    finally:
        await close(channels, tasks)
