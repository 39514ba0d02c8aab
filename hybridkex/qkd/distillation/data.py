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
from hybridkex.qkd.distillation.detections import DetectionLog
from hybridkex.qkd.ends import Role

__all__ = [
    "AliceData",
    "BobData",
    "DistillationConfig",
    "DistillationResult",
    "RoundMetrics",
    "Sifted",
    "SiftedBuilder",
    "alice_values",
    "bob_values",
    "split_alice_values",
    "split_bob_values",
]

Bits = npt.NDArray[np.uint8]
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
    announced indices and refuses an index she has no record of.  ``detections`` packs
    her intensity class, basis and bit at each of those pulses (:func:`alice_values`);
    sifting drains it.
    """

    detections: DetectionLog
    pulses_sent: int
    sent: tuple[float, float, float]   # pulses sent per intensity class
    intensities: tuple[float, float, float]
    probabilities: tuple[float, float, float]


@dataclass(repr=False)
class BobData:
    """What Bob's detectors registered: the pulses that clicked, with his basis and bit at
    each packed by :func:`bob_values`; sifting drains it."""

    detections: DetectionLog


def alice_values(intensity: Bits, basis: Bits, bit: Bits) -> Bits:
    """Alice's choices at a pulse as one :class:`DetectionLog` value."""
    return (intensity | (basis << 2) | (bit << 3)).astype(np.uint8)


def split_alice_values(values: Bits) -> tuple[Bits, Bits, Bits]:
    """(intensity class, basis, bit) from :func:`alice_values`."""
    one = np.uint8(1)
    return values & np.uint8(3), (values >> np.uint8(2)) & one, (values >> np.uint8(3)) & one


def bob_values(basis: Bits, bit: Bits) -> Bits:
    """Bob's basis and bit at a pulse as one :class:`DetectionLog` value."""
    return (basis | (bit << 1)).astype(np.uint8)


def split_bob_values(values: Bits) -> tuple[Bits, Bits]:
    """(basis, bit) from :func:`bob_values`."""
    one = np.uint8(1)
    return values & one, (values >> one) & one


@dataclass(frozen=True, repr=False)
class Sifted:
    """One end's view after sifting.  ``intensity``: Alice's intensity class at every
    pulse Bob detected (public from here on; the gains per class come from it).  Then,
    where the two bases matched, this end's bits and their intensity classes, per
    basis, in pulse order.  Detections in different bases are not kept: they carry
    nothing any later step needs."""

    intensity: Bits
    z_bits: Bits
    z_intensity: Bits
    x_bits: Bits
    x_intensity: Bits

    @property
    def matched(self) -> int:
        return len(self.z_bits) + len(self.x_bits)


class SiftedBuilder:
    """Collects :class:`Sifted` chunk by chunk, as sifting goes through the detections."""

    def __init__(self) -> None:
        self._parts: dict[str, list[Bits]] = {name: [] for name in (
            "intensity", "z_bits", "z_intensity", "x_bits", "x_intensity")}
        self.detections = 0

    def add(self, intensity: Bits, bit: Bits, match: npt.NDArray[np.bool_],
            basis: Bits) -> None:
        """One chunk: Alice's intensity class, this end's bit, whether the bases matched
        and the basis, at each announced detection."""
        z, x = match & (basis == Z), match & (basis == X)
        for name, part in (("intensity", intensity), ("z_bits", bit[z]),
                           ("z_intensity", intensity[z]), ("x_bits", bit[x]),
                           ("x_intensity", intensity[x])):
            self._parts[name].append(np.asarray(part, dtype=np.uint8))
        self.detections += len(intensity)

    def finish(self, result: RoundMetrics) -> Sifted:
        """The sifted data; records the detections and sifted bits in ``result``."""
        joined: dict[str, Bits] = {}
        for name in list(self._parts):
            parts = self._parts.pop(name)  # each field's chunks go as it is joined
            joined[name] = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
            del parts
        sifted = Sifted(**joined)
        result.detections, result.sifted_bits = self.detections, sifted.matched
        return sifted


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
