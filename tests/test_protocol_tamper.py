"""HKX/1 under an active attacker on the wire: tampered handshakes and tampered records.

The attacker here is a man in the middle who may change any byte.  To reach the
messages after ServerHello, which travel encrypted under the handshake traffic keys,
it is given those keys through ``Config.secret_log`` (the strongest position short of
holding a site's long-term secrets): it opens the sender's flight with
:class:`~hybridkex.protocol.record.RecordProtection`, flips one byte of one plaintext
handshake message (``msg_type | len24 | body``) and seals every record of that flight
again, in order, under the same secret, so the sequence numbers still match.  Only the
flipped byte differs; ``test_resealing_without_a_flip_is_transparent`` proves that.

The contract every flip is held to:

* each side ends in state ERROR with a :class:`~hybridkex.errors.ProtocolError`; no
  other exception escapes, and ``next_event`` settles within a bounded number of calls;
* the side that received the tampered flight detects it itself (except a ClientHello
  in signature mode, which nothing authenticates until the transcript reaches the
  handshake keys: the client detects that one as soon as the server's flight arrives),
  and the other side learns of it from the alert, with the same description;
* no DataReceived anywhere, and no HandshakeComplete on the side that received the
  tampered message (the client completes before its own second flight leaves, as in
  TLS 1.3, so only the server's completion is at stake there);
* the only way a flip may leave the connections waiting instead of failing is a
  length field made larger than the data that follows (the receiver waits for the
  rest, as TCP would make it); closing the transport then ends both with
  ConnectionTruncated.

The second half holds the record layer to its contract after the handshake.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from hybridkex.errors import (
    AlertReceived,
    ConnectionTruncated,
    DecodeError,
    LocalProtocolError,
    ProtocolError,
    RecordAuthenticationFailed,
    UnexpectedMessage,
)
from hybridkex.keydelivery import StoreKeySource, linked_pools
from hybridkex.primitives import aead
from hybridkex.protocol import (
    ClientConnection,
    Config,
    Connection,
    ConnectionClosed,
    DataReceived,
    Event,
    HandshakeComplete,
    NeedData,
    ServerConnection,
    State,
)
from hybridkex.protocol.keyschedule import traffic_key_iv
from hybridkex.protocol.record import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    MAX_PLAINTEXT,
    Record,
    RecordProtection,
    frame_record,
)
from hybridkex.protocol.suites import (
    SUITES,
    AlertDescription,
    ContentType,
    HandshakeType,
    Suite,
)
from hybridkex.protocol.wire import (
    ClientHello,
    Identity,
    IdentityVerify,
    ServerHello,
    decode_handshake,
)
from tests import hkx1_harness as harness
from tests.hkx1 import (
    CLIENT,
    SERVER,
    SecretLog,
    Sites,
    drain,
    handshake,
    make_sites,
)
from tests.support import PKI

_H = HandshakeType
ROLES = ("client", "server")
APP_DATA = {"client": b"client application data", "server": b"server application data"}
MAX_EVENTS = 64  # next_event calls one delivery may take before it counts as a hang
BLOB_SAMPLES = 200  # sampled positions inside the opaque fields of a large message
OPAQUE_MIN = 64  # a field at least this long is opaque (key share, key, signature)


def other(role: str) -> str:
    return "server" if role == "client" else "client"


def flip(data: bytes, position: int, mask: int) -> bytes:
    return data[:position] + bytes([data[position] ^ mask]) + data[position + 1:]


def split_records(data: bytes) -> list[Record]:
    """The attacker's view of a flight, parsed independently of the record layer under
    test (tests/hkx1_harness.split_records)."""
    return [Record(t, p) for t, p in harness.split_records(data)]


def join_records(records: Sequence[Record]) -> bytes:
    return harness.join_records((r.content_type, r.payload) for r in records)


# -- the sites, with the attacker's view of their secrets ----------------------------------


@functools.cache
def _pki() -> PKI:
    return PKI.create("Ed25519")


def build_sites(mode: str, log: SecretLog) -> Sites:
    """Two sites for ``mode``: "signature" (raw ML-DSA-65 keys, mutual), "psk", or "x509"
    (signature mode with Ed25519 certificate chains under one root)."""
    client: dict[str, object] = {"secret_log": log.hook("client")}
    server: dict[str, object] = {"secret_log": log.hook("server")}
    if mode == "signature":
        client["auth"] = "signature"
    elif mode == "psk":
        client["auth"] = "psk"
    elif mode == "x509":
        pki = _pki()
        pools = linked_pools(CLIENT, SERVER)
        a, b = pools.store_a, pools.store_b
        return Sites(
            Config(site=CLIENT, key_source=StoreKeySource(a), identity=pki.identities[CLIENT],
                   trust=pki.trust(), auth="signature", secret_log=log.hook("client")),
            Config(site=SERVER, key_source=StoreKeySource(b), identity=pki.identities[SERVER],
                   trust=pki.trust(), secret_log=log.hook("server")),
            a, b)
    else:
        raise AssertionError(mode)
    return make_sites(client=client, server=server)


# -- one handshake between two parties, through a hook on the wire -------------------------


@dataclass
class Party:
    conn: Connection
    events: list[Event] = field(default_factory=list)
    error: ProtocolError | None = None
    error_flight: int | None = None  # the flight being processed when it failed; -1: EOF
    foreign: Exception | None = None  # anything that is not a ProtocolError: a bug
    hung: bool = False

    @property
    def role(self) -> str:
        return self.conn.role

    @property
    def stopped(self) -> bool:
        return self.error is not None or self.foreign is not None or self.hung

    def poll(self, flight: int) -> None:
        for _ in range(MAX_EVENTS):
            try:
                event = self.conn.next_event()
            except ProtocolError as exc:
                self.error, self.error_flight = exc, flight
                return
            except Exception as exc:  # what these tests are looking for
                self.foreign = exc
                return
            if isinstance(event, NeedData):
                return
            self.events.append(event)
            if isinstance(event, HandshakeComplete):
                self.conn.send(APP_DATA[self.role])
            if isinstance(event, ConnectionClosed):
                return
        self.hung = True

    def count(self, kind: type[object]) -> int:
        return sum(isinstance(e, kind) for e in self.events)


Hook = Callable[[int, bytes, SecretLog], bytes]


@dataclass
class Exchange:
    parties: dict[str, Party]
    log: SecretLog
    flights: list[tuple[str, bytes]]

    def close_transport(self) -> list[str]:
        """End of file to every side still waiting; the roles that were."""
        waiting = [p for p in self.parties.values() if not p.stopped]
        for party in waiting:
            party.conn.receive_data(b"")
            party.poll(-1)
        return [p.role for p in waiting]


def run_exchange(mode: str, hook: Hook | None = None) -> Exchange:
    """A handshake (and one application record each way on success), every flight
    passing through ``hook(flight index, bytes, secrets)``: 0 = ClientHello, 1 = the
    server's flight, 2 = the client's authentication and Finished, then alerts or data."""
    log = SecretLog()
    client, server = build_sites(mode, log).pair()
    client.start_handshake()
    parties = {"client": Party(client), "server": Party(server)}
    exchange = Exchange(parties, log, [])
    sender, quiet, flight = "client", 0, 0
    while quiet < 2:
        assert flight < 12, "the connections kept talking"
        data = parties[sender].conn.data_to_send()
        if data:
            quiet = 0
            if hook is not None:
                data = hook(flight, data, log)
            exchange.flights.append((sender, data))
            receiver = parties[other(sender)]
            if not receiver.stopped:
                receiver.conn.receive_data(data)
                receiver.poll(flight)
            flight += 1
        else:
            quiet += 1
        sender = other(sender)
    return exchange


# -- what the attacker does to one handshake message --------------------------------------


@dataclass(frozen=True)
class Target:
    mode: str
    sender: str
    msg_type: HandshakeType

    @property
    def flight(self) -> int:
        if self.msg_type is _H.CLIENT_HELLO:
            return 0
        return 1 if self.sender == "server" else 2

    @property
    def receiver(self) -> str:
        return other(self.sender)

    @property
    def plaintext(self) -> bool:
        return self.msg_type in (_H.CLIENT_HELLO, _H.SERVER_HELLO)

    @property
    def id(self) -> str:
        return f"{self.mode}-{self.sender}-{self.msg_type.name.lower().replace('_', '-')}"


def _targets(mode: str, server_auth: Sequence[HandshakeType],
             client_auth: Sequence[HandshakeType]) -> list[Target]:
    return ([Target(mode, "client", _H.CLIENT_HELLO), Target(mode, "server", _H.SERVER_HELLO)]
            + [Target(mode, "server", t) for t in (*server_auth, _H.FINISHED)]
            + [Target(mode, "client", t) for t in (*client_auth, _H.FINISHED)])


_SIGNED = (_H.IDENTITY, _H.IDENTITY_VERIFY)
TARGETS = (_targets("signature", _SIGNED, _SIGNED)
           + _targets("psk", (_H.AUTH_MAC,), (_H.AUTH_MAC,)))
X509_TARGETS = [Target("x509", "server", _H.IDENTITY), Target("x509", "client", _H.IDENTITY)]


class MessageEdit:
    """A hook that rewrites one handshake message of one flight, re-sealing as needed."""

    def __init__(self, target: Target, edit: Callable[[bytes], bytes]) -> None:
        self.target = target
        self.edit = edit
        self.suite: Suite | None = None
        self.original: bytes | None = None

    def __call__(self, flight: int, data: bytes, log: SecretLog) -> bytes:
        first = split_records(data)[0]
        if flight == 1 and first.content_type == ContentType.HANDSHAKE:  # not an alert
            assert first.payload[0] == _H.SERVER_HELLO
            self.suite = SUITES[ServerHello.decode(first.payload[4:]).suite]
        if flight != self.target.flight:
            return data
        records = split_records(data)
        if self.target.plaintext:
            hello = records[0]
            assert hello.content_type == ContentType.HANDSHAKE
            assert hello.payload[0] == self.target.msg_type
            self.original = hello.payload
            records[0] = Record(ContentType.HANDSHAKE, self.edit(hello.payload))
            return join_records(records)
        assert self.suite is not None
        secret = log.handshake_secret(self.target.sender)
        opener, sealer = RecordProtection(self.suite, secret), RecordProtection(self.suite, secret)
        out = bytearray()
        start = 1 if flight == 1 else 0  # the server's flight opens with the plaintext hello
        out += join_records(records[:start])
        epoch = True
        for record in records[start:]:
            epoch = epoch and record.content_type == ContentType.HANDSHAKE
            if not epoch:  # the client's application data, under its application key
                out += join_records([record])
                continue
            message = opener.open(record)
            assert len(message) == 4 + int.from_bytes(message[1:4], "big"), \
                "one handshake message per record"
            if message[0] == self.target.msg_type:
                self.original = message
                message = self.edit(message)
            out += sealer.seal(ContentType.HANDSHAKE, message)
        assert self.original is not None, f"{self.target.id}: message not in its flight"
        return bytes(out)


@functools.cache
def reference_message(target: Target) -> bytes:
    """The target message's plaintext bytes in an untampered handshake."""
    hook = MessageEdit(target, lambda raw: raw)
    exchange = run_exchange(target.mode, hook)
    assert all(p.count(HandshakeComplete) == 1 for p in exchange.parties.values())
    assert hook.original is not None
    return hook.original


