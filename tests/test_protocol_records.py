"""The record layer's in-place paths, against the byte-at-a-time paths they stand in for.

A transport may read into the connection's own buffer (``receive_buffer`` /
``buffer_received``), open application data straight into its caller's buffer
(``receive_into``) and seal straight into its own (``send_into``).  These tests hold
them to what ``receive_data`` / ``next_event`` / ``send`` / ``data_to_send`` do: the
same plaintext, in order, the same errors, no byte that did not authenticate, and
records that the ordinary path opens.
"""

from __future__ import annotations

import os
import random

import pytest

from hybridkex.errors import (
    AuthenticationFailed,
    ConnectionTruncated,
    DecodeError,
    InvalidParameter,
    LocalProtocolError,
    RecordAuthenticationFailed,
)
from hybridkex.primitives import aead
from hybridkex.protocol import (
    SUITES,
    ClientConnection,
    ConnectionClosed,
    DataReceived,
    KeyUpdated,
    ServerConnection,
    State,
)
from hybridkex.protocol.record import (
    HEADER_SIZE,
    MAX_PLAINTEXT,
    MAX_RECORD,
    RecordBuffer,
    RecordProtection,
    sealed_size,
)
from hybridkex.protocol.suites import ContentType
from tests.hkx1 import drain, handshake, make_sites

AEAD_SUITES = [SUITES[0x0101], SUITES[0x0102]]


def connected(suite_code: int = 0x0101, **client: object
              ) -> tuple[ClientConnection, ServerConnection]:
    suite = SUITES[suite_code]
    options = {"suites": (suite,), **client}
    client_conn, server_conn, _ = handshake(make_sites(client=options,
                                                       server={"suites": (suite,)}))
    return client_conn, server_conn


def read_into(conn: ServerConnection | ClientConnection, wire: bytes, cuts: list[int],
              out_size: int) -> tuple[bytes, list[object]]:
    """Feed ``wire`` through receive_buffer in pieces cut at ``cuts``, taking plaintext
    with receive_into (buffers of ``out_size``) and events with next_event."""
    plaintext = bytearray()
    events: list[object] = []
    out = memoryview(bytearray(out_size))
    for start, stop in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        view = conn.receive_buffer(stop - start)
        assert len(view) >= stop - start
        view[:stop - start] = wire[start:stop]
        view.release()
        conn.buffer_received(stop - start)
        while True:
            count = conn.receive_into(out)
            if count:
                plaintext += out[:count]
                continue
            event = conn.next_event()
            if isinstance(event, DataReceived):
                plaintext += event.data
            elif isinstance(event, ConnectionClosed | KeyUpdated):
                events.append(event)
                if isinstance(event, ConnectionClosed):
                    break
            else:
                break
    return bytes(plaintext), events


@pytest.mark.parametrize("suite_code", [0x0101, 0x0102])
@pytest.mark.parametrize("out_size", [1, 100, MAX_PLAINTEXT, 3 * MAX_PLAINTEXT + 7])
def test_receive_into_gives_the_plaintext_in_order(suite_code: int, out_size: int) -> None:
    client, server = connected(suite_code)
    rng = random.Random(out_size + suite_code)
    payload = os.urandom(5 * MAX_PLAINTEXT + 1234)
    client.send(payload[:40_000])
    client.key_update(request_peer=False)
    client.send(payload[40_000:])
    client.close()
    wire = client.data_to_send()
    cuts = sorted(rng.sample(range(1, len(wire)), 12))
    got, events = read_into(server, wire, cuts, out_size)
    assert got == payload
    assert [type(e) for e in events] == [KeyUpdated, ConnectionClosed]


def test_receive_into_waits_while_events_are_pending() -> None:
    client, server = connected()
    client.key_update(request_peer=True)
    client.send(b"after the update")
    server.receive_data(client.data_to_send())
    out = memoryview(bytearray(100))
    assert server.receive_into(out) == 0  # the KeyUpdate comes first
    assert isinstance(server.next_event(), KeyUpdated)
    assert server.receive_into(out) == 16 and bytes(out[:16]) == b"after the update"


