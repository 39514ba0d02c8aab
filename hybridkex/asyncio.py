"""HKX/1 over asyncio streams: ``open_connection`` and ``start_server``, as in asyncio.

The application gets a plain :class:`asyncio.StreamReader` and
:class:`asyncio.StreamWriter`.  Underneath, :class:`SecureProtocol` drives a sans-IO
:mod:`hybridkex.protocol` connection from the raw transport's callbacks and hands
plaintext to a :class:`asyncio.StreamReaderProtocol`; :class:`SecureTransport` is the
transport the writer sees, sealing every write into records.

The handshake completes before ``open_connection`` returns or the server's callback
runs, within a time limit (``HandshakeTimeout``).  The key source is called from the
event loop thread, synchronously (an in-process or SQLite store answers in
microseconds; a KME over the network would stall the loop while it answers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from hybridkex.errors import ConnectionTruncated, HandshakeTimeout, HybridKexError
from hybridkex.protocol import (
    ClientConnection,
    Connection,
    ConnectionClosed,
    DataReceived,
    HandshakeComplete,
    NeedData,
)
from hybridkex.transport.context import Context

__all__ = ["SecureProtocol", "SecureTransport", "open_connection", "start_server"]

ClientConnectedCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                   Awaitable[None] | None]


class SecureTransport(asyncio.Transport):
    """What the application's StreamWriter writes to: records out, close_notify on close."""

    def __init__(self, protocol: SecureProtocol) -> None:
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

    def key_update(self, request_peer: bool = True) -> None:
        """KeyUpdate (see Connection.key_update): ``writer.transport.key_update()``."""
        self._protocol.key_update(request_peer)

    def rekey_qkd(self) -> tuple[str, ...]:
        """QKD re-key (see Connection.rekey_qkd): ``writer.transport.rekey_qkd()``."""
        return self._protocol.rekey_qkd()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Adds ``session_info`` and ``peer_identity`` to the raw transport's extras."""
        if name == "session_info":
            return self._protocol.connection.session_info()
        if name == "peer_identity":
            return self._protocol.connection.session_info().peer
        if name == "hybridkex_connection":
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


class SecureProtocol(asyncio.Protocol):
    """Raw bytes in and out; plaintext to ``app`` once the handshake has completed."""

    def __init__(self, connection: Connection, app: asyncio.StreamReaderProtocol,
                 handshake_timeout: float | None,
                 on_handshake: Callable[[SecureProtocol], None] | None = None) -> None:
        self.connection = connection
        self.app = app
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._timeout = handshake_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._on_handshake = on_handshake
        self._raw: asyncio.Transport | None = None
        self.transport = SecureTransport(self)
        self._app_connected = False
        self._closing = False
        self._peer_closed = False

    @property
    def has_raw(self) -> bool:
        return self._raw is not None

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
        if isinstance(self.connection, ClientConnection):
            self._run(self.connection.start_handshake)

    def data_received(self, data: bytes) -> None:
        self._run(lambda: self.connection.receive_data(data))

    def eof_received(self) -> bool:
        self._run(lambda: self.connection.receive_data(b""))
        # After the peer's close_notify its FIN is a clean half-close: keep the transport
        # open so this side can still answer and send its own close_notify.
        return self._peer_closed

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._settle(ConnectionTruncated("the connection was lost during the handshake"))
        if self._app_connected:
            self.app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._app_connected:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self._app_connected:
            self.app.resume_writing()

    # -- driving the connection --------------------------------------------------------

    def _run(self, step: Callable[[], None]) -> None:
        """One step, then every event it made possible, then whatever must be sent."""
        try:
            step()
            while True:
                event = self.connection.next_event()
                if isinstance(event, NeedData):
                    break
                if isinstance(event, HandshakeComplete):
                    self._handshake_complete()
                elif isinstance(event, DataReceived):
                    self.app.data_received(event.data)
                elif isinstance(event, ConnectionClosed):
                    if not self._peer_closed:
                        self._peer_closed = True
                        self.app.eof_received()
                    break
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
        """Fail the handshake future if it is still open.  Marked as retrieved: a server
        has nobody awaiting it, and a client's opener re-raises it anyway."""
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
        if self._settle(HandshakeTimeout(
                f"the handshake did not complete within {self._timeout} s")):
            self.raw.abort()

    def _flush(self) -> None:
        data = self.connection.data_to_send()
        if data and self._raw is not None and not self._raw.is_closing():
            self._raw.write(data)

    # -- what SecureTransport asks for --------------------------------------------------

    def send(self, data: bytes) -> None:
        self.connection.send(data)
        self._flush()

    def key_update(self, request_peer: bool = True) -> None:
        self.connection.key_update(request_peer)
        self._flush()

    def rekey_qkd(self) -> tuple[str, ...]:
        ids = self.connection.rekey_qkd()
        self._flush()
        return ids

    def close_notify(self) -> None:
        if not self._closing and self.connection.handshake_complete:
            self._closing = True
            self.connection.close()
            self._flush()