def opaque_ranges(raw: bytes) -> list[range]:
    """Where the long opaque fields (key shares, keys, signatures) of a message lie."""
    message = decode_handshake(raw[0], raw[4:])
    blobs: list[bytes] = []
    if isinstance(message, ClientHello | ServerHello):
        blobs = [share.data for share in message.key_shares]
    elif isinstance(message, Identity):
        blobs = [message.public_key]  # a certificate chain is all structure: every byte
    elif isinstance(message, IdentityVerify):
        blobs = [message.signature]
    ranges = []
    for blob in blobs:
        if len(blob) >= OPAQUE_MIN:
            start = raw.index(blob)
            ranges.append(range(start, start + len(blob)))
    return ranges


def flip_positions(target: Target) -> list[int]:
    """Every byte outside the long opaque fields, the first and last 8 bytes of the message
    and of every opaque field, and BLOB_SAMPLES more from the opaque fields (fixed seed)."""
    raw = reference_message(target)
    ranges = opaque_ranges(raw)
    chosen = {i for i in range(len(raw)) if not any(i in r for r in ranges)}
    chosen |= {*range(8), *range(len(raw) - 8, len(raw))}
    inside: list[int] = []
    for r in ranges:
        chosen |= {*r[:8], *r[-8:]}
        inside += [i for i in r if i not in chosen]
    rng = random.Random(f"hkx1 tamper {target.id}")
    chosen |= set(rng.sample(inside, min(len(inside), BLOB_SAMPLES)))
    return sorted(chosen)


