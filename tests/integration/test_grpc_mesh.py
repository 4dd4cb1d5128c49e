"""gRPC through the mesh end to end: a grpcio client and server that know nothing of Remora,
through two sidecars with mutual TLS (HTTP/2 on every hop: the port is declared GRPC).

The topology is the benchmarks' 2-hop mesh (benchmarks/mesh.py, grpc=True): sidecar A's
outbound listener -> mTLS -> sidecar B's inbound listener (PeerAuthentication STRICT) ->
the grpcio server, with certificates from an in-process CA (sa/client, sa/server).
"""
from __future__ import annotations

import json
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import grpc
import pytest

from benchmarks.certs import issue_cert_dirs
from benchmarks.mesh import (CLIENT_ACCOUNT, MESH_NAMESPACE, SERVER_ACCOUNT, SERVER_HOST,
                             SERVER_LABELS, two_hop_yaml)
from tests.integration import grpc_apps
from tests.integration.proxy_process import ProxyProcess
from tests.integration.upstreams import free_port

pytestmark = pytest.mark.integration

SILENT = """
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: silent, namespace: bench}
spec:
  hosts: [silent.bench.svc.cluster.local]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 80, name: grpc, protocol: GRPC}]
  endpoints: [{address: 127.0.0.1, ports: {grpc: %d}}]
"""
# Two endpoints behind one gRPC service, one of which answers every call UNAVAILABLE; the
# route retries on `unavailable` (the retry shape of Istio's samples, on a gRPC condition).
FLAKY = """
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: flaky, namespace: bench}
spec:
  hosts: [flaky.bench.svc.cluster.local]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 80, name: grpc, protocol: GRPC}]
  endpoints:
  - {address: 127.0.0.1, ports: {grpc: %d}}
  - {address: 127.0.0.2, ports: {grpc: %d}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaky, namespace: bench}
spec:
  hosts: [flaky.bench.svc.cluster.local]
  http:
  - route: [{destination: {host: flaky.bench.svc.cluster.local}}]
    retries: {attempts: 3, retryOn: unavailable}
"""
# Sidecar B lets only the test.Echo service's methods in (a gRPC method path is the HTTP path).
ECHO_ONLY = """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-only, namespace: bench}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/bench/sa/client]}}]
    to: [{operation: {paths: ["/test.Echo/*"]}}]
"""
FAULTS = ECHO_ONLY + """
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: faulty, namespace: bench}
spec:
  hosts: [faulty.bench.svc.cluster.local]
  http:
  - fault: {abort: {grpcStatus: RESOURCE_EXHAUSTED, percentage: {value: 100}}}
    route: [{destination: {host: server.bench.svc.cluster.local}}]
"""


