"""The control-server <-> sidecar wire format: neither side owns it.

`protocol` holds the stream's messages (xDS semantics, JSON frames on a WebSocket), their
encoding and the resource types; `remora.xds` (the server) and `remora.proxy.control.xds_client`
(the sidecar) both import it. This package imports only the standard library and msgspec.
"""
