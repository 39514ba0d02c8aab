"""Monte Carlo simulation of the optical layer of a decoy-state BB84 link.

This is a **simulation**: it draws, pulse by pulse, what Alice prepares and what
Bob's two detectors register on a link described by
:class:`~hybridkex.qkd.parameters.LinkParameters`.  A real QKD device replaces it
through the key store or the ETSI GS QKD 014 interface.

Physical model
--------------
Alice, per pulse: intensity class ``k`` (0 signal ``mu``, 1 weak decoy ``nu``,
2 vacuum decoy ``vacuum``) with probabilities ``p_mu``, ``p_nu``, ``p_vacuum``;
basis Z (0) with probability ``p_z``, else X (1); a uniform bit.  The pulse is a
phase-randomised weak coherent state, so its photon number is Poisson(intensity).

Channel and Bob: every photon independently survives the fibre with
``t_AB = 10^(-alpha L / 10)`` and is detected with ``eta_bob``; only the product
``eta = t_AB * eta_bob`` matters (binomial thinning).  Bob picks Z with
probability ``p_z``.  He has one detector per bit value.  In the matching basis
each photon goes to the detector of its bit with probability ``1 - e_detector``
and to the other with ``e_detector`` (misalignment); in the other basis to either
with probability 1/2.  Each detector also fires by itself (dark count,
background) with probability ``d = 1 - sqrt(1 - y0)`` per pulse, independently,
so a pulse carrying no photon clicks with probability exactly ``y0``
(``d = y0/2 + O(y0^2)``).  A double click counts as a detection with a uniformly
random bit (squashing), as in the analytic model.

Agreement with Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005).  With ``s = 1 - d``,
``a = eta k (1 - e_detector)`` and ``b = eta k e_detector`` the simulation's exact
gain and (matching-basis) error gain are::

    Q_k     = y0 + (1 - y0) (1 - e^{-eta k})
    E_k Q_k = (1 - s e^{-b}) (1 + s e^{-a}) / 2

Ma et al. write ``Q_k = Y0 + 1 - e^{-eta k}`` and
``E_k Q_k = Y0/2 + e_detector (1 - e^{-eta k})``.  The gains differ by
``y0 (1 - e^{-eta k})`` (a dark count coinciding with a photon is counted once
here, twice there), a relative difference below ``y0``.  For the error gain the
first- and second-order terms in ``eta k`` agree, double clicks included (a
double click, counted as an error half of the time, is exactly what makes the
second-order terms agree); what remains is third order in ``eta k`` plus terms of
order ``y0 eta k``.  With the GYS parameters (``eta mu <= 0.0216``) the relative
difference in ``E_k Q_k`` is below 3e-5 at every distance, far below anything a
test can resolve; it only shows on bright links (0.7 % at ``eta mu = 0.3``, 6 %
at ``eta mu = 0.9``).  tests/test_qkd_simulator.py checks the closed forms and the
simulated statistics against both.

Eavesdroppers (``LinkParameters.eve``)
--------------------------------------
``intercept-resend``, fraction ``f``: Eve sits at Alice's output.  On each pulse,
independently with probability ``f``, she measures all of its photons with ideal
detectors in a basis chosen uniformly (1/2 each, whatever ``p_z``).  In Alice's
basis she reads Alice's bit; in the other basis every photon gives a random
result, and a double click is squashed to a random bit, so her bit is uniform.  A
pulse with no photon (probability ``e^{-k}``) gives her nothing and she resends
nothing.  Otherwise she resends one photon in her basis and bit, and it crosses
the whole fibre, so it reaches Bob's detectors with probability ``eta``.  On
matching-basis detections the error rate rises from about ``e_detector`` to about
``e_detector + f/4`` (exactly: attacked detections have error
``1/4 + e_detector/2``, unattacked ``e_detector``, weighted by their gains
``eta (1 - e^{-k})`` and ``1 - e^{-eta k}``).  ``eve_knows`` marks detections of
attacked pulses where Eve measured in Alice's basis and got a photon: after the
basis announcement she knows that bit.

``pns`` (photon-number splitting), fraction ``f``: Eve measures the photon number
``n`` of every pulse without disturbing the encoding.  ``n = 0``: nothing.
``n = 1``: she blocks the pulse with probability ``f``, otherwise lets it go on
through the normal lossy fibre (``eta``).  ``n >= 2``: she keeps one photon in a
quantum memory and sends the other ``n - 1`` over a lossless channel, so each
reaches Bob's detectors with probability ``eta_bob``; after the basis
announcement she measures her photon in Alice's basis and knows the bit
(``eve_knows`` is true for every detection of a multi-photon pulse).  ``f`` is
taken literally; :func:`pns_matching_fraction` gives the ``f`` that leaves Bob's
signal gain ``Q_mu`` at its no-attack value (clipped to [0, 1]: beyond roughly
30 km with the GYS parameters even ``f = 1`` leaves ``Q_mu`` above its no-attack
value, so the gain alone would betray her).  The attack is invisible to the QBER
but shifts ``Q_nu`` against ``Q_mu``, which the decoy-state bound ``Y1^L``
detects.

How the sampling works (exact, and sparse)
------------------------------------------
Pulses are independent and identically distributed, and the photon numbers are
never recorded, so the simulator sums over them analytically.  Every pulse falls
into one *cell*: (intensity, Alice's basis, Bob's basis, Eve's branch, detector
pattern), where the pattern is "only the detector of Alice's bit clicked", "only
the other one", "both" or "none".  Each cell's probability is computed once per
run from the photon-number distribution of the branch (Poisson for the plain
channel; 0 or 1 photon after intercept-resend; ``n - 1`` given ``n >= 2`` for
PNS) by summing the per-photon thinning and routing described above.  Then, for
each chunk of ``L`` pulses: the number of detections ``D`` is
Binomial(``L``, P(detection)); their positions are a uniform random ``D``-subset;
each detection's cell is drawn from the cells' conditional distribution, and
Alice's bit (and the bit of a double click) uniformly; the ``L - D`` undetected
pulses are split over (intensity, basis) by one multinomial draw.  This is the
exact joint distribution of everything recorded, at a cost proportional to the
number of detections, so the Eve paths run as fast as the plain one.  The test
suite checks the cell probabilities against a direct per-photon simulation.

Reproducibility and blocks
--------------------------
The pulse stream is cut into chunks of :data:`CHUNK_PULSES`; chunk ``c`` draws
from ``PCG64(SeedSequence(seed, spawn_key=(c,)))``, always as a whole chunk (a
run that ends inside a chunk cuts it, the cut being the chunk's next draw).  The
detected pulses, indices and every recorded value, are therefore a function of
``(params, seed)`` and the pulse index alone: they depend neither on
``block_size`` nor on the length of the run (a shorter run is a prefix of a longer
one).  The run's total of pulses sent per class and basis does not depend on
``block_size`` either.  Only the per-block split of the *undetected* pulses of a
chunk cut by a block boundary is drawn afresh (multivariate hypergeometric, exact
in distribution); with ``block_size`` a multiple of :data:`CHUNK_PULSES` no block
boundary cuts a chunk and every block's counts are sums of whole chunks.  Memory is proportional
to the detections in one block.

Records
-------
Each :class:`SimulatedBlock` holds an :class:`AliceRecord` and a
:class:`BobRecord`: separate objects, sharing no arrays, for the two parties.
To keep memory flat, both hold only the pulses Bob detected (Alice's values at
those indices, plus her per-class, per-basis count of pulses sent); the protocol
must still have Bob announce which pulses he detected.  ``eve_knows`` is a
diagnostic for tests and reports and must never reach Alice or Bob.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from hybridkex.errors import InvalidParameter
from hybridkex.qkd.parameters import Eavesdropper, LinkParameters

__all__ = [
    "CHUNK_PULSES",
    "DECOY",
    "DEFAULT_BLOCK_SIZE",
    "SIGNAL",
    "VACUUM",
    "X_BASIS",
    "Z_BASIS",
    "AliceRecord",
    "BobRecord",
    "ExpectedRates",
    "SimulatedBlock",
    "SimulationStats",
    "expected_rates",
    "os_random_bits",
    "pns_matching_fraction",
    "simulate",
]

SIGNAL, DECOY, VACUUM = 0, 1, 2
Z_BASIS, X_BASIS = 0, 1
CHUNK_PULSES = 1 << 16
DEFAULT_BLOCK_SIZE = 1 << 22

# Detector patterns, relative to Alice's bit.
_RIGHT, _WRONG, _DOUBLE = 0, 1, 2

Float64Array = NDArray[np.float64]
Int64Array = NDArray[np.int64]
UInt8Array = NDArray[np.uint8]
BoolArray = NDArray[np.bool_]


# --------------------------------------------------------------------------- records


def _frozen(array: NDArray[np.generic]) -> None:
    array.flags.writeable = False


@dataclass(frozen=True, eq=False)
class AliceRecord:
    """What Alice holds about one block, restricted to the pulses Bob detected.

    ``index`` are global pulse indices (sorted); ``intensity`` (0 signal, 1 decoy,
    2 vacuum), ``basis`` (0 Z, 1 X) and ``bit`` her choices at those pulses.
    ``sent[k, basis]`` counts every pulse of the block she sent with that
    intensity class and basis, detected or not.
    """

    start: int
    pulses: int
    index: Int64Array
    intensity: UInt8Array
    basis: UInt8Array
    bit: UInt8Array
    sent: Int64Array


@dataclass(frozen=True, eq=False)
class BobRecord:
    """What Bob registered in one block: the detected pulses, his basis and bit."""

    start: int
    pulses: int
    index: Int64Array
    basis: UInt8Array
    bit: UInt8Array


@dataclass(frozen=True, eq=False)
class SimulatedBlock:
    """One block of the simulation.  ``eve_knows`` is a diagnostic (see module doc)."""

    alice: AliceRecord
    bob: BobRecord
    eve_knows: BoolArray | None


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class _Branch:
    """One way a pulse of a given intensity can travel (Eve's choices included).

    ``pmf[m]`` is the probability that ``m`` photons enter the part of the channel
    leading to Bob, each reaching his detectors with probability ``transmission``.
    The photons are prepared in Alice's basis and bit, unless Eve resent them in
    the other basis (``other_basis``) or with the wrong bit (``wrong_bit``).
    """

    weight: float
    pmf: Float64Array
    transmission: float
    other_basis: bool = False
    wrong_bit: bool = False
    eve_knows: bool = False


def _poisson_pmf(mean: float) -> Float64Array:
    """Poisson(mean) probabilities for 0..n_max, the tail beyond n_max negligible."""
    if mean == 0.0:
        return np.ones(1)
    n_max = math.ceil(mean + 20.0 * math.sqrt(mean) + 40.0)
    n = np.arange(n_max + 1, dtype=np.float64)
    log_pmf = -mean + n * math.log(mean) - np.array([math.lgamma(v + 1.0) for v in n])
    return np.asarray(np.exp(log_pmf), dtype=np.float64)


def _branches(eve: Eavesdropper | None, intensity: float, params: LinkParameters) -> list[_Branch]:
    eta, eta_bob = params.eta, params.eta_bob
    poisson = _poisson_pmf(intensity)
    nothing = np.ones(1)
    one = np.array([0.0, 1.0])
    if eve is None:
        return [_Branch(1.0, poisson, eta)]
    f = eve.fraction
    if eve.kind == "intercept-resend":
        p_photon = -math.expm1(-intensity)  # Eve's detectors see at least one photon
        return [
            _Branch(1.0 - f, poisson, eta),
            _Branch(f * (1.0 - p_photon), nothing, eta),
            _Branch(f * p_photon / 2, one, eta, eve_knows=True),  # Eve in Alice's basis
            _Branch(f * p_photon / 4, one, eta, other_basis=True),  # other basis, right bit
            _Branch(f * p_photon / 4, one, eta, other_basis=True, wrong_bit=True),
        ]
    # photon-number splitting
    if len(poisson) < 3:
        poisson = np.pad(poisson, (0, 3 - len(poisson)))
    p_multi = float(poisson[2:].sum())
    multi = np.zeros(len(poisson) - 1)
    if p_multi > 0.0:
        multi[1:] = poisson[2:] / p_multi  # Bob gets n - 1 photons given n >= 2
    return [
        _Branch(float(poisson[0]), nothing, eta),
        _Branch(float(poisson[1]) * (1.0 - f), one, eta),  # single photon let through
        _Branch(float(poisson[1]) * f, nothing, eta),  # single photon blocked
        _Branch(p_multi, multi, eta_bob, eve_knows=True),  # split, rest sent losslessly
    ]


def _reach_probability(pmf: Float64Array, x: float) -> float:
    """P(at least one of the m photons arrives), each independently with prob. x."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return float(pmf[1:].sum())
    m = np.arange(len(pmf), dtype=np.float64)
    return float(np.dot(pmf, -np.expm1(m * math.log1p(-x))))


def _patterns(branch: _Branch, q: float, dark: float) -> tuple[float, ...]:
    """P(right only), P(wrong only), P(double click), P(no click) for one branch.

    ``q`` is the probability that an arriving photon goes to the detector of
    Alice's bit.  Photons reaching the two detectors, and the two dark counts,
    are independent given the photon number; the sums over the photon number are
    done by :func:`_reach_probability`.
    """
    t = branch.transmission
    s = 1.0 - dark
    click_right = dark + s * _reach_probability(branch.pmf, t * q)
    click_wrong = dark + s * _reach_probability(branch.pmf, t * (1.0 - q))
    click_any = 1.0 - s * s * (1.0 - _reach_probability(branch.pmf, t))
    both = max(click_right + click_wrong - click_any, 0.0)
    return (max(click_right - both, 0.0), max(click_wrong - both, 0.0), both,
            max(1.0 - click_any, 0.0))


def _dark_probability(y0: float) -> float:
    """Per-detector dark count probability d with 1 - (1 - d)^2 = y0 exactly."""
    return -math.expm1(0.5 * math.log1p(-y0)) if y0 < 1.0 else 1.0


@dataclass(frozen=True)
class _Model:
    p_detect: float
    cdf: Float64Array            # over detected cells
    intensity: UInt8Array        # per detected cell
    alice_basis: UInt8Array
    bob_basis: UInt8Array
    pattern: UInt8Array
    eve_knows: BoolArray
    undetected: Float64Array     # P(class k, basis a | not detected), index 2k + a
    has_eve: bool


def _build_model(params: LinkParameters) -> _Model:
    dark = _dark_probability(params.y0)
    classes = ((params.mu, params.p_mu), (params.nu, params.p_nu),
               (params.vacuum, params.p_vacuum))
    basis_p = (params.p_z, 1.0 - params.p_z)
    e_det = params.e_detector
    probs: list[float] = []
    cols: list[tuple[int, int, int, int, bool]] = []
    undetected = np.zeros(6)
    for k, (intensity, p_k) in enumerate(classes):
        if p_k <= 0.0:
            continue
        branches = _branches(params.eve, intensity, params)
        for a in (Z_BASIS, X_BASIS):
            for b in (Z_BASIS, X_BASIS):
                w_ab = p_k * basis_p[a] * basis_p[b]
                if w_ab <= 0.0:
                    continue
                for br in branches:
                    weight = w_ab * br.weight
                    if weight <= 0.0:
                        continue
                    photon_basis = a ^ int(br.other_basis)
                    # P(an arriving photon goes to the detector of Alice's bit)
                    q = 0.5 if b != photon_basis else e_det if br.wrong_bit else 1.0 - e_det
                    pats = _patterns(br, q, dark)
                    for pattern in (_RIGHT, _WRONG, _DOUBLE):
                        if pats[pattern] > 0.0:
                            probs.append(weight * pats[pattern])
                            cols.append((k, a, b, pattern, br.eve_knows))
                    undetected[2 * k + a] += weight * pats[3]
    total_detected = math.fsum(probs)
    total = total_detected + float(undetected.sum())
    p = np.array(probs, dtype=np.float64)
    cdf = np.cumsum(p) / total_detected if probs else np.zeros(0)
    if probs:
        cdf[-1] = 1.0
    table = np.array([c[:4] for c in cols], dtype=np.uint8).reshape(-1, 4)
    return _Model(
        p_detect=min(total_detected / total, 1.0),
        cdf=cdf,
        intensity=table[:, 0].copy(),
        alice_basis=table[:, 1].copy(),
        bob_basis=table[:, 2].copy(),
        pattern=table[:, 3].copy(),
        eve_knows=np.array([c[4] for c in cols], dtype=np.bool_),
        undetected=undetected / undetected.sum() if undetected.sum() > 0 else undetected,
        has_eve=params.eve is not None,
    )


@dataclass(frozen=True)
class ExpectedRates:
    """What a pulse of the simulated link yields on average (per pulse sent).

    ``detection``: P(Bob clicks).  ``matched[b]``: P(a click where both chose basis
    ``b``).  ``qber[b]``: the error rate of those matched clicks (double clicks count
    as an error half of the time, as the squashing makes them), Eve included.
    """

    detection: float
    matched: tuple[float, float]
    qber: tuple[float, float]


def expected_rates(params: LinkParameters) -> ExpectedRates:
    """The exact per-pulse expectations of the simulation under ``params``: the cell
    probabilities the sampler draws from, summed (see the module docstring)."""
    _check_params(params)
    model = _build_model(params)
    cells = np.diff(model.cdf, prepend=0.0) * model.p_detect
    matched, qber = [], []
    for basis in (Z_BASIS, X_BASIS):
        same = (model.alice_basis == basis) & (model.bob_basis == basis)
        total = float(cells[same].sum())
        wrong = float(cells[same & (model.pattern == _WRONG)].sum()
                      + 0.5 * cells[same & (model.pattern == _DOUBLE)].sum())
        matched.append(total)
        qber.append(wrong / total if total > 0.0 else math.nan)
    return ExpectedRates(model.p_detect, (matched[0], matched[1]), (qber[0], qber[1]))


def _class_gains(params: LinkParameters) -> Float64Array:
    """P(detection | intensity class) under params (Eve included); internal."""
    gains = np.zeros(3)
    dark = _dark_probability(params.y0)
    for k, intensity in enumerate((params.mu, params.nu, params.vacuum)):
        for br in _branches(params.eve, intensity, params):
            gains[k] += br.weight * (1.0 - _patterns(br, 1.0, dark)[3])
    return gains


def pns_matching_fraction(params: LinkParameters) -> float:
    """The PNS blocking fraction that leaves Bob's signal gain ``Q_mu`` unchanged.

    Bob's signal gain is linear in the fraction of single-photon pulses Eve
    blocks; this solves for the value that matches the no-attack gain, clipped to
    [0, 1] (1 when even blocking every single-photon pulse leaves the gain high).
    Use it as ``Eavesdropper("pns", fraction=pns_matching_fraction(params))``.
    """
    _check_params(params)
    honest = float(_class_gains(_with_eve(params, None))[SIGNAL])
    keep = float(_class_gains(_with_eve(params, Eavesdropper("pns", 0.0)))[SIGNAL])
    block = float(_class_gains(_with_eve(params, Eavesdropper("pns", 1.0)))[SIGNAL])
    if keep <= block:
        return 0.0
    return min(max((keep - honest) / (keep - block), 0.0), 1.0)


def _with_eve(params: LinkParameters, eve: Eavesdropper | None) -> LinkParameters:
    return replace(params, eve=eve)


def _check_params(params: LinkParameters) -> None:
    if not isinstance(params, LinkParameters):
        raise InvalidParameter("params must be a LinkParameters")
    values = [params.distance_km, params.alpha_db_per_km, params.eta_bob, params.y0,
              params.e_detector, params.mu, params.nu, params.vacuum, params.p_mu,
              params.p_nu, params.p_z]
    if not all(math.isfinite(float(v)) for v in values):
        raise InvalidParameter("link parameters must be finite numbers")
    if params.alpha_db_per_km < 0:
        raise InvalidParameter("fibre attenuation must be non-negative")
    if params.eve is not None and not isinstance(params.eve, Eavesdropper):
        raise InvalidParameter("eve must be an Eavesdropper or None")


def _count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool):
        raise InvalidParameter(f"{name} must be an integer")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidParameter(f"{name} must be an integer") from None
    if number < minimum:
        raise InvalidParameter(f"{name} must be at least {minimum}")
    return int(number)


# --------------------------------------------------------------------------- sampling


class _Chunk:
    """The detections of one chunk, and the pool of its undetected pulses."""

    __slots__ = ("alice_basis", "bit", "bob_basis", "bob_bit", "eve_knows", "intensity",
                 "length", "pool", "position", "rng", "start")

    def __init__(self, model: _Model, seed: int, number: int, length: int) -> None:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed,
                                                                          spawn_key=(number,))))
        self.rng, self.start, self.length = rng, number * CHUNK_PULSES, length
        detections = int(rng.binomial(length, model.p_detect)) if model.cdf.size else 0
        if detections:
            position = np.asarray(rng.choice(length, size=detections, replace=False,
                                             shuffle=False), dtype=np.int64)
            position.sort()
            cell = np.searchsorted(model.cdf, rng.random(detections), side="right")
            np.minimum(cell, model.cdf.size - 1, out=cell)
            coins = rng.integers(0, 4, size=detections, dtype=np.uint8)
        else:
            position = np.zeros(0, dtype=np.int64)
            cell = np.zeros(0, dtype=np.intp)
            coins = np.zeros(0, dtype=np.uint8)
        self.position = position
        self.intensity = model.intensity[cell]
        self.alice_basis = model.alice_basis[cell]
        self.bob_basis = model.bob_basis[cell]
        self.bit = coins & np.uint8(1)
        pattern = model.pattern[cell]
        flip = (pattern == _WRONG) | ((pattern == _DOUBLE) & (coins >= 2))
        self.bob_bit = self.bit ^ flip.astype(np.uint8)
        self.eve_knows: BoolArray | None = model.eve_knows[cell] if model.has_eve else None
        self.pool = np.asarray(rng.multinomial(length - detections, model.undetected),
                               dtype=np.int64)

    def cut(self, length: int) -> None:
        """Keep only the first ``length`` pulses (the end of the run)."""
        if length >= self.length:
            return
        kept = int(np.searchsorted(self.position, length, side="left"))
        for name in ("position", "intensity", "alice_basis", "bob_basis", "bit", "bob_bit"):
            setattr(self, name, getattr(self, name)[:kept])
        if self.eve_knows is not None:
            self.eve_knows = self.eve_knows[:kept]
        self.pool = np.asarray(self.rng.multivariate_hypergeometric(self.pool, length - kept),
                               dtype=np.int64)
        self.length = length