class GrpcMesh:
    """The grpcio server, sidecar B in front of it, sidecar A for the client."""

    def __init__(self, extra_yaml: str = "") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="remora-grpc-"))
        # A server that accepts connections (the kernel does) and never answers a byte.
        self.silent = socket.socket()
        self.silent.bind(("127.0.0.1", 0))
        self.silent.listen(16)
        extra_yaml += SILENT % self.silent.getsockname()[1]
        self.server = grpc_apps.EchoServer().__enter__()
        self.down = grpc_apps.EchoServer(unavailable=True, workers=4)
        self.down.port = self.down.server.add_insecure_port("127.0.0.2:0")
        self.down.__enter__()
        extra_yaml += FLAKY % (self.server.port, self.down.port)
        self.sidecars: list[ProxyProcess] = []
        try:
            certs = issue_cert_dirs(self.dir, MESH_NAMESPACE, [CLIENT_ACCOUNT, SERVER_ACCOUNT])
            inbound = free_port()
            mesh = two_hop_yaml(inbound, grpc=True) + extra_yaml
            labels = ",".join(f"{k}={v}" for k, v in SERVER_LABELS.items())
            self.b = ProxyProcess(mesh, "--cert-dir", str(certs[SERVER_ACCOUNT]), "--namespace",
                                  MESH_NAMESPACE, "--service-account", SERVER_ACCOUNT,
                                  "--service", "server", "--labels", labels,
                                  inbound_app_port=self.server.port, inbound_port=inbound)
            self.sidecars.append(self.b)
            self.a = ProxyProcess(mesh, "--cert-dir", str(certs[CLIENT_ACCOUNT]), "--namespace",
                                  MESH_NAMESPACE, "--service-account", CLIENT_ACCOUNT,
                                  "--access-log-format", "json")
            self.sidecars.append(self.a)
            for sidecar in self.sidecars:
                sidecar.wait_ready(40)
            self.channel = grpc_apps.channel(self.a.outbound_port, SERVER_HOST)
        except BaseException:
            self.close()
            raise

    def call(self, kind: str, name: str):
        return grpc_apps.method(self.channel, kind, name)

    def close(self) -> None:
        if hasattr(self, "channel"):
            self.channel.close()
        for sidecar in reversed(self.sidecars):
            sidecar.close()
        self.server.__exit__(None)
        self.down.__exit__(None)
        self.silent.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def mesh():
    m = GrpcMesh(FAULTS)
    yield m
    m.close()


def test_unary_call_crosses_both_sidecars_with_metadata_and_trailers(mesh):
    """A unary call returns its answer, request metadata reaches the app, trailing metadata comes back."""
    call = mesh.call("unary_unary", "Unary")
    reply, info = call.with_call(b"meta", metadata=(("x-user", "alice"),), timeout=10)
    assert b"x-user=alice" in reply
    trailers = dict(info.trailing_metadata())
    assert trailers["x-trailer"] == "t1"
    assert trailers["x-trailer-bin"] == b"\x00\x01"
    assert info.code() is grpc.StatusCode.OK


def test_server_stream_of_ten_thousand_messages_arrives_whole(mesh):
    """A server stream of 10,000 messages arrives complete and in order of count."""
    call = mesh.call("unary_stream", "ServerStream")
    messages = list(call(b"10000:64", timeout=60))
    assert len(messages) == 10000
    assert all(m == b"m" * 64 for m in messages)


def test_client_stream_and_bidi_stream(mesh):
    """Client streaming counts every message; bidi echoes each one as it comes."""
    upload = mesh.call("stream_unary", "ClientStream")
    assert upload(iter([b"x" * 1000] * 500), timeout=30) == b"count=500 bytes=500000"
    bidi = mesh.call("stream_stream", "Bidi")
    sent = [b"msg-%d" % i for i in range(200)]
    assert list(bidi(iter(sent), timeout=30)) == sent


def test_error_status_and_message_pass_through(mesh):
    """An app's UNAVAILABLE (after retries) reaches the client with its message."""
    call = mesh.call("unary_unary", "Unary")
    with pytest.raises(grpc.RpcError) as err:
        call(b"fail:PERMISSION_DENIED", timeout=10)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "PERMISSION_DENIED" in err.value.details()


def test_deadline_exceeded_and_the_server_sees_the_cancel(mesh):
    """A call past its deadline fails DEADLINE_EXCEEDED and the app's handler sees it cancelled."""
    mesh.server.cancel_seen.clear()
    call = mesh.call("unary_unary", "Unary")
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        call(b"sleep:5", timeout=0.5)
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 4
    assert mesh.server.cancel_seen.wait(5), "the server never saw the call cancelled"


def test_client_cancel_reaches_the_server(mesh):
    """A client cancelling a server stream mid-way is a cancelled call at the app."""
    mesh.server.cancel_seen.clear()
    call = mesh.call("unary_stream", "ServerStream")
    stream = call(b"1000000:1024", timeout=60)
    next(stream)
    stream.cancel()
    assert mesh.server.cancel_seen.wait(10), "the server never saw the cancel"


