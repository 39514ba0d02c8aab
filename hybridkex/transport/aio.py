"""What the asyncio interfaces of HKX/1 (:mod:`hybridkex.asyncio`) and TLS 1.3
(:mod:`hybridkex.tls.asyncio`) share: a protocol that drives a sans-IO connection from
the raw transport's callbacks, the transport the application's StreamWriter writes to,
and the opening and serving of stream pairs with a handshake time limit.

A protocol subclass says how its connection starts, takes bytes, and reports events;
everything else (the handshake future and timer, flow control, failure, half-close,
and the QKD keys) is here once.

QKD keys never block the event loop: the connections are made with
``key_events=True``, so where one needs keys it stops and names a
:class:`~hybridkex.keydelivery.request.KeyRequest`.  The protocol pauses reading,
makes the request (awaited on an :class:`~hybridkex.keydelivery.source.AsyncKeySource`,
in an executor thread for any other source), answers the connection, and goes on.
Other connections are served meanwhile.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Protocol

from hybridkex.errors import HybridKexError
from hybridkex.keydelivery.errors import KeySourceError
from hybridkex.keydelivery.keys import DeliveredKey
from hybridkex.keydelivery.request import KeyRequest
from hybridkex.keydelivery.source import AsyncKeySource, KeySource

__all__ = ["READ_CHUNK", "STEP", "ClientConnectedCallback", "DrivingProtocol",
           "RecordTransport", "open_streams", "read_buffer", "serve_streams", "steps"]

ClientConnectedCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                   Awaitable[None] | None]


#: What a protocol here reads from a socket at once, as asyncio's own reads do.
READ_CHUNK = 1 << 18
#: The most it hands on in one piece.  asyncio reads into a new bytes object each time,
#: and the buffers made from a read (the records sealed from it, the plaintext opened
#: from it, each joined for one write) are as large; at 256 KiB glibc maps fresh pages
#: for them again and again, and the page faults cost a relay more CPU than AES-GCM.
#: A read into a buffer that stays, handed on in pieces of 64 KiB (four full records),
#: keeps every buffer made from it on the heap, where it is reused, and keeps the
#: event loop's cost per read of a large read.
STEP = 1 << 16

_thread = threading.local()


def read_buffer() -> memoryview:
    """This thread's read buffer (``READ_CHUNK`` bytes), for :class:`asyncio.BufferedProtocol`
    reads.  One per thread, not one per connection, so a thousand idle streams hold no
    buffers: a protocol copies what it reads out of it before ``buffer_updated`` returns,
    and the event loop (one per thread) reads one socket at a time."""
    view: memoryview | None = getattr(_thread, "read_buffer", None)
    if view is None:
        view = _thread.read_buffer = memoryview(bytearray(READ_CHUNK))
    return view


def steps(nbytes: int) -> Iterator[bytes]:
    """What was just read into :func:`read_buffer`, as bytes, ``STEP`` bytes at most each."""
    view = read_buffer()
    for start in range(0, nbytes, STEP):
        yield bytes(view[start:min(nbytes, start + STEP)])


class _SansIO(Protocol):
    @property
    def handshake_complete(self) -> bool: ...

    def data_to_send(self) -> bytes: ...

    def send(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def session_info(self) -> Any: ...

    @property
    def key_request(self) -> KeyRequest | None: ...

    @property
    def pool_keys_spent(self) -> int: ...

    def supply_keys(self, keys: Sequence[DeliveredKey]) -> None: ...

    def refuse_keys(self, error: KeySourceError) -> None: ...


class RecordTransport(asyncio.Transport):
    """What the application's StreamWriter writes to: records out, close_notify on close."""

    def __init__(self, protocol: DrivingProtocol) -> None:
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
        """Adds ``session_info``, ``peer_identity`` and the protocol's own extras (see
        :meth:`DrivingProtocol.extra_info`) to the raw transport's."""
        if name == "session_info":
            return self._protocol.connection.session_info()
        if name == "peer_identity":
            return self._protocol.connection.session_info().peer
        found, value = self._protocol.extra_info(name)
        return value if found else self._protocol.raw.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._protocol.set_app_reading(False)

    def resume_reading(self) -> None:
        self._protocol.set_app_reading(True)

    def is_reading(self) -> bool:
        return self._protocol.app_reading

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._protocol.raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return int(self._protocol.raw.get_write_buffer_size())