@dataclass
class _Piece:
    index: Int64Array
    intensity: UInt8Array
    alice_basis: UInt8Array
    bit: UInt8Array
    bob_basis: UInt8Array
    bob_bit: UInt8Array
    eve_knows: BoolArray | None


class _Stream:
    def __init__(self, model: _Model, seed: int, pulses: int) -> None:
        self._model, self._seed, self._pulses = model, seed, pulses
        self._chunk: _Chunk | None = None
        self._offset = 0     # pulses of the current chunk already handed out
        self._cursor = 0     # detections of the current chunk already handed out
        self._next = 0       # number of the next chunk to generate

    def take(self, count: int, start: int) -> SimulatedBlock:
        pieces: list[_Piece] = []
        sent = np.zeros(6, dtype=np.int64)
        while count > 0:
            chunk = self._chunk
            if chunk is None or self._offset == chunk.length:
                # always a whole chunk, even at the end of the run: the first n pulses
                # are then the same whatever the total number of pulses
                chunk = self._chunk = _Chunk(self._model, self._seed, self._next, CHUNK_PULSES)
                chunk.cut(self._pulses - chunk.start)
                self._next += 1
                self._offset = self._cursor = 0
            used = min(count, chunk.length - self._offset)
            lo = self._cursor
            hi = int(np.searchsorted(chunk.position, self._offset + used, side="left"))
            classes = chunk.intensity[lo:hi] * np.uint8(2) + chunk.alice_basis[lo:hi]
            sent += np.bincount(classes, minlength=6)
            undetected = used - (hi - lo)
            if self._offset + used == chunk.length:
                drawn = chunk.pool
            else:
                drawn = np.asarray(chunk.rng.multivariate_hypergeometric(chunk.pool,
                                                                         undetected),
                                   dtype=np.int64)
            chunk.pool = chunk.pool - drawn
            sent += drawn
            pieces.append(_Piece(
                chunk.position[lo:hi] + chunk.start,
                chunk.intensity[lo:hi], chunk.alice_basis[lo:hi], chunk.bit[lo:hi],
                chunk.bob_basis[lo:hi], chunk.bob_bit[lo:hi],
                None if chunk.eve_knows is None else chunk.eve_knows[lo:hi]))
            self._offset += used
            self._cursor = hi
            count -= used
        return _assemble(pieces, sent, start, self._model.has_eve)


