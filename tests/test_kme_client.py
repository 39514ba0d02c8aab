"""The KME clients: connections kept alive, shared by threads or coroutines, reconnects
only where sending again is safe, timeouts, bounded answers and the same typed errors
from the blocking and the asyncio client.

Everything runs against the real KME (``BackgroundKME`` over memory stores, as in
test_kme.py).  The number of TLS handshakes a KME completed comes from its own
``SSLContext.session_stats()``, so "one connection" is checked on the server's side.
A :class:`Relay` in front of a KME stands for the network: it can close every
connection, drop the next request or the next answer, or swallow everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from hybridkex.errors import InvalidParameter
from hybridkex.keydelivery.errors import KeyNotAvailable, KeysExhausted, KeySourceError
from hybridkex.keydelivery.keys import DeliveredKey
from hybridkex.keydelivery.kme import BackgroundKME
from hybridkex.keydelivery.kme.aio_client import AsyncKMEClient, AsyncKMEKeySource
from hybridkex.keydelivery.kme.calls import MAX_RESPONSE_BYTES
from hybridkex.keydelivery.kme.client import (
    KMEAuthenticationError,
    KMEClient,
    KMEKeySizeMismatch,
    KMEKeySource,
    KMEOutcomeUnknown,
    KMEProtocolError,
    KMERequestError,
)
from hybridkex.keydelivery.source import AsyncKeySource, KeySource
from tests import test_kme
from tests.support import KMEFiles
from tests.test_kme import Link

# the certificates and the two KMEs over memory stores of test_kme.py
pki = test_kme.pki
link = test_kme.link

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def handshakes(kme: BackgroundKME) -> int:
    """Full TLS handshakes this KME has completed."""
    return int(kme.server.ssl_context.session_stats()["accept_good"])


def run(main: Callable[[], Coroutine[Any, Any, None]], limit: float = 60.0) -> None:
    async def limited() -> None:
        await asyncio.wait_for(main(), limit)

    asyncio.run(limited())


def async_client(pki: KMEFiles, url: str, sae: str, **kwargs: Any) -> AsyncKMEClient:
    cert, key = pki.pair(sae)
    return AsyncKMEClient(url, cert, key, pki.ca, **kwargs)


# -- a relay standing for the network ---------------------------------------------------------


class Relay:
    """TCP connections in on loopback, each forwarded to ``target``.

    ``drop("request")`` closes the connection that next carries bytes from the client,
    without passing them on; ``drop("answer")`` closes the connection that next carries
    bytes from the KME, without passing them back; both act once, on whatever comes
    next (on a new connection, that is its TLS handshake).
    ``stall()`` swallows everything from then on, in both directions, without closing;
    ``hold()`` keeps the KME's answers back until ``release()``;
    ``cut()`` closes every open connection (an orderly close, as a KME's idle time-out
    would).  ``accepted`` counts the client's connections.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.accepted = 0
        self.stalled = False
        self.requests_seen = threading.Semaphore(0)  # one release per chunk from a client
        self._answers = threading.Event()
        self._answers.set()
        self._drop: str | None = None
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, name="kme-relay", daemon=True)
        self._thread.start()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def drop(self, what: str) -> None:
        assert what in ("request", "answer")
        with self._lock:
            self._drop = what

    def stall(self) -> None:
        self.stalled = True

    def hold(self) -> None:
        self._answers.clear()

    def release(self) -> None:
        self._answers.set()

    def cut(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            self._close(pair)

    def close(self) -> None:
        self.release()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self.cut()

    @staticmethod
    def _close(pair: tuple[socket.socket, socket.socket]) -> None:
        for sock in pair:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
            pair = (downstream, upstream)
            with self._lock:
                self.accepted += 1
                self._pairs.append(pair)
            for src, dst, direction in ((downstream, upstream, "request"),
                                        (upstream, downstream, "answer")):
                threading.Thread(target=self._pipe, args=(src, dst, direction, pair),
                                 daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, direction: str,
              pair: tuple[socket.socket, socket.socket]) -> None:
        try:
            while data := src.recv(1 << 16):
                with self._lock:
                    drop = self._drop == direction
                    if drop:
                        self._drop = None
                if drop:
                    self._close(pair)
                    return
                if direction == "request":
                    self.requests_seen.release()
                else:
                    self._answers.wait()
                if not self.stalled:
                    dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(pair)


@pytest.fixture
def relay_a(link: Link) -> Iterator[Relay]:
    with Relay(("127.0.0.1", link.kme_a.port)) as relay:
        yield relay


# -- the blocking client: one connection -------------------------------------------------------


def test_one_connection_serves_every_call(link: Link, pki: KMEFiles) -> None:
    before = handshakes(link.kme_a), handshakes(link.kme_b)
    with pki.client(link.kme_a.url, "sae-a") as alice, pki.client(link.kme_b.url,
                                                                   "sae-b") as bob:
        for _ in range(10):
            assert alice.status("sae-b").slave_sae_id == "sae-b"
            taken = alice.get_keys("sae-b", 2, 512)
            fetched = bob.get_keys_with_ids("sae-a", [k.ids for k in taken], 512)
            assert [k.key for k in fetched] == [k.key for k in taken]
        with pytest.raises(KeyNotAvailable):  # an error answer keeps the connection too
            bob.get_keys_with_ids("sae-a", [taken[0].ids], 512)
        assert alice.status("sae-b").stored_key_count == 200 - 40
    # B also accepted KME A's sync connection (the reservations A records at B before
    # enc_keys answers): one more handshake there, none more per call.
    assert (handshakes(link.kme_a), handshakes(link.kme_b)) == (before[0] + 1, before[1] + 2)


@pytest.mark.parametrize("connections", [1, 3])
def test_threads_share_a_client_within_its_connections(link: Link, pki: KMEFiles,
                                                       connections: int) -> None:
    before = handshakes(link.kme_a)
    alice = KMEClient(link.kme_a.url, *pki.pair("sae-a"), pki.ca, connections=connections)
    barrier = threading.Barrier(8)

    def work(_: int) -> list[DeliveredKey]:
        barrier.wait()
        return [k for _ in range(10) for k in alice.get_keys("sae-b", 1)]

    with alice, ThreadPoolExecutor(8) as pool:
        taken = [k for keys in pool.map(work, range(8)) for k in keys]
    assert len({k.key_id for k in taken}) == 80
    assert link.store_a.status("B").delivered == 80
    opened = handshakes(link.kme_a) - before
    assert 1 <= opened <= connections
    # KME A recorded each key at KME B, bound to (sae-a, sae-b): sae-b gets them there
    fetched = pki.client(link.kme_b.url, "sae-b").get_keys_with_ids(
        "sae-a", [k.key_id for k in taken])
    assert [k.key for k in fetched] == [k.key for k in taken]


def test_a_client_waits_for_a_free_connection_at_most_its_timeout(link: Link,
                                                                  pki: KMEFiles) -> None:
    alice = KMEClient(link.kme_a.url, *pki.pair("sae-a"), pki.ca, connections=1, timeout=0.3)
    assert alice._slots.acquire(timeout=1)  # another thread's call, holding the connection
    started = time.monotonic()
    with pytest.raises(KeySourceError, match="stayed busy"):
        alice.status("sae-b")
    assert 0.25 < time.monotonic() - started < 3
    alice._slots.release()
    assert alice.status("sae-b").stored_key_count == 200


def test_close_also_closes_the_connections_in_use(link: Link, pki: KMEFiles,
                                                  relay_a: Relay) -> None:
    alice = pki.client(relay_a.url, "sae-a")
    alice.status("sae-b")
    while relay_a.requests_seen.acquire(timeout=0.2):  # the handshake's and the request's
        pass
    relay_a.hold()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(alice.get_keys, "sae-b")  # on the kept-alive connection
        assert relay_a.requests_seen.acquire(timeout=5)  # the request went through
        alice.close()
        relay_a.release()
        assert len(pending.result(timeout=10)) == 1  # the call in flight completes
    assert relay_a.accepted == 1
    alice.status("sae-b")  # ... but its connection was closed, not kept
    assert relay_a.accepted == 2


# -- the blocking client: dropped connections --------------------------------------------------


def test_a_restarted_kme_is_reconnected_to_for_any_call(link: Link, pki: KMEFiles) -> None:
    alice = pki.client(link.kme_a.url, "sae-a")
    alice.get_keys("sae-b")
    link.kme_a.close()  # closes the kept-alive connection
    # the same server on the same port: it keeps its peer (B), and B's URL for A holds
    with BackgroundKME(link.kme_a.server, port=link.kme_a.port) as again:
        before = handshakes(again)
        (key,) = alice.get_keys("sae-b")  # a key request too: the dead connection was unused
        assert alice.status("sae-b").stored_key_count == 198
        assert handshakes(again) == before + 1
    assert link.store_a.status("B").delivered == 2
    # the restarted KME recorded the key at B before it answered: sae-b gets it there
    (fetched,) = pki.client(link.kme_b.url, "sae-b").get_keys_with_ids("sae-a", [key.key_id])
    assert fetched.key == key.key


def test_closed_connections_are_noticed_before_use(link: Link, pki: KMEFiles,
                                                   relay_a: Relay) -> None:
    alice = pki.client(relay_a.url, "sae-a")
    alice.get_keys("sae-b")
    relay_a.cut()
    time.sleep(0.05)
    alice.get_keys("sae-b")
    assert relay_a.accepted == 2 and link.store_a.status("B").delivered == 2


def test_a_status_whose_connection_drops_is_sent_again(link: Link, pki: KMEFiles,
                                                       relay_a: Relay) -> None:
    alice = pki.client(relay_a.url, "sae-a")
    alice.status("sae-b")
    relay_a.drop("request")
    assert alice.status("sae-b").stored_key_count == 200
    relay_a.drop("answer")
    assert alice.status("sae-b").stored_key_count == 200
    assert relay_a.accepted == 3


def test_a_key_request_that_may_have_arrived_is_never_sent_again(link: Link, pki: KMEFiles,
                                                                 relay_a: Relay) -> None:
    alice = pki.client(relay_a.url, "sae-a")
    alice.status("sae-b")
    relay_a.drop("request")  # lost before the KME: it took nothing, but the client cannot know
    with pytest.raises(KMEOutcomeUnknown, match="after enc_keys was sent"):
        alice.get_keys("sae-b")
    assert link.store_a.status("B").delivered == 0
    alice.status("sae-b")  # a new connection, kept alive
    relay_a.drop("answer")  # the KME took the key and its answer was lost: taken once only
    with pytest.raises(KMEOutcomeUnknown):
        alice.get_keys("sae-b")
    assert link.store_a.status("B").delivered == 1
    assert len(alice.get_keys("sae-b", 3)) == 3  # the client goes on, on a new connection
    assert link.store_a.status("B").delivered == 4


def test_a_dec_keys_whose_answer_is_lost_is_not_sent_again(
        link: Link, pki: KMEFiles, caplog: pytest.LogCaptureFixture) -> None:
    # keys taken through KME A, so KME B holds them bound to (sae-a, sae-b)
    taken = pki.client(link.kme_a.url, "sae-a").get_keys("sae-b", 2)
    with (Relay(("127.0.0.1", link.kme_b.port)) as relay,
          caplog.at_level(logging.INFO, logger="hybridkex.kme")):
        bob = pki.client(relay.url, "sae-b")
        bob.status("sae-a")
        relay.drop("answer")
        with pytest.raises(KMEOutcomeUnknown, match="dec_keys"):
            bob.get_keys_with_ids("sae-a", [k.key_id for k in taken])
        # the KME delivered them with the lost answer: a second request is refused
        with pytest.raises(KeyNotAvailable):
            bob.get_keys_with_ids("sae-a", [k.key_id for k in taken])
    # KME B's own account (one line per request): served once, then refused; the
    # client sent the request no third time
    assert [m.rsplit(" ", 1)[1] for m in caplog.messages
            if m.startswith("POST /api/v1/keys/sae-a/dec_keys ->")] == ["200", "400"]
    assert sum(m.startswith("delivered 2 key(s) to slave SAE sae-b") for m in caplog.messages) == 1


def test_a_key_request_whose_write_fails_at_once_is_sent_on_a_new_connection(
        link: Link, pki: KMEFiles) -> None:
    """White-box: the kept-alive connection's socket refuses writes (as after a reset
    that has not made it readable), so the request fails before any byte leaves."""
    alice = pki.client(link.kme_a.url, "sae-a")
    alice.get_keys("sae-b")
    (idle,) = alice._idle
    assert idle.sock is not None
    idle.sock.shutdown(socket.SHUT_WR)
    before = handshakes(link.kme_a)
    assert len(alice.get_keys("sae-b")) == 1
    assert handshakes(link.kme_a) == before + 1
    assert link.store_a.status("B").delivered == 2


def test_a_kme_that_stops_answering_times_out(link: Link, pki: KMEFiles, relay_a: Relay) -> None:
    alice = pki.client(relay_a.url, "sae-a", timeout=0.5)
    alice.status("sae-b")
    relay_a.stall()
    started = time.monotonic()
    with pytest.raises(KMEOutcomeUnknown, match=r"did not answer enc_keys within 0\.5 s"):
        alice.get_keys("sae-b")  # sent on the kept-alive connection: the outcome is unknown
    assert 0.4 < time.monotonic() - started < 1.5  # once, not sent again
    started = time.monotonic()
    with pytest.raises(KeySourceError, match=r"did not answer within 0\.5 s") as caught:
        alice.status("sae-b")  # a new connection, whose handshake gets no answer
    assert 0.4 < time.monotonic() - started < 1.5
    assert not isinstance(caught.value, KMEOutcomeUnknown)
    assert relay_a.accepted == 2  # the connection that timed out was not used again


# -- dec_keys and the size of a key ----------------------------------------------------------


def test_dec_keys_without_a_size_gets_each_key_at_its_reserved_size(link: Link,
                                                                   pki: KMEFiles) -> None:
    alice = pki.client(link.kme_a.url, "sae-a")
    taken = [*alice.get_keys("sae-b", 2, 512), *alice.get_keys("sae-b", 1, 136),
             *alice.get_keys("sae-b", 1)]
    bob = pki.client(link.kme_b.url, "sae-b")
    fetched = bob.get_keys_with_ids("sae-a", [k.key_id for k in taken])
    assert [(k.ids, k.size_bits, k.key) for k in fetched] == [
        (k.ids, k.size_bits, k.key) for k in taken]
    assert [k.size_bits for k in fetched] == [512, 512, 136, 256]

    async def main() -> None:
        more = [*alice.get_keys("sae-b", 1, 768), *alice.get_keys("sae-b", 1, 64)]
        async with async_client(pki, link.kme_b.url, "sae-b") as bob_async:
            got = await bob_async.get_keys_with_ids("sae-a", [(k.key_id,) for k in more])
        assert [(k.ids, k.key) for k in got] == [(k.ids, k.key) for k in more]

    run(main)


def test_dec_keys_refuses_a_size_it_cannot_check_before_anything_is_delivered(
        link: Link, pki: KMEFiles) -> None:
    alice = pki.client(link.kme_a.url, "sae-a")
    bob = pki.client(link.kme_b.url, "sae-b")
    (wide,) = alice.get_keys("sae-b", 1, 512)
    (odd,) = alice.get_keys("sae-b", 1, 384)  # two units, like a 512-bit key
    # unit IDs without a size: refused before the request is sent
    with pytest.raises(KeyNotAvailable, match="needs its size"):
        bob.get_keys_with_ids("sae-a", [wide.ids])
    # a size other than 256 travels in key_ID_extension; the KME refuses a wrong one
    with pytest.raises(KeyNotAvailable):
        bob.get_keys_with_ids("sae-a", [odd.ids], 512)
    # neither refusal delivered anything: both keys are still there for sae-b
    assert bob.get_keys_with_ids("sae-a", [wide.ids], 512)[0].key == wide.key
    assert bob.get_keys_with_ids("sae-a", [odd.ids], 384)[0].key == odd.key


def test_dec_keys_of_256_bits_answered_with_another_size_is_a_typed_error(
        link: Link, pki: KMEFiles) -> None:
    """A 256-bit request names the key by key_ID alone, so the KME cannot check the
    size: it delivers the key, and the client says so with its own error."""
    alice = pki.client(link.kme_a.url, "sae-a")
    first, second = alice.get_keys("sae-b", 2, 512)
    bob = pki.client(link.kme_b.url, "sae-b")
    with pytest.raises(KMEKeySizeMismatch, match="512 bits for a request of 256-bit") as caught:
        bob.get_keys_with_ids("sae-a", [first.key_id], 256)
    assert not isinstance(caught.value, KeyNotAvailable)  # it *was* delivered
    with pytest.raises(KeyNotAvailable):
        bob.get_keys_with_ids("sae-a", [first.key_id])

    async def main() -> None:
        async with async_client(pki, link.kme_b.url, "sae-b") as bob_async:
            with pytest.raises(KMEKeySizeMismatch, match="512 bits"):
                await bob_async.get_keys_with_ids("sae-a", [second.key_id], 256)
            with pytest.raises(KeyNotAvailable):
                await bob_async.get_keys_with_ids("sae-a", [second.key_id])

    run(main)


# -- answers that are too large ------------------------------------------------------------------


@pytest.fixture
def big_answers(pki: KMEFiles) -> Iterator[str]:
    """An HTTPS server with the KME's mutual TLS whose answers exceed the client's bound:
    one with a Content-Length, one chunked (which the asyncio client reads up to the
    bound, and the blocking client refuses at once)."""

    async def sized(_: web.Request) -> web.Response:
        return web.Response(body=b" " * (MAX_RESPONSE_BYTES + 1),
                            content_type="application/json")

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(MAX_RESPONSE_BYTES // (1 << 16) + 2):
            await response.write(b" " * (1 << 16))
        await response.write_eof()
        return response

    app = web.Application()
    app.add_routes([web.get("/api/v1/keys/{sae}/status", chunked),
                    web.post("/api/v1/keys/{sae}/enc_keys", sized)])
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=pki.server_context())
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.run_until_complete(runner.cleanup())
        loop.close()


def test_answers_larger_than_the_bound_are_refused(pki: KMEFiles, big_answers: str) -> None:
    alice = pki.client(big_answers, "sae-a")
    with pytest.raises(KeySourceError, match="too large"):
        alice.get_keys("sae-b")
    # the blocking client reads Content-Length bodies only: chunked is refused outright
    with pytest.raises(KMEProtocolError, match="transfer coding"):
        alice.status("sae-b")

    async def main() -> None:
        async with async_client(pki, big_answers, "sae-a") as client:
            with pytest.raises(KeySourceError, match="too large"):
                await client.get_keys("sae-b")
            with pytest.raises(KeySourceError, match="too large"):
                await client.status("sae-b")

    run(main)


# -- the asyncio client -------------------------------------------------------------------------


def test_async_client_many_coroutines_share_its_connections(link: Link, pki: KMEFiles) -> None:
    before = handshakes(link.kme_a)
    opened_at_b: dict[str, int] = {}

    async def main() -> None:
        async with (async_client(pki, link.kme_a.url, "sae-a", connections=4) as alice,
                    async_client(pki, link.kme_b.url, "sae-b") as bob):
            at_b = handshakes(link.kme_b)
            taken = [k for keys in await asyncio.gather(
                *(alice.get_keys("sae-b", 1) for _ in range(100))) for k in keys]
            assert len({k.key_id for k in taken}) == 100
            # KME A's sync connection(s), over which B recorded each key before A answered
            opened_at_b["sync"], at_b = handshakes(link.kme_b) - at_b, handshakes(link.kme_b)
            fetched = [k for keys in await asyncio.gather(
                *(bob.get_keys_with_ids("sae-a", [k.key_id]) for k in taken)) for k in keys]
            opened_at_b["bob"] = handshakes(link.kme_b) - at_b
            assert [k.key for k in fetched] == [k.key for k in taken]
            assert (await alice.status("sae-b")).stored_key_count == 100

    run(main)
    assert link.store_a.status("B").delivered == 100 == link.store_b.status("A").delivered
    assert 1 <= handshakes(link.kme_a) - before <= 4
    assert opened_at_b["sync"] >= 1  # so the counts below are bob's alone
    assert 1 <= opened_at_b["bob"] <= 4


def test_async_client_leaves_the_event_loop_free_while_it_waits(link: Link, pki: KMEFiles,
                                                                relay_a: Relay) -> None:
    async def main() -> None:
        async with async_client(pki, relay_a.url, "sae-a", timeout=1.0) as alice:
            await alice.status("sae-b")
            relay_a.stall()
            gaps: list[float] = []

            async def ticker() -> None:
                last = time.monotonic()
                while True:
                    await asyncio.sleep(0.01)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            ticks = asyncio.create_task(ticker())
            started = time.monotonic()
            with pytest.raises(KeySourceError, match="did not answer within 1 s"):
                await alice.status("sae-b")
            assert 0.9 < time.monotonic() - started < 2.5
            ticks.cancel()
            assert len(gaps) > 20 and max(gaps) < 0.3

    run(main)


def test_async_client_reconnects_to_a_restarted_kme(link: Link, pki: KMEFiles) -> None:
    async def main() -> None:
        async with async_client(pki, link.kme_a.url, "sae-a") as alice:
            await alice.get_keys("sae-b")
            await asyncio.to_thread(link.kme_a.close)
            await asyncio.sleep(0.05)
            with BackgroundKME(link.kme_a.server, port=link.kme_a.port) as again:
                before = handshakes(again)
                assert len(await alice.get_keys("sae-b")) == 1
                assert (await alice.status("sae-b")).stored_key_count == 198
                assert handshakes(again) == before + 1

    run(main)
    assert link.store_a.status("B").delivered == 2


def test_async_client_retries_only_what_is_safe(link: Link, pki: KMEFiles, relay_a: Relay) -> None:
    async def main() -> None:
        async with async_client(pki, relay_a.url, "sae-a") as alice:
            await alice.status("sae-b")
            relay_a.drop("answer")
            assert (await alice.status("sae-b")).stored_key_count == 200  # sent again
            relay_a.drop("answer")
            with pytest.raises(KMEOutcomeUnknown, match="after enc_keys was sent"):
                await alice.get_keys("sae-b")
            assert link.store_a.status("B").delivered == 1  # taken once, never re-sent
            await alice.status("sae-b")  # a new connection, kept alive
            relay_a.drop("request")
            with pytest.raises(KMEOutcomeUnknown):
                await alice.get_keys("sae-b")
            assert link.store_a.status("B").delivered == 1
            assert len(await alice.get_keys("sae-b", 2)) == 2
            assert link.store_a.status("B").delivered == 3

    run(main)


def test_async_client_times_out_on_a_kme_that_stops_answering(link: Link, pki: KMEFiles,
                                                              relay_a: Relay) -> None:
    async def main() -> None:
        async with async_client(pki, relay_a.url, "sae-a", timeout=0.5) as alice:
            await alice.status("sae-b")
            relay_a.stall()
            started = time.monotonic()
            with pytest.raises(KMEOutcomeUnknown, match="did not answer enc_keys within"):
                await alice.get_keys("sae-b")
            assert 0.4 < time.monotonic() - started < 1.5

    run(main)

    with socket.socket() as silent:  # accepts connections (backlog) but never speaks TLS
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"https://127.0.0.1:{silent.getsockname()[1]}"

        async def handshake_never_ends() -> None:
            async with async_client(pki, url, "sae-a", timeout=0.5) as client:
                started = time.monotonic()
                with pytest.raises(KeySourceError, match="did not answer") as caught:
                    await client.get_keys("sae-b")
                assert not isinstance(caught.value, KMEOutcomeUnknown)  # nothing was sent
                assert time.monotonic() - started < 3

        run(handshake_never_ends)


# -- the same typed errors from both clients ---------------------------------------------------


def _both(pki: KMEFiles, url: str, sae: str, call: Callable[[Any], Any],
          ca: Path | None = None) -> tuple[BaseException, BaseException]:
    """The error ``call`` raises with the blocking client, and with the asyncio client."""
    caught: list[BaseException] = []
    cert, key = pki.pair(sae)
    try:
        call(KMEClient(url, cert, key, ca or pki.ca, timeout=5))
    except KeySourceError as exc:
        caught.append(exc)

    async def main() -> None:
        async with AsyncKMEClient(url, cert, key, ca or pki.ca, timeout=5) as client:
            try:
                await call(client)
            except KeySourceError as exc:
                caught.append(exc)

    run(main)
    assert len(caught) == 2, caught
    return caught[0], caught[1]


@pytest.mark.parametrize(("sae", "call", "error"), [
    ("sae-x", lambda c: c.get_keys("sae-b"), KMEAuthenticationError),  # not in the SAE map
    ("sae-a", lambda c: c.status("sae-nobody"), KMEAuthenticationError),
    ("sae-a", lambda c: c.get_keys("sae-b", 101, 512), KeysExhausted),  # 202 units > 200
    ("sae-a", lambda c: c.get_keys("sae-b", 1, 4096), KMERequestError),
    ("sae-a", lambda c: c.get_keys("sae-c"), KMERequestError),  # the slave is at this site
    ("sae-a", lambda c: c.get_keys_with_ids("sae-b", [str(uuid.uuid4())]), KeyNotAvailable),
])
def test_both_clients_raise_the_same_typed_errors(link: Link, pki: KMEFiles, sae: str,
                                                  call: Callable[[Any], Any],
                                                  error: type[Exception]) -> None:
    blocking, asyncio_ = _both(pki, link.kme_a.url, sae, call)
    assert type(blocking) is type(asyncio_) is error
    assert str(blocking) == str(asyncio_)
    if isinstance(blocking, KMERequestError) and isinstance(asyncio_, KMERequestError):
        assert blocking.status == asyncio_.status == 400
    assert link.store_a.status("B").delivered == 0


def test_both_clients_report_tls_and_transport_failures(link: Link, pki: KMEFiles) -> None:
    # a client certificate from another CA: refused by the KME in the handshake
    for exc in _both(pki, link.kme_a.url, "rogue-sae-a", lambda c: c.status("sae-b")):
        assert isinstance(exc, KMEAuthenticationError) or "TLS" in str(exc) or (
            "cannot reach" in str(exc)), exc
    # a KME whose certificate the client cannot trace to its CA: the client refuses it
    for exc in _both(pki, link.kme_a.url, "sae-a", lambda c: c.status("sae-b"),
                     ca=pki.pair("sae-b")[0]):
        assert type(exc) is KeySourceError and "cannot verify" in str(exc), exc
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"https://127.0.0.1:{closed.getsockname()[1]}"
    for exc in _both(pki, url, "sae-a", lambda c: c.get_keys("sae-b")):
        assert type(exc) is KeySourceError and "cannot reach" in str(exc), exc
    assert link.store_a.status("B").delivered == 0


def test_clients_check_their_arguments(pki: KMEFiles) -> None:
    cert, key = pki.pair("sae-a")
    for make in (KMEClient, AsyncKMEClient):
        with pytest.raises(InvalidParameter, match="timeout"):
            make("https://127.0.0.1:1", cert, key, pki.ca, timeout=0)
        with pytest.raises(InvalidParameter, match="connections"):
            make("https://127.0.0.1:1", cert, key, pki.ca, connections=0)
        with pytest.raises(InvalidParameter, match="https://"):
            make("http://127.0.0.1:1", cert, key, pki.ca)
        with pytest.raises(InvalidParameter, match="SAE certificate"):
            make("https://127.0.0.1:1", pki.ca, key, pki.ca)


def test_an_async_client_belongs_to_one_event_loop(link: Link, pki: KMEFiles) -> None:
    client = async_client(pki, link.kme_a.url, "sae-a")
    loop_a = asyncio.new_event_loop()
    try:
        loop_a.run_until_complete(client.status("sae-b"))

        async def elsewhere() -> None:
            with pytest.raises(InvalidParameter, match="event loop"):
                await client.status("sae-b")

        run(elsewhere)
        loop_a.run_until_complete(client.close())
    finally:
        loop_a.close()

    async def again() -> None:  # closed, it serves a new loop
        assert (await client.status("sae-b")).stored_key_count == 200
        await client.close()

    run(again)


# -- the key sources ----------------------------------------------------------------------------


def test_async_kme_key_source_is_an_async_key_source(link: Link, pki: KMEFiles) -> None:
    async def main() -> None:
        async with (async_client(pki, link.kme_a.url, "sae-a") as alice,
                    async_client(pki, link.kme_b.url, "sae-b") as bob):
            at_a = AsyncKMEKeySource(alice, {"B": "sae-b"})
            at_b = AsyncKMEKeySource(bob, {"A": "sae-a"})
            assert isinstance(at_a, AsyncKeySource) and not isinstance(at_a, KeySource)
            taken = await at_a.take_async("B", 2, 768)
            fetched = await at_b.fetch_async("A", [k.ids for k in taken], 768)
            assert [k.key for k in fetched] == [k.key for k in taken]
            with pytest.raises(KeySourceError, match="no SAE ID"):
                await at_a.take_async("C")
            with pytest.raises(KeyNotAvailable):
                await at_b.fetch_async("A", [k.ids for k in taken], 768)
            # the blocking source and a store agree with it
            sync_a = KMEKeySource(pki.client(link.kme_a.url, "sae-a"), {"B": "sae-b"})
            more = await asyncio.to_thread(sync_a.take, "B", 1)
            assert (await at_b.fetch_async("A", [more[0].key_id]))[0].key == more[0].key

    run(main)
    assert link.store_a.status("B").delivered == 7


def test_importing_key_delivery_loads_no_http_client_or_aiohttp() -> None:
    code = ("import sys, hybridkex.keydelivery as k, hybridkex.keydelivery.kme as m\n"
            "print(sorted(n for n in ('aiohttp', 'http.client', 'sqlite3', 'numpy')"
            " if n in sys.modules))\n"
            "import hybridkex.keydelivery.kme.client\n"
            "print('aiohttp' in sys.modules)\n"
            "k.AsyncKMEKeySource\n"
            "print('aiohttp' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": REPO}).stdout.split()
    assert out == ["[]", "False", "True"]
