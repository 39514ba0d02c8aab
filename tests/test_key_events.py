"""QKD keys that never block an event loop: ``key_events`` connections (QKDKeysNeeded,
supply_keys, refuse_keys), the asyncio drivers that answer them off the loop, and the
TLS ClientHello reader that lets a qkd-psk server fetch before OpenSSL asks.

The timing tests are functional, not benchmarks: a key source that takes 200 ms per
call, 50 handshakes at once.  Served one at a time they would take 50 delays or more;
off the loop they overlap, and the bound asserted (10 delays) leaves room for a slow
machine while failing any driver that waits on the source in the loop's thread.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from typing import Any

import pytest

from hybridkex import asyncio as hkx
from hybridkex.errors import AlertReceived, LocalProtocolError, QKDKeyRefused
from hybridkex.keydelivery import (
    DeliveredKey,
    KeyRef,
    KeysExhausted,
    KeySource,
    StoreKeySource,
)
from hybridkex.keydelivery.keys import UNIT_BITS
from hybridkex.keydelivery.request import KeyRequest
from hybridkex.protocol import (
    NEED_DATA,
    ClientConnection,
    Connection,
    HandshakeComplete,
    QKDKeysNeeded,
    ServerConnection,
    State,
)
from hybridkex.tls import TLSContext
from hybridkex.tls import asyncio as tls_asyncio
from hybridkex.tls.hello import NEED_MORE, first_psk_identity
from hybridkex.transport import Context
from tests.hkx1 import CLIENT, SERVER, make_sites
from tests.loopback import TEST_LIMIT

DELAY = 0.2
CONCURRENT = 50
HOST = "127.0.0.1"


pytestmark = pytest.mark.time_limit(TEST_LIMIT)


class SlowSource:
    """A blocking key source that takes ``DELAY`` seconds per call (a KME far away)."""

    def __init__(self, inner: KeySource) -> None:
        self.inner = inner
        self.calls = 0

    def take(self, peer: str, count: int = 1, size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        self.calls += 1
        time.sleep(DELAY)
        return self.inner.take(peer, count, size_bits)

    def fetch(self, peer: str, key_ids: Sequence[KeyRef],
              size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        self.calls += 1
        time.sleep(DELAY)
        return self.inner.fetch(peer, key_ids, size_bits)


class SlowAsyncSource(SlowSource):
    """The same, also an AsyncKeySource: the driver awaits it instead of using a thread."""

    def __init__(self, inner: KeySource) -> None:
        super().__init__(inner)
        self.async_calls = 0

    async def take_async(self, peer: str, count: int = 1,
                         size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        self.async_calls += 1
        await asyncio.sleep(DELAY)
        return self.inner.take(peer, count, size_bits)

    async def fetch_async(self, peer: str, key_ids: Sequence[KeyRef],
                          size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        self.async_calls += 1
        await asyncio.sleep(DELAY)
        return self.inner.fetch(peer, key_ids, size_bits)


def answer(conn: Connection, source: KeySource) -> int:
    """Answer every QKDKeysNeeded ``conn`` has, as a driver would; how many there were."""
    answered = 0
    while isinstance(event := conn.next_event(), QKDKeysNeeded):
        answered += 1
        assert event.request is conn.key_request
        assert conn.next_event() == event  # it waits, and says so again
        try:
            keys = event.request.perform(source)
        except KeysExhausted as exc:
            conn.refuse_keys(exc)
        else:
            conn.supply_keys(keys)
    assert event is NEED_DATA or isinstance(event, HandshakeComplete)
    if isinstance(event, HandshakeComplete):
        answered += answer(conn, source)
    return answered


def pump_with_events(client: ClientConnection, server: ServerConnection) -> list[int]:
    """Run a key_events handshake to the end; the number of requests each side made."""
    sources = [client.config.key_source, server.config.key_source]
    assert sources[0] is not None and sources[1] is not None
    if client.state is State.START and client.key_request is None:
        client.start_handshake()
    asked = [answer(client, sources[0]), 0]
    for _ in range(6):
        if data := client.data_to_send():
            server.receive_data(data)
        asked[1] += answer(server, sources[1])
        if data := server.data_to_send():
            client.receive_data(data)
        asked[0] += answer(client, sources[0])
        if client.handshake_complete and server.handshake_complete:
            break
    return asked


# -- the sans-IO connection -------------------------------------------------------------------


@pytest.mark.parametrize(("auth", "requests"), [("psk", [1, 2]), ("signature", [1, 1])])
def test_key_events_handshake_matches_the_blocking_one(auth: str, requests: list[int]) -> None:
    sites = make_sites(client={"auth": auth})
    client = ClientConnection(sites.client, SERVER, key_events=True)
    server = ServerConnection(sites.server, key_events=True)
    client.start_handshake()
    assert client.state is State.START and client.data_to_send() == b""  # nothing yet
    request = client.key_request
    assert request is not None and request.operation == "take" and request.peer == SERVER
    assert pump_with_events(client, server) == requests
    ci, si = client.session_info(), server.session_info()
    assert ci.transcript_hash == si.transcript_hash and ci.auth_mode == auth
    assert ci.qkd and ci.qkd_key_ids == si.qkd_key_ids
    assert client.pool_keys_spent == server.pool_keys_spent == (4 if auth == "psk" else 1)
    # a QKD re-key started by the client: the server asks for the key by ID
    with pytest.raises(LocalProtocolError, match="key_events"):
        client.rekey_qkd()
    assert client.config.key_source is not None
    ids = client.rekey_qkd(client.rekey_request().perform(client.config.key_source))
    server.receive_data(client.data_to_send())
    event = server.next_event()
    assert isinstance(event, QKDKeysNeeded) and event.request.operation == "fetch"
    assert event.request.key_ids == ids
    assert server.config.key_source is not None
    server.supply_keys(event.request.perform(server.config.key_source))
    assert server.next_event().qkd_key_ids == ids  # type: ignore[union-attr]


def test_a_refused_fetch_fails_the_server_and_counts_what_was_spent() -> None:
    sites = make_sites(client={"auth": "psk"})
    client = ClientConnection(sites.client, SERVER, key_events=True)
    server = ServerConnection(sites.server, key_events=True)
    client.start_handshake()
    assert client.config.key_source is not None
    client.supply_keys(client.key_request.perform(client.config.key_source))  # type: ignore[union-attr]
    assert client.pool_keys_spent == 4 and client.state is State.WAIT_SERVER_HELLO
    server.receive_data(client.data_to_send())
    units = server.next_event()
    assert isinstance(units, QKDKeysNeeded) and units.request.count == 3
    assert server.config.key_source is not None
    server.supply_keys(units.request.perform(server.config.key_source))  # binder checked
    qkd = server.next_event()
    assert isinstance(qkd, QKDKeysNeeded) and qkd.request.count == 1
    with pytest.raises(QKDKeyRefused, match="the offered QKD keys cannot be fetched"):
        server.refuse_keys(KeysExhausted("gone"))
    assert server.state is State.ERROR and server.pool_keys_spent == 3
    client.receive_data(server.data_to_send())
    with pytest.raises(AlertReceived, match="qkd_key_unavailable"):
        client.next_event()
    with pytest.raises(LocalProtocolError):
        server.supply_keys([])


def test_auto_falls_back_to_signature_when_the_psk_take_is_refused() -> None:
    sites = make_sites(client={"auth": "auto"})
    client = ClientConnection(sites.client, SERVER, key_events=True)
    client.start_handshake()
    first = client.key_request
    assert first is not None and first.count == 4
    client.refuse_keys(KeysExhausted("only 1 left"))
    second = client.key_request
    assert second is not None and second.count == 1
    assert client.config.key_source is not None
    client.supply_keys(second.perform(client.config.key_source))
    assert client.state is State.WAIT_SERVER_HELLO and client.pool_keys_spent == 1
    assert client.data_to_send()  # the hello, signature mode


def test_supplied_keys_are_checked() -> None:
    sites = make_sites()
    client = ClientConnection(sites.client, SERVER, key_events=True)
    client.start_handshake()
    request = client.key_request
    assert request is not None and request.count == 4  # auto: psk first
    wrong = [DeliveredKey("00000000-0000-4000-8000-000000000000", b"\x00" * 16, 128)] * 4
    client.supply_keys(wrong)  # refused like a source that failed: falls back to 1 key
    assert client.key_request is not None and client.key_request.count == 1


def test_a_request_is_what_it_says() -> None:
    with pytest.raises(ValueError, match="one key ID per key"):
        KeyRequest("fetch", SERVER, 2, ("a",))
    with pytest.raises(ValueError, match="take"):
        KeyRequest("borrow", SERVER, 1)


# -- asyncio: the slow source does not stall the loop -----------------------------------------


def slow_contexts(source_type: type[SlowSource], auth: str) -> tuple[Context, Context,
                                                                      SlowSource, SlowSource]:
    sites = make_sites(keys_per_direction=4 * CONCURRENT + 8, client={"auth": auth})
    assert sites.client_store is not None and sites.server_store is not None
    slow_client = source_type(StoreKeySource(sites.client_store))
    slow_server = source_type(StoreKeySource(sites.server_store))
    client = Context("site-a", key_source=slow_client, identity=sites.client.identity,
                     trust=sites.client.trust, auth=auth, handshake_timeout=30)
    server = Context("site-b", key_source=slow_server, identity=sites.server.identity,
                     trust=sites.server.trust, handshake_timeout=30)
    return client, server, slow_client, slow_server


async def echo_one_byte(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A service that answers a connection's first byte with that byte, then closes."""
    writer.write(await reader.read(1))
    await writer.drain()
    writer.close()