def masks(variant: str, positions: Sequence[int], seed: str) -> Iterator[tuple[int, int]]:
    rng = random.Random(f"hkx1 mask {seed}")
    for position in positions:
        yield position, (1 if variant == "x01" else rng.randrange(1, 256))


def length_grew(original: bytes, position: int, mask: int, field: range) -> bool:
    """Whether the flip enlarged the big-endian length field at ``field``."""
    if position not in field:
        return False
    flipped = flip(original, position, mask)
    return (int.from_bytes(flipped[field.start:field.stop], "big")
            > int.from_bytes(original[field.start:field.stop], "big"))


# -- the contract --------------------------------------------------------------------------


def contract_problems(exchange: Exchange, *, receiver: str, flight: int, may_wait: bool,
                      peer_may_detect_first: bool, peer_learns_alert: bool) -> list[str]:
    """What the tampered exchange did that it must not have; empty when it held."""
    parties = exchange.parties
    problems: list[str] = []
    for party in parties.values():
        if party.foreign is not None:
            problems.append(f"{party.role} raised untyped {type(party.foreign).__name__}: "
                            f"{party.foreign}")
        if party.hung:
            problems.append(f"{party.role}: next_event never settled in {MAX_EVENTS} calls")
        if party.count(DataReceived):
            problems.append(f"{party.role} delivered application data")
    if parties[receiver].count(HandshakeComplete):
        problems.append(f"{receiver} completed the handshake")
    if flight < 2 and parties[other(receiver)].count(HandshakeComplete):
        problems.append(f"{other(receiver)} completed the handshake")
    if problems:
        return problems
    waited = exchange.close_transport()
    if waited and not may_wait:
        problems.append(f"no failure: {' and '.join(waited)} still waiting for data")
    for party in parties.values():
        if party.error is None or party.foreign is not None:
            problems.append(f"{party.role} did not fail with a ProtocolError "
                            f"(foreign={party.foreign!r})")
        elif party.role in waited and not isinstance(party.error, ConnectionTruncated):
            problems.append(f"{party.role} at end of file: {party.error!r}")
        if party.conn.state is not State.ERROR:
            problems.append(f"{party.role} ended in state {party.conn.state.value}")
    if problems or waited:
        return problems
    first, second = parties[receiver], parties[other(receiver)]
    assert first.error is not None and second.error is not None
    if first.error_flight == flight and not isinstance(first.error, AlertReceived):
        detector, told = first, second
    elif peer_may_detect_first and second.error_flight == flight + 1 \
            and not isinstance(second.error, AlertReceived):
        detector, told = second, first
    else:
        return [f"{receiver} did not detect the tampering itself: {first.error!r} at flight "
                f"{first.error_flight}; {second.role}: {second.error!r}"]
    assert detector.error is not None and told.error is not None
    if detector.error.alert not in set(AlertDescription):
        problems.append(f"{detector.role} failed with unknown alert {detector.error.alert}")
    if peer_learns_alert and (not isinstance(told.error, AlertReceived)
                              or told.error.alert != detector.error.alert):
        problems.append(f"{told.role} did not receive {detector.role}'s alert "
                        f"{detector.error.alert}: {told.error!r}")
    return problems


