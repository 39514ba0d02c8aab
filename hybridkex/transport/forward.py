"""Channels for applications, stunnel-style, on asyncio: the forwarding server and the
local forwarder, over HKX/1 or TLS 1.3 alike.

* :class:`ChannelServer` (``hybridkex serve``) accepts channels.  Each connection is
  admitted or refused at once: at most ``max_connections`` are open, and one more is
  refused (a few bytes saying so, then closed), never queued.  Its handshake runs
  under the time limit of its :class:`~hybridkex.transport.aio.DrivingProtocol`;
  then a :class:`Service` serves it: :class:`ForwardTo` relays it to a TCP service,
  :class:`Echo` sends it back, :class:`Sink` writes it out.
* :class:`LocalForwarder` (``hybridkex connect --listen-local``) accepts local TCP
  clients, opens a channel to the remote site for each, and relays the two.

A relay (:class:`Splice`) joins a channel and a plain TCP connection as two asyncio
protocols.  What one side receives is written to the other at once; when the other's
send buffer fills, reading from the first pauses until it drains, so memory stays
bounded in both directions.  A half-close passes through: a FIN from the TCP side
becomes close_notify on the channel, the peer's close_notify becomes a FIN, and the
other direction carries on until it ends too.  A failure never looks like a clean end:
a channel that fails or is cut (no close_notify) resets the TCP side, and a TCP side
that resets ends the channel without close_notify, so the far application sees a
reset as well.

Which protocol, which keys, and what the log says belong to the caller (the command
line): this module takes a factory of driving protocols and reports each
:class:`Stream` as it ends.  No thread is started per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from hybridkex.errors import HybridKexError, InvalidParameter
from hybridkex.transport.aio import DrivingProtocol, read_buffer, steps

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_MAX_CONNECTIONS",
    "ChannelServer",
    "Echo",
    "ForwardTo",
    "LocalForwarder",
    "Service",
    "Sink",
    "Splice",
    "Stream",
    "StreamLog",
    "connect_channel",
    "format_address",
]

DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_GRACE = 10.0  # seconds open streams get to finish after SIGINT/SIGTERM
_REFUSAL_LINGER = 0.5  # seconds a refused connection waits for the peer to read why

#: Makes the driving protocol (client or server, HKX/1 or TLS) around an application
#: protocol, which sees the channel's plaintext once the handshake has completed.
ChannelFactory = Callable[[asyncio.Protocol], DrivingProtocol]


def failure_text(exc: BaseException) -> str:
    """What went wrong with a TCP connection, in words (asyncio's own are long)."""
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


def format_address(address: Any) -> str:
    """``host:port``, ``[v6]:port``, or ``?`` when the socket had none."""
    if not isinstance(address, tuple) or len(address) < 2:
        return "?"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


@dataclass(eq=False)
class Stream:
    """One channel, from its connection to its end, as the log tells it.

    ``outcome``: None while open; then "closed" (both directions ended cleanly),
    "handshake failed", "failed" (the session or the other side failed), "cut" (at
    the end of a shutdown's grace period) or "refused".
    """

    number: int
    address: str = "?"
    protocol: DrivingProtocol | None = None
    handshake_info: Any = None
    to_channel: int = 0  # plaintext bytes sent into the channel
    from_channel: int = 0  # plaintext bytes that came out of it
    outcome: str | None = None
    error: BaseException | None = None
    note: str = ""  # what the service adds (a target that could not be reached, ...)
    failed_side: str | None = None  # "channel" or "tcp": which side of a relay failed
    started: float = field(default_factory=time.monotonic)
    _ended: Callable[[Stream], None] | None = field(default=None, repr=False)
    _cut: Callable[[], None] | None = field(default=None, repr=False)
    # run just before the stream ends (the handshake's log line, if still due)
    before_end: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def pool_keys_spent(self) -> int:
        return self.protocol.pool_keys_spent if self.protocol is not None else 0

    @property
    def keys_in_flight(self) -> int:
        return self.protocol.keys_in_flight if self.protocol is not None else 0

    def session_info(self) -> Any:
        """The session as it is now (re-keys included), or the one at the handshake."""
        if self.protocol is not None:
            with contextlib.suppress(HybridKexError):
                return self.protocol.connection.session_info()
        return self.handshake_info

    def end(self, outcome: str, error: BaseException | None = None, note: str = "") -> None:
        if self.outcome is not None:
            return
        if self.before_end is not None:
            self.before_end()
        self.outcome, self.error = outcome, error
        self.note = self.note or note
        if self._ended is not None:
            self._ended(self)

    def cut(self) -> None:
        """End the stream now (a shutdown's grace period is over)."""
        if self.outcome is None and self._cut is not None:
            self._cut()


class StreamLog:
    """What a server or forwarder tells its operator; the defaults tell nothing."""

    def refused(self, address: str, open_streams: int) -> None:
        """A connection was refused: ``open_streams`` were open (the limit)."""

    def established(self, stream: Stream) -> None:
        """The handshake completed (``stream.handshake_info``)."""

    def ended(self, stream: Stream) -> None:
        """The stream ended (``stream.outcome``, ``stream.error``)."""


# -- the relay ------------------------------------------------------------------------------


def reset(transport: asyncio.Transport) -> None:
    """Close with a TCP reset, so the peer cannot mistake the end for a clean one (a plain
    ``abort()`` closes with a FIN when nothing is left unread)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _End(asyncio.BaseProtocol):
    """One side of a splice, as asyncio sees it."""

    def __init__(self, splice: Splice, side: str) -> None:
        self.splice = splice
        self.side = side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.splice._attach(self.side, transport)

    def eof_received(self) -> bool:
        self.splice._eof(self.side)
        return True  # half-closed: the other direction goes on

    def connection_lost(self, exc: Exception | None) -> None:
        self.splice._lost(self.side, exc)

    def pause_writing(self) -> None:
        self.splice._write_buffer(self.side, full=True)

    def resume_writing(self) -> None:
        self.splice._write_buffer(self.side, full=False)


class _ChannelEnd(_End, asyncio.Protocol):
    """The channel's side: its driving protocol hands over plaintext as bytes."""

    def data_received(self, data: bytes) -> None:
        self.splice._data(self.side, data)


class _PlainEnd(_End, asyncio.BufferedProtocol):
    """The plain TCP side of a splice: read into the thread's read buffer and passed on
    in pieces of at most 64 KiB, so that no buffer sealed from a read is large (see
    :data:`~hybridkex.transport.aio.STEP`)."""

    def get_buffer(self, sizehint: int) -> memoryview:
        return read_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        for data in steps(nbytes):
            self.splice._data(self.side, data)


_CHANNEL, _PLAIN = "channel", "plain"
_OTHER = {_CHANNEL: _PLAIN, _PLAIN: _CHANNEL}


class Splice:
    """A channel and a plain TCP connection relayed both ways (see the module text).

    ``channel_end()`` is the driving protocol's application; ``plain_end()`` the TCP
    connection's protocol.  Either may come first: what arrives before the other side
    is there waits (and its side stops reading).  ``on_channel_up`` runs when the
    handshake has completed.
    """

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        stream._cut = self.cut
        self.on_channel_up: Callable[[], None] | None = None
        self._transports: dict[str, asyncio.Transport | None] = {_CHANNEL: None, _PLAIN: None}
        self._waiting: dict[str, list[bytes]] = {_CHANNEL: [], _PLAIN: []}  # to send to it
        self._eof_from: set[str] = set()
        self._eof_pending: set[str] = set()  # an end of file to pass on once attached
        self._paused_by: dict[str, set[str]] = {_CHANNEL: set(), _PLAIN: set()}
        self._over = False

    def channel_end(self) -> asyncio.Protocol:
        return _ChannelEnd(self, _CHANNEL)

    def plain_end(self) -> asyncio.BaseProtocol:
        return _PlainEnd(self, _PLAIN)

    # -- reading, paused for any of several reasons ---------------------------------------

    def _pause(self, side: str, reason: str, paused: bool) -> None:
        reasons = self._paused_by[side]
        before = bool(reasons)
        if paused:
            reasons.add(reason)
        else:
            reasons.discard(reason)
        transport = self._transports[side]
        if transport is None or transport.is_closing() or before == bool(reasons):
            return
        if reasons:
            transport.pause_reading()
        else:
            transport.resume_reading()

    # -- the two ends' callbacks ------------------------------------------------------------

    def _attach(self, side: str, transport: asyncio.Transport) -> None:
        self._transports[side] = transport
        if side == _PLAIN and self.stream.address == "?":  # the local client's address
            self.stream.address = format_address(transport.get_extra_info("peername"))
        if self._over:
            reset(transport)
            return
        if self._paused_by[side]:
            transport.pause_reading()
        other = _OTHER[side]
        if self._transports[other] is None:
            self._pause(side, "waiting for the other side", True)
        else:
            self._pause(other, "waiting for the other side", False)
        waiting, self._waiting[side] = self._waiting[side], []
        for data in waiting:
            transport.write(data)
        if other in self._eof_pending:
            self._eof_pending.discard(other)
            self._pass_eof(side)
        if side == _CHANNEL and self.on_channel_up is not None:
            self.on_channel_up()

    def _data(self, side: str, data: bytes) -> None:
        if self._over:
            return
        if side == _CHANNEL:
            self.stream.from_channel += len(data)
        else:
            self.stream.to_channel += len(data)
        target = self._transports[_OTHER[side]]
        if target is None:
            self._waiting[_OTHER[side]].append(data)
            self._pause(side, "waiting for the other side", True)
            return
        target.write(data)

    def _eof(self, side: str) -> None:
        if self._over:
            return
        self._eof_from.add(side)
        other = _OTHER[side]
        if self._transports[other] is None:
            self._eof_pending.add(side)
        else:
            self._pass_eof(other)
        if self._eof_from == {_CHANNEL, _PLAIN}:
            self._finish()

    def _pass_eof(self, to: str) -> None:
        transport = self._transports[to]
        assert transport is not None
        if not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()  # on the channel: close_notify

    def _lost(self, side: str, exc: Exception | None) -> None:
        if self._over:
            return
        if exc is None and side in self._eof_from and _OTHER[side] in self._eof_from:
            self._finish()
            return
        # Lost before both directions ended: the far end must not take it for a clean end.
        self._transports[side] = None  # closing already (a channel's alert is on its way)
        self._abort_all()
        if exc is None:
            exc = ConnectionResetError(
                f"the {'channel' if side == _CHANNEL else 'TCP connection'} closed before "
                "the stream ended")
        self.stream.failed_side = "channel" if side == _CHANNEL else "tcp"
        self.stream.end("failed", exc)

    def _write_buffer(self, side: str, full: bool) -> None:
        # ``side``'s send buffer is full: stop reading what would be sent to it.
        self._pause(_OTHER[side], "the other side's buffer is full", full)

    # -- ending -------------------------------------------------------------------------

    def _finish(self) -> None:
        """Both directions ended cleanly: close both (buffers are flushed first)."""
        self._over = True
        for transport in self._transports.values():
            if transport is not None:
                transport.close()
        self.stream.end("closed")

    def _abort_all(self) -> None:
        self._over = True
        for transport in self._transports.values():
            if transport is not None:
                reset(transport)

    def fail(self, note: str, error: BaseException | None = None) -> None:
        """The service gives up on this stream (its target cannot be reached)."""
        if not self._over:
            self._abort_all()
            self.stream.end("failed", error, note)

    def cut(self) -> None:
        if not self._over:
            self._abort_all()
            self.stream.end("cut")


# -- services -------------------------------------------------------------------------------


class Service(Protocol):
    """What a server does with each channel: the application protocol its driving
    protocol delivers plaintext to.  It calls ``stream.end(...)`` when it is done."""

    def app(self, stream: Stream) -> asyncio.Protocol: ...


class ForwardTo:
    """Relay each channel to a TCP service at ``host:port``, connected once the channel's
    handshake has completed (an unauthenticated peer never reaches the service)."""

    def __init__(self, host: str, port: int, connect_timeout: float = 10.0) -> None:
        self.host, self.port = host, port
        self.connect_timeout = connect_timeout

    @property
    def target(self) -> str:
        return format_address((self.host, self.port))

    def app(self, stream: Stream) -> asyncio.Protocol:
        splice = Splice(stream)
        loop = asyncio.get_running_loop()

        async def connect() -> None:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await loop.create_connection(splice.plain_end, self.host, self.port)
            except TimeoutError as exc:
                splice.fail(f"cannot reach {self.target}: no answer within "
                            f"{self.connect_timeout:g} s", exc)
            except OSError as exc:
                splice.fail(f"cannot reach {self.target}: {failure_text(exc)}", exc)

        tasks: set[asyncio.Task[None]] = set()

        def start() -> None:
            task = loop.create_task(connect())
            tasks.add(task)  # keep a reference until done
            task.add_done_callback(tasks.discard)

        splice.on_channel_up = start
        return splice.channel_end()


class _EchoEnd(asyncio.Protocol):
    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.stream._cut = self.cut

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.stream.from_channel += len(data)
        self.stream.to_channel += len(data)
        self.transport.write(data)

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        assert self.transport is not None
        self.transport.close()  # close_notify after what was echoed, then FIN
        self.stream.end("closed")
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None and self.stream.outcome is None:
            exc = ConnectionResetError("the channel closed before the peer's close_notify")
        self.stream.end("failed", exc)

    def cut(self) -> None:
        if self.transport is not None and self.stream.outcome is None:
            self.stream.end("cut")
            self.transport.close()  # the server ends the session: close_notify


class Echo:
    """Send every channel's data back to it, until the peer's close_notify."""

    def app(self, stream: Stream) -> asyncio.Protocol:
        return _EchoEnd(stream)


class _SinkEnd(_EchoEnd):
    def __init__(self, stream: Stream, sink: Sink) -> None:
        super().__init__(stream)
        self.sink = sink
        self.writing = 0
        self.eof = False

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.stream.from_channel += len(data)
        self.writing += 1
        self.transport.pause_reading()  # one chunk at a time: the writer sets the pace
        future = asyncio.get_running_loop().run_in_executor(None, self.sink.write, data)
        future.add_done_callback(self._written)

    def _written(self, future: asyncio.Future[None]) -> None:
        self.writing -= 1
        if self.transport is None or self.transport.is_closing():
            return
        if future.exception() is not None:
            self.stream.end("failed", future.exception())
            self.transport.abort()
            return
        if self.eof and not self.writing:
            self._close()
        else:
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        self.eof = True
        if not self.writing:
            self._close()
        return True

    def _close(self) -> None:
        assert self.transport is not None
        self.transport.close()
        self.stream.end("closed")


class Sink:
    """Write every channel's data with ``write`` (called in an executor thread, one
    chunk of a channel at a time), send nothing back."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self.write = write

    def app(self, stream: Stream) -> asyncio.Protocol:
        return _SinkEnd(stream, self)


# -- admission ------------------------------------------------------------------------------


class _Refusal(asyncio.Protocol):
    """A connection over the limit: ``message`` (if any), FIN, then closed once the peer
    closes or after a moment; what it sends is dropped.  Refusing costs no handshake."""

    def __init__(self, gate: _Gate, message: bytes) -> None:
        self.gate = gate
        self.message = message
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.gate.refusing += 1
        self.gate.log.refused(format_address(transport.get_extra_info("peername")),
                              len(self.gate.open))
        if self.gate.refusing > self.gate.limit:  # a flood: no courtesy
            transport.abort()
            return
        if self.message:
            transport.write(self.message)
        transport.write_eof()
        self.timer = asyncio.get_running_loop().call_later(_REFUSAL_LINGER, transport.abort)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.gate.refusing -= 1
        if self.timer is not None:
            self.timer.cancel()


class _Dropped(asyncio.Protocol):
    """A connection that cannot be served at all: closed at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _Gate:
    """The open streams of a server or forwarder, and the limit on them."""

    def __init__(self, limit: int, log: StreamLog) -> None:
        if not isinstance(limit, int) or limit < 1:
            raise InvalidParameter("max_connections must be a positive number")
        self.limit = limit
        self.log = log
        self.open: set[Stream] = set()
        self.refusing = 0
        self.stopping = False
        self._numbers = itertools.count(1)
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def full(self) -> bool:
        return self.stopping or len(self.open) >= self.limit

    def admit(self) -> Stream:
        stream = Stream(next(self._numbers))
        stream._ended = self._ended
        self.open.add(stream)
        self._idle.clear()
        return stream

    def _ended(self, stream: Stream) -> None:
        self.open.discard(stream)
        if not self.open:
            self._idle.set()
        self.log.ended(stream)

    async def drain(self, grace: float) -> int:
        """Stop admitting; wait up to ``grace`` seconds for the open streams to end, then
        cut the rest.  Returns how many were cut."""
        self.stopping = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._idle.wait()
        remaining = list(self.open)
        for stream in remaining:
            if stream.protocol is not None and stream.outcome is None and (
                    not stream.protocol.handshake.done()):
                stream.protocol.transport.abort()  # still in its handshake
                stream.end("cut")
            else:
                stream.cut()
        return len(remaining)


def _track_handshake(stream: Stream, protocol: DrivingProtocol, log: StreamLog) -> None:
    """Tell the log when the handshake completes, end the stream if it fails."""
    stream.protocol = protocol
    logged = False

    def address() -> None:
        if protocol.has_raw and stream.address == "?":
            stream.address = format_address(protocol.raw.get_extra_info("peername"))

    def establish() -> None:
        nonlocal logged
        if logged:
            return
        logged = True
        with contextlib.suppress(HybridKexError):
            stream.handshake_info = protocol.connection.session_info()
        log.established(stream)

    def before_end() -> None:
        # A stream can end in the same read that completed its handshake, before the
        # handshake future's callback runs: log the session first, then its end.
        address()
        future = protocol.handshake
        if future.done() and not future.cancelled() and future.exception() is None:
            establish()

    def done(future: asyncio.Future[None]) -> None:
        address()
        exc = None if future.cancelled() else future.exception()
        if exc is not None or future.cancelled():
            stream.end("handshake failed", exc)
            return
        if stream.outcome is not None:  # its other side gave up meanwhile
            return
        establish()

    stream.before_end = before_end
    protocol.handshake.add_done_callback(done)


# -- the two ends ---------------------------------------------------------------------------


class _Listener:
    """What both forwarding ends share: a bounded gate of streams and the listening
    server that feeds it (``_accept`` makes each connection's protocol)."""

    def __init__(self, max_connections: int, log: StreamLog | None) -> None:
        self.log = log or StreamLog()
        self._gate = _Gate(max_connections, self.log)
        self._server: asyncio.Server | None = None

    @property
    def open_streams(self) -> int:
        return len(self._gate.open)

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()

    def _accept(self) -> asyncio.BaseProtocol:
        raise NotImplementedError

    async def start(self, host: str | None = None, port: int | None = None,
                    **kwargs: Any) -> None:
        """Listen (``loop.create_server`` arguments: ``sock=`` for a bound socket)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, host, port, **kwargs)

    async def shutdown(self, grace: float = DEFAULT_GRACE) -> int:
        """Stop accepting; let the open streams finish for up to ``grace`` seconds, then
        cut the rest (a forwarded stream is reset, so its applications see it did not
        end cleanly; echo and sink sessions get close_notify).  Returns how many were
        cut."""
        if self._server is not None:
            self._server.close()
        return await self._gate.drain(grace)


class ChannelServer(_Listener):
    """Accept channels (``make_channel(app)`` makes each server-side driving protocol)
    and serve each with ``service``; at most ``max_connections`` at once, and one more
    is refused with ``refusal`` (bytes the refused peer reads: an alert), never queued.

    >>> server = ChannelServer(make_channel, ForwardTo("127.0.0.1", 8080), log=log)
    >>> await server.start("0.0.0.0", 4433)
    >>> ...
    >>> await server.shutdown(grace=10)
    """

    def __init__(self, make_channel: ChannelFactory, service: Service, *,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, refusal: bytes = b"",
                 log: StreamLog | None = None) -> None:
        super().__init__(max_connections, log)
        self.make_channel = make_channel
        self.service = service
        self.refusal = refusal

    def _accept(self) -> asyncio.BaseProtocol:
        gate = self._gate
        if gate.full:
            return _Refusal(gate, self.refusal)
        stream = gate.admit()
        try:
            protocol = self.make_channel(self.service.app(stream))
        except Exception as exc:  # a context that cannot make connections: said once each
            stream.end("handshake failed", exc)
            return _Dropped()
        _track_handshake(stream, protocol, self.log)
        return protocol


class LocalForwarder(_Listener):
    """Accept local TCP clients; each gets its own channel, opened by ``open_channel``
    (which connects with the given application protocol and returns the driving
    protocol once connected; its handshake future says how the handshake went)."""

    def __init__(self, open_channel: Callable[[asyncio.Protocol], Awaitable[DrivingProtocol]],
                 *, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 log: StreamLog | None = None) -> None:
        super().__init__(max_connections, log)
        self.open_channel = open_channel
        self._tasks: set[asyncio.Task[None]] = set()

    def _accept(self) -> asyncio.BaseProtocol:
        gate = self._gate
        if gate.full:
            return _Refusal(gate, b"")
        stream = gate.admit()
        splice = Splice(stream)
        plain = splice.plain_end()
        loop = asyncio.get_running_loop()

        async def connect() -> None:
            try:
                protocol = await self.open_channel(splice.channel_end())
            except Exception as exc:  # refused, unreachable, a context that cannot work
                splice.fail(f"cannot connect: {failure_text(exc)}", exc)
                return
            _track_handshake(stream, protocol, self.log)
            with contextlib.suppress(Exception):
                await protocol.handshake
            if stream.outcome == "handshake failed":
                splice.fail("handshake failed", stream.error)

        task = loop.create_task(connect())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return plain


def connect_channel(make_channel: ChannelFactory, host: str, port: int,
                    connect_timeout: float | None = None
                    ) -> Callable[[asyncio.Protocol], Awaitable[DrivingProtocol]]:
    """An ``open_channel`` for :class:`LocalForwarder`: a TCP connection to
    ``host:port`` driven by ``make_channel(app)``."""

    async def open_channel(app: asyncio.Protocol) -> DrivingProtocol:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(connect_timeout):
            _, protocol = await loop.create_connection(lambda: make_channel(app), host, port)
        return protocol

    return open_channel

