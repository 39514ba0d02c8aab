"""``serve`` and ``connect --listen-local`` on asyncio: the log, the signals, the status.

The channels themselves are :mod:`hybridkex.transport.forward`'s; this module says
what happens to them in words (one line per event on stderr, never key material),
stops on SIGINT or SIGTERM (no new channels; the open ones get ``--grace`` seconds to
finish, then are cut; a second signal cuts them at once), and turns a ``--once``
server's one stream into the exit status.  :class:`BackgroundServer` runs a server on
an event loop of its own in one thread, for ``hybridkex demo``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from hybridkex.cli.channel import (
    EXIT_HANDSHAKE,
    EXIT_NETWORK,
    EXIT_OK,
    EXIT_SESSION,
    Transport,
    hint,
    level_text,
    listen,
    pool_level,
    reason,
    spent_note,
)
from hybridkex.errors import HandshakeTimeout, HybridKexError, InvalidParameter, ProtocolError
from hybridkex.site import Site
from hybridkex.transport.forward import (
    ChannelServer,
    Echo,
    ForwardTo,
    LocalForwarder,
    Service,
    Sink,
    Stream,
    StreamLog,
    connect_channel,
    format_address,
)

__all__ = ["BackgroundServer", "ChannelLog", "forward_local", "serve", "status_of"]


def channels(count: int) -> str:
    return f"{count} channel{'' if count == 1 else 's'}"


def status_of(stream: Stream) -> int:
    """The exit status a stream's end stands for (docs/sites.md, exit status)."""
    if stream.outcome in ("closed", "cut", None):
        return EXIT_OK
    if stream.outcome == "handshake failed":
        if isinstance(stream.error, ProtocolError | HandshakeTimeout):
            return EXIT_HANDSHAKE
        return EXIT_NETWORK
    return EXIT_SESSION


class ChannelLog(StreamLog):
    """One line per event on stderr: ``prefix: address: what happened``."""

    def __init__(self, prefix: str, site: Site, transport: Transport[Any], *,
                 peer: str | None = None, auth: str | None = None,
                 on_end: Callable[[Stream], None] | None = None) -> None:
        self.prefix = prefix
        self.site = site
        self.transport = transport
        self.peer = peer  # known beforehand on the connecting side
        self.auth = auth
        self.on_end = on_end
        self.limit = 0

    def say(self, line: str) -> None:
        print(f"{self.prefix}: {line}", file=sys.stderr, flush=True)

    def _peer_of(self, stream: Stream) -> str:
        info = stream.handshake_info
        return info.peer.site if info is not None else (self.peer or "?")

    def refused(self, address: str, open_streams: int) -> None:
        self.say(f"{address}: refused: {channels(open_streams)} open, the limit "
                 f"(--max-connections {self.limit})")

    def established(self, stream: Stream) -> None:
        info = stream.handshake_info
        peer = info.peer.site
        line = f"{stream.address}: session with {peer}: {self.transport.summary(info)}"
        if info.qkd_key_ids:
            line += f"; QKD keys from {self.site.qkd_source_label(peer)}"
        # keys.db's level is a local read; a KME's would be a request per session on
        # this loop, so a KME's level is logged at start only (and by `site show`)
        if self.transport.uses_qkd and self.site.kme is None:
            line += f"; {pool_level(self.site, peer)}"
        self.say(line)

    def ended(self, stream: Stream) -> None:
        where, peer = stream.address, self._peer_of(stream)
        alert_name = self.transport.alert_name
        if stream.outcome == "handshake failed" or (
                stream.outcome == "failed" and stream.handshake_info is None):
            error = stream.error or ConnectionResetError("the channel closed")
            what = "handshake failed" if self.peer is None else f"handshake with {peer} failed"
            tls = self.transport.label.startswith("TLS")
            extra = hint(error, tls, self.auth) if self.peer else ""
            if stream.note and stream.outcome == "failed" and stream.protocol is None:
                self.say(f"{where}: channel to {peer} failed: {stream.note}; "
                         f"{spent_note(0)}")
            else:
                self.say(f"{where}: {what}: {reason(error, alert_name)}{extra}; "
                         f"{spent_note(stream.pool_keys_spent, stream.keys_in_flight)}")
        elif stream.outcome == "closed":
            info = stream.session_info()
            self.say(f"{where}: session with {peer} closed cleanly: {stream.from_channel} "
                     f"bytes in, {stream.to_channel} out, {self.transport.counters(info)}")
        elif stream.outcome == "cut":
            self.say(f"{where}: session with {peer} closed by server shutdown (the grace "
                     "period ended)" if self.peer is None else
                     f"{where}: session with {peer} cut by shutdown (the grace period ended)")
        else:
            why = stream.note or (reason(stream.error, alert_name) if stream.error
                                  else "ended early")
            if stream.failed_side == "tcp":
                why = f"the application's TCP connection failed: {why}"
            elif self.peer is not None and isinstance(stream.error, ConnectionResetError):
                why += (" (the server reset the channel; its log says why: a --forward "
                        "service it cannot reach, or its shutdown)")
            self.say(f"{where}: session with {peer} failed: {why}")
        if self.on_end is not None:
            self.on_end(stream)


