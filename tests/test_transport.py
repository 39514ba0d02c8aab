"""Blocking secure sockets (hybridkex.transport) over real TCP sockets on loopback.

A threaded server (tests/loopback.Server) and clients made with ``Context.wrap_socket``;
for what a well-behaved peer never does, raw sockets and a raw TCP relay
(tests/loopback.Relay) that forwards a byte at a time, holds bytes back or alters one.
Every socket operation has a time limit (tests/loopback.TIMEOUT) and every test runs
under a guard that dumps all stacks and exits rather than hang.
"""

from __future__ import annotations

import array
import gc
import hashlib
import os
import socket
import struct
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from hybridkex.errors import (
    AlertReceived,
    ConnectionTruncated,
    HandshakeTimeout,
    LocalProtocolError,
    ProtocolError,
    RecordAuthenticationFailed,
)
from hybridkex.protocol import SessionInfo
from hybridkex.transport import Context, SecureSocket
from hybridkex.transport.socket import READ_INTO, READ_INTO_MAX, next_read_size
from tests.hkx1 import CLIENT, SERVER, Sites, make_sites
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
    wait_for_fds,
)

pytestmark = pytest.mark.time_limit(TEST_LIMIT)

PSK_UNITS = 4  # pool keys one psk handshake takes at each site: binder, two MACs, QKD key


@pytest.fixture
def sites() -> Sites:
    return make_sites(keys_per_direction=64)



# -- server handlers ----------------------------------------------------------------------


def echo(sock: SecureSocket) -> int:
    """Send back everything until the client's close_notify; the byte count."""
    total = 0
    while data := sock.recv(1 << 16):
        sock.sendall(data)
        total += len(data)
    return total


