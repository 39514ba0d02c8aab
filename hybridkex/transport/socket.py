"""A blocking secure socket over HKX/1, shaped like ``ssl.SSLSocket``.

It drives a sans-IO :mod:`hybridkex.protocol` connection with a real socket; the
socket surface and the locking that keeps it usable from one reading and one writing
thread at once are :class:`~hybridkex.transport.stream.StreamSocket`'s.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import TYPE_CHECKING

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
    SessionInfo,
    State,
)
from hybridkex.protocol.record import MAX_RECORD, sealed_size
from hybridkex.transport.stream import READ_SIZE, StreamSocket

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from hybridkex.transport.context import Context

__all__ = ["SecureSocket", "next_read_size"]

# Bulk transfer goes through buffers of the socket's and the connection's own, made
# once and reused, so large slices cost no allocation, only fewer system calls: one
# write per MiB sent; reads ask for 256 KiB, and for twice as much after a read that
# filled what it asked, up to 1 MiB (docs/performance.md, Sockets).  A connection
# that carries little keeps a small buffer; a bulk transfer makes a quarter of the
# reads, its receiver spends 5-8 % less CPU per byte, and its throughput went from
# 1.41 to 1.67 times TLS's on two cores in the same runs.
SEAL_SLICE = 1 << 20  # plaintext sealed per write, at most
READ_INTO = 1 << 18  # bytes asked of the first read
READ_INTO_MAX = 1 << 20  # bytes asked of a read, at most


def next_read_size(size: int, count: int) -> int:
    """What the read after one that asked ``size`` and got ``count`` bytes asks for:
    twice as much if it came back full (the peer sends faster than one read takes),
    up to ``READ_INTO_MAX``; otherwise the same."""
    return size * 2 if count >= size and size < READ_INTO_MAX else size


class SecureSocket(StreamSocket):
    """An HKX/1 channel over a connected stream socket; it owns the socket."""

    def __init__(self, context: Context, sock: socket.socket, *, server_side: bool,
                 peer: str | None, handshake_timeout: float | None) -> None:
        super().__init__(sock)
        self.context = context
        self.server_side = server_side
        self._conn: Connection = context.new_connection(server_side, peer)
        self._handshake_timeout = handshake_timeout
        self._out: memoryview | None = None  # sendall seals into it; only the wire's holder
        self._read_size = READ_INTO  # what the next read asks for; only the reader's

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
                    self._feed(self._sock.recv(READ_SIZE))
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

    def _check_usable(self) -> None:
        if self._closed:
            raise OSError("the secure socket is closed")
        if not self._conn.handshake_complete:
            if self._conn.state is State.ERROR:
                raise LocalProtocolError("the connection has failed")
            self.do_handshake()

    # -- socket interface ---------------------------------------------------------------

    def _read_more(self) -> None:
        """One read from the socket, straight into the connection's receive buffer.

        Only the reader (holding ``_reading``) touches the receive buffer, so the read
        itself runs without ``_state``, and a writer can seal meanwhile."""
        size = self._read_size
        with self._state:
            view = self._conn.receive_buffer(size)
        try:
            with view:
                count = self._sock.recv_into(view, size)
        except ConnectionResetError as exc:
            raise ConnectionTruncated("the peer reset the connection") from exc
        self._read_size = next_read_size(size, count)
        with self._state:
            if count:
                self._conn.buffer_received(count)
            else:
                self._conn.receive_data(b"")

    def _open_into(self, out: memoryview) -> int:
        """Application data opened straight into ``out`` (see Connection.receive_into)."""
        try:
            with self._state:
                return self._conn.receive_into(out)
        except BaseException:
            with contextlib.suppress(OSError):
                self._flush(wait=False)  # the alert goes out before the error surfaces
            raise

    def _next_data(self) -> bytes | None:
        """Run the connection's events up to the next application data (returned), the
        peer's close_notify or a need for more bytes (None); send what it answers."""
        answered = False  # whether the connection may have queued something to send
        try:
            with self._state:
                while True:
                    event = self._conn.next_event()
                    if isinstance(event, DataReceived):
                        return event.data
                    if isinstance(event, NeedData):
                        return None
                    answered = True  # a KeyUpdate or QKD re-key may have been answered
                    if isinstance(event, ConnectionClosed):
                        self._peer_closed = True
                        return None
        except BaseException:
            answered = True  # the alert goes out before the error surfaces
            raise
        finally:
            if answered:  # never waiting for the wire: see StreamSocket._flush
                with contextlib.suppress(OSError):
                    self._flush(wait=False)

    def _take_plaintext(self, out: memoryview) -> int:
        count = min(len(out), len(self._plaintext))
        out[:count] = self._plaintext[:count]
        del self._plaintext[:count]
        return count

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
            while bufsize:
                if self._plaintext:
                    chunk = bytes(self._plaintext[:bufsize])
                    del self._plaintext[:bufsize]
                    return chunk
                if self._peer_closed:
                    break
                data = self._next_data()
                if data is None:
                    if not self._peer_closed:
                        self._read_more()
                    continue
                if not data:
                    continue  # an empty record (a peer may send one) is not the end of stream
                if len(data) <= bufsize:
                    return data  # a whole record's plaintext, as it was opened
                self._plaintext += memoryview(data)[bufsize:]
                return data[:bufsize]
            return b""

    def recv_into(self, buffer: Buffer, nbytes: int = 0, flags: int = 0) -> int:
        """Authenticated plaintext written into ``buffer``, whole records opened straight
        into it; returns the bytes written (0 after the peer's close_notify)."""
        if flags:
            raise ValueError("flags are not supported on a secure socket")
        if nbytes < 0:
            raise ValueError("negative buffer size")
        view = memoryview(buffer).cast("B")
        if view.readonly:
            raise TypeError("recv_into needs a writable buffer")
        if nbytes and nbytes < len(view):
            view = view[:nbytes]
        self._check_usable()
        with self._reading:
            while len(view):
                if self._plaintext:
                    return self._take_plaintext(view)
                if self._peer_closed:
                    break
                count = self._open_into(view)
                if count:
                    return count
                data = self._next_data()
                if data is not None:
                    count = min(len(data), len(view))
                    view[:count] = memoryview(data)[:count]
                    self._plaintext += memoryview(data)[count:]
                    return count
                if not self._peer_closed:
                    self._read_more()
            return 0

    def sendall(self, data: Buffer, flags: int = 0) -> None:
        """Seals ``data`` straight into a buffer of this socket's and writes it, a slice
        of at most ``SEAL_SLICE`` at a time (so the peer starts decrypting sooner)."""
        if flags:
            raise ValueError("flags are not supported on a secure socket")
        self._check_usable()
        view = memoryview(data).cast("B")
        self._wire.acquire()
        try:
            # sized for the largest write seen so far: small writes keep a small buffer
            size = sealed_size(min(len(view), SEAL_SLICE)) + MAX_RECORD
            if self._out is None or len(self._out) < size:
                self._out = memoryview(bytearray(size))
            out = self._out
            for start in range(0, len(view), SEAL_SLICE):
                chunk = view[start:start + SEAL_SLICE]
                while len(chunk):
                    with self._state:
                        queued = self._conn.data_to_send()  # sealed earlier: goes first
                        used, written = self._conn.send_into(chunk, out)
                    if queued:
                        self._sock.sendall(queued)
                    self._sock.sendall(out[:written])
                    chunk = chunk[used:]
        except BaseException:
            self._wire.release()
            raise
        self._drain_wire()

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

    @property
    def pool_keys_spent(self) -> int:
        """Pool keys the handshake consumed, also after it failed (never returned)."""
        return self._conn.pool_keys_spent

    def session_info(self) -> SessionInfo:
        return self._conn.session_info()

    def export_keying_material(self, label: str, context: bytes, length: int) -> bytes:
        return self._conn.export_keying_material(label, context, length)

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

    def __enter__(self) -> SecureSocket:
        return self

    _nonblocking_hint = "use hybridkex.asyncio for non-blocking I/O"
