"""Cascade error correction (information reconciliation) as a two-party message protocol.

Alice and Bob hold sifted keys that differ in a fraction ``qber`` of positions.  Bob
corrects his key towards Alice's by asking her for parities of subsets of her key over
the authenticated classical channel; Alice never learns anything from Bob and never
changes her key.  The two sides are separate objects that only exchange messages
(sans-IO: neither touches a channel):

* :class:`CascadeBob` drives the protocol: ``request() -> CascadeRequest | None``
  (``None`` once he is finished) and ``receive(response)``.
* :class:`CascadeAlice` answers: ``respond(request) -> CascadeResponse``.

Protocol
--------
The key (``n`` bits) is cut into *frames* of about ``frame_bits`` bits (all frame
lengths differ by at most one); every frame is reconciled independently, and all
frames are served by the same messages, so a long key costs no more round trips than a
single frame.  Each frame goes through ``P`` passes.  In pass ``p`` the frame is split
into blocks: for an *explicit* pass of block size ``k = 2**e`` a pseudo-random
permutation of the frame is cut into ``ceil(n_f / k)`` blocks whose lengths differ by
at most one; a *halving* pass puts every bit into one of two blocks by a pseudo-random
label bit.  Both parties derive permutations and labels from the seed in the first
request (SHA-256 of the seed and the pass number seeds NumPy's ``SeedSequence`` and
``PCG64``, whose streams NumPy keeps stable; a permutation is the stable sort of 16-bit
keys from ``PCG64.random_raw``, ties in key order going by position, and labels are the
bits of ``random_raw`` words), so nothing but the seed crosses the channel.

Inside a block, sub-blocks are the nodes of a binary tree over the block (bits in
permuted order, padded to ``2**D``): node ``h`` (heap numbering, root 1) at depth ``d``
covers positions ``[(h - 2**d) * 2**(D-d), (h - 2**d + 1) * 2**(D-d))`` of the block.
A node whose right half lies wholly in the padding has the same parity as its left
child and is never asked about.

1. Round 1: Bob sends the seed and the schedule; Alice answers with the parity of every
   top-level block of every pass (for passes ``p >= 1`` the last block of each frame is
   left out: Bob infers it from the frame's total parity, which pass 0 gave him --
   *block-parity inference*).  Revealing them all at once leaks nothing more than
   revealing them pass by pass, and saves a round trip per pass.
2. Every further round is one batch of node queries: Bob asks for the parity of the
   left child of every node being bisected -- in all frames and blocks at once, so a
   bisection costs one round trip per tree level, not one per parity bit.  The right
   child's parity follows from the parent's.  A one-bit node with a parity mismatch is
   an error: Bob flips it.
3. *Cascade effect with sub-block reuse*: every parity Alice has revealed stays known.
   When Bob flips a bit he toggles his parity of every node containing it in every
   pass; in each pass the frame has reached, the smallest known node containing the
   bit may now have a mismatch, and Bob bisects that node (not the whole top-level
   block) -- in the same round as the flip, in parallel with everything else.
4. A frame works through its passes in order: it starts on pass ``p + 1`` when no known
   node of passes ``<= p`` has a mismatch (a pass without a mismatched block costs no
   round trip).  In passes after the first, at most ``ceil(concurrency * B)`` (at least
   4) of a frame's ``B`` top-level blocks start their bisection together; the others
   wait, and a waiting block that a cascade has meanwhile made even is never bisected.
   This keeps most of the advantage of classic one-block-at-a-time Cascade over
   bisecting every odd block at once (about 0.4% of ``f`` at 10^4 bits and 0.8% at
   10^5 bits, QBER 2%) for about twice the round trips; ``concurrency=1`` starts all.
   Bob is finished when every frame has been through all passes.

Messages
--------
:class:`CascadeBob` produces :class:`~hybridkex.qkd.distillation.messages.CascadeRequest`
and :class:`CascadeAlice` answers with
:class:`~hybridkex.qkd.distillation.messages.CascadeResponse`; their byte format is
documented and decoded there.  A request carries Bob's sequence number ``seq`` (from 0;
Alice refuses any other), on the first request the key length, frame length, seed and
schedule (a code ``e`` in 1..30 is an explicit pass with block size ``2**e``, code 0 a
halving pass, at most 8 explicit), and the queried node IDs in strictly increasing
order.  The node ID is ``base(pass) + block * 2**(D+1) + h``, with passes, blocks
(frame-major) and depths ``D`` numbered as both sides derive them from the first
request.  A response carries the top-level parities (first response) followed by one
parity per query, in query order.  A malformed, truncated, out-of-order or
out-of-range message raises :class:`~hybridkex.qkd.errors.CascadeError`.  Alice's work
and memory are ``O(P n)`` with the limits above whatever the request, and she refuses
to reveal more than ``n`` parity bits in total.

Parameters
----------
The design follows the optimised Cascade of J. Martinez-Mateo, C. Pacher, M. Peev,
A. Ciurana and V. Martin, "Demystifying the information reconciliation protocol
Cascade", Quantum Inf. Comput. 15, 453-477 (2015), arXiv:1407.3257: block sizes are
powers of two (a bisection of ``2**e`` bits costs exactly ``e`` parities), three passes
of growing explicit block size are followed by passes over two halves of the frame
(their ``n/2``), the cascade effect goes back to every earlier pass, and known sub-block
parities are reused.  Their option (8) is ``k1 = 2**ceil(a)``,
``k2 = 2**ceil((a + 12) / 2)``, ``k3 = 4096`` with ``a = log2(1/qber) - 1/2``
(:func:`paper_schedule`).  With this implementation (block-parity inference, the
scheduling above) a simulation search over the exponents found smaller first blocks
better at every QBER we tried (0.5-8%), so the default (:func:`default_schedule`) is

* ``k1 = 2**floor(log2(1/qber))``, ``k2 = 8 k1`` (``4 k1`` if a frame holds fewer than
  150 errors), ``k3 = 64 k1`` (at most a quarter of the frame), e.g. 32, 256, 2048 at
  QBER 2%;
* then enough halving passes ``H`` that ``(E**2/2 * k1 k2 k3 / n**3 + 1/4) * 2**-H`` is at
  most :data:`FER_TARGET` (2e-5, five times below the 1e-4 we aim for): ``E = qber n``
  errors per frame of ``n`` bits; the first term is the chance that two errors share a
  block in every explicit pass (no parity can see such a pair), the second bounds the
  fraction of frames with errors left after the explicit passes (measured at most
  0.1); every halving pass halves both.  That makes 17-18 passes for frames of 10^4 and
  10^5 bits.

Measured efficiency, frame error rate and speed of this schedule, and of option (8)
for comparison, are in docs/performance.md (QKD link).

``passes`` may instead give the number of passes, or a sequence of codes for the whole
schedule.

Leakage
-------
Every parity bit in every response counts as leaked: the top-level parities and one
bit per query (bits Bob infers -- right children, the inferred block -- are not sent
and not counted).  ``leaked_bits`` is the same on both sides; Bob also has it per frame
(``frame_leaked_bits``).  Privacy amplification must subtract it (plus whatever the
verification hash reveals).  Reconciliation efficiency is
``f = leaked_bits / (n * h2(qber))``; docs/performance.md gives measured values.
Cascade can fail silently (an even number of errors left in every block of every pass);
a verification hash after Cascade must catch that.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from hybridkex.errors import InvalidParameter
from hybridkex.qkd.decoy import h2
from hybridkex.qkd.distillation.messages import (
    MAX_SEED_BYTES,
    CascadeRequest,
    CascadeResponse,
    CascadeSetup,
)
from hybridkex.qkd.errors import CascadeError

__all__ = [
    "DEFAULT_CONCURRENCY",
    "FER_TARGET",
    "MAX_PASSES",
    "CascadeAlice",
    "CascadeBob",
    "binary_entropy",
    "default_schedule",
    "paper_schedule",
]

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
U16 = npt.NDArray[np.uint16]
U8 = npt.NDArray[np.uint8]
Bool = npt.NDArray[np.bool_]

FER_TARGET: Final = 2e-5
DEFAULT_CONCURRENCY: Final = 0.25
MAX_PASSES: Final = 32
MAX_EXPLICIT_PASSES: Final = 8
MIN_FRAME_BITS: Final = 64
MAX_KEY_BITS: Final = 1 << 27
MAX_NODE_ID: Final = 1 << 31
MIN_QBER: Final = 1e-4

_DOMAIN: Final = b"hybridkex cascade v1"


#: ``h2(p)`` in bits for a QBER in [0, 0.5]: the one implementation, in decoy.py.
binary_entropy = h2


def _check_count(qber: float, passes: int) -> None:
    if isinstance(qber, bool) or not isinstance(qber, (int, float)) or not 0.0 <= qber < 0.5:
        raise InvalidParameter("qber must be in [0, 0.5)")
    if isinstance(passes, bool) or not isinstance(passes, int) or not 1 <= passes <= MAX_PASSES:
        raise InvalidParameter(f"passes must be an int in 1..{MAX_PASSES}")


def default_schedule(qber: float, passes: int | None = None,
                     frame_bits: int = 10_000) -> tuple[int, ...]:
    """The schedule codes Bob uses by default (see the module documentation).

    With ``L = log2(1/qber)``, ``lf = floor(log2(frame_bits))`` and
    ``E = qber * frame_bits`` errors per frame: explicit block sizes ``2**e1, 2**e2,
    2**e3`` with ``e1 = floor(L)``, ``e2 = e1 + 3`` (``e1 + 2`` if ``E < 150``),
    ``e3 = min(e1 + 6, lf - 2)`` (each at least one more than the previous), then
    halving passes: ``passes`` passes in all, or, if ``passes`` is None, enough
    halving passes ``H`` that ``(E**2 / 2 * prod(k_i / n) + 1/4) * 2**-H`` is at most
    :data:`FER_TARGET` (the first term is the chance that two errors share a block in
    every explicit pass, the second a bound on the fraction of frames with errors left
    after the explicit passes, measured at most 0.1; each halving pass halves both).
    """
    _check_count(qber, 1 if passes is None else passes)
    if isinstance(frame_bits, bool) or not isinstance(frame_bits, int) or frame_bits < 2:
        raise InvalidParameter("frame_bits must be an int >= 2")
    lf = max(1, frame_bits.bit_length() - 1)
    errors = max(qber, MIN_QBER) * frame_bits
    e1 = min(max(1, math.floor(math.log2(1.0 / max(qber, MIN_QBER)))), lf, 28)
    e2 = min(e1 + (3 if errors >= 150 else 2), max(e1 + 1, lf - 3))
    e3 = min(e1 + 6, max(e2 + 1, lf - 2))
    if passes is None:
        share = math.prod(min(1.0, 2.0**e / frame_bits) for e in (e1, e2, e3))
        halving = math.ceil(math.log2((errors * errors / 2 * share + 0.25) / FER_TARGET))
        passes = 3 + min(max(halving, 8), MAX_PASSES - 3)
    return (e1, e2, e3, *([0] * max(0, passes - 3)))[:passes]


def paper_schedule(qber: float, passes: int = 16) -> tuple[int, ...]:
    """Option (8) of Martinez-Mateo et al. (2015), exactly as published.

    ``a = log2(1/qber) - 1/2``; ``k1 = 2**ceil(a)``, ``k2 = 2**ceil((a + 12) / 2)``,
    ``k3 = 4096``, then halving passes.  Its larger blocks do better with
    ``CascadeBob(..., concurrency=1)``: held-back blocks mean fewer known sub-blocks,
    so more error pairs survive to the expensive later passes.
    """
    _check_count(qber, passes)
    a = math.log2(1.0 / max(qber, MIN_QBER)) - 0.5
    explicit = (max(1, math.ceil(a)), max(1, math.ceil((a + 12.0) / 2.0)), 12)
    return (*explicit, *([0] * max(0, passes - 3)))[:passes]


# ----------------------------------------------------------------------------------
# bit tricks on packed keys (bit x of a key is bit x % 64 of little-endian word x // 64)

_M1: Final = np.uint64(0x5555555555555555)
_M2: Final = np.uint64(0x3333333333333333)
_M4: Final = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01: Final = np.uint64(0x0101010101010101)


def _pack_words(bits: U8) -> U64:
    """Key bits packed into 64-bit words, with at least one zero word at the end."""
    packed = np.packbits(bits, bitorder="little")
    buf = np.zeros(8 * (bits.size // 64 + 2), np.uint8)
    buf[: packed.size] = packed
    return buf.view("<u8")


def _popcount(w: U64) -> U64:
    w = w - ((w >> np.uint64(1)) & _M1)
    w = (w & _M2) + ((w >> np.uint64(2)) & _M2)
    w = (w + (w >> np.uint64(4))) & _M4
    return (w * _H01) >> np.uint64(56)


def _prefix_counts(words: U64, pos: I64) -> I64:
    """Number of set bits before each position ``pos`` (``words`` ends with a zero word)."""
    counts = np.concatenate(([0], np.cumsum(_popcount(words).astype(np.int64))))
    wi = pos >> 6
    mask = (np.uint64(1) << (pos & 63).astype(np.uint64)) - np.uint64(1)
    out: I64 = counts[wi] + _popcount(words[wi] & mask).astype(np.int64)
    return out


def _word_bits(words: U64, xs: I64) -> I64:
    """Bits ``xs`` of a packed key."""
    out: I64 = ((words[xs >> 6] >> (xs & 63).astype(np.uint64)) & np.uint64(1)).astype(np.int64)
    return out


def _bitlen(v: I64) -> I64:
    """Bit length of positive int64 values below 2**52."""
    return np.frexp(v.astype(np.float64))[1].astype(np.int64)


def _ranges(starts: I64, lengths: I64) -> I64:
    """Concatenation of ``arange(s, s + l)`` for each start and length."""
    total = int(lengths.sum())
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(total, dtype=np.int64)


# ----------------------------------------------------------------------------------
# shared layout: frames, passes, blocks, permutations


class _Pass:
    """The block structure of one pass over all frames (identical on both sides)."""

    __slots__ = ("blk_frame", "blk_len", "code", "cstart", "depth", "fblk", "keys",
                 "labels", "nblocks", "node_base", "seed", "width")

    def __init__(self, code: int, seed: int) -> None:
        self.code = code
        self.seed = seed
        self.labels: U64 | None = None      # halving pass: packed label bits
        self.keys: U16 | None = None        # explicit pass: 16-bit sort keys
        self.fblk: I64 = np.zeros(1, np.int64)       # first block of each frame (F + 1)
        self.blk_frame: I64 = np.zeros(0, np.int64)
        self.blk_len: I64 = np.zeros(0, np.int64)
        self.cstart: I64 = np.zeros(0, np.int64)    # pass-order position of each block
        self.nblocks = 0
        self.depth = 0
        self.width = 2
        self.node_base = 0

    def random_words(self, count: int) -> U64:
        gen = np.random.PCG64(np.random.SeedSequence(self.seed))
        return gen.random_raw(count).astype("<u8")


class _Layout:
    """Frames and the block structure of every pass, derived from the first request."""

    def __init__(self, n: int, frame_bits: int, seed: bytes, codes: Sequence[int]) -> None:
        self.n = n
        self.frame_bits = frame_bits
        self.seed = seed
        self.codes = tuple(codes)
        nframes = -(-n // frame_bits)
        q, r = divmod(n, nframes)
        lengths = np.full(nframes, q, np.int64)
        lengths[:r] += 1
        self.nframes = nframes
        self.flen: I64 = lengths
        self.fstart: I64 = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        self.passes: list[_Pass] = []
        base = 0
        for p, code in enumerate(self.codes):
            digest = hashlib.sha256(_DOMAIN + bytes([p]) + seed).digest()
            ps = _Pass(code, int.from_bytes(digest, "little"))
            if code == 0:
                self._setup_halving(ps)
            else:
                self._setup_explicit(ps, 1 << code)
            ps.node_base = base
            base += ps.nblocks * ps.width
            self.passes.append(ps)
        if base > MAX_NODE_ID:
            raise InvalidParameter("key too long for the Cascade node numbering")
        self.total_nodes = base
        self.node_bases: I64 = np.array([ps.node_base for ps in self.passes] + [base],
                                        np.int64)

    def _setup_explicit(self, ps: _Pass, k: int) -> None:
        nb = np.maximum(1, -(-self.flen // k))
        ps.fblk = np.concatenate(([0], np.cumsum(nb))).astype(np.int64)
        ps.nblocks = int(ps.fblk[-1])
        ps.blk_frame = np.repeat(np.arange(self.nframes, dtype=np.int64), nb)
        within = np.arange(ps.nblocks, dtype=np.int64) - ps.fblk[ps.blk_frame]
        ps.blk_len = np.repeat(self.flen // nb, nb) + (within < np.repeat(self.flen % nb, nb))
        self._set_depth(ps)

    def _setup_halving(self, ps: _Pass) -> None:
        ps.labels = ps.random_words(self.n // 64 + 2)
        ps.labels[-1] = 0
        ones = np.diff(_prefix_counts(ps.labels, self.fstart))
        ps.nblocks = 2 * self.nframes
        ps.fblk = np.arange(0, ps.nblocks + 1, 2, dtype=np.int64)
        ps.blk_frame = np.repeat(np.arange(self.nframes, dtype=np.int64), 2)
        ps.blk_len = np.stack([self.flen - ones, ones], axis=1).reshape(-1)
        self._set_depth(ps)

    @staticmethod
    def _set_depth(ps: _Pass) -> None:
        ps.cstart = np.cumsum(ps.blk_len) - ps.blk_len
        longest = int(ps.blk_len.max())
        ps.depth = max(0, (longest - 1).bit_length())
        ps.width = 1 << (ps.depth + 1)

    def frame_of(self, xs: I64) -> I64:
        return (np.searchsorted(self.fstart, xs, side="right") - 1).astype(np.int64)

    def frame_slots(self, p: int, frames: I64) -> tuple[I64, I64]:
        """The bits of the given (sorted) frames in pass order, and their local slots.

        Returns key indices and slots ``(local block << D) | offset``, where local
        blocks number the blocks of just these frames from 0; both are ordered by
        slot.
        """
        ps = self.passes[p]
        depth = ps.depth
        lengths = self.flen[frames]
        keyidx = _ranges(self.fstart[frames], lengths)
        seg = np.cumsum(lengths) - lengths
        if ps.labels is not None:
            lab = _word_bits(ps.labels, keyidx)
            start = np.repeat(seg, lengths)
            ones = np.cumsum(lab)
            ones -= np.repeat(ones[seg] - lab[seg], lengths)       # ones up to x in its frame
            pos = np.arange(keyidx.size, dtype=np.int64) - start   # x's index in its frame
            zeros = np.repeat(lengths - np.add.reduceat(lab, seg), lengths)
            # pass order within a frame: the label-0 bits, then the label-1 bits
            rank = np.where(lab == 1, zeros + ones - 1, pos - ones)
            order = np.empty_like(keyidx)
            order[start + rank] = keyidx
            second = (pos >= zeros).astype(np.int64)
            frame_local = np.repeat(np.arange(frames.size, dtype=np.int64), lengths)
            return order, ((2 * frame_local + second) << depth) | (pos - second * zeros)
        if ps.keys is None:
            ps.keys = ps.random_words(-(-self.n // 4)).view("<u2")[: self.n]
        keys = ps.keys
        out_idx = np.empty_like(keyidx)
        out_slot = np.empty_like(keyidx)
        nblk = ps.fblk[frames + 1] - ps.fblk[frames]
        local_fblk = np.cumsum(nblk) - nblk
        for m in np.unique(lengths).tolist():
            which = np.flatnonzero(lengths == m)
            sel = frames[which]
            rows = sel.size
            if int(sel[-1] - sel[0]) == rows - 1:
                first = int(self.fstart[sel[0]])
                k2d = keys[first:first + rows * m].reshape(rows, m)
            else:
                k2d = keys[keyidx[_ranges(seg[which], np.full(rows, m, np.int64))]]
                k2d = k2d.reshape(rows, m)
            order = np.argsort(k2d, axis=1, kind="stable")
            order += self.fstart[sel][:, None]
            nb = int(nblk[which[0]])
            q, r = divmod(m, nb)
            j = np.arange(m, dtype=np.int64)
            cut = r * (q + 1)
            pattern = np.where(j < cut, j // (q + 1), r + (j - cut) // q) << depth
            pattern |= np.where(j < cut, j % (q + 1), (j - cut) % q)
            slots = (local_fblk[which] << depth)[:, None] + pattern[None, :]
            if rows == frames.size:
                return order.reshape(-1), slots.reshape(-1)
            dest = _ranges(seg[which], np.full(rows, m, np.int64))
            out_idx[dest] = order.reshape(-1)
            out_slot[dest] = slots.reshape(-1)
        return out_idx, out_slot

    def halving_tops(self, p: int, words: U64) -> U8:
        """Both block parities of every frame of a halving pass, from the packed key."""
        lab = self.passes[p].labels
        assert lab is not None
        one = np.diff(_prefix_counts(words & lab, self.fstart)) & 1
        both = np.diff(_prefix_counts(words, self.fstart)) & 1
        return np.stack([both ^ one, one], axis=1).reshape(-1).astype(np.uint8)

    def top_reveal_mask(self, p: int) -> Bool:
        """Which top-level blocks' parities Alice sends (all but the last per frame for p>0)."""
        ps = self.passes[p]
        mask = np.ones(ps.nblocks, np.bool_)
        if p > 0:
            mask[ps.fblk[1:] - 1] = False
        return mask

    def top_count(self) -> int:
        return sum(int(self.top_reveal_mask(p).sum()) for p in range(len(self.passes)))