def test_a_tampered_record_after_good_ones_fails_the_next_call_and_leaves_no_plaintext(
        ) -> None:
    client, server = connected()
    good, secret = os.urandom(3000), b"S" * 5000
    client.send(good)
    client.send(secret)
    wire = bytearray(client.data_to_send())
    wire[len(wire) - 20] ^= 1  # inside the second record's ciphertext
    view = server.receive_buffer(len(wire))
    view[:len(wire)] = wire
    view.release()
    server.buffer_received(len(wire))
    out = memoryview(bytearray(b"\xaa" * 20_000))
    assert server.receive_into(out) == len(good)  # what did authenticate comes first
    assert out[:len(good)] == good
    with pytest.raises(RecordAuthenticationFailed):
        server.receive_into(out)
    assert b"SSSS" not in bytes(out)  # the backend's unverified output was wiped
    assert server.state is State.ERROR
    assert server.data_to_send()  # the bad_record_mac alert
    with pytest.raises(LocalProtocolError):
        server.next_event()


def test_receive_into_leaves_bad_lengths_to_the_ordinary_path() -> None:
    _client, server = connected()
    header = bytes([ContentType.APPLICATION_DATA]) + (MAX_PLAINTEXT + 17).to_bytes(2, "big")
    server.receive_data(header + bytes(MAX_PLAINTEXT + 17))
    assert server.receive_into(memoryview(bytearray(1 << 16))) == 0
    with pytest.raises(RecordAuthenticationFailed):  # authenticated first, as ever
        server.next_event()
    _client2, server2 = connected()
    server2.receive_data(bytes([ContentType.APPLICATION_DATA]) + (1 << 15).to_bytes(2, "big"))
    assert server2.receive_into(memoryview(bytearray(100))) == 0
    with pytest.raises(DecodeError) as error:
        server2.next_event()
    assert error.value.alert == 22  # record_overflow


def test_end_of_file_mid_record_after_reading_into_the_buffer() -> None:
    client, server = connected()
    client.send(b"x" * 1000)
    wire = client.data_to_send()
    view = server.receive_buffer(100)
    view[:500] = wire[:500]
    view.release()
    server.buffer_received(500)
    server.receive_data(b"")
    assert server.receive_into(memoryview(bytearray(2000))) == 0
    with pytest.raises(ConnectionTruncated, match="middle of a record"):
        server.next_event()
    with pytest.raises(LocalProtocolError):
        server.receive_buffer(100)


def test_buffer_received_must_match_the_buffer() -> None:
    _client, server = connected()
    with pytest.raises(ValueError, match="receive_buffer"):
        server.buffer_received(1)  # no receive_buffer yet
    view = server.receive_buffer(10)
    with pytest.raises(ValueError, match="receive_buffer"):
        server.buffer_received(len(view) + 1)


@pytest.mark.parametrize("suite_code", [0x0101, 0x0102])
def test_send_into_writes_what_the_peer_opens_with_key_updates_where_due(
        suite_code: int) -> None:
    client, server = connected(suite_code, key_update_interval=4)
    payload = os.urandom(10 * MAX_PLAINTEXT + 99)
    out = memoryview(bytearray(sealed_size(3 * MAX_PLAINTEXT) + MAX_RECORD))
    wire = bytearray()
    view = memoryview(payload)
    while len(view):
        used, written = client.send_into(view, out)
        assert used > 0
        wire += out[:written]
        view = view[used:]
    server.receive_data(bytes(wire))
    events = drain(server)
    assert b"".join(e.data for e in events if isinstance(e, DataReceived)) == payload
    assert sum(isinstance(e, KeyUpdated) for e in events) == 3  # 11 records, 3 per key
    assert client.session_info().key_updates == 3
    # and the ordinary path carries on from where send_into left the keys
    client.send(b"tail")
    server.receive_data(client.data_to_send())
    assert [e.data for e in drain(server) if isinstance(e, DataReceived)] == [b"tail"]


def test_send_into_keeps_records_in_order() -> None:
    client, server = connected()
    client.send(b"queued first")
    out = memoryview(bytearray(1 << 16))
    with pytest.raises(LocalProtocolError, match="data_to_send"):
        client.send_into(memoryview(b"second"), out)
    first = client.data_to_send()
    _used, written = client.send_into(memoryview(b"second"), out)
    server.receive_data(first + bytes(out[:written]))
    assert [e.data for e in drain(server) if isinstance(e, DataReceived)] == [
        b"queued first", b"second"]
    assert client.send_into(memoryview(b"x" * 100), memoryview(bytearray(50))) == (0, 0)
    client.close()
    with pytest.raises(LocalProtocolError):
        client.send_into(memoryview(b"late"), out)


def test_sealed_size() -> None:
    assert sealed_size(0) == 0
    assert sealed_size(1) == 1 + HEADER_SIZE + 16
    assert sealed_size(MAX_PLAINTEXT) == MAX_PLAINTEXT + HEADER_SIZE + 16
    assert sealed_size(MAX_PLAINTEXT + 1) == MAX_PLAINTEXT + 1 + 2 * (HEADER_SIZE + 16)


