"""HKX/1 record layer: framing, and AEAD protection of one direction's records.

A record is ``type(1) | length(2) | payload``.  Before the handshake keys exist the
payload is the plaintext (ClientHello and ServerHello only); afterwards it is
``AEAD-Seal(key, nonce, plaintext, aad = the 3-byte header)`` with
``nonce = iv XOR seq`` (seq as a 12-byte big-endian integer, starting at 0 for every
new key).  The header is authenticated, so a record's type and length cannot be
changed; the sequence number is implicit, so a record that is dropped, replayed or
reordered fails authentication at the receiver.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hybridkex.errors import AuthenticationFailed, DecodeError, RecordAuthenticationFailed
from hybridkex.primitives import aead
from hybridkex.protocol.keyschedule import IV_SIZE, traffic_key_iv
from hybridkex.protocol.suites import AlertDescription, ContentType, Suite

__all__ = [
    "AEAD_RECORD_LIMITS",
    "HEADER_SIZE",
    "MAX_PAYLOAD",
    "MAX_PLAINTEXT",
    "Record",
    "RecordBuffer",
    "RecordProtection",
    "frame_record",
]

HEADER_SIZE = 3
MAX_PLAINTEXT = 1 << 14
MAX_PAYLOAD = MAX_PLAINTEXT + 256
# Records one key may protect before it must be replaced.  AES-GCM: RFC 8446 section
# 5.5 allows 2^24.5 full-size records for a 2^-57 margin; HKX/1 stops at 2^24.
# ChaCha20-Poly1305's limit is beyond the 64-bit sequence space; 2^48 keeps the
# sequence number far from wrapping.
AEAD_RECORD_LIMITS = {"AES-256-GCM": 1 << 24, "ChaCha20-Poly1305": 1 << 48}
_CONTENT_TYPES = frozenset(int(t) for t in ContentType)
_HEADER = struct.Struct(">BH")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from


@dataclass(frozen=True)
class Record:
    content_type: int
    payload: bytes

    def __repr__(self) -> str:  # a payload may be plaintext: never shown
        return f"Record(type={self.content_type}, length={len(self.payload)})"


def frame_record(content_type: int, payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("record payload too long")
    return _pack_header(content_type, len(payload)) + payload


class RecordBuffer:
    """Bytes from the transport in, whole records out; lengths checked before buffering.

    Records are read in place from what ``feed`` was given (an offset moves along it),
    so a payload is copied once, into its :class:`Record`.  Only a record split across
    two ``feed`` calls makes the buffer gather bytes into a bytearray of its own.
    """

    __slots__ = ("_data", "_pos")

    def __init__(self) -> None:
        self._data: bytes | bytearray = b""
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if self._pos == len(self._data):  # everything read: start over on the new bytes
            self._data = data if type(data) is bytes else bytes(data)
            self._pos = 0
            return
        if type(self._data) is bytes:  # an incomplete record waits: gather from here on
            self._data = bytearray(memoryview(self._data)[self._pos:])
            self._pos = 0
        self._data += data

    def pending(self) -> int:
        return len(self._data) - self._pos

    def next_record(self) -> Record | None:
        data, pos = self._data, self._pos
        if len(data) - pos < HEADER_SIZE:
            return None
        content_type, length = _unpack_header(data, pos)
        if content_type not in _CONTENT_TYPES:
            raise DecodeError(f"unknown record type {content_type}",
                              AlertDescription.UNEXPECTED_MESSAGE)
        if length > MAX_PAYLOAD:
            raise DecodeError(f"record of {length} bytes exceeds {MAX_PAYLOAD}",
                              AlertDescription.RECORD_OVERFLOW)
        end = pos + HEADER_SIZE + length
        if len(data) < end:
            return None
        if type(data) is bytes:
            payload = data[pos + HEADER_SIZE:end]
        else:
            with memoryview(data) as view:
                payload = view[pos + HEADER_SIZE:end].tobytes()
        if end == len(data):  # all read: drop the reference to the transport's bytes
            self._data, self._pos = b"", 0
        elif type(data) is bytearray and end >= MAX_PAYLOAD:
            del data[:end]  # keep what was gathered from growing without bound
            self._pos = 0
        else:
            self._pos = end
        return Record(content_type, payload)


class RecordProtection:
    """One direction's current key: seals (sender) or opens (receiver) records in order.

    The AEAD is keyed once (:meth:`hybridkex.primitives.AEAD.keyed`); the key bytes are
    not kept beside it.  The IV is held as an integer, so a nonce is one XOR.
    """

    __slots__ = ("_aead", "_iv", "_tag_size", "limit", "seq")

    def __init__(self, suite: Suite, secret: bytes) -> None:
        algorithm = aead(suite.aead)
        key, iv = traffic_key_iv(suite, secret)
        self._aead = algorithm.keyed(key)
        self._iv = int.from_bytes(iv, "big")
        self._tag_size = algorithm.tag_size
        self.seq = 0
        self.limit = AEAD_RECORD_LIMITS[suite.aead]

    def __repr__(self) -> str:
        return f"<RecordProtection {self._aead.name} seq={self.seq}>"

    def _nonce(self) -> bytes:
        """iv XOR seq, seq as a 12-byte big-endian integer; then the next seq."""
        seq = self.seq
        if seq >= self.limit:
            # The sender replaces its key before this; reaching it means a peer that
            # did not, and the receiver refuses rather than weaken the AEAD's bounds.
            raise DecodeError("record sequence reached the AEAD usage limit without a key update",
                              AlertDescription.INSUFFICIENT_SECURITY)
        self.seq = seq + 1
        return (self._iv ^ seq).to_bytes(IV_SIZE, "big")

    def seal(self, content_type: int, plaintext: bytes | memoryview) -> bytes:
        if len(plaintext) > MAX_PLAINTEXT:
            raise ValueError("record plaintext too long")
        header = _pack_header(content_type, len(plaintext) + self._tag_size)
        return header + self._aead.encrypt(self._nonce(), plaintext, header)

    def open(self, record: Record) -> bytes:
        header = _pack_header(record.content_type, len(record.payload))
        try:
            plaintext = self._aead.decrypt(self._nonce(), record.payload, header)
        except AuthenticationFailed:
            raise RecordAuthenticationFailed(
                "a record failed authentication: tampered, reordered, replayed or from "
                "another key") from None
        if len(plaintext) > MAX_PLAINTEXT:
            raise DecodeError("record plaintext exceeds 2^14 bytes",
                              AlertDescription.RECORD_OVERFLOW)
        return plaintext
