"""The original destination of a connection that iptables REDIRECTed to a capture port.

REDIRECT rewrites the destination to the listener; netfilter's conntrack keeps the one the
client asked for, and getsockopt returns it: SO_ORIGINAL_DST (SOL_IP, 80) for IPv4,
IP6T_SO_ORIGINAL_DST (SOL_IPV6, 80) for IPv6, as a sockaddr_in / sockaddr_in6.

A connection that was not redirected (a client that dialled the listener itself, explicit
mode) has no NAT: the kernel answers with the listener's own address, or ENOENT when there
is no conntrack entry. `redirected()` tells the two apart.
"""
from __future__ import annotations

import socket
import struct

SO_ORIGINAL_DST = 80          # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80     # linux/netfilter_ipv6/ip6_tables.h
SOL_IPV6 = getattr(socket, "SOL_IPV6", 41)


def original_destination(sock) -> tuple[str, int] | None:
    """(ip, port) the client dialled, or None when the kernel has none (no conntrack entry)."""
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST, 28)
            port, = struct.unpack_from("!H", raw, 2)
            ip = socket.inet_ntop(socket.AF_INET6, raw[8:24])
            if ip.startswith("::ffff:") and "." in ip:
                ip = ip[7:]
            return ip, port
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, = struct.unpack_from("!H", raw, 2)
        return socket.inet_ntoa(raw[4:8]), port
    except OSError:
        return None


def redirected(sock) -> tuple[str, int] | None:
    """The original destination when it differs from the socket's own address, else None."""
    found = original_destination(sock)
    if found is None:
        return None
    local = sock.getsockname()
    if found[1] == local[1] and found[0] == _plain(local[0]):
        return None
    return found


def _plain(ip: str) -> str:
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip
