"""Real sockets on loopback for the transport tests (test_transport.py, test_asyncio.py).

What these tests share: a time limit on every socket operation (``TIMEOUT``) and on every
test (``TEST_LIMIT``, for the ``time_limit`` mark of tests/conftest.py, which dumps every
thread's stack and ends the process rather than let a deadlock hang the run), the number
of open file descriptors, a ClientHello to send from a raw socket, a client that
half-closes and reads the answer to the end (:func:`half_close`, also for the forwarding
tests), and :class:`Relay`,
a raw TCP relay that sits between a client and a server and can forward one byte at a
time, hold bytes back, or alter one byte; and a threaded blocking HKX/1 server
(:class:`Server`) that reports each connection's outcome.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hybridkex.protocol import ClientConnection, SessionInfo
from hybridkex.transport import Context, SecureSocket
from tests.hkx1 import CLIENT, SERVER, Sites

__all__ = [
    "C2S",
    "S2C",
    "TEST_LIMIT",
    "TIMEOUT",
    "Outcome",
    "Relay",
    "Server",
    "client_hello",
    "connect",
    "contexts",
    "count_fds",
    "half_close",
    "read_to_the_end",
    "reset",
    "same_session",
    "wait_for_fds",
]

TIMEOUT = 10.0  # seconds, for every socket operation a test makes
TEST_LIMIT = 45.0  # seconds, for a whole test: beyond it the process dumps stacks and exits
# (the tests mark themselves time_limit(TEST_LIMIT): tests/conftest.py)
C2S, S2C = "c2s", "s2c"


def count_fds() -> int:
    """File descriptors this process has open now."""
    return len(os.listdir("/proc/self/fd"))


def wait_for_fds(expected: int, seconds: float = 2.0) -> int:
    """The open file descriptor count, polled until it is ``expected`` or time is up
    (a thread that is finishing may still be closing its socket)."""
    deadline = time.monotonic() + seconds
    while (now := count_fds()) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return now


def client_hello(sites: Sites) -> bytes:
    """The bytes of a real ClientHello from ``sites.client`` (it spends pool keys)."""
    conn = ClientConnection(sites.client, SERVER)
    conn.start_handshake()
    return conn.data_to_send()


def read_to_the_end(sock: socket.socket) -> bytes:
    """Everything ``sock`` receives until the peer's end of file."""
    data = bytearray()
    while chunk := sock.recv(1 << 16):
        data += chunk
    return bytes(data)


