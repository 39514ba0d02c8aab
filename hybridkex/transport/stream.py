"""What every blocking secure socket shares, whatever protocol it speaks.

:class:`hybridkex.transport.SecureSocket` (HKX/1) and :class:`hybridkex.tls.TLSSocket`
(TLS 1.3) each drive a sans-IO connection that seals records into
``data_to_send()``.  The socket-shaped surface, the locking that keeps records in
order on the wire, and the careful close after a failure are the same for both, and
live here once.

Locks: ``_state`` guards the sans-IO connection; ``_wire`` is held by whoever takes
sealed bytes from the connection and writes them to the socket, so records reach the
wire in the order they were sealed; ``_reading`` admits one reader at a time.
"""

from __future__ import annotations

import abc
import contextlib
import io
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from hybridkex.errors import InvalidParameter
from hybridkex.protocol.identity import PeerIdentity

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["READ_SIZE", "WRITE_SLICE", "StreamSocket"]

READ_SIZE = 1 << 16
# Large writes are sealed and written a slice at a time, so they never build one large
# buffer of ciphertext (and the peer starts decrypting sooner).
WRITE_SLICE = 1 << 16
_LINGER = 0.25  # seconds a failed connection waits for the peer to read its alert


class _Sealed(Protocol):
    def data_to_send(self) -> bytes: ...


class _Session(Protocol):
    @property
    def peer(self) -> PeerIdentity: ...


class StreamSocket(abc.ABC):
    """A secure channel over a connected stream socket, which it owns."""

    _conn: _Sealed
    _nonblocking_hint = "use the asyncio interface for non-blocking I/O"

    def __init__(self, sock: socket.socket) -> None:
        if sock.type != socket.SOCK_STREAM:
            raise InvalidParameter("a secure channel runs over stream sockets only")
        self._sock = sock
        self._plaintext = bytearray()
        self._peer_closed = False
        self._closed = False
        self._state = threading.RLock()
        self._wire = threading.Lock()
        self._reading = threading.Lock()

    # -- what each protocol provides ------------------------------------------------------

    @abc.abstractmethod
    def recv(self, bufsize: int, flags: int = 0) -> bytes: ...

    @abc.abstractmethod
    def sendall(self, data: Buffer, flags: int = 0) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def session_info(self) -> _Session: ...

    # -- the wire -------------------------------------------------------------------------

    def _flush(self, wait: bool = True) -> None:
        """Send everything the connection has sealed, in order.

        Only the holder of ``_wire`` takes bytes from the connection and writes them.
        It lets go only after finding, under ``_state``, that nothing is left, so bytes
        sealed by a thread that could not get the wire are never stranded.  Readers
        pass ``wait=False``: a reader that waited for a writer blocked on a full socket
        could deadlock two peers that both write and read at once.
        """
        if self._wire.acquire(blocking=wait):
            self._drain_wire()

    def _drain_wire(self) -> None:
        """With ``_wire`` held: write what the connection has sealed until nothing is
        left, then let go of the wire (also when the write fails)."""
        try:
            while True:
                with self._state:
                    data = self._conn.data_to_send()
                    if not data:
                        self._wire.release()
                        return
                self._sock.sendall(data)
        except BaseException:
            self._wire.release()
            raise

    def _abort(self) -> None:
        """After a failure: give the peer our alert, then close without destroying it.

        Closing a TCP socket with unread data makes the kernel send a reset, which can
        overtake the alert just written; so the write side is shut first and what the
        peer still sends is read and dropped, for at most ``_LINGER`` seconds.
        """
        with contextlib.suppress(OSError):
            self._flush()
            self._sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _LINGER
            while (remaining := deadline - time.monotonic()) > 0:
                self._sock.settimeout(remaining)
                if not self._sock.recv(READ_SIZE):
                    break
        self._close_socket()

    def _close_socket(self) -> None:
        self._closed = True
        self._sock.close()

    # -- socket interface ---------------------------------------------------------------

    def recv_into(self, buffer: Buffer, nbytes: int = 0, flags: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        size = nbytes or len(view)
        data = self.recv(min(size, len(view)), flags)
        view[:len(data)] = data
        return len(data)

    def send(self, data: Buffer, flags: int = 0) -> int:
        """Sends all of ``data`` (records are sealed whole) and returns its size in bytes."""
        self.sendall(data, flags)
        return memoryview(data).nbytes

    def pending(self) -> int:
        """Plaintext bytes already decrypted and waiting to be read."""
        return len(self._plaintext)

    @property
    def peer_identity(self) -> PeerIdentity:
        return self.session_info().peer

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self._sock.gettimeout()

    def setblocking(self, flag: bool) -> None:
        if not flag:
            raise ValueError(f"a blocking secure socket needs blocking mode; "
                             f"{self._nonblocking_hint}")
        self._sock.setblocking(True)

    def fileno(self) -> int:
        return self._sock.fileno()

    def getpeername(self) -> Any:
        return self._sock.getpeername()

    def getsockname(self) -> Any:
        return self._sock.getsockname()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> StreamSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def makefile(self, mode: str = "r", buffering: int | None = None, *,
                 encoding: str | None = None, errors: str | None = None,
                 newline: str | None = None) -> Any:
        """A file object over the channel, as ``socket.makefile`` builds one."""
        if not set(mode) <= {"r", "w", "b"}:
            raise ValueError(f"invalid mode {mode!r} (only r, w, b)")
        reading, writing = "r" in mode, "w" in mode
        raw = _StreamSocketIO(self, reading, writing)
        if buffering is None or buffering < 0:
            buffering = io.DEFAULT_BUFFER_SIZE
        if buffering == 0:
            if "b" not in mode:
                raise ValueError("unbuffered streams must be binary")
            return raw
        buffered: Any
        if reading and writing:
            buffered = io.BufferedRWPair(raw, raw, buffering)
        elif reading:
            buffered = io.BufferedReader(raw, buffering)
        else:
            buffered = io.BufferedWriter(raw, buffering)
        if "b" in mode:
            return buffered
        text = io.TextIOWrapper(buffered, encoding, errors, newline)
        text.mode = mode  # type: ignore[misc]
        return text


class _StreamSocketIO(io.RawIOBase):
    """The raw stream under ``makefile``: reads and writes go through the secure socket."""

    def __init__(self, sock: StreamSocket, reading: bool, writing: bool) -> None:
        super().__init__()
        self._sock = sock
        self._reading = reading
        self._writing = writing

    def readable(self) -> bool:
        return self._reading

    def writable(self) -> bool:
        return self._writing

    def readinto(self, buffer: Buffer) -> int:
        return self._sock.recv_into(buffer)

    def write(self, data: Buffer) -> int:
        return self._sock.send(data)

    def fileno(self) -> int:
        return self._sock.fileno()
