"""Contract of the control-server <-> sidecar wire format (remora/wire/protocol.py)."""
from __future__ import annotations

import json

import pytest

from remora.wire import protocol
from remora.wire.protocol import (CLUSTERS, ENDPOINTS, KIND_TYPE, POLICIES, ROUTES, TYPE_KINDS, TYPE_ORDER,
                                  DiscoveryRequest, DiscoveryResponse, Hello, Node, ProtocolError,
                                  StreamError)

FULL_NODE = Node(id="reviews-1", namespace="shop", service="reviews.shop.svc.cluster.local",
                 service_account="reviews", workload="reviews-v1", labels={"app": "reviews", "version": "v1"},
                 trust_domain="example.org", inbound="10.0.0.7:15006", app_port=9080,
                 admin="127.0.0.1:15000", mtls=True, remora_version="0.1.0")

MESSAGES = [
    Hello(node=Node(id="minimal")),
    Hello(node=FULL_NODE),
    DiscoveryRequest(type_url=CLUSTERS),
    DiscoveryRequest(type_url=ROUTES, version_info="v1", response_nonce="3"),
    DiscoveryRequest(type_url=ENDPOINTS, version_info="v0", response_nonce="4", error_detail="bad route"),
    DiscoveryRequest(type_url=POLICIES, version_info="v0", response_nonce="5", error_detail=""),
    DiscoveryResponse(type_url=CLUSTERS, version_info="abc", nonce="1", resources=[]),
    DiscoveryResponse(type_url=ROUTES, version_info="def", nonce="2", resources=[
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
         "metadata": {"name": "r", "namespace": "shop"}, "spec": {"hosts": ["r"], "http": [{"timeout": "1s"}]}}]),
    StreamError(message="duplicate node id"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_survives_an_encode_decode_round_trip(message):
    """decode(encode(m)) == m for every message type, with defaults and with every field set."""
    frame = protocol.encode(message)
    assert isinstance(frame, str)
    assert protocol.decode(frame) == message
    assert protocol.decode(frame.encode()) == message


def test_frames_are_json_objects_tagged_by_type():
    """Each frame is one JSON object whose "type" names the message (hello, request, response, error)."""
    tags = [json.loads(protocol.encode(m))["type"] for m in MESSAGES]
    assert set(tags) == {"hello", "request", "response", "error"}


def test_defaults_are_left_out_of_requests_and_nodes():
    """Requests and nodes omit fields at their defaults; an empty error_detail is still a NACK."""
    assert json.loads(protocol.encode(DiscoveryRequest(type_url=CLUSTERS))) == {"type": "request", "type_url": CLUSTERS}
    assert json.loads(protocol.encode(Hello(node=Node(id="x")))) == {"type": "hello", "node": {"id": "x"}}
    assert not DiscoveryRequest(type_url=CLUSTERS).is_nack
    assert protocol.decode(protocol.encode(DiscoveryRequest(type_url=CLUSTERS, error_detail=""))).is_nack


def test_unknown_fields_are_ignored():
    """Fields a newer peer adds (top level or inside the node) are skipped, not refused."""
    frame = '{"type": "hello", "future": 1, "node": {"id": "a", "zone": "eu", "labels": {"app": "x"}}}'
    assert protocol.decode(frame) == Hello(node=Node(id="a", labels={"app": "x"}))


@pytest.mark.parametrize("frame, says", [
    ('{"type": "bogus"}', "invalid stream message"),
    ('{"node": {"id": "a"}}', "invalid stream message"),
    ('{"type": "request"}', "invalid stream message"),
    ('{"type": "hello", "node": {}}', "invalid stream message"),
    ('{"type": "response", "type_url": "x", "version_info": "1", "nonce": "n", "resources": "no"}',
     "invalid stream message"),
    ('[]', "invalid stream message"),
    ('not json', "not JSON"),
    ('', "not JSON"),
    ('{"type": "request", "type_url": "x"} trailing', "not JSON"),
    (b"\xff\xfe", "not JSON"),
])
def test_garbage_raises_protocol_error_naming_the_problem(frame, says):
    """A frame that is not JSON, or not a valid message, raises ProtocolError (a ValueError) saying which."""
    with pytest.raises(ProtocolError, match=says):
        protocol.decode(frame)
    assert issubclass(ProtocolError, ValueError)


def test_resource_types_cover_each_kind_once_in_push_order():
    """TYPE_ORDER lists every type once (clusters, endpoints, routes, policies); each kind maps to one type."""
    assert TYPE_ORDER == (CLUSTERS, ENDPOINTS, ROUTES, POLICIES)
    assert set(TYPE_KINDS) == set(TYPE_ORDER)
    kinds = [kind for type_url in TYPE_ORDER for kind in TYPE_KINDS[type_url]]
    assert len(kinds) == len(set(kinds)) == len(KIND_TYPE)
    assert all(TYPE_KINDS[KIND_TYPE[kind]].count(kind) == 1 for kind in kinds)
    assert protocol.STREAM_PATH == "/v1/xds"


def test_sidecar_dials_the_paths_the_server_serves_without_an_admin_token():
    """The sidecar's stream and certificate URLs use the wire paths, which the server leaves open."""
    from remora.proxy.security.svid_manager import certificates_url
    from remora.proxy.control.xds_client import stream_url
    from remora.wire.certificates import CERTIFICATES_PATH, TRUST_BUNDLE_PATH
    from remora.xds.admin_auth import OPEN_ROUTES

    assert stream_url("http://control:15010").endswith(":15010" + protocol.STREAM_PATH)
    assert certificates_url("http://control:15010") == "http://control:15010" + CERTIFICATES_PATH
    assert {("GET", protocol.STREAM_PATH), ("POST", CERTIFICATES_PATH), ("GET", TRUST_BUNDLE_PATH)} <= OPEN_ROUTES
