"""HKX/1 fuzzing (hypothesis): the wire decoders, the record buffer and the state machine.

The contract under test:

* every decoder in :mod:`hybridkex.protocol.wire` answers any body with a message or a
  :class:`~hybridkex.errors.DecodeError`, and a body it accepts is the one encoding
  of that message: ``encode()`` gives back the framed bytes exactly (strict,
  canonical decoding); a valid message survives ``decode(encode(m)) == m``;
* :class:`~hybridkex.protocol.record.RecordBuffer` turns any byte stream, however it
  is cut, into the same records, or a DecodeError at the same header;
* a connection fed any sequence of records (valid handshake messages of every type in
  any order, in plaintext or sealed under the real handshake keys, stray alerts,
  application data, random bytes) raises nothing but ProtocolError subclasses from
  ``next_event``, settles within a bounded number of calls, ends in state ERROR when it
  fails, queues an alert for the peer, and never reports an event it cannot have
  earned (a completed handshake, data).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import signal
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from hybridkex.errors import (
    AlertReceived,
    ConnectionTruncated,
    DecodeError,
    HybridKexError,
    LocalProtocolError,
    ProtocolError,
    RecordAuthenticationFailed,
)
from hybridkex.primitives import kem
from hybridkex.protocol import (
    Connection,
    ConnectionClosed,
    Event,
    HandshakeComplete,
    NeedData,
    State,
)
from hybridkex.protocol.record import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    Record,
    RecordBuffer,
    RecordProtection,
    frame_record,
)
from hybridkex.protocol.suites import (
    SUITES,
    AlertDescription,
    AuthMode,
    ContentType,
    HandshakeType,
    KemId,
    SignatureSchemeId,
)
from hybridkex.protocol.wire import (
    BINDER_SIZE,
    MAX_HANDSHAKE_MESSAGE,
    AuthMac,
    ClientHello,
    Finished,
    Identity,
    IdentityKind,
    IdentityVerify,
    KeyShare,
    KeyUpdate,
    Message,
    QkdRekey,
    QkdRekeyAck,
    ServerHello,
    binder_prefix,
    decode_handshake,
    frame_handshake,
)
from tests.hkx1 import CLIENT, SERVER, SecretLog, make_sites

SETTINGS = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(max_examples=150, deadline=None, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ALERTS = frozenset(int(a) for a in AlertDescription)
MAX_CALLS = 64  # next_event calls one delivery may take before it counts as a hang
TIME_LIMIT = 10.0  # seconds one example may spend inside the connection


# -- strategies: valid messages --------------------------------------------------------------

u16 = st.integers(0, 0xFFFF)
key_ids = st.binary(min_size=16, max_size=16)
site_names = st.one_of(
    st.sampled_from([CLIENT, SERVER]),
    st.text(min_size=1, max_size=12).filter(lambda s: len(s.encode("utf-8")) <= 255))
suite_codes = st.one_of(st.sampled_from(sorted(SUITES)), u16)
kem_codes = st.one_of(st.sampled_from([int(k) for k in KemId]), u16)
scheme_codes = st.one_of(st.sampled_from([int(s) for s in SignatureSchemeId]), u16)


@functools.cache
def mlkem768_public_keys() -> tuple[bytes, ...]:
    """Real ML-KEM-768 encapsulation keys, so a fuzzed ClientHello can get past the
    FIPS 203 modulus check and into the server's handshake."""
    return tuple(kem("ML-KEM-768").generate_keypair()[0] for _ in range(3))


@st.composite
def share_data(draw: st.DrawFn, kem_code: int) -> bytes:
    known: dict[int, tuple[int, ...]] = {KemId.X25519: (32,), KemId.ML_KEM_768: (1184, 1088),
                                         KemId.ML_KEM_1024: (1568,)}
    sizes = known.get(kem_code, ())
    if kem_code == KemId.ML_KEM_768 and draw(st.booleans()):
        return draw(st.sampled_from(mlkem768_public_keys()))
    if len(sizes) > 0 and draw(st.booleans()):
        size = draw(st.sampled_from(sizes))
        return draw(st.binary(min_size=size, max_size=size))
    return draw(st.binary(min_size=1, max_size=40))


