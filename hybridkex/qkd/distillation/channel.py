"""The authenticated classical channel: frames that are numbered, bound to a session, tagged.

Frame (all integers big-endian)::

    magic "HKQ1" | session_id (16) | seq u32 | sender u8 | type u8 | payload_len u32
    | payload | tag_len u16 | tag

The tag covers the sender's deferred frames since its last tagged frame, whole and in
order, then everything of this frame before ``tag_len`` (see
:class:`AuthenticatedChannel`).
A receiver checks, in this order: the frame's lengths and magic (:meth:`Frame.decode`),
then session, sender, sequence number (exactly the next one: a replayed, dropped or
reordered message ends the round), then the tag, then the type; only then is the
payload decoded as the message it must be (:mod:`.messages`).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Self, TypeVar

from hybridkex.errors import HybridKexError
from hybridkex.qkd.distillation.authentication import MessageAuthenticator, RunningTag
from hybridkex.qkd.distillation.messages import Abort, Message, MessageType
from hybridkex.qkd.distillation.transport import ClassicalChannel
from hybridkex.qkd.ends import Role
from hybridkex.qkd.errors import LinkAborted, MalformedMessage

__all__ = ["MAX_TAG", "SESSION_ID_SIZE", "AuthenticatedChannel", "Frame"]

MAGIC = b"HKQ1"
SESSION_ID_SIZE = 16
MAX_TAG = 8192
_HEADER = struct.Struct(">4s16sIBBI")
_TAG_LEN = struct.Struct(">H")

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Frame:
    """One classical frame.  ``msg_type`` stays a plain byte here: the channel refuses an
    unexpected type only after the tag has verified."""

    session_id: bytes
    seq: int
    sender: Role
    msg_type: int
    payload: bytes
    tag: bytes = b""

    def authenticated_part(self) -> bytes:
        """Header and payload: what the tag covers (after the deferred frames before it)."""
        return _HEADER.pack(MAGIC, self.session_id, self.seq, self.sender, self.msg_type,
                            len(self.payload)) + self.payload

    def encode(self) -> bytes:
        return self.authenticated_part() + _TAG_LEN.pack(len(self.tag)) + self.tag

    @classmethod
    def decode(cls, raw: bytes) -> Self:
        if len(raw) < _HEADER.size + _TAG_LEN.size:
            raise MalformedMessage("classical message too short")
        magic, session, seq, sender, msg_type, length = _HEADER.unpack_from(raw)
        if magic != MAGIC:
            raise MalformedMessage("classical message has a bad magic")
        data_end = _HEADER.size + length
        if len(raw) < data_end + _TAG_LEN.size:
            raise MalformedMessage("classical message shorter than its payload length")
        (tag_len,) = _TAG_LEN.unpack_from(raw, data_end)
        if tag_len > MAX_TAG or len(raw) != data_end + _TAG_LEN.size + tag_len:
            raise MalformedMessage("classical message has a bad tag length")
        if sender not in (Role.ALICE, Role.BOB):
            raise MalformedMessage("classical message has an unknown sender")
        return cls(session, seq, Role(sender), msg_type, raw[_HEADER.size:data_end],
                   raw[data_end + _TAG_LEN.size:])


@dataclass
class AuthenticatedChannel:
    """A classical channel whose every frame is authenticated, numbered and bound to a session.

    Most frames carry their own tag.  A *deferred* frame (the many small parity
    messages of Cascade) carries none: it goes into the running tag of the next tagged
    frame in the same direction (:class:`~.authentication.RunningTag`), which
    authenticates the deferred frames, whole, along with itself.  The receiver feeds
    what it received to its running tag the same way, so an altered, injected or
    dropped deferred frame makes that next tag fail and ends the round.  The protocol
    releases nothing derived from deferred frames before that tag has verified; it
    saves one one-time pad per frame.
    """

    channel: ClassicalChannel
    authenticator: MessageAuthenticator
    role: Role
    session_id: bytes | None = None  # None: adopt the first incoming message's session
    _sent: int = 0
    _received: int = 0
    _outgoing: RunningTag | None = None
    _incoming: RunningTag | None = None

    def send(self, message: Message, *, deferred: bool = False) -> None:
        if self.session_id is None:
            raise LinkAborted("no session established")
        frame = Frame(self.session_id, self._sent, self.role, message.msg_type,
                      message.encode())
        data = frame.authenticated_part()
        running = self._outgoing or self.authenticator.outgoing()
        if deferred:
            self._outgoing = running
            running.cover(data)
        else:
            self._outgoing = None
            frame = replace(frame, tag=running.seal(data))
        self._sent += 1
        self.channel.send(frame.encode())

    def abort(self, reason: str) -> None:
        """Tell the peer (authenticated) that this side ends the round."""
        with contextlib.suppress(HybridKexError):
            self.send(Abort(reason))

    def recv(self, kind: type[M], *, deferred: bool = False) -> M:
        """The next message, which must be a ``kind``."""
        message = self.recv_any({kind: deferred})
        assert isinstance(message, kind)  # recv_any returns only the kinds it was given
        return message

    def recv_any(self, kinds: Mapping[type[Message], bool]) -> Message:
        """The next message; ``kinds`` maps each acceptable message class to whether it
        comes deferred (untagged) or tagged."""
        allowed: dict[int, tuple[type[Message] | None, bool]] = {
            kind.msg_type: (kind, deferred) for kind, deferred in kinds.items()}
        frame = Frame.decode(self.channel.recv())
        if self.session_id is None:
            self.session_id = frame.session_id
        if frame.session_id != self.session_id:
            raise LinkAborted("classical message belongs to another session (replay?)")
        if frame.sender is not self.role.peer:
            raise LinkAborted("classical message has the wrong sender")
        if frame.seq != self._received:
            raise LinkAborted("classical message out of sequence (replayed or dropped)")
        data = frame.authenticated_part()
        kind, deferred = allowed.get(frame.msg_type, (None, False))
        running = self._incoming or self.authenticator.incoming()
        if deferred:
            if frame.tag:
                raise LinkAborted("a deferred classical message carries a tag")
            self._incoming = running
            running.cover(data)
        else:
            self._incoming = None
            if not running.check(data, frame.tag):
                raise LinkAborted("classical message failed authentication (tampered)")
        self._received += 1
        if frame.msg_type == MessageType.ABORT:
            raise LinkAborted("peer aborted: " + Abort.decode(frame.payload).reason)
        if kind is None:
            raise LinkAborted(f"unexpected classical message type {frame.msg_type}")
        message: Message = kind.decode(frame.payload)
        return message