def check_message_flip(target: Target, position: int, mask: int) -> list[str]:
    original = reference_message(target)
    hook = MessageEdit(target, lambda raw: flip(raw, position, mask))
    exchange = run_exchange(target.mode, hook)
    if hook.original is None or len(hook.original) != len(original):
        return ["the message was not where the reference run put it"]
    return contract_problems(
        exchange, receiver=target.receiver, flight=target.flight,
        may_wait=length_grew(original, position, mask, range(1, 4)),
        peer_may_detect_first=target.mode != "psk" and target.msg_type is _H.CLIENT_HELLO,
        peer_learns_alert=not target.plaintext)


def report(what: str, failures: Sequence[str], trials: int) -> str:
    shown = "\n  ".join(failures[:25])
    more = f"\n  ... and {len(failures) - 25} more" if len(failures) > 25 else ""
    return f"{what}: {len(failures)} of {trials} flips broke the contract:\n  {shown}{more}"


# -- 1. handshake messages -----------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS + X509_TARGETS, ids=lambda t: t.id)
def test_resealing_without_a_flip_is_transparent(target: Target) -> None:
    """The man in the middle is faithful: opening and re-sealing a flight changes nothing."""
    hook = MessageEdit(target, lambda raw: raw)
    exchange = run_exchange(target.mode, hook)
    for party in exchange.parties.values():
        assert party.error is None and party.foreign is None, party
        assert party.count(HandshakeComplete) == 1
        assert [e.data for e in party.events if isinstance(e, DataReceived)] == [
            APP_DATA[other(party.role)]]
    assert hook.original is not None
    reference = reference_message(target)  # another run: same shape, other randomness
    assert (hook.original[0], len(hook.original)) == (target.msg_type, len(reference))


@pytest.mark.parametrize("variant", ["x01", "random"])
@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.id)
def test_handshake_message_byte_flip(target: Target, variant: str) -> None:
    positions = flip_positions(target)
    failures = []
    for position, mask in masks(variant, positions, target.id):
        problems = check_message_flip(target, position, mask)
        if problems:
            failures.append(f"byte {position} ^ {mask:#04x}: {'; '.join(problems)}")
    assert not failures, report(target.id, failures, len(positions))


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@pytest.mark.parametrize("target", X509_TARGETS, ids=lambda t: t.id)
def test_certificate_chain_byte_flip(target: Target) -> None:
    """Every byte of an X.509 Identity (two Ed25519 certificates), mask 0x01.

    The chain is parsed from attacker-controlled bytes before any signature on it is
    checked, so a flip reaches cryptography's DER parser with every kind of damage."""
    positions = flip_positions(target)
    failures = []
    for position, mask in masks("x01", positions, target.id):
        problems = check_message_flip(target, position, mask)
        if problems:
            failures.append(f"byte {position} ^ {mask:#04x}: {'; '.join(problems)}")
    assert not failures, report(target.id, failures, len(positions))


