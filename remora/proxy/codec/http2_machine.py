"""h2's server state machine as the downstream codec uses it: one configuration for every
connection, and a connection class that lets a client's graceful GOAWAY end gracefully."""
from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import ConnectionInputs, ConnectionState, H2Connection


class ServerH2Connection(H2Connection):
    """h2's server connection, except that a client's graceful GOAWAY does not end it.

    A GOAWAY from the client says it opens no new streams (RFC 9113 6.8); the streams it
    already opened may finish, and Envoy lets them (its connection manager ignores a
    received GOAWAY). h2 closes its state machine and drops the bytes it had queued instead,
    so this subclass keeps the machine open and the bytes queued."""

    _TRANSITIONS = None     # h2's transition table with RECV_GOAWAY keeping SERVER_OPEN

    def __init__(self, config) -> None:
        super().__init__(config=config)
        machine = self.state_machine
        table = ServerH2Connection._TRANSITIONS
        if table is None:
            table = dict(machine._transitions)
            table[(ConnectionState.SERVER_OPEN, ConnectionInputs.RECV_GOAWAY)] = (
                None, ConnectionState.SERVER_OPEN)
            ServerH2Connection._TRANSITIONS = table
        machine._transitions = table

    def clear_outbound_data_buffer(self) -> None:
        """Called by h2 only on a received GOAWAY: the frames queued this batch still go out."""


# One configuration for every connection: h2 reads it, never changes it.
H2_CONFIG = H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=True,
                            normalize_inbound_headers=True, validate_outbound_headers=True,
                            normalize_outbound_headers=True)
