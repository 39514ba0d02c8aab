"""Key rates estimated from the Monte Carlo simulation, to set beside the analytic ones.

The simulation's gains and error rates go through the same bound as the analytic
model (:func:`hybridkex.qkd.analytic.rate_from_observables`), with the vacuum
decoy's measured gain standing for Y0 and its measured error rate for e0.  For
"as-run", the simulation's counts per class and basis go through
:func:`hybridkex.qkd.analytic.as_run_from_counts`, as the protocol's own asymptotic
estimate would take them.  Only the decoy models whose bound uses observables
("vacuum-weak", "no-decoy", "as-run") can be estimated this way; "infinite-decoy" and
"single-photon" assume the true single-photon yield, which an experiment never
observes.

The statistical error is estimated from independent repetitions (different seeds):
``stderr`` is the standard error of their mean.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from hybridkex.errors import InvalidParameter
from hybridkex.qkd import analytic
from hybridkex.qkd.parameters import LinkParameters
from hybridkex.qkd.simulator import (
    DECOY,
    SIGNAL,
    VACUUM,
    X_BASIS,
    Z_BASIS,
    SimulationStats,
    simulate,
)

__all__ = ["OBSERVABLE_MODELS", "SimulatedRate", "simulated_rate"]

OBSERVABLE_MODELS = ("vacuum-weak", "no-decoy", "as-run")


@dataclass(frozen=True)
class SimulatedRate:
    rate: float          # secret bits per pulse, clipped at 0 like the analytic rate
    stderr: float        # standard error of the mean over the repetitions
    repetitions: int
    observables: analytic.Observables


def _observed(stats: SimulationStats) -> analytic.Observables:
    return analytic.Observables(
        q_mu=stats.gain(SIGNAL), e_mu=stats.qber(SIGNAL),
        q_nu=stats.gain(DECOY), e_nu=stats.qber(DECOY),
        y0=stats.gain(VACUUM), e0=stats.qber(VACUUM))


def _protocol_counts(stats: SimulationStats) -> analytic.ProtocolCounts:
    """The simulation's counts as the protocol would count them (its Z sample left out
    in expectation: the key keeps the share the sample does not take)."""
    keep = 1.0 - analytic.Z_SAMPLE_FRACTION

    def per_class(values: list[float]) -> tuple[float, float, float]:
        return values[0], values[1], values[2]

    z, x = (Z_BASIS, Z_BASIS), (X_BASIS, X_BASIS)
    return analytic.ProtocolCounts(
        sent=per_class([float(stats.sent[k].sum()) for k in range(3)]),
        detections=per_class([float(stats.detected[k].sum()) for k in range(3)]),
        z_key=per_class([keep * float(stats.detected[(k, *z)]) for k in range(3)]),
        z_errors=per_class([keep * float(stats.errors[(k, *z)]) for k in range(3)]),
        x_matched=per_class([float(stats.detected[(k, *x)]) for k in range(3)]),
        x_errors=per_class([float(stats.errors[(k, *x)]) for k in range(3)]))


def _rate(params: LinkParameters, model: str, stats: SimulationStats,
          observed: analytic.Observables) -> float:
    if model == "as-run":
        intensities = (params.mu, params.nu, params.vacuum)
        return analytic.as_run_from_counts(intensities, _protocol_counts(stats)) / stats.pulses
    return analytic.rate_from_observables(params, model,  # type: ignore[arg-type]
                                          observed, sifting=stats.sifting_ratio())


def simulated_rate(params: LinkParameters, model: str, pulses: int, seed: int = 1,
                   repetitions: int = 4) -> SimulatedRate:
    """Simulate ``repetitions`` runs of ``pulses // repetitions`` pulses and estimate the
    model's key rate from each run's observed gains and error rates."""
    if model not in OBSERVABLE_MODELS:
        raise InvalidParameter(
            f"model {model!r} cannot be estimated from a simulation; "
            f"use one of {', '.join(OBSERVABLE_MODELS)}")
    if repetitions < 2 or pulses < repetitions:
        raise InvalidParameter("need at least two repetitions of at least one pulse")
    per_run = pulses // repetitions
    rates, last = [], None
    for r in range(repetitions):
        stats = SimulationStats.from_blocks(simulate(params, per_run, seed * 1000 + r))
        last = _observed(stats)
        if math.isnan(last.e_mu) or last.q_mu == 0.0:
            rates.append(0.0)
            continue
        try:
            value = _rate(params, model, stats, last)
        except InvalidParameter:
            value = 0.0
        rates.append(max(0.0, value))
    assert last is not None
    stderr = statistics.stdev(rates) / math.sqrt(repetitions)
    return SimulatedRate(statistics.fmean(rates), stderr, repetitions, last)
