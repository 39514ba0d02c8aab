"""Forwarding (hybridkex.transport.forward): real TCP services and clients on loopback,
relayed through HKX/1 and TLS 1.3 channels by a ChannelServer and a LocalForwarder in
one event loop.

What is checked: an unmodified application (``http.server`` and ``urllib``) works
through it; half-close passes through (an echo service that answers only after its
client's end of file); backpressure holds in both directions (a service that stops
reading stops its client, rather than the relay buffering without bound); 200 streams
at once; ``max_connections`` refuses the one too many at once and admits again when a
stream ends; a reset on one side is a reset on the other, never a clean end; and a
shutdown lets open streams finish within the grace period, then cuts the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import os
import socket
import threading
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hybridkex.asyncio import SecureProtocol
from hybridkex.errors import AlertReceived
from hybridkex.protocol import ClientConnection
from hybridkex.tls import TLSContext
from hybridkex.tls.asyncio import TLSProtocol
from hybridkex.tls.errors import TLSConnectionTruncated
from hybridkex.transport import Context
from hybridkex.transport.aio import READ_CHUNK, STEP, DrivingProtocol, read_buffer
from hybridkex.transport.forward import (
    ChannelServer,
    Echo,
    ForwardTo,
    LocalForwarder,
    Splice,
    Stream,
    StreamLog,
    connect_channel,
)
from tests.hkx1 import CLIENT, SERVER, make_sites
from tests.loopback import half_close, read_to_the_end

HOST = "127.0.0.1"
TIMEOUT = 20.0
PROTOCOLS = ["hkx", "tls"]


pytestmark = pytest.mark.time_limit(90)


Factory = Callable[[asyncio.Protocol], DrivingProtocol]


def channel_factories(kind: str, keys: int = 64) -> tuple[Factory, Factory, str]:
    """(server factory, client factory, what the refused client reads) for one protocol."""
    if kind == "hkx":
        sites = make_sites(keys_per_direction=keys)
        server = Context.from_config(sites.server, handshake_timeout=10)
        client = Context.from_config(sites.client, handshake_timeout=10)
        return (lambda app: SecureProtocol(server.new_connection(True, None, key_events=True),
                                           app, 10),
                lambda app: SecureProtocol(client.new_connection(False, SERVER,
                                                                 key_events=True), app, 10),
                "hkx")
    sites = make_sites(x509_chain=True, qkd=False)
    tls_server = TLSContext(SERVER, identity=sites.server.identity, trust=sites.server.trust,
                            handshake_timeout=10)
    tls_client = TLSContext(CLIENT, identity=sites.client.identity, trust=sites.client.trust,
                            handshake_timeout=10)
    return (lambda app: TLSProtocol(tls_server.new_connection(True, None, key_events=True),
                                    app, 10),
            lambda app: TLSProtocol(tls_client.new_connection(False, SERVER,
                                                              key_events=True), app, 10),
            "tls")


@dataclass
class Recorder(StreamLog):
    ended_streams: list[Stream] = field(default_factory=list)
    established_streams: list[Stream] = field(default_factory=list)
    refusals: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def refused(self, address: str, open_streams: int) -> None:
        self.refusals += 1
        self.changed.set()

    def established(self, stream: Stream) -> None:
        self.established_streams.append(stream)
        self.changed.set()

    def ended(self, stream: Stream) -> None:
        self.ended_streams.append(stream)
        self.changed.set()

    async def until(self, check: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not check():
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Pair:
    """A forwarding pair: local port -> LocalForwarder -> channel -> ChannelServer -> target."""

    local_port: int
    server: ChannelServer
    forwarder: LocalForwarder
    server_log: Recorder
    client_log: Recorder


@contextlib.asynccontextmanager
async def forwarding(kind: str, target: tuple[str, int], *, max_server: int = 256,
                     max_local: int = 256, keys: int = 64) -> AsyncIterator[Pair]:
    make_server, make_client, _ = channel_factories(kind, keys)
    server_log, client_log = Recorder(), Recorder()
    server = ChannelServer(make_server, ForwardTo(*target), max_connections=max_server,
                           log=server_log)
    await server.start(HOST, 0)
    channel_port = server.sockets[0].getsockname()[1]
    forwarder = LocalForwarder(connect_channel(make_client, HOST, channel_port, 10),
                               max_connections=max_local, log=client_log)
    await forwarder.start(HOST, 0)
    try:
        yield Pair(forwarder.sockets[0].getsockname()[1], server, forwarder, server_log,
                   client_log)
    finally:
        await forwarder.shutdown(0)
        await server.shutdown(0)


def run(main: Callable[[], Any], limit: float = 60.0) -> Any:
    async def limited() -> Any:
        async with asyncio.timeout(limit):
            return await main()

    return asyncio.run(limited())


async def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


# -- services written without any knowledge of hybridkex ---------------------------------------


@contextlib.contextmanager
def http_service(directory: Path) -> Iterator[tuple[str, int]]:
    """python -m http.server, in a thread: the standard library's, unmodified."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer((HOST, 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield HOST, httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextlib.contextmanager
