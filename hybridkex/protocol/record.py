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

from dataclasses import dataclass

from hybridkex.errors import AuthenticationFailed, DecodeError, RecordAuthenticationFailed
from hybridkex.primitives import aead
from hybridkex.protocol.keyschedule import traffic_key_iv
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


@dataclass(frozen=True)
class Record:
    content_type: int
    payload: bytes

    def __repr__(self) -> str:  # a payload may be plaintext: never shown
        return f"Record(type={self.content_type}, length={len(self.payload)})"


def frame_record(content_type: int, payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("record payload too long")
    return bytes([content_type]) + len(payload).to_bytes(2, "big") + payload


class RecordBuffer:
    """Bytes from the transport in, whole records out; lengths checked before buffering."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> None:
        self._data += data

    def pending(self) -> int:
        return len(self._data)

    def next_record(self) -> Record | None:
        if len(self._data) < HEADER_SIZE:
            return None
        content_type = self._data[0]
        length = int.from_bytes(self._data[1:3], "big")
        if content_type not in _CONTENT_TYPES:
            raise DecodeError(f"unknown record type {content_type}",
                              AlertDescription.UNEXPECTED_MESSAGE)
        if length > MAX_PAYLOAD:
            raise DecodeError(f"record of {length} bytes exceeds {MAX_PAYLOAD}",
                              AlertDescription.RECORD_OVERFLOW)
        if len(self._data) < HEADER_SIZE + length:
            return None
        payload = bytes(self._data[HEADER_SIZE:HEADER_SIZE + length])
        del self._data[:HEADER_SIZE + length]
        return Record(content_type, payload)


class RecordProtection:
    """One direction's current key: seals (sender) or opens (receiver) records in order."""

    __slots__ = ("_aead", "_iv", "_key", "limit", "seq")

    def __init__(self, suite: Suite, secret: bytes) -> None:
        self._aead = aead(suite.aead)
        self._key, self._iv = traffic_key_iv(suite, secret)
        self.seq = 0
        self.limit = AEAD_RECORD_LIMITS[suite.aead]

    def __repr__(self) -> str:
        return f"<RecordProtection {self._aead.name} seq={self.seq}>"

    def _nonce(self) -> bytes:
        if self.seq >= self.limit:
            # The sender replaces its key before this; reaching it means a peer that
            # did not, and the receiver refuses rather than weaken the AEAD's bounds.
            raise DecodeError("record sequence reached the AEAD usage limit without a key update",
                              AlertDescription.INSUFFICIENT_SECURITY)
        seq = self.seq.to_bytes(len(self._iv), "big")
        self.seq += 1
        return bytes(a ^ b for a, b in zip(self._iv, seq, strict=True))

    def seal(self, content_type: int, plaintext: bytes) -> bytes:
        if len(plaintext) > MAX_PLAINTEXT:
            raise ValueError("record plaintext too long")
        header = bytes([content_type]) + (len(plaintext) + self._aead.tag_size).to_bytes(2, "big")
        return header + self._aead.encrypt(self._key, self._nonce(), plaintext, header)

    def open(self, record: Record) -> bytes:
        header = bytes([record.content_type]) + len(record.payload).to_bytes(2, "big")
        try:
            plaintext = self._aead.decrypt(self._key, self._nonce(), record.payload, header)
        except AuthenticationFailed:
            raise RecordAuthenticationFailed(
                "a record failed authentication: tampered, reordered, replayed or from "
                "another key") from None
        if len(plaintext) > MAX_PLAINTEXT:
            raise DecodeError("record plaintext exceeds 2^14 bytes",
                              AlertDescription.RECORD_OVERFLOW)
        return plaintext
