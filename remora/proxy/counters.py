"""Per-worker counter objects: plain integer slots, named when admin asks for them."""
from __future__ import annotations

import socket


class Counters:
    """Base for counter sets: every slot starts at 0; `STATUS_NAMES` names the 1xx..5xx slots."""

    __slots__ = ()
    STATUS_NAMES: tuple[str, ...] = ()   # index = status // 100

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def count_status(self, status: int) -> None:
        """Count one response in its status class (1xx..5xx)."""
        names = self.STATUS_NAMES
        cls = status // 100
        if 0 < cls < len(names):
            name = names[cls]
            setattr(self, name, getattr(self, name) + 1)

    def as_dict(self) -> dict[str, int]:
        """Counter name -> value."""
        return {name: getattr(self, name) for name in self.__slots__}


def status_names(prefix: str) -> tuple[str, ...]:
    """('', 'prefix_1xx', ..., 'prefix_5xx') for Counters.STATUS_NAMES."""
    return ("",) + tuple(f"{prefix}_{c}xx" for c in range(1, 6))


def set_nodelay(transport) -> None:
    """Disable Nagle on a TCP transport (small request/response heads must not wait)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
