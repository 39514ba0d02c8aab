"""Every message of a distillation round: its fields, its encoding, its strict decoding.

One frozen class per message, in protocol order.  ``encode()`` gives the payload a
classical frame carries (:mod:`hybridkex.qkd.distillation.channel`); ``decode(payload)``
checks every length before use, refuses trailing bytes, counts out of range, arrays
whose lengths disagree with what the message announces and non-finite numbers, and
raises :class:`~hybridkex.qkd.errors.MalformedMessage` (a
:class:`~hybridkex.qkd.errors.LinkAborted`) and nothing else.  What a message can only
be checked against (the receiver's own record: how many pulses it detected, how many
bits it expects) is checked by the step that receives it (:mod:`.alice`, :mod:`.bob`).
Nothing here knows about keys or state.

The field encodings are in :mod:`.codec`.  Cascade's two messages have their own
compact little-endian format, documented with :class:`CascadeRequest`.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, Self

import numpy as np
import numpy.typing as npt

from hybridkex.keydelivery.keys import key_id_bytes, key_id_text
from hybridkex.qkd.distillation.codec import Reader, Writer
from hybridkex.qkd.errors import CascadeError

__all__ = [
    "CONFIRM_SIZE",
    "MAX_INTENSITY",
    "MAX_SEED_BYTES",
    "MAX_SIFT_CHUNK",
    "NONCE_SIZE",
    "PROTOCOL_VERSION",
    "SAMPLE_SEED_SIZE",
    "VERIFY_KEY_SIZE",
    "VERIFY_TAG_SIZE",
    "Abort",
    "Amplify",
    "CascadeDone",
    "CascadeRequest",
    "CascadeResponse",
    "CascadeSetup",
    "Confirm",
    "Estimate",
    "EstimateReply",
    "Hello",
    "Message",
    "MessageType",
    "Sift",
    "SiftReply",
    "Verify",
    "VerifyResult",
]

Bits = npt.NDArray[np.uint8]
Indices = npt.NDArray[np.int64]
Triple = tuple[float, float, float]

PROTOCOL_VERSION = 1
NONCE_SIZE = 16
SAMPLE_SEED_SIZE = 32
VERIFY_KEY_SIZE = 32   # a one-time Poly1305 key
VERIFY_TAG_SIZE = 16
CONFIRM_SIZE = 16      # privacy amplification output bytes each end discloses to confirm
KEY_ID_SIZE = 16
MAX_ABORT_REASON = 200
#: The most detections one sifting message announces (a frame of about 8.5 MB).
MAX_SIFT_CHUNK = 1 << 20
#: The largest mean photon number a hello may announce.  Weak coherent pulses carry
#: less than one photon on average; the bounds evaluate e^mu, which overflows past 709.
MAX_INTENSITY = 100.0


class MessageType(enum.IntEnum):
    """The type byte of a classical frame."""

    HELLO = 1
    SIFT = 2
    SIFT_REPLY = 3
    ESTIMATE = 4
    ESTIMATE_REPLY = 5
    CASCADE_REQUEST = 6
    CASCADE_RESPONSE = 7
    VERIFY = 8
    VERIFY_RESULT = 9
    AMPLIFY = 10
    CONFIRM = 11
    CASCADE_DONE = 12
    # the networked link's own messages (hybridkex.qkd.network.control)
    LINK_HELLO = 32
    LINK_STATE = 33
    ROUND_START = 34
    BYE = 35
    PREPARED = 36
    COMMIT = 37
    READY = 38
    RELEASE = 39
    DONE = 40
    ABORT = 255


class Message(Protocol):
    """What every message class provides."""

    msg_type: ClassVar[MessageType]

    def encode(self) -> bytes: ...

    @classmethod
    def decode(cls, payload: bytes) -> Self: ...


# -- 1. hello ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """A->B: Alice's fresh nonce, the intensities she uses and how often she chose each,
    the pulses she sent per intensity class and in all.  Both ends estimate from these."""

    nonce: bytes
    intensities: Triple
    probabilities: Triple
    sent: Triple
    pulses_sent: int

    msg_type: ClassVar[MessageType] = MessageType.HELLO

    def encode(self) -> bytes:
        w = Writer().u8(PROTOCOL_VERSION).blob(self.nonce)
        for v in (*self.intensities, *self.probabilities, *self.sent):
            w.f64(v)
        return w.u64(self.pulses_sent).build()

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        r = Reader(payload, "hello")
        version, nonce = r.u8(), r.blob()
        values = [r.f64() for _ in range(9)]
        pulses = r.u64()
        r.end()
        if version != PROTOCOL_VERSION or len(nonce) != NONCE_SIZE:
            raise r.fail("unsupported version or bad nonce")
        if not all(math.isfinite(v) and v >= 0 for v in values) or max(
                values[0:3]) > MAX_INTENSITY:
            raise r.fail("invalid intensities, probabilities or counts")
        return cls(nonce, _triple(values[0:3]), _triple(values[3:6]), _triple(values[6:9]),
                   pulses)


def _triple(values: list[float]) -> Triple:
    return values[0], values[1], values[2]


# -- 2. sifting -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Sift:
    """B->A: Bob's nonce, how many detections he announces in all, and one chunk of them:
    the pulses he detected (strictly increasing indices) and his basis at each.

    A round's detections go in as many chunks of at most :data:`MAX_SIFT_CHUNK` as they
    need, in pulse order, each tagged, each answered by a :class:`SiftReply` before the
    next: no frame outgrows the channel, and neither end holds more than one chunk of
    messages at a time.  Every chunk repeats the nonce and the total, which must not
    change; only a round without detections sends an empty chunk.
    """

    nonce: bytes
    total: int
    index: Indices
    basis: Bits

    msg_type: ClassVar[MessageType] = MessageType.SIFT

    def encode(self) -> bytes:
        return (Writer().blob(self.nonce).u64(self.total).u64_array(self.index)
                .bits(self.basis).build())

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        r = Reader(payload, "sifting message")
        nonce, total, raw_index, basis = r.blob(), r.u64(), r.u64_array(), r.bits()
        r.end()
        if len(nonce) != NONCE_SIZE or len(basis) != len(raw_index):
            raise r.fail("bad nonce, or not one basis per pulse")
        if len(raw_index) > MAX_SIFT_CHUNK or len(raw_index) > total:
            raise r.fail(f"a chunk of {len(raw_index)} detections: more than "
                         f"{MAX_SIFT_CHUNK} or than the announced total")
        if not raw_index.size and total:
            raise r.fail("an empty chunk while detections remain")
        if len(raw_index) and (raw_index[-1] >= np.uint64(1 << 63)
                               or np.any(raw_index[1:] <= raw_index[:-1])):
            raise r.fail("pulse indices not strictly increasing")
        return cls(nonce, total, raw_index.astype(np.int64), basis)


@dataclass(frozen=True, eq=False)
class SiftReply:
    """A->B: Alice's basis and intensity class (0 signal, 1 decoy, 2 vacuum) at every
    pulse Bob announced."""

    basis: Bits
    intensity: Bits

    msg_type: ClassVar[MessageType] = MessageType.SIFT_REPLY

    def encode(self) -> bytes:
        return Writer().bits(self.basis).u8_array(self.intensity).build()

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        r = Reader(payload, "sifting reply")
        basis, intensity = r.bits(), r.u8_array()
        r.end()
        if len(basis) != len(intensity) or np.any(intensity > 2):
            raise r.fail("not one basis and intensity class (0..2) per pulse")
        return cls(basis, intensity)


# -- 3. parameter estimation ------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Estimate:
    """B->A: the public seed that picks the Z sample, Bob's X-basis bits and his bits at
    the sampled Z positions."""

    sample_seed: bytes
    x_bits: Bits
    z_sample_bits: Bits

    msg_type: ClassVar[MessageType] = MessageType.ESTIMATE

    def encode(self) -> bytes:
        return (Writer().blob(self.sample_seed).bits(self.x_bits).bits(self.z_sample_bits)
                .build())

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        r = Reader(payload, "estimation message")
        seed, x_bits, z_bits = r.blob(), r.bits(), r.bits()
        r.end()
        if len(seed) != SAMPLE_SEED_SIZE:
            raise r.fail(f"the sample seed is not {SAMPLE_SEED_SIZE} bytes")
        return cls(seed, x_bits, z_bits)


@dataclass(frozen=True, eq=False)
class EstimateReply:
    """A->B: Alice's X-basis bits and her bits at the sampled Z positions."""

    x_bits: Bits
    z_sample_bits: Bits

    msg_type: ClassVar[MessageType] = MessageType.ESTIMATE_REPLY

    def encode(self) -> bytes:
        return Writer().bits(self.x_bits).bits(self.z_sample_bits).build()

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        r = Reader(payload, "estimation reply")
        x_bits, z_bits = r.bits(), r.bits()
        r.end()
        return cls(x_bits, z_bits)


