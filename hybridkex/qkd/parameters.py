"""Physical and protocol parameters of a decoy-state BB84 link.

Defaults are the GYS experiment (Gobby, Yuan, Shields, APL 84, 3762 (2004)) as used
by Ma, Qi, Zhao and Lo, PRA 72, 012326 (2005), the reference for the analytic key
rates in :mod:`hybridkex.qkd.analytic`.  docs/qkd.md explains each parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from hybridkex.errors import InvalidParameter

__all__ = ["FINITE_KEY_PRESET", "Eavesdropper", "LinkParameters", "finite_key_parameters"]


@dataclass(frozen=True)
class Eavesdropper:
    """An attack on the quantum channel.

    ``intercept-resend``: on a random ``fraction`` of pulses Eve measures in a random
    basis and resends a single photon in the state she found (on a pulse whose
    photon she did not detect she resends nothing).

    ``pns`` (photon-number splitting): Eve measures the photon number of every pulse
    (non-demolition), blocks a ``fraction`` of single-photon pulses, keeps one photon
    of every multi-photon pulse and forwards the rest over a lossless channel, so
    Bob's multi-photon gain rises while single-photon pulses are suppressed.  The
    decoy-state estimates are what catch this.
    """

    kind: str  # "intercept-resend" | "pns"
    fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("intercept-resend", "pns"):
            raise InvalidParameter("eavesdropper kind must be 'intercept-resend' or 'pns'")
        if not 0.0 <= self.fraction <= 1.0:
            raise InvalidParameter("eavesdropper fraction must be in [0, 1]")


@dataclass(frozen=True)
class LinkParameters:
    """Everything that determines a simulated link's statistics.

    Intensities are mean photon numbers per pulse; probabilities of choosing each
    intensity sum to one.  ``p_z`` is the probability of the Z (key) basis for both
    parties: 0.5 is standard BB84, larger values are efficient (biased) BB84.
    """

    distance_km: float = 25.0
    alpha_db_per_km: float = 0.21      # fibre attenuation
    eta_bob: float = 0.045             # Bob's detection efficiency incl. his optics
    y0: float = 1.7e-6                 # dark count (background) probability per pulse
    e_detector: float = 0.033          # misalignment: probability a photon hits the wrong detector
    mu: float = 0.48                   # signal intensity
    nu: float = 0.05                   # weak decoy intensity
    vacuum: float = 0.0                # vacuum decoy intensity
    p_mu: float = 0.8                  # probability of sending signal
    p_nu: float = 0.1                  # probability of sending weak decoy (vacuum: the rest)
    p_z: float = 0.5                   # probability of the Z basis (each party, independently)
    f_ec: float = 1.22                 # error-correction inefficiency assumed by the analytic model
    eve: Eavesdropper | None = field(default=None)

    def __post_init__(self) -> None:
        if self.distance_km < 0:
            raise InvalidParameter("distance must be non-negative")
        for name in ("eta_bob", "y0", "e_detector", "p_mu", "p_nu", "p_z"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InvalidParameter(f"{name} must be a probability")
        if self.p_mu + self.p_nu > 1.0 + 1e-12:
            raise InvalidParameter("p_mu + p_nu must not exceed 1")
        if not self.mu > self.nu >= self.vacuum >= 0.0:
            raise InvalidParameter("intensities must satisfy mu > nu >= vacuum >= 0")

    @property
    def p_vacuum(self) -> float:
        return max(0.0, 1.0 - self.p_mu - self.p_nu)

    @property
    def channel_transmittance(self) -> float:
        """t_AB = 10^(-alpha L / 10)."""
        return float(10.0 ** (-self.alpha_db_per_km * self.distance_km / 10.0))

    @property
    def eta(self) -> float:
        """Overall transmittance eta = t_AB * eta_Bob."""
        return self.channel_transmittance * self.eta_bob

    def at_distance(self, distance_km: float) -> LinkParameters:
        return replace(self, distance_km=distance_km)


#: Intensities and probabilities for finite-size distillation (Lim et al. 2014 bounds).
#: The GYS defaults above are the reference of the asymptotic analytic curves, but
#: their rare weak decoy (10%) and unbiased bases leave too few decoy and X-basis
#: counts for a positive finite key below ~1e10 pulses.  These values maximise the
#: finite key length at 25 km and 5e8 pulses (eps_sec 1e-10) over a grid of
#: mu, nu, p_mu, p_nu, p_z with the other GYS parameters fixed: about 1e5 bits.
FINITE_KEY_PRESET: dict[str, float] = {"mu": 0.4, "nu": 0.2, "p_mu": 0.4, "p_nu": 0.4, "p_z": 0.7}


def finite_key_parameters(**overrides: Any) -> LinkParameters:
    """GYS link parameters with :data:`FINITE_KEY_PRESET`, then ``overrides`` applied."""
    return replace(LinkParameters(), **{**FINITE_KEY_PRESET, **overrides})
