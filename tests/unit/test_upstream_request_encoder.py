"""The upstream HTTP/2 client's request encoder (Remora's HPACK in h2's seat), checked by h2's server."""
from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings

from remora.proxy.upstream.http2_connection import _RequestEncoder

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/test.Echo/Unary"),
           (b":authority", b"server"), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
           (b"authorization", b"Bearer secret")]


def _requests_seen_by_h2_server(table_size: int | None, count: int) -> list:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.encoder = _RequestEncoder()
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    client.initiate_connection()
    server.initiate_connection()
    if table_size is not None:
        server.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: table_size})
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    seen = []
    for i in range(count):
        client.send_headers(1 + 2 * i, REQUEST + [(b"x-request-id", b"%d" % i)], end_stream=True)
        events = server.receive_data(client.data_to_send())
        seen += [list(e.headers) for e in events if isinstance(e, h2.events.RequestReceived)]
    return seen


def test_requests_decode_in_h2_with_the_table_in_use():
    """50 requests with a changing field decode exactly in h2's server (the dynamic table evicts)."""
    seen = _requests_seen_by_h2_server(None, 50)
    assert seen == [REQUEST + [(b"x-request-id", b"%d" % i)] for i in range(50)]


def test_a_server_table_size_of_zero_is_obeyed():
    """A server that allows no dynamic table (SETTINGS_HEADER_TABLE_SIZE 0) still decodes every request."""
    seen = _requests_seen_by_h2_server(0, 5)
    assert seen == [REQUEST + [(b"x-request-id", b"%d" % i)] for i in range(5)]
