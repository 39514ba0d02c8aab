"""What a distillation round starts from and what it reports.

:class:`AliceData` and :class:`BobData` are each end's own record of the quantum phase;
neither end ever sees the other's.  :class:`DistillationConfig` holds the security and
protocol choices both ends must share.  :class:`DistillationResult` is what one end
reports: the round's figures and, unless it aborted, the final key, split into the part
kept to authenticate the next round and the 256-bit units for the key stores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from hybridkex.keydelivery.keys import UNIT_BYTES
from hybridkex.qkd import decoy
from hybridkex.qkd.ends import Role

__all__ = [
    "AliceData",
    "BobData",
    "DistillationConfig",
    "DistillationResult",
    "RoundMetrics",
    "Sifted",
]

Bits = npt.NDArray[np.uint8]
Mask = npt.NDArray[np.bool_]
Z, X = 0, 1  # basis values in the records and on the wire


@dataclass(frozen=True)
class DistillationConfig:
    """Security and protocol choices; both sites must use the same."""

    finite_key: bool = True
    eps_sec: float = 1e-10
    eps_cor: float = 1e-15
    qber_abort: float = 0.11          # above this Z QBER no key can be distilled with Cascade
    z_sample_fraction: float = 0.05   # Z bits disclosed to estimate the QBER for Cascade
    z_sample_minimum: int = 256
    f_ec_estimate: float = 1.1        # for the early abort before reconciliation only
    auth_reserve_bits: int = 4096     # final-key bits kept to authenticate the next round


@dataclass(repr=False)
class AliceData:
    """What Alice recorded: her choices at each pulse that Bob may announce, and her totals.

    The simulator keeps Alice's choices only at pulses that produced a click, which is
    all she keeps once Bob has announced them; she still looks them up by Bob's
    announced indices and refuses an index she has no record of.
    """

    index: npt.NDArray[np.int64]
    intensity: Bits       # 0 signal, 1 weak decoy, 2 vacuum
    basis: Bits           # 0 Z, 1 X
    bit: Bits
    pulses_sent: int
    sent: tuple[float, float, float]   # pulses sent per intensity class
    intensities: tuple[float, float, float]
    probabilities: tuple[float, float, float]


@dataclass(repr=False)
class BobData:
    """What Bob's detectors registered: pulse index, his basis, his bit."""

    index: npt.NDArray[np.int64]
    basis: Bits
    bit: Bits


@dataclass(frozen=True, repr=False)
class Sifted:
    """One end's view after sifting, at every pulse Bob detected: Alice's intensity class
    (public from here on), this end's own bit, and where the two bases matched."""

    intensity: Bits
    bit: Bits
    z: Mask
    x: Mask


@dataclass(kw_only=True)
class RoundMetrics:
    """The figures of one distillation round, as both parties can report them."""

    detections: int = 0
    sifted_bits: int = 0
    qber: float = 0.0
    qber_x: float = 0.0
    y1_lower: float = 0.0
    e1_upper: float = 0.0
    ec_leaked_bits: int = 0
    ec_efficiency: float = 0.0
    ec_round_trips: int = 0
    pa_input_bits: int = 0
    secret_bits: int = 0

    def record_reconciliation(self, n: int, leaked: int, errors: int,
                              round_trips: int) -> None:
        """QBER of the key block (errors Cascade corrected) and what correcting it cost."""
        self.qber = errors / n if n else 0.0
        self.ec_leaked_bits, self.ec_round_trips = leaked, round_trips
        shannon = n * decoy.h2(self.qber)
        self.ec_efficiency = leaked / shannon if shannon else float("inf")


@dataclass(kw_only=True)
class DistillationResult(RoundMetrics):
    """What one end reports for a round; no key material when the round aborted.

    ``key_material`` is the final key after the authentication reserve: one 256-bit
    unit per key ID, in order.  Which site may take which unit is the link's business
    (:func:`hybridkex.qkd.link.unit_initiator`), not distillation's.
    """

    role: Role
    auth_reserve: bytes = field(default=b"", repr=False)
    key_material: bytes = field(default=b"", repr=False)
    key_ids: tuple[str, ...] = ()
    aborted: bool = False
    abort_reason: str = ""
    bound: decoy.FiniteKeyResult | None = None

    def keep(self, final: Bits, reserve_bits: int, key_ids: tuple[str, ...]) -> None:
        """Both ends confirmed ``final``: its first ``reserve_bits`` authenticate the next
        round, the units after them go to the key stores under ``key_ids``."""
        material = np.packbits(final).tobytes()
        reserve_bytes = reserve_bits // 8
        self.auth_reserve = material[:reserve_bytes]
        self.key_material = material[reserve_bytes:reserve_bytes + UNIT_BYTES * len(key_ids)]
        self.key_ids = key_ids

    def discard(self, reason: str) -> None:
        """The round aborted: keep no key, say why."""
        self.auth_reserve, self.key_material, self.key_ids = b"", b"", ()
        self.aborted, self.abort_reason = True, reason