def _join(arrays: list[NDArray[np.generic]], dtype: type[np.generic]) -> NDArray[np.generic]:
    if not arrays:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(arrays).astype(dtype, copy=False)


def _assemble(pieces: list[_Piece], sent: Int64Array, start: int, has_eve: bool) -> SimulatedBlock:
    pulses_in_block = int(sent.sum())
    index = np.asarray(_join([p.index for p in pieces], np.int64), dtype=np.int64)
    alice = AliceRecord(
        start=start,
        pulses=pulses_in_block,
        index=index,
        intensity=np.asarray(_join([p.intensity for p in pieces], np.uint8), dtype=np.uint8),
        basis=np.asarray(_join([p.alice_basis for p in pieces], np.uint8), dtype=np.uint8),
        bit=np.asarray(_join([p.bit for p in pieces], np.uint8), dtype=np.uint8),
        sent=sent.reshape(3, 2),
    )
    bob = BobRecord(
        start=start,
        pulses=pulses_in_block,
        index=index.copy(),
        basis=np.asarray(_join([p.bob_basis for p in pieces], np.uint8), dtype=np.uint8),
        bit=np.asarray(_join([p.bob_bit for p in pieces], np.uint8), dtype=np.uint8),
    )
    knows: BoolArray | None = None
    if has_eve:
        knows = np.asarray(_join([p.eve_knows for p in pieces if p.eve_knows is not None],
                                 np.bool_), dtype=np.bool_)
        _frozen(knows)
    for record in (alice, bob):
        for value in vars(record).values():
            if isinstance(value, np.ndarray):
                _frozen(value)
    return SimulatedBlock(alice=alice, bob=bob, eve_knows=knows)


