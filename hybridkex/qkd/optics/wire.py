"""What crosses the emulated quantum channel: what light carries, and nothing more.

Each message is one frame of :class:`~hybridkex.qkd.distillation.transport.SocketChannel`
(u32 length, then the frame); a frame is ``"HKP1" | type u8 | body``, integers
big-endian:

- :class:`DeviceHello` (downstream to upstream, once per connection): what the element
  downstream is (a detector or a fibre), the part of the loss behind it that the
  element upstream may apply on its behalf (a transmittance in (0, 1], see
  :mod:`hybridkex.qkd.optics`), and the fibre length between here and the detector.
- :class:`PulseBlock` (upstream to downstream): ``slots`` consecutive time slots of a
  pulse train, from slot ``start``; for every slot that holds light its offset in the
  block (u32, strictly increasing), its photon number (u8, at least 1) and the
  polarisation all its photons share (u8: basis << 1 | bit, basis 0 Z, 1 X).  A slot
  not listed holds no photon.  Nothing says which intensity a pulse was sent with.
- :class:`TrainEnd`: the train is complete, with its number of slots and blocks.
- :class:`TrainReceived` (downstream to upstream): Bob's detector registered the train
  whole.  Alice's source offers a train to her distillation end only then, as the
  synchronisation line of a real system would tell it, so no round is started on a
  train the fibre lost.

A train is named by 16 random bytes, which Alice's distillation end then uses as the
nonce of the round's hello, so the two ends find the same train.  ``decode`` checks
every length and value before use and raises
:class:`~hybridkex.qkd.errors.QuantumChannelError` and nothing else.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from hybridkex.qkd.errors import QuantumChannelError

__all__ = [
    "DETECTOR",
    "FIBRE",
    "MAX_BLOCK_SLOTS",
    "TRAIN_ID_SIZE",
    "DeviceHello",
    "PulseBlock",
    "TrainEnd",
    "TrainReceived",
    "decode",
]

MAGIC = b"HKP1"
VERSION = 1
TRAIN_ID_SIZE = 16
MAX_BLOCK_SLOTS = 1 << 24
MAX_TRAIN_SLOTS = 1 << 40
MAX_PHOTONS = 255
DETECTOR, FIBRE = 1, 2

_HELLO = struct.Struct(">BBdd")
_BLOCK = struct.Struct(">16sIQII")
_END = struct.Struct(">16sQI")


def _fail(what: str) -> QuantumChannelError:
    return QuantumChannelError(f"malformed quantum frame: {what}")


@dataclass(frozen=True)
class DeviceHello:
    """Downstream to upstream: ``kind`` (DETECTOR or FIBRE), the transmittance the
    upstream element applies on its behalf, the fibre length to the detector."""

    kind: int
    transmittance: float
    distance_km: float

    type_byte: ClassVar[int] = 1

    def encode(self) -> bytes:
        return MAGIC + bytes([self.type_byte]) + _HELLO.pack(VERSION, self.kind,
                                                             self.transmittance,
                                                             self.distance_km)

    @classmethod
    def decode_body(cls, body: bytes) -> DeviceHello:
        if len(body) != _HELLO.size:
            raise _fail("device hello of the wrong length")
        version, kind, transmittance, distance = _HELLO.unpack(body)
        if version != VERSION or kind not in (DETECTOR, FIBRE):
            raise _fail("unknown version or device kind")
        if not (math.isfinite(transmittance) and 0.0 < transmittance <= 1.0):
            raise _fail("transmittance outside (0, 1]")
        if not (math.isfinite(distance) and 0.0 <= distance <= 10_000.0):
            raise _fail("fibre length out of range")
        return cls(kind, transmittance, distance)


@dataclass(frozen=True, eq=False, repr=False)  # its states are Alice's bases and bits
class PulseBlock:
    """Upstream to downstream: the slots of one block that hold light."""

    train: bytes
    number: int
    start: int
    slots: int
    offset: npt.NDArray[np.uint32]
    photons: npt.NDArray[np.uint8]
    state: npt.NDArray[np.uint8]

    type_byte: ClassVar[int] = 2

    @property
    def basis(self) -> npt.NDArray[np.uint8]:
        return self.state >> np.uint8(1)

    @property
    def bit(self) -> npt.NDArray[np.uint8]:
        return self.state & np.uint8(1)

    def encode(self) -> bytes:
        n = len(self.offset)
        return b"".join((MAGIC, bytes([self.type_byte]),
                         _BLOCK.pack(self.train, self.number, self.start, self.slots, n),
                         np.ascontiguousarray(self.offset, dtype=">u4").tobytes(),
                         np.ascontiguousarray(self.photons, dtype=np.uint8).tobytes(),
                         np.ascontiguousarray(self.state, dtype=np.uint8).tobytes()))

    @classmethod
    def decode_body(cls, body: bytes) -> PulseBlock:
        if len(body) < _BLOCK.size:
            raise _fail("pulse block truncated")
        train, number, start, slots, n = _BLOCK.unpack_from(body)
        if not 1 <= slots <= MAX_BLOCK_SLOTS or n > slots:
            raise _fail("pulse block with a bad slot or pulse count")
        if start + slots > MAX_TRAIN_SLOTS:
            raise _fail("pulse block beyond the longest train")
        if len(body) != _BLOCK.size + 6 * n:
            raise _fail("pulse block length does not match its pulse count")
        pos = _BLOCK.size
        offset = np.frombuffer(body, dtype=">u4", count=n, offset=pos).astype(np.uint32)
        photons = np.frombuffer(body, dtype=np.uint8, count=n, offset=pos + 4 * n).copy()
        state = np.frombuffer(body, dtype=np.uint8, count=n, offset=pos + 5 * n).copy()
        if n and (int(offset[-1]) >= slots or np.any(offset[1:] <= offset[:-1])):
            raise _fail("pulse offsets not strictly increasing inside the block")
        if np.any(photons == 0) or np.any(state > 3):
            raise _fail("a pulse with no photon or an unknown polarisation")
        return cls(train, number, start, slots, offset, photons, state)


@dataclass(frozen=True)
class TrainEnd:
    """The train is complete: ``slots`` in all, in ``blocks`` blocks."""

    train: bytes
    slots: int
    blocks: int

    type_byte: ClassVar[int] = 3

    def encode(self) -> bytes:
        return MAGIC + bytes([self.type_byte]) + _END.pack(self.train, self.slots, self.blocks)

    @classmethod
    def decode_body(cls, body: bytes) -> TrainEnd:
        if len(body) != _END.size:
            raise _fail("train end of the wrong length")
        train, slots, blocks = _END.unpack(body)
        if not 1 <= slots <= MAX_TRAIN_SLOTS:
            raise _fail("train end with a bad slot count")
        return cls(train, slots, blocks)


@dataclass(frozen=True)
class TrainReceived:
    """Downstream to upstream: the detector registered ``train`` whole."""

    train: bytes

    type_byte: ClassVar[int] = 4

    def encode(self) -> bytes:
        return MAGIC + bytes([self.type_byte]) + self.train

    @classmethod
    def decode_body(cls, body: bytes) -> TrainReceived:
        if len(body) != TRAIN_ID_SIZE:
            raise _fail("train acknowledgement of the wrong length")
        return cls(body)


Message = DeviceHello | PulseBlock | TrainEnd | TrainReceived

_KINDS: dict[int, type[DeviceHello] | type[PulseBlock] | type[TrainEnd] | type[TrainReceived]] = {
    DeviceHello.type_byte: DeviceHello, PulseBlock.type_byte: PulseBlock,
    TrainEnd.type_byte: TrainEnd, TrainReceived.type_byte: TrainReceived}


def decode(frame: bytes) -> Message:
    """One quantum frame, strictly decoded."""
    if len(frame) < len(MAGIC) + 1 or frame[:len(MAGIC)] != MAGIC:
        raise _fail("bad magic")
    kind = _KINDS.get(frame[len(MAGIC)])
    if kind is None:
        raise _fail(f"unknown frame type {frame[len(MAGIC)]}")
    return kind.decode_body(frame[len(MAGIC) + 1:])
