"""A blocking secure socket over HKX/1, shaped like ``ssl.SSLSocket``.

It drives a sans-IO :mod:`hybridkex.protocol` connection with a real socket.  Two
locks keep it usable from one reading and one writing thread at once (as sockets
commonly are): ``_state`` guards the connection object, and ``_wire`` makes taking
bytes from the connection and writing them to the socket one step, so records
reach the wire in the order they were sealed even when the reader answers a
KeyUpdate while the writer is sending.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from hybridkex.errors import (
    ConnectionTruncated,
    HandshakeTimeout,
    HybridKexError,
    LocalProtocolError,
)
from hybridkex.protocol import (
    ClientConnection,
    Connection,
    ConnectionClosed,
    DataReceived,
    NeedData,
    PeerIdentity,
    SessionInfo,
    State,
)

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from hybridkex.transport.context import Context

__all__ = ["SecureSocket"]

_READ_SIZE = 1 << 16
_WRITE_SLICE = 1 << 16
_LINGER = 0.25  # seconds a failed connection waits for the peer to read its alert


class SecureSocket:
    """An HKX/1 channel over a connected stream socket; it owns the socket."""

    def __init__(self, context: Context, sock: socket.socket, *, server_side: bool,
                 peer: str | None, handshake_timeout: float | None) -> None:
        if sock.type != socket.SOCK_STREAM:
            raise ValueError("HKX/1 runs over stream sockets only")
        self.context = context
        self.server_side = server_side
        self._sock = sock
        self._conn: Connection = context.new_connection(server_side, peer)
        self._handshake_timeout = handshake_timeout
        self._plaintext = bytearray()
        self._peer_closed = False
        self._closed = False
        self._state = threading.RLock()
        self._wire = threading.Lock()
        self._reading = threading.Lock()

    def __repr__(self) -> str:
        return f"<hybridkex.SecureSocket {self._conn!r} fd={self._sock.fileno()}>"

    # -- handshake ------------------------------------------------------------------------

    def do_handshake(self) -> None:
        """Run the handshake to completion within the handshake time limit, or raise a
        typed error (HandshakeTimeout, a ProtocolError) with the socket closed."""
        if self._conn.handshake_complete:
            return
        deadline = (None if self._handshake_timeout is None
                    else time.monotonic() + self._handshake_timeout)
        previous = self._sock.gettimeout()
        try:
            with self._reading:
                if isinstance(self._conn, ClientConnection) and self._conn.state is State.START:
                    with self._state:
                        self._conn.start_handshake()
                while not self._conn.handshake_complete:
                    self._flush()
                    if deadline is not None:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise TimeoutError
                        self._sock.settimeout(remaining)
                    self._feed(self._sock.recv(_READ_SIZE))
                self._flush()
        except TimeoutError:
            self._abort()
            raise HandshakeTimeout(
                f"the handshake did not complete within {self._handshake_timeout} s") from None
        except (ConnectionResetError, BrokenPipeError) as exc:
            self._abort()
            raise ConnectionTruncated("the peer closed the connection during the handshake"
                                      ) from exc
        except BaseException:
            self._abort()
            raise
        finally:
            if not self._closed:
                self._sock.settimeout(previous)

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
                if not self._sock.recv(_READ_SIZE):
                    break
        self._close_socket()

    # -- plumbing -----------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        """Give the connection bytes from the socket (``b""`` at end of file); collect
        plaintext; send whatever it answers (alerts, KeyUpdate, QkdRekeyAck)."""
        try:
            with self._state:
                self._conn.receive_data(data)
                while True:
                    event = self._conn.next_event()
                    if isinstance(event, NeedData):
                        break
                    if isinstance(event, DataReceived):
                        self._plaintext += event.data
                    elif isinstance(event, ConnectionClosed):
                        self._peer_closed = True
                        break
        finally:
            # Answers, and after a failure the alert, go out before the error surfaces;
            # but a reader never waits for the wire: if a writer holds it (perhaps blocked
            # until the peer reads), that writer sends these bytes too.  Waiting here
            # could deadlock two peers that both write and read at once.
            with contextlib.suppress(OSError):
                self._flush(wait=False)

    def _flush(self, wait: bool = True) -> None:
        """Send everything the connection has sealed, in order.

        Bytes are taken from the connection and written only by the holder of
        ``_wire``.  The holder lets go of it only after finding, under ``_state``, that
        nothing is left, so bytes sealed by a thread that could not get the wire are
        never stranded.
        """
        if not self._wire.acquire(blocking=wait):
            return
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

    def _check_usable(self) -> None:
        if self._closed:
            raise OSError("the secure socket is closed")
        if not self._conn.handshake_complete:
            if self._conn.state is State.ERROR:
                raise LocalProtocolError("the connection has failed")
            self.do_handshake()

    # -- socket interface ---------------------------------------------------------------

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """Up to ``bufsize`` bytes of authenticated plaintext; b"" after the peer's
        close_notify.  A transport that ends without close_notify raises
        ConnectionTruncated rather than looking like a clean end."""
        if flags:
            raise ValueError("flags are not supported on a secure socket")
        if bufsize < 0:
            raise ValueError("negative buffer size")
        self._check_usable()
        with self._reading:
            while not self._plaintext and not self._peer_closed and bufsize:
                try:
                    data = self._sock.recv(_READ_SIZE)
                except ConnectionResetError as exc:
                    raise ConnectionTruncated("the peer reset the connection") from exc
                self._feed(data)
            chunk = bytes(self._plaintext[:bufsize])
            del self._plaintext[:bufsize]
            return chunk

    def recv_into(self, buffer: Buffer, nbytes: int = 0, flags: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        size = nbytes or len(view)
        data = self.recv(min(size, len(view)), flags)
        view[:len(data)] = data
        return len(data)

    def sendall(self, data: Buffer, flags: int = 0) -> None:
        if flags:
            raise ValueError("flags are not supported on a secure socket")
        self._check_usable()
        view = memoryview(data).cast("B")
        # Sealed and written a slice at a time, so a large write never builds one large
        # buffer of ciphertext (and the peer starts decrypting sooner).
        for start in range(0, len(view), _WRITE_SLICE):
            with self._state:
                self._conn.send(bytes(view[start:start + _WRITE_SLICE]))
            self._flush()

    def send(self, data: Buffer, flags: int = 0) -> int:
        """Sends all of ``data`` (records are sealed whole) and returns its length."""
        self.sendall(data, flags)
        return memoryview(data).nbytes

    def pending(self) -> int:
        """Plaintext bytes already decrypted and waiting to be read."""
        return len(self._plaintext)

    def key_update(self, request_peer: bool = True) -> None:
        self._check_usable()
        with self._state:
            self._conn.key_update(request_peer)
        self._flush()

    def rekey_qkd(self) -> tuple[str, ...]:
        """Mix a fresh QKD key into the traffic secrets (see Connection.rekey_qkd)."""
        self._check_usable()
        with self._state:
            ids = self._conn.rekey_qkd()
        self._flush()
        return ids

    def session_info(self) -> SessionInfo:
        return self._conn.session_info()

    @property
    def peer_identity(self) -> PeerIdentity:
        return self._conn.session_info().peer

    def export_keying_material(self, label: str, context: bytes, length: int) -> bytes:
        return self._conn.export_keying_material(label, context, length)

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self._sock.gettimeout()

    def setblocking(self, flag: bool) -> None:
        if not flag:
            raise ValueError("the blocking secure socket needs blocking mode; "
                             "use hybridkex.asyncio for non-blocking I/O")
        self._sock.setblocking(True)

    def fileno(self) -> int:
        return self._sock.fileno()

    def getpeername(self) -> Any:
        return self._sock.getpeername()

    def getsockname(self) -> Any:
        return self._sock.getsockname()

    def shutdown(self, how: int) -> None:
        """SHUT_WR / SHUT_RDWR send close_notify first, so the peer sees a clean end."""
        if how in (socket.SHUT_WR, socket.SHUT_RDWR) and self._conn.handshake_complete:
            with self._state:
                self._conn.close()
            self._flush()
        self._sock.shutdown(how)

    def close(self) -> None:
        """Send close_notify (if the session is up) and close the socket."""
        if self._closed:
            return
        if self._conn.state is State.ERROR:
            self._abort()
            return
        if self._conn.handshake_complete:
            try:
                with self._state:
                    self._conn.close()
                self._flush()
            except (OSError, HybridKexError):
                pass
        self._close_socket()

    def _close_socket(self) -> None:
        self._closed = True
        self._sock.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> SecureSocket:
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
        raw = _SecureSocketIO(self, reading, writing)
        if buffering is None:
            buffering = -1
        if buffering < 0:
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


class _SecureSocketIO(io.RawIOBase):
    """The raw stream under ``makefile``: reads and writes go through the secure socket."""

    def __init__(self, sock: SecureSocket, reading: bool, writing: bool) -> None:
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