def answer_after_eof_service() -> Iterator[tuple[str, int]]:
    """Reads until its client's end of file, then sends back everything it read,
    reversed, then closes: it answers only if the client's half-close arrives."""
    listener = socket.create_server((HOST, 0))
    listener.settimeout(TIMEOUT)
    stop = threading.Event()

    def serve_one(conn: socket.socket) -> None:
        with conn, contextlib.suppress(ConnectionResetError):  # a cut stream resets
            conn.settimeout(TIMEOUT)
            data = bytearray()
            while chunk := conn.recv(1 << 16):
                data += chunk
            conn.sendall(bytes(data[::-1]))

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield HOST, listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()


# tests/loopback.py's half-closing client, with this module's time-out
half_close_exchange = functools.partial(half_close, timeout=TIMEOUT)


# -- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_an_unmodified_http_server_and_client(kind: str, tmp_path: Path) -> None:
    page = os.urandom(300_000)
    (tmp_path / "page.bin").write_bytes(page)
    (tmp_path / "index.html").write_text("<p>hello through the channel</p>\n")

    async def main() -> None:
        with http_service(tmp_path) as target:
            async with forwarding(kind, target) as pair:
                base = f"http://{HOST}:{pair.local_port}"

                def fetch(path: str) -> tuple[int, bytes]:
                    with urllib.request.urlopen(base + path, timeout=TIMEOUT) as response:
                        return response.status, response.read()

                assert await in_thread(fetch, "/index.html") == (
                    200, b"<p>hello through the channel</p>\n")
                assert await in_thread(fetch, "/page.bin") == (200, page)
                await pair.server_log.until(lambda: len(pair.server_log.ended_streams) == 2)
                await pair.client_log.until(lambda: len(pair.client_log.ended_streams) == 2)
                for stream in pair.server_log.ended_streams + pair.client_log.ended_streams:
                    assert stream.outcome == "closed", (stream.outcome, stream.error)
                assert {s.from_channel for s in pair.client_log.ended_streams} >= {
                    s.to_channel for s in pair.server_log.ended_streams}
                info = pair.server_log.established_streams[0].handshake_info
                assert info.peer.site == CLIENT

    run(main)


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_half_close_passes_through(kind: str) -> None:
    data = os.urandom(3_000_000)

    async def main() -> None:
        with answer_after_eof_service() as target:
            async with forwarding(kind, target) as pair:
                answers = await asyncio.gather(*(
                    in_thread(half_close_exchange, pair.local_port, data[i:])
                    for i in range(3)))
                assert answers == [data[i:][::-1] for i in range(3)]
                await pair.server_log.until(lambda: len(pair.server_log.ended_streams) == 3)
                assert all(s.outcome == "closed" for s in pair.server_log.ended_streams)

    run(main)


