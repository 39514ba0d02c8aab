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
from hybridkex.qkd.parameters import LinkParameters

__all__ = [
    "MODELS",
    "Model",
    "RatePoint",
    "best_mu",
    "expected_gain",
    "expected_qber",
    "key_rate",
    "max_distance_km",
    "plob_bound",
    "sifting_factor",
    "single_photon_error",
    "single_photon_yield",
    "sweep",
]

Model = Literal["infinite-decoy", "vacuum-weak", "no-decoy", "single-photon"]
MODELS: tuple[Model, ...] = get_args(Model)

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


def _mu_range(params: LinkParameters, model: Model) -> tuple[float, float]:
    # The vacuum + weak bounds need mu > nu; the other models have no decoy.
    low = params.nu * (1.0 + 1e-9) if model == "vacuum-weak" else 1e-7
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
        if self.model == "vacuum-weak":
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