@st.composite
def key_shares(draw: st.DrawFn) -> tuple[KeyShare, ...]:
    if draw(st.booleans()):  # the default suites' pair, in order
        codes = [int(KemId.X25519), int(KemId.ML_KEM_768)]
    else:
        codes = draw(st.lists(kem_codes, min_size=1, max_size=3, unique=True))
    return tuple(KeyShare(code, draw(share_data(code))) for code in codes)


@st.composite
def client_hellos(draw: st.DrawFn) -> ClientHello:
    mode = draw(st.sampled_from(AuthMode))
    psk = mode is AuthMode.PSK
    ids = draw(st.lists(key_ids, min_size=3 if psk else 0, max_size=6, unique=True))
    auth_ids, qkd_ids = (tuple(ids[:3]), tuple(ids[3:])) if psk else ((), tuple(ids))
    binder = draw(st.binary(min_size=16, max_size=16)) if psk else b""
    return ClientHello(
        random=draw(st.binary(min_size=32, max_size=32)),
        client_site=draw(site_names),
        server_site=draw(site_names),
        suites=tuple(draw(st.lists(suite_codes, min_size=1, max_size=6, unique=True))),
        key_shares=draw(key_shares()),
        auth_mode=mode,
        qkd_key_ids=qkd_ids,
        auth_key_ids=auth_ids,
        binder=binder,
        version=draw(st.one_of(st.just(1), u16)),
    )


@st.composite
def server_hellos(draw: st.DrawFn) -> ServerHello:
    return ServerHello(
        random=draw(st.binary(min_size=32, max_size=32)),
        suite=draw(suite_codes),
        key_shares=draw(key_shares()),
        qkd_accepted=draw(st.booleans()),
        client_auth_requested=draw(st.booleans()),
        version=draw(st.one_of(st.just(1), u16)),
    )


@st.composite
def identities(draw: st.DrawFn) -> Identity:
    scheme = draw(scheme_codes)
    if draw(st.booleans()):
        return Identity(IdentityKind.RAW_PUBLIC_KEY, scheme,
                        public_key=draw(st.binary(min_size=1, max_size=80)))
    chain = draw(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=8))
    return Identity(IdentityKind.X509_CHAIN, scheme, certificates=tuple(chain))


@st.composite
def plausible_client_hellos(draw: st.DrawFn) -> ClientHello:
    """ClientHellos a server gets deep into: addressed right, the default suites and their
    key shares (a real ML-KEM key), signature mode, with or without (unknown) QKD keys."""
    return ClientHello(
        random=draw(st.binary(min_size=32, max_size=32)),
        client_site=draw(st.sampled_from([CLIENT, "site-c"])),
        server_site=SERVER,
        suites=draw(st.sampled_from([(0x0101, 0x0102), (0x0102,), (0x0101, 0x0001)])),
        key_shares=(KeyShare(KemId.X25519, draw(st.binary(min_size=32, max_size=32))),
                    KeyShare(KemId.ML_KEM_768, draw(st.sampled_from(mlkem768_public_keys())))),
        auth_mode=AuthMode.SIGNATURE,
        qkd_key_ids=tuple(draw(st.lists(key_ids, max_size=1))),
    )


@st.composite
def plausible_server_hellos(draw: st.DrawFn) -> ServerHello:
    """ServerHellos a started client (psk mode, one QKD key offered) gets deep into."""
    return ServerHello(
        random=draw(st.binary(min_size=32, max_size=32)),
        suite=draw(st.sampled_from([0x0101, 0x0102])),
        key_shares=(KeyShare(KemId.X25519, draw(st.binary(min_size=32, max_size=32))),
                    KeyShare(KemId.ML_KEM_768, draw(st.binary(min_size=1088, max_size=1088)))),
        qkd_accepted=draw(st.booleans()),
        client_auth_requested=draw(st.booleans()),
    )


