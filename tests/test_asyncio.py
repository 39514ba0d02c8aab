"""hybridkex.asyncio (open_connection, start_server) over real TCP sockets on loopback.

Clients and servers run in one event loop per test (``run``); for what a well-behaved
peer never does, raw sockets and the raw TCP relay of tests/loopback.  Every test runs
under ``asyncio.wait_for`` and a guard that dumps all stacks and exits rather than hang;
every socket read has a time limit.  A server made with ``loop.create_server`` and
SecureProtocol directly (``capturing_server``) shows the typed error a failed server-side
handshake ends with, which start_server's callback never sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest

from hybridkex import asyncio as hkx
from hybridkex.errors import (
    AlertReceived,
    ConnectionTruncated,
    HandshakeTimeout,
    HybridKexError,
    ProtocolError,
    QKDKeyRefused,
    RecordAuthenticationFailed,
)
from hybridkex.protocol import SessionInfo
from hybridkex.transport import Context, SecureSocket
from tests.hkx1 import SERVER, make_sites
from tests.loopback import (
    C2S,
    S2C,
    TEST_LIMIT,
    TIMEOUT,
    Relay,
    Server,
    client_hello,
    connect,
    contexts,
    count_fds,
    reset,
    same_session,
)

pytestmark = pytest.mark.time_limit(TEST_LIMIT)

PSK_UNITS = 4
HOST = "127.0.0.1"

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def run(main: Callable[[], Coroutine[Any, Any, None]], limit: float = 30.0) -> None:
    """``main()`` in a new event loop, in the loop's only task, within ``limit`` seconds."""

    async def limited() -> None:
        async with asyncio.timeout(limit):
            await main()

    asyncio.run(limited())



def port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


async def within(awaitable: Awaitable[Any], seconds: float = TIMEOUT) -> Any:
    return await asyncio.wait_for(awaitable, seconds)


async def open_client(ctx: Context, port: int, **kwargs: Any) -> Streams:
    streams: Streams = await within(
        hkx.open_connection(HOST, port, context=ctx, peer=SERVER, **kwargs))
    return streams


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, HybridKexError):
        await within(writer.wait_closed())


def other_tasks() -> set[asyncio.Task[Any]]:
    """Tasks still around besides the test's own."""
    current = asyncio.current_task()
    return {task for task in asyncio.all_tasks() if task is not current}


@contextlib.asynccontextmanager
async def serving(ctx: Context, callback: hkx.ClientConnectedCallback,
                  **kwargs: Any) -> AsyncIterator[int]:
    """start_server on loopback; closed and waited for on the way out."""
    server = await hkx.start_server(callback, HOST, 0, context=ctx, **kwargs)
    try:
        yield port_of(server)
    finally:
        server.close()
        await within(server.wait_closed())


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send back everything until the client's close_notify, then close."""
    try:
        while data := await within(reader.read(1 << 16)):
            writer.write(data)
            await within(writer.drain())
    finally:
        await close(writer)



@contextlib.asynccontextmanager
async def capturing_server(ctx: Context, handshake_timeout: float | None = 5.0
                           ) -> AsyncIterator[tuple[int, list[hkx.SecureProtocol]]]:
    """A server of SecureProtocols made by hand, so a test can await each handshake."""
    loop = asyncio.get_running_loop()
    protocols: list[hkx.SecureProtocol] = []

    def factory() -> hkx.SecureProtocol:
        app = asyncio.StreamReaderProtocol(asyncio.StreamReader())
        protocol = hkx.SecureProtocol(ctx.new_connection(True, None), app, handshake_timeout)
        protocols.append(protocol)
        return protocol

    server = await loop.create_server(factory, HOST, 0)
    try:
        yield port_of(server), protocols
    finally:
        server.close()
        await within(server.wait_closed())


