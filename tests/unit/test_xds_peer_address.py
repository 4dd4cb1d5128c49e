"""Registry: a sidecar bound to every address registers the address its stream comes from."""
from __future__ import annotations

from remora.wire.protocol import Node
from remora.xds.registry import with_peer_address


def node(inbound: str | None, admin: str | None = "127.0.0.1:15000") -> Node:
    return Node(id="reviews-v1.default~h~1", service="reviews", inbound=inbound, app_port=9080, admin=admin)


def test_unspecified_ipv4_inbound_and_admin_become_the_stream_peer():
    """0.0.0.0 in inbound/admin is replaced by the stream's source address, ports kept."""
    got = with_peer_address(node("0.0.0.0:15006", "0.0.0.0:15000"), "172.18.0.5")
    assert (got.inbound, got.admin) == ("172.18.0.5:15006", "172.18.0.5:15000")


def test_unspecified_ipv6_becomes_bracketed_ipv6_peer():
    """[::] is replaced by an IPv6 peer written in brackets."""
    got = with_peer_address(node("[::]:15006"), "fd00::7")
    assert got.inbound == "[fd00::7]:15006"


def test_ipv4_mapped_peer_is_written_as_ipv4():
    """An IPv4 client seen on a dual-stack socket (::ffff:a.b.c.d) registers as a.b.c.d."""
    assert with_peer_address(node("0.0.0.0:15006"), "::ffff:10.1.2.3").inbound == "10.1.2.3:15006"


def test_specific_bind_addresses_and_missing_peer_are_kept():
    """A concrete bind address is what the sidecar chose: never rewritten; no peer, no change."""
    assert with_peer_address(node("127.0.0.1:15006"), "172.18.0.5").inbound == "127.0.0.1:15006"
    assert with_peer_address(node("0.0.0.0:15006"), None).inbound == "0.0.0.0:15006"
    assert with_peer_address(node(None, None), "172.18.0.5").inbound is None