# -- 4. reconciliation (Cascade) --------------------------------------------------------
#
# Request (integers little-endian)::
#
#     "HKC" | version u8 = 1 | type u8 = 1 | flags u8 | seq u32
#     [flags & 1, first request only:
#         n u32 | frame_bits u32 | seed_len u8 (1..64) | seed | P u8 | P codes u8]
#     query_count u32 | query_count LEB128 varints
#
# Queries are node IDs in strictly increasing order, sent as differences (id[0], then
# id[i] - id[i-1] - 1) in canonical LEB128 of at most 5 bytes.  Response::
#
#     "HKC" | version u8 = 1 | type u8 = 2 | seq u32 | bit_count u32 | packed parities
#
# with ceil(bit_count / 8) bytes of parities, least significant bit first, unused bits
# zero.  What the fields mean is in :mod:`.cascade`.

MAX_SEED_BYTES = 64
_CASCADE_MAGIC = b"HKC"
_CASCADE_VERSION = 1
_T_REQUEST = 1
_T_RESPONSE = 2
_F_SETUP = 1
_REQ_HEAD = struct.Struct("<3sBBBI")
_RESP_HEAD = struct.Struct("<3sBBII")
_SETUP_HEAD = struct.Struct("<II")
_LE_U32 = struct.Struct("<I")
_MAX_VARINT_BYTES = 5


