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

What a peer can make this end hold is bounded, before and after it is authenticated:

- Until the opening has verified the peer (:meth:`Lanes.opened`), only lane 0 is
  accepted, in frames of at most :data:`OPENING_BYTES`, and lane 0 holds at most that
  much unread.  A stranger's connection costs a few kilobytes, not the 64 MiB a frame
  may have.
- A frame for a lane this end never reads (beyond the lanes it runs) ends the
  connection: nobody would ever take it out of its queue.
- Each lane holds at most :data:`LANE_INBOX_BYTES` unread (one frame of the largest
  size and then some: the protocol never sends far ahead of the answer it waits for).
  A peer that sends more ends the connection.

Each of these ends the connection with a :class:`~hybridkex.qkd.errors.ChannelClosed`
kept in :attr:`Lanes.fault`, which the link logs.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
from collections.abc import Callable

from hybridkex.qkd.distillation.transport import MAX_FRAME, SocketChannel
from hybridkex.qkd.errors import ChannelClosed, FrameTooLarge

__all__ = ["LANE_INBOX_BYTES", "MAX_LANES", "OPENING_BYTES", "LaneChannel", "Lanes"]

MAX_LANES = 16
#: the largest frame, and the most lane 0 holds unread, before the peer is verified
OPENING_BYTES = 1 << 20
#: the most one lane holds unread once the peer is verified
LANE_INBOX_BYTES = MAX_FRAME + (1 << 20)


class LaneChannel:
    """One lane: a :class:`~hybridkex.qkd.distillation.transport.ClassicalChannel`."""

    def __init__(self, lanes: Lanes, number: int) -> None:
        self._lanes, self.number = lanes, number
        self._inbox: collections.deque[bytes | None] = collections.deque()
        self._held = 0  # bytes in the inbox
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
            self._held -= len(frame)
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

    def _deliver(self, frame: bytes | None, limit: int = LANE_INBOX_BYTES) -> None:
        """Queue ``frame`` (None: the connection ended), or raise :class:`ChannelClosed`
        if the lane would then hold more than ``limit`` bytes unread."""
        with self._ready:
            if frame is not None:
                if self._held + len(frame) > limit:
                    raise ChannelClosed(f"the peer sent more than {limit} bytes to lane "
                                        f"{self.number} that this end has not read yet")
                self._held += len(frame)
            self._inbox.append(frame)
            self._ready.notify_all()


class Lanes:
    """The lanes of one connection (``sock`` is owned from now on); this end reads lanes
    0 to ``read``."""

    def __init__(self, sock: socket.socket, read: int = MAX_LANES) -> None:
        if not 0 <= read <= MAX_LANES:
            raise ValueError(f"lanes are numbered 0..{MAX_LANES}")
        self._sock = sock
        self._read_up_to = read
        self._channel = SocketChannel(sock, OPENING_BYTES)
        self._verified = False
        self.fault: ChannelClosed | None = None  # what the peer did that ended it
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

    def opened(self) -> None:
        """The opening has verified the peer: every lane this end reads, frames up to
        the channel's maximum, from now on."""
        with self._lock:
            self._verified = True
            self._channel.max_frame = MAX_FRAME

    def send(self, number: int, frame: bytes) -> None:
        if self.closed.is_set():
            raise ChannelClosed(self.why or "the connection closed")
        with self._send_lock:
            self._channel.send(bytes([number]) + frame)

    def _read(self) -> None:
        try:
            while True:
                try:
                    data = self._channel.recv()
                except FrameTooLarge as exc:
                    self.fault = exc
                    raise
                self._sort(data)
        except ChannelClosed as exc:
            self._shut(exc.reason)

    def _sort(self, data: bytes) -> None:
        """Queue one frame in its lane, or raise :class:`ChannelClosed` (kept in
        :attr:`fault`) for a frame this end must not hold."""
        try:
            if not data or data[0] > MAX_LANES:
                raise ChannelClosed("a classical frame names no lane")
            number = data[0]
            if number > self._read_up_to:
                raise ChannelClosed(f"a classical frame for lane {number}, which this end "
                                    f"does not run (lanes 1..{self._read_up_to})")
            with self._lock:
                verified = self._verified
            if not verified and number != 0:
                raise ChannelClosed(f"a classical frame for lane {number} before the "
                                    "opening verified the peer")
            self.lane(number)._deliver(data[1:],
                                       LANE_INBOX_BYTES if verified else OPENING_BYTES)
        except ChannelClosed as exc:
            self.fault = exc
            raise

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
