"""Distillation messages and classical frames (hypothesis): encode, decode, and bad input.

The contract under test, for every message class in
:mod:`hybridkex.qkd.distillation.messages` and for :class:`~hybridkex.qkd.distillation.
channel.Frame`:

* a valid message survives ``decode(encode(m))`` with every field equal;
* every truncation of an encoding, and the encoding with one byte more, raise
  :class:`~hybridkex.qkd.errors.LinkAborted` (never ValueError, IndexError, ...);
* corrupted bytes raise LinkAborted or decode to a message whose encoding is exactly
  those bytes (one encoding per message), except ABORT, whose text may be any bytes;
* values a decoder must refuse (non-finite numbers, counts out of range, lengths that
  disagree) are refused;
* over the authenticated channel, any corrupted byte of a frame ends the round.

``test_the_checks_can_fail`` runs the same checks on a deliberately lax decoder and
shows that they catch it.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridkex.keydelivery.keys import key_id_text
from hybridkex.qkd.distillation.authentication import AuthKeyPool, WegmanCarterAuthenticator
from hybridkex.qkd.distillation.channel import MAX_TAG, AuthenticatedChannel, Frame
from hybridkex.qkd.distillation.codec import Reader, Writer
from hybridkex.qkd.distillation.messages import (
    MAX_INTENSITY,
    MAX_SIFT_CHUNK,
    Abort,
    Amplify,
    CascadeDone,
    CascadeRequest,
    CascadeResponse,
    CascadeSetup,
    Confirm,
    Estimate,
    EstimateReply,
    Hello,
    Message,
    MessageType,
    Sift,
    SiftReply,
    Verify,
    VerifyResult,
)
from hybridkex.qkd.ends import Role
from hybridkex.qkd.errors import LinkAborted

FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- strategies -------------------------------------------------------------------------

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)


def bits(max_size: int = 80) -> st.SearchStrategy[np.ndarray[Any, Any]]:
    return st.lists(st.integers(0, 1), max_size=max_size).map(
        lambda v: np.array(v, dtype=np.uint8))


def _cumulative(deltas: list[int]) -> np.ndarray[Any, Any]:
    return np.cumsum(np.array(deltas, dtype=np.int64) + 1) - 1 if deltas else np.zeros(
        0, np.int64)


# strictly increasing, as both the pulse indices of a Sift and the queries of Cascade are
increasing = st.lists(st.integers(0, 2**40), max_size=40).map(_cumulative)
query_ids = st.lists(st.integers(0, 2**35 - 1), max_size=40).map(_cumulative)
finite = st.floats(min_value=0.0, max_value=1e300, allow_nan=False)
intensity = st.floats(min_value=0.0, max_value=MAX_INTENSITY, allow_nan=False)
triple = st.tuples(finite, finite, finite)


@st.composite
def sift_replies(draw: st.DrawFn) -> SiftReply:
    n = draw(st.integers(0, 60))
    basis = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    classes = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    return SiftReply(np.array(basis, np.uint8), np.array(classes, np.uint8))


@st.composite
def sifts(draw: st.DrawFn) -> Sift:
    index = draw(increasing)
    basis = draw(st.lists(st.integers(0, 1), min_size=len(index), max_size=len(index)))
    total = len(index) + draw(st.integers(0, 2**64 - 1 - len(index))) if len(index) else 0
    return Sift(draw(st.binary(min_size=16, max_size=16)), total, index,
                np.array(basis, np.uint8))


@st.composite
def amplifies(draw: st.DrawFn) -> Amplify:
    out_bits = draw(u64)
    raw_ids = draw(st.lists(st.binary(min_size=16, max_size=16), unique=True, max_size=8))
    return Amplify(out_bits, draw(st.integers(0, out_bits)), draw(bits()),
                   tuple(key_id_text(i) for i in raw_ids))


setups = st.builds(CascadeSetup, u32, u32, st.binary(min_size=1, max_size=64),
                   st.lists(st.integers(0, 255), max_size=40).map(tuple))
no_surrogates = st.characters(exclude_categories=["Cs"])
MESSAGES: dict[type[Any], st.SearchStrategy[Any]] = {
    Hello: st.builds(Hello, st.binary(min_size=16, max_size=16),
                     st.tuples(intensity, intensity, intensity), triple, triple, u64),
    Sift: sifts(),
    SiftReply: sift_replies(),
    Estimate: st.builds(Estimate, st.binary(min_size=32, max_size=32), bits(), bits()),
    EstimateReply: st.builds(EstimateReply, bits(), bits()),
    CascadeRequest: st.builds(CascadeRequest, u32, query_ids, st.none() | setups),
    CascadeResponse: st.builds(CascadeResponse, u32, bits(200)),
    CascadeDone: st.builds(CascadeDone, u64, u64),
    Verify: st.builds(Verify, st.binary(min_size=32, max_size=32),
                      st.binary(min_size=16, max_size=16)),
    VerifyResult: st.builds(VerifyResult, st.booleans()),
    Amplify: amplifies(),
    Confirm: st.builds(Confirm, st.binary(min_size=16, max_size=16)),
    Abort: st.text(no_surrogates, max_size=50).filter(lambda t: len(t.encode()) <= 200).map(
        Abort),
}
STRICT = [kind for kind in MESSAGES if kind is not Abort]  # ABORT text may be any bytes


def _same(a: object, b: object) -> bool:
    """Field by field, arrays by value and dtype."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        return a.dtype == b.dtype and np.array_equal(a, b)
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return all(_same(getattr(a, f.name), getattr(b, f.name))
                   for f in dataclasses.fields(a))
    if isinstance(a, float):
        assert isinstance(b, float)
        return struct.pack(">d", a) == struct.pack(">d", b)  # -0.0 is not 0.0 on the wire
    if isinstance(a, tuple):
        assert isinstance(b, tuple)
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


