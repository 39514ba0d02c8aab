"""Throughput of the decoy-state BB84 simulator (:mod:`hybridkex.qkd.simulator`), one core.

Runs :func:`~hybridkex.qkd.simulator.simulate` with the GYS parameters and counts
the detections it yields (the consumer does nothing else), and reports pulses per
second as the median over a few repeats.  Thread pools of numeric libraries are
limited to one thread and, where the OS allows, the process is pinned to one CPU.
The goal is at least 2e7 pulses/s.

    python bench/qkd_simulator.py                 # 25 and 50 km, honest and attacked
    python bench/qkd_simulator.py --pulses 1e9    # a longer run
    python bench/qkd_simulator.py --json
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from typing import Any  # noqa: E402

from hybridkex.qkd.parameters import Eavesdropper, LinkParameters  # noqa: E402
from hybridkex.qkd.simulator import DEFAULT_BLOCK_SIZE, simulate  # noqa: E402

GOAL = 2e7  # pulses per second


def bench_simulator(pulses: int, distance_km: float, eve: Eavesdropper | None = None,
                    repeats: int = 3, block_size: int = DEFAULT_BLOCK_SIZE,
                    seed: int = 1) -> dict[str, Any]:
    """Time ``repeats`` simulations of ``pulses`` pulses; median pulses per second."""
    params = replace(LinkParameters(), distance_km=distance_km, eve=eve)
    seconds: list[float] = []
    detections = 0
    for repeat in range(repeats):
        detections = 0
        start = time.perf_counter()
        for block in simulate(params, pulses, seed + repeat, block_size):
            detections += block.bob.index.size
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {
        "pulses": pulses,
        "distance_km": distance_km,
        "eve": None if eve is None else f"{eve.kind} {eve.fraction:g}",
        "block_size": block_size,
        "repeats": repeats,
        "seconds_median": median,
        "pulses_per_s": pulses / median,
        "pulses_per_s_all": [pulses / s for s in seconds],
        "detections_last": detections,
    }


def _pin_to_one_cpu() -> None:
    if hasattr(os, "sched_getaffinity") and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        if cpus:
            os.sched_setaffinity(0, {cpus[0]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pulses", type=float, default=2e8, help="pulses per run (2e8)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per case (5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    _pin_to_one_cpu()
    pulses = int(args.pulses)
    cases = [(d, eve) for d in (25.0, 50.0)
             for eve in (None, Eavesdropper("intercept-resend", 1.0))]
    results = [bench_simulator(pulses, d, eve, repeats=args.repeats) for d, eve in cases]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'distance':>9} {'eve':<20} {'pulses/s':>12} {'detections':>11}")
        for r in results:
            print(f"{r['distance_km']:>6.0f} km {r['eve'] or 'none':<20} "
                  f"{r['pulses_per_s']:>12.3g} {r['detections_last']:>11}")
        slow = [r for r in results if r["pulses_per_s"] < GOAL]
        print(f"goal {GOAL:.0e} pulses/s: " + ("met" if not slow else f"missed in {len(slow)}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