def test_flip_positions_cover_small_messages_and_both_ends() -> None:
    for target in TARGETS:
        raw = reference_message(target)
        positions = flip_positions(target)
        assert {*range(8), *range(len(raw) - 8, len(raw))} <= set(positions)
        if len(raw) < 200:
            assert positions == list(range(len(raw))), target.id
        else:
            assert len(positions) >= BLOB_SAMPLES, target.id
    hello = reference_message(Target("psk", "server", _H.SERVER_HELLO))
    # every ServerHello field but the ML-KEM ciphertext is flipped at every byte
    share = opaque_ranges(hello)
    assert len(share) == 1 and len(share[0]) == 1088
    assert set(range(share[0].start)) <= set(flip_positions(Target("psk", "server",
                                                                    _H.SERVER_HELLO)))


# -- 1b. the encrypted records of the handshake, as bytes ----------------------------------


class RecordFlip:
    """A hook that flips one byte of one record of a flight, as it is on the wire."""

    def __init__(self, flight: int, record: int, position: int, mask: int) -> None:
        self.flight, self.record, self.position, self.mask = flight, record, position, mask
        self.original: bytes | None = None

    def __call__(self, flight: int, data: bytes, log: SecretLog) -> bytes:
        if flight != self.flight:
            return data
        records = [frame_record(r.content_type, r.payload) for r in split_records(data)]
        self.original = records[self.record]
        records[self.record] = flip(self.original, self.position, self.mask)
        return b"".join(records)


@functools.cache
def handshake_records(mode: str, flight: int) -> tuple[bytes, ...]:
    """The records of an untampered flight (sizes only matter: the content is per run)."""
    exchange = run_exchange(mode)
    sender, data = exchange.flights[flight]
    assert sender == ("server" if flight == 1 else "client")
    return tuple(frame_record(r.content_type, r.payload) for r in split_records(data))


@pytest.mark.parametrize("variant", ["x01", "random"])
@pytest.mark.parametrize(("mode", "flight"), [("signature", 1), ("signature", 2), ("psk", 1),
                                              ("psk", 2)])
def test_handshake_record_byte_flip(mode: str, flight: int, variant: str) -> None:
    """A flipped byte of an encrypted handshake record (header, ciphertext or tag) is
    RecordAuthenticationFailed or DecodeError at the receiver, before anything in it is
    used; a record whose length grew past the end of the flight waits for the rest."""
    records = handshake_records(mode, flight)
    rng = random.Random(f"hkx1 record flip {mode} {flight} {variant}")
    failures, trials = [], 0
    for index, record in enumerate(records):
        if record[0] != ContentType.HANDSHAKE or (flight == 1 and index == 0):
            continue  # the plaintext ServerHello, and the client's application data
        size = len(record)
        positions = sorted({*range(HEADER_SIZE + 8), *range(size - 16, size),
                            *rng.sample(range(HEADER_SIZE + 8, size - 16),
                                                min(16, size - 24 - HEADER_SIZE))})
        for position in positions:
            mask = 1 if variant == "x01" else rng.randrange(1, 256)
            hook = RecordFlip(flight, index, position, mask)
            exchange = run_exchange(mode, hook)
            trials += 1
            assert hook.original is not None and len(hook.original) == size
            receiver = exchange.parties["client" if flight == 1 else "server"]
            problems = contract_problems(
                exchange, receiver=receiver.role, flight=flight,
                may_wait=length_grew(hook.original, position, mask, range(1, 3)),
                peer_may_detect_first=False, peer_learns_alert=True)
            if not problems and receiver.error_flight == flight and not isinstance(
                    receiver.error, RecordAuthenticationFailed | DecodeError):
                problems.append(f"{receiver.role} failed with {receiver.error!r}")
            if problems:
                failures.append(f"record {index} byte {position} ^ {mask:#04x}: "
                                + "; ".join(problems))
    assert trials > 40
    assert not failures, report(f"{mode} flight {flight}", failures, trials)


# -- 2. the record layer after the handshake -----------------------------------------------

AEADS = {"AES-256-GCM": SUITES[0x0101], "ChaCha20-Poly1305": SUITES[0x0102]}
PAYLOADS = (b"first record", b"second record", b"third record")


def connected(aead: str) -> tuple[ClientConnection, ServerConnection]:
    suite = AEADS[aead]
    client, server, events = handshake(make_sites(client={"suites": (suite,)},
                                                  server={"suites": (suite,)}))
    for role in ROLES:
        assert [type(e) for e in events[role]] == [HandshakeComplete]
    assert client.session_info().aead == aead
    return client, server