# -- the checks, as functions so that test_the_checks_can_fail can run them too ---------


def check_round_trip(decode: Callable[[bytes], object], message: Any) -> None:
    decoded = decode(message.encode())
    assert _same(decoded, message), (decoded, message)


def check_truncations_and_trailing(decode: Callable[[bytes], object], encoded: bytes,
                                   extra: int) -> None:
    for cut in range(len(encoded)):
        with pytest.raises(LinkAborted):
            decode(encoded[:cut])
    with pytest.raises(LinkAborted):
        decode(encoded + bytes([extra]))


def check_corruption(decode: Callable[[bytes], Any], corrupted: bytes, canonical: bool) -> None:
    try:
        decoded = decode(corrupted)
    except LinkAborted:
        return
    if canonical:
        assert decoded.encode() == corrupted  # one encoding per message


def _corrupt(data: st.DataObject, encoded: bytes) -> bytes:
    if not encoded:
        return encoded
    out = bytearray(encoded)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(out) - 1))
        out[pos] ^= data.draw(st.integers(1, 255))
    return bytes(out)


# -- messages ---------------------------------------------------------------------------


def test_every_message_type_has_one_class() -> None:
    from tests.test_qkd_link_messages import LINK_MESSAGES  # the networked link's own

    kinds = [kind.msg_type for kind in MESSAGES] + [type(m).msg_type for m in LINK_MESSAGES]
    assert sorted(kinds) == sorted(MessageType)


@pytest.mark.parametrize("kind", list(MESSAGES), ids=lambda k: k.__name__)
@FAST
@given(data=st.data())
def test_round_trip(kind: type[Message], data: st.DataObject) -> None:
    check_round_trip(kind.decode, data.draw(MESSAGES[kind]))


@pytest.mark.parametrize("kind", STRICT, ids=lambda k: k.__name__)
@FAST
@given(data=st.data(), extra=st.integers(0, 255))
def test_truncated_or_trailing_bytes_abort(kind: type[Message], data: st.DataObject,
                                           extra: int) -> None:
    check_truncations_and_trailing(kind.decode, data.draw(MESSAGES[kind]).encode(), extra)


@pytest.mark.parametrize("kind", list(MESSAGES), ids=lambda k: k.__name__)
@FAST
@given(data=st.data())
def test_corruption_aborts_or_decodes_canonically(kind: type[Message],
                                                  data: st.DataObject) -> None:
    encoded = data.draw(MESSAGES[kind]).encode()
    check_corruption(kind.decode, _corrupt(data, encoded), canonical=kind is not Abort)


@pytest.mark.parametrize("kind", list(MESSAGES), ids=lambda k: k.__name__)
@FAST
@given(payload=st.binary(max_size=200))
def test_random_bytes_abort_or_decode(kind: type[Message], payload: bytes) -> None:
    check_corruption(kind.decode, payload, canonical=kind is not Abort)


