"""One end's record of the quantum phase: its detection events, four bytes each, in pulse order.

A round of 10^10 pulses at 25 km has about 3 * 10^7 detections.  Kept as NumPy arrays
of an int64 pulse index and one byte per value, the two ends' records alone would take
about 650 MB.  Here an event is one 32-bit word: the pulse's offset from the start of
its segment (26 bits) and up to 6 bits of values (Alice: intensity class, basis, bit;
Bob: basis, bit).  A segment holds the events of at most 2^26 consecutive pulses, so
the two records of that round take about 260 MB.

Sifting is the only step that reads a record, once and in pulse order, so reading
*drains* it: :meth:`DetectionLog.drain` hands out the events in bounded chunks and
:meth:`DetectionLog.lookup` answers an increasing sequence of pulse lookups, and both
let go of every segment they have passed.  The memory of the record is then free for
what the later steps hold, which is far less (the sifted bits).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from hybridkex.errors import InvalidParameter

__all__ = ["OFFSET_BITS", "VALUE_BITS", "DetectionLog"]

Indices = npt.NDArray[np.int64]
Values = npt.NDArray[np.uint8]
_Words = npt.NDArray[np.uint32]

#: bits of an event's pulse offset within its segment, and of its values
OFFSET_BITS = 26
VALUE_BITS = 6
_SPAN = 1 << OFFSET_BITS
_VALUE_MASK = (1 << VALUE_BITS) - 1


class DetectionLog:
    """Detection events of one end: strictly increasing pulse indices, each with a small
    value (``0 .. 2**VALUE_BITS - 1``) that packs the end's choices at that pulse."""

    def __init__(self) -> None:
        self._segments: collections.deque[tuple[int, _Words]] = collections.deque()
        # the segment being filled: its base, and the pieces appended to it so far
        self._open_base = -1
        self._open: list[_Words] = []
        self._count = 0
        self._last = -1

    def __len__(self) -> int:
        """Events still held (all of them until sifting starts reading)."""
        return self._count

    @property
    def last_index(self) -> int:
        """The highest pulse index ever appended (-1 if none)."""
        return self._last

    @property
    def nbytes(self) -> int:
        return sum(words.nbytes for _, words in self._segments) + sum(
            words.nbytes for words in self._open)

    def append(self, index: npt.ArrayLike, values: npt.ArrayLike) -> None:
        """Add events after every event already held.

        Pieces are gathered into segments spanning up to 2^26 pulses, one array each:
        few, large arrays, which the allocator returns to the operating system when
        sifting lets go of them (thousands of small ones would stay in its heap).
        """
        idx = np.asarray(index, dtype=np.int64)
        val = np.asarray(values)
        if idx.ndim != 1 or val.shape != idx.shape:
            raise InvalidParameter("one value per pulse index")
        if not idx.size:
            return
        if int(idx[0]) <= self._last or np.any(idx[1:] <= idx[:-1]):
            raise InvalidParameter("pulse indices must increase strictly")
        if val.dtype.kind not in "iu" or int(val.min()) < 0 or int(val.max()) > _VALUE_MASK:
            raise InvalidParameter(f"values must be integers in 0..{_VALUE_MASK}")
        start = 0
        while start < idx.size:
            if not self._open or int(idx[start]) >= self._open_base + _SPAN:
                self._close()
                self._open_base = int(idx[start])
            base = self._open_base
            stop = int(np.searchsorted(idx, base + _SPAN, side="left"))
            self._open.append(((idx[start:stop] - base).astype(np.uint32)
                               << np.uint32(VALUE_BITS)) | val[start:stop].astype(np.uint32))
            start = stop
        self._count += int(idx.size)
        self._last = int(idx[-1])

    def _close(self) -> None:
        """Make the segment being filled one array."""
        if self._open:
            words = self._open[0] if len(self._open) == 1 else np.concatenate(self._open)
            self._segments.append((self._open_base, words))
            self._open = []

    @staticmethod
    def _decode(base: int, words: _Words) -> tuple[Indices, Values]:
        index = (words >> np.uint32(VALUE_BITS)).astype(np.int64) + base
        return index, (words & np.uint32(_VALUE_MASK)).astype(np.uint8)

    def drain(self, max_events: int) -> Iterator[tuple[Indices, Values]]:
        """All events in order, in chunks of at most ``max_events``, each let go of as it
        is handed out."""
        if max_events < 1:
            raise InvalidParameter("max_events must be positive")
        self._close()
        parts: list[tuple[Indices, Values]] = []
        held = 0
        while self._segments:
            base, words = self._segments[0]
            take = min(max_events - held, words.size)
            parts.append(self._decode(base, words[:take]))
            if take == words.size:
                self._segments.popleft()
            else:
                self._segments[0] = (base, words[take:])
            self._count -= take
            held += take
            if held == max_events:
                yield _join(parts)
                parts, held = [], 0
        if parts:
            yield _join(parts)

    def lookup(self, index: Indices) -> Values | None:
        """The values at ``index`` (strictly increasing, and above every index asked for
        before), or None if any of those pulses has no event.  Every event up to
        ``index[-1]`` is let go of: later lookups must ask for higher indices."""
        self._close()
        if not index.size:
            return np.zeros(0, np.uint8)
        last = int(index[-1])
        parts: list[tuple[Indices, Values]] = []
        while self._segments and self._segments[0][0] <= last:
            base, words = self._segments[0]
            idx, val = self._decode(base, words)
            keep = int(np.searchsorted(idx, last, side="right"))
            parts.append((idx[:keep], val[:keep]))
            self._count -= keep
            if keep == words.size:
                self._segments.popleft()
            else:
                self._segments[0] = (base, words[keep:])
                break
        held_index, held_values = _join(parts)
        pos = np.searchsorted(held_index, index)
        if np.any(pos >= held_index.size) or not np.array_equal(held_index[pos], index):
            return None
        return held_values[pos]


def _join(parts: list[tuple[Indices, Values]]) -> tuple[Indices, Values]:
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.uint8)
    if len(parts) == 1:
        return parts[0]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