def simulate(params: LinkParameters, pulses: int, seed: int,
             block_size: int = DEFAULT_BLOCK_SIZE) -> Iterator[SimulatedBlock]:
    """Simulate ``pulses`` pulses of the link, yielding one :class:`SimulatedBlock`
    per ``block_size`` pulses (the last block may be shorter).

    ``seed`` (a non-negative integer) determines everything: the same arguments
    give the same detections whatever ``block_size`` (see the module docstring).
    Invalid arguments raise :class:`~hybridkex.errors.InvalidParameter` here, not
    when the iterator is first advanced.
    """
    _check_params(params)
    total = _count(pulses, "pulses", 0)
    seed_value = _count(seed, "seed", 0)
    size = _count(block_size, "block_size", 1)
    model = _build_model(params)
    return _blocks(model, total, seed_value, size)


def _blocks(model: _Model, pulses: int, seed: int, block_size: int) -> Iterator[SimulatedBlock]:
    stream = _Stream(model, seed, pulses)
    start = 0
    while start < pulses:
        count = min(block_size, pulses - start)
        yield stream.take(count, start)
        start += count


# --------------------------------------------------------------------------- statistics


def _zeros(*shape: int) -> Int64Array:
    return np.zeros(shape, dtype=np.int64)


@dataclass
class SimulationStats:
    """Aggregate counts over blocks, for tests and reports (uses both parties' data).

    ``sent[k, a]``: pulses sent with intensity class ``k`` and Alice's basis ``a``;
    ``detected[k, a, b]``, ``errors[k, a, b]`` (Bob's bit differs from Alice's) and
    ``eve_known[k, a, b]``: detections by Alice's and Bob's bases.
    """

    pulses: int = 0
    sent: Int64Array = field(default_factory=lambda: _zeros(3, 2))
    detected: Int64Array = field(default_factory=lambda: _zeros(3, 2, 2))
    errors: Int64Array = field(default_factory=lambda: _zeros(3, 2, 2))
    eve_known: Int64Array = field(default_factory=lambda: _zeros(3, 2, 2))

    def add(self, block: SimulatedBlock) -> None:
        alice, bob = block.alice, block.bob
        if not np.array_equal(alice.index, bob.index):
            raise InvalidParameter("Alice's and Bob's records do not cover the same pulses")
        cell = (alice.intensity.astype(np.intp) * 4 + alice.basis.astype(np.intp) * 2
                + bob.basis.astype(np.intp))
        self.pulses += alice.pulses
        self.sent += alice.sent
        self.detected += np.bincount(cell, minlength=12).reshape(3, 2, 2)
        self.errors += np.bincount(cell[alice.bit != bob.bit], minlength=12).reshape(3, 2, 2)
        if block.eve_knows is not None:
            self.eve_known += np.bincount(cell[block.eve_knows], minlength=12).reshape(3, 2, 2)

    @classmethod
    def from_blocks(cls, blocks: Iterable[SimulatedBlock]) -> SimulationStats:
        stats = cls()
        for block in blocks:
            stats.add(block)
        return stats

    def gain(self, intensity: int) -> float:
        """Q_k: detections per pulse sent with intensity class ``intensity``."""
        sent = int(self.sent[intensity].sum())
        return int(self.detected[intensity].sum()) / sent if sent else math.nan

    def sifted(self, intensity: int | None = None, basis: int | None = None) -> int:
        """Detections where both chose the same basis (optionally one class / basis)."""
        return int(self._matching(self.detected, intensity, basis))

    def sifted_errors(self, intensity: int | None = None, basis: int | None = None) -> int:
        return int(self._matching(self.errors, intensity, basis))

    def qber(self, intensity: int | None = None, basis: int | None = None) -> float:
        """Error rate on matching-basis detections (E_k when ``intensity`` is given)."""
        sifted = self.sifted(intensity, basis)
        return self.sifted_errors(intensity, basis) / sifted if sifted else math.nan

    def sifting_ratio(self) -> float:
        """Fraction of detections kept by sifting (p_z^2 + (1 - p_z)^2 expected)."""
        total = int(self.detected.sum())
        return self.sifted() / total if total else math.nan

    @staticmethod
    def _matching(counts: Int64Array, intensity: int | None, basis: int | None) -> int:
        classes = range(3) if intensity is None else (intensity,)
        bases = (Z_BASIS, X_BASIS) if basis is None else (basis,)
        return sum(int(counts[k, b, b]) for k in classes for b in bases)


def os_random_bits(count: int) -> NDArray[np.uint8]:
    """``count`` uniform bits from the operating system's generator, one per byte.

    Key bits of a round whose keys are deposited come from here, never from the
    simulator's PCG64: that generator's other outputs (detections, bases, intensity
    classes) are disclosed in sifting, and PCG64 is not built to keep its state secret
    from someone who sees its outputs.
    """
    return np.unpackbits(np.frombuffer(os.urandom((count + 7) // 8), dtype=np.uint8))[:count]