def test_abort_reason_is_any_text_up_to_200_bytes() -> None:
    assert Abort.decode(b"\xff\xfe").reason == "\ufffd\ufffd"
    assert Abort("x" * 300).encode() == b"x" * 200
    with pytest.raises(LinkAborted):
        Abort.decode(b"x" * 201)


def _hello(**fields: Any) -> bytes:
    values = {"nonce": bytes(16), "intensities": (0.4, 0.2, 0.0),
              "probabilities": (0.4, 0.4, 0.2), "sent": (4e8, 4e8, 2e8),
              "pulses_sent": 10**9}
    return Hello(**{**values, **fields}).encode()


def _replace_byte(data: bytes, index: int, value: int) -> bytes:
    return data[:index] + bytes([value]) + data[index + 1:]


IDS = tuple(key_id_text(bytes([i]) * 16) for i in range(3))
REFUSED: dict[str, tuple[type[Any], bytes]] = {
    "hello: version 2": (Hello, _replace_byte(_hello(), 0, 2)),
    "hello: short nonce": (Hello, _hello(nonce=bytes(15))),
    "hello: NaN intensity": (Hello, _hello(intensities=(math.nan, 0.2, 0.0))),
    "hello: infinite count": (Hello, _hello(sent=(math.inf, 1.0, 1.0))),
    "hello: negative probability": (Hello, _hello(probabilities=(-0.1, 0.6, 0.5))),
    "hello: intensity past the maximum": (Hello, _hello(intensities=(800.0, 0.2, 0.0))),
    "sift: repeated pulse": (Sift, Sift(bytes(16), 2, np.array([3, 3], np.int64),
                                        np.zeros(2, np.uint8)).encode()),
    "sift: decreasing pulses": (Sift, Sift(bytes(16), 2, np.array([5, 3], np.int64),
                                           np.zeros(2, np.uint8)).encode()),
    "sift: index past 2**63": (Sift, Writer().blob(bytes(16)).u64(1).blob(b"\xff" * 8)
                               .bits(np.zeros(1, np.uint8)).build()),
    "sift: fewer bases than pulses": (Sift, Sift(bytes(16), 2, np.array([1, 2], np.int64),
                                                 np.zeros(1, np.uint8)).encode()),
    "sift: ragged index array": (Sift, Writer().blob(bytes(16)).u64(0).blob(bytes(7))
                                 .bits(np.zeros(0, np.uint8)).build()),
    "sift: chunk above the total": (Sift, Sift(bytes(16), 1, np.array([1, 2], np.int64),
                                               np.zeros(2, np.uint8)).encode()),
    "sift: empty chunk, detections left": (Sift, Sift(bytes(16), 5, np.zeros(0, np.int64),
                                                      np.zeros(0, np.uint8)).encode()),
    "sift: chunk above the maximum": (Sift, Sift(
        bytes(16), MAX_SIFT_CHUNK + 1, np.arange(MAX_SIFT_CHUNK + 1, dtype=np.int64),
        np.zeros(MAX_SIFT_CHUNK + 1, np.uint8)).encode()),
    "sift reply: intensity class 3": (SiftReply, SiftReply(
        np.zeros(1, np.uint8), np.array([3], np.uint8)).encode()),
    "sift reply: counts differ": (SiftReply, SiftReply(
        np.zeros(2, np.uint8), np.zeros(1, np.uint8)).encode()),
    "bits: padding set": (EstimateReply, Writer().u64(1).build() + b"\xc0"
                          + Writer().u64(0).build()),
    "bits: count past the maximum": (EstimateReply, Writer().u64(2**40).build()),
    "estimate: short seed": (Estimate, Estimate(bytes(31), np.zeros(0, np.uint8),
                                                np.zeros(0, np.uint8)).encode()),
    "verify: short key": (Verify, Writer().blob(bytes(31)).blob(bytes(16)).build()),
    "verify: long tag": (Verify, Writer().blob(bytes(32)).blob(bytes(17)).build()),
    "verify result: 2": (VerifyResult, b"\x02"),
    "amplify: reserve above output": (Amplify, Amplify(8, 9, np.zeros(0, np.uint8),
                                                       ()).encode()),
    "amplify: a key ID twice": (Amplify, Amplify(512, 0, np.zeros(0, np.uint8),
                                                 (IDS[0], IDS[1], IDS[0])).encode()),
    "amplify: ragged key IDs": (Amplify, Writer().u64(256).u64(0).bits(np.zeros(0, np.uint8))
                                .blob(bytes(17)).build()),
    "confirm: short": (Confirm, bytes(15)),
    "confirm: long": (Confirm, bytes(17)),
    "cascade: unknown flags": (CascadeRequest, _replace_byte(
        CascadeRequest(0, np.zeros(0, np.int64)).encode(), 5, 2)),
    "cascade: empty seed": (CascadeRequest, CascadeRequest(
        0, np.zeros(0, np.int64), CascadeSetup(64, 64, b"", (1,))).encode()),
    "cascade: non-canonical varint": (CascadeRequest, CascadeRequest(
        0, np.zeros(0, np.int64)).encode()[:-4] + struct.pack("<I", 1) + b"\x80\x00"),
    "cascade: 6-byte varint": (CascadeRequest, CascadeRequest(
        0, np.zeros(0, np.int64)).encode()[:-4] + struct.pack("<I", 1) + b"\xff" * 5 + b"\x01"),
    "cascade: response padding set": (CascadeResponse, CascadeResponse(
        0, np.ones(1, np.uint8)).encode()[:-1] + b"\x81"),
    "cascade: response of a request": (CascadeResponse, CascadeRequest(
        0, np.zeros(0, np.int64)).encode()),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_values_out_of_range_are_refused(name: str) -> None:
    kind, payload = REFUSED[name]
    with pytest.raises(LinkAborted):
        kind.decode(payload)


def test_the_same_fields_with_good_values_decode() -> None:
    """The fixtures above are built with the real encoders, so they only test what they
    claim: the same fields with good values decode."""
    Hello.decode(_hello())
    Sift.decode(Sift(bytes(16), 2, np.array([3, 5], np.int64), np.zeros(2, np.uint8)).encode())
    Sift.decode(Sift(bytes(16), 0, np.zeros(0, np.int64), np.zeros(0, np.uint8)).encode())
    Sift.decode(Sift(bytes(16), MAX_SIFT_CHUNK + 1, np.arange(MAX_SIFT_CHUNK, dtype=np.int64),
                     np.zeros(MAX_SIFT_CHUNK, np.uint8)).encode())
    Amplify.decode(Amplify(512, 0, np.zeros(0, np.uint8), IDS[:2]).encode())
    CascadeRequest.decode(CascadeRequest(0, np.zeros(0, np.int64),
                                         CascadeSetup(64, 64, b"s", (1,))).encode())


# -- frames -----------------------------------------------------------------------------

frames = st.builds(Frame, st.binary(min_size=16, max_size=16), u32,
                   st.sampled_from(list(Role)), st.integers(0, 255), st.binary(max_size=300),
                   st.binary(max_size=80))


@FAST
@given(frame=frames, extra=st.integers(0, 255))
def test_frame_round_trip_truncation_and_trailing_byte(frame: Frame, extra: int) -> None:
    check_round_trip(Frame.decode, frame)
    check_truncations_and_trailing(Frame.decode, frame.encode(), extra)


@FAST
@given(frame=frames, data=st.data())
def test_frame_corruption_aborts_or_decodes_canonically(frame: Frame,
                                                        data: st.DataObject) -> None:
    check_corruption(Frame.decode, _corrupt(data, frame.encode()), canonical=True)


def test_frame_refuses_unknown_sender_and_oversized_tag() -> None:
    good = Frame(bytes(16), 0, Role.BOB, MessageType.HELLO, b"p", b"t").encode()
    with pytest.raises(LinkAborted):
        Frame.decode(_replace_byte(good, 24, 2))  # the sender byte
    big = Frame(bytes(16), 0, Role.BOB, MessageType.HELLO, b"", bytes(MAX_TAG + 1)).encode()
    with pytest.raises(LinkAborted):
        Frame.decode(big)


class _Wire:
    """A transport that records what is sent and replays what it is given."""

    def __init__(self, inbox: list[bytes] | None = None) -> None:
        self.sent: list[bytes] = []
        self.inbox = list(inbox or [])

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)

    def recv(self) -> bytes:
        return self.inbox.pop(0)

    def close(self) -> None:
        pass