async def handshakes_at_once(client: Context, server: Context, count: int) -> float:
    """``count`` concurrent HKX/1 handshakes (and one byte echoed on each); seconds taken."""
    listener = await hkx.start_server(echo_one_byte, HOST, 0, context=server)
    port = listener.sockets[0].getsockname()[1]

    async def one() -> bytes:
        reader, writer = await hkx.open_connection(HOST, port, context=client, peer=SERVER)
        writer.write(b"x")
        data = await reader.read(1)
        writer.close()
        return data

    started = time.monotonic()
    try:
        results = await asyncio.gather(*(one() for _ in range(count)))
    finally:
        listener.close()
    elapsed = time.monotonic() - started
    assert results == [b"x"] * count
    return elapsed


@pytest.mark.parametrize("source_type", [SlowSource, SlowAsyncSource])
def test_a_slow_key_source_does_not_stall_other_handshakes(source_type: type[SlowSource]
                                                           ) -> None:
    client, server, slow_client, slow_server = slow_contexts(source_type, "signature")
    elapsed = asyncio.run(handshakes_at_once(client, server, CONCURRENT))
    # each handshake: one take (client) then one fetch (server), two delays in a row
    assert slow_client.calls + getattr(slow_client, "async_calls", 0) == CONCURRENT
    assert slow_server.calls + getattr(slow_server, "async_calls", 0) == CONCURRENT
    if source_type is SlowAsyncSource:  # awaited natively, never in a thread
        assert slow_client.calls == slow_server.calls == 0
    assert elapsed < 10 * DELAY, f"{CONCURRENT} handshakes took {elapsed:.2f} s"


