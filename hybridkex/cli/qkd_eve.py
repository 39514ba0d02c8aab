"""``hybridkex qkd eve-sweep``: a picture of an eavesdropper (simulation).

For each fraction of Eve's attack from ``--from`` to ``--to``, one simulated round runs
end to end, and the sweep reports the QBER the protocol measured beside what the model
predicts, whether the round aborted, and how much key it kept.  The QBER is the
X-basis one: the protocol discloses every X-basis bit to estimate the phase error, so
it is measured in every round that reaches estimation, aborted or not (the Z-basis
QBER of the key is known only after error correction, which an aborted round never
reaches).  The prediction is the simulator's exact expectation for the same
parameters (:func:`hybridkex.qkd.simulator.expected_rates`); for intercept-resend the
plot also draws the textbook ``e_det + p/4``.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, replace
from typing import Any

from hybridkex.cli.args import positive_count, seed
from hybridkex.cli.progress import ItemProgress
from hybridkex.cli.qkd_options import (
    DISTANCE,
    FRACTION,
    OUTPUT_FILE,
    STEP,
    add_budget_options,
    usage_error,
    within_budget,
)
from hybridkex.cli.qkd_plot import plot_eve_sweep
from hybridkex.qkd.distillation import DistillationConfig
from hybridkex.qkd.labels import SIMULATION_LABEL
from hybridkex.qkd.link import LinkReport, QKDLink, SiteIdentity
from hybridkex.qkd.parameters import Eavesdropper, LinkParameters, finite_key_parameters
from hybridkex.qkd.simulator import X_BASIS, expected_rates

__all__ = ["register"]

DEFAULT_PULSES = 300_000_000
#: the most points one sweep may have (the sweeps check before they build the list)
MAX_POINTS = 10_001


def register(qsub: Any) -> None:
    """Add ``eve-sweep`` to the ``qkd`` subcommands."""
    e = qsub.add_parser("eve-sweep", help="measured QBER against an eavesdropper's fraction "
                        "(simulation)",
                        description="Run one simulated round per fraction of Eve's attack and "
                        "show the measured QBER beside the model's.  A SIMULATION.")
    e.add_argument("--eve", choices=["intercept-resend", "pns"], required=True,
                   help="the attack: intercept-resend on a fraction of pulses, or "
                   "photon-number splitting blocking a fraction of single-photon pulses")
    e.add_argument("--from", dest="start", type=FRACTION, required=True, metavar="F0",
                   help="first fraction (fraction, 0..1)")
    e.add_argument("--to", dest="stop", type=FRACTION, required=True, metavar="F1",
                   help="last fraction (fraction, 0..1, at least --from)")
    e.add_argument("--step", type=STEP, required=True, metavar="S",
                   help="fraction step (fraction, 0 < S <= 1)")
    e.add_argument("--distance-km", type=DISTANCE, default=25.0, metavar="KM",
                   help="fibre length (km, 0..1000; default %(default)g)")
    e.add_argument("--pulses", type=positive_count, default=DEFAULT_PULSES, metavar="N",
                   help="pulses per round, one round per fraction (1..1e18; default "
                   "%(default).0e)")
    e.add_argument("--seed", type=seed, default=1, metavar="S",
                   help="seed of the first round; round i uses S + i (integer, 0..2^64-1; "
                   "default 1)")
    e.add_argument("--json", action="store_true",
                   help='print one JSON object: {"points": [{"eve_fraction", "qber", '
                   '"qber_theory", "aborted", "secret_bits", ...}], ...}')
    e.add_argument("--plot", type=OUTPUT_FILE, metavar="FILE.png",
                   help="draw measured QBER against the fraction (needs the plot extra)")
    add_budget_options(e)
    e.set_defaults(func=cmd_eve_sweep, parser=e)


def point_count(start: float, stop: float, step: float) -> int:
    """How many points ``start, start + step, ...`` up to ``stop`` inclusive are."""
    return math.floor((stop - start) / step + 1e-9) + 1


def fractions(start: float, stop: float, step: float) -> list[float]:
    """``start, start + step, ...`` up to ``stop`` inclusive (rounded to 1e-9)."""
    return [round(min(start + i * step, 1.0), 9)
            for i in range(point_count(start, stop, step))]


def cmd_eve_sweep(args: argparse.Namespace) -> int:
    if args.stop < args.start:
        usage_error(args, "arguments --from, --to: need --to >= --from")
    count = point_count(args.start, args.stop, args.step)
    if count > MAX_POINTS:
        usage_error(args, f"arguments --from, --to, --step: {count:.3g} points, at most "
                    f"{MAX_POINTS}; raise --step")
    points_at = fractions(args.start, args.stop, args.step)
    base = finite_key_parameters(distance_km=args.distance_km)
    config = DistillationConfig()
    within_budget(args, replace(base, eve=Eavesdropper(args.eve, 0.0)), args.pulses,
                  config=config, rounds=len(points_at))
    identities = SiteIdentity.generate("Ed25519"), SiteIdentity.generate("Ed25519")
    points = []
    progress = None if args.json else ItemProgress(SIMULATION_LABEL, len(points_at))
    for i, fraction in enumerate(points_at):
        params = replace(base, eve=Eavesdropper(args.eve, fraction))
        link = QKDLink("site-a", "site-b", params, config, identity_a=identities[0],
                       identity_b=identities[1])
        report = link.run_round(args.pulses, args.seed + i)
        points.append(_point(params, report, fraction))
        if progress is not None:
            progress(i + 1, f"rounds (fraction {fraction:g})")
    result = {
        "eve": args.eve,
        "distance_km": args.distance_km,
        "pulses": args.pulses,
        "seed": args.seed,
        "qber_basis": "X",
        "qber_abort": config.qber_abort,
        "parameters": {k: v for k, v in asdict(replace(base, eve=None)).items()
                       if k not in ("distance_km", "eve")},
        "simulation": SIMULATION_LABEL,
        "points": points,
    }
    if args.plot:
        plot_eve_sweep(result, args.plot)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return 0


def _point(params: LinkParameters, report: LinkReport, fraction: float) -> dict[str, Any]:
    """One fraction: the measured X-basis QBER with its binomial standard error, the
    model's expectation, and what the round made of it."""
    share = (1.0 - params.p_z) ** 2 / (params.p_z**2 + (1.0 - params.p_z) ** 2)
    sifted = report.sifted_bits or 0  # None: the round ended before sifting
    x_bits = round(sifted * share)  # matched X clicks, from the sifted count
    qber: float | None = report.qber_x
    measured = qber is not None and sifted > 0 and not math.isnan(qber)
    stderr = math.sqrt(qber * (1 - qber) / x_bits) if measured and qber and x_bits else None
    return {
        "eve_fraction": fraction,
        "qber": qber if measured else None,
        "qber_stderr": stderr,
        "qber_theory": expected_rates(params).qber[X_BASIS],
        "aborted": report.aborted,
        "abort_reason": report.abort_reason or None,
        "secret_bits": report.secret_bits,
        "detections": report.detections,
    }


def _print(result: dict[str, Any]) -> None:
    print(f"*** {result['simulation']} ***")
    print(f"{result['eve']} at {result['distance_km']:g} km, {result['pulses']:.3g} pulses per "
          f"round; QBER in the {result['qber_basis']} basis, abort above "
          f"{result['qber_abort']:g}")
    print(f"{'fraction':>9} {'QBER':>8} {'± stderr':>9} {'model':>8} {'secret bits':>12}  outcome")
    for p in result["points"]:
        qber = "n/m" if p["qber"] is None else f"{p['qber']:8.4f}"
        err = "" if p["qber_stderr"] is None else f"{p['qber_stderr']:9.4f}"
        outcome = f"aborted: {p['abort_reason']}" if p["aborted"] else "key distilled"
        print(f"{p['eve_fraction']:9.3f} {qber:>8} {err:>9} {p['qber_theory']:8.4f} "
              f"{p['secret_bits']:12d}  {outcome}")
    print("(n/m: not measured)")
