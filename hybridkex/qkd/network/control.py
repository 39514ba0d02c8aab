"""The networked link's own classical messages: opening a connection, starting and ending
rounds, and the two-phase deposit.

They travel in the same authenticated frames as the distillation messages
(:mod:`hybridkex.qkd.distillation.channel`), with their own type bytes, and decode as
strictly (:mod:`hybridkex.qkd.distillation.codec`).  In order of use:

- :class:`LinkHello` (A->B) opens a connection: Alice's nonce and both site names.
- :class:`LinkState` (B->A): Bob's nonce and his deposit journal's unfinished rounds
  (round ID, state, digest of the key IDs), so Alice can settle them.
- :class:`RoundStart` (A->B): the pulse train of the round (also the hello's nonce),
  its length, the fibre length, the round's number.
- :class:`Bye` (A->B, instead of a round): Alice ends the connection cleanly.
- :class:`Prepared` (B->A): Bob holds the round's keys as *pending*, durably.
- :class:`Commit`, :class:`Ready`, :class:`Release`, :class:`Done`: the deposit steps
  (:mod:`hybridkex.qkd.network.deposit`), each naming the rounds it settles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from hybridkex.qkd.distillation.codec import Reader, Writer
from hybridkex.qkd.distillation.messages import NONCE_SIZE, MessageType

__all__ = [
    "DIGEST_SIZE",
    "LINK_VERSION",
    "ROUND_ID_SIZE",
    "Bye",
    "Commit",
    "Done",
    "JournalEntry",
    "LinkHello",
    "LinkState",
    "Prepared",
    "Ready",
    "Release",
    "RoundStart",
]

LINK_VERSION = 1
ROUND_ID_SIZE = 16
DIGEST_SIZE = 32
MAX_NAME = 63
MAX_ENTRIES = 4096
MAX_TEXT = 200


def _name(r: Reader) -> str:
    raw = r.blob()
    if not 1 <= len(raw) <= MAX_NAME:
        raise r.fail("a site name of a bad length")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise r.fail("a site name that is not ASCII") from None


def _ids(r: Reader) -> tuple[bytes, ...]:
    raw = r.blob()
    if len(raw) % ROUND_ID_SIZE or len(raw) > ROUND_ID_SIZE * MAX_ENTRIES:
        raise r.fail("round IDs of a ragged or excessive length")
    ids = tuple(raw[i:i + ROUND_ID_SIZE] for i in range(0, len(raw), ROUND_ID_SIZE))
    if len(set(ids)) != len(ids):
        raise r.fail("a round ID appears twice")
    return ids


@dataclass(frozen=True)
class LinkHello:
    nonce: bytes
    alice_site: str
    bob_site: str

    msg_type: ClassVar[MessageType] = MessageType.LINK_HELLO

    def encode(self) -> bytes:
        return (Writer().u8(LINK_VERSION).blob(self.nonce).blob(self.alice_site.encode())
                .blob(self.bob_site.encode()).build())

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        r = Reader(payload, "link hello")
        version, nonce, alice, bob = r.u8(), r.blob(), _name(r), _name(r)
        r.end()
        if version != LINK_VERSION or len(nonce) != NONCE_SIZE:
            raise r.fail("unsupported version or bad nonce")
        return cls(nonce, alice, bob)


@dataclass(frozen=True)
class JournalEntry:
    """One unfinished round of a deposit journal, as the ends compare them."""

    round_id: bytes
    state: int
    digest: bytes


@dataclass(frozen=True)
class LinkState:
    nonce: bytes
    entries: tuple[JournalEntry, ...]

    msg_type: ClassVar[MessageType] = MessageType.LINK_STATE

    def encode(self) -> bytes:
        w = Writer().blob(self.nonce).u64(len(self.entries))
        for e in self.entries:
            w.blob(e.round_id).u8(e.state).blob(e.digest)
        return w.build()

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        r = Reader(payload, "link state")
        nonce, count = r.blob(), r.u64()
        if len(nonce) != NONCE_SIZE or count > MAX_ENTRIES:
            raise r.fail("bad nonce or too many entries")
        entries = []
        for _ in range(count):
            round_id, state, digest = r.blob(), r.u8(), r.blob()
            if len(round_id) != ROUND_ID_SIZE or len(digest) != DIGEST_SIZE:
                raise r.fail("a journal entry of the wrong size")
            entries.append(JournalEntry(round_id, state, digest))
        r.end()
        if len({e.round_id for e in entries}) != len(entries):
            raise r.fail("a round listed twice")
        return cls(nonce, tuple(entries))


@dataclass(frozen=True)
class RoundStart:
    train: bytes
    pulses: int
    distance_km: float
    number: int

    msg_type: ClassVar[MessageType] = MessageType.ROUND_START

    def encode(self) -> bytes:
        return (Writer().blob(self.train).u64(self.pulses).f64(self.distance_km)
                .u64(self.number).build())

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        r = Reader(payload, "round start")
        train, pulses, distance, number = r.blob(), r.u64(), r.f64(), r.u64()
        r.end()
        if len(train) != NONCE_SIZE or not 1 <= pulses <= 1 << 40:
            raise r.fail("bad train ID or pulse count")
        if not 0.0 <= distance <= 10_000.0:
            raise r.fail("fibre length out of range")
        return cls(train, pulses, distance, number)


@dataclass(frozen=True)
class Bye:
    reason: str

    msg_type: ClassVar[MessageType] = MessageType.BYE

    def encode(self) -> bytes:
        return Writer().blob(self.reason.encode()[:MAX_TEXT]).build()

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        r = Reader(payload, "bye")
        raw = r.blob()
        r.end()
        if len(raw) > MAX_TEXT:
            raise r.fail("reason too long")
        return cls(raw.decode("utf-8", "replace"))


@dataclass(frozen=True)
class Prepared:
    round_id: bytes
    digest: bytes

    msg_type: ClassVar[MessageType] = MessageType.PREPARED

    def encode(self) -> bytes:
        return Writer().blob(self.round_id).blob(self.digest).build()

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        r = Reader(payload, "prepared")
        round_id, digest = r.blob(), r.blob()
        r.end()
        if len(round_id) != ROUND_ID_SIZE or len(digest) != DIGEST_SIZE:
            raise r.fail("round ID or digest of the wrong size")
        return cls(round_id, digest)


@dataclass(frozen=True)
class _Rounds:
    """A deposit step naming the rounds it settles."""

    rounds: tuple[bytes, ...]

    def encode(self) -> bytes:
        return Writer().blob(b"".join(self.rounds)).build()

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        r = Reader(payload, cls.__name__.lower())
        rounds = _ids(r)
        r.end()
        return cls(rounds)


@dataclass(frozen=True)
class Commit:
    """A->B: Alice decided these rounds commit.  ``complete``: they are all of Alice's
    unfinished rounds, so Bob discards every other pending round of his."""

    rounds: tuple[bytes, ...]
    complete: bool

    msg_type: ClassVar[MessageType] = MessageType.COMMIT

    def encode(self) -> bytes:
        return Writer().u8(int(self.complete)).blob(b"".join(self.rounds)).build()

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        r = Reader(payload, "commit")
        complete = r.u8()
        rounds = _ids(r)
        r.end()
        if complete > 1:
            raise r.fail("the complete flag is neither 0 nor 1")
        return cls(rounds, complete == 1)


@dataclass(frozen=True)
class Ready(_Rounds):
    """B->A: Bob made the units Alice's site initiates available (fetch only at Bob)."""

    msg_type: ClassVar[MessageType] = MessageType.READY


@dataclass(frozen=True)
class Release(_Rounds):
    """A->B: Alice made every unit available; Bob may release the ones his site takes."""

    msg_type: ClassVar[MessageType] = MessageType.RELEASE


@dataclass(frozen=True)
class Done(_Rounds):
    """B->A: Bob's store holds every unit; Alice forgets the rounds."""

    msg_type: ClassVar[MessageType] = MessageType.DONE