def test_backpressure_both_ways() -> None:
    """A service that stops reading stops its client (and the other way round): what the
    writer got rid of stays bounded by socket buffers, far below what it tried to send."""
    total = 200 * 1024 * 1024
    listener = socket.create_server((HOST, 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        conn, _ = listener.accept()
        accepted.append(conn)

    def push(sock: socket.socket, seconds: float) -> int:
        """Write until the socket has stayed full for ``seconds``; bytes written."""
        sock.settimeout(seconds)
        chunk, sent = b"\x00" * (1 << 16), 0
        with contextlib.suppress(TimeoutError):
            while sent < total:
                sent += sock.send(chunk)
        return sent

    async def main() -> tuple[int, int]:
        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        async with forwarding("hkx", listener.getsockname()[:2]) as pair:
            client = await in_thread(socket.create_connection, (HOST, pair.local_port),
                                     TIMEOUT)
            with client:
                await in_thread(thread.join, TIMEOUT)
                service = accepted[0]
                with service:
                    to_service = await in_thread(push, client, 1.0)  # the service reads nothing
                    to_client = await in_thread(push, service, 1.0)  # the client reads nothing
                    # and nothing was lost: the service reads what the client sent
                    service.settimeout(TIMEOUT)
                    received = 0
                    while received < to_service:
                        received += len(await in_thread(service.recv, 1 << 20))
                    assert received == to_service
        return to_service, to_client

    to_service, to_client = run(main)
    listener.close()
    # Socket buffers on loopback (client, relay both sides, service) hold some megabytes;
    # a relay without backpressure would have taken all 200 MB.
    assert to_service < 64 * 1024 * 1024, to_service
    assert to_client < 64 * 1024 * 1024, to_client


def test_two_hundred_streams_at_once() -> None:
    count = 200

    async def main() -> None:
        with answer_after_eof_service() as target:
            async with forwarding("hkx", target, keys=4 * count + 8) as pair:

                async def one(n: int) -> bytes:
                    reader, writer = await asyncio.open_connection(HOST, pair.local_port)
                    writer.write(n.to_bytes(4, "big") * 2500)
                    writer.write_eof()
                    data = await reader.read()
                    writer.close()
                    return data

                answers = await asyncio.gather(*(one(n) for n in range(count)))
                assert answers == [(n.to_bytes(4, "big") * 2500)[::-1] for n in range(count)]
                await pair.server_log.until(
                    lambda: len(pair.server_log.ended_streams) == count)
                assert all(s.outcome == "closed" for s in pair.server_log.ended_streams)
                ids = {s.handshake_info.qkd_key_ids for s in pair.server_log.established_streams}
                assert len(ids) == count  # a fresh QKD key for every stream
                assert pair.server_log.refusals == 0

    run(main, limit=90)


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_max_connections_refuses_at_once_and_admits_again(kind: str) -> None:
    make_server, make_client, _ = channel_factories(kind)

    async def main() -> None:
        log = Recorder()
        server = ChannelServer(make_server, Echo(), max_connections=2, refusal=(
            SecureProtocolRefusal if kind == "hkx" else b""), log=log)
        await server.start(HOST, 0)
        port = server.sockets[0].getsockname()[1]
        open_channel = connect_channel(make_client, HOST, port, 10)
        try:
            held = []
            for _ in range(2):
                app = asyncio.Protocol()
                protocol = await open_channel(app)
                await protocol.handshake
                held.append(protocol)
            app = asyncio.Protocol()
            protocol = await open_channel(app)
            if kind == "hkx":  # the refusal says why: the alert server_busy
                with pytest.raises(AlertReceived, match=r"server_busy .*connection limit"):
                    await protocol.handshake
            else:  # TLS has no such alert: the connection closes before the handshake
                with pytest.raises(TLSConnectionTruncated):
                    await protocol.handshake
            assert log.refusals == 1 and server.open_streams == 2
            held[0].transport.close()  # one ends: the next is admitted
            await log.until(lambda: len(log.ended_streams) == 1)
            protocol = await open_channel(asyncio.Protocol())
            await protocol.handshake
            assert server.open_streams == 2
        finally:
            await server.shutdown(0)

    run(main)


# What an HKX/1 server sends a client over its limit (the CLI's HKXChannel.refusal).
SecureProtocolRefusal = bytes([21, 0, 2, 2, 203])


def test_the_local_side_refuses_too_and_never_queues() -> None:
    async def main() -> None:
        with answer_after_eof_service() as target:
            async with forwarding("hkx", target, max_local=1) as pair:
                first = await in_thread(socket.create_connection, (HOST, pair.local_port),
                                        TIMEOUT)
                await pair.client_log.until(lambda: len(pair.client_log.established_streams)
                                            == 1)
                second = await in_thread(socket.create_connection, (HOST, pair.local_port),
                                         TIMEOUT)
                second.settimeout(TIMEOUT)
                with second, contextlib.suppress(ConnectionResetError):
                    assert await in_thread(second.recv, 10) == b""  # closed at once
                assert pair.client_log.refusals == 1
                first.sendall(b"ping")
                first.shutdown(socket.SHUT_WR)
                first.settimeout(TIMEOUT)
                assert await in_thread(first.recv, 10) == b"gnip"
                first.close()

    run(main)


def test_a_reset_is_passed_on_as_a_reset() -> None:
    """The service resets its connection: the local client sees a reset, not a clean end
    that could pass for a complete answer."""
    listener = socket.create_server((HOST, 0))

    def reset_after_reading() -> None:
        conn, _ = listener.accept()
        conn.recv(10)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()

    async def main() -> None:
        thread = threading.Thread(target=reset_after_reading, daemon=True)
        thread.start()
        async with forwarding("hkx", listener.getsockname()[:2]) as pair:
            client = await in_thread(socket.create_connection, (HOST, pair.local_port),
                                     TIMEOUT)
            client.settimeout(TIMEOUT)
            with client:
                client.sendall(b"request")
                with pytest.raises(ConnectionResetError):
                    await in_thread(read_to_the_end, client)
            await pair.server_log.until(lambda: bool(pair.server_log.ended_streams))
            assert pair.server_log.ended_streams[0].outcome == "failed"

    run(main)
    listener.close()


def test_shutdown_lets_streams_finish_then_cuts_the_rest() -> None:
    async def main() -> None:
        with answer_after_eof_service() as target:
            async with forwarding("hkx", target) as pair:
                quick = await in_thread(socket.create_connection, (HOST, pair.local_port),
                                        TIMEOUT)
                slow = await in_thread(socket.create_connection, (HOST, pair.local_port),
                                       TIMEOUT)
                quick.settimeout(TIMEOUT)
                slow.settimeout(TIMEOUT)
                await pair.server_log.until(lambda: len(pair.server_log.established_streams)
                                            == 2)
                shutdown = asyncio.ensure_future(pair.server.shutdown(grace=1.5))
                await asyncio.sleep(0.2)
                # no new channel while stopping
                assert pair.server.open_streams == 2
                quick.sendall(b"done")
                quick.shutdown(socket.SHUT_WR)
                assert await in_thread(quick.recv, 10) == b"enod"  # it finished in time
                assert await shutdown == 1  # the slow one was cut
                with pytest.raises(ConnectionResetError):  # and its client sees a reset
                    await in_thread(read_to_the_end, slow)
                outcomes = sorted(str(s.outcome) for s in pair.server_log.ended_streams)
                assert outcomes == ["closed", "cut"]
                quick.close()
                slow.close()

    run(main)


def test_a_client_hello_from_outside_does_not_reach_the_service() -> None:
    """The target is connected only after the handshake: a peer that never completes
    one (here: a hello, then silence) never touches the service."""
    listener = socket.create_server((HOST, 0))
    listener.settimeout(0.2)
    sites = make_sites()
    server_ctx = Context.from_config(sites.server, handshake_timeout=0.5)

    async def main() -> Stream:
        log = Recorder()
        server = ChannelServer(
            lambda app: SecureProtocol(server_ctx.new_connection(True, None, key_events=True),
                                       app, 0.5),
            ForwardTo(*listener.getsockname()[:2]), log=log)
        await server.start(HOST, 0)
        port = server.sockets[0].getsockname()[1]
        hello = ClientConnection(sites.client, SERVER)
        hello.start_handshake()
        _, writer = await asyncio.open_connection(HOST, port)
        writer.write(hello.data_to_send())
        await log.until(lambda: bool(log.ended_streams))
        writer.close()
        await server.shutdown(0)
        return log.ended_streams[0]

    stream = run(main)
    assert stream.outcome == "handshake failed" and "did not complete" in str(stream.error)
    assert stream.pool_keys_spent == 4  # what the server fetched for the hello: gone
    with pytest.raises(TimeoutError):
        listener.accept()
    listener.close()


class WriteRecorder(asyncio.Transport):
    """A transport that keeps what is written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_reads_are_handed_on_in_steps_from_one_buffer_per_thread() -> None:
    """Both sides of a relay read into their thread's read buffer and hand on what they
    read in pieces of at most STEP bytes (large buffers cost a relay more in fresh pages
    than in AES-GCM), copied out before the next read: two relays on two event loops in
    two threads, moving different data at once, deliver every byte as sent."""
    assert STEP <= 1 << 16  # below glibc's mmap threshold with the records' framing
    sent = os.urandom(READ_CHUNK - 1)
    splice = Splice(Stream(1))
    channel, plain = WriteRecorder(), WriteRecorder()
    splice.channel_end().connection_made(channel)
    plain_end = splice.plain_end()
    assert isinstance(plain_end, asyncio.BufferedProtocol)
    plain_end.connection_made(plain)
    memoryview(plain_end.get_buffer(-1))[:len(sent)] = sent
    plain_end.buffer_updated(len(sent))
    assert max(len(piece) for piece in channel.writes) == STEP
    assert b"".join(channel.writes) == sent
    buffers: dict[str, memoryview] = {}

    async def ends(name: str) -> None:
        driving = channel_factories("hkx")[0](asyncio.Protocol())
        plain = Splice(Stream(1)).plain_end()
        assert isinstance(plain, asyncio.BufferedProtocol)
        buffers[name] = read_buffer()
        for protocol in (driving, plain):
            assert isinstance(protocol, asyncio.BufferedProtocol)
            view = memoryview(protocol.get_buffer(-1))
            assert view.nbytes == READ_CHUNK
            assert view.obj is buffers[name].obj  # the thread's, not one per connection

    threads = [threading.Thread(target=run, args=(functools.partial(ends, name),))
               for name in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert set(buffers) == {"one", "two"}
    assert buffers["one"].obj is not buffers["two"].obj  # never shared between threads

    data = [os.urandom(4_000_000), os.urandom(4_000_000)]
    answers: list[bytes] = [b"", b""]

    def move(i: int) -> None:
        async def main() -> None:
            with answer_after_eof_service() as target:
                async with forwarding("hkx", target) as pair:
                    answers[i] = await in_thread(half_close_exchange, pair.local_port,
                                                 data[i])

        run(main)

    threads = [threading.Thread(target=move, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 3)
    assert answers == [data[0][::-1], data[1][::-1]]
