"""A blocking TLS 1.3 socket, the counterpart of :class:`hybridkex.transport.SecureSocket`.

It drives a sans-IO :class:`~hybridkex.tls.connection.TLSConnection` with a real
socket, with the same locking: ``_state`` guards the OpenSSL connection, ``_wire``
makes taking bytes from it and writing them to the socket one step (records reach the
wire in the order they were sealed), ``_reading`` admits one reader at a time.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import TYPE_CHECKING

from hybridkex.errors import HybridKexError, LocalProtocolError
from hybridkex.tls.connection import TLSConnection, TLSState
from hybridkex.tls.errors import TLSConnectionTruncated, TLSHandshakeTimeout
from hybridkex.tls.session import TLSSessionInfo
from hybridkex.transport.stream import READ_SIZE, WRITE_SLICE, StreamSocket

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from hybridkex.tls.context import TLSContext

__all__ = ["TLSSocket"]


class TLSSocket(StreamSocket):
    """A TLS 1.3 channel over a connected stream socket; it owns the socket."""

    def __init__(self, context: TLSContext, sock: socket.socket, *, server_side: bool,
                 peer: str | None, handshake_timeout: float | None) -> None:
        super().__init__(sock)
        self.context = context
        self.server_side = server_side
        self._conn: TLSConnection = context.new_connection(server_side, peer)
        self._handshake_timeout = handshake_timeout

    def __repr__(self) -> str:
        return f"<hybridkex.tls.TLSSocket {self._conn!r} fd={self._sock.fileno()}>"

    @property
    def connection(self) -> TLSConnection:
        return self._conn

    # -- handshake ------------------------------------------------------------------------

    def do_handshake(self) -> None:
        """Run the handshake to completion within the time limit, or raise a typed error
        (TLSHandshakeTimeout, a TLSProtocolError, QKDKeyUnavailable) with the socket
        closed."""
        if self._conn.handshake_complete:
            return
        deadline = (None if self._handshake_timeout is None
                    else time.monotonic() + self._handshake_timeout)
        previous = self._sock.gettimeout()
        try:
            with self._reading:
                while True:
                    with self._state:
                        done = self._conn.do_handshake()
                    self._flush()
                    if done:
                        break
                    if deadline is not None:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise TimeoutError
                        self._sock.settimeout(remaining)
                    data = self._sock.recv(READ_SIZE)
                    with self._state:
                        self._conn.receive_data(data)
        except TimeoutError:
            self._abort()
            raise TLSHandshakeTimeout(
                f"the TLS handshake did not complete within {self._handshake_timeout} s"
            ) from None
        except (ConnectionResetError, BrokenPipeError) as exc:
            self._abort()
            raise TLSConnectionTruncated(
                "the peer closed the connection during the TLS handshake") from exc
        except BaseException:
            self._abort()
            raise
        finally:
            if not self._closed:
                self._sock.settimeout(previous)

    def _pull(self) -> None:
        """Move decrypted plaintext into the buffer; answer what needs an answer."""
        try:
            with self._state:
                data, closed = self._conn.read()
            self._plaintext += data
            if closed:
                self._peer_closed = True
        finally:
            with contextlib.suppress(OSError):
                self._flush(wait=False)  # a reader never waits for the wire

    def _check_usable(self) -> None:
        if self._closed:
            raise OSError("the TLS socket is closed")
        if not self._conn.handshake_complete:
            if self._conn.state is TLSState.ERROR:
                raise LocalProtocolError("the TLS connection has failed")
            self.do_handshake()

    # -- socket interface -----------------------------------------------------------------

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """Up to ``bufsize`` bytes of plaintext; b"" after the peer's close_notify.  A
        transport that ends without close_notify raises TLSConnectionTruncated."""
        if flags:
            raise ValueError("flags are not supported on a TLS socket")
        if bufsize < 0:
            raise ValueError("negative buffer size")
        self._check_usable()
        with self._reading:
            if bufsize and not self._plaintext and not self._peer_closed:
                self._pull()
            while bufsize and not self._plaintext and not self._peer_closed:
                try:
                    data = self._sock.recv(READ_SIZE)
                except ConnectionResetError as exc:
                    raise TLSConnectionTruncated("the peer reset the connection") from exc
                with self._state:
                    self._conn.receive_data(data)
                self._pull()
            chunk = bytes(self._plaintext[:bufsize])
            del self._plaintext[:bufsize]
            return chunk

    def sendall(self, data: Buffer, flags: int = 0) -> None:
        if flags:
            raise ValueError("flags are not supported on a TLS socket")
        self._check_usable()
        view = memoryview(data).cast("B")
        for start in range(0, len(view), WRITE_SLICE):
            with self._state:
                self._conn.send(bytes(view[start:start + WRITE_SLICE]))
            self._flush()

    @property
    def pool_keys_spent(self) -> int:
        """Pool keys the handshake consumed, also after it failed (never returned)."""
        return self._conn.pool_keys_spent

    def session_info(self) -> TLSSessionInfo:
        return self._conn.session_info()

    def export_keying_material(self, label: str | bytes, context: bytes, length: int) -> bytes:
        """The TLS 1.3 exporter (RFC 8446 section 7.5); equal on both ends."""
        with self._state:
            return self._conn.export_keying_material(label, context, length)

    def shutdown(self, how: int) -> None:
        """SHUT_WR / SHUT_RDWR send close_notify first, so the peer sees a clean end."""
        if how in (socket.SHUT_WR, socket.SHUT_RDWR) and self._conn.state is TLSState.OPEN:
            with self._state:
                self._conn.close()
            self._flush()
        self._sock.shutdown(how)

    def close(self) -> None:
        """Send close_notify (if the session is up) and close the socket."""
        if self._closed:
            return
        if self._conn.state is TLSState.ERROR:
            self._abort()
            return
        if self._conn.state is TLSState.OPEN:
            try:
                with self._state:
                    self._conn.close()
                self._flush()
            except (OSError, HybridKexError):
                pass
        self._close_socket()

    def __enter__(self) -> TLSSocket:
        return self

    _nonblocking_hint = "use hybridkex.tls.asyncio for non-blocking I/O"
