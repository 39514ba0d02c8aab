"""Key rates estimated from the Monte Carlo simulation, to set beside the analytic ones.

The simulation's gains and error rates go through the same bound as the analytic
model (:func:`hybridkex.qkd.analytic.rate_from_observables`), with the vacuum
decoy's measured gain standing for Y0 and its measured error rate for e0.  Only the
decoy models whose bound uses observables ("vacuum-weak", "no-decoy") can be
estimated this way; "infinite-decoy" and "single-photon" assume the true
single-photon yield, which an experiment never observes.

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
from hybridkex.qkd.simulator import DECOY, SIGNAL, VACUUM, SimulationStats, simulate

__all__ = ["OBSERVABLE_MODELS", "SimulatedRate", "simulated_rate"]

OBSERVABLE_MODELS = ("vacuum-weak", "no-decoy")


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
            value = analytic.rate_from_observables(params, model,  # type: ignore[arg-type]
                                                   last, sifting=stats.sifting_ratio())
        except InvalidParameter:
            value = 0.0
        rates.append(max(0.0, value))
    assert last is not None
    stderr = statistics.stdev(rates) / math.sqrt(repetitions)
    return SimulatedRate(statistics.fmean(rates), stderr, repetitions, last)
