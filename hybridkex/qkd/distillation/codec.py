"""The field encodings of distillation messages: integers, floats, blobs and bit arrays.

All integers are big-endian.  A *blob* is ``u32 length | bytes``; a *bit array* is
``u64 count | ceil(count / 8)`` bytes of bits packed most significant bit first, the
unused bits of the last byte zero.
:class:`Reader` checks every length before it reads, refuses leftovers, and raises
:class:`~hybridkex.qkd.errors.MalformedMessage` naming the message it was reading;
the messages themselves (:mod:`hybridkex.qkd.distillation.messages`) check values.
"""

from __future__ import annotations

import struct

import numpy as np
import numpy.typing as npt

from hybridkex.qkd.errors import MalformedMessage

__all__ = ["MAX_BITS", "Reader", "Writer"]

#: The most bits a bit array may announce (a round's detections stay far below it).
MAX_BITS = 1 << 28

_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")


class Writer:
    """Builds a payload from typed fields."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, v: int) -> Writer:
        self._parts.append(_U8.pack(v))
        return self

    def u64(self, v: int) -> Writer:
        self._parts.append(_U64.pack(v))
        return self

    def f64(self, v: float) -> Writer:
        self._parts.append(_F64.pack(v))
        return self

    def blob(self, v: bytes) -> Writer:
        self._parts.append(_U32.pack(len(v)) + v)
        return self

    def bits(self, v: npt.NDArray[np.uint8]) -> Writer:
        """A 0/1 array, bit-packed, with its length."""
        self.u64(len(v))
        self._parts.append(np.packbits(v).tobytes())
        return self

    def u8_array(self, v: npt.NDArray[np.uint8]) -> Writer:
        return self.blob(np.ascontiguousarray(v, dtype=np.uint8).tobytes())

    def u64_array(self, v: npt.NDArray[np.int64]) -> Writer:
        return self.blob(np.ascontiguousarray(v, dtype=">u8").tobytes())

    def build(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Reads typed fields from one message's payload; ``what`` names it in errors."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, payload: bytes, what: str) -> None:
        self._data = payload
        self._pos = 0
        self._what = what

    def fail(self, reason: str) -> MalformedMessage:
        return MalformedMessage(f"malformed {self._what}: {reason}")

    def _take(self, n: int) -> bytes:
        if self._pos + n > len(self._data):
            raise self.fail("truncated")
        out = self._data[self._pos:self._pos + n]
        self._pos += n
        return out

    def u8(self) -> int:
        return int(self._take(1)[0])

    def u64(self) -> int:
        return int(_U64.unpack(self._take(8))[0])

    def f64(self) -> float:
        return float(_F64.unpack(self._take(8))[0])

    def blob(self) -> bytes:
        return self._take(int(_U32.unpack(self._take(4))[0]))

    def bits(self) -> npt.NDArray[np.uint8]:
        n = self.u64()
        if n > MAX_BITS:
            raise self.fail(f"announces {n} bits, more than {MAX_BITS}")
        packed = np.frombuffer(self._take((n + 7) // 8), dtype=np.uint8)
        if n % 8 and packed[-1] & (0xFF >> (n % 8)):
            raise self.fail("non-zero padding bits")  # one encoding per value
        return np.unpackbits(packed, count=n).astype(np.uint8)

    def u8_array(self) -> npt.NDArray[np.uint8]:
        return np.frombuffer(self.blob(), dtype=np.uint8).copy()

    def u64_array(self) -> npt.NDArray[np.uint64]:
        raw = self.blob()
        if len(raw) % 8:
            raise self.fail("an integer array of ragged length")
        return np.frombuffer(raw, dtype=">u8").astype(np.uint64)

    def end(self) -> None:
        if self._pos != len(self._data):
            raise self.fail("trailing bytes")