def raw_records(conn: Connection) -> list[bytes]:
    return [frame_record(r.content_type, r.payload) for r in split_records(conn.data_to_send())]


def with_header(record: bytes, content_type: int | None = None,
                length: int | None = None) -> bytes:
    new_type = record[0] if content_type is None else content_type
    new_length = int.from_bytes(record[1:3], "big") if length is None else length
    return bytes([new_type]) + new_length.to_bytes(2, "big") + record[3:]


def _length(record: bytes) -> int:
    return int.from_bytes(record[1:3], "big")


def state(conn: Connection) -> State:
    return conn.state


def events_until_failure(conn: Connection) -> tuple[list[Event], ProtocolError | None]:
    """The events before the connection raised, and what it raised (None: it waits)."""
    events: list[Event] = []
    for _ in range(MAX_EVENTS):
        try:
            event = conn.next_event()
        except ProtocolError as exc:
            return events, exc
        if isinstance(event, NeedData):
            return events, None
        events.append(event)
    raise AssertionError(f"next_event never settled: {events}")


@dataclass(frozen=True)
class RecordCase:
    """What reaches the receiver, built from the sender's records r (three application
    records, then close_notify) and ``own``, a record the receiver itself sent."""

    name: str
    wire: Callable[[list[bytes], bytes], bytes]
    delivered: int  # how many of PAYLOADS arrive before the failure
    error: type[ProtocolError]
    alert: int | None  # sent to the peer; None: nothing is sent
    eof: bool = False


_BAD_MAC = AlertDescription.BAD_RECORD_MAC
RECORD_CASES = [
    RecordCase("ciphertext-flipped", lambda r, own: r[0] + flip(r[1], 5, 0x01) + r[2],
               1, RecordAuthenticationFailed, _BAD_MAC),
    RecordCase("tag-flipped", lambda r, own: r[0] + flip(r[1], len(r[1]) - 1, 0x80) + r[2],
               1, RecordAuthenticationFailed, _BAD_MAC),
    RecordCase("first-record-flipped", lambda r, own: flip(r[0], 3, 0xFF) + r[1] + r[2],
               0, RecordAuthenticationFailed, _BAD_MAC),
    RecordCase("type-to-handshake",
               lambda r, own: r[0] + with_header(r[1], ContentType.HANDSHAKE) + r[2],
               1, RecordAuthenticationFailed, _BAD_MAC),
    RecordCase("type-to-alert", lambda r, own: r[0] + with_header(r[1], ContentType.ALERT),
               1, RecordAuthenticationFailed, _BAD_MAC),
    RecordCase("length-shorter",
               lambda r, own: r[0] + with_header(r[1], length=_length(r[1]) - 1) + r[2],
               1, RecordAuthenticationFailed, _BAD_MAC),
    RecordCase("length-longer",
               lambda r, own: r[0] + with_header(r[1], length=_length(r[1]) + 1) + r[2],
               1, RecordAuthenticationFailed, _BAD_MAC),
    RecordCase("reordered", lambda r, own: r[0] + r[2] + r[1],
               1, RecordAuthenticationFailed, _BAD_MAC),
    RecordCase("replayed", lambda r, own: r[0] + r[0] + r[1],
               1, RecordAuthenticationFailed, _BAD_MAC),
    RecordCase("replayed-later", lambda r, own: r[0] + r[1] + r[2] + r[1],
               3, RecordAuthenticationFailed, _BAD_MAC),
    RecordCase("dropped", lambda r, own: r[0] + r[2],
               1, RecordAuthenticationFailed, _BAD_MAC),
    RecordCase("other-direction", lambda r, own: r[0] + own + r[1],
               1, RecordAuthenticationFailed, _BAD_MAC),
    RecordCase("close-notify-flipped", lambda r, own: r[0] + r[1] + r[2] + flip(r[3], 4, 0x01),
               3, RecordAuthenticationFailed, _BAD_MAC),
    RecordCase("oversized-length",
               lambda r, own: r[0] + bytes([ContentType.APPLICATION_DATA])
               + (MAX_PAYLOAD + 1).to_bytes(2, "big"),
               1, DecodeError, AlertDescription.RECORD_OVERFLOW),
    RecordCase("oversized-length-max",
               lambda r, own: r[0] + with_header(r[1], length=0xFFFF) + r[2],
               1, DecodeError, AlertDescription.RECORD_OVERFLOW),
    RecordCase("unknown-content-type", lambda r, own: r[0] + with_header(r[1], 99) + r[2],
               1, DecodeError, AlertDescription.UNEXPECTED_MESSAGE),
    RecordCase("content-type-zero", lambda r, own: r[0] + with_header(r[1], 0) + r[2],
               1, DecodeError, AlertDescription.UNEXPECTED_MESSAGE),
    RecordCase("truncated-mid-record", lambda r, own: r[0] + r[1][:-5],
               1, ConnectionTruncated, None, eof=True),
    RecordCase("truncated-mid-header", lambda r, own: r[0] + r[1][:2],
               1, ConnectionTruncated, None, eof=True),
    RecordCase("truncated-without-close-notify", lambda r, own: r[0] + r[1] + r[2],
               3, ConnectionTruncated, None, eof=True),
]


