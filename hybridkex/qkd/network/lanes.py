"""Several rounds in flight over one classical connection: lanes.

Cascade needs a few hundred round trips per round, one after the other.  Over a real
network each costs the round-trip time, and a round-trip time of 5 ms would then
stretch a round of about a second to several.  So the link pipelines: rounds run side
by side in *lanes*, each lane a sequence of rounds exactly like a link of its own (its
own frames, sequence numbers, session IDs and authentication chain), all lanes sharing
one TCP connection.  While one lane waits for its peer, the others compute, and the
source keeps sending pulses; the round-trip time is hidden once enough lanes run.

Framing (inside the u32-length frames of
:class:`~hybridkex.qkd.distillation.transport.SocketChannel`): ``lane u8 | frame``.
Lane 0 carries the connection's opening; rounds run in lanes 1 to :data:`MAX_LANES`.
A reader thread sorts incoming frames into one queue per lane.  When the connection
fails every lane sees the channel closed.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
from collections.abc import Callable

from hybridkex.qkd.distillation.transport import SocketChannel
from hybridkex.qkd.errors import ChannelClosed

__all__ = ["MAX_LANES", "LaneChannel", "Lanes"]

MAX_LANES = 16


class LaneChannel:
    """One lane: a :class:`~hybridkex.qkd.distillation.transport.ClassicalChannel`."""

    def __init__(self, lanes: Lanes, number: int) -> None:
        self._lanes, self.number = lanes, number
        self._inbox: collections.deque[bytes | None] = collections.deque()
        self._ready = threading.Condition()
        self.timeout_s = 120.0

    def send(self, frame: bytes) -> None:
        self._lanes.send(self.number, frame)

    def recv(self) -> bytes:
        with self._ready:
            if not self._ready.wait_for(lambda: bool(self._inbox), self.timeout_s):
                raise ChannelClosed("no frame arrived in time")
            frame = self._inbox[0]
            if frame is None:  # stays closed for any later reader
                raise ChannelClosed(self._lanes.why or "the connection closed")
            self._inbox.popleft()
        return frame

    def wait(self, stopping: Callable[[], bool]) -> bool:
        """Wait until a frame (or the end) is queued (True) or ``stopping()`` (False)."""
        with self._ready:
            while not self._inbox:
                if stopping():
                    return False
                self._ready.wait(0.2)
        return True

    def close(self) -> None:
        self._lanes.close()

    def _deliver(self, frame: bytes | None) -> None:
        with self._ready:
            self._inbox.append(frame)
            self._ready.notify_all()


class Lanes:
    """The lanes of one connection (``sock`` is owned from now on)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._channel = SocketChannel(sock)
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._lanes: dict[int, LaneChannel] = {}
        self.closed = threading.Event()
        self.why = ""
        self._reader = threading.Thread(target=self._read, name="qkd-lanes", daemon=True)
        self._reader.start()

    def lane(self, number: int) -> LaneChannel:
        if not 0 <= number <= MAX_LANES:
            raise ValueError(f"lanes are numbered 0..{MAX_LANES}")
        with self._lock:
            channel = self._lanes.get(number)
            if channel is None:
                channel = self._lanes[number] = LaneChannel(self, number)
                if self.closed.is_set():
                    channel._deliver(None)
        return channel

    def send(self, number: int, frame: bytes) -> None:
        if self.closed.is_set():
            raise ChannelClosed(self.why or "the connection closed")
        with self._send_lock:
            self._channel.send(bytes([number]) + frame)

    def _read(self) -> None:
        try:
            while True:
                data = self._channel.recv()
                if not data or data[0] > MAX_LANES:
                    raise ChannelClosed("a classical frame names no lane")
                self.lane(data[0])._deliver(data[1:])
        except ChannelClosed as exc:
            self._shut(exc.reason)

    def _shut(self, why: str) -> None:
        with self._lock:
            if not self.closed.is_set():
                self.why = why
                self.closed.set()
                for channel in self._lanes.values():
                    channel._deliver(None)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._shut("this end closed the connection")
        with contextlib.suppress(OSError):
            self._sock.close()
