"""Asymptotic key rate of decoy-state BB84 against distance: the yardstick for the simulator.

The simulated link must reproduce these curves for the same
:class:`~hybridkex.qkd.parameters.LinkParameters`; these curves must in turn
reproduce the published ones (Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005), "MQZL"),
which the tests pin.  Everything is per pulse sent by Alice and in the asymptotic
limit (infinitely many pulses, so no statistical fluctuation and a negligible
fraction of pulses spent on testing); finite blocks are
:func:`hybridkex.qkd.decoy.finite_key`'s business.

Parameters used (all from ``LinkParameters``; GYS defaults: Gobby, Yuan, Shields,
APL 84, 3762 (2004), as tabulated by MQZL)

``distance_km`` L, ``alpha_db_per_km`` alpha (0.21)
    fibre loss; channel transmittance ``t_AB = 10^(-alpha L/10)``.
``eta_bob`` (0.045)
    Bob's detection efficiency including his optics; overall transmittance
    ``eta = t_AB eta_Bob``.  The security analysis attributes *all* loss, Bob's
    included, to Eve (GLLP), so only ``eta`` enters the rate.
``y0`` (1.7e-6)
    background (dark count) probability per pulse; such a click is right or wrong
    with equal chance (``e0 = 1/2``).
``e_detector`` (0.033)
    probability that a photon arrives at the wrong detector (misalignment).
``mu`` (0.48), ``nu`` (0.05), ``vacuum`` (0)
    signal, weak decoy and vacuum intensities (mean photon number per pulse).
    0.48 is MQZL's optimum for the GYS set (their Eq. (12) at f = 1.22).
``f_ec`` (1.22)
    error-correction inefficiency: a code reveals ``f H2(E)`` bits per sifted bit.
``p_z`` (0.5)
    basis choice probability of each party; both bases give key, so the sifting
    factor is ``q = p_z^2 + (1 - p_z)^2`` (1/2 for standard BB84).
``p_mu``, ``p_nu``
    do not enter the asymptotic rate (the decoy fraction is negligible there).

Formulas (MQZL Eqs. (5)-(11), the channel model they invert)

* gain at intensity k: ``Q_k = Y0 + 1 - exp(-eta k)`` (MQZL Eq. (10), which drops
  the ``Y0 (1 - exp(-eta k))`` double count of a dark count coinciding with a photon;
  kept so that the published distances are reproduced exactly);
* error: ``E_k Q_k = e0 Y0 + e_det (1 - exp(-eta k))`` (MQZL Eq. (11));
* single photons: ``Y1 = 1 - (1 - Y0)(1 - eta) = Y0 + eta - Y0 eta``,
  ``e1 = (e0 Y0 + e_det eta) / Y1`` (MQZL Eqs. (7), (9)).

Key rate per pulse (GLLP: Gottesman, Lo, Lütkenhaus, Preskill, QIC 4, 325 (2004);
with decoy states: Lo, Ma, Chen, PRL 94, 230504 (2005))

``R = q {-Q_mu f H2(E_mu) + Q1 [1 - H2(e1)]}``, ``Q1 = Y1 mu e^-mu``, with Y1, e1 from

* ``"infinite-decoy"``: the exact Y1, e1 above (what infinitely many decoys learn);
* ``"vacuum-weak"``: MQZL's vacuum + weak bounds on the expected ``Q_nu``, ``E_nu``
  (:func:`hybridkex.qkd.decoy.y1_lower`, :func:`~hybridkex.qkd.decoy.e1_upper`);
* ``"no-decoy"``: GLLP with every multi-photon pulse assumed detected and
  insecure, ``Delta = (1 - e^-mu - mu e^-mu) / Q_mu``,
  ``R = q {-Q_mu f H2(E_mu) + Q_mu (1 - Delta) [1 - H2(E_mu/(1 - Delta))]}``;
* ``"single-photon"``: an ideal single-photon source, where ``Q1 = Y1`` and every
  error is a single-photon error: ``R = q {-Y1 f H2(e1) + Y1 [1 - H2(e1)]}``.

A negative value means the bounds prove no key; :func:`key_rate` reports 0 then
(a link cannot produce negative key), while the sign search of
:func:`max_distance_km` uses the unclipped value.

Fundamental bound: :func:`plob_bound` (Pirandola, Laurenza, Ottaviani, Banchi,
Nat. Commun. 8, 15043 (2017)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, get_args

from hybridkex.errors import InvalidParameter
from hybridkex.qkd import decoy
from hybridkex.qkd.distillation.data import DistillationConfig
from hybridkex.qkd.parameters import LinkParameters

__all__ = [
    "CASCADE_EFFICIENCY",
    "MODELS",
    "PUBLISHED_MODELS",
    "Z_SAMPLE_FRACTION",
    "Model",
    "ProtocolCounts",
    "RatePoint",
    "as_run_from_counts",
    "as_run_rate",
    "best_mu",
    "expected_gain",
    "expected_protocol_counts",
    "expected_qber",
    "key_rate",
    "max_distance_km",
    "plob_bound",
    "sifting_factor",
    "single_photon_error",
    "single_photon_yield",
    "sweep",
]

Model = Literal["infinite-decoy", "vacuum-weak", "no-decoy", "single-photon", "as-run"]
MODELS: tuple[Model, ...] = get_args(Model)
#: The published GLLP models (MQZL 2005), as opposed to "as-run", this protocol's own.
PUBLISHED_MODELS: tuple[Model, ...] = ("infinite-decoy", "vacuum-weak", "no-decoy",
                                       "single-photon")

#: Cascade's reconciliation efficiency f as the link runs it (10^5-bit frames): 1.04 to
#: 1.06 at QBER 1-5 % (hybridkex/qkd/distillation/cascade.py); a 25 km round reports
#: 1.057.  The "as-run" model charges this, not the GYS assumption ``f_ec`` = 1.22.
CASCADE_EFFICIENCY = 1.06

#: The share of Z-basis clicks the protocol discloses to estimate the QBER.
Z_SAMPLE_FRACTION = DistillationConfig.z_sample_fraction

#: Distance beyond which no model of a fibre link keys (0.21 dB/km: 420 dB).
_FAR_KM = 2000.0


_MODEL_BY_NAME: dict[str, Model] = {name: name for name in MODELS}


def _check_model(model: str) -> Model:
    try:
        return _MODEL_BY_NAME[model]
    except (KeyError, TypeError):
        raise InvalidParameter(
            f"unknown key-rate model {model!r}; choose one of {MODELS}"
        ) from None


def sifting_factor(params: LinkParameters) -> float:
    """Share of pulses kept after sifting; both bases carry key in the asymptotic model."""
    return params.p_z**2 + (1.0 - params.p_z) ** 2


def expected_gain(params: LinkParameters, intensity: float) -> float:
    """Probability that a pulse of mean photon number ``intensity`` makes Bob click."""
    if intensity < 0.0 or not math.isfinite(intensity):
        raise InvalidParameter("intensity must be a non-negative number")
    # -expm1(-x) is 1 - e^-x without the cancellation that would blur Y0 at small x.
    return min(params.y0 - math.expm1(-params.eta * intensity), 1.0)


def expected_qber(params: LinkParameters, intensity: float) -> float:
    """Bit error rate of the clicks at ``intensity`` (1/2 if only dark counts click)."""
    gain = expected_gain(params, intensity)
    if gain <= 0.0:
        return decoy.E0_BACKGROUND
    errors = decoy.E0_BACKGROUND * params.y0 - params.e_detector * math.expm1(
        -params.eta * intensity
    )
    return min(errors / gain, 1.0)


def single_photon_yield(params: LinkParameters) -> float:
    """Y1: a click on a one-photon pulse, from the photon or from the background."""
    return 1.0 - (1.0 - params.y0) * (1.0 - params.eta)


def single_photon_error(params: LinkParameters) -> float:
    """e1: the error rate of the clicks caused by one-photon pulses."""
    y1 = single_photon_yield(params)
    if y1 <= 0.0:
        return decoy.E0_BACKGROUND
    return (decoy.E0_BACKGROUND * params.y0 + params.e_detector * params.eta) / y1


@dataclass(frozen=True)
class Observables:
    """What a decoy-state experiment measures: gains and error rates per intensity.

    The analytic model fills these with expected values; the Monte Carlo simulation
    (:mod:`hybridkex.qkd.montecarlo`) with observed ones.  Both then go through
    :func:`rate_from_observables`, one implementation of each model's bound.
    """

    q_mu: float
    e_mu: float
    q_nu: float
    e_nu: float
    y0: float
    e0: float = decoy.E0_BACKGROUND


def rate_from_observables(params: LinkParameters, model: Model, obs: Observables,
                          sifting: float | None = None) -> float:
    """GLLP rate of a decoy model from gains and error rates (negative: no key proven).

    "infinite-decoy" and "single-photon" need the true single-photon yield, which
    only the analytic model knows; they are not computable from observables.
    """
    q = sifting_factor(params) if sifting is None else sifting
    f, mu = params.f_ec, params.mu
    q_mu, e_mu = obs.q_mu, obs.e_mu
    if model == "vacuum-weak":
        if params.vacuum != 0.0:
            raise InvalidParameter("the vacuum-weak model needs a true vacuum decoy (vacuum = 0)")
        y1_l = decoy.y1_lower(q_mu, obs.q_nu, obs.y0, mu, params.nu)
        e1_u = decoy.e1_upper(obs.e_nu, obs.q_nu, obs.y0, y1_l, params.nu, e0=obs.e0)
        return decoy.gllp_rate(q, q_mu, e_mu, decoy.q1_from_y1(y1_l, mu), e1_u, f)
    if model == "no-decoy":
        # GLLP with the worst case that every multi-photon pulse was detected.
        if q_mu <= 0.0:
            return 0.0
        multi = (1.0 - math.exp(-mu) - mu * math.exp(-mu)) / q_mu
        if multi >= 1.0:
            return -q * q_mu * f * decoy.h2(e_mu)
        untagged = q_mu * (1.0 - multi)
        e_untagged = min(e_mu / (1.0 - multi), decoy.E0_BACKGROUND)
        return decoy.gllp_rate(q, q_mu, e_mu, untagged, e_untagged, f)
    raise InvalidParameter(f"model {model!r} needs the true single-photon yield")


def _raw_rate(params: LinkParameters, model: Model) -> float:
    """The model's GLLP rate, negative where no key is proven (sign kept for searches)."""
    if model == "as-run":
        return as_run_rate(params)
    q = sifting_factor(params)
    f = params.f_ec
    if model == "single-photon":
        y1 = single_photon_yield(params)
        e1 = min(single_photon_error(params), decoy.E0_BACKGROUND)
        return decoy.gllp_rate(q, y1, e1, y1, e1, f)
    mu = params.mu
    q_mu = expected_gain(params, mu)
    e_mu = expected_qber(params, mu)
    if model == "infinite-decoy":
        y1 = single_photon_yield(params)
        e1 = min(single_photon_error(params), decoy.E0_BACKGROUND)
        return decoy.gllp_rate(q, q_mu, e_mu, decoy.q1_from_y1(y1, mu), e1, f)
    nu = params.nu
    expected = Observables(q_mu, e_mu, expected_gain(params, nu), expected_qber(params, nu),
                           params.y0)
    return rate_from_observables(params, model, expected)


