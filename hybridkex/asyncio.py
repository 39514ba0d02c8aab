"""HKX/1 over asyncio streams: ``open_connection`` and ``start_server``, as in asyncio.

The application gets a plain :class:`asyncio.StreamReader` and
:class:`asyncio.StreamWriter`.  Underneath, :class:`SecureProtocol` drives a sans-IO
:mod:`hybridkex.protocol` connection from the raw transport's callbacks and hands
plaintext to a :class:`asyncio.StreamReaderProtocol`; :class:`SecureTransport` is the
transport the writer sees, sealing every write into records.

The handshake completes before ``open_connection`` returns or the server's callback
runs, within a time limit (``HandshakeTimeout``).  The key source never blocks the
event loop: the connection asks for its keys (``QKDKeysNeeded``), and the protocol
awaits an :class:`~hybridkex.keydelivery.source.AsyncKeySource` or runs any other
source in an executor thread (``key_executor``, default the shared pool of
:func:`~hybridkex.keydelivery.request.key_source_executor`), serving other
connections meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any

from hybridkex.errors import ConnectionTruncated, HandshakeTimeout, HybridKexError
from hybridkex.keydelivery.source import AsyncKeySource, KeySource
from hybridkex.protocol import (
    ClientConnection,
    Connection,
    ConnectionClosed,
    DataReceived,
    HandshakeComplete,
    NeedData,
    QKDKeysNeeded,
)
from hybridkex.transport.aio import (
    ClientConnectedCallback,
    DrivingProtocol,
    RecordTransport,
    open_streams,
    serve_streams,
)
from hybridkex.transport.context import Context

__all__ = ["ClientConnectedCallback", "SecureProtocol", "SecureTransport", "open_connection",
           "start_server"]


class SecureTransport(RecordTransport):
    """The HKX/1 transport the application writes to; it can also re-key."""

    _protocol: SecureProtocol

    def key_update(self, request_peer: bool = True) -> None:
        """KeyUpdate (see Connection.key_update): ``writer.transport.key_update()``."""
        self._protocol.key_update(request_peer)

    def rekey_qkd(self) -> tuple[str, ...]:
        """QKD re-key (see Connection.rekey_qkd): ``writer.transport.rekey_qkd()``.  The
        key is taken here, in the loop's thread; ``await rekey_qkd_async()`` takes it
        without blocking the loop."""
        return self._protocol.rekey_qkd()

    async def rekey_qkd_async(self) -> tuple[str, ...]:
        """QKD re-key with the key taken off the event loop (as handshakes take theirs)."""
        return await self._protocol.rekey_qkd_async()


class SecureProtocol(DrivingProtocol):
    """Drives an HKX/1 :class:`~hybridkex.protocol.Connection`."""

    connection: Connection
    transport_class = SecureTransport

    def _start(self) -> None:
        if isinstance(self.connection, ClientConnection):
            self.connection.start_handshake()

    def _step(self, data: bytes | None) -> None:
        if data is not None:
            self.connection.receive_data(data)
        # The plaintext of consecutive records goes to the application in one piece:
        # one call (and, relayed, one write to a socket) per step, not one per record.
        plaintext: list[bytes] = []
        try:
            while True:
                event = self.connection.next_event()
                if isinstance(event, DataReceived):
                    plaintext.append(event.data)
                    continue
                if plaintext:
                    self.app.data_received(b"".join(plaintext))
                    plaintext = []
                if isinstance(event, NeedData | QKDKeysNeeded):
                    return  # QKDKeysNeeded: _run fetches the keys, then steps again
                if isinstance(event, HandshakeComplete):
                    self._handshake_complete()
                elif isinstance(event, ConnectionClosed):
                    self._peer_closed_cleanly()
                    return
        finally:
            if plaintext:  # authenticated before the failure: delivered, as before it
                self.app.data_received(b"".join(plaintext))

    def _truncated(self) -> HybridKexError:
        return ConnectionTruncated("the connection was lost during the handshake")

    def _timed_out(self) -> HybridKexError:
        return HandshakeTimeout(f"the handshake did not complete within {self._timeout} s")

    def extra_info(self, name: str) -> tuple[bool, Any]:
        return (True, self.connection) if name == "hybridkex_connection" else (False, None)

    @property
    def key_source(self) -> KeySource | AsyncKeySource | None:
        return self.connection.config.key_source

    def key_update(self, request_peer: bool = True) -> None:
        self.connection.key_update(request_peer)
        self._flush()

    def rekey_qkd(self) -> tuple[str, ...]:
        request = self.connection.rekey_request()
        source = self.connection.config.key_source
        assert source is not None
        ids = self.connection.rekey_qkd(request.perform(source))
        self._flush()
        return ids

    async def rekey_qkd_async(self) -> tuple[str, ...]:
        request = self.connection.rekey_request()
        source = self.connection.config.key_source
        assert source is not None
        keys = await request.perform_async(source, self._key_executor)
        ids = self.connection.rekey_qkd(keys)
        self._flush()
        return ids


async def open_connection(host: str, port: int, *,
                          context: Context, peer: str, handshake_timeout: float | None = None,
                          limit: int = 2**16,
                          key_executor: concurrent.futures.Executor | None = None, **kwargs: Any
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``host:port``, run the HKX/1 handshake as a client of site ``peer``, and
    return the streams.  Raises HandshakeTimeout or a ProtocolError (connection closed)
    if the handshake fails; cancelling the call closes the connection."""
    timeout = context.handshake_timeout if handshake_timeout is None else handshake_timeout
    connection = context.new_connection(False, peer, key_events=True)
    return await open_streams(
        lambda app: SecureProtocol(connection, app, timeout, key_executor=key_executor),
        host, port, limit=limit, **kwargs)


async def start_server(client_connected_cb: ClientConnectedCallback,
                       host: str | None = None, port: int | None = None, *,
                       context: Context, handshake_timeout: float | None = None,
                       limit: int = 2**16,
                       handshake_failed_cb: Callable[[Exception, Any], None] | None = None,
                       key_executor: concurrent.futures.Executor | None = None,
                       **kwargs: Any) -> asyncio.Server:
    """Serve HKX/1 on ``host:port``.  ``client_connected_cb(reader, writer)`` runs for each
    client whose handshake completed; a failed handshake closes that connection and is
    never seen by that callback, but ``handshake_failed_cb(error, peername)``, if given,
    is told of it (the typed error: a ProtocolError, HandshakeTimeout,
    ConnectionTruncated), so a server can log refused clients."""
    timeout = context.handshake_timeout if handshake_timeout is None else handshake_timeout
    return await serve_streams(
        lambda app, on_handshake: SecureProtocol(
            context.new_connection(True, None, key_events=True), app, timeout, on_handshake,
            key_executor=key_executor),
        client_connected_cb, host, port, limit=limit,
        handshake_failed_cb=handshake_failed_cb, **kwargs)
