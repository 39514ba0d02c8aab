"""TLS 1.3 over asyncio streams: ``open_connection`` and ``start_server``, as
:mod:`hybridkex.asyncio` offers them for HKX/1.

The application gets a plain :class:`asyncio.StreamReader` and
:class:`asyncio.StreamWriter`.  Underneath, :class:`TLSProtocol` drives a sans-IO
:class:`~hybridkex.tls.connection.TLSConnection` (OpenSSL over memory BIOs) from the
raw transport's callbacks; :class:`TLSTransport` is the transport the writer sees.
(asyncio's own ``ssl=`` cannot be used: Python's ``ssl`` module can set neither the
hybrid groups nor an external PSK, and does not load ML-DSA keys.)

The handshake completes before ``open_connection`` returns or the server's callback
runs, within a time limit (TLSHandshakeTimeout).  The key source (qkd-psk mode) never
blocks the event loop, as in :mod:`hybridkex.asyncio`: a client takes its PSK, and a
server fetches the one the ClientHello names, off the loop (``key_executor``), before
OpenSSL needs it.
``writer.get_extra_info("session_info")`` is the :class:`TLSSessionInfo`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any

from hybridkex.errors import HybridKexError
from hybridkex.keydelivery.source import AsyncKeySource, KeySource
from hybridkex.tls.connection import TLSConnection
from hybridkex.tls.context import TLSContext
from hybridkex.tls.errors import TLSConnectionTruncated, TLSHandshakeTimeout
from hybridkex.transport.aio import (
    ClientConnectedCallback,
    DrivingProtocol,
    RecordTransport,
    open_streams,
    serve_streams,
)

__all__ = ["TLSProtocol", "TLSTransport", "open_connection", "start_server"]

TLSTransport = RecordTransport  # the writer's transport; see RecordTransport.get_extra_info


class TLSProtocol(DrivingProtocol):
    """Drives a :class:`~hybridkex.tls.connection.TLSConnection` (OpenSSL over memory BIOs)."""

    connection: TLSConnection

    def _start(self) -> None:
        """Nothing to do: the first step (``_step(None)``) sends a client's hello, and a
        server's OpenSSL just waits for one."""

    def _step(self, data: bytes | None) -> None:
        conn = self.connection
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
                self._peer_closed_cleanly()

    def _truncated(self) -> HybridKexError:
        return TLSConnectionTruncated("the connection was lost during the TLS handshake")

    def _timed_out(self) -> HybridKexError:
        return TLSHandshakeTimeout(
            f"the TLS handshake did not complete within {self._timeout} s")

    def extra_info(self, name: str) -> tuple[bool, Any]:
        return (True, self.connection) if name == "tls_connection" else (False, None)

    @property
    def key_source(self) -> KeySource | AsyncKeySource | None:
        return self.connection.context.key_source


async def open_connection(host: str, port: int, *,
                          context: TLSContext, peer: str,
                          handshake_timeout: float | None = None, limit: int = 2**16,
                          key_executor: concurrent.futures.Executor | None = None,
                          **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``host:port``, run the TLS handshake as a client of site ``peer``, and
    return the streams.  Raises TLSHandshakeTimeout or a TLSProtocolError (connection
    closed) if the handshake fails; cancelling the call closes the connection."""
    timeout = context.handshake_timeout if handshake_timeout is None else handshake_timeout
    connection = context.new_connection(False, peer, key_events=True)
    return await open_streams(
        lambda app: TLSProtocol(connection, app, timeout, key_executor=key_executor),
        host, port, limit=limit, **kwargs)


async def start_server(client_connected_cb: ClientConnectedCallback,
                       host: str | None = None, port: int | None = None, *,
                       context: TLSContext, peer: str | None = None,
                       handshake_timeout: float | None = None, limit: int = 2**16,
                       handshake_failed_cb: Callable[[Exception, Any], None] | None = None,
                       key_executor: concurrent.futures.Executor | None = None,
                       **kwargs: Any) -> asyncio.Server:
    """Serve TLS on ``host:port``.  ``client_connected_cb(reader, writer)`` runs for each
    client whose handshake completed; a failed handshake closes that connection and is
    never seen by that callback (``handshake_failed_cb(error, peername)`` hears of it).
    ``peer`` restricts clients to that one site (see :meth:`TLSContext.new_connection`)."""
    timeout = context.handshake_timeout if handshake_timeout is None else handshake_timeout
    context.new_connection(True, peer)  # a misconfigured server fails here, not per client
    return await serve_streams(
        lambda app, on_handshake: TLSProtocol(
            context.new_connection(True, peer, key_events=True), app, timeout, on_handshake,
            key_executor=key_executor),
        client_connected_cb, host, port, limit=limit,
        handshake_failed_cb=handshake_failed_cb, **kwargs)
