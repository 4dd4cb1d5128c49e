"""The benchmarks' gRPC upstream (nginx, h2c) is a server a real grpcio client accepts."""
from __future__ import annotations

import shutil

import pytest

from benchmarks.grpc_upstream import GRPC_REPLY, start_grpc_upstream
from benchmarks.procs import free_port
from benchmarks.tools import Pinning
from tests.integration import grpc_apps


def test_grpcio_client_gets_the_canned_reply_with_status_ok(tmp_path):
    """A unary call to the nginx gRPC upstream returns GRPC_REPLY and status OK (trailers)."""
    if not (shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")):
        pytest.skip("nginx-light not installed")
    port = free_port()
    child, _ = start_grpc_upstream(port, tmp_path / "up", Pinning(None, None, "none"))
    try:
        with grpc_apps.channel(port) as channel:
            call = grpc_apps.method(channel, "unary_unary", "Unary")
            reply, info = call.with_call(b"ping", timeout=5)
            assert reply == GRPC_REPLY
            assert info.code().name == "OK"
    finally:
        child.stop()