@dataclass(frozen=True)
class CascadeSetup:
    """What the first request fixes for the whole run: the key length, the frame length,
    the public seed of the permutations and the schedule of passes."""

    key_bits: int
    frame_bits: int
    seed: bytes
    schedule: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class CascadeRequest:
    """B->A, untagged: Bob's ``seq``-th request, the parities of ``queries`` (node IDs)."""

    seq: int
    queries: Indices
    setup: CascadeSetup | None = None

    msg_type: ClassVar[MessageType] = MessageType.CASCADE_REQUEST

    def encode(self) -> bytes:
        head = _REQ_HEAD.pack(_CASCADE_MAGIC, _CASCADE_VERSION, _T_REQUEST,
                              0 if self.setup is None else _F_SETUP, self.seq)
        if self.setup is not None:
            s = self.setup
            head += (_SETUP_HEAD.pack(s.key_bits, s.frame_bits) + bytes([len(s.seed)]) + s.seed
                     + bytes([len(s.schedule)]) + bytes(s.schedule))
        deltas = np.diff(self.queries, prepend=-1) - 1
        return head + _LE_U32.pack(self.queries.size) + _varint_encode(deltas)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        req = _cascade_bytes(payload, "request")
        if len(req) < _REQ_HEAD.size + _LE_U32.size:
            raise CascadeError("request truncated")
        magic, version, mtype, flags, seq = _REQ_HEAD.unpack_from(req, 0)
        if magic != _CASCADE_MAGIC or version != _CASCADE_VERSION or mtype != _T_REQUEST:
            raise CascadeError("not a Cascade version 1 request")
        if flags & ~_F_SETUP:
            raise CascadeError("unknown request flags")
        pos = _REQ_HEAD.size
        setup = None
        if flags & _F_SETUP:
            pos, setup = _decode_setup(req, pos)
        if len(req) < pos + _LE_U32.size:
            raise CascadeError("request truncated")
        (count,) = _LE_U32.unpack_from(req, pos)
        pos += _LE_U32.size
        if count > len(req) - pos:
            raise CascadeError("query count exceeds the request length")
        deltas = _varint_decode(req[pos:], count)
        # deltas < 2**35 and count < 2**32: the sum cannot overflow int64
        return cls(seq, np.cumsum(deltas + 1) - 1, setup)


