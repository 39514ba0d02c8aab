"""A userspace TCP relay that adds latency and cuts connections on demand.

``tc netem`` is not available here, so tests that need a slow or broken network put
this relay between the two ends: every chunk it forwards is held for ``delay_s``
(one way; a round trip through the relay costs twice that), and :meth:`Relay.cut`
resets every connection it carries, as a pulled cable would.  It runs in a thread
of the test process and listens on loopback (or the address given).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator

__all__ = ["Relay", "relay"]


class _Pipe:
    """One direction of one relayed connection: chunks wait ``delay_s`` before sending."""

    def __init__(self, source: socket.socket, sink: socket.socket) -> None:
        self.source, self.sink = source, sink
        self.queue: deque[tuple[float, bytes]] = deque()
        self.eof = False
        self.closed = False


class Relay:
    """Forward ``listen`` -> ``target``, holding each chunk ``delay_s`` seconds."""

    def __init__(self, target: tuple[str, int], delay_s: float = 0.0,
                 listen: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.target, self.delay_s = target, delay_s
        self._server = socket.create_server(listen, reuse_port=False)
        self._server.setblocking(False)
        self.address: tuple[str, int] = self._server.getsockname()[:2]
        self._pipes: list[_Pipe] = []
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._cut_requested = threading.Event()
        self.connections = 0
        self.refusing = False
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self._thread.start()

    # -- control ----------------------------------------------------------------------

    def cut(self) -> None:
        """Reset every connection now (new connections are still accepted)."""
        self._cut_requested.set()
        deadline = time.monotonic() + 5
        while self._cut_requested.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(OSError):
            self._server.close()
        for s in list(self._sockets):
            with contextlib.suppress(OSError):
                s.close()

    # -- the loop ---------------------------------------------------------------------

    def _accept(self) -> None:
        try:
            client, _ = self._server.accept()
        except OSError:
            return
        if self.refusing:
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(client)
            return
        for s in (client, upstream):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sockets.add(s)
        self.connections += 1
        self._pipes += [_Pipe(client, upstream), _Pipe(upstream, client)]

    def _cut_all(self) -> None:
        for s in list(self._sockets):
            _reset(s)
        self._sockets.clear()
        self._pipes.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._cut_requested.is_set():
                self._cut_all()
                self._cut_requested.clear()
            readable = {self._server}
            readable.update(p.source for p in self._pipes if not p.eof)
            ready, _, _ = _select(readable, 0.002)
            if self._server in ready:
                self._accept()
            now = time.monotonic()
            for pipe in list(self._pipes):
                if pipe.source in ready and not pipe.eof:
                    try:
                        data = pipe.source.recv(65536)
                    except BlockingIOError:
                        data = None
                    except OSError:
                        data = b""
                    if data == b"":
                        pipe.eof = True
                        pipe.queue.append((now + self.delay_s, b""))
                    elif data:
                        pipe.queue.append((now + self.delay_s, data))
                while pipe.queue and pipe.queue[0][0] <= now:
                    _, chunk = pipe.queue.popleft()
                    try:
                        if chunk:
                            pipe.sink.setblocking(True)
                            pipe.sink.sendall(chunk)
                            pipe.sink.setblocking(False)
                        else:
                            pipe.sink.shutdown(socket.SHUT_WR)
                            pipe.closed = True
                    except OSError:
                        pipe.closed = True
                        pipe.eof = True
                        pipe.queue.clear()
            self._pipes = [p for p in self._pipes if not (p.closed and p.eof)]


def _select(sockets: set[socket.socket], timeout: float) -> tuple[set[socket.socket], None, None]:
    import select

    live = [s for s in sockets if s.fileno() >= 0]
    if not live:
        time.sleep(timeout)
        return set(), None, None
    try:
        ready, _, _ = select.select(live, [], [], timeout)
    except (OSError, ValueError):
        return set(), None, None
    return set(ready), None, None


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a dropped link looks to both ends."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        sock.close()


@contextlib.contextmanager
def relay(target: tuple[str, int], delay_s: float = 0.0) -> Iterator[Relay]:
    r = Relay(target, delay_s)
    try:
        yield r
    finally:
        r.close()
