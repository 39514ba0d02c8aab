"""What a distillation round starts from and what it reports.

:class:`AliceData` and :class:`BobData` are each end's own record of the quantum phase;
neither end ever sees the other's.  :class:`DistillationConfig` holds the security and
protocol choices both ends must share.  :class:`DistillationResult` is what one end
reports: the round's figures and, unless it aborted, the final key, split into the part
kept to authenticate the next round and the 256-bit units for the key stores.

A figure the round did not measure (it ended before the step that measures it) is
``None``, never zero: a QBER of zero reads as "no eavesdropper".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from hybridkex.keydelivery.keys import UNIT_BYTES
from hybridkex.qkd import decoy
from hybridkex.qkd.distillation.detections import DetectionLog
from hybridkex.qkd.ends import Role

__all__ = [
    "AliceData",
    "AliceRecord",
    "BobData",
    "DistillationConfig",
    "DistillationResult",
    "PATerms",
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
    eps_cor: float = 1e-15            # the most the verification hash may let different keys pass
    qber_abort: float = 0.11          # above this Z QBER no key can be distilled with Cascade
    z_sample_fraction: float = 0.05   # Z bits disclosed to estimate the QBER for Cascade
    z_sample_minimum: int = 256
    f_ec_estimate: float = 1.1        # for the early abort before reconciliation only
    auth_reserve_bits: int = 4096     # final-key bits kept to authenticate the next round


class AliceRecord(Protocol):
    """Where Alice looks up her choices at the pulses Bob announces.

    A :class:`DetectionLog` in the one-process link; the emulated source's record of a
    pulse train between two hosts (:class:`hybridkex.qkd.optics.source.AliceTrain`),
    which draws its settings at a dark slot only when Bob names it.  Either way sifting
    asks in pulse order, each chunk beyond the last.
    """

    def lookup(self, index: npt.NDArray[np.int64]) -> Bits | None:
        """Alice's packed values (:func:`alice_values`) at ``index``, or None if a pulse
        there has no record."""
        ...


@dataclass(repr=False)
class AliceData:
    """What Alice recorded: her choices at each pulse that Bob may announce, and her totals.

    The simulator keeps Alice's choices only at pulses that produced a click, which is
    all she keeps once Bob has announced them; she still looks them up by Bob's
    announced indices and refuses an index she has no record of.  ``detections`` packs
    her intensity class, basis and bit at each of those pulses (:func:`alice_values`);
    sifting drains it.
    """

    detections: AliceRecord
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


@dataclass(frozen=True)
class PATerms:
    """Every term of a block's secret key length, and the security budget behind it.

    Finite-size (Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014), keyed in Z)::

        length = floor(s_Z0 + s_Z1 (1 - h(phi_Z)) - lambda_EC - t_ver - c_conf
                       - 6 log2(21 / eps_sec))

    Asymptotic (Ma et al. 2005 bounds, no finite-size terms)::

        length = floor(s_Z1 (1 - h(e1)) - lambda_EC - t_ver - c_conf)

    ``t_ver`` is the whole verification tag (it is disclosed before privacy
    amplification); ``c_conf`` the privacy amplification output bits disclosed to confirm
    the key and then discarded.  Those cost their length and nothing more: the
    collision-entropy proof of the leftover hash lemma (Renner, PhD thesis, 2005)
    bounds the distance from uniform of the kept part, given the disclosed part as
    classical side information, by the same ``2^-(H - length - c_conf)/2`` as the whole
    output (the disclosed part's collision term only subtracts).

    Lim et al. split ``eps_sec`` into ``eps_terms`` = 21 equal parts
    (``eps_per_term``: the Hoeffding bounds, the smoothing, the leftover hash).
    ``eps_cor`` is the collision bound of the verification hash (Poly1305,
    ``8 ceil(L/16) / 2^106`` for its L-byte input): the chance that different keys pass.
    The round is ``eps_sec + eps_cor``-secure.
    """

    bound: str
    s_z0_lower: float | None      # not part of the asymptotic bound
    s_z1_lower: float
    phi_z_upper: float
    ec_leaked_bits: float
    ec_leaked_estimated: bool     # True: the round ended before reconciliation measured it
    verification_tag_bits: int
    confirmation_bits: int
    finite_size_bits: float | None
    eps_sec: float | None
    eps_terms: int | None
    eps_per_term: float | None
    eps_cor: float
    length: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(kw_only=True)
class RoundMetrics:
    """The figures of one distillation round, as both parties can report them.

    ``qber`` is always a QBER that was measured, and ``qber_basis`` says which:
    ``"Z-key"`` (the errors reconciliation corrected in the key block) once
    reconciliation ran, else ``"Z-sample"`` (the disclosed Z sample, which decides the
    abort).  ``qber_x`` is the X basis, measured on every disclosed X bit.
    ``y1_lower`` and ``e1_upper`` are the bounds on the single-photon yield and, in
    finite-size mode, the phase error rate phi_Z^U (asymptotically e1^U, the same
    quantity in the limit); ``pa_terms`` the secret length's terms.
    """

    detections: int | None = None
    sifted_bits: int | None = None
    qber: float | None = None
    qber_basis: str | None = None
    qber_x: float | None = None
    x_bits: int | None = None            # the X bits behind qber_x
    qber_z_sample: float | None = None
    z_sample_bits: int | None = None     # the Z bits behind qber_z_sample
    y1_lower: float | None = None
    e1_upper: float | None = None
    ec_leaked_bits: int | None = None
    ec_efficiency: float | None = None
    ec_round_trips: int | None = None
    pa_input_bits: int | None = None
    secret_bits: int = 0
    pa_terms: PATerms | None = None

    def record_estimation(self, qber_z_sample: float, z_sample_bits: int, qber_x: float,
                          x_bits: int) -> None:
        """The error rates the disclosed bits showed, and how many bits each is from (a
        rate from no bits at all is not measured)."""
        self.z_sample_bits, self.x_bits = z_sample_bits, x_bits
        self.qber_z_sample = qber_z_sample if z_sample_bits else None
        self.qber_x = qber_x if x_bits else None
        if self.qber_z_sample is not None:
            self.qber, self.qber_basis = self.qber_z_sample, "Z-sample"

    def record_reconciliation(self, n: int, leaked: int, errors: int,
                              round_trips: int) -> None:
        """QBER of the key block (errors Cascade corrected) and what correcting it cost."""
        self.qber = errors / n if n else None
        self.qber_basis = "Z-key" if n else self.qber_basis
        self.ec_leaked_bits, self.ec_round_trips = leaked, round_trips
        shannon = n * decoy.h2(errors / n) if n else 0.0
        self.ec_efficiency = leaked / shannon if shannon else None


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
        self.secret_bits = 0
        self.aborted, self.abort_reason = True, reason