class _Tree:
    """A pass materialised frame by frame: the parity of every node of every block.

    ``par`` holds this party's parities.  Bob also keeps which key bit sits at each
    pass-order position (``order``: frame start + position in the frame's pass order),
    each key bit's leaf slot (``slot``), what Alice revealed (``ta``) and which nodes
    she revealed or he inferred (``known``).
    """

    __slots__ = ("known", "order", "par", "ready", "slot", "ta")

    def __init__(self, layout: _Layout, p: int, bob: bool) -> None:
        ps = layout.passes[p]
        nodes = ps.nblocks * ps.width
        self.par = np.zeros(nodes, np.uint8)
        self.ready = np.zeros(layout.nframes, np.bool_)
        self.slot = np.zeros(layout.n if bob else 0, np.int32)
        self.order = np.zeros(layout.n if bob else 0, np.int32)
        self.ta = np.zeros(nodes if bob else 0, np.uint8)
        self.known = np.zeros(nodes if bob else 0, np.bool_)

    def fill(self, layout: _Layout, p: int, bits: U8, frames: I64) -> I64:
        """Build the given (sorted, not yet ready) frames from ``bits``; return their blocks."""
        ps = layout.passes[p]
        depth = ps.depth
        leaves = 1 << depth
        keyidx, local = layout.frame_slots(p, frames)
        nblk = ps.fblk[frames + 1] - ps.fblk[frames]
        blocks = _ranges(ps.fblk[frames], nblk)
        rows: slice | I64
        if int(frames[-1] - frames[0]) == frames.size - 1:
            rows = slice(int(blocks[0]), int(blocks[-1]) + 1)
            where: slice | I64 = slice(int(layout.fstart[frames[0]]),
                                       int(layout.fstart[frames[-1] + 1]))
            slot = local + (blocks[0] << depth)
        else:
            rows = blocks
            where = _ranges(layout.fstart[frames], layout.flen[frames])
            shift = ps.fblk[frames] - (np.cumsum(nblk) - nblk)
            slot = local + (np.repeat(shift, layout.flen[frames]) << depth)
        if self.slot.size:
            self.order[where] = keyidx
            self.slot[keyidx] = slot
        sub = np.zeros((blocks.size, 2 * leaves), np.uint8)
        sub.reshape(-1)[local + ((local >> depth) << depth) + leaves] = bits[keyidx]
        for d in range(depth - 1, -1, -1):
            lo = 1 << d
            sub[:, lo:2 * lo] = sub[:, 2 * lo:4 * lo:2] ^ sub[:, 2 * lo + 1:4 * lo:2]
        self.par.reshape(ps.nblocks, 2 * leaves)[rows] = sub
        self.ready[frames] = True
        return blocks