@contextlib.asynccontextmanager
async def raw_server(behaviour: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                         Awaitable[Any]]) -> AsyncIterator[int]:
    """A plain TCP server (no HKX/1) whose connections run ``behaviour``; yields its port.
    On the way out it waits for every connection's ``behaviour`` to finish."""
    handlers: list[asyncio.Task[Any]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            handlers.append(task)
        try:
            await behaviour(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, HOST, 0)
    try:
        yield port_of(server)
    finally:
        server.close()
        await within(server.wait_closed())
        await within(asyncio.gather(*handlers, return_exceptions=True))


async def raw_connect(port: int) -> socket.socket:
    """A plain, non-blocking TCP client socket."""
    sock = socket.socket()
    sock.setblocking(False)
    await within(asyncio.get_running_loop().sock_connect(sock, (HOST, port)))
    return sock


async def read_to_end(sock: socket.socket) -> bytes:
    """What arrives until the peer's FIN (or reset)."""
    loop = asyncio.get_running_loop()
    out = b""
    try:
        while chunk := await within(loop.sock_recv(sock, 1 << 16)):
            out += chunk
    except ConnectionResetError:
        pass
    return out


# -- round trips ------------------------------------------------------------------------


def test_echo_small_large_and_lines() -> None:
    sites = make_sites()
    client_ctx, server_ctx = contexts(sites)
    server_side: list[tuple[Any, ...]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_side.append((writer.get_extra_info("session_info"),
                            writer.get_extra_info("peer_identity"),
                            writer.get_extra_info("peername")))
        try:
            async for line in reader:  # lines until the client's close_notify
                writer.write(line.decode().upper().encode())
                await within(writer.drain())
        finally:
            await close(writer)

    async def main() -> None:
        async with serving(server_ctx, handler, limit=1 << 21) as port:
            reader, writer = await open_client(client_ctx, port)
            writer.write(b"hello\n")
            assert await within(reader.readline()) == b"HELLO\n"
            big = os.urandom(1 << 20).hex().encode()[: (1 << 20) - 1] + b"\n"  # 1 MiB line
            writer.write(big)
            echoed = await within(reader.readexactly(len(big)))
            assert echoed == big.upper()
            lines = [f"ligne {i} é {'x' * (i * 31 % 200)}\n".encode() for i in range(300)]
            writer.writelines(lines)
            await within(writer.drain())
            for line in lines:
                assert await within(reader.readline()) == line.decode().upper().encode()
            info = writer.get_extra_info("session_info")
            assert isinstance(info, SessionInfo)
            assert writer.get_extra_info("peer_identity") == info.peer
            assert writer.get_extra_info("sockname") == server_side[0][2]
            assert writer.get_extra_info("hybridkex_connection").handshake_complete
            assert writer.can_write_eof()
            await close(writer)
        same_session(info, server_side[0][0])
        assert server_side[0][1] == server_side[0][0].peer
        assert info.auth_mode == "psk" and info.qkd and info.post_quantum
        assert other_tasks() == set()

    run(main)


def test_hundred_concurrent_clients() -> None:
    clients = 100
    sites = make_sites(keys_per_direction=clients * PSK_UNITS)
    client_ctx, server_ctx = contexts(sites, timeout=20.0)
    seen: list[str] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer.get_extra_info("session_info").transcript_hash)
        await echo(reader, writer)

    async def one(port: int, i: int) -> str:
        reader, writer = await open_client(client_ctx, port)
        try:
            for n in range(3):
                message = f"client {i} message {n} ".encode() * (n + 1)
                writer.write(message)
                assert await within(reader.readexactly(len(message))) == message
            info: SessionInfo = writer.get_extra_info("session_info")
            return info.transcript_hash
        finally:
            await close(writer)

    async def main() -> None:
        async with serving(server_ctx, handler) as port:
            results = await asyncio.gather(*(one(port, i) for i in range(clients)),
                                           return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            assert failures == []
            hashes = [r for r in results if isinstance(r, str)]
            for _ in range(100):  # the servers' last echo callbacks finish their close
                if not other_tasks():
                    break
                await asyncio.sleep(0.01)
        assert sorted(hashes) == sorted(seen) and len(set(seen)) == clients
        assert other_tasks() == set()

    run(main)
    assert sites.client_store is not None
    assert sites.client_store.status(SERVER).available_to_take == 0


def test_one_byte_at_a_time_both_ways() -> None:
    sites = make_sites()
    client_ctx, server_ctx = contexts(sites)
    message = os.urandom(700)

    async def main() -> None:
        async with serving(server_ctx, echo) as port:
            with Relay((HOST, port), byte_delay=0.0002) as relay:
                reader, writer = await open_client(client_ctx, relay.address[1])
                writer.write(message)
                assert await within(reader.readexactly(len(message))) == message
                assert writer.get_extra_info("session_info").qkd
                await close(writer)
                assert relay.forwarded[C2S] > 1800 and relay.forwarded[S2C] > 1500  # hellos + 700 B

    run(main)


def test_read_timeout_keeps_the_connection() -> None:
    sites = make_sites()
    client_ctx, server_ctx = contexts(sites)

    async def main() -> None:
        async with serving(server_ctx, echo) as port:
            reader, writer = await open_client(client_ctx, port)
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(10), 0.2)
            assert 0.15 < time.monotonic() - started < 3
            writer.write(b"still here")
            assert await within(reader.readexactly(10)) == b"still here"
            await close(writer)

    run(main)


def test_interop_with_blocking_sockets() -> None:
    """An asyncio client against a blocking server, and a blocking client that re-keys
    (rekey_qkd, key_update) against an asyncio server, with data flowing between."""
    sites = make_sites(keys_per_direction=32)
    client_ctx, server_ctx = contexts(sites)
    server_infos: list[SessionInfo] = []

    def blocking_echo(sock: SecureSocket) -> None:
        while data := sock.recv(1 << 16):
            sock.sendall(data)

    async def recording_echo(reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        try:
            await echo(reader, writer)
        finally:
            server_infos.append(writer.get_extra_info("session_info"))

    def rekeying_client(port: int) -> SessionInfo:
        with connect(client_ctx, (HOST, port)) as sock:
            for i in range(12):
                message = os.urandom(5000 + i)
                sock.sendall(message)
                if i % 4 == 1:
                    sock.rekey_qkd()  # the ack comes back before the echo below
                if i % 4 == 3:
                    sock.key_update(request_peer=True)
                back = b""
                while len(back) < len(message):
                    back += sock.recv(len(message) - len(back))
                assert back == message
            return sock.session_info()

    async def main() -> None:
        with Server(server_ctx, blocking_echo) as blocking:
            reader, writer = await open_client(client_ctx, blocking.address[1])
            writer.write(b"to a blocking server")
            assert await within(reader.readexactly(20)) == b"to a blocking server"
            await close(writer)
            outcome = await asyncio.to_thread(blocking.outcome)
            assert outcome.error is None
        async with serving(server_ctx, recording_echo) as port:
            client_info = await within(asyncio.to_thread(rekeying_client, port))
            for _ in range(100):
                if server_infos:
                    break
                await asyncio.sleep(0.01)
        assert client_info.qkd_rekeys == server_infos[0].qkd_rekeys == 3
        assert client_info.key_updates == server_infos[0].key_updates == 3
        same_session(client_info, server_infos[0])

    run(main)


# -- truncation and clean ends ----------------------------------------------------------


@pytest.mark.parametrize("end", ["abort", "close", "write_eof"])
def test_truncation_versus_clean_close(end: str) -> None:
    sites = make_sites()
    client_ctx, server_ctx = contexts(sites)
    answers: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"last words")
        if end == "abort":
            writer.transport.abort()  # the raw socket goes: no close_notify
        elif end == "close":
            await close(writer)
        else:
            writer.write_eof()  # close_notify; the client may still send
            answers.append(await within(reader.read()))
            await close(writer)

    async def main() -> None:
        async with serving(server_ctx, handler) as port:
            reader, writer = await open_client(client_ctx, port)
            assert await within(reader.readexactly(10)) == b"last words"
            if end == "abort":
                with pytest.raises(ConnectionTruncated):
                    await within(reader.read(10))
            else:
                assert await within(reader.read(10)) == b""
                assert reader.at_eof()
            if end == "write_eof":
                writer.write(b"after your end")
                writer.write_eof()
                for _ in range(100):
                    if answers:
                        break
                    await asyncio.sleep(0.01)
                assert answers == [b"after your end"]
            await close(writer)

    run(main)


def test_server_answers_after_blocking_client_half_closes() -> None:
    """A blocking client's shutdown(SHUT_WR) sends close_notify and a TCP FIN; the asyncio
    server reads a clean end and still answers over the half that is open, as a blocking
    server does (test_transport.test_half_close_with_shutdown)."""
    sites = make_sites()
    client_ctx, server_ctx = contexts(sites)
    payload = os.urandom(50_000)

    async def digest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = await within(reader.read())
        writer.write(hashlib.sha256(received).digest())
        await close(writer)

    def client(port: int) -> tuple[bytes, bytes]:
        with connect(client_ctx, (HOST, port)) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while len(answer) < 32 and (chunk := sock.recv(32 - len(answer))):
                answer += chunk
            return answer, sock.recv(10)

    async def main() -> None:
        async with serving(server_ctx, digest) as port:
            answer, end = await within(asyncio.to_thread(client, port))
        assert answer == hashlib.sha256(payload).digest()
        assert end == b""

    run(main)


# -- peers that go away mid-handshake ---------------------------------------------------


@pytest.mark.parametrize("how", ["half-hello-then-close", "half-hello-then-reset",
                                 "connect-then-close", "connect-then-reset"])
def test_server_sees_typed_error_when_client_leaves_mid_handshake(how: str) -> None:
    sites = make_sites()
    _, server_ctx = contexts(sites)
    hello = client_hello(sites)
    called: list[object] = []

    async def leave(port: int) -> None:
        loop = asyncio.get_running_loop()
        raw = await raw_connect(port)
        if how.startswith("half-hello"):
            await within(loop.sock_sendall(raw, hello[:len(hello) // 2]))
            await asyncio.sleep(0.05)
        if how.endswith("reset"):
            reset(raw)
        else:
            raw.close()

    async def main() -> None:
        async with capturing_server(server_ctx) as (port, protocols):
            await leave(port)
            for _ in range(100):
                if protocols:
                    break
                await asyncio.sleep(0.01)
            with pytest.raises(ConnectionTruncated):
                await within(protocols[0].handshake)
        # and start_server: the callback never runs, nothing is left behind
        async with serving(server_ctx, lambda r, w: called.append(w)) as port:
            await leave(port)
            await asyncio.sleep(0.1)
        assert called == []
        assert other_tasks() == set()

    run(main)


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_sees_typed_error_when_server_leaves_mid_handshake(how: str) -> None:
    sites = make_sites()
    client_ctx, _ = contexts(sites)

    async def read_hello_then_leave(reader: asyncio.StreamReader,
                                    writer: asyncio.StreamWriter) -> None:
        await within(reader.read(1 << 16))
        if how == "reset":
            writer.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # with a linger of 0: a reset

    async def main() -> None:
        async with raw_server(read_hello_then_leave) as port:
            with pytest.raises(ConnectionTruncated):
                await open_client(client_ctx, port)
        assert other_tasks() == set()

    run(main)


def test_client_handshake_timeout_and_cancellation_leave_nothing_open() -> None:
    """Against a server that never answers: HandshakeTimeout within the limit; cancelling
    open_connection at any point (wait_for, task.cancel) closes its connection."""
    sites = make_sites(keys_per_direction=64)
    client_ctx, _ = contexts(sites)
    ends: list[bytes] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ends.append(await within(reader.read()))  # the hello, then the client's FIN

    async def main() -> None:
        gc.collect()
        async with raw_server(silent) as port:
            before = count_fds()
            started = time.monotonic()
            with pytest.raises(HandshakeTimeout):
                await hkx.open_connection(HOST, port, context=client_ctx, peer=SERVER,
                                          handshake_timeout=0.5)
            assert 0.45 <= time.monotonic() - started < 2.0
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(
                    hkx.open_connection(HOST, port, context=client_ctx, peer=SERVER), 0.05)
            for delay in (0, 0, 0.001, 0.003, 0.01, 0.03):
                task = asyncio.create_task(
                    hkx.open_connection(HOST, port, context=client_ctx, peer=SERVER))
                await asyncio.sleep(delay)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            for _ in range(200):  # the silent server sees every connection end
                if count_fds() == before and len(ends) >= 2:
                    break
                await asyncio.sleep(0.01)
            assert count_fds() == before
        # each connection the silent server accepted ended; those that got as far as
        # the handshake had sent a ClientHello record (cancelled earlier: nothing)
        assert len(ends) >= 2 and all(e[:1] in (b"", b"\x16") for e in ends)
        assert ends[0][:1] == ends[1][:1] == b"\x16"
        assert other_tasks() == set()

    run(main)


@pytest.mark.parametrize("peer", ["silent", "one-byte-every-100ms"])
def test_server_handshake_timeout(peer: str) -> None:
    sites = make_sites()
    _, server_ctx = contexts(sites)
    hello = client_hello(sites)
    called: list[object] = []

    async def dawdle(port: int) -> tuple[bytes, float]:
        loop = asyncio.get_running_loop()
        raw = await raw_connect(port)
        started = time.monotonic()
        with raw:
            if peer != "silent":
                for byte in hello[:15]:
                    try:
                        await within(loop.sock_sendall(raw, bytes([byte])))
                    except OSError:
                        break
                    await asyncio.sleep(0.1)
            end = await read_to_end(raw)
        return end, time.monotonic() - started

    async def main() -> None:
        async with capturing_server(server_ctx, handshake_timeout=0.5) as (port, protocols):
            task = asyncio.create_task(dawdle(port))
            for _ in range(100):
                if protocols:
                    break
                await asyncio.sleep(0.01)
            started = time.monotonic()
            with pytest.raises(HandshakeTimeout):
                await within(protocols[0].handshake)
            assert time.monotonic() - started < 1.5
            await within(task)
        async with serving(server_ctx, lambda r, w: called.append(w),
                           handshake_timeout=0.5) as port:
            end, elapsed = await dawdle(port)
        assert end == b"" and elapsed < 2.0  # the server hung up, having sent nothing
        assert called == []
        assert other_tasks() == set()

    run(main)


# -- a man in the middle ----------------------------------------------------------------


@pytest.mark.parametrize("direction", [C2S, S2C])
def test_altered_application_byte_is_refused(direction: str) -> None:
    sites = make_sites()
    client_ctx, server_ctx = contexts(sites)
    secret = b"transfer 100 to account 42"
    delivered: list[bytes] = []
    server_errors: list[BaseException] = []

    async def main() -> None:
        armed = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                if direction == S2C:
                    await within(armed.wait())
                    writer.write(secret)
                while data := await within(reader.read(1 << 16)):
                    delivered.append(data)
            except BaseException as exc:
                server_errors.append(exc)
            finally:
                writer.close()

        async with serving(server_ctx, handler) as port:
            with Relay((HOST, port)) as relay:
                reader, writer = await open_client(client_ctx, relay.address[1])
                settled = await asyncio.to_thread(relay.settled)
                relay.flip[direction] = settled[direction] + 3 + 5  # a ciphertext byte
                armed.set()
                if direction == C2S:
                    writer.write(secret)
                    with pytest.raises(AlertReceived) as alert:  # the server's bad_record_mac
                        await within(reader.read(100))
                    assert alert.value.alert == 20
                else:
                    with pytest.raises(RecordAuthenticationFailed):
                        await within(reader.read(100))
                writer.close()
                for _ in range(200):
                    if server_errors:
                        break
                    await asyncio.sleep(0.01)
                assert relay.altered[direction] == 1
        expected = RecordAuthenticationFailed if direction == C2S else AlertReceived
        assert [type(e) for e in server_errors] == [expected]
        assert delivered == []

    run(main)


def test_altered_handshake_byte_fails_both_ends() -> None:
    sites = make_sites()
    client_ctx, server_ctx = contexts(sites)

    async def client(port: int) -> None:
        reader, writer = await open_client(client_ctx, port)
        try:
            await within(reader.read(10))  # if the client finished, the alert lands here
        finally:
            writer.close()

    async def main() -> None:
        async with capturing_server(server_ctx) as (port, protocols):
            for direction in (C2S, S2C):
                with Relay((HOST, port)) as relay:
                    relay.flip[direction] = 200  # a ClientHello / ServerHello key share
                    with pytest.raises(ProtocolError):
                        await client(relay.address[1])
                    with pytest.raises(ProtocolError):
                        await within(protocols[-1].handshake)
                    assert relay.altered[direction] == 1

    run(main)


# -- resources ------------------------------------------------------------------------


def test_no_descriptors_or_tasks_leak_after_failures() -> None:
    sites = make_sites(keys_per_direction=64)
    client_ctx, server_ctx = contexts(sites, timeout=0.3)
    stranger = Context.from_config(make_sites().client)
    hello = client_hello(sites)

    async def main() -> None:
        gc.collect()
        before = count_fds()
        async with serving(server_ctx, echo) as port:
            for _ in range(3):
                reader, writer = await open_client(client_ctx, port)
                writer.write(b"ping")
                assert await within(reader.readexactly(4)) == b"ping"
                await close(writer)
            with pytest.raises(AlertReceived) as refused:  # a pool the server lacks
                await open_client(stranger, port)
            assert refused.value.alert == QKDKeyRefused.alert
            for leave in (socket.socket.close, reset):
                raw = await raw_connect(port)
                await within(asyncio.get_running_loop().sock_sendall(raw, hello[:100]))
                leave(raw)
            silent = await raw_connect(port)
            assert await read_to_end(silent) == b""  # the server's handshake timeout
            silent.close()
        async with raw_server(lambda r, w: within(r.read())) as mute:
            with pytest.raises(HandshakeTimeout):
                await open_client(client_ctx, mute)
        for _ in range(100):
            if count_fds() == before and not other_tasks():
                break
            await asyncio.sleep(0.01)
        assert count_fds() == before
        assert other_tasks() == set()

    run(main)


def test_start_server_reports_failed_handshakes() -> None:
    """A refused client never reaches client_connected_cb, but handshake_failed_cb hears
    of it with the typed error."""

    async def main() -> None:
        sites = make_sites(client={"auth": "signature"})
        failures: list[tuple[Exception, object]] = []
        connected: list[object] = []

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connected.append(writer)
            writer.close()

        server = await hkx.start_server(
            on_client, "127.0.0.1", 0, context=Context.from_config(sites.server),
            handshake_failed_cb=lambda exc, peer: failures.append((exc, peer)))
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x16\x00\x05garbage-that-is-not-a-hello")
        await writer.drain()
        for _ in range(100):
            if failures:
                break
            await asyncio.sleep(0.02)
        writer.close()
        server.close()
        await server.wait_closed()
        assert not connected
        assert len(failures) == 1
        exc, peer = failures[0]
        assert isinstance(exc, ProtocolError)
        assert isinstance(peer, tuple) and peer[0] == "127.0.0.1"

    run(main)
