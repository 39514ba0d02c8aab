"""Alice's transmitter (a simulation): weak coherent pulses, of which only the light leaves.

Per pulse Alice chooses an intensity class ``k`` (signal, weak decoy, vacuum) with
probabilities ``p_k``, a basis (Z with ``p_z``) and a uniform bit; the pulse holds
Poisson(``mu_k``) photons.  The element downstream lets the source apply a
transmittance ``tau`` on its behalf (:mod:`hybridkex.qkd.optics`), so a pulse of class
``k`` leaves with Poisson(``mu_k tau``) photons, and only the pulses left with at least
one photon are emitted.

Sampling is exact and sparse, as in :mod:`hybridkex.qkd.simulator`: per block of ``L``
slots the number of pulses with light is Binomial(``L``, ``P(light)``), their slots a
uniform subset, each one's class from ``P(k | light)``, its photon number from the
zero-truncated Poisson law and its basis and bit as drawn; the dark slots are split
over (class, basis) by one multinomial draw.

Alice keeps her settings at the slots that held light.  Her settings at a dark slot
influenced nothing downstream (no photon left the source there), so they are drawn
only when Bob names such a slot (one of his dark counts): without replacement from that
block's multinomial counts, which gives them exactly the law they would have had if
drawn at emission (:meth:`AliceTrain.settings_at`).  Bob's detector never sees them.

Alice's bits, which become the key, come from the operating system
(:func:`~hybridkex.qkd.simulator.os_random_bits`), not from the generator whose other
draws (slots, classes, bases) sifting discloses.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from hybridkex.errors import InvalidParameter
from hybridkex.qkd.distillation.data import AliceData, alice_values
from hybridkex.qkd.errors import LinkAborted
from hybridkex.qkd.optics.wire import MAX_BLOCK_SLOTS, MAX_PHOTONS, TRAIN_ID_SIZE, PulseBlock
from hybridkex.qkd.parameters import LinkParameters
from hybridkex.qkd.simulator import os_random_bits

__all__ = ["RECORD_BYTES_PER_LIT_PULSE", "AliceTrain", "BitSource", "PulseSource"]

I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]
#: What Alice's record of a train holds per slot that left with light: its index (int64),
#: intensity class, basis and bit (a byte each).
RECORD_BYTES_PER_LIT_PULSE = 11
#: Where Alice's bits come from: ``count`` -> that many uniform bits, one per byte.
BitSource = Callable[[int], U8]


def _truncated_poisson_cdf(mean: float) -> npt.NDArray[np.float64]:
    """CDF over m = 1, 2, ... of Poisson(mean) conditioned on m >= 1 (tail negligible)."""
    if mean <= 0.0:
        return np.ones(1)
    m_max = min(MAX_PHOTONS, math.ceil(mean + 20.0 * math.sqrt(mean) + 40.0))
    m = np.arange(1, m_max + 1, dtype=np.float64)
    log_pmf = -mean + m * math.log(mean) - np.array([math.lgamma(v + 1.0) for v in m])
    pmf = np.exp(log_pmf)
    cdf = np.cumsum(pmf) / pmf.sum()
    cdf[-1] = 1.0
    return np.asarray(cdf, dtype=np.float64)


@dataclass
class _Block:
    """Alice's record of one block: her settings where light left, the dark slots' counts."""

    start: int
    slots: int
    index: I64
    intensity: U8
    basis: U8
    bit: U8
    dark: I64  # dark slots per (class, basis), index 2k + basis, not yet named by Bob


@dataclass(repr=False)
class AliceTrain:
    """One pulse train as Alice recorded it."""

    train: bytes
    slots: int
    sent: npt.NDArray[np.int64]  # pulses per class
    intensities: tuple[float, float, float]
    probabilities: tuple[float, float, float]
    blocks: list[_Block] = field(default_factory=list)
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    bits: BitSource = os_random_bits
    asked_up_to: int = -1

    @property
    def lit(self) -> int:
        """Slots that held light when they left the source."""
        return sum(len(b.index) for b in self.blocks)

    def settings_at(self, index: I64) -> tuple[U8, U8, U8]:
        """Alice's class, basis and bit at the (strictly increasing) slots ``index``.

        Dark slots get their settings drawn here, without replacement from the block's
        counts.  Calls may come in chunks, each beyond the last (as sifting reads Bob's
        announcement in pulse order); a slot at or before one already asked about is
        refused, so no slot is ever drawn twice.
        """
        if len(index) and int(index[0]) <= self.asked_up_to:
            raise LinkAborted("sifting names a pulse at or before one already disclosed")
        if len(index) and (int(index[0]) < 0 or int(index[-1]) >= self.slots):
            raise LinkAborted("sifting message announces invalid pulse indices")
        if len(index):
            self.asked_up_to = int(index[-1])
        n = len(index)
        intensity = np.zeros(n, np.uint8)
        basis = np.zeros(n, np.uint8)
        bit = np.zeros(n, np.uint8)
        starts = np.array([b.start for b in self.blocks], dtype=np.int64)
        owner = np.searchsorted(starts, index, side="right") - 1
        for number in np.unique(owner).tolist():
            block = self.blocks[number]
            mine = np.flatnonzero(owner == number)
            wanted = index[mine]
            pos = np.searchsorted(block.index, wanted)
            pos_clip = np.minimum(pos, max(len(block.index) - 1, 0))
            lit = (pos < len(block.index)) & (block.index[pos_clip] == wanted
                                             if len(block.index) else False)
            lit_at = mine[lit]
            intensity[lit_at] = block.intensity[pos[lit]]
            basis[lit_at] = block.basis[pos[lit]]
            bit[lit_at] = block.bit[pos[lit]]
            dark_at = mine[~lit]
            if not len(dark_at):
                continue
            if len(dark_at) > int(block.dark.sum()):
                raise LinkAborted("sifting message announces more dark slots than were sent")
            counts = self.rng.multivariate_hypergeometric(block.dark, len(dark_at))
            block.dark = block.dark - counts
            cells = self.rng.permutation(np.repeat(np.arange(6, dtype=np.uint8), counts))
            intensity[dark_at] = cells >> np.uint8(1)
            basis[dark_at] = cells & np.uint8(1)
            bit[dark_at] = self.bits(len(dark_at))
        return intensity, basis, bit

    def lookup(self, index: I64) -> U8:
        """Distillation's view (:class:`~hybridkex.qkd.distillation.data.AliceRecord`):
        :meth:`settings_at`, packed.  Every slot of the train has settings, so the answer
        is never None."""
        return alice_values(*self.settings_at(index))

    def alice_data(self) -> AliceData:
        """The record distillation starts from: this train, looked up as Bob's sifting
        messages name its slots."""
        sent = (float(self.sent[0]), float(self.sent[1]), float(self.sent[2]))
        return AliceData(detections=self, pulses_sent=self.slots, sent=sent,
                         intensities=self.intensities, probabilities=self.probabilities)


class PulseSource:
    """Alice's transmitter for a given downstream transmittance ``tau`` (see module doc).

    ``bits``: where her bits come from.  The default, the operating system, is the one
    for keys anyone uses; a test passes bits from a seeded generator to be reproducible.
    """

    def __init__(self, params: LinkParameters, tau: float,
                 rng: np.random.Generator | None = None, *,
                 bits: BitSource = os_random_bits) -> None:
        if not 0.0 < tau <= 1.0:
            raise InvalidParameter("the source's transmittance must be in (0, 1]")
        self.params = params
        self.tau = tau
        self.bits = bits
        self.rng = rng if rng is not None else np.random.default_rng(
            int.from_bytes(os.urandom(16), "big"))
        mus = (params.mu, params.nu, params.vacuum)
        p_class = np.array([params.p_mu, params.p_nu, params.p_vacuum])
        light = np.array([-math.expm1(-mu * tau) for mu in mus])
        self._p_light = float(np.dot(p_class, light))
        joint = p_class * light
        self._light_class = np.cumsum(joint / joint.sum()) if joint.sum() > 0 else np.ones(3)
        self._light_class[-1] = 1.0
        basis = np.array([params.p_z, 1.0 - params.p_z])
        dark = p_class * (1.0 - light)
        self._dark_cells = (np.outer(dark, basis) / dark.sum()).reshape(-1)
        self._photons = [_truncated_poisson_cdf(mu * tau) for mu in mus]
        self.intensities = (params.mu, params.nu, params.vacuum)
        self.probabilities = (params.p_mu, params.p_nu, params.p_vacuum)

    def new_train(self) -> AliceTrain:
        return AliceTrain(os.urandom(TRAIN_ID_SIZE), 0, np.zeros(3, np.int64),
                          self.intensities, self.probabilities,
                          rng=np.random.default_rng(self.rng.integers(0, 2**63)),
                          bits=self.bits)

    def block(self, train: AliceTrain, slots: int) -> PulseBlock:
        """The next ``slots`` slots of ``train``: recorded in it, and the light emitted."""
        if not 1 <= slots <= MAX_BLOCK_SLOTS:
            raise InvalidParameter(f"a block has 1..{MAX_BLOCK_SLOTS} slots")
        rng = self.rng
        n = int(rng.binomial(slots, self._p_light))
        offset = np.sort(rng.choice(slots, size=n, replace=False, shuffle=False)).astype(np.int64)
        klass = np.searchsorted(self._light_class, rng.random(n), side="right").astype(np.uint8)
        np.minimum(klass, 2, out=klass)
        basis = (rng.random(n) >= self.params.p_z).astype(np.uint8)
        bit = self.bits(n)  # key bits: never from the generator behind the bases
        photons = np.zeros(n, np.uint8)
        u = rng.random(n)
        for k in range(3):
            at = klass == k
            if at.any():
                cdf = self._photons[k]
                photons[at] = np.minimum(np.searchsorted(cdf, u[at], side="right"),
                                         len(cdf) - 1) + 1
        dark = np.asarray(rng.multinomial(slots - n, self._dark_cells), dtype=np.int64)
        start = train.slots
        train.blocks.append(_Block(start, slots, offset + start, klass, basis, bit, dark))
        train.sent += np.bincount(klass, minlength=3) + dark.reshape(3, 2).sum(axis=1)
        train.slots += slots
        return PulseBlock(train.train, len(train.blocks) - 1, start, slots,
                          offset.astype(np.uint32), photons, (basis << np.uint8(1)) | bit)