def _node_start(ps: _Pass, idx: I64) -> tuple[I64, I64, I64]:
    """(block, depth, start offset within the block) of tree indices."""
    h = idx & (ps.width - 1)
    d = _bitlen(h) - 1
    start = (h - (np.int64(1) << d)) << (ps.depth - d)
    return idx >> (ps.depth + 1), d, start


# ----------------------------------------------------------------------------------
# checks of local arguments


def _seed_bytes(seed: bytes | int) -> bytes:
    if isinstance(seed, bool) or not isinstance(seed, (bytes, int)):
        raise InvalidParameter("seed must be bytes or a non-negative int")
    if isinstance(seed, int):
        if seed < 0:
            raise InvalidParameter("seed must be bytes or a non-negative int")
        seed = seed.to_bytes(max(1, (seed.bit_length() + 7) // 8), "little")
    if not 1 <= len(seed) <= MAX_SEED_BYTES:
        raise InvalidParameter(f"seed must be 1..{MAX_SEED_BYTES} bytes")
    return bytes(seed)


def _key_bits(bits: npt.ArrayLike) -> U8:
    arr = np.asarray(bits)
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidParameter("key must be a non-empty one-dimensional array of bits")
    if arr.size > MAX_KEY_BITS:
        raise InvalidParameter(f"key longer than {MAX_KEY_BITS} bits")
    if arr.dtype.kind not in "biu" or np.any((arr != 0) & (arr != 1)):
        raise InvalidParameter("key bits must be 0 or 1")
    return arr.astype(np.uint8)


def _check_schedule(codes: Sequence[int]) -> tuple[int, ...]:
    codes = tuple(int(c) for c in codes)
    if not 1 <= len(codes) <= MAX_PASSES:
        raise InvalidParameter(f"a schedule has 1..{MAX_PASSES} passes")
    if any(not 0 <= c <= 30 for c in codes):
        raise InvalidParameter("schedule codes are 0 (halving) or block-size exponents 1..30")
    if sum(1 for c in codes if c) > MAX_EXPLICIT_PASSES:
        raise InvalidParameter(f"at most {MAX_EXPLICIT_PASSES} explicit passes")
    return codes


def _groups(ids: I64, bases: I64) -> list[tuple[int, int, int]]:
    """Split sorted global node IDs into (pass, lo, hi) runs."""
    cuts = np.searchsorted(ids, bases)
    return [(p, int(cuts[p]), int(cuts[p + 1]))
            for p in range(bases.size - 1) if cuts[p + 1] > cuts[p]]


# ----------------------------------------------------------------------------------
# Alice


class CascadeAlice:
    """Alice's side: answers parity queries about her key.  Her key never changes."""

    def __init__(self, bits: npt.ArrayLike) -> None:
        self._bits = _key_bits(bits)
        self._layout: _Layout | None = None
        self._trees: list[_Tree | None] = []
        self._seq = 0
        self.leaked_bits = 0
        self.round_trips = 0

    @property
    def frames(self) -> int:
        """Number of frames (0 before the first request)."""
        return 0 if self._layout is None else self._layout.nframes

    def respond(self, request: CascadeRequest) -> CascadeResponse:
        """Answer one request from Bob; raises :class:`CascadeError` on a bad one."""
        if request.seq != self._seq:
            raise CascadeError("request out of sequence")
        if request.setup is not None:
            if self._layout is not None:
                raise CascadeError("a second first request")
            layout = self._layout_from(request.setup)
            reveal = layout.top_count()
        elif self._layout is None:
            raise CascadeError("the first request must carry the parameters")
        else:
            layout = self._layout
            reveal = 0
        ids = request.queries
        if self.leaked_bits + reveal + ids.size > self._bits.size:
            raise CascadeError("request would reveal more parities than the key has bits")
        if ids.size and int(ids[-1]) >= layout.total_nodes:
            raise CascadeError("query outside the key")
        _check_nodes(layout, ids)
        if request.setup is not None:
            self._layout = layout
            self._trees = [None] * len(layout.passes)
            answers = np.concatenate([self._tops(layout), self._answer(layout, ids)])
        else:
            answers = self._answer(layout, ids)
        self.leaked_bits += int(answers.size)
        self.round_trips += 1
        self._seq += 1
        return CascadeResponse(request.seq, answers.astype(np.uint8))

    def _layout_from(self, setup: CascadeSetup) -> _Layout:
        if setup.key_bits != self._bits.size:
            raise CascadeError("Bob's key length differs from Alice's")
        if not MIN_FRAME_BITS <= setup.frame_bits <= setup.key_bits:
            raise CascadeError("bad frame length")
        try:
            return _Layout(setup.key_bits, setup.frame_bits, setup.seed,
                           _check_schedule(setup.schedule))
        except InvalidParameter as exc:
            raise CascadeError(f"bad parameters: {exc}") from None

    def _tops(self, layout: _Layout) -> U8:
        """Alice's top-level block parities, in the order of the first response."""
        words = _pack_words(self._bits)
        every = np.arange(layout.nframes, dtype=np.int64)
        tops: list[U8] = []
        for p, ps in enumerate(layout.passes):
            if ps.code:
                tree = self._tree(layout, p, every)
                par = tree.par[np.arange(ps.nblocks, dtype=np.int64) * ps.width + 1]
            else:
                par = layout.halving_tops(p, words)
            tops.append(par[layout.top_reveal_mask(p)])
        return np.concatenate(tops).astype(np.uint8)

    def _tree(self, layout: _Layout, p: int, frames: I64) -> _Tree:
        tree = self._trees[p]
        if tree is None:
            tree = self._trees[p] = _Tree(layout, p, bob=False)
        missing = np.unique(frames[~tree.ready[frames]])
        if missing.size:
            tree.fill(layout, p, self._bits, missing)
        return tree

    def _answer(self, layout: _Layout, ids: I64) -> U8:
        out = np.zeros(ids.size, np.uint8)
        for p, lo, hi in _groups(ids, layout.node_bases):
            ps = layout.passes[p]
            idx = ids[lo:hi] - ps.node_base
            frames = ps.blk_frame[idx >> (ps.depth + 1)]
            out[lo:hi] = self._tree(layout, p, frames).par[idx]
        return out


def _check_nodes(layout: _Layout, ids: I64) -> None:
    """Refuse node IDs (sorted, below the total) that name no node inside a block."""
    for p, lo, hi in _groups(ids, layout.node_bases):
        ps = layout.passes[p]
        idx = ids[lo:hi] - ps.node_base
        if np.any((idx & (ps.width - 1)) == 0):
            raise CascadeError("query of a node that does not exist")
        blk, _, start = _node_start(ps, idx)
        if np.any(start >= ps.blk_len[blk]):
            raise CascadeError("query of a node outside its block")


# ----------------------------------------------------------------------------------
# Bob


class CascadeBob:
    """Bob's side: drives Cascade and corrects his key towards Alice's.

    ``bits``: Bob's sifted key (0/1; not modified).  ``qber``: the estimated error
    rate, which sets the block sizes.  ``seed``: public randomness for the
    permutations, fresh for every run (bytes of 1..64, or a non-negative int); it
    reaches Alice in the first request.  ``passes``: None for :func:`default_schedule`
    with its automatic number of passes, an int for that many passes of it, or a
    sequence of schedule codes (block-size exponent 1..30, or 0 for a halving pass; at
    most 8 explicit).  ``frame_bits``: frame length (default: the whole key is one
    frame).  ``concurrency``: the fraction of a frame's top-level blocks in one pass
    whose bisections may start together (passes after the first); 1 starts all of
    them (fewest round trips, slightly more leakage).

    After ``request()`` returns None: ``corrected`` (the key), ``leaked_bits``
    (parities Alice revealed, as counted by her), ``frame_leaked_bits`` (per frame),
    ``round_trips``, ``frames`` and ``frame_starts``, ``schedule``.
    """

    def __init__(self, bits: npt.ArrayLike, qber: float, seed: bytes | int,
                 passes: int | Sequence[int] | None = None, *,
                 frame_bits: int | None = None,
                 concurrency: float = DEFAULT_CONCURRENCY) -> None:
        self._bits = _key_bits(bits)
        n = self._bits.size
        if n < MIN_FRAME_BITS:
            raise InvalidParameter(f"key shorter than {MIN_FRAME_BITS} bits")
        fb = n if frame_bits is None else frame_bits
        if isinstance(fb, bool) or not isinstance(fb, int) or fb < MIN_FRAME_BITS:
            raise InvalidParameter(f"frame_bits must be an int >= {MIN_FRAME_BITS}")
        fb = min(fb, n)
        if passes is None or isinstance(passes, int):
            _check_count(qber, 1 if passes is None else passes)
            length = n // -(-n // fb)            # the shortest frame
            codes = default_schedule(float(qber), passes, length)
        else:
            _check_count(qber, 1)
            codes = _check_schedule(passes)
        self.qber = float(qber)
        self._seed = _seed_bytes(seed)
        self._layout = _Layout(n, fb, self._seed, codes)
        lay = self._layout
        self.schedule = codes
        npasses = len(codes)
        words = _pack_words(self._bits)
        self._trees: list[_Tree | None] = [None] * npasses
        self._ta_top: list[U8] = [np.zeros(0, np.uint8)] * npasses
        # halving passes not (yet) built for a frame: Bob's block parities, kept current
        self._halving = [p for p, ps in enumerate(lay.passes) if ps.code == 0]
        self._tb_halving = np.zeros((len(self._halving), 2 * lay.nframes), np.uint8)
        self._lab_words = np.zeros((len(self._halving), words.size), np.uint64)
        self._tb_top: list[U8 | None] = [None] * npasses
        for row, p in enumerate(self._halving):
            self._tb_halving[row] = lay.halving_tops(p, words)
            labels = lay.passes[p].labels
            assert labels is not None
            self._lab_words[row] = labels
            self._tb_top[p] = self._tb_halving[row]
        self._cur = np.full(lay.nframes, -1, np.int64)
        self._held = np.zeros(lay.nframes, np.bool_)
        if isinstance(concurrency, bool) or not isinstance(concurrency, (int, float)) \
                or not 0.0 < concurrency <= 1.0:
            raise InvalidParameter("concurrency must be in (0, 1]")
        self._limits: list[int | None] = [None]
        self._limits += [None if concurrency >= 1.0
                         else max(4, math.ceil(concurrency * int(ps.fblk[1] - ps.fblk[0])))
                         for ps in lay.passes[1:]]
        self._active: dict[int, I64] = {}
        self._pending: I64 = np.zeros(0, np.int64)
        self._state = "start"
        self._hello = False
        self._expect = 0
        self._seq = 0
        self.leaked_bits = 0
        self.round_trips = 0
        self.frame_leaked_bits: I64 = np.zeros(lay.nframes, np.int64)

    # -- public state ------------------------------------------------------------

    @property
    def corrected(self) -> U8:
        """Bob's key as corrected so far (equal to Alice's once finished, w.h.p.)."""
        return self._bits.copy()

    @property
    def done(self) -> bool:
        return self._state == "done"

    @property
    def frames(self) -> int:
        """Number of frames the key was cut into."""
        return self._layout.nframes

    @property
    def frame_starts(self) -> I64:
        """Start index of each frame, plus the key length at the end."""
        return self._layout.fstart.copy()

    # -- protocol ----------------------------------------------------------------

    def request(self) -> CascadeRequest | None:
        """The next request to send to Alice, or ``None`` when Cascade is finished."""
        if self._state == "done":
            return None
        if self._state == "wait":
            raise CascadeError("request() again before the response to the last one")
        hello = self._state == "start"
        setup = None
        if hello:
            lay = self._layout
            setup = CascadeSetup(lay.n, lay.frame_bits, self._seed, lay.codes)
            self._pending = np.zeros(0, np.int64)
            self._expect = lay.top_count()
        else:
            self._pending = self._queries()
            self._expect = int(self._pending.size)
        msg = CascadeRequest(self._seq, self._pending, setup)
        self._hello = hello
        self._state = "wait"
        self._seq += 1
        return msg

    def receive(self, response: CascadeResponse) -> None:
        """Take Alice's response to the last request."""
        if self._state != "wait":
            raise CascadeError("a response without an outstanding request")
        if response.seq != self._seq - 1:
            raise CascadeError("response to another request")
        count = response.parities.size
        if count != self._expect:
            raise CascadeError("response has the wrong number of parities")
        answers = response.parities
        self.round_trips += 1
        self.leaked_bits += count
        if self._hello:
            self._absorb_tops(answers)
            cand: dict[int, list[I64]] = {}
        else:
            cand = self._absorb_answers(answers)
            self._active = {}          # the nodes just answered are split now
        self._step(cand)
        self._state = "ready" if self._active else "done"

    # -- rounds ------------------------------------------------------------------

    def _absorb_tops(self, answers: U8) -> None:
        lay = self._layout
        pos = 0
        total: U8 = np.zeros(lay.nframes, np.uint8)
        for p, ps in enumerate(lay.passes):
            mask = lay.top_reveal_mask(p)
            cnt = int(mask.sum())
            ta = np.zeros(ps.nblocks, np.uint8)
            ta[mask] = answers[pos:pos + cnt]
            pos += cnt
            self.frame_leaked_bits += np.bincount(ps.blk_frame[mask], minlength=lay.nframes)
            sums = (np.add.reduceat(ta.astype(np.int64), ps.fblk[:-1]) & 1).astype(np.uint8)
            if p == 0:
                total = sums
            else:
                ta[ps.fblk[1:] - 1] = total ^ sums
            self._ta_top[p] = ta

    def _absorb_answers(self, answers: U8) -> dict[int, list[I64]]:
        lay = self._layout
        ids = self._pending
        cand: dict[int, list[I64]] = {}
        for p, lo, hi in _groups(ids, lay.node_bases):
            ps = lay.passes[p]
            t = self._trees[p]
            assert t is not None
            left = ids[lo:hi] - ps.node_base
            bit = answers[lo:hi]
            mask = ps.width - 1
            parent = (left & ~mask) | ((left & mask) >> 1)
            t.ta[left] = bit
            t.known[left] = True
            t.ta[left + 1] = t.ta[parent] ^ bit
            t.known[left + 1] = True
            self.frame_leaked_bits += np.bincount(ps.blk_frame[left >> (ps.depth + 1)],
                                                  minlength=lay.nframes)
            cand[p] = [left, left + 1]
        return cand

    def _queries(self) -> I64:
        lay = self._layout
        parts = []
        for p in sorted(self._active):
            idx = self._active[p]
            left = idx + (idx & (lay.passes[p].width - 1))
            parts.append(np.sort(left) + lay.passes[p].node_base)
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def _step(self, cand: dict[int, list[I64]]) -> None:
        while True:
            for p, idx in self._active.items():
                cand.setdefault(p, []).append(idx)
            self._active = self._settle(cand)
            cand = self._advance()
            if not cand:
                return

    def _ensure(self, p: int, frames: I64) -> _Tree:
        """Materialise pass ``p`` for the given frames (from Bob's current key)."""
        lay = self._layout
        ps = lay.passes[p]
        t = self._trees[p]
        if t is None:
            t = self._trees[p] = _Tree(lay, p, bob=True)
        missing = np.unique(frames[~t.ready[frames]])
        if missing.size:
            blocks = t.fill(lay, p, self._bits, missing)
            roots = blocks * ps.width + 1
            t.ta[roots] = self._ta_top[p][blocks]
            t.known[roots] = True
            self._normalize(p, roots)
        return t

    def _normalize(self, p: int, idx: I64) -> I64:
        """Replace nodes whose right half is padding by their left child (same parity)."""
        ps = self._layout.passes[p]
        t = self._trees[p]
        assert t is not None
        out = idx.copy()
        todo = np.arange(out.size)
        while todo.size:
            c = out[todo]
            blk, d, start = _node_start(ps, c)
            inner = d < ps.depth
            todo, c, blk, d, start = todo[inner], c[inner], blk[inner], d[inner], start[inner]
            empty = start + (np.int64(1) << (ps.depth - d - 1)) >= ps.blk_len[blk]
            todo, c = todo[empty], c[empty]
            child = c + (c & (ps.width - 1))
            t.ta[child] = t.ta[c]
            t.known[child] = t.known[c]
            out[todo] = child
        return out

    def _settle(self, cand: dict[int, list[I64]]) -> dict[int, I64]:
        """Flip every error found, follow the cascade, return the nodes to split next."""
        lay = self._layout
        nodes: dict[int, I64] = {}
        for p, parts in cand.items():
            nodes[p] = self._normalize(p, np.unique(np.concatenate(parts)))
        flipped = np.zeros(0, np.int64)
        while True:
            found = []
            for p, c in nodes.items():
                ps = lay.passes[p]
                t = self._trees[p]
                assert t is not None
                h = c & (ps.width - 1)
                odd_leaf = ((t.ta[c] ^ t.par[c]) == 1) & (h >= (1 << ps.depth))
                if odd_leaf.any():
                    leaf = c[odd_leaf]
                    blk = leaf >> (ps.depth + 1)
                    offset = leaf & ((1 << ps.depth) - 1)
                    if np.any(offset >= ps.blk_len[blk]):
                        raise CascadeError("Alice's parities are inconsistent")
                    found.append(t.order[ps.cstart[blk] + offset].astype(np.int64))
            if not found:
                break
            xs = np.unique(np.concatenate(found))
            if np.isin(xs, flipped).any():
                raise CascadeError("Alice's parities are inconsistent")
            flipped = np.concatenate([flipped, xs])
            for p, c in self._flip(xs).items():
                nodes[p] = np.union1d(nodes[p], c) if p in nodes else c
        active: dict[int, I64] = {}
        for p, c in nodes.items():
            ps = lay.passes[p]
            t = self._trees[p]
            assert t is not None
            h = c & (ps.width - 1)
            odd = ((t.ta[c] ^ t.par[c]) == 1) & (h < (1 << ps.depth))
            if odd.any():
                active[p] = c[odd]
        return active

    def _flip(self, xs: I64) -> dict[int, I64]:
        """Flip key bits; return, per pass already reached, the smallest known nodes
        that contain them (their parity just changed)."""
        lay = self._layout
        self._bits[xs] ^= 1
        frame = lay.frame_of(xs)
        reached = self._cur[frame]
        top = int(reached.max())
        out: dict[int, I64] = {}
        # frames built below are built from the flipped key: take readiness first
        ready_before = [None if t is None else t.ready[frame] for t in self._trees]
        if self._halving:
            # block parities of halving passes (stale, and unused, where a tree exists)
            lab = ((self._lab_words[:, xs >> 6] >> (xs & 63).astype(np.uint64))
                   & np.uint64(1)).astype(np.int64)
            rows = np.arange(len(self._halving))[:, None]
            np.bitwise_xor.at(self._tb_halving, (rows, 2 * frame[None, :] + lab), 1)
            for row, p in enumerate(self._halving):
                if p > top:
                    break
                t = self._trees[p]
                sel = reached >= p
                if t is not None:
                    sel &= ~t.ready[frame]
                if not sel.any():
                    continue
                blk = np.unique(2 * frame[sel] + lab[row, sel])
                odd = blk[(self._ta_top[p][blk] ^ self._tb_halving[row, blk]) == 1]
                if odd.size:
                    ps = lay.passes[p]
                    self._ensure(p, ps.blk_frame[odd])
                    out[p] = self._normalize(p, odd * ps.width + 1)
        for p, ps in enumerate(lay.passes):
            t = self._trees[p]
            ready = ready_before[p]
            if t is None or ready is None or not ready.any():
                continue
            depth = ps.depth
            s = t.slot[xs[ready]].astype(np.int64)
            leaf = s + ((s >> depth) << depth) + (1 << depth)
            base = leaf & ~np.int64(ps.width - 1)
            shifts = np.arange(depth + 1, dtype=np.int64)
            anc = base[:, None] | ((leaf & (ps.width - 1))[:, None] >> shifts[None, :])
            np.bitwise_xor.at(t.par, anc.reshape(-1), 1)
            sel = reached[ready] >= p
            if sel.any():
                a = anc[sel]
                first = np.argmax(t.known[a], axis=1)
                found = np.unique(a[np.arange(a.shape[0]), first])
                out[p] = np.union1d(out[p], found) if p in out else found
        return out

    def _advance(self) -> dict[int, list[I64]]:
        """Start new bisections in idle frames: further odd blocks of the current pass,
        else the odd blocks of the next pass with any.  Returns the nodes to evaluate."""
        lay = self._layout
        last = len(lay.passes) - 1
        busy = np.zeros(lay.nframes, np.bool_)
        for p, c in self._active.items():
            ps = lay.passes[p]
            busy[ps.blk_frame[c >> (ps.depth + 1)]] = True
        cand: dict[int, list[I64]] = {}
        # frames waiting in a pass whose other odd blocks were held back
        waiting = ~busy & self._held
        for p in np.unique(self._cur[waiting]).tolist():
            frames = np.flatnonzero(waiting & (self._cur == p)).astype(np.int64)
            self._held[frames] = False
            odd = self._odd_roots(p, frames)
            if odd.size:
                cand[p] = [odd]
                busy[lay.passes[p].blk_frame[odd >> (lay.passes[p].depth + 1)]] = True
        while True:
            idle = ~busy & (self._cur < last)
            if not idle.any():
                return cand
            p = int(self._cur[idle].min()) + 1
            ps = lay.passes[p]
            move = idle & (self._cur == p - 1)
            self._cur[move] = p
            frames = np.flatnonzero(move).astype(np.int64)
            tb = self._tb_top[p]
            if tb is not None:
                blk = 2 * frames
                odd = (self._ta_top[p][blk] ^ tb[blk]) | (self._ta_top[p][blk + 1] ^ tb[blk + 1])
                frames = frames[odd == 1]
                if not frames.size:
                    continue
            self._ensure(p, frames)
            odd_roots = self._odd_roots(p, frames)
            if odd_roots.size:
                cand[p] = [odd_roots]
                busy[ps.blk_frame[odd_roots >> (ps.depth + 1)]] = True

    def _odd_roots(self, p: int, frames: I64) -> I64:
        """Odd, not yet bisected top-level blocks of pass ``p`` in ``frames``
        (normalised): at most the pass's limit per frame; frames with more are marked
        as holding blocks back."""
        ps = self._layout.passes[p]
        t = self._trees[p]
        assert t is not None
        blocks = _ranges(ps.fblk[frames], ps.fblk[frames + 1] - ps.fblk[frames])
        roots = self._normalize(p, blocks * ps.width + 1)
        h = roots & (ps.width - 1)
        leaf = h >= (1 << ps.depth)
        split = np.zeros(roots.size, np.bool_)
        split[~leaf] = t.known[roots[~leaf] + h[~leaf]]     # left child known: bisected
        odd: I64 = roots[((t.ta[roots] ^ t.par[roots]) == 1) & ~split]
        limit = self._limits[p]
        if limit is None or not odd.size:
            return odd
        fr = ps.blk_frame[odd >> (ps.depth + 1)]
        first = np.searchsorted(fr, fr)              # odd is sorted by block, so by frame
        rank = np.arange(fr.size) - first
        self._held[fr[rank >= limit]] = True
        kept: I64 = odd[rank < limit]
        return kept

    # -- checks ------------------------------------------------------------------

    def unresolved_nodes(self) -> int:
        """Known nodes whose parity still disagrees with Alice's (0 when finished)."""
        count = 0
        for t in self._trees:
            if t is not None:
                count += int(np.count_nonzero(t.known & ((t.ta ^ t.par) == 1)))
        return count