def test_the_loop_keeps_running_while_keys_are_fetched() -> None:
    """A timer on the same loop fires on time while a handshake waits for its keys."""
    client, server, _, _ = slow_contexts(SlowSource, "psk")

    async def main() -> list[float]:
        ticks: list[float] = []

        async def tick() -> None:
            start = time.monotonic()
            while time.monotonic() - start < 3 * DELAY:
                await asyncio.sleep(0.02)
                ticks.append(time.monotonic())

        await asyncio.gather(handshakes_at_once(client, server, 3), tick())
        return ticks

    ticks = asyncio.run(main())
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert max(gaps) < DELAY, f"the loop stalled for {max(gaps):.3f} s"


def tls_psk_contexts(source_type: type[SlowSource]) -> tuple[TLSContext, TLSContext,
                                                             SlowSource, SlowSource]:
    sites = make_sites(keys_per_direction=CONCURRENT + 4)
    assert sites.client_store is not None and sites.server_store is not None
    slow_client = source_type(StoreKeySource(sites.client_store))
    slow_server = source_type(StoreKeySource(sites.server_store))
    client = TLSContext(CLIENT, mode="qkd-psk", key_source=slow_client, handshake_timeout=30)
    server = TLSContext(SERVER, mode="qkd-psk", key_source=slow_server,
                        peers=("site-x", CLIENT), handshake_timeout=30)
    return client, server, slow_client, slow_server