class DrivingProtocol(asyncio.BufferedProtocol, abc.ABC):
    """Raw bytes in and out; plaintext to ``app`` once the handshake has completed.

    The raw transport reads into :func:`read_buffer`, and the connection takes what was
    read ``STEP`` bytes at a time (:func:`steps`); ``data_received`` takes bytes too,
    for a caller that has them.

    ``app`` is any :class:`asyncio.Protocol`: a StreamReaderProtocol for the stream
    interfaces, or a relay (:mod:`hybridkex.transport.forward`).  It sees
    ``connection_made`` with the :class:`RecordTransport` when the handshake has
    completed, ``data_received`` with plaintext, ``eof_received`` at the peer's
    close_notify, and ``connection_lost`` (with the typed error if the session failed).
    ``key_executor`` runs the calls of a key source that is not an AsyncKeySource
    (default: :func:`~hybridkex.keydelivery.request.key_source_executor`).
    """

    connection: _SansIO
    transport_class: type[RecordTransport] = RecordTransport

    def __init__(self, connection: _SansIO, app: asyncio.Protocol,
                 handshake_timeout: float | None,
                 on_handshake: Callable[[Any], None] | None = None, *,
                 key_executor: concurrent.futures.Executor | None = None) -> None:
        self.connection = connection
        self.app = app
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._timeout = handshake_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._on_handshake = on_handshake
        self._raw: asyncio.Transport | None = None
        self.transport = self.transport_class(self)
        self._app_connected = False
        self._closing = False
        self._peer_closed = False
        self._over = False  # failed, timed out or lost: nothing more is driven
        self._key_executor = key_executor
        self._key_task: asyncio.Task[None] | None = None
        self._keys_in_flight = 0
        self._app_reading = True

    # -- what a protocol provides -------------------------------------------------------

    @abc.abstractmethod
    def _start(self) -> None:
        """Begin the handshake, if this side speaks first."""

    @abc.abstractmethod
    def _step(self, data: bytes | None) -> None:
        """Feed ``data`` (None: nothing new; b"": end of file) and report what follows
        through ``_handshake_complete``, ``app.data_received`` and ``_peer_closed_cleanly``."""

    @abc.abstractmethod
    def _truncated(self) -> HybridKexError:
        """The error for a connection lost during the handshake."""

    @abc.abstractmethod
    def _timed_out(self) -> HybridKexError:
        """The error for a handshake that ran out of time."""

    def extra_info(self, name: str) -> tuple[bool, Any]:
        """A protocol's own ``get_extra_info`` names: (found, value)."""
        return False, None

    @property
    def key_source(self) -> KeySource | AsyncKeySource | None:
        """Where the connection's QKD keys come from (None: it takes none)."""
        return None

    # -- what the application and the logs read ------------------------------------------

    @property
    def pool_keys_spent(self) -> int:
        """Pool keys the connection consumed, also after a failure."""
        return self.connection.pool_keys_spent

    @property
    def keys_in_flight(self) -> int:
        """Keys asked of the key source and not delivered yet: once delivered they are
        consumed, even if the handshake has failed meanwhile."""
        return self._keys_in_flight

    @property
    def app_reading(self) -> bool:
        return self._app_reading

    def set_app_reading(self, reading: bool) -> None:
        """The application's flow control; reading also pauses while keys are fetched."""
        self._app_reading = reading
        self._apply_reading()

    def _apply_reading(self) -> None:
        raw = self._raw
        if raw is None or raw.is_closing():
            return
        if self._app_reading and self._key_task is None:
            raw.resume_reading()
        else:
            raw.pause_reading()

    # -- the raw transport's callbacks --------------------------------------------------

    @property
    def has_raw(self) -> bool:
        return self._raw is not None

    @property
    def raw(self) -> asyncio.Transport:
        assert self._raw is not None
        return self._raw

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._raw = transport
        if self._timeout is not None:
            self._timer = asyncio.get_running_loop().call_later(
                self._timeout, self._handshake_timed_out)
        self._run(None, start=True)

    def get_buffer(self, sizehint: int) -> memoryview:
        return read_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        for data in steps(nbytes):
            self._run(data)

    def data_received(self, data: bytes) -> None:
        self._run(data)

    def eof_received(self) -> bool:
        self._run(b"")
        # After the peer's close_notify its FIN is a clean half-close: keep the transport
        # open so this side can still answer and send its own close_notify.
        return self._peer_closed

    def connection_lost(self, exc: Exception | None) -> None:
        self._over = True
        if self._timer is not None:
            self._timer.cancel()
        self._settle(self._truncated())
        if self._app_connected:
            self._app_connected = False
            self.app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._app_connected:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self._app_connected:
            self.app.resume_writing()

    # -- driving --------------------------------------------------------------------------

    def _run(self, data: bytes | None, start: bool = False,
             answer: Callable[[], None] | None = None) -> None:
        """One step (after ``answer`` gave the connection its keys), everything it made
        possible, then whatever must be sent; then fetch the keys it waits for."""
        if self._over:
            return
        try:
            if start:
                self._start()
            if answer is not None:
                answer()
            self._step(data)
        except Exception as exc:  # also a key source's own error, reported as it is
            self._flush()
            self._fail(exc)
            return
        self._flush()
        request = self.connection.key_request
        if request is not None and self._key_task is None and not self._over:
            self._fetch_keys(request)

    def _fetch_keys(self, request: KeyRequest) -> None:
        source = self.key_source
        if source is None:  # a connection asks only when it has a source; be safe
            self._run(None, answer=lambda: self.connection.refuse_keys(
                KeySourceError("this site has no key source")))
            return

        async def fetch() -> None:
            answer: Callable[[], None]
            try:
                keys = await request.perform_async(source, self._key_executor)
            except KeySourceError as exc:
                error = exc
                answer = lambda: self.connection.refuse_keys(error)  # noqa: E731
            except Exception as exc:  # the source's own failure, reported as it is
                self._key_task, self._keys_in_flight = None, 0
                if not self._over:
                    self._flush()
                    self._fail(exc)
                return
            else:
                answer = lambda: self.connection.supply_keys(keys)  # noqa: E731
            self._key_task, self._keys_in_flight = None, 0
            if self._over:
                return  # delivered after a failure: consumed, as keys_in_flight said
            self._apply_reading()
            self._run(None, answer=answer)

        self._keys_in_flight = request.count
        self._key_task = asyncio.get_running_loop().create_task(fetch())
        self._apply_reading()

    def _handshake_complete(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._app_connected = True
        self.app.connection_made(self.transport)
        if not self.handshake.done():
            self.handshake.set_result(None)
        if self._on_handshake is not None:
            self._on_handshake(self)

    def _peer_closed_cleanly(self) -> None:
        if not self._peer_closed:
            self._peer_closed = True
            self.app.eof_received()

    def _settle(self, exc: Exception) -> bool:
        """Fail the handshake future if it is still open.  Marked as retrieved: a server
        has nobody awaiting it, and a client's opener re-raises it anyway."""
        if self.handshake.done():
            return False
        self.handshake.set_exception(exc)
        self.handshake.exception()
        return True

    def _fail(self, exc: Exception) -> None:
        self._over = True
        if not self._settle(exc) and self._app_connected:
            self._app_connected = False
            self.app.connection_lost(exc)
        self.raw.close()

    def _handshake_timed_out(self) -> None:
        if self._settle(self._timed_out()):
            self._over = True
            self.raw.abort()

    def _flush(self) -> None:
        data = self.connection.data_to_send()
        if data and self._raw is not None and not self._raw.is_closing():
            self._raw.write(data)

    # -- what RecordTransport asks for --------------------------------------------------

    def send(self, data: bytes) -> None:
        self.connection.send(data)
        self._flush()

    def close_notify(self) -> None:
        if not self._closing and self.connection.handshake_complete:
            self._closing = True
            self.connection.close()
            self._flush()


def _stream_pair(protocol: DrivingProtocol, reader: asyncio.StreamReader
                 ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert isinstance(protocol.app, asyncio.StreamReaderProtocol)
    writer = asyncio.StreamWriter(protocol.transport, protocol.app, reader,
                                  asyncio.get_running_loop())
    return reader, writer


async def open_streams(make_protocol: Callable[[asyncio.StreamReaderProtocol], DrivingProtocol],
                       host: str, port: int, *, limit: int, **kwargs: Any
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect, run the handshake, return the streams; on any failure or cancellation
    the connection is closed and the error raised."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    app = asyncio.StreamReaderProtocol(reader)
    raw, protocol = await loop.create_connection(lambda: make_protocol(app), host, port,
                                                 **kwargs)
    try:
        await protocol.handshake
    except BaseException:
        raw.abort()
        raise
    return _stream_pair(protocol, reader)


async def serve_streams(
        make_protocol: Callable[[asyncio.StreamReaderProtocol,
                                 Callable[[Any], None]], DrivingProtocol],
        client_connected_cb: ClientConnectedCallback, host: str | None, port: int | None, *,
        limit: int, handshake_failed_cb: Callable[[Exception, Any], None] | None = None,
        **kwargs: Any) -> asyncio.Server:
    """Serve: ``client_connected_cb(reader, writer)`` for each completed handshake;
    ``handshake_failed_cb(error, peername)`` for each failed one."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    def factory() -> DrivingProtocol:
        reader = asyncio.StreamReader(limit=limit)
        app = asyncio.StreamReaderProtocol(reader)

        def on_handshake(protocol: DrivingProtocol) -> None:
            result = client_connected_cb(*_stream_pair(protocol, reader))
            if asyncio.iscoroutine(result):
                task = loop.create_task(result)
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        protocol = make_protocol(app, on_handshake)
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
