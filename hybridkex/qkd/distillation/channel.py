"""Framing of the QKD post-processing messages, and the encoders of their fields.

Frame (all integers big-endian)::

    magic "HKQ1" | session_id (16) | seq u32 | sender u8 | type u8 | payload_len u32
    | payload | tag_len u16 | tag

The tag covers everything before ``tag_len``, followed by the hash of the sender's
deferred frames since its last tagged frame (see :class:`AuthenticatedChannel`).
A receiver checks, in this order: length, magic, session, sender, sequence number
(exactly the next one: a replayed, dropped or reordered message ends the round),
then the tag, then the type; only then is the payload decoded, and every field in
it is length-checked.
"""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes

from hybridkex.errors import HybridKexError
from hybridkex.qkd.authentication import MessageAuthenticator
from hybridkex.qkd.channel import ClassicalChannel

__all__ = ["AuthenticatedChannel", "LinkAborted", "MessageType", "Reader", "Writer"]

MAGIC = b"HKQ1"
_HEADER = struct.Struct(">4s16sIBBI")
MAX_TAG = 8192


class LinkAborted(HybridKexError):
    """The distillation round was aborted; ``reason`` says why (never with key material)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MessageType:
    HELLO = 1
    SIFT = 2
    SIFT_REPLY = 3
    ESTIMATE = 4
    ESTIMATE_REPLY = 5
    CASCADE_REQUEST = 6
    CASCADE_RESPONSE = 7
    VERIFY = 8
    VERIFY_RESULT = 9
    AMPLIFY = 10
    CONFIRM = 11
    CASCADE_DONE = 12
    ABORT = 255


def _transcript() -> hashes.Hash:
    return hashes.Hash(hashes.SHA256())


@dataclass
class AuthenticatedChannel:
    """A classical channel whose every frame is authenticated, numbered and bound to a session.

    Most frames carry their own tag.  A *deferred* frame (the many small parity
    messages of Cascade) carries none: it is hashed into the sender's running
    transcript of deferred frames, and the next tagged frame in the same direction
    authenticates that hash along with itself.  The receiver hashes what it received
    the same way, so an altered, injected or dropped deferred frame makes that next
    tag fail and ends the round.  The protocol releases nothing derived from deferred
    frames before that tag has verified; it saves one one-time MAC per frame.
    """

    channel: ClassicalChannel
    authenticator: MessageAuthenticator
    role: int
    session_id: bytes | None = None  # None: adopt the first incoming message's session
    _sent: int = 0
    _received: int = 0
    _sent_deferred: hashes.Hash = field(default_factory=_transcript)
    _received_deferred: hashes.Hash = field(default_factory=_transcript)

    def send(self, msg_type: int, payload: bytes, *, deferred: bool = False) -> None:
        if self.session_id is None:
            raise LinkAborted("no session established")
        header = _HEADER.pack(MAGIC, self.session_id, self._sent, self.role, msg_type,
                              len(payload))
        data = header + payload
        if deferred:
            self._sent_deferred.update(data)
            tag = b""
        else:
            covered, self._sent_deferred = self._sent_deferred.finalize(), _transcript()
            tag = self.authenticator.tag(data + covered)
        self._sent += 1
        self.channel.send(data + struct.pack(">H", len(tag)) + tag)

    def abort(self, reason: str) -> None:
        """Tell the peer (authenticated) that this side ends the round."""
        with contextlib.suppress(HybridKexError):
            self.send(MessageType.ABORT, reason.encode()[:200])

    def recv(self, expected_type: int, *, deferred: bool = False) -> bytes:
        """The payload of the next frame, which must be of ``expected_type``."""
        return self.recv_any({expected_type: deferred})[1]

    def recv_any(self, allowed: dict[int, bool]) -> tuple[int, bytes]:
        """The next frame's (type, payload); ``allowed`` maps each acceptable type to
        whether it comes deferred (untagged) or tagged."""
        frame = self.channel.recv()
        if len(frame) < _HEADER.size + 2:
            raise LinkAborted("classical message too short")
        magic, session, seq, sender, msg_type, length = _HEADER.unpack_from(frame)
        if magic != MAGIC:
            raise LinkAborted("classical message has a bad magic")
        if len(frame) < _HEADER.size + length + 2:
            raise LinkAborted("classical message shorter than its payload length")
        data_end = _HEADER.size + length
        (tag_len,) = struct.unpack_from(">H", frame, data_end)
        if tag_len > MAX_TAG or len(frame) != data_end + 2 + tag_len:
            raise LinkAborted("classical message has a bad tag length")
        if self.session_id is None:
            self.session_id = session
        if session != self.session_id:
            raise LinkAborted("classical message belongs to another session (replay?)")
        if sender != 1 - self.role:
            raise LinkAborted("classical message has the wrong sender")
        if seq != self._received:
            raise LinkAborted("classical message out of sequence (replayed or dropped)")
        data = frame[:data_end]
        if allowed.get(msg_type, False):
            if tag_len:
                raise LinkAborted("a deferred classical message carries a tag")
            self._received_deferred.update(data)
        else:
            covered, self._received_deferred = self._received_deferred.finalize(), _transcript()
            if not self.authenticator.verify(data + covered, frame[data_end + 2:]):
                raise LinkAborted("classical message failed authentication (tampered)")
        self._received += 1
        payload = frame[_HEADER.size:data_end]
        if msg_type == MessageType.ABORT:
            raise LinkAborted("peer aborted: " + payload.decode("utf-8", "replace"))
        if msg_type not in allowed:
            raise LinkAborted(f"unexpected classical message type {msg_type}")
        return msg_type, payload


class Writer:
    """Builds a payload from typed fields."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, v: int) -> Writer:
        self._parts.append(struct.pack(">B", v))
        return self

    def u32(self, v: int) -> Writer:
        self._parts.append(struct.pack(">I", v))
        return self

    def u64(self, v: int) -> Writer:
        self._parts.append(struct.pack(">Q", v))
        return self

    def f64(self, v: float) -> Writer:
        self._parts.append(struct.pack(">d", v))
        return self

    def blob(self, v: bytes) -> Writer:
        self._parts.append(struct.pack(">I", len(v)) + v)
        return self

    def bits(self, v: npt.NDArray[np.uint8]) -> Writer:
        """A 0/1 array, bit-packed, with its length."""
        self.u64(len(v))
        self._parts.append(np.packbits(v).tobytes())
        return self

    def u8_array(self, v: npt.NDArray[np.uint8]) -> Writer:
        return self.blob(np.ascontiguousarray(v, dtype=np.uint8).tobytes())

    def u64_array(self, v: npt.NDArray[np.int64] | npt.NDArray[np.uint64]) -> Writer:
        return self.blob(np.ascontiguousarray(v, dtype=">u8").tobytes())

    def build(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Reads typed fields from a payload; any overrun or leftover aborts the round."""

    def __init__(self, payload: bytes, max_items: int = 1 << 28) -> None:
        self._data = payload
        self._pos = 0
        self._max_items = max_items

    def _take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise LinkAborted("classical message payload is truncated")
        out = self._data[self._pos:self._pos + n]
        self._pos += n
        return out

    def u8(self) -> int:
        return int(self._take(1)[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self._take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self._take(8))[0])

    def f64(self) -> float:
        return float(struct.unpack(">d", self._take(8))[0])

    def blob(self) -> bytes:
        return self._take(self.u32())

    def bits(self) -> npt.NDArray[np.uint8]:
        n = self.u64()
        if n > self._max_items:
            raise LinkAborted("classical message announces too many bits")
        packed = np.frombuffer(self._take((n + 7) // 8), dtype=np.uint8)
        return np.unpackbits(packed, count=n).astype(np.uint8)

    def u8_array(self) -> npt.NDArray[np.uint8]:
        return np.frombuffer(self.blob(), dtype=np.uint8).copy()

    def u64_array(self) -> npt.NDArray[np.int64]:
        raw = self.blob()
        if len(raw) % 8:
            raise LinkAborted("classical message has a ragged integer array")
        return np.frombuffer(raw, dtype=">u8").astype(np.int64)

    def end(self) -> None:
        if self._pos != len(self._data):
            raise LinkAborted("classical message has trailing bytes")
