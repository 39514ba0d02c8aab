"""The fibre between the sites (a simulation): its loss and, optionally, an eavesdropper.

Photons survive the fibre independently with ``t = 10^(-alpha L / 10)``.  Behind the
fibre sits Bob's detector, whose efficiency ``eta_B`` the detector lets the fibre
apply on its behalf.  Without Eve, the fibre in turn lets the source apply its own
transmittance and the detector's (``t eta_B``, see :mod:`hybridkex.qkd.optics`) and
passes the light on unchanged.

With Eve (the models of :mod:`hybridkex.qkd.simulator`) the fibre asks the source to
apply nothing, because Eve sits at the fibre's input and sees the light before any
loss:

- ``intercept-resend``, fraction ``f``: each pulse with light is attacked with
  probability ``f``; Eve measures in a uniformly chosen basis (Alice's bit if it is
  Alice's basis, else a uniform bit) and resends one photon in her basis and bit, which
  then crosses the fibre (``t eta_B``).  Pulses not attacked cross as they are.
- ``pns``, fraction ``f``: Eve counts the photons.  A single photon is blocked with
  probability ``f``, else it crosses the fibre; of ``n >= 2`` photons she keeps one and
  sends the other ``n - 1`` over a lossless line, so only ``eta_B`` applies to them.

:class:`FibreStats` counts what Eve did, for the fibre's own report.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from hybridkex.errors import InvalidParameter
from hybridkex.qkd.optics.wire import PulseBlock
from hybridkex.qkd.parameters import Eavesdropper

__all__ = ["Fibre", "FibreStats", "transmittance"]


def transmittance(distance_km: float, alpha_db_per_km: float) -> float:
    """t = 10^(-alpha L / 10): the one formula, as in LinkParameters.channel_transmittance."""
    return float(10.0 ** (-alpha_db_per_km * distance_km / 10.0))


@dataclass
class FibreStats:
    """What crossed the fibre: pulses with light in and out, and Eve's work."""

    pulses_in: int = 0
    pulses_out: int = 0
    attacked: int = 0
    eve_knows: int = 0

    def reset(self) -> FibreStats:
        out = replace(self)
        self.pulses_in = self.pulses_out = self.attacked = self.eve_knows = 0
        return out


class Fibre:
    """One fibre of ``distance_km``, with the detector's efficiency ``eta_down`` behind it."""

    def __init__(self, distance_km: float, alpha_db_per_km: float, eta_down: float,
                 eve: Eavesdropper | None = None,
                 rng: np.random.Generator | None = None) -> None:
        if not 0.0 <= distance_km <= 10_000.0 or alpha_db_per_km < 0:
            raise InvalidParameter("fibre length must be 0..10000 km, its loss non-negative")
        if not 0.0 < eta_down <= 1.0:
            raise InvalidParameter("the downstream transmittance must be in (0, 1]")
        self.distance_km = distance_km
        self.eve = eve
        self.t = transmittance(distance_km, alpha_db_per_km)
        self.eta_down = eta_down
        self.rng = rng if rng is not None else np.random.default_rng()
        self.stats = FibreStats()

    @property
    def upstream_transmittance(self) -> float:
        """What the source may apply on the fibre's behalf (all of it, unless Eve listens)."""
        return 1.0 if self.eve is not None else max(self.t * self.eta_down, 1e-300)

    def transmit(self, block: PulseBlock) -> PulseBlock:
        """The light of ``block`` at the fibre's output (thinned for the detector too)."""
        self.stats.pulses_in += len(block.offset)
        if self.eve is None:
            self.stats.pulses_out += len(block.offset)
            return block
        rng = self.rng
        n = len(block.offset)
        basis, bit, photons = block.basis, block.bit, block.photons.astype(np.int64)
        out_photons = np.zeros(n, np.int64)
        out_state = block.state.copy()
        f = self.eve.fraction
        through = self.t * self.eta_down
        if self.eve.kind == "intercept-resend":
            attacked = rng.random(n) < f
            eve_basis = rng.integers(0, 2, size=n, dtype=np.uint8)
            same = eve_basis == basis
            eve_bit = np.where(same, bit, rng.integers(0, 2, size=n, dtype=np.uint8))
            resent = (rng.random(n) < through).astype(np.int64)
            out_photons = np.where(attacked, resent, rng.binomial(photons, through))
            out_state = np.where(attacked, (eve_basis << np.uint8(1)) | eve_bit,
                                 block.state).astype(np.uint8)
            self.stats.attacked += int(np.count_nonzero(attacked))
            self.stats.eve_knows += int(np.count_nonzero(attacked & same & (out_photons > 0)))
        elif self.eve.kind == "pns":
            single = photons == 1
            blocked = single & (rng.random(n) < f)
            out_photons = np.where(single, np.where(blocked, 0, rng.binomial(1, through, n)),
                                   rng.binomial(np.maximum(photons - 1, 0), self.eta_down))
            self.stats.attacked += int(np.count_nonzero(blocked | ~single))
            self.stats.eve_knows += int(np.count_nonzero(~single & (out_photons > 0)))
        else:  # pragma: no cover - Eavesdropper refuses other kinds
            raise InvalidParameter(f"unknown eavesdropper {self.eve.kind!r}")
        keep = out_photons > 0
        self.stats.pulses_out += int(np.count_nonzero(keep))
        return PulseBlock(block.train, block.number, block.start, block.slots,
                          block.offset[keep], np.minimum(out_photons[keep], 255).astype(
                              np.uint8), out_state[keep].astype(np.uint8))