_DECOY_MODELS = ("vacuum-weak", "as-run")


@dataclass(frozen=True)
class ProtocolCounts:
    """What the protocol counts, per intensity class (signal, weak decoy, vacuum): pulses
    sent, all clicks, the Z-basis matches kept for the key and their errors, the X-basis
    matches and their errors.  Expected values per pulse (:func:`as_run_rate`) or the
    counts of a simulated run (:mod:`hybridkex.qkd.montecarlo`) alike."""

    sent: tuple[float, float, float]
    detections: tuple[float, float, float]
    z_key: tuple[float, float, float]
    z_errors: tuple[float, float, float]
    x_matched: tuple[float, float, float]
    x_errors: tuple[float, float, float]


def as_run_from_counts(intensities: tuple[float, float, float], counts: ProtocolCounts,
                       f_ec: float = CASCADE_EFFICIENCY) -> float:
    """The asymptotic key length the protocol distils from ``counts`` (negative: none).

    This is what ``qkd simulate --asymptotic`` computes
    (:mod:`hybridkex.qkd.distillation.estimation`), with Cascade's leakage written as
    ``f h2(E_Z)`` per key bit: gains from every click, e1 bounded by the vacuum + weak
    bounds from the X-basis error rates, single photons credited only in the Z key,

        ``ell = sum_k n_Z,k min(1, Y1 k e^-k / Q_k) (1 - h2(e1)) - f n_Z h2(E_Z)``,

    over the signal and weak decoy classes ``k`` (the vacuum key bits are reconciled,
    so they leak, but credited nothing).
    """
    x_qber = [counts.x_errors[k] / counts.x_matched[k] if counts.x_matched[k] > 0
              else decoy.E0_BACKGROUND for k in range(3)]
    estimate = decoy.asymptotic_from_counts(
        counts.detections, [x_qber[k] * counts.detections[k] for k in range(3)],
        counts.sent, intensities)
    gains = (estimate.q_mu, estimate.q_nu)
    singles = math.fsum(
        counts.z_key[k] * min(1.0, estimate.y1_l * mu * math.exp(-mu) / gains[k])
        for k, mu in enumerate(intensities[:2]) if gains[k] > 0)
    key = math.fsum(counts.z_key)
    e_z = math.fsum(counts.z_errors) / key if key > 0 else decoy.E0_BACKGROUND
    return singles * (1.0 - decoy.h2(min(estimate.e1_u, decoy.E0_BACKGROUND))) - (
        f_ec * key * decoy.h2(min(e_z, decoy.E0_BACKGROUND)))