def recv_exactly(sock: SecureSocket, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        chunk = sock.recv(size - len(out))
        if not chunk:
            raise EOFError(f"the peer closed after {len(out)} of {size} bytes")
        out += chunk
    return bytes(out)


def message_echo(sock: SecureSocket) -> int:
    """Length-prefixed messages: each is read whole, then sent back whole."""
    count = 0
    while header := sock.recv(4):
        header += recv_exactly(sock, 4 - len(header))
        (size,) = struct.unpack(">I", header)
        sock.sendall(header + recv_exactly(sock, size))
        count += 1
    return count


def upper_lines(sock: SecureSocket) -> int:
    """A line protocol through makefile('rwb'): every line comes back upper-cased."""
    lines = 0
    with sock.makefile("rwb") as f:
        for line in f:
            f.write(line.decode().upper().encode())
            f.flush()
            lines += 1
    return lines


def collect(sock: SecureSocket) -> list[bytes]:
    """Everything the client sent, chunk by chunk; an error propagates (the outcome)."""
    chunks = []
    while data := sock.recv(1 << 16):
        chunks.append(data)
    return chunks



# -- round trips ------------------------------------------------------------------------


def test_small_echo_and_send_returns_length(sites: Sites) -> None:
    client_ctx, server_ctx = contexts(sites)
    with Server(server_ctx, echo) as server, connect(client_ctx, server.address) as sock:
        assert sock.send(b"hello") == 5
        assert recv_exactly(sock, 5) == b"hello"
        assert sock.send(bytearray(b"abc")) == 3
        assert sock.send(memoryview(b"xyz0123")[1:5]) == 4
        assert recv_exactly(sock, 7) == b"abcyz01"
        sock.sendall(b"")
        sock.sendall(b"!")
        assert sock.recv(100) == b"!"
        assert sock.getpeername() == server.address
        assert sock.fileno() >= 0 and not sock.closed
    assert sock.closed
    outcome = server.outcome()
    assert outcome.error is None and outcome.result == 13


def test_send_returns_bytes_not_items(sites: Sites) -> None:
    """socket.send and SSLSocket.send return the number of bytes sent; for a buffer of
    4-byte items that is 4 times its len()."""
    client_ctx, server_ctx = contexts(sites)
    items = array.array("i", [1, 2, 3])
    a, b = socket.socketpair()
    with a, b:
        assert a.send(items) == items.itemsize * len(items)  # what a socket returns
        assert b.recv(64) == items.tobytes()
    with Server(server_ctx, echo) as server, connect(client_ctx, server.address) as sock:
        sent = sock.send(items)
        assert recv_exactly(sock, 12) == items.tobytes()
        assert sent == 12


def test_one_mebibyte_round_trip(sites: Sites) -> None:
    client_ctx, server_ctx = contexts(sites)
    payload = os.urandom(1 << 20)
    with Server(server_ctx, message_echo) as server, connect(client_ctx,
                                                             server.address) as sock:
        sock.sendall(struct.pack(">I", len(payload)) + payload)
        back = recv_exactly(sock, 4 + len(payload))
        assert back[4:] == payload
        # and an odd size that ends mid-record, right after
        sock.sendall(struct.pack(">I", 16385) + payload[:16385])
        assert recv_exactly(sock, 4 + 16385)[4:] == payload[:16385]
    outcome = server.outcome()
    assert outcome.error is None and outcome.result == 2


def test_reads_grow_while_they_come_back_full_and_only_then() -> None:
    sizes = [READ_INTO]
    for _ in range(4):
        sizes.append(next_read_size(sizes[-1], sizes[-1]))
    assert sizes == [1 << 18, 1 << 19, 1 << 20, 1 << 20, 1 << 20] and READ_INTO_MAX == 1 << 20
    assert next_read_size(READ_INTO, READ_INTO - 1) == READ_INTO  # a short read: no growth
    assert next_read_size(READ_INTO, 0) == READ_INTO


def test_eight_mebibytes_read_into_a_large_buffer(sites: Sites) -> None:
    """A bulk transfer read as an application does it (recv_into a 1 MiB buffer), with
    reads that grow as the sender keeps ahead: every byte arrives, in order."""
    client_ctx, server_ctx = contexts(sites)
    payload = os.urandom(8 << 20)

    def sink(sock: SecureSocket) -> str:
        digest, buffer = hashlib.sha256(), bytearray(1 << 20)
        total = 0
        while count := sock.recv_into(buffer):
            digest.update(memoryview(buffer)[:count])
            total += count
        return f"{total} {digest.hexdigest()}"

    with Server(server_ctx, sink) as server, connect(client_ctx, server.address) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
    outcome = server.outcome()
    assert outcome.error is None
    assert outcome.result == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"


def test_makefile_line_protocol(sites: Sites) -> None:
    client_ctx, server_ctx = contexts(sites)
    lines = [f"line {i}: {'é' * (i % 7)} {'x' * (i * 37 % 300)}\n" for i in range(200)]
    with Server(server_ctx, upper_lines) as server, connect(client_ctx,
                                                            server.address) as sock:
        with sock.makefile("rwb") as f:
            for line in lines[:100]:  # one at a time
                f.write(line.encode())
                f.flush()
                assert f.readline() == line.upper().encode()
            f.write(b"".join(line.encode() for line in lines[100:]))  # pipelined
            f.flush()
            for line in lines[100:]:
                assert f.readline().decode() == line.upper()
        with sock.makefile("rw", encoding="utf-8", newline="\n") as text:
            text.write("über\n")
            text.flush()
            assert text.readline() == "ÜBER\n"
    outcome = server.outcome()
    assert outcome.error is None and outcome.result == 201


def test_recv_into(sites: Sites) -> None:
    client_ctx, server_ctx = contexts(sites)
    with Server(server_ctx, echo) as server, connect(client_ctx, server.address) as sock:
        sock.sendall(b"0123456789")
        buf = bytearray(4)
        assert sock.recv_into(buf) == 4 and buf == b"0123"
        assert sock.pending() == 6
        assert sock.recv_into(buf, 2) == 2 and buf == b"4523"
        big = bytearray(100)
        view = memoryview(big)[10:]
        assert sock.recv_into(view) == 4 and big[10:14] == b"6789"
        assert sock.pending() == 0
        words = array.array("H", [0] * 4)  # a buffer of 2-byte items: counted in bytes
        sock.sendall(b"abcdefgh")
        received = 0
        while received < 8:
            received += sock.recv_into(memoryview(words).cast("B")[received:])
        assert words.tobytes() == b"abcdefgh"
    assert server.outcome().error is None


def test_signature_mode_session_info_and_exporter() -> None:
    sites = make_sites(client={"auth": "signature"})
    client_ctx, server_ctx = contexts(sites)

    def handler(sock: SecureSocket) -> tuple[Any, bytes]:
        return sock.peer_identity, sock.export_keying_material("test", b"ctx", 32)

    with Server(server_ctx, handler) as server, connect(client_ctx, server.address) as sock:
        client_info = sock.session_info()
        exported = sock.export_keying_material("test", b"ctx", 32)
    outcome = server.outcome()
    assert outcome.error is None and outcome.session is not None
    same_session(client_info, outcome.session)
    assert client_info.auth_mode == "signature" and client_info.qkd
    assert client_info.peer.kind == "raw-public-key" and client_info.peer.public_key_sha256
    server_peer, server_exported = outcome.result
    assert server_peer == outcome.session.peer and server_peer.kind == "raw-public-key"
    assert server_exported == exported


def test_session_info_and_peer_identity_agree(sites: Sites) -> None:
    client_ctx, server_ctx = contexts(sites)
    with Server(server_ctx, lambda s: s.peer_identity) as server, \
            connect(client_ctx, server.address) as sock:
        info = sock.session_info()
        assert sock.peer_identity == info.peer
    outcome = server.outcome()
    assert outcome.error is None and outcome.session is not None
    same_session(info, outcome.session)
    assert info.auth_mode == "psk" and info.qkd and info.post_quantum
    assert info.peer.kind == "psk" and outcome.result.kind == "psk"
    assert outcome.result == outcome.session.peer
    assert info.pool_keys_spent == outcome.session.pool_keys_spent == PSK_UNITS


# -- many clients -----------------------------------------------------------------------


def test_twenty_concurrent_clients() -> None:
    clients = 20
    sites = make_sites(keys_per_direction=clients * PSK_UNITS)
    client_ctx, server_ctx = contexts(sites)
    start = threading.Barrier(clients, timeout=TIMEOUT)
    results: dict[int, Any] = {}

    def run(i: int) -> None:
        try:
            start.wait()
            with connect(client_ctx, server.address) as sock:
                for n in range(3):
                    message = f"client {i} message {n} ".encode() * (i + 1)
                    sock.sendall(message)
                    assert recv_exactly(sock, len(message)) == message
                results[i] = sock.session_info().transcript_hash
        except BaseException as exc:
            results[i] = exc

    with Server(server_ctx, echo) as server:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT * 2)
        outcomes = [server.outcome() for _ in range(clients)]
    failures = {i: r for i, r in results.items() if isinstance(r, BaseException)}
    assert not failures
    assert len(results) == clients
    assert [o.error for o in outcomes] == [None] * clients
    hashes = {o.session.transcript_hash for o in outcomes if o.session is not None}
    assert hashes == set(results.values()) and len(hashes) == clients
    assert sites.client_store is not None and sites.server_store is not None
    assert sites.client_store.status(SERVER).available_to_take == 0
    assert sites.server_store.status(CLIENT).available_to_fetch == 0


