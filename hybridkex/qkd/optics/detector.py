"""Bob's receiver (a simulation): basis choice, two detectors, misalignment, dark counts.

Bob's detection efficiency ``eta_B`` is applied upstream on his behalf (the detector
asks for it in its :class:`~hybridkex.qkd.optics.wire.DeviceHello`), so every photon
that reaches :meth:`Detector.detect` is one his detectors would register.  Per slot
Bob picks Z with probability ``p_z``.  He has one detector per bit value: in the
photons' basis each photon goes to the detector of their bit with probability
``1 - e_detector`` (misalignment), in the other basis to either with 1/2.  Each
detector fires by itself with ``d = 1 - sqrt(1 - y0)`` in every slot, lit or not, so an
empty slot clicks with probability exactly ``y0``.  A double click is a detection with
a uniformly random bit (squashing).  This is the model of :mod:`hybridkex.qkd.simulator`
applied photon by photon.

What leaves the detector is what Bob's distillation end gets: the slots that clicked,
his basis and his bit there.  The polarisations of the light are not kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from hybridkex.errors import InvalidParameter
from hybridkex.qkd.distillation.data import BobData, bob_values
from hybridkex.qkd.distillation.detections import DetectionLog
from hybridkex.qkd.optics.wire import PulseBlock

__all__ = ["BobTrain", "Detector"]

I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]


@dataclass(repr=False)
class BobTrain:
    """The clicks of one train as Bob's detectors registered them."""

    train: bytes
    slots: int = 0
    blocks: int = 0
    detections: DetectionLog = field(default_factory=DetectionLog)

    def bob_data(self) -> BobData:
        return BobData(detections=self.detections)


class Detector:
    """Bob's two detectors with their efficiency, dark counts and misalignment."""

    def __init__(self, eta_bob: float, y0: float, e_detector: float, p_z: float,
                 rng: np.random.Generator | None = None) -> None:
        for name, value in (("eta_bob", eta_bob), ("y0", y0), ("e_detector", e_detector),
                            ("p_z", p_z)):
            if not 0.0 <= value <= 1.0:
                raise InvalidParameter(f"{name} must be a probability")
        if eta_bob <= 0.0:
            raise InvalidParameter("a detector with no efficiency detects nothing")
        self.eta_bob, self.y0, self.e_detector, self.p_z = eta_bob, y0, e_detector, p_z
        self.dark = -math.expm1(0.5 * math.log1p(-y0)) if y0 < 1.0 else 1.0
        self.rng = rng if rng is not None else np.random.default_rng()

    def detect(self, block: PulseBlock, record: BobTrain) -> None:
        """Register ``block``'s slots (lit and dark) into ``record``."""
        rng = self.rng
        n = len(block.offset)
        photons = block.photons.astype(np.int64)
        photon_basis, photon_bit = block.basis, block.bit
        basis = (rng.random(n) >= self.p_z).astype(np.uint8)
        q = np.where(basis == photon_basis, 1.0 - self.e_detector, 0.5)
        to_bit = rng.binomial(photons, q)
        right = (to_bit > 0) | (rng.random(n) < self.dark)
        wrong = (photons - to_bit > 0) | (rng.random(n) < self.dark)
        coin = rng.integers(0, 2, size=n, dtype=np.uint8)
        bit = np.where(right & wrong, coin, np.where(right, photon_bit, photon_bit ^ 1))
        lit_click = right | wrong
        # dark counts in the slots without light: Binomial(empty, y0), uniform among them
        offset = block.offset.astype(np.int64)
        empty = block.slots - n
        darks = int(rng.binomial(empty, self.y0)) if empty else 0
        rank = np.sort(rng.choice(empty, size=darks, replace=False)) if darks else np.zeros(
            0, np.int64)
        shifted = offset - np.arange(n, dtype=np.int64)
        dark_slot = rank + np.searchsorted(shifted, rank, side="right")
        dark_basis = (rng.random(darks) >= self.p_z).astype(np.uint8)
        dark_bit = rng.integers(0, 2, size=darks, dtype=np.uint8)
        index = np.concatenate([offset[lit_click], dark_slot]) + block.start
        order = np.argsort(index, kind="stable")
        record.detections.append(index[order], bob_values(
            np.concatenate([basis[lit_click], dark_basis])[order],
            np.concatenate([bit[lit_click].astype(np.uint8), dark_bit])[order]))
        record.slots += block.slots
        record.blocks += 1