# -- the record buffer: in-place and fed bytes read the same records ------------------


def _records(buffer: RecordBuffer) -> list[tuple[int, bytes]]:
    out = []
    while (record := buffer.next_record()) is not None:
        out.append((record.content_type, record.payload))
    return out


def test_record_buffer_reads_the_same_records_however_the_bytes_arrive() -> None:
    rng = random.Random(7)
    for _ in range(200):
        stream = b"".join(bytes([rng.choice((21, 22, 23))]) + len(p).to_bytes(2, "big") + p
                          for p in (os.urandom(rng.choice((0, 1, 50, 4000, MAX_PLAINTEXT)))
                                    for _ in range(rng.randint(1, 8))))
        cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, 5)))
        fed, inplace = RecordBuffer(), RecordBuffer()
        got_fed: list[tuple[int, bytes]] = []
        got_inplace: list[tuple[int, bytes]] = []
        for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            piece = stream[start:stop]
            if rng.random() < 0.5:
                fed.feed(piece)
            else:  # mixed: the fed buffer also gets some pieces in place
                view = fed.receive_buffer(len(piece))
                view[:len(piece)] = piece
                view.release()
                fed.buffer_received(len(piece))
            view = inplace.receive_buffer(rng.choice((len(piece), len(piece) + 1, 1 << 16)))
            view[:len(piece)] = piece
            view.release()
            inplace.buffer_received(len(piece))
            got_fed += _records(fed)
            got_inplace += _records(inplace)
        assert got_fed == got_inplace
        assert fed.pending() == inplace.pending() == 0


# -- the keyed AEAD's into-calls --------------------------------------------------------


@pytest.mark.parametrize("suite", AEAD_SUITES, ids=lambda s: s.aead)
def test_keyed_aead_into_calls(suite: object) -> None:
    name = suite.aead  # type: ignore[attr-defined]
    keyed = aead(name).keyed(os.urandom(32))
    nonce, message = os.urandom(12), os.urandom(1000)
    sealed = bytearray(1016)
    assert keyed.encrypt_into(nonce, message, b"ad", sealed) == 1016
    assert bytes(sealed) == keyed.encrypt(nonce, message, b"ad")
    opened = memoryview(bytearray(1000))
    assert keyed.decrypt_into(nonce, memoryview(sealed), b"ad", opened) == 1000
    assert opened == message
    sealed[5] ^= 1
    with pytest.raises(AuthenticationFailed):
        keyed.decrypt_into(nonce, bytes(sealed), b"ad", opened)
    assert opened == bytes(1000)  # wiped, not left holding unverified plaintext
    with pytest.raises(InvalidParameter):
        keyed.encrypt_into(nonce, message, b"ad", bytearray(1015))
    with pytest.raises(InvalidParameter):
        keyed.decrypt_into(nonce, bytes(sealed), b"ad", memoryview(bytes(1000)))  # read-only
    with pytest.raises(AuthenticationFailed):
        keyed.decrypt_into(nonce, b"short", b"ad", bytearray(0))


def test_record_protection_seal_into_matches_seal() -> None:
    suite, secret = SUITES[0x0101], os.urandom(48)
    a, b = RecordProtection(suite, secret), RecordProtection(suite, secret)
    out = memoryview(bytearray(2000))
    for size in (0, 1, 1000):
        plaintext = os.urandom(size)
        written = b.seal_into(ContentType.APPLICATION_DATA, plaintext, out)
        assert bytes(out[:written]) == a.seal(ContentType.APPLICATION_DATA, plaintext)
    assert a.seq == b.seq == 3


# -- runs of records: sealed in one loop, opened in one loop ----------------------------


def test_record_protection_seal_run_matches_seal_split() -> None:
    suite, secret = SUITES[0x0101], os.urandom(48)
    a, b = RecordProtection(suite, secret), RecordProtection(suite, secret)
    data = os.urandom(3 * MAX_PLAINTEXT + 500)
    expected: list[bytes] = []
    for start in range(0, len(data), MAX_PLAINTEXT):
        expected += a.seal_split(ContentType.APPLICATION_DATA, data[start:start + MAX_PLAINTEXT])
    out: list[bytes] = []
    with memoryview(data) as view:
        assert b.seal_run(ContentType.APPLICATION_DATA, view, 0, 2, out) == 2 * MAX_PLAINTEXT
        assert b.seal_run(ContentType.APPLICATION_DATA, view, 2 * MAX_PLAINTEXT, 9,
                          out) == len(data)
    assert out == expected
    assert a.seq == b.seq == 4


