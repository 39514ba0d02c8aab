"""TLS 1.3 over asyncio streams: ``open_connection`` and ``start_server``, as
:mod:`hybridkex.asyncio` offers them for HKX/1.

The application gets a plain :class:`asyncio.StreamReader` and
:class:`asyncio.StreamWriter`.  Underneath, :class:`TLSProtocol` drives a sans-IO
:class:`~hybridkex.tls.connection.TLSConnection` (OpenSSL over memory BIOs) from the
raw transport's callbacks; :class:`TLSTransport` is the transport the writer sees.
(asyncio's own ``ssl=`` cannot be used: Python's ``ssl`` module can set neither the
hybrid groups nor an external PSK, and does not load ML-DSA keys.)

The handshake completes before ``open_connection`` returns or the server's callback
runs, within a time limit (TLSHandshakeTimeout).  The key source (qkd-psk mode) is
called from the event loop thread, synchronously, as in :mod:`hybridkex.asyncio`.
``writer.get_extra_info("session_info")`` is the :class:`TLSSessionInfo`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from hybridkex.errors import HybridKexError
from hybridkex.tls.connection import TLSConnection
from hybridkex.tls.context import TLSContext
from hybridkex.tls.errors import TLSConnectionTruncated, TLSHandshakeTimeout

__all__ = ["TLSProtocol", "TLSTransport", "open_connection", "start_server"]

ClientConnectedCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                   Awaitable[None] | None]


class TLSTransport(asyncio.Transport):
    """What the application's StreamWriter writes to: records out, close_notify on close."""

    def __init__(self, protocol: TLSProtocol) -> None:
        super().__init__()
        self._protocol = protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._protocol.send(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """close_notify: the peer reads a clean end; this side can still read."""
        self._protocol.close_notify()

    def close(self) -> None:
        self._protocol.close_notify()
        self._protocol.raw.close()

    def is_closing(self) -> bool:
        return self._protocol.raw.is_closing()

    def abort(self) -> None:
        self._protocol.raw.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Adds ``session_info``, ``peer_identity`` and ``tls_connection`` to the raw
        transport's extras."""
        if name == "session_info":
            return self._protocol.connection.session_info()
        if name == "peer_identity":
            return self._protocol.connection.session_info().peer
        if name == "tls_connection":
            return self._protocol.connection
        return self._protocol.raw.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._protocol.raw.pause_reading()

    def resume_reading(self) -> None:
        self._protocol.raw.resume_reading()

    def is_reading(self) -> bool:
        return bool(self._protocol.raw.is_reading())

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._protocol.raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return int(self._protocol.raw.get_write_buffer_size())


class TLSProtocol(asyncio.Protocol):
    """Raw bytes in and out; plaintext to ``app`` once the handshake has completed."""

    def __init__(self, connection: TLSConnection, app: asyncio.StreamReaderProtocol,
                 handshake_timeout: float | None,
                 on_handshake: Callable[[TLSProtocol], None] | None = None) -> None:
        self.connection = connection
        self.app = app
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._timeout = handshake_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._on_handshake = on_handshake
        self._raw: asyncio.Transport | None = None
        self.transport = TLSTransport(self)
        self._app_connected = False
        self._closing = False

    @property
    def raw(self) -> asyncio.Transport:
        assert self._raw is not None
        return self._raw

    # -- raw transport callbacks --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._raw = transport
        if self._timeout is not None:
            self._timer = asyncio.get_running_loop().call_later(
                self._timeout, self._handshake_timed_out)
        if not self.connection.server_side:
            self._run(None)

    def data_received(self, data: bytes) -> None:
        self._run(data)

    def eof_received(self) -> bool:
        self._run(b"")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._settle(TLSConnectionTruncated("the connection was lost during the TLS handshake"))
        if self._app_connected:
            self.app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._app_connected:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self._app_connected:
            self.app.resume_writing()

    # -- driving the connection --------------------------------------------------------

    def _run(self, data: bytes | None) -> None:
        """Feed ``data`` (None: nothing, b"": end of file), advance the handshake, hand
        out plaintext, then send whatever OpenSSL queued."""
        conn = self.connection
        try:
            if data is not None:
                conn.receive_data(data)
            if not conn.handshake_complete and conn.do_handshake():
                self._flush()
                self._handshake_complete()
            if conn.handshake_complete:
                plaintext, closed = conn.read()
                if plaintext:
                    self.app.data_received(plaintext)
                if closed:
                    self.app.eof_received()
        except HybridKexError as exc:
            self._flush()
            self._fail(exc)
            return
        self._flush()

    def _handshake_complete(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._app_connected = True
        self.app.connection_made(self.transport)
        if not self.handshake.done():
            self.handshake.set_result(None)
        if self._on_handshake is not None:
            self._on_handshake(self)

    def _settle(self, exc: Exception) -> bool:
        """Fail the handshake future if it is still open (marked as retrieved: a server
        has nobody awaiting it, and a client's opener re-raises it anyway)."""
        if self.handshake.done():
            return False
        self.handshake.set_exception(exc)
        self.handshake.exception()
        return True

    def _fail(self, exc: Exception) -> None:
        if not self._settle(exc) and self._app_connected:
            self.app.connection_lost(exc)
            self._app_connected = False
        self.raw.close()

    def _handshake_timed_out(self) -> None:
        if self._settle(TLSHandshakeTimeout(
                f"the TLS handshake did not complete within {self._timeout} s")):
            self.raw.abort()

    def _flush(self) -> None:
        data = self.connection.data_to_send()
        if data and self._raw is not None and not self._raw.is_closing():
            self._raw.write(data)

    # -- what TLSTransport asks for -----------------------------------------------------

    def send(self, data: bytes) -> None:
        self.connection.send(data)
        self._flush()

    def close_notify(self) -> None:
        if not self._closing and self.connection.handshake_complete:
            self._closing = True
            self.connection.close()
            self._flush()


def _stream_pair(protocol: TLSProtocol, reader: asyncio.StreamReader
                 ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    writer = asyncio.StreamWriter(protocol.transport, protocol.app, reader,
                                  asyncio.get_running_loop())
    return reader, writer


async def open_connection(host: str, port: int, *,
                          context: TLSContext, peer: str,
                          handshake_timeout: float | None = None, limit: int = 2**16,
                          **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``host:port``, run the TLS handshake as a client of site ``peer``, and
    return the streams.  Raises TLSHandshakeTimeout or a TLSProtocolError (connection
    closed) if the handshake fails; cancelling the call closes the connection."""
    loop = asyncio.get_running_loop()
    timeout = context.handshake_timeout if handshake_timeout is None else handshake_timeout
    reader = asyncio.StreamReader(limit=limit)
    connection = context.new_connection(False, peer)
    app = asyncio.StreamReaderProtocol(reader)
    raw, protocol = await loop.create_connection(
        lambda: TLSProtocol(connection, app, timeout), host, port, **kwargs)
    try:
        await protocol.handshake
    except BaseException:
        raw.abort()
        raise
    return _stream_pair(protocol, reader)


async def start_server(client_connected_cb: ClientConnectedCallback,
                       host: str | None = None, port: int | None = None, *,
                       context: TLSContext, peer: str | None = None,
                       handshake_timeout: float | None = None, limit: int = 2**16,
                       **kwargs: Any) -> asyncio.Server:
    """Serve TLS on ``host:port``.  ``client_connected_cb(reader, writer)`` runs for each
    client whose handshake completed; a failed handshake closes that connection and is
    never seen by the callback.  ``peer`` restricts clients to that one site (see
    :meth:`TLSContext.new_connection`)."""
    loop = asyncio.get_running_loop()
    timeout = context.handshake_timeout if handshake_timeout is None else handshake_timeout
    context.new_connection(True, peer)  # a misconfigured server fails here, not per client
    tasks: set[asyncio.Task[None]] = set()

    def factory() -> TLSProtocol:
        reader = asyncio.StreamReader(limit=limit)
        app = asyncio.StreamReaderProtocol(reader)

        def on_handshake(protocol: TLSProtocol) -> None:
            result = client_connected_cb(*_stream_pair(protocol, reader))
            if asyncio.iscoroutine(result):
                task = loop.create_task(result)
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        return TLSProtocol(context.new_connection(True, peer), app, timeout, on_handshake)

    return await loop.create_server(factory, host, port, **kwargs)