@pytest.mark.parametrize("source_type", [SlowSource, SlowAsyncSource])
def test_tls_qkd_psk_fetches_off_the_loop(source_type: type[SlowSource]) -> None:
    client, server, slow_client, slow_server = tls_psk_contexts(source_type)
    count = 20

    async def main() -> float:
        listener = await tls_asyncio.start_server(echo_one_byte, HOST, 0, context=server)
        port = listener.sockets[0].getsockname()[1]

        async def one() -> Any:
            reader, writer = await tls_asyncio.open_connection(HOST, port, context=client,
                                                               peer=SERVER)
            writer.write(b"y")
            assert await reader.read(1) == b"y"
            info = writer.get_extra_info("session_info")
            writer.close()
            return info

        started = time.monotonic()
        try:
            infos = await asyncio.gather(*(one() for _ in range(count)))
        finally:
            listener.close()
        assert all(i.psk_used and i.peer.site == SERVER for i in infos)
        assert len({i.psk_key_id for i in infos}) == count
        return time.monotonic() - started

    elapsed = asyncio.run(main())
    # the server tries its pool for site-x first (refused), then site-a's
    assert slow_server.calls + getattr(slow_server, "async_calls", 0) == 2 * count
    assert slow_client.calls + getattr(slow_client, "async_calls", 0) == count
    assert elapsed < 10 * DELAY, f"{count} TLS handshakes took {elapsed:.2f} s"


# -- the TLS ClientHello reader ---------------------------------------------------------------


def test_the_psk_identity_is_read_from_a_real_client_hello() -> None:
    sites = make_sites()
    assert sites.client_store is not None
    context = TLSContext(CLIENT, mode="qkd-psk", key_source=StoreKeySource(sites.client_store))
    conn = context.new_connection(False, SERVER)
    assert conn.do_handshake() is False
    hello = conn.data_to_send()
    key_id = conn._hooks.psk_key_id  # what the client took
    assert key_id is not None and first_psk_identity(hello) == key_id.encode()
    for cut in (0, 4, 5, 100, len(hello) - 1):
        assert first_psk_identity(hello[:cut]) is NEED_MORE
    # the same hello in two records (a peer may fragment it)
    body = hello[5:]
    split = (hello[:3] + (200).to_bytes(2, "big") + body[:200]
             + hello[:3] + (len(body) - 200).to_bytes(2, "big") + body[200:])
    assert first_psk_identity(split) == key_id.encode()
    assert first_psk_identity(b"\x17\x03\x03\x00\x05hello") is None  # not a handshake
    pki = make_sites(x509_chain=True)
    certificate = TLSContext(CLIENT, mode="certificate", identity=pki.client.identity,
                             trust=pki.client.trust)
    plain = certificate.new_connection(False, SERVER)
    plain.do_handshake()
    assert first_psk_identity(plain.data_to_send()) is None  # no pre_shared_key