MESSAGE_STRATEGIES: dict[HandshakeType, st.SearchStrategy[Message]] = {
    HandshakeType.CLIENT_HELLO: client_hellos(),
    HandshakeType.SERVER_HELLO: server_hellos(),
    HandshakeType.IDENTITY: identities(),
    HandshakeType.IDENTITY_VERIFY: st.builds(IdentityVerify,
                                             st.binary(min_size=1, max_size=120)),
    HandshakeType.AUTH_MAC: st.builds(AuthMac, st.binary(min_size=16, max_size=16)),
    HandshakeType.FINISHED: st.builds(Finished, st.one_of(
        st.binary(min_size=32, max_size=32), st.binary(min_size=48, max_size=48))),
    HandshakeType.KEY_UPDATE: st.builds(KeyUpdate, st.booleans()),
    HandshakeType.QKD_REKEY: st.builds(
        QkdRekey, st.lists(key_ids, min_size=1, max_size=4, unique=True).map(tuple)),
    HandshakeType.QKD_REKEY_ACK: st.just(QkdRekeyAck()),
}
messages: st.SearchStrategy[Message] = st.one_of(*MESSAGE_STRATEGIES.values())

# -- strategies: damage ----------------------------------------------------------------------

MUTATION_KINDS = ("flip", "set", "insert", "delete", "truncate", "append")
mutations = st.lists(st.tuples(st.sampled_from(MUTATION_KINDS), st.integers(0, 1 << 16),
                               st.binary(min_size=1, max_size=4)), min_size=1, max_size=4)


def mutate(data: bytes, plan: Sequence[tuple[str, int, bytes]]) -> bytes:
    out = bytearray(data)
    for kind, where, blob in plan:
        at = where % (len(out) + 1)
        if kind == "flip" and out:
            out[at % len(out)] ^= blob[0] or 1
        elif kind == "set" and out:
            out[at % len(out)] = (0x00, 0xFF, 0x01, 0x80)[blob[0] % 4]
        elif kind == "insert":
            out[at:at] = blob
        elif kind == "delete":
            del out[at:at + 1 + blob[0] % 4]
        elif kind == "truncate":
            del out[at:]
        else:
            out += blob
    return bytes(out)


@st.composite
def identity_chain_bodies(draw: st.DrawFn) -> bytes:
    """X.509 Identity bodies whose certificate entries may carry lying length prefixes."""
    chain = bytearray()
    for _ in range(draw(st.integers(0, 4))):
        cert = draw(st.binary(max_size=12))
        length = draw(st.sampled_from(
            [len(cert), 0, MAX_HANDSHAKE_MESSAGE + 1, 0xFFFFFF, len(cert) + 1]))
        chain += length.to_bytes(3, "big") + cert
    chain += draw(st.one_of(st.just(b""), st.binary(max_size=3), st.sampled_from(
        [b"\x00\x00\x00", b"\xff\xff\xff", b"\x00\x00\x05", b"\x02\x00\x01"])))
    scheme = draw(scheme_codes)
    return (bytes([IdentityKind.X509_CHAIN]) + scheme.to_bytes(2, "big")
            + len(chain).to_bytes(3, "big") + chain)


@st.composite
def share_list_bodies(draw: st.DrawFn) -> bytes:
    """ServerHello bodies whose key share list may carry lying length prefixes."""
    inner = bytearray()
    for _ in range(draw(st.integers(0, 3))):
        data = draw(st.binary(max_size=8))
        length = draw(st.sampled_from([len(data), 0, len(data) + 1, 0xFFFF]))
        inner += draw(kem_codes).to_bytes(2, "big") + length.to_bytes(2, "big") + data
    inner += draw(st.binary(max_size=3))
    return (b"\x00\x01" + bytes(32) + b"\x01\x01" + len(inner).to_bytes(2, "big") + inner
            + draw(st.binary(min_size=2, max_size=2)))


# -- 1. decoders ---------------------------------------------------------------------------


def check_decoding(msg_type: int, body: bytes) -> Message | None:
    """The message ``body`` decodes to (re-encoding to exactly its framed bytes), or None
    when it is refused with a DecodeError carrying a known alert."""
    try:
        message = decode_handshake(msg_type, body)
    except DecodeError as exc:
        refusal: DecodeError | None = exc
    else:
        refusal = None
    if refusal is not None:
        assert refusal.alert in ALERTS, refusal
        return None
    assert message.msg_type == msg_type
    assert message.encode() == frame_handshake(msg_type, body), (
        f"{type(message).__name__} decoded from a body that is not its encoding: "
        f"{body.hex()}")
    return message