def _decode_setup(req: bytes, pos: int) -> tuple[int, CascadeSetup]:
    if len(req) < pos + _SETUP_HEAD.size + 1:
        raise CascadeError("first request truncated")
    key_bits, frame_bits = _SETUP_HEAD.unpack_from(req, pos)
    pos += _SETUP_HEAD.size
    seed_len = req[pos]
    pos += 1
    if not 1 <= seed_len <= MAX_SEED_BYTES or len(req) < pos + seed_len + 1:
        raise CascadeError("bad seed field")
    seed = req[pos:pos + seed_len]
    pos += seed_len
    npasses = req[pos]
    pos += 1
    if len(req) < pos + npasses:
        raise CascadeError("first request truncated")
    schedule = tuple(req[pos:pos + npasses])
    return pos + npasses, CascadeSetup(key_bits, frame_bits, seed, schedule)


@dataclass(frozen=True, eq=False)
class CascadeResponse:
    """A->B, untagged: the parities answering request ``seq``, in query order (the first
    response starts with the top-level block parities)."""

    seq: int
    parities: Bits

    msg_type: ClassVar[MessageType] = MessageType.CASCADE_RESPONSE

    def encode(self) -> bytes:
        head = _RESP_HEAD.pack(_CASCADE_MAGIC, _CASCADE_VERSION, _T_RESPONSE, self.seq,
                               self.parities.size)
        return head + np.packbits(self.parities, bitorder="little").tobytes()

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        resp = _cascade_bytes(payload, "response")
        if len(resp) < _RESP_HEAD.size:
            raise CascadeError("response truncated")
        magic, version, mtype, seq, count = _RESP_HEAD.unpack_from(resp, 0)
        if magic != _CASCADE_MAGIC or version != _CASCADE_VERSION or mtype != _T_RESPONSE:
            raise CascadeError("not a Cascade version 1 response")
        data = resp[_RESP_HEAD.size:]
        if len(data) != (count + 7) // 8:
            raise CascadeError("parity payload length does not match its bit count")
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
        if np.any(bits[count:]):
            raise CascadeError("non-zero padding bits in the parity payload")
        return cls(seq, bits[:count])


def _cascade_bytes(payload: object, what: str) -> bytes:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise CascadeError(f"a {what} is bytes")
    return bytes(payload)


def _varint_encode(values: Indices) -> bytes:
    if values.size == 0:
        return b""
    v = values.astype(np.uint64)
    nbytes = np.ones(v.size, np.int64)
    for i in range(1, 10):
        nbytes += v >= np.uint64(1 << (7 * i))
    starts = np.cumsum(nbytes) - nbytes
    owner = np.repeat(np.arange(v.size), nbytes)
    k = np.arange(int(nbytes.sum()), dtype=np.int64) - starts[owner]
    out = (v[owner] >> (7 * k).astype(np.uint64)) & np.uint64(0x7F)
    out |= (k < nbytes[owner] - 1).astype(np.uint64) << np.uint64(7)
    return out.astype(np.uint8).tobytes()


def _varint_decode(data: bytes, count: int) -> Indices:
    buf = np.frombuffer(data, np.uint8)
    if count == 0:
        if buf.size:
            raise CascadeError("trailing bytes after the queries")
        return np.zeros(0, np.int64)
    ends = np.flatnonzero(buf < 0x80)
    if ends.size != count or ends[-1] != buf.size - 1:
        raise CascadeError("query list length does not match its count")
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if int(lengths.max()) > _MAX_VARINT_BYTES:
        raise CascadeError("query varint too long")
    if np.any((lengths > 1) & (buf[ends] == 0)):
        raise CascadeError("non-canonical query varint")
    owner = np.repeat(np.arange(count), lengths)
    k = np.arange(buf.size, dtype=np.int64) - starts[owner]
    parts = (buf.astype(np.int64) & 0x7F) << (7 * k)
    return np.add.reduceat(parts, starts).astype(np.int64)


@dataclass(frozen=True)
class CascadeDone:
    """B->A: Cascade is finished; the parity bits Alice revealed (as Bob counted them) and
    the errors Bob corrected.  Tagged, so it also authenticates every Cascade frame."""

    leaked_bits: int
    errors: int

    msg_type: ClassVar[MessageType] = MessageType.CASCADE_DONE

    def encode(self) -> bytes:
        return Writer().u64(self.leaked_bits).u64(self.errors).build()

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        r = Reader(payload, "reconciliation summary")
        leaked, errors = r.u64(), r.u64()
        r.end()
        return cls(leaked, errors)