def expected_protocol_counts(params: LinkParameters,
                             sample_fraction: float = Z_SAMPLE_FRACTION) -> ProtocolCounts:
    """The expected :class:`ProtocolCounts` per pulse: MQZL's channel model, the basis
    choices of ``p_z`` at both ends, and the Z sample the protocol discloses."""
    intensities = (params.mu, params.nu, params.vacuum)
    probabilities = (params.p_mu, params.p_nu, params.p_vacuum)
    gains = [expected_gain(params, k) for k in intensities]
    qbers = [expected_qber(params, k) for k in intensities]
    z_share, x_share = params.p_z**2, (1.0 - params.p_z) ** 2
    clicks = [probabilities[k] * gains[k] for k in range(3)]
    z_key = [(1.0 - sample_fraction) * z_share * c for c in clicks]
    x_matched = [x_share * c for c in clicks]

    def triple(values: list[float]) -> tuple[float, float, float]:
        return values[0], values[1], values[2]

    return ProtocolCounts(
        sent=triple(list(probabilities)), detections=triple(clicks), z_key=triple(z_key),
        z_errors=triple([z_key[k] * qbers[k] for k in range(3)]),
        x_matched=triple(x_matched), x_errors=triple([x_matched[k] * qbers[k] for k in range(3)]))