@pytest.mark.parametrize("msg_type", list(HandshakeType), ids=lambda t: t.name.lower())
@SETTINGS
@given(data=st.data())
def test_valid_messages_round_trip(msg_type: HandshakeType, data: st.DataObject) -> None:
    message = data.draw(MESSAGE_STRATEGIES[msg_type])
    raw = message.encode()
    assert raw[0] == msg_type
    assert int.from_bytes(raw[1:4], "big") == len(raw) - 4
    decoded = decode_handshake(raw[0], raw[4:])
    assert decoded == message
    assert decoded.encode() == raw


@SETTINGS
@given(hello=client_hellos(), tag=st.binary(min_size=16, max_size=16))
def test_a_psk_hello_encoded_once_is_the_hello_with_its_binder(hello: ClientHello,
                                                               tag: bytes) -> None:
    """encode_bound (the client: one encoding, the binder over its prefix) gives the
    bytes of the hello re-encoded with that binder, and binder_prefix (the server: a
    slice of what arrived) gives back exactly what the binder was made over."""
    if hello.auth_mode is not AuthMode.PSK:
        with pytest.raises(ValueError, match="psk"):
            hello.encode_bound(lambda prefix: tag)
        return
    seen: list[bytes] = []

    def binder_for(prefix: bytes) -> bytes:
        seen.append(prefix)
        return tag

    raw = hello.encode_bound(binder_for)
    assert raw == dataclasses.replace(hello, binder=tag).encode()
    assert seen == [hello.binder_input()] == [binder_prefix(raw)]
    assert raw.endswith(bytes((BINDER_SIZE,)) + tag)
    decoded = decode_handshake(raw[0], raw[4:])
    assert isinstance(decoded, ClientHello) and decoded.binder == tag
    assert binder_prefix(decoded.encode()) == binder_prefix(raw)


@pytest.mark.parametrize("msg_type", [*HandshakeType, 0, 3, 255],
                         ids=lambda t: t.name.lower() if isinstance(t, HandshakeType) else str(t))
@SETTINGS
@given(body=st.binary(max_size=300))
def test_random_bodies_decode_or_fail_typed(msg_type: int, body: bytes) -> None:
    message = check_decoding(msg_type, body)
    if msg_type not in set(HandshakeType):
        assert message is None


@SETTINGS
@given(message=messages, plan=mutations)
def test_mutated_valid_bodies_decode_or_fail_typed(message: Message,
                                                    plan: list[tuple[str, int, bytes]]) -> None:
    raw = message.encode()
    check_decoding(raw[0], mutate(raw[4:], plan))


@SETTINGS
@given(body=identity_chain_bodies())
@example(body=bytes.fromhex("020403" "000007" "00000100" "000000"))  # found by this test
def test_certificate_chain_entries_with_lying_lengths(body: bytes) -> None:
    check_decoding(HandshakeType.IDENTITY, body)


@SETTINGS
@given(body=share_list_bodies())
def test_key_share_entries_with_lying_lengths(body: bytes) -> None:
    check_decoding(HandshakeType.SERVER_HELLO, body)


def _chain_body(entries: bytes) -> bytes:
    return (bytes([IdentityKind.X509_CHAIN]) + SignatureSchemeId.ED25519.to_bytes(2, "big")
            + len(entries).to_bytes(3, "big") + entries)


@pytest.mark.parametrize("trailer", [b"\x00\x00\x00", b"\xff\xff\xff", b"\x00\x00\x05"],
                         ids=["zero-length", "over-the-limit", "past-the-end"])
def test_certificate_chain_with_a_trailing_bad_entry_is_refused(trailer: bytes) -> None:
    """A chain ``[cert][trailer]``, the trailer a certificate length prefix with no valid
    certificate behind it, is not an encoding of the one-certificate chain."""
    body = _chain_body(b"\x00\x00\x01X" + trailer)
    with pytest.raises(DecodeError):
        decode_handshake(HandshakeType.IDENTITY, body)


