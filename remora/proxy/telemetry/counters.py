"""Per-worker counter objects: plain integer slots, named when admin asks for them."""
from __future__ import annotations

import socket

# Status -> its class (index into by_class): one dict lookup per response instead of a range
# test and a division; anything outside 0..699 counts in class 0.
STATUS_CLASS = {status: status // 100 for status in range(700)}


class Counters:
    """Base for counter sets: every slot starts at 0; responses are counted by status class
    in `by_class` (index = status // 100) and named with `STATUS_NAMES` when exported."""

    __slots__ = ("by_class",)
    STATUS_NAMES: tuple[str, ...] = ()   # index = status // 100

    def __init__(self) -> None:
        for cls in type(self).__mro__:
            for name in getattr(cls, "__slots__", ()):
                setattr(self, name, 0)
        self.by_class = [0] * 7           # 0..6: anything outside 1xx..5xx lands in 0 or 6

    def count_status(self, status: int) -> None:
        """Count one response in its status class (1xx..5xx)."""
        self.by_class[STATUS_CLASS.get(status, 0)] += 1

    def as_dict(self) -> dict[str, int]:
        """Counter name -> value, status classes included."""
        out = {name: getattr(self, name) for name in self.__slots__}
        for cls, name in enumerate(self.STATUS_NAMES):
            if name:
                out[name] = self.by_class[cls]
        return out


def status_names(prefix: str) -> tuple[str, ...]:
    """('', 'prefix_1xx', ..., 'prefix_5xx') for Counters.STATUS_NAMES."""
    return ("",) + tuple(f"{prefix}_{c}xx" for c in range(1, 6))


def set_keepalive(transport, idle: float | None, interval: float | None, probes: int | None) -> None:
    """TCP keepalive on an upstream socket (DestinationRule connectionPool.tcp.tcpKeepalive)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if idle:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(idle)))
        if interval:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(interval)))
        if probes:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, probes)
    except OSError:
        pass


def set_nodelay(transport) -> None:
    """Disable Nagle on a TCP transport (small request/response heads must not wait)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