def test_fault_abort_answers_with_the_configured_grpc_status(mesh):
    """VirtualService abort.grpcStatus answers RESOURCE_EXHAUSTED without reaching the app."""
    channel = grpc_apps.channel(mesh.a.outbound_port, "faulty.bench.svc.cluster.local")
    try:
        before = mesh.server.calls.get("Unary", 0)
        with pytest.raises(grpc.RpcError) as err:
            grpc_apps.method(channel, "unary_unary", "Unary")(b"hello", timeout=10)
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert mesh.server.calls.get("Unary", 0) == before
    finally:
        channel.close()


def test_access_log_names_the_grpc_status(mesh):
    """Sidecar A's JSON access log carries each call's gRPC status (Envoy's %GRPC_STATUS%)."""
    with pytest.raises(grpc.RpcError):
        mesh.call("unary_unary", "Unary")(b"fail:NOT_FOUND", timeout=10)
    logged = json.loads(mesh.a.access_log().splitlines()[-1])
    assert logged["path"] == "/test.Echo/Unary" and logged["grpc_status"] == "NotFound", logged
    assert logged["response_code"] == 200


def test_retries_hide_an_endpoint_that_answers_unavailable(mesh):
    """retryOn `unavailable`: every call succeeds although one of the two endpoints answers
    each call UNAVAILABLE (trailers-only, HTTP 200); the sidecar counts the retries."""
    channel = grpc_apps.channel(mesh.a.outbound_port, "flaky.bench.svc.cluster.local")
    try:
        call = grpc_apps.method(channel, "unary_unary", "Unary")
        assert [call(b"r%d" % i, timeout=10) for i in range(20)] == [b"r%d" % i for i in range(20)]
    finally:
        channel.close()
    assert mesh.down.calls.get("Unary", 0) > 0, "the failing endpoint was never tried"
    stats = mesh.a.admin_get("/stats")
    retried = [l for l in stats.splitlines() if "flaky" in l and l.split(":")[0].endswith(".upstream_rq_retry")]
    assert retried and int(retried[0].rsplit(":", 1)[1]) >= mesh.down.calls["Unary"], retried


def test_authorization_policy_on_grpc_method_paths(mesh):
    """An ALLOW policy on `/test.Echo/*` lets the service's methods in and answers any other
    method PERMISSION_DENIED from the sidecar (the app would have said UNIMPLEMENTED)."""
    assert mesh.call("unary_unary", "Unary")(b"allowed", timeout=10) == b"allowed"
    other = mesh.channel.unary_unary("/other.Service/Unary", request_serializer=None,
                                     response_deserializer=None)
    with pytest.raises(grpc.RpcError) as err:
        other(b"hello", timeout=10)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED, err.value
    assert "RBAC" in err.value.details()
    denied = mesh.b.access_log().splitlines()[-1]
    assert "/other.Service/Unary" in denied and " RBAC " in denied, denied


def test_concurrent_calls_share_connections(mesh):
    """Fifty concurrent calls all succeed (streams multiplexed on the mesh connection)."""
    call = mesh.call("unary_unary", "Unary")
    results: list = []

    def one(i: int) -> None:
        results.append(call(b"c%d" % i, timeout=20))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == sorted(b"c%d" % i for i in range(50))


def test_istio_metrics_label_grpc(mesh):
    """istio_requests_total carries request_protocol grpc and the grpc_response_status."""
    mesh.call("unary_unary", "Unary")(b"metrics", timeout=10)
    stats = mesh.a.admin_get("/stats/prometheus")
    lines = [l for l in stats.splitlines() if l.startswith("istio_requests_total{")]
    assert any('request_protocol="grpc"' in l and 'grpc_response_status="0"' in l for l in lines), lines
    # the answering sidecar's metadata came back over HTTP/2 (and was not forwarded to the app)
    assert any('destination_workload_namespace="bench"' in l and 'destination_app="server"' in l
               for l in lines), lines


def _messages(sidecar) -> tuple[float, float]:
    """Sums of istio_request_messages_total and istio_response_messages_total on a sidecar."""
    sums = {"istio_request_messages_total": 0.0, "istio_response_messages_total": 0.0}
    for line in sidecar.admin_get("/stats/prometheus").splitlines():
        name = line.split("{", 1)[0]
        if name in sums:
            assert 'request_protocol="grpc"' in line, line
            sums[name] += float(line.rsplit(" ", 1)[1])
    return sums["istio_request_messages_total"], sums["istio_response_messages_total"]


def test_streaming_message_counters_on_both_sidecars(mesh):
    """A client stream of 3 messages and a server stream of 7 are counted message by message
    (istio_request_messages_total / istio_response_messages_total) on both sidecars."""
    before = {side: _messages(side) for side in (mesh.a, mesh.b)}
    assert mesh.call("stream_unary", "ClientStream")(iter([b"a", b"bb", b"ccc"]), timeout=10) == b"count=3 bytes=6"
    assert len(list(mesh.call("unary_stream", "ServerStream")(b"7", timeout=10))) == 7
    time.sleep(0.3)     # the calls finish on the sidecars just after the client has its answer
    for side in (mesh.a, mesh.b):
        req, resp = _messages(side)
        assert (req - before[side][0], resp - before[side][1]) == (3 + 1, 1 + 7), side


def test_grpc_timeout_header_caps_the_route_timeout(mesh):
    """A call whose grpc-timeout (300 ms) is shorter than the route timeout (none here) is
    answered by the sidecar at its deadline: trailers-only, grpc-status 14 (Envoy's mapping
    of 504), flag UT, although the upstream never answers."""
    import h2.config
    import h2.connection
    import h2.events

    from benchmarks.grpc_upstream import frame
    sock = socket.create_connection(("127.0.0.1", mesh.a.outbound_port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":scheme", "http"),
                          (":authority", "silent.bench.svc.cluster.local"),
                          (":path", "/test.Echo/Unary"), ("content-type", "application/grpc"),
                          ("te", "trailers"), ("grpc-timeout", "300m")])
    conn.send_data(1, frame(b"sleep:5"), end_stream=True)
    sock.sendall(conn.data_to_send())
    started, fields, ended = time.monotonic(), {}, False
    try:
        while not ended:
            data = sock.recv(65536)
            assert data, "the sidecar closed the connection"
            for event in conn.receive_data(data):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    fields.update(dict(event.headers))
                ended = ended or isinstance(event, h2.events.StreamEnded)
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    logged = json.loads(mesh.a.access_log().splitlines()[-1])
    assert time.monotonic() - started < 3, (fields, logged)
    assert fields[b":status"] == b"200" and fields[b"grpc-status"] == b"14"
    assert logged["response_flags"] == "UT" and logged["grpc_status"] == "Unavailable", logged


def test_one_gib_server_stream_moves_at_flat_memory(mesh):
    """1 GiB (1,024 messages of 1 MiB) streamed from the server through both sidecars with
    mTLS arrives whole, while neither sidecar's RSS grows by more than 64 MiB: nothing on
    the way keeps what it forwarded (a fast reader; slow readers and writers are the
    flow-control tests of test_http2_downstream.py)."""
    peaks = {"a": 0, "b": 0}
    before = {"a": mesh.a.rss_kib(), "b": mesh.b.rss_kib()}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            for name, sidecar in (("a", mesh.a), ("b", mesh.b)):
                peaks[name] = max(peaks[name], sidecar.rss_kib() - before[name])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    received = count = 0
    try:
        for message in mesh.call("unary_stream", "ServerStream")(b"1024:1048576", timeout=300):
            received += len(message)
            count += 1
    finally:
        done.set()
        sampler.join(5)
    assert (count, received) == (1024, 1 << 30)
    assert max(peaks.values()) < 64 * 1024, f"RSS growth (KiB) during 1 GiB: {peaks}"
