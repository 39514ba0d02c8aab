"""The PSK identity a TLS 1.3 ClientHello offers, read before OpenSSL sees the hello.

A qkd-psk server learns which QKD key to fetch from the client's PSK identity, which
OpenSSL hands over only inside a callback that must answer at once.  A driver that
must not block (asyncio) therefore reads the identity itself, from the bytes that
will be fed to OpenSSL, fetches the key where waiting does no harm, and only then
lets OpenSSL have the hello.  This reads; it decides nothing: a hello it cannot read
goes to OpenSSL as it is, and OpenSSL refuses what is malformed.

RFC 8446: a ClientHello is handshake type 1, in one or more handshake records (type
22); its ``pre_shared_key`` extension (41) starts with the list of identities.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_HELLO", "NEED_MORE", "NeedMore", "first_psk_identity"]

MAX_HELLO: Final = 1 << 16  # hellos longer than this are left to OpenSSL unread
_RECORD_HANDSHAKE, _CLIENT_HELLO, _PRE_SHARED_KEY = 22, 1, 41


class NeedMore:
    """Not enough bytes yet to read the hello."""

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE: Final = NeedMore()


def _hello_bytes(data: bytes) -> bytes | NeedMore | None:
    """The ClientHello message body, reassembled from the leading handshake records."""
    message = bytearray()
    pos = 0
    while True:
        if len(message) >= 4:
            if message[0] != _CLIENT_HELLO:
                return None
            length = int.from_bytes(message[1:4], "big")
            if length > MAX_HELLO:
                return None
            if len(message) >= 4 + length:
                return bytes(message[4:4 + length])
        if len(data) - pos < 5:
            return NEED_MORE
        if data[pos] != _RECORD_HANDSHAKE or data[pos + 1] != 0x03:
            return None
        record_length = int.from_bytes(data[pos + 3:pos + 5], "big")
        if record_length == 0 or record_length > (1 << 14):
            return None
        if len(data) - pos - 5 < record_length:
            return NEED_MORE
        message += data[pos + 5:pos + 5 + record_length]
        pos += 5 + record_length


def first_psk_identity(data: bytes) -> bytes | NeedMore | None:
    """The first PSK identity of the ClientHello at the start of ``data``; None if the
    hello offers none or cannot be read here; NEED_MORE if it is not complete yet."""
    body = _hello_bytes(data)
    if body is None or isinstance(body, NeedMore):
        return body
    pos = 2 + 32  # legacy_version, random
    for size in (1, 2, 1):  # legacy_session_id, cipher_suites, legacy_compression_methods
        if pos + size > len(body):
            return None
        pos += size + int.from_bytes(body[pos:pos + size], "big")
    if pos + 2 > len(body):
        return None
    end = pos + 2 + int.from_bytes(body[pos:pos + 2], "big")
    if end > len(body):
        return None
    pos += 2
    while pos + 4 <= end:
        kind = int.from_bytes(body[pos:pos + 2], "big")
        length = int.from_bytes(body[pos + 2:pos + 4], "big")
        pos += 4
        if pos + length > end:
            return None
        if kind == _PRE_SHARED_KEY:
            ext = body[pos:pos + length]
            if len(ext) < 4:
                return None
            identities = int.from_bytes(ext[0:2], "big")
            first = int.from_bytes(ext[2:4], "big")
            if first == 0 or 4 + first > min(len(ext), 2 + identities):
                return None
            return ext[4:4 + first]
        pos += length
    return None