def test_a_body_over_the_framing_limit_does_not_decode() -> None:
    """An Identity body a little over MAX_HANDSHAKE_MESSAGE (the chain itself within it)
    cannot be framed, so it must not decode either."""
    cert = bytes(MAX_HANDSHAKE_MESSAGE - 3)
    body = _chain_body(len(cert).to_bytes(3, "big") + cert)
    assert len(body) == MAX_HANDSHAKE_MESSAGE + 6
    check_decoding(HandshakeType.IDENTITY, body)


# -- 2. the record layer -------------------------------------------------------------------

_TYPES = frozenset(int(t) for t in ContentType)


def reference_records(stream: bytes) -> tuple[list[Record], int | None, int]:
    """What the record layer's framing rules make of ``stream``: the whole records, the
    alert of the header that breaks them (None if none does), and the bytes consumed."""
    records: list[Record] = []
    pos = 0
    while len(stream) - pos >= HEADER_SIZE:
        content_type = stream[pos]
        length = int.from_bytes(stream[pos + 1:pos + 3], "big")
        if content_type not in _TYPES:
            return records, AlertDescription.UNEXPECTED_MESSAGE, pos
        if length > MAX_PAYLOAD:
            return records, AlertDescription.RECORD_OVERFLOW, pos
        if len(stream) - pos - HEADER_SIZE < length:
            break
        records.append(Record(content_type, stream[pos + HEADER_SIZE:pos + HEADER_SIZE + length]))
        pos += HEADER_SIZE + length
    return records, None, pos


record_segments = st.one_of(
    st.builds(frame_record, st.sampled_from(sorted(_TYPES)), st.binary(max_size=40)),
    st.binary(max_size=6),
    st.builds(lambda t, n: bytes([t]) + n.to_bytes(2, "big"),
              st.sampled_from(sorted(_TYPES)), st.integers(MAX_PAYLOAD + 1, 0xFFFF)),
    st.builds(lambda t: bytes([t, 0, 1, 0]), st.integers(0, 255)),
)


@SETTINGS
@given(segments=st.lists(record_segments, max_size=10),
       cuts=st.lists(st.integers(0, 600), max_size=6))
