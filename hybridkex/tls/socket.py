"""A blocking TLS 1.3 socket, the counterpart of :class:`hybridkex.transport.SecureSocket`.

It drives a sans-IO :class:`~hybridkex.tls.connection.TLSConnection` with a real
socket, with the same locking: ``_state`` guards the OpenSSL connection, ``_wire``
makes taking bytes from it and writing them to the socket one step (records reach the
wire in the order they were sealed), ``_reading`` admits one reader at a time.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from hybridkex.errors import HybridKexError, InvalidParameter, LocalProtocolError
from hybridkex.protocol.identity import PeerIdentity
from hybridkex.tls.connection import TLSConnection, TLSState
from hybridkex.tls.errors import TLSConnectionTruncated, TLSHandshakeTimeout
from hybridkex.tls.session import TLSSessionInfo

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from hybridkex.tls.context import TLSContext

__all__ = ["TLSSocket"]

_READ_SIZE = 1 << 16
_LINGER = 0.25  # seconds a failed connection waits for the peer to read its alert


class TLSSocket:
    """A TLS 1.3 channel over a connected stream socket; it owns the socket."""

    def __init__(self, context: TLSContext, sock: socket.socket, *, server_side: bool,
                 peer: str | None, handshake_timeout: float | None) -> None:
        if sock.type != socket.SOCK_STREAM:
            raise InvalidParameter("TLS runs over stream sockets only")
        self.context = context
        self.server_side = server_side
        self._sock = sock
        self._conn = context.new_connection(server_side, peer)
        self._handshake_timeout = handshake_timeout
        self._plaintext = bytearray()
        self._peer_closed = False
        self._closed = False
        self._state = threading.RLock()
        self._wire = threading.Lock()
        self._reading = threading.Lock()

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
                    data = self._sock.recv(_READ_SIZE)
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

    def _abort(self) -> None:
        """After a failure: give the peer our alert (if OpenSSL made one), then close
        without a reset overtaking it (see SecureSocket._abort)."""
        with contextlib.suppress(OSError):
            self._flush()
            self._sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _LINGER
            while (remaining := deadline - time.monotonic()) > 0:
                self._sock.settimeout(remaining)
                if not self._sock.recv(_READ_SIZE):
                    break
        self._close_socket()

    # -- plumbing -------------------------------------------------------------------------

    def _flush(self) -> None:
        with self._wire:
            with self._state:
                data = self._conn.data_to_send()
            if data:
                self._sock.sendall(data)

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
                self._flush()

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
                data = self._sock.recv(_READ_SIZE)
                with self._state:
                    self._conn.receive_data(data)
                self._pull()
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
            raise ValueError("flags are not supported on a TLS socket")
        self._check_usable()
        payload = bytes(data)
        with self._wire:
            with self._state:
                self._conn.send(payload)
                out = self._conn.data_to_send()
            self._sock.sendall(out)

    def send(self, data: Buffer, flags: int = 0) -> int:
        """Sends all of ``data`` and returns its length."""
        self.sendall(data, flags)
        return len(memoryview(data))

    def pending(self) -> int:
        """Plaintext bytes already decrypted and waiting to be read."""
        return len(self._plaintext)

    def session_info(self) -> TLSSessionInfo:
        return self._conn.session_info()

    @property
    def peer_identity(self) -> PeerIdentity:
        return self._conn.session_info().peer

    def export_keying_material(self, label: str | bytes, context: bytes, length: int) -> bytes:
        """The TLS 1.3 exporter (RFC 8446 section 7.5); equal on both ends."""
        with self._state:
            return self._conn.export_keying_material(label, context, length)

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self._sock.gettimeout()

    def setblocking(self, flag: bool) -> None:
        if not flag:
            raise ValueError("the blocking TLS socket needs blocking mode; "
                             "use hybridkex.tls.asyncio for non-blocking I/O")
        self._sock.setblocking(True)

    def fileno(self) -> int:
        return self._sock.fileno()

    def getpeername(self) -> Any:
        return self._sock.getpeername()

    def getsockname(self) -> Any:
        return self._sock.getsockname()

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

    def _close_socket(self) -> None:
        self._closed = True
        self._sock.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> TLSSocket:
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
        raw = _TLSSocketIO(self, reading, writing)
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


class _TLSSocketIO(io.RawIOBase):
    """The raw stream under ``makefile``: reads and writes go through the TLS socket."""

    def __init__(self, sock: TLSSocket, reading: bool, writing: bool) -> None:
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
