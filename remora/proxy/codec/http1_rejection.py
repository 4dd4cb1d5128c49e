"""How the downstream HTTP/1.1 codec refuses a malformed request: 4xx with flag DPE, then close.

A base class of DownstreamHttp1, which owns the connection state these methods change
(`state`, `active`, `receiving`, `keep_alive`, `rejected`, `flow`). The parser, the
timeouts (408) and upgrades (405) call `_reject`; `_response_done` calls `_send_rejection`
once the requests pipelined before the malformed one are answered.
"""
from __future__ import annotations

from remora.proxy.codec.http1 import CLOSED, REFUSING, WAITING, BadRequest
from remora.proxy.codec.http1_writer import RESP_NONE
from remora.proxy.codec.message import RequestHead


class Http1Rejection:
    """Refusing malformed requests for DownstreamHttp1 (see the module docstring)."""

    __slots__ = ()

    def _reject(self, err: BadRequest) -> None:
        """A malformed request: answer 4xx with flag DPE and close.

        When it was pipelined behind requests still being answered, those are answered
        first, in order (Envoy parses one request at a time, so it meets the error only
        then); reading stops, and the 4xx follows the last of them (_send_rejection)."""
        if self.state == CLOSED or self.tunnel_peer is not None or self.rejected is not None:
            return
        self.listener.count_protocol_error(err.status)
        current = self.active
        if (current is not None and current is not self.receiving and not current.finished
                and self.transport is not None):
            self.rejected = err
            self.flow.pause_reading(REFUSING)
            self.state = WAITING
            return
        if (current is not None and current is self.receiving and self.resp_framing == RESP_NONE
                and not current.finished):
            # The head was fine and already routed, but its body is malformed (a bad
            # chunk): drop the upstream attempt and answer the client instead.
            self.keep_alive = False
            current.local_reply(err.status, err.detail, "DPE")
        elif current is None and self.transport is not None:
            head = RequestHead(b"-", self.url or b"-", self.authority or b"", [], b"1.1")
            exchange = self.active = self.listener.new_exchange(self, head, routed=False)
            self.keep_alive = False
            exchange.local_reply(err.status, err.detail, "DPE")
        self.state = CLOSED
        if self.transport is not None:
            self.transport.close()

    def _send_rejection(self) -> None:
        """The requests before a malformed pipelined one are answered: now refuse it and close."""
        err, self.rejected = self.rejected, None
        self.keep_alive = False
        exchange = self.receiving     # a pipelined request whose body was malformed
        if exchange is None or exchange.finished:
            head = RequestHead(b"-", self.url or b"-", self.authority or b"", [], b"1.1")
            exchange = self.listener.new_exchange(self, head, routed=False)
        self.active = exchange
        exchange.local_reply(err.status, err.detail, "DPE")
        self.state = CLOSED
        self.transport.close()