POOL = bytes(range(256)) * 4


def _channel(role: Role, wire: _Wire) -> AuthenticatedChannel:
    return AuthenticatedChannel(wire, WegmanCarterAuthenticator(AuthKeyPool(POOL), role), role,
                                session_id=bytes(16))


def _sent_frame(message: Message) -> bytes:
    wire = _Wire()
    _channel(Role.ALICE, wire).send(message)
    return wire.sent[0]


def test_the_channel_delivers_a_typed_message() -> None:
    frame = _sent_frame(VerifyResult(True))
    received = _channel(Role.BOB, _Wire([frame])).recv(VerifyResult)
    assert received == VerifyResult(True)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_corrupted_byte_of_a_tagged_frame_ends_the_round(data: st.DataObject) -> None:
    frame = bytearray(_sent_frame(CascadeDone(1234, 5)))
    pos = data.draw(st.integers(0, len(frame) - 1))
    frame[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(LinkAborted):
        _channel(Role.BOB, _Wire([bytes(frame)])).recv(CascadeDone)


def _deferred_run() -> list[bytes]:
    """Alice's frames: two deferred Cascade responses, then a tagged summary."""
    wire = _Wire()
    chan = _channel(Role.ALICE, wire)
    chan.send(CascadeResponse(0, np.array([1, 0, 1], np.uint8)), deferred=True)
    chan.send(CascadeResponse(1, np.array([0, 1], np.uint8)), deferred=True)
    chan.send(CascadeDone(5, 0))
    return wire.sent


def test_the_tag_hashes_the_deferred_frames_themselves() -> None:
    """Wegman-Carter over the concatenated frames, with no hash of them in between: the
    tag is Poly1305 under r || s (A->B half of the pool) of frame 1 || frame 2 || frame 3,
    each without its tag field."""
    from cryptography.hazmat.primitives.poly1305 import Poly1305

    frames = _deferred_run()
    parts = [Frame.decode(raw).authenticated_part() for raw in frames]
    r, s = POOL[:16], POOL[16:32]  # the first hash key and pad of the A->B half
    assert Frame.decode(frames[2]).tag == Poly1305.generate_tag(r + s, b"".join(parts))
    assert not Frame.decode(frames[0]).tag and not Frame.decode(frames[1]).tag


def test_an_altered_deferred_frame_fails_the_tag_that_covers_it() -> None:
    frames = _deferred_run()
    altered = Frame.decode(frames[1])
    flipped = bytearray(altered.payload)
    flipped[-1] ^= 1  # one parity bit: still a well-formed response
    frames[1] = dataclasses.replace(altered, payload=bytes(flipped)).encode()
    bob = _channel(Role.BOB, _Wire(frames))
    bob.recv(CascadeResponse, deferred=True)
    assert bob.recv(CascadeResponse, deferred=True).parities.tolist() == [1, 1]
    with pytest.raises(LinkAborted, match="failed authentication"):
        bob.recv(CascadeDone)


def test_the_untouched_run_verifies() -> None:
    bob = _channel(Role.BOB, _Wire(_deferred_run()))
    bob.recv(CascadeResponse, deferred=True)
    bob.recv(CascadeResponse, deferred=True)
    assert bob.recv(CascadeDone) == CascadeDone(5, 0)


def test_a_message_of_another_type_ends_the_round() -> None:
    with pytest.raises(LinkAborted, match="unexpected"):
        _channel(Role.BOB, _Wire([_sent_frame(VerifyResult(True))])).recv(CascadeDone)


def test_a_peer_abort_ends_the_round_with_its_reason() -> None:
    with pytest.raises(LinkAborted, match="peer aborted: QBER too high"):
        _channel(Role.BOB, _Wire([_sent_frame(Abort("QBER too high"))])).recv(CascadeDone)


# -- the checks can fail --------------------------------------------------------------


def _lax_verify_result(payload: bytes) -> VerifyResult:
    """A decoder that forgets the length and range checks."""
    return VerifyResult(Reader(payload + b"\x00", "lax").u8() == 1)


def test_the_checks_can_fail() -> None:
    with pytest.raises(pytest.fail.Exception):
        check_truncations_and_trailing(_lax_verify_result, VerifyResult(True).encode(), 0)
    with pytest.raises(AssertionError):
        check_corruption(_lax_verify_result, b"\x07", canonical=True)
    with pytest.raises(AssertionError):
        check_round_trip(lambda raw: VerifyResult(False), VerifyResult(True))