def _wire_of(client: ClientConnection, pieces: list[bytes]) -> bytes:
    for piece in pieces:
        client.send(piece)
    return client.data_to_send()


@pytest.mark.parametrize("suite_code", [0x0101, 0x0102])
def test_a_read_of_many_records_gives_one_event_per_record_in_order(suite_code: int) -> None:
    """What one receive_data brings is opened in one run; every record is still its own
    DataReceived, in order, the same as records fed one at a time give."""
    client, server = connected(suite_code)
    pieces = [os.urandom(n) for n in (1, 700, MAX_PLAINTEXT, 5, MAX_PLAINTEXT)]
    server.receive_data(_wire_of(client, pieces))
    events = drain(server)
    assert [e.data for e in events if isinstance(e, DataReceived)] == pieces
    assert len(events) == len(pieces)
    client2, server2 = connected(suite_code)
    one_at_a_time = []
    for piece in pieces:
        server2.receive_data(_wire_of(client2, [piece]))
        one_at_a_time += drain(server2)
    assert one_at_a_time == events


def test_more_records_than_one_run_all_arrive_in_order() -> None:
    from hybridkex.protocol.record import OPEN_BATCH
    client, server = connected()
    pieces = [i.to_bytes(2, "big") * 50 for i in range(2 * OPEN_BATCH + 3)]
    server.receive_data(_wire_of(client, pieces))
    assert [e.data for e in drain(server) if isinstance(e, DataReceived)] == pieces


def test_a_tampered_record_in_a_run_fails_after_the_records_before_it() -> None:
    client, server = connected()
    good = [b"first" * 100, b"second" * 100]
    secret = b"S" * 5000
    wire = bytearray(_wire_of(client, [*good, secret, b"never delivered"]))
    third = 2 * HEADER_SIZE + 2 * 16 + len(good[0]) + len(good[1])
    wire[third + HEADER_SIZE + 10] ^= 1  # inside the third record's ciphertext
    server.receive_data(bytes(wire))
    got = []
    for _ in good:
        event = server.next_event()
        assert isinstance(event, DataReceived)
        got.append(event.data)
    assert got == good  # what authenticated came first
    with pytest.raises(RecordAuthenticationFailed):
        server.next_event()  # and then the bad record, with nothing of it or after it
    assert server.state is State.ERROR
    assert server.data_to_send()  # the bad_record_mac alert
    with pytest.raises(LocalProtocolError):
        server.next_event()


def test_a_key_update_inside_a_bulk_send_splits_the_run() -> None:
    client, server = connected(key_update_interval=3)
    payload = os.urandom(7 * MAX_PLAINTEXT + 1)
    client.send(payload)
    server.receive_data(client.data_to_send())
    events = drain(server)
    assert b"".join(e.data for e in events if isinstance(e, DataReceived)) == payload
    assert [type(e) for e in events].count(KeyUpdated) == 3  # 8 records, 2 per key


def test_a_bulk_send_puts_on_the_wire_what_sealing_record_by_record_makes() -> None:
    """send() of many records at once seals them in one loop (seal_run); the wire is
    byte for byte what RecordProtection.seal makes of each 16 KiB piece in turn."""
    secrets: dict[str, bytes] = {}
    client, _server = connected(secret_log=secrets.__setitem__)
    payload = os.urandom(4 * MAX_PLAINTEXT + 77)
    client.send(payload)
    reference = RecordProtection(SUITES[0x0101], secrets["client_application_traffic_secret_0"])
    assert client.data_to_send() == b"".join(
        reference.seal(ContentType.APPLICATION_DATA, payload[start:start + MAX_PLAINTEXT])
        for start in range(0, len(payload), MAX_PLAINTEXT))


def test_the_record_layers_events_are_dataclass_events() -> None:
    """data_received / data_received_events skip DataReceived's __init__ for speed; what
    they make must be the same immutable event the dataclass makes."""
    import dataclasses

    from hybridkex.protocol.events import data_received, data_received_events
    made = data_received(b"secret")
    assert made == DataReceived(b"secret") and hash(made) == hash(DataReceived(b"secret"))
    assert type(made) is DataReceived and made.data == b"secret"
    assert repr(made) == "DataReceived(<6 bytes>)"  # never the plaintext
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.data = b"changed"  # type: ignore[misc]
    assert data_received_events([b"a", b"bc"]) == [DataReceived(b"a"), DataReceived(b"bc")]