def half_close(port: int, data: bytes, *, timeout: float = TIMEOUT) -> bytes:
    """Send ``data`` to ``port`` on loopback, then end our side (FIN) and read the answer
    to the end: a client that speaks only once it has sent everything."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return read_to_the_end(s)


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset (RST) instead of an orderly FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Relay:
    """A raw TCP relay on loopback: one client connection in, forwarded to ``target``.

    Each direction (``"c2s"``, ``"s2c"``) runs in a thread of its own.  ``byte_delay``
    (seconds) makes the relay forward one byte per send with that pause after each, so the
    far end reads a byte at a time.  ``forwarded[d]`` counts the bytes sent on in
    direction ``d``; ``flip[d] = n`` XORs byte ``n`` (counted from the start of that
    direction) with 0x01 on its way; ``hold(d, n)`` forwards at most ``n`` bytes of that
    direction until ``release(d)``.  An end of file is passed on as a FIN, a reset as
    a reset.
    """

    def __init__(self, target: tuple[str, int], *, byte_delay: float | None = None) -> None:
        self.target = target
        self.byte_delay = byte_delay
        self.forwarded = {C2S: 0, S2C: 0}
        self.flip: dict[str, int] = {}
        self.altered = {C2S: 0, S2C: 0}
        self._limits: dict[str, int] = {}
        self._cond = threading.Condition()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(TIMEOUT)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._threads = [threading.Thread(target=self._run, name="relay", daemon=True)]
        self._threads[0].start()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def hold(self, direction: str, limit: int) -> None:
        with self._cond:
            self._limits[direction] = limit

    def release(self, direction: str) -> None:
        with self._cond:
            self._limits.pop(direction, None)
            self._cond.notify_all()

    def wait_forwarded(self, direction: str, count: int, seconds: float = TIMEOUT) -> None:
        """Wait until at least ``count`` bytes went through in ``direction``."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.forwarded[direction] >= count, seconds):
                raise TimeoutError(f"the relay forwarded {self.forwarded[direction]} of "
                                   f"{count} bytes {direction}")

    def settled(self, seconds: float = 0.05) -> dict[str, int]:
        """The byte counts once nothing has moved for ``seconds``."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            before = dict(self.forwarded)
            time.sleep(seconds)
            if before == self.forwarded:
                return before
        raise TimeoutError("the relay never went quiet")

    def _run(self) -> None:
        try:
            downstream, _ = self._listener.accept()
        except OSError:
            return
        downstream.settimeout(TIMEOUT)
        self._sockets.append(downstream)
        try:
            upstream = socket.create_connection(self.target, timeout=TIMEOUT)
        except OSError:
            reset(downstream)
            return
        self._sockets.append(upstream)
        for sock in (downstream, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipes = [threading.Thread(target=self._pipe, args=(downstream, upstream, C2S),
                                  name="relay-c2s", daemon=True),
                 threading.Thread(target=self._pipe, args=(upstream, downstream, S2C),
                                  name="relay-s2c", daemon=True)]
        self._threads += pipes
        for thread in pipes:
            thread.start()

    def _pipe(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while data := src.recv(1 << 16):
                pieces = ([data[i:i + 1] for i in range(len(data))]
                          if self.byte_delay is not None else [data])
                for piece in pieces:
                    self._forward(dst, direction, piece)
        except ConnectionResetError:
            with contextlib.suppress(OSError):
                reset(dst)
            return
        except OSError:
            with contextlib.suppress(OSError):
                dst.close()
            return
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def _room(self, direction: str) -> int:
        limit = self._limits.get(direction)
        return (1 << 62) if limit is None else limit - self.forwarded[direction]

    def _forward(self, dst: socket.socket, direction: str, piece: bytes) -> None:
        while piece:
            with self._cond:
                if not self._cond.wait_for(lambda: self._room(direction) > 0, TIMEOUT):
                    raise TimeoutError("held back for too long")
                start, room = self.forwarded[direction], self._room(direction)
                flip = self.flip.get(direction)
            part, piece = piece[:room], piece[room:]
            if flip is not None and start <= flip < start + len(part):
                altered = bytearray(part)
                altered[flip - start] ^= 0x01
                part = bytes(altered)
                self.altered[direction] += 1
            dst.sendall(part)
            with self._cond:
                self.forwarded[direction] += len(part)
                self._cond.notify_all()
            if self.byte_delay:
                time.sleep(self.byte_delay)

    def close(self) -> None:
        self.release(C2S)
        self.release(S2C)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes a pending accept
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(TIMEOUT)
        for sock in self._sockets:
            sock.close()


# -- a blocking HKX/1 server and client -----------------------------------------------------


@dataclass
class Outcome:
    """What became of one connection a :class:`Server` accepted."""

    error: BaseException | None = None
    session: SessionInfo | None = None
    result: Any = None
    closed_on_failure: bool | None = None  # the raw socket was closed when wrap_socket raised
    at: float = 0.0  # time.monotonic() when the connection was done with


Handler = Callable[[SecureSocket], Any]


class Server:
    """A threaded HKX/1 server on loopback: each accepted connection's handshake and
    ``handler`` run in a thread of their own, and its :class:`Outcome` goes to ``outcomes``.
    """

    def __init__(self, context: Context, handler: Handler | None = None, *,
                 handshake_timeout: float | None = None) -> None:
        self.context = context
        self.handler = handler
        self.handshake_timeout = handshake_timeout
        self.outcomes: queue.Queue[Outcome] = queue.Queue()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._listener.settimeout(TIMEOUT)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="server", daemon=True)
        self._acceptor.start()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), name="server-conn",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        outcome = Outcome()
        conn.settimeout(TIMEOUT)
        try:
            secure = self.context.wrap_socket(conn, server_side=True,
                                              handshake_timeout=self.handshake_timeout)
        except BaseException as exc:
            outcome.error, outcome.closed_on_failure = exc, conn.fileno() == -1
            conn.close()
            outcome.at = time.monotonic()
            self.outcomes.put(outcome)
            return
        with secure:
            try:
                outcome.session = secure.session_info()
                if self.handler is not None:
                    outcome.result = self.handler(secure)
            except BaseException as exc:
                outcome.error = exc
        outcome.at = time.monotonic()
        self.outcomes.put(outcome)

    def outcome(self, seconds: float = TIMEOUT) -> Outcome:
        """The next finished connection's outcome."""
        return self.outcomes.get(timeout=seconds)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the pending accept
        self._listener.close()
        self._acceptor.join(TIMEOUT)
        for thread in self._threads:
            thread.join(TIMEOUT)
        if self._acceptor.is_alive() or any(t.is_alive() for t in self._threads):
            raise AssertionError("a server thread did not finish")


def connect(context: Context, address: tuple[str, int], **kwargs: Any) -> SecureSocket:
    """A client SecureSocket to site-b at ``address``; every operation times out."""
    sock = socket.create_connection(address, timeout=TIMEOUT)
    return context.wrap_socket(sock, peer=SERVER, **kwargs)


def contexts(sites: Sites, timeout: float | None = 5.0) -> tuple[Context, Context]:
    """Both sites' socket contexts, with a handshake time limit for tests."""
    return (Context.from_config(sites.client, handshake_timeout=timeout),
            Context.from_config(sites.server, handshake_timeout=timeout))


def same_session(client: SessionInfo, server: SessionInfo) -> None:
    """The two ends describe one session: same transcript, suite, keys and policy."""
    assert (client.role, server.role) == ("client", "server")
    assert (client.local_site, server.local_site) == (CLIENT, SERVER)
    assert client.peer.site == SERVER and server.peer.site == CLIENT
    assert client.transcript_hash == server.transcript_hash
    assert len(client.transcript_hash) == 96  # hex of a SHA-384 hash
    for field in ("suite", "kems", "aead", "qkd_key_ids", "auth_mode", "security_policy",
                  "fallback", "pool_keys_spent"):
        assert getattr(client, field) == getattr(server, field), field