# -- 5. verification --------------------------------------------------------------------


@dataclass(frozen=True)
class Verify:
    """A->B: a fresh one-time Poly1305 key and the tag of Alice's reconciled key under it."""

    key: bytes = field(repr=False)
    tag: bytes

    msg_type: ClassVar[MessageType] = MessageType.VERIFY

    def encode(self) -> bytes:
        return Writer().blob(self.key).blob(self.tag).build()

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        r = Reader(payload, "verification message")
        key, tag = r.blob(), r.blob()
        r.end()
        if len(key) != VERIFY_KEY_SIZE or len(tag) != VERIFY_TAG_SIZE:
            raise r.fail(f"key and tag are not {VERIFY_KEY_SIZE} and {VERIFY_TAG_SIZE} bytes")
        return cls(key, tag)


@dataclass(frozen=True)
class VerifyResult:
    """B->A: whether Bob's corrected key has the same tag."""

    matched: bool

    msg_type: ClassVar[MessageType] = MessageType.VERIFY_RESULT

    def encode(self) -> bytes:
        return Writer().u8(1 if self.matched else 0).build()

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        r = Reader(payload, "verification result")
        value = r.u8()
        r.end()
        if value > 1:
            raise r.fail("the result is neither 0 nor 1")
        return cls(value == 1)


# -- 6. privacy amplification -----------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Amplify:
    """A->B: the output length and the part of it kept for authentication, a fresh
    Toeplitz seed, and one key ID per 256-bit unit of the output after that part."""

    out_bits: int
    reserve_bits: int
    seed: Bits
    key_ids: tuple[str, ...]

    msg_type: ClassVar[MessageType] = MessageType.AMPLIFY

    def encode(self) -> bytes:
        return (Writer().u64(self.out_bits).u64(self.reserve_bits).bits(self.seed)
                .blob(b"".join(key_id_bytes(k) for k in self.key_ids)).build())

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        r = Reader(payload, "privacy amplification message")
        out_bits, reserve = r.u64(), r.u64()
        seed, raw_ids = r.bits(), r.blob()
        r.end()
        if reserve > out_bits:
            raise r.fail("the authentication reserve exceeds the output")
        if len(raw_ids) % KEY_ID_SIZE:
            raise r.fail(f"key IDs are not {KEY_ID_SIZE} bytes each")
        ids = [raw_ids[i:i + KEY_ID_SIZE] for i in range(0, len(raw_ids), KEY_ID_SIZE)]
        if len(set(ids)) != len(ids):
            raise r.fail("a key ID appears twice")
        return cls(out_bits, reserve, seed, tuple(key_id_text(i) for i in ids))


# -- 7. key confirmation ----------------------------------------------------------------


@dataclass(frozen=True)
class Confirm:
    """Both ways: the sender's half of the confirmation bits, spare privacy amplification
    output that is disclosed here and never used as key (A->B the first half, B->A the
    second)."""

    bits: bytes = field(repr=False)

    msg_type: ClassVar[MessageType] = MessageType.CONFIRM

    def encode(self) -> bytes:
        return self.bits

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        if len(payload) != CONFIRM_SIZE:
            raise Reader(payload, "key confirmation").fail(
                f"the confirmation bits are not {CONFIRM_SIZE} bytes")
        return cls(bytes(payload))


# -- any time ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Abort:
    """Either way: the sender ends the round.  The reason is UTF-8 text of at most 200
    bytes (cut at the last whole character when longer); any bytes decode, bad UTF-8
    is replaced."""

    reason: str

    msg_type: ClassVar[MessageType] = MessageType.ABORT

    def encode(self) -> bytes:
        # cut at a character boundary, so the reason decodes to a prefix of itself
        cut = self.reason.encode()[:MAX_ABORT_REASON]
        return cut.decode("utf-8", "ignore").encode()

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        if len(payload) > MAX_ABORT_REASON:
            raise Reader(payload, "abort message").fail(
                f"the reason is longer than {MAX_ABORT_REASON} bytes")
        return cls(bytes(payload).decode("utf-8", "replace"))