class _Stopper:
    """SIGINT and SIGTERM: the first asks for a stop, a second cuts the open channels."""

    def __init__(self, log: ChannelLog) -> None:
        self.log = log
        self.stop = asyncio.Event()
        self.now = asyncio.Event()
        self.status = EXIT_OK
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                self._loop.add_signal_handler(sig, self._signal)

    def _signal(self) -> None:
        if self.stop.is_set():
            self.now.set()
        self.stop.set()

    def request(self, status: int) -> None:
        self.status = status
        self.stop.set()

    def close(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                self._loop.remove_signal_handler(sig)

    async def shutdown(self, server: ChannelServer | LocalForwarder, grace: float) -> int:
        """Stop accepting, give the open channels ``grace`` seconds, cut the rest."""
        if server.open_streams:
            self.log.say(f"stopping: no new channels; {channels(server.open_streams)} open "
                         f"get up to {grace:g} s to finish (signal again to close them now)")
        draining = asyncio.ensure_future(server.shutdown(grace))
        now = asyncio.ensure_future(self.now.wait())
        await asyncio.wait({draining, now}, return_when=asyncio.FIRST_COMPLETED)
        now.cancel()
        if draining.done():
            cut = draining.result()
        else:
            draining.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await draining
            cut = await server.shutdown(0)
        await asyncio.sleep(0.05)  # the transports closed just now flush and close
        return cut


async def log_pools(log: ChannelLog, site: Site, peers: list[str]) -> None:
    """One line per peer: its pool level (a KME's status awaited, never blocking the
    loop) and where its keys come from."""
    for peer in peers:
        try:
            level = level_text(site, await site.pool_level_async(peer))
        except HybridKexError as exc:
            level = f"pool with {peer}: not readable ({exc})"
        log.say(f"QKD {level}; from {site.qkd_source_label(peer)}")


def _service(args: argparse.Namespace) -> Service:
    if args.forward is not None:
        return ForwardTo(*args.forward)
    if args.echo:
        return Echo()
    out = sys.stdout.buffer
    lock = threading.Lock()

    def write(data: bytes) -> None:
        with lock:
            out.write(data)
            out.flush()

    return Sink(write)


def _listener(address: tuple[str, int]) -> socket.socket:
    """A socket listening on ``address``; a failure is a one-line error, not a traceback."""
    try:
        return listen(*address)
    except OSError as exc:
        raise InvalidParameter(f"cannot listen on {format_address(address)}: "
                               f"{exc.strerror or exc}") from None


def serve(args: argparse.Namespace, site: Site, transport: Transport[Any]) -> int:
    """``hybridkex serve``: accept channels until a signal (or, --once, one channel)."""
    with _listener(args.listen) as listener:
        return asyncio.run(_serve(args, site, transport, listener))


async def _serve(args: argparse.Namespace, site: Site, transport: Transport[Any],
                 listener: Any) -> int:
    log = ChannelLog("hybridkex serve", site, transport)
    log.limit = 1 if args.once else args.max_connections
    stopper = _Stopper(log)
    if args.once:
        log.on_end = lambda stream: stopper.request(status_of(stream))
    server = ChannelServer(
        lambda app: transport.driving_protocol(app, server_side=True, peer=None),
        _service(args), max_connections=log.limit, refusal=transport.refusal, log=log)
    try:
        await server.start(sock=listener)
        peers = ", ".join(site.peers()) or (
            "none in trust/ (psk only)" if transport.label == "HKX/1"
            else "none in trust/ (any certificate trust/ admits)")
        mode = (f"forwarding to {format_address(args.forward)}" if args.forward else
                "echo" if args.echo else "data to stdout")
        log.say(f"site {site.name} ({transport.label}; {mode}; peers: {peers}; at most "
                f"{channels(log.limit)}) listening on "
                f"{format_address(listener.getsockname())}")
        if transport.uses_qkd:
            await log_pools(log, site, site.qkd_peers())
            unmapped = sorted(set(site.peers()) - set(site.qkd_peers()))
            if site.kme is not None and unmapped:
                log.say(f"warning: site.toml's [key_source.peers] names no SAE ID for "
                        f"{', '.join(unmapped)} (in trust/): their sessions get no QKD key")
        await stopper.stop.wait()
        cut = await stopper.shutdown(server, args.grace)
    finally:
        stopper.close()
        await site.aclose()
    log.say(f"site {site.name} stopped" + (f" ({channels(cut)} closed at the end of the "
                                          "grace period)" if cut else ""))
    return stopper.status


def forward_local(args: argparse.Namespace, site: Site, peer: str,
                  transport: Transport[Any]) -> int:
    """``hybridkex connect --listen-local``: a channel to ``peer`` per local client."""
    with _listener(args.listen_local) as listener:
        return asyncio.run(_forward_local(args, site, peer, transport, listener))


async def _forward_local(args: argparse.Namespace, site: Site, peer: str,
                         transport: Transport[Any], listener: Any) -> int:
    log = ChannelLog("hybridkex connect", site, transport, peer=peer, auth=args.auth)
    log.limit = args.max_connections
    stopper = _Stopper(log)
    remote_host, remote_port = args.address
    forwarder = LocalForwarder(
        connect_channel(lambda app: transport.driving_protocol(app, server_side=False,
                                                               peer=peer),
                        remote_host, remote_port, transport.handshake_timeout),
        max_connections=args.max_connections, log=log)
    try:
        await forwarder.start(sock=listener)
        log.say(f"site {site.name} ({transport.label}; at most {channels(log.limit)}) "
                f"forwarding {format_address(listener.getsockname())} to {peer} at "
                f"{format_address(args.address)}")
        if transport.uses_qkd:
            await log_pools(log, site, [peer])
        await stopper.stop.wait()
        cut = await stopper.shutdown(forwarder, args.grace)
    finally:
        stopper.close()
        await site.aclose()
    log.say(f"site {site.name} stopped" + (f" ({channels(cut)} cut at the end of the "
                                          "grace period)" if cut else ""))
    return EXIT_OK


class BackgroundServer:
    """A :class:`ChannelServer` on an event loop of its own, in one thread: for a program
    that is otherwise blocking (``hybridkex demo``).  ``on_end(stream)`` runs in that
    thread as each stream ends."""

    def __init__(self, transport: Transport[Any], listener: Any, service: Service,
                 on_end: Callable[[Stream], None],
                 on_stop: Callable[[], Awaitable[None]] | None = None) -> None:
        self.transport = transport
        self.listener = listener
        self.service = service
        self.on_end = on_end
        self.on_stop = on_stop  # awaited on the server's loop as it stops (Site.aclose)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="channel-server", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def stop(self, grace: float = 0.0) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(grace + 10)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = ChannelServer(
            lambda app: self.transport.driving_protocol(app, server_side=True, peer=None),
            self.service, log=_Ended(self.on_end))
        await server.start(sock=self.listener)
        self._ready.set()
        await self._stop.wait()
        await server.shutdown(0)
        if self.on_stop is not None:
            await self.on_stop()


class _Ended(StreamLog):
    def __init__(self, on_end: Callable[[Stream], None]) -> None:
        self.on_end = on_end

    def ended(self, stream: Stream) -> None:
        self.on_end(stream)