def as_run_rate(params: LinkParameters, f_ec: float = CASCADE_EFFICIENCY) -> float:
    """Secret bits per pulse of the protocol as the simulated link runs it, asymptotically
    (negative where no key is proven): keyed from the Z basis alone (``p_z^2`` of the
    clicks, less the 5 % Z sample), the X basis for the phase-error estimate, and
    Cascade's leakage ``f_ec``.  The published models instead credit both bases
    (``q = p_z^2 + (1 - p_z)^2``) and charge ``params.f_ec``; at 25 km with the finite-key
    preset that is the difference between about 3e-4 and 7e-4 bits per pulse.
    """
    if params.vacuum != 0.0:
        raise InvalidParameter("the as-run model needs a true vacuum decoy (vacuum = 0)")
    if not 0.0 < params.p_z < 1.0 or params.p_vacuum <= 0.0:
        return -1.0  # no X basis, or no vacuum decoy: the protocol estimates nothing
    try:
        return as_run_from_counts((params.mu, params.nu, params.vacuum),
                                  expected_protocol_counts(params), f_ec)
    except InvalidParameter:
        return -1.0


def _mu_range(params: LinkParameters, model: Model) -> tuple[float, float]:
    # The vacuum + weak bounds need mu > nu; the other models have no decoy.
    low = params.nu * (1.0 + 1e-9) if model in _DECOY_MODELS else 1e-7
    return max(low, 1e-7), max(1.5, low * 10.0)


