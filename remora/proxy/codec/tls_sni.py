"""The server name of a TLS ClientHello, read without terminating TLS (Envoy's tls_inspector).

`client_hello_sni(data)` reads the bytes a client sent first: None while the ClientHello is
not complete yet, "" when it has no server_name extension, else the name (lower case).
Anything that is not a TLS handshake raises NotTls. The hello may span several records;
at most MAX_HELLO bytes are read (Envoy's inspector reads up to 64 KiB).
"""
from __future__ import annotations

HANDSHAKE = 0x16
CLIENT_HELLO = 0x01
SERVER_NAME = 0x0000
MAX_HELLO = 64 * 1024


class NotTls(ValueError):
    """The first bytes are not a TLS ClientHello."""


def _handshake_bytes(data: bytes) -> bytes | None:
    """The handshake payload of the leading records, or None when a record is cut short."""
    payload = bytearray()
    offset = 0
    while offset + 5 <= len(data):
        if data[offset] != HANDSHAKE or data[offset + 1] != 3:
            raise NotTls("not a TLS handshake record")
        length = int.from_bytes(data[offset + 3:offset + 5], "big")
        end = offset + 5 + length
        if end > len(data):
            payload += data[offset + 5:]
            return bytes(payload) if len(payload) >= 4 and _complete(payload) else None
        payload += data[offset + 5:end]
        offset = end
        if _complete(payload):
            return bytes(payload)
    return None


def _complete(payload) -> bool:
    return len(payload) >= 4 and len(payload) >= 4 + int.from_bytes(payload[1:4], "big")


def client_hello_sni(data: bytes) -> str | None:
    """The SNI of the ClientHello at the start of `data` (see the module docstring)."""
    if data and data[0] != HANDSHAKE:
        raise NotTls("not a TLS handshake record")
    if len(data) > MAX_HELLO + 5:
        raise NotTls("ClientHello too large")
    hello = _handshake_bytes(data)
    if hello is None:
        return None
    if hello[0] != CLIENT_HELLO:
        raise NotTls("the first handshake message is not a ClientHello")
    end = 4 + int.from_bytes(hello[1:4], "big")
    try:
        pos = 4 + 2 + 32                                   # version, random
        pos += 1 + hello[pos]                              # session id
        pos += 2 + int.from_bytes(hello[pos:pos + 2], "big")   # cipher suites
        pos += 1 + hello[pos]                              # compression methods
        if pos >= end:
            return ""                                      # no extensions at all
        extensions_end = pos + 2 + int.from_bytes(hello[pos:pos + 2], "big")
        pos += 2
        while pos + 4 <= min(extensions_end, end):
            kind = int.from_bytes(hello[pos:pos + 2], "big")
            length = int.from_bytes(hello[pos + 2:pos + 4], "big")
            body = hello[pos + 4:pos + 4 + length]
            if kind == SERVER_NAME and len(body) >= 5 and body[2] == 0:
                name_length = int.from_bytes(body[3:5], "big")
                return body[5:5 + name_length].decode("ascii").lower()
            pos += 4 + length
    except (IndexError, UnicodeDecodeError):
        raise NotTls("malformed ClientHello") from None
    return ""