def test_record_buffer_on_any_stream(segments: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(segments)
    expected, expected_alert, consumed = reference_records(stream)
    buffer = RecordBuffer()
    records: list[Record] = []
    alert: int | None = None
    bounds = sorted({0, *(c for c in cuts if c < len(stream)), len(stream)})
    for start, end in itertools.pairwise(bounds):
        buffer.feed(stream[start:end])
        try:
            while (record := buffer.next_record()) is not None:
                assert len(record.payload) <= MAX_PAYLOAD
                records.append(record)
        except DecodeError as exc:
            alert = exc.alert
            break
    assert records == expected
    assert alert == expected_alert
    if alert is None:
        assert buffer.pending() == len(stream) - consumed


@FEW
@given(content_type=st.integers(0, 255), payload=st.binary(max_size=64),
       seq=st.integers(0, 3))
def test_record_protection_refuses_anything_it_did_not_seal(content_type: int, payload: bytes,
                                                             seq: int) -> None:
    opener = RecordProtection(SUITES[0x0101], bytes(48))
    opener.seq = seq
    with pytest.raises(RecordAuthenticationFailed):
        opener.open(Record(content_type, payload))


# -- 3. the state machine ------------------------------------------------------------------


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """An AssertionError if the block runs longer: a loop inside the connection that
    never ends would otherwise hang the suite."""
    def expire(signum: int, frame: types.FrameType | None) -> None:
        raise AssertionError(f"the connection did not answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Outcome:
    events: list[Event]
    error: ProtocolError | None
    state_before: str = ""  # the state the connection failed in (for the statistics)


def state(conn: Connection) -> State:
    return conn.state


def poll(conn: Connection, events: list[Event]) -> ProtocolError | None:
    for _ in range(MAX_CALLS):
        try:
            event = conn.next_event()
        except ProtocolError as exc:
            return exc
        except HybridKexError as exc:
            raise AssertionError(f"next_event raised {exc!r}, which is no ProtocolError") from exc
        if isinstance(event, NeedData | ConnectionClosed):
            return None
        events.append(event)
    raise AssertionError(f"next_event did not settle in {MAX_CALLS} calls: {events[-5:]}")


def feed(conn: Connection, chunks: Sequence[bytes], eof: bool) -> Outcome:
    """Deliver ``chunks`` one by one, polling after each, then end of file if ``eof``.
    Anything but a ProtocolError escaping next_event fails the example."""
    events: list[Event] = []
    with time_limit(TIME_LIMIT):
        for chunk in chunks:
            conn.receive_data(chunk)
            before = state(conn).value
            error = poll(conn, events)
            if error is not None:
                return Outcome(events, error, before)
        if eof:
            conn.receive_data(b"")
            before = state(conn).value
            return Outcome(events, poll(conn, events), before)
    return Outcome(events, None, state(conn).value)


def check_failed_cleanly(conn: Connection, outcome: Outcome, *, alert_expected: bool) -> None:
    """A failed connection is in ERROR for good and has told its peer (when it can)."""
    event(f"{type(outcome.error).__name__}, state before: {outcome.state_before}")
    if outcome.error is None:
        return
    assert state(conn) is State.ERROR
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    out = conn.data_to_send()
    buffer = RecordBuffer()
    buffer.feed(out)
    records = []
    while (record := buffer.next_record()) is not None:
        records.append(record)
    assert buffer.pending() == 0
    quiet = isinstance(outcome.error, AlertReceived | ConnectionTruncated)
    if alert_expected and not quiet:
        assert records and records[-1].content_type == ContentType.ALERT, (outcome.error, out)


@st.composite
def plaintext_streams(draw: st.DrawFn) -> tuple[list[bytes], bool]:
    """Handshake messages of every type in any order, each in its own plaintext record or
    split across two, with stray records between, cut into chunks; and whether the
    transport ends after them."""
    stream = bytearray()
    if draw(st.booleans()):  # a hello the connection accepts, or nearly: then the rest
        hello = draw(st.one_of(plausible_client_hellos(), plausible_server_hellos()))
        stream += frame_record(ContentType.HANDSHAKE, hello.encode())
    for _ in range(draw(st.integers(1, 5))):
        if draw(st.integers(0, 4)) == 0:
            stream += frame_record(draw(st.integers(0, 255)), draw(st.binary(max_size=20)))
            continue
        raw = draw(messages).encode()
        if len(raw) > 8 and draw(st.booleans()):
            cut = draw(st.integers(1, len(raw) - 1))
            stream += frame_record(ContentType.HANDSHAKE, raw[:cut])
            stream += frame_record(ContentType.HANDSHAKE, raw[cut:])
        else:
            stream += frame_record(ContentType.HANDSHAKE, raw)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=3))))
    bounds = [0, *(c for c in cuts if c < len(stream)), len(stream)]
    return [bytes(stream[a:b]) for a, b in itertools.pairwise(bounds)], draw(
        st.booleans())


PLAINTEXT_TARGETS = ["server", "server-without-qkd", "client-started", "client-not-started"]


def fresh(target: str) -> Connection:
    sites = make_sites(qkd=target != "server-without-qkd")
    client, server = sites.pair()
    if target == "client-started":
        client.start_handshake()
        client.data_to_send()
    return client if target.startswith("client") else server


@pytest.mark.parametrize("target", PLAINTEXT_TARGETS)
@FEW
@given(stream=plaintext_streams())
def test_plaintext_handshake_messages_in_any_order(target: str,
                                                   stream: tuple[list[bytes], bool]) -> None:
    conn = fresh(target)
    outcome = feed(conn, *stream)
    assert outcome.events == []  # nothing can be earned without the handshake keys
    check_failed_cleanly(conn, outcome, alert_expected=target != "client-not-started")


@pytest.mark.parametrize("target", ["server", "client-started"])
@FEW
@given(data=st.binary(min_size=1, max_size=600),
       prefix=st.sampled_from([b"", b"\x16", b"\x16\x00\x40\x01", b"\x15\x00\x02"]))