def _stream_pair(protocol: SecureProtocol, reader: asyncio.StreamReader
                 ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    writer = asyncio.StreamWriter(protocol.transport, protocol.app, reader,
                                  asyncio.get_running_loop())
    return reader, writer


async def open_connection(host: str, port: int, *,
                          context: Context, peer: str, handshake_timeout: float | None = None,
                          limit: int = 2**16, **kwargs: Any
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``host:port``, run the HKX/1 handshake as a client of site ``peer``, and
    return the streams.  Raises HandshakeTimeout or a ProtocolError (connection closed)
    if the handshake fails; cancelling the call closes the connection."""
    loop = asyncio.get_running_loop()
    timeout = context.handshake_timeout if handshake_timeout is None else handshake_timeout
    reader = asyncio.StreamReader(limit=limit)
    connection = context.new_connection(False, peer)
    app = asyncio.StreamReaderProtocol(reader)
    raw, protocol = await loop.create_connection(
        lambda: SecureProtocol(connection, app, timeout), host, port, **kwargs)
    try:
        await protocol.handshake
    except BaseException:
        raw.abort()
        raise
    return _stream_pair(protocol, reader)


async def start_server(client_connected_cb: ClientConnectedCallback,
                       host: str | None = None, port: int | None = None, *,
                       context: Context, handshake_timeout: float | None = None,
                       limit: int = 2**16,
                       handshake_failed_cb: Callable[[Exception, Any], None] | None = None,
                       **kwargs: Any) -> asyncio.Server:
    """Serve HKX/1 on ``host:port``.  ``client_connected_cb(reader, writer)`` runs for each
    client whose handshake completed; a failed handshake closes that connection and is
    never seen by that callback, but ``handshake_failed_cb(error, peername)``, if given,
    is told of it (the typed error: a ProtocolError, HandshakeTimeout,
    ConnectionTruncated), so a server can log refused clients."""
    loop = asyncio.get_running_loop()
    timeout = context.handshake_timeout if handshake_timeout is None else handshake_timeout
    tasks: set[asyncio.Task[None]] = set()

    def factory() -> SecureProtocol:
        reader = asyncio.StreamReader(limit=limit)
        app = asyncio.StreamReaderProtocol(reader)

        def on_handshake(protocol: SecureProtocol) -> None:
            result = client_connected_cb(*_stream_pair(protocol, reader))
            if asyncio.iscoroutine(result):
                task = loop.create_task(result)
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        protocol = SecureProtocol(context.new_connection(True, None), app, timeout,
                                  on_handshake)
        if handshake_failed_cb is not None:
            callback = handshake_failed_cb

            def report(future: asyncio.Future[None]) -> None:
                exc = None if future.cancelled() else future.exception()
                if isinstance(exc, Exception):
                    peer = protocol.raw.get_extra_info("peername") if protocol.has_raw else None
                    callback(exc, peer)

            protocol.handshake.add_done_callback(report)
        return protocol

    return await loop.create_server(factory, host, port, **kwargs)