# -- slow peers -----------------------------------------------------------------------


def test_one_byte_at_a_time_both_ways(sites: Sites) -> None:
    client_ctx, server_ctx = contexts(sites)
    message = os.urandom(700)
    with Server(server_ctx, echo) as server, \
            Relay(server.address, byte_delay=0.0002) as relay:
        with connect(client_ctx, relay.address) as sock:
            sock.sendall(message)
            assert recv_exactly(sock, len(message)) == message
            info = sock.session_info()
        outcome = server.outcome()
    assert outcome.error is None and outcome.session is not None
    same_session(info, outcome.session)
    assert relay.forwarded[C2S] > 1800 and relay.forwarded[S2C] > 1500  # hellos + 700 B


def test_recv_timeout_mid_record_keeps_the_connection(sites: Sites) -> None:
    """settimeout: recv raises TimeoutError, also with half a record buffered, and the
    connection carries on afterwards with nothing lost or repeated."""
    client_ctx, server_ctx = contexts(sites)
    with Server(server_ctx, echo) as server, Relay(server.address) as relay:
        with connect(client_ctx, relay.address) as sock:
            assert sock.gettimeout() == TIMEOUT  # what it was before the handshake
            sock.settimeout(0.2)
            started = time.monotonic()
            with pytest.raises(TimeoutError) as idle:
                sock.recv(10)
            assert not isinstance(idle.value, HandshakeTimeout)
            assert 0.15 < time.monotonic() - started < 3
            # the echo comes back as far as the middle of its record, then stops
            base = relay.settled()[S2C]
            relay.hold(S2C, base + 3 + 100)
            message = os.urandom(1000)
            sock.sendall(message)
            relay.wait_forwarded(S2C, base + 103)
            with pytest.raises(TimeoutError):
                sock.recv(1000)
            relay.release(S2C)
            sock.settimeout(TIMEOUT)
            assert recv_exactly(sock, 1000) == message
            sock.sendall(b"still here")
            assert recv_exactly(sock, 10) == b"still here"
        outcome = server.outcome()  # before the relay goes: the close_notify is through
    assert outcome.error is None and outcome.result == 1010