def _golden_max(
    fn: Callable[[float], float], low: float, high: float, iterations: int = 60
) -> float:
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = low, high
    c = b - ratio * (b - a)
    d = a + ratio * (b - a)
    fc, fd = fn(c), fn(d)
    for _ in range(iterations):
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = fn(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = fn(d)
    return (a + b) / 2.0


class _RateFn:
    """Rate as a function of the signal intensity, everything else held fixed."""

    def __init__(self, params: LinkParameters, model: Model) -> None:
        self.params = params
        self.model = model

    def __call__(self, mu: float) -> float:
        if self.model in _DECOY_MODELS:
            return _raw_rate(replace(self.params, mu=mu), self.model)
        # The decoys play no part in this model; drop them so mu may go below nu.
        return _raw_rate(replace(self.params, mu=mu, nu=0.0, vacuum=0.0), self.model)


def best_mu(params: LinkParameters, model: Model = "infinite-decoy") -> float:
    """The signal intensity that maximises the model's rate at this distance.

    Without decoys the optimum scales with ``eta`` (it must keep multi-photon
    pulses rarer than clicks); with decoys it is O(1).  A log-spaced scan finds the
    right decade, a golden-section search refines it.  The single-photon model has
    no intensity, so ``params.mu`` is returned unchanged.
    """
    model = _check_model(model)
    if model == "single-photon":
        return params.mu
    fn = _RateFn(params, model)
    low, high = _mu_range(params, model)
    steps = 200
    grid = [low * (high / low) ** (i / (steps - 1)) for i in range(steps)]
    values = [fn(m) for m in grid]
    i = max(range(steps), key=values.__getitem__)
    a = grid[max(i - 1, 0)]
    b = grid[min(i + 1, steps - 1)]
    refined = _golden_max(fn, a, b)
    return refined if fn(refined) >= values[i] else grid[i]


def key_rate(
    params: LinkParameters, model: Model = "infinite-decoy", *, optimal_mu: bool = False
) -> float:
    """Secret key bits per pulse sent; 0 where the model proves no key.

    ``optimal_mu`` replaces ``params.mu`` by the best signal intensity for this
    distance (:func:`best_mu`); by default the configured ``mu`` is used, which is
    what a deployed link with a fixed source does.
    """
    model = _check_model(model)
    if optimal_mu and model != "single-photon":
        return max(_RateFn(params, model)(best_mu(params, model)), 0.0)
    return max(_raw_rate(params, model), 0.0)


def plob_bound(params: LinkParameters, *, include_receiver: bool = False) -> float:
    """Secret-key capacity of the lossy channel: ``-log2(1 - t)`` bits per use.

    By default ``t`` is the fibre transmittance ``t_AB`` alone: the PLOB bound is a
    property of the channel, and Bob's detector is part of his trusted lab, not of
    the channel.  This is the looser of the two choices, so "below PLOB" stays true
    for any receiver.  ``include_receiver=True`` uses ``eta = t_AB eta_Bob``, which
    is also a valid bound for these rates because GLLP hands Bob's loss to Eve, but
    is not a statement about the fibre.  Infinite at zero distance (no loss).
    """
    t = params.eta if include_receiver else params.channel_transmittance
    if t >= 1.0:
        return math.inf
    return -math.log2(1.0 - t)


def max_distance_km(
    params: LinkParameters,
    model: Model = "infinite-decoy",
    *,
    optimal_mu: bool = False,
    tolerance_km: float = 0.1,
) -> float:
    """Distance at which the model's rate reaches zero, by bisection to ``tolerance_km``.

    Returns 0.0 when no key is proven even at zero distance.  The rate falls
    monotonically with distance (loss only grows), so the sign change is unique.
    """
    model = _check_model(model)
    if not tolerance_km > 0.0:
        raise InvalidParameter("tolerance_km must be positive")

    def positive(distance: float) -> bool:
        at = params.at_distance(distance)
        if optimal_mu and model != "single-photon":
            return _RateFn(at, model)(best_mu(at, model)) > 0.0
        return _raw_rate(at, model) > 0.0

    if not positive(0.0):
        return 0.0
    low, high = 0.0, 50.0
    while positive(high):
        low, high = high, high * 2.0
        if high > _FAR_KM:
            raise InvalidParameter("rate still positive beyond 2000 km: parameters unphysical")
    while high - low > tolerance_km:
        middle = (low + high) / 2.0
        if positive(middle):
            low = middle
        else:
            high = middle
    return (low + high) / 2.0


@dataclass(frozen=True)
class RatePoint:
    """One point of a rate-distance curve."""

    distance_km: float
    rate: float
    plob: float


def sweep(
    params: LinkParameters,
    from_km: float,
    to_km: float,
    step_km: float,
    model: Model = "infinite-decoy",
    *,
    optimal_mu: bool = False,
) -> list[RatePoint]:
    """Rate and PLOB bound from ``from_km`` to ``to_km`` inclusive, every ``step_km``."""
    model = _check_model(model)
    if not step_km > 0.0:
        raise InvalidParameter("step_km must be positive")
    if from_km < 0.0 or to_km < from_km:
        raise InvalidParameter("need 0 <= from_km <= to_km")
    count = math.floor((to_km - from_km) / step_km + 1e-9) + 1
    points = []
    for i in range(count):
        distance = from_km + i * step_km
        at = params.at_distance(distance)
        points.append(
            RatePoint(
                distance_km=distance,
                rate=key_rate(at, model, optimal_mu=optimal_mu),
                plob=plob_bound(at),
            )
        )
    return points