def test_random_bytes(target: str, data: bytes, prefix: bytes) -> None:
    conn = fresh(target)
    outcome = feed(conn, [prefix + data], eof=True)
    assert outcome.events == []
    assert outcome.error is not None  # end of file in the handshake is never clean
    check_failed_cleanly(conn, outcome, alert_expected=True)


# -- 3b. the state machine behind the handshake keys ---------------------------------------


def _split(data: bytes) -> list[Record]:
    buffer = RecordBuffer()
    buffer.feed(data)
    records = []
    while (record := buffer.next_record()) is not None:
        records.append(record)
    return records


@dataclass
class Midway:
    """A connection that has installed its handshake keys, and the attacker's sealer for
    the records it will read (the peer's handshake key), after ``genuine`` real records."""

    conn: Connection
    genuine: list[bytes]
    sealer: RecordProtection
    flight_size: int  # how many handshake records the peer's real flight has


def midway(target: str, mode: str, genuine_count: int) -> Midway:
    log = SecretLog()
    options: dict[str, object] = {"auth": "signature"} if mode == "signature" else {}
    sites = make_sites(client={**options, "secret_log": log.hook("client")},
                       server={"secret_log": log.hook("server")})
    client, server = sites.pair()
    client.start_handshake()
    server.receive_data(client.data_to_send())
    assert poll(server, []) is None
    flight = _split(server.data_to_send())
    suite = SUITES[ServerHello.decode(flight[0].payload[4:]).suite]
    if target == "client":
        client.receive_data(frame_record(flight[0].content_type, flight[0].payload))
        assert poll(client, []) is None
        records = flight[1:]
        secret = log.secrets["server"]["server_handshake_traffic_secret"]
        conn: Connection = client
    else:
        client.receive_data(b"".join(frame_record(r.content_type, r.payload) for r in flight))
        events: list[Event] = []
        assert poll(client, events) is None and len(events) == 1
        records = [r for r in _split(client.data_to_send())
                   if r.content_type == ContentType.HANDSHAKE]
        secret = log.secrets["server"]["client_handshake_traffic_secret"]
        conn = server
    genuine = [frame_record(r.content_type, r.payload) for r in records[:genuine_count]]
    sealer = RecordProtection(suite, secret)
    sealer.seq = len(genuine)
    return Midway(conn, genuine, sealer, len(records))


@st.composite
def sealed_items(draw: st.DrawFn) -> list[tuple[int, bytes]]:
    """(content type, plaintext) to seal: handshake messages of every type, whole or in
    two pieces, some coalesced, with alerts and application data between."""
    items: list[tuple[int, bytes]] = []
    for _ in range(draw(st.integers(1, 4))):
        choice = draw(st.integers(0, 5))
        if choice == 0:
            items.append((ContentType.ALERT, draw(st.binary(max_size=3))))
        elif choice == 1:
            items.append((ContentType.APPLICATION_DATA, draw(st.binary(max_size=16))))
        elif choice == 2:
            items.append((ContentType.HANDSHAKE, draw(messages).encode()
                          + draw(messages).encode()))
        else:
            raw = draw(messages).encode()
            if draw(st.booleans()):
                raw = mutate(raw, draw(mutations)) or b"\x00"
            items.append((ContentType.HANDSHAKE, raw))
    return items


@pytest.mark.parametrize("mode", ["psk", "signature"])
@pytest.mark.parametrize("target", ["client", "server"])
@FEW
@given(genuine=st.integers(0, 3), items=sealed_items(), eof=st.booleans())
def test_sealed_handshake_messages_in_any_order(target: str, mode: str, genuine: int,
                                                items: list[tuple[int, bytes]],
                                                eof: bool) -> None:
    setup = midway(target, mode, genuine)
    stream = [*setup.genuine, *(setup.sealer.seal(t, p) for t, p in items)]
    outcome = feed(setup.conn, stream, eof)
    # the real flight completes the handshake; nothing the attacker adds earns anything
    whole_flight = len(setup.genuine) == setup.flight_size
    assert outcome.events == ([HandshakeComplete(setup.conn.session_info())]
                              if whole_flight else []), outcome.events
    check_failed_cleanly(setup.conn, outcome, alert_expected=True)
