"""An ETSI GS QKD 014 V1.1.1 client (an SAE talking to its KME), standard library only.

HTTPS with mutual TLS over :mod:`ssl`: the client presents its SAE certificate (whose
subject common name is its SAE ID) and checks the KME's certificate against ``ca`` and
the host name in ``base_url``.  The HTTP/1.1 is the client's own (:mod:`.http11`): each
request is one write of its head and body, and the answer is read as a status line,
headers and a ``Content-Length`` body, nothing else; an answer that is chunked, too
large or malformed raises a typed error.  (:mod:`http.client` spent about three
quarters of the client's CPU per request, most of it parsing headers through
:mod:`email`.)

**One connection, kept alive.**  A full mutual-TLS handshake (both sides sign and
verify a certificate chain) costs several times more than a request, so the client
keeps its HTTP/1.1 connection open and sends every call over it.  Several threads may
share one client: each call borrows an idle connection, or opens one while fewer than
``connections`` are open, or waits (at most ``timeout``) for one to come back.  One
thread therefore uses one connection; ``connections=1`` makes the client a single
connection behind a lock.

**Reconnecting.**  A kept-alive connection the KME has closed (idle time-out, restart)
is noticed before it is used: the socket is readable, so it is dropped and a new one
opened.  If a call fails on a reused connection all the same, it is sent once more on
a new connection only when that cannot serve it twice: Get status, or a key request
that failed before any of its bytes were written.  A key request that may have reached
the KME is never re-sent: the call raises
:class:`~hybridkex.keydelivery.kme.calls.KMEOutcomeUnknown` (a ``KeySourceError``),
since a second enc_keys would take further keys and a second dec_keys would be refused.

Keys come back as :class:`~hybridkex.keydelivery.DeliveredKey`, exactly as the key
store hands them out: for a key of other than 256 bits, ``extension`` holds the IDs of
its further 256-bit units (hybridkex's ``key_ID_extension``, see docs/kme.md).  The
slave side passes ``key.ids`` and the size back to :meth:`KMEClient.get_keys_with_ids`,
or the key ID alone without a size, and gets each key at the size it was reserved with.

Errors are the key store's: :class:`~hybridkex.keydelivery.KeyNotAvailable` (400 about
the key IDs: unknown, already delivered, malformed), :class:`~hybridkex.keydelivery.
KeysExhausted` (503), :class:`KMEAuthenticationError` (401, or the KME refusing the
client certificate), :class:`KMERequestError` (any other refusal),
:class:`KMEOutcomeUnknown` (the connection failed after a key request was sent),
:class:`KMEProtocolError` (the answer is not HTTP/1.1 as the client accepts it),
:class:`KMEKeySizeMismatch` (dec_keys with a ``size`` answered with keys of another
size) and :class:`~hybridkex.keydelivery.KeySourceError` (transport, timeouts,
malformed answers).
The requests and the reading of answers are shared with the asyncio client
(:mod:`hybridkex.keydelivery.kme.calls`).
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from hybridkex.keydelivery.keys import UNIT_BITS, DeliveredKey, KeyRef
from hybridkex.keydelivery.kme.calls import (
    DEFAULT_CONNECTIONS,
    MAX_RESPONSE_BYTES,
    Call,
    KMEAuthenticationError,
    KMEClientBase,
    KMEKeySizeMismatch,
    KMEOutcomeUnknown,
    KMEProtocolError,
    KMERequestError,
    KMEStatus,
    PeerSAEs,
    answer,
    dec_keys_call,
    enc_keys_call,
    status_call,
)
from hybridkex.keydelivery.kme.http11 import Answer, AnswerReader, BadAnswer, encode_request

_READ_BYTES = 1 << 16  # one read takes a whole answer of a few keys

__all__ = [
    "KMEAuthenticationError",
    "KMEClient",
    "KMEKeySizeMismatch",
    "KMEKeySource",
    "KMEOutcomeUnknown",
    "KMEProtocolError",
    "KMERequestError",
    "KMEStatus",
]


class _Connection:
    """One kept-alive mutual-TLS connection to the KME, speaking :mod:`.http11`.

    ``wrote`` turns true once the socket has taken a byte of the current request, which
    decides whether a failed key request may be sent again: a write that fails at once
    (the KME had reset the connection) leaves it false.  ``closes`` is the client's
    :meth:`KMEClient.close` count when this connection was opened.
    """

    __slots__ = ("closes", "sock", "wrote")

    def __init__(self, sock: ssl.SSLSocket, closes: int) -> None:
        self.sock: ssl.SSLSocket | None = sock
        self.wrote = False
        self.closes = closes

    def exchange(self, request: bytes, max_body: int) -> Answer:
        """Send ``request`` (head and body: one write, one TLS record) and read the
        answer; a connection that closes first is a ``ConnectionError``."""
        sock = self.sock
        if sock is None:
            raise ConnectionError("the connection is closed")
        self.wrote = False
        view = memoryview(request)
        while view:
            sent = sock.send(view)
            self.wrote = self.wrote or sent > 0
            view = view[sent:]
        reader = AnswerReader(max_body)
        while True:
            data = sock.recv(_READ_BYTES)
            if not data:
                if reader.started:
                    raise ConnectionError("the KME closed the connection in the middle of "
                                          "its answer")
                raise ConnectionError("the KME closed the connection without answering")
            answer = reader.feed(data)
            if answer is not None:
                return answer

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()


def _closed_by_peer(conn: _Connection) -> bool:
    """Whether an idle kept-alive connection is no longer usable.

    Between requests nothing should arrive, so a readable socket means the KME closed
    the connection (or sent something unasked for): either way it is not reused.
    """
    sock = conn.sock
    if sock is None:
        return True
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable)
    except (OSError, ValueError):
        return True


class KMEClient(KMEClientBase):
    """An SAE's connection to its KME: ``KMEClient(base_url, cert, key, ca)``.

    ``timeout`` (seconds) bounds connecting, each wait for the KME's answer, and the
    wait for a free connection; ``connections`` is how many connections threads
    sharing this client may open at once.  :meth:`close` (or ``with``) closes the
    idle connections; the client stays usable and reconnects when next called.
    """

    def __init__(self, base_url: str, cert: str | Path, key: str | Path, ca: str | Path, *,
                 timeout: float = 10.0, connections: int = DEFAULT_CONNECTIONS) -> None:
        super().__init__(base_url, cert, key, ca, timeout=timeout, connections=connections)
        self._slots = threading.BoundedSemaphore(self.connections)
        self._lock = threading.Lock()
        self._idle: list[_Connection] = []
        self._closes = 0  # how often close() ran: a connection opened before goes too

    # -- the three methods of clause 5

    def status(self, slave_sae: str) -> KMEStatus:
        """Get status (clause 5.2): what this (master) SAE can obtain for ``slave_sae``."""
        return cast(KMEStatus, self._run(status_call(slave_sae)))

    def get_keys(self, slave_sae: str, number: int = 1,
                 size: int = UNIT_BITS) -> list[DeliveredKey]:
        """Get key (clause 5.3, POST): ``number`` new keys of ``size`` bits for ``slave_sae``."""
        return cast(list[DeliveredKey], self._run(enc_keys_call(slave_sae, number, size)))

    def get_keys_with_ids(self, master_sae: str, key_ids: Sequence[str | Sequence[str]],
                          size: int | None = None) -> list[DeliveredKey]:
        """Get key with key IDs (clause 5.4, POST): the keys ``master_sae`` obtained.

        ``key_ids`` as :meth:`KeyStore.fetch` takes them: a key ID, or the sequence of
        unit IDs of a key (``DeliveredKey.ids``).  Without ``size`` each key is named by
        its key ID alone and comes back at the size the KME reserved it with (the KME
        knows it, as clause 5.4 assumes).  With ``size`` (bits) every key must have it;
        a key the KME delivered at another size raises :class:`KMEKeySizeMismatch`.
        """
        return cast(list[DeliveredKey], self._run(dec_keys_call(master_sae, key_ids, size)))

    # -- connections

    def close(self) -> None:
        """Close the idle connections (those in use close when their call ends)."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._closes += 1
        for conn in idle:
            conn.close()

    def __enter__(self) -> KMEClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        for conn in getattr(self, "_idle", ()):
            conn.close()

    def _run(self, call: Call) -> Any:
        status, raw = self._exchange(call)
        return answer(call, status, raw)

    def _exchange(self, call: Call) -> tuple[int, bytes]:
        if not self._slots.acquire(timeout=self.timeout):
            raise self._endpoint.busy(self.connections, self.timeout)
        try:
            conn = self._idle_connection()
            if conn is not None:
                done = self._send(conn, call, reused=True)
                if done is not None:
                    return done
                # the kept-alive connection had dropped, and sending again is safe
            done = self._send(self._connect(call), call, reused=False)
            assert done is not None
            return done
        finally:
            self._slots.release()

    def _idle_connection(self) -> _Connection | None:
        stale: list[_Connection] = []
        found = None
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not _closed_by_peer(conn):
                    found = conn
                    break
                stale.append(conn)
        for conn in stale:
            conn.close()
        return found

    def _connect(self, call: Call) -> _Connection:
        endpoint = self._endpoint
        try:
            raw = socket.create_connection((endpoint.host, endpoint.port), timeout=self.timeout)
        except OSError as exc:
            raise endpoint.failure(call, exc, sent=False, timeout=self.timeout) from None
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = self._ssl.wrap_socket(raw, server_hostname=endpoint.host)
        except OSError as exc:
            raw.close()
            raise endpoint.failure(call, exc, sent=False, timeout=self.timeout) from None
        except BaseException:
            raw.close()
            raise
        return _Connection(sock, self._closes)

    def _send(self, conn: _Connection, call: Call, *, reused: bool) -> tuple[int, bytes] | None:
        """One request on ``conn``: the status and body, or ``None`` when ``conn`` was a
        kept-alive connection that failed where sending again on a new one is safe."""
        endpoint = self._endpoint
        request = encode_request(call.method, endpoint.prefix + call.path,
                                 endpoint.host_header, call.headers, call.body)
        try:
            answer = conn.exchange(request, MAX_RESPONSE_BYTES)
        except BadAnswer as exc:
            conn.close()
            if exc.too_large:
                raise endpoint.too_large() from None
            raise endpoint.malformed(call, str(exc)) from None
        except OSError as exc:  # ssl.SSLError and TimeoutError are OSErrors
            conn.close()
            error = endpoint.failure(call, exc, sent=conn.wrote, timeout=self.timeout)
            retry_safe = not conn.wrote or call.idempotent
            if reused and retry_safe and not isinstance(exc, TimeoutError) and not isinstance(
                    error, KMEAuthenticationError):
                return None
            raise error from None
        except BaseException:
            conn.close()
            raise
        with self._lock:
            keep = answer.keep_alive and conn.sock is not None and conn.closes == self._closes
            if keep:
                self._idle.append(conn)
        if not keep:
            conn.close()
        return answer.status, answer.body


class KMEKeySource(PeerSAEs):
    """A :class:`KeySource` over an ETSI GS QKD 014 KME.

    ``peers`` maps the peer identifier the session uses to the peer's SAE ID; without
    it (``None``) the peer identifier *is* the SAE ID.  ``take`` is Get key for that
    slave SAE, ``fetch`` Get key with key IDs from that master SAE.
    """

    def __init__(self, client: KMEClient, peers: Mapping[str, str] | None = None) -> None:
        super().__init__(peers)
        self.client = client

    def take(self, peer: str, count: int = 1, size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        return self.client.get_keys(self.sae_of(peer), count, size_bits)

    def fetch(self, peer: str, key_ids: Sequence[KeyRef],
              size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        return self.client.get_keys_with_ids(self.sae_of(peer), key_ids, size_bits)

    def __repr__(self) -> str:
        return f"KMEKeySource({self.client!r})"