@pytest.mark.parametrize("case", RECORD_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("receiver_role", ROLES)
@pytest.mark.parametrize("aead", list(AEADS))
def test_tampered_record_after_handshake(aead: str, receiver_role: str,
                                         case: RecordCase) -> None:
    client, server = connected(aead)
    receiver, sender = (client, server) if receiver_role == "client" else (server, client)
    for payload in PAYLOADS:
        sender.send(payload)
    sender.close()
    records = raw_records(sender)
    assert len(records) == 4 and records[3][0] == ContentType.ALERT
    receiver.send(b"reflected")
    own = raw_records(receiver)
    assert len(own) == 1

    receiver.receive_data(case.wire(records, own[0]))
    if case.eof:
        receiver.receive_data(b"")
    events, error = events_until_failure(receiver)
    assert type(error) is case.error, (error, events)
    assert events == [DataReceived(p) for p in PAYLOADS[:case.delivered]]
    if case.alert is not None:
        assert error.alert == case.alert

    assert state(receiver) is State.ERROR
    with pytest.raises(LocalProtocolError):
        receiver.next_event()
    with pytest.raises(LocalProtocolError):
        receiver.send(b"more")
    if not case.eof:  # the rest of the stream, intact, changes nothing
        receiver.receive_data(records[2])
        with pytest.raises(LocalProtocolError):
            receiver.next_event()

    alert = receiver.data_to_send()
    if case.alert is None:
        assert alert == b""
        return
    (alert_record,) = split_records(alert)
    assert alert_record.content_type == ContentType.ALERT
    sender.receive_data(own[0] + alert)  # the peer reads what the receiver really sent
    with pytest.raises(AlertReceived) as told:
        assert drain(sender) == [DataReceived(b"reflected")]
    assert told.value.alert == case.alert


@pytest.mark.parametrize("receiver_role", ROLES)
def test_intact_records_and_close_notify_are_delivered(receiver_role: str) -> None:
    """The control for the table above: the same records, untouched, all arrive."""
    client, server = connected("AES-256-GCM")
    receiver, sender = (client, server) if receiver_role == "client" else (server, client)
    for payload in PAYLOADS:
        sender.send(payload)
    sender.close()
    wire = sender.data_to_send()
    for i in range(len(wire)):  # one byte at a time: reassembly across every boundary
        receiver.receive_data(wire[i:i + 1])
    receiver.receive_data(b"")
    assert drain(receiver) == [*(DataReceived(p) for p in PAYLOADS), ConnectionClosed()]
    assert state(receiver) is State.CONNECTED
    assert receiver.data_to_send() == b""


def test_oversized_length_fails_before_the_payload_arrives() -> None:
    _, server = connected("AES-256-GCM")
    server.receive_data(bytes([ContentType.APPLICATION_DATA])
                        + (MAX_PAYLOAD + 1).to_bytes(2, "big"))
    with pytest.raises(DecodeError) as failure:
        server.next_event()
    assert failure.value.alert == AlertDescription.RECORD_OVERFLOW
    # and the largest legal length waits for its payload instead
    _, server2 = connected("AES-256-GCM")
    server2.receive_data(bytes([ContentType.APPLICATION_DATA]) + MAX_PAYLOAD.to_bytes(2, "big"))
    assert server2.next_event() is NeedData()


def test_full_size_records_pass_and_a_bigger_plaintext_is_refused() -> None:
    """A 2^14-byte plaintext is the largest a record carries; the receiver refuses a
    record whose plaintext is larger even when it authenticates (record_overflow)."""
    log = SecretLog()
    client, server, _ = handshake(build_sites("psk", log))
    client.send(bytes(MAX_PLAINTEXT))
    server.receive_data(client.data_to_send())
    assert drain(server) == [DataReceived(bytes(MAX_PLAINTEXT))]
    # the client's next record (sequence 1), forged with its own traffic secret
    suite = client.suite
    key, iv = traffic_key_iv(
        suite, log.secrets["client"]["client_application_traffic_secret_0"])
    nonce = bytes(a ^ b for a, b in zip(iv, (1).to_bytes(len(iv), "big"), strict=True))
    plaintext = bytes(MAX_PLAINTEXT + 1)
    cipher = aead(suite.aead)
    header = (bytes([ContentType.APPLICATION_DATA])
              + (len(plaintext) + cipher.tag_size).to_bytes(2, "big"))
    server.receive_data(header + cipher.encrypt(key, nonce, plaintext, header))
    with pytest.raises(DecodeError) as failure:
        server.next_event()
    assert failure.value.alert == AlertDescription.RECORD_OVERFLOW
    assert state(server) is State.ERROR


# -- application data before the handshake has completed -----------------------------------


def test_plaintext_application_data_to_a_fresh_server() -> None:
    _, server = build_sites("psk", SecretLog()).pair()
    server.receive_data(frame_record(ContentType.APPLICATION_DATA, b"early data"))
    with pytest.raises(UnexpectedMessage):
        server.next_event()
    assert state(server) is State.ERROR
    assert server.data_to_send() == frame_record(
        ContentType.ALERT, bytes([2, AlertDescription.UNEXPECTED_MESSAGE]))
    with pytest.raises(LocalProtocolError):
        server.next_event()


def test_plaintext_application_data_to_a_waiting_client() -> None:
    client, _ = build_sites("psk", SecretLog()).pair()
    client.start_handshake()
    client.data_to_send()
    client.receive_data(frame_record(ContentType.APPLICATION_DATA, b"early data"))
    with pytest.raises(UnexpectedMessage):
        client.next_event()
    assert state(client) is State.ERROR
    assert client.data_to_send() == frame_record(
        ContentType.ALERT, bytes([2, AlertDescription.UNEXPECTED_MESSAGE]))


def test_application_data_to_a_client_that_has_not_started() -> None:
    client, _ = build_sites("psk", SecretLog()).pair()
    client.receive_data(frame_record(ContentType.APPLICATION_DATA, b"early data"))
    with pytest.raises(UnexpectedMessage):
        client.next_event()
    assert state(client) is State.ERROR
    assert client.data_to_send() == b""  # nothing was ever sent, not even an alert


def _alerts(data: bytes, opener: RecordProtection) -> list[bytes]:
    return [opener.open(r) for r in split_records(data) if r.content_type == ContentType.ALERT]


@pytest.mark.parametrize("mode", ["psk", "signature"])
def test_sealed_application_data_to_a_server_in_its_handshake(mode: str) -> None:
    """Application data under the client's handshake key authenticates, and is still
    refused: the server is waiting for the client's authentication, not for data."""
    log = SecretLog()
    client, server = build_sites(mode, log).pair()
    client.start_handshake()
    server.receive_data(client.data_to_send())
    assert drain(server) == []
    assert server.state in (State.WAIT_AUTH_MAC, State.WAIT_IDENTITY)
    flight = server.data_to_send()
    suite = SUITES[ServerHello.decode(split_records(flight)[0].payload[4:]).suite]
    # the client has not derived it yet: the server's own copy
    sealer = RecordProtection(suite, log.secrets["server"]["client_handshake_traffic_secret"])
    server.receive_data(sealer.seal(ContentType.APPLICATION_DATA, b"early data"))
    with pytest.raises(UnexpectedMessage):
        server.next_event()
    assert state(server) is State.ERROR
    opener = RecordProtection(suite, log.secrets["server"]["server_application_traffic_secret_0"])
    assert _alerts(server.data_to_send(), opener) == [
        bytes([2, AlertDescription.UNEXPECTED_MESSAGE])]


@pytest.mark.parametrize("mode", ["psk", "signature"])
def test_sealed_application_data_to_a_client_in_its_handshake(mode: str) -> None:
    log = SecretLog()
    client, server = build_sites(mode, log).pair()
    client.start_handshake()
    server.receive_data(client.data_to_send())
    assert drain(server) == []
    flight = split_records(server.data_to_send())
    suite = SUITES[ServerHello.decode(flight[0].payload[4:]).suite]
    client.receive_data(join_records(flight[:1]))  # the ServerHello alone
    assert drain(client) == []
    assert client.state in (State.WAIT_AUTH_MAC, State.WAIT_IDENTITY)
    sealer = RecordProtection(suite, log.handshake_secret("server"))
    client.receive_data(sealer.seal(ContentType.APPLICATION_DATA, b"half-rtt data"))
    with pytest.raises(UnexpectedMessage):
        client.next_event()
    assert state(client) is State.ERROR
    opener = RecordProtection(suite, log.handshake_secret("client"))
    assert _alerts(client.data_to_send(), opener) == [
        bytes([2, AlertDescription.UNEXPECTED_MESSAGE])]
    with pytest.raises(LocalProtocolError):
        server.send(b"too early")  # nor may the server send before the client's Finished
