"""The classical channel between the two ends of a QKD link: frames in order, nothing else.

The channel is untrusted.  Every frame sent over it is authenticated
(:mod:`hybridkex.qkd.distillation.channel`); a transport only has to deliver frames.
Two transports: an in-process pair of queues (tests, the simulator) and a TCP socket.
"""

from __future__ import annotations

import queue
import socket
import struct
from typing import Protocol

from hybridkex.qkd.errors import ChannelClosed, FrameTooLarge

__all__ = ["MAX_FRAME", "ClassicalChannel", "QueueChannel", "SocketChannel", "queue_pair"]

MAX_FRAME = 64 * 1024 * 1024


class ClassicalChannel(Protocol):
    """One end of a transport; ``recv`` and ``send`` raise :class:`ChannelClosed`."""

    def send(self, frame: bytes) -> None: ...

    def recv(self) -> bytes: ...

    def close(self) -> None: ...


class QueueChannel:
    """One end of an in-process channel.  Frames are copied, so the ends share no memory."""

    def __init__(self, outbox: queue.Queue[bytes | None], inbox: queue.Queue[bytes | None],
                 timeout_s: float) -> None:
        self._outbox, self._inbox, self._timeout_s = outbox, inbox, timeout_s

    def send(self, frame: bytes) -> None:
        if len(frame) > MAX_FRAME:
            raise ChannelClosed("frame exceeds the channel's maximum size")
        self._outbox.put(bytes(frame))

    def recv(self) -> bytes:
        try:
            frame = self._inbox.get(timeout=self._timeout_s)
        except queue.Empty:
            raise ChannelClosed("no frame arrived in time") from None
        if frame is None:
            raise ChannelClosed("the peer closed the channel")
        return frame

    def close(self) -> None:
        self._outbox.put(None)


def queue_pair(timeout_s: float = 300.0) -> tuple[QueueChannel, QueueChannel]:
    """Two connected in-process channel ends."""
    a_to_b: queue.Queue[bytes | None] = queue.Queue()
    b_to_a: queue.Queue[bytes | None] = queue.Queue()
    return QueueChannel(a_to_b, b_to_a, timeout_s), QueueChannel(b_to_a, a_to_b, timeout_s)


class SocketChannel:
    """Frames over a connected stream socket: u32 length, then the frame.

    ``max_frame`` is the largest frame :meth:`recv` accepts; a reader that knows its
    peer sends only small frames (an opening not yet authenticated) lowers it, so a
    stranger cannot make it hold :data:`MAX_FRAME` bytes.
    """

    def __init__(self, sock: socket.socket, max_frame: int = MAX_FRAME) -> None:
        self._sock = sock
        self.max_frame = max_frame

    def send(self, frame: bytes) -> None:
        if len(frame) > MAX_FRAME:
            raise ChannelClosed("frame exceeds the channel's maximum size")
        try:
            self._sock.sendall(struct.pack(">I", len(frame)) + frame)
        except OSError as exc:
            raise ChannelClosed(f"send failed: {exc.strerror or exc}") from None

    def _read_exactly(self, n: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < n:
            try:
                chunk = self._sock.recv(min(n - len(chunks), 1 << 20))
            except OSError as exc:
                raise ChannelClosed(f"receive failed: {exc.strerror or exc}") from None
            if not chunk:
                raise ChannelClosed("the peer closed the connection")
            chunks += chunk
        return bytes(chunks)

    def recv(self) -> bytes:
        (length,) = struct.unpack(">I", self._read_exactly(4))
        if length > self.max_frame:
            raise FrameTooLarge(f"the peer announced a frame of {length} bytes, more than "
                                f"the {self.max_frame} this end accepts")
        return self._read_exactly(length)

    def close(self) -> None:
        self._sock.close()