# -- peers that go away ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["half-hello-then-close", "half-hello-then-reset",
                                 "connect-then-close", "connect-then-reset"])
def test_server_sees_typed_error_when_client_leaves_mid_handshake(sites: Sites,
                                                                  how: str) -> None:
    _, server_ctx = contexts(sites)
    hello = client_hello(sites)
    with Server(server_ctx, echo) as server:
        raw = socket.create_connection(server.address, timeout=TIMEOUT)
        if how.startswith("half-hello"):
            raw.sendall(hello[:len(hello) // 2])
            time.sleep(0.05)
        if how.endswith("reset"):
            reset(raw)
        else:
            raw.close()
        outcome = server.outcome()
    assert isinstance(outcome.error, ConnectionTruncated), repr(outcome.error)
    assert outcome.closed_on_failure


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_sees_typed_error_when_server_leaves_mid_handshake(sites: Sites,
                                                                  how: str) -> None:
    client_ctx, _ = contexts(sites)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        raw = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        conn, _ = listener.accept()
        conn.settimeout(TIMEOUT)
        got = bytearray()

        def server() -> None:
            while len(got) < 1000:  # the ClientHello (about 1.3 KB), or most of it
                got.extend(conn.recv(1 << 16))
            if how == "reset":
                reset(conn)
            else:
                conn.close()

        thread = threading.Thread(target=server)
        thread.start()
        with pytest.raises(ConnectionTruncated):
            client_ctx.wrap_socket(raw, peer=SERVER)
        thread.join(TIMEOUT)
    assert raw.fileno() == -1
    assert got[0] == 22  # a handshake record


def test_client_handshake_timeout_against_silent_server(sites: Sites) -> None:
    client_ctx, _ = contexts(sites)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        raw = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        conn, _ = listener.accept()
        with conn:
            started = time.monotonic()
            with pytest.raises(HandshakeTimeout):
                client_ctx.wrap_socket(raw, peer=SERVER, handshake_timeout=0.5)
            elapsed = time.monotonic() - started
            assert raw.fileno() == -1
            conn.settimeout(TIMEOUT)
            received = b""
            while chunk := conn.recv(1 << 16):  # the hello, then the client's FIN
                received += chunk
    assert 0.45 <= elapsed < 2.0
    assert received[0] == 22


@pytest.mark.parametrize("peer", ["silent", "one-byte-every-100ms"])
def test_server_handshake_timeout(sites: Sites, peer: str) -> None:
    _, server_ctx = contexts(sites)
    hello = client_hello(sites)
    with Server(server_ctx, echo, handshake_timeout=0.5) as server:
        raw = socket.create_connection(server.address, timeout=TIMEOUT)
        started = time.monotonic()
        if peer != "silent":
            for byte in hello[:15]:  # 1.5 s of bytes, but never a whole hello
                try:
                    raw.sendall(bytes([byte]))
                except OSError:
                    break
                time.sleep(0.1)
        outcome = server.outcome()
        raw.close()
    assert isinstance(outcome.error, HandshakeTimeout), repr(outcome.error)
    assert outcome.closed_on_failure
    assert 0.45 <= outcome.at - started < 1.5


def test_truncation_versus_clean_close(sites: Sites) -> None:
    """Without close_notify, recv raises ConnectionTruncated; after it, b"" (again and
    again)."""
    client_ctx, _ = contexts(sites)
    raws: list[socket.socket] = []

    class Recording(Context):
        def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> SecureSocket:
            raws.append(sock)
            return super().wrap_socket(sock, *args, **kwargs)

    def truncate(sock: SecureSocket) -> None:
        sock.sendall(b"last words")
        raws[-1].close()  # the underlying socket: a FIN and no close_notify

    def clean(sock: SecureSocket) -> None:
        sock.sendall(b"last words")
        sock.close()

    recording = Recording.from_config(sites.server, handshake_timeout=5.0)
    for handler in (truncate, clean):
        with Server(recording, handler) as server, connect(client_ctx, server.address) as sock:
            assert recv_exactly(sock, 10) == b"last words"
            if handler is truncate:
                with pytest.raises(ConnectionTruncated):
                    sock.recv(10)
                with pytest.raises(LocalProtocolError):  # it stays failed
                    sock.recv(10)
            else:
                assert sock.recv(10) == b""
                assert sock.recv(10) == b""
                assert sock.recv_into(bytearray(5)) == 0
            outcome = server.outcome()
        assert outcome.error is None, repr(outcome.error)


def test_reset_after_handshake_is_an_error_not_an_end(sites: Sites) -> None:
    client_ctx, _ = contexts(sites)
    raws: list[socket.socket] = []

    def handler(sock: SecureSocket) -> None:
        sock.sendall(b"x")
        reset(raws[-1])

    class Recording(Context):
        def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> SecureSocket:
            raws.append(sock)
            return super().wrap_socket(sock, *args, **kwargs)

    with Server(Recording.from_config(sites.server), handler) as server, \
            connect(client_ctx, server.address) as sock:
        assert sock.recv(1) == b"x"
        with pytest.raises((ConnectionTruncated, ConnectionResetError)):
            sock.recv(10)
        server.outcome()


def test_half_close_with_shutdown(sites: Sites) -> None:
    """shutdown(SHUT_WR) sends close_notify: the server reads a clean end, and still
    answers over the half that is open."""
    client_ctx, server_ctx = contexts(sites)

    def handler(sock: SecureSocket) -> None:
        received = b"".join(collect(sock))
        sock.sendall(hashlib.sha256(received).digest())

    payload = os.urandom(50_000)
    with Server(server_ctx, handler) as server, connect(client_ctx, server.address) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        assert recv_exactly(sock, 32) == hashlib.sha256(payload).digest()
        assert sock.recv(10) == b""
    assert server.outcome().error is None


# -- a man in the middle ----------------------------------------------------------------


@pytest.mark.parametrize("direction", [C2S, S2C])
def test_altered_application_byte_is_refused(sites: Sites, direction: str) -> None:
    client_ctx, server_ctx = contexts(sites)
    secret = b"transfer 100 to account 42"
    delivered: list[bytes] = []  # what the server's recv returned, as it returned it
    armed = threading.Event()

    def handler(sock: SecureSocket) -> None:
        if direction == S2C:
            assert armed.wait(TIMEOUT)
            sock.sendall(secret)
        while data := sock.recv(1 << 16):
            delivered.append(data)

    with Server(server_ctx, handler) as server, Relay(server.address) as relay:
        sock = connect(client_ctx, relay.address)
        with sock:
            settled = relay.settled()
            relay.flip[direction] = settled[direction] + 3 + 5  # a ciphertext byte
            armed.set()
            if direction == C2S:
                sock.sendall(secret)
                outcome = server.outcome()
                assert isinstance(outcome.error, RecordAuthenticationFailed)
                # the server's bad_record_mac alert reaches the client
                with pytest.raises(AlertReceived) as alert:
                    sock.recv(100)
                assert alert.value.alert == 20
            else:
                with pytest.raises(RecordAuthenticationFailed):
                    sock.recv(100)
                assert sock.pending() == 0
        if direction == S2C:
            outcome = server.outcome()
            assert isinstance(outcome.error, AlertReceived)
            assert outcome.error.alert == 20
    assert relay.altered[direction] == 1
    assert delivered == []


@pytest.mark.parametrize("direction", [C2S, S2C])
def test_altered_handshake_byte_fails_both_ends(sites: Sites, direction: str) -> None:
    client_ctx, server_ctx = contexts(sites)
    with Server(server_ctx, echo) as server, Relay(server.address) as relay:
        relay.flip[direction] = 200  # a ClientHello key share / a ServerHello field
        client_error: BaseException | None = None
        try:
            with connect(client_ctx, relay.address) as sock:
                sock.recv(10)  # if the client finished, the server's alert arrives here
        except ProtocolError as exc:
            client_error = exc
        outcome = server.outcome()
    assert isinstance(client_error, ProtocolError)
    assert isinstance(outcome.error, ProtocolError) and outcome.session is None
    assert relay.altered[direction] == 1


# -- re-keying under load ---------------------------------------------------------------


def stream(seed: bytes, index: int, size: int) -> bytes:
    """Chunk ``index`` of a reproducible byte stream."""
    block = hashlib.sha256(seed + index.to_bytes(4, "big")).digest()
    return (block * (size // len(block) + 1))[:size]


def test_rekeys_while_data_flows_both_ways() -> None:
    """Each end has a reader thread and a writer thread; while data flows both ways,
    the writers call rekey_qkd and key_update.  Every byte arrives intact and in order,
    and both ends agree on how often the keys changed."""
    sites = make_sites(keys_per_direction=64)
    client_ctx, server_ctx = contexts(sites)
    chunks, size = 96, 8192
    done: dict[str, Any] = {}

    def writer(sock: SecureSocket, name: str, seed: bytes) -> None:
        rekeys = updates = 0
        try:
            for i in range(chunks):
                sock.sendall(stream(seed, i, size))
                if i % 12 == 5:
                    try:
                        sock.rekey_qkd()
                        rekeys += 1
                    except LocalProtocolError as exc:  # the previous one is in flight
                        if "in flight" not in str(exc):
                            raise
                if i % 16 == 9:
                    sock.key_update(request_peer=name == "client")
                    updates += 1
                time.sleep(0.001)
            done[f"{name} writer"] = (rekeys, updates)
        except BaseException as exc:
            done[f"{name} writer"] = exc

    def reader(sock: SecureSocket, name: str, seed: bytes) -> None:
        try:
            for i in range(chunks):
                assert recv_exactly(sock, size) == stream(seed, i, size), f"chunk {i}"
            done[f"{name} reader"] = True
        except BaseException as exc:
            done[f"{name} reader"] = exc

    def duplex(sock: SecureSocket, name: str, send_seed: bytes, recv_seed: bytes) -> None:
        threads = [threading.Thread(target=writer, args=(sock, name, send_seed)),
                   threading.Thread(target=reader, args=(sock, name, recv_seed))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT * 2)
        assert not any(t.is_alive() for t in threads)

    def handler(sock: SecureSocket) -> SessionInfo:
        duplex(sock, "server", b"s", b"c")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""  # the client's close_notify: every message is in
        return sock.session_info()

    with Server(server_ctx, handler) as server, connect(client_ctx, server.address) as sock:
        duplex(sock, "client", b"c", b"s")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""
        client_info = sock.session_info()
        outcome = server.outcome()
    assert all(v is True or isinstance(v, tuple) for v in done.values()), done
    assert outcome.error is None, repr(outcome.error)
    server_info = outcome.result
    (c_rekeys, c_updates), (s_rekeys, s_updates) = done["client writer"], done["server writer"]
    assert c_rekeys >= 1 and s_rekeys >= 1
    assert client_info.qkd_rekeys == server_info.qkd_rekeys == c_rekeys + s_rekeys
    # the client asks the server to update too; the server does not ask back
    assert client_info.key_updates == c_updates
    assert server_info.key_updates == s_updates + c_updates
    assert client_info.pool_keys_spent == PSK_UNITS + c_rekeys + s_rekeys


def test_full_duplex_bulk_does_not_deadlock(sites: Sites) -> None:
    """Both ends send 8 MiB while reading what the other sends, one thread each way (a
    socket's ordinary full-duplex use).  The socket buffers are small, so both senders
    fill them; each end's reader must keep reading for either sender to finish."""
    client_ctx, server_ctx = contexts(sites)
    total, block = 8 << 20, 1 << 20
    results: dict[str, Any] = {}

    def small_buffers(sock: socket.socket) -> socket.socket:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        sock.settimeout(2.0)  # a deadlock ends in TimeoutError rather than a hang
        return sock

    def both_ways(sock: SecureSocket, name: str) -> None:
        data = os.urandom(block)

        def write() -> None:
            try:
                for _ in range(total // block):
                    sock.sendall(data)
                results[f"{name} sent"] = total
            except BaseException as exc:
                results[f"{name} sent"] = exc

        thread = threading.Thread(target=write)
        thread.start()
        received = 0
        try:
            while received < total:
                received += len(sock.recv(1 << 16))
            results[f"{name} received"] = received
        except BaseException as exc:
            results[f"{name} received"] = f"{exc!r} after {received} bytes"
        thread.join(TIMEOUT)

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        raw_client = small_buffers(socket.socket())
        raw_client.connect(listener.getsockname())
        raw_server = small_buffers(listener.accept()[0])
        server_thread = threading.Thread(
            target=lambda: both_ways(server_ctx.wrap_socket(raw_server, server_side=True),
                                     "server"))
        server_thread.start()
        client = client_ctx.wrap_socket(raw_client, peer=SERVER)
        both_ways(client, "client")
        server_thread.join(TIMEOUT)
        client.close()
        raw_server.close()
    assert results == {f"{n} {w}": total for n in ("client", "server")
                       for w in ("sent", "received")}


# -- resources ------------------------------------------------------------------------


def test_no_descriptors_leak_from_failed_and_good_connections() -> None:
    sites = make_sites(keys_per_direction=64)
    client_ctx, server_ctx = contexts(sites, timeout=0.3)
    gc.collect()
    before = count_fds()
    errors: list[BaseException] = []

    def attempt(fn: Callable[[], object]) -> None:
        try:
            fn()
        except (ProtocolError, HandshakeTimeout, OSError) as exc:
            errors.append(exc)

    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        with Server(server_ctx, echo) as server:
            for _ in range(3):  # good
                with connect(client_ctx, server.address) as sock:
                    sock.sendall(b"ping")
                    assert recv_exactly(sock, 4) == b"ping"
            # a client whose pool the server does not share: refused, both ends typed
            stranger = Context.from_config(make_sites().client)
            attempt(lambda: connect(stranger, server.address))
            # clients that leave mid-handshake, politely and not
            hello = client_hello(sites)
            for leave in (socket.socket.close, reset):
                raw = socket.create_connection(server.address, timeout=TIMEOUT)
                raw.sendall(hello[:100])
                leave(raw)
            # a client that never speaks: the server times out
            silent = socket.create_connection(server.address, timeout=TIMEOUT)
            # servers that never answer, or hang up: the client times out / is truncated
            with socket.create_server(("127.0.0.1", 0)) as mute:
                attempt(lambda: connect(client_ctx, mute.getsockname()[:2]))
                peer, _ = mute.accept()
                peer.close()
            with socket.create_server(("127.0.0.1", 0)) as rude:
                raw = socket.create_connection(rude.getsockname(), timeout=TIMEOUT)
                rude.accept()[0].close()
                attempt(lambda: client_ctx.wrap_socket(raw, peer=SERVER))
            outcomes = [server.outcome() for _ in range(7)]
            silent.close()
        gc.collect()
    assert wait_for_fds(before) == before
    kinds = sorted(type(o.error).__name__ for o in outcomes if o.error is not None)
    assert kinds == ["ConnectionTruncated", "ConnectionTruncated", "HandshakeTimeout",
                     "QKDKeyRefused"]
    assert sorted(type(e).__name__ for e in errors) == [
        "AlertReceived", "ConnectionTruncated", "HandshakeTimeout"]


def test_an_empty_record_is_not_the_end_of_stream(sites: Sites) -> None:
    """A peer may send an application-data record with no plaintext (the record layer
    accepts one): recv must go on to the next data, not return b"" (end of stream)."""
    cctx, sctx = Context.from_config(sites.client), Context.from_config(sites.server)
    a, b = socket.socketpair()
    box: dict[str, SecureSocket] = {}
    thread = threading.Thread(
        target=lambda: box.setdefault("s", sctx.wrap_socket(b, server_side=True)))
    thread.start()
    client = cctx.wrap_socket(a, peer=SERVER)
    thread.join(30)
    server = box["s"]
    try:
        protection = client._conn._send
        assert protection is not None  # keys are in place after the handshake
        with client._state:  # what another peer's stack may send: an empty record
            client._conn._outgoing.append(protection.seal(23, b""))
        client._flush()
        client.sendall(b"after the empty record")
        assert recv_exactly(server, 22) == b"after the empty record"
        client.sendall(b"x")
        with client._state:
            client._conn._outgoing.append(protection.seal(23, b""))
        client._flush()
        client.close()
        assert server.recv(100) == b"x"
        assert server.recv(100) == b""  # the close_notify, after the empty record
    finally:
        client.close()
        server.close()
