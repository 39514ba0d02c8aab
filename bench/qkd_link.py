"""Net secret key rate of the QKD link: two processes (``qkd link --listen`` and
``--connect``) on loopback and through a userspace relay that adds a round-trip time,
and the in-process link (``QKDLink``) in the same run.

    .venv/bin/python bench/qkd_link.py [--rounds 4] [--pulses 5e8] [--rtt-ms 5] [--json]

For each distance (25 and 50 km) and each set-up it reports the net secret key rate
(secret bits minus authentication bits of every round, per second of wall time from the
start of Alice's process, or of the first round in process, to the last report), the
emulated pulses per second, and the classical round trips per round.  The optics are a SIMULATION.
Figures depend on the machine and its load; docs/performance.md records a run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hybridkex.qkd.labels import SIMULATION_LABEL  # noqa: E402
from hybridkex.qkd.link import QKDLink, SiteIdentity  # noqa: E402
from hybridkex.qkd.parameters import finite_key_parameters  # noqa: E402
from tests.qkd_ends import make_sites  # noqa: E402
from tests.relay import relay  # noqa: E402


def _rates(reports: list[dict[str, Any]], span: float) -> dict[str, Any]:
    """Every round's bits and pulses over the wall time from start to the last report."""
    net = sum(r["net_secret_bits"] for r in reports)
    return {
        "rounds": len(reports),
        "aborted": sum(bool(r["aborted"]) for r in reports),
        "wall_s": round(span, 2),
        "net_bits_per_s": round(net / span, 1),
        "pulses_per_s": round(sum(r["pulses"] for r in reports) / span, 1),
        "round_trips_per_round": round(sum(r["round_trips"] for r in reports) / len(reports), 1),
        "ec_round_trips_per_round": round(
            sum(r["ec_round_trips"] for r in reports) / len(reports), 1),
        "ec_efficiency_max": max((r["ec_efficiency"] or 0.0) for r in reports),
    }


def two_process(distance: float, pulses: int, rounds: int, rtt_ms: float,
                lanes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        a_dir, b_dir = make_sites(Path(tmp))
        port = 20000 + os.getpid() % 20000
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        hkx = [sys.executable, "-m", "hybridkex", "qkd", "link"]
        bob = subprocess.Popen([*hkx, "--site", str(b_dir), "--listen", f"127.0.0.1:{port}"],
                               stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)
        try:
            with relay(("127.0.0.1", port), rtt_ms / 2000) as r:
                target = r.address[1] if rtt_ms else port
                started = time.perf_counter()
                alice = subprocess.Popen(
                    [*hkx, "--site", str(a_dir), "--connect", f"127.0.0.1:{target}",
                     "--quantum-connect", f"127.0.0.1:{port + 1}", "--distance-km",
                     str(distance), "--pulses-per-round", str(pulses), "--rounds",
                     str(rounds), "--lanes", str(lanes), "--json"], stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL, env=env)
                reports = []
                assert alice.stdout is not None
                for line in alice.stdout:
                    reports.append(json.loads(line))
                    ended = time.perf_counter()
                alice.wait()
        finally:
            bob.terminate()
            bob.wait()
    return _rates(reports, ended - started)


def in_process(distance: float, pulses: int, rounds: int) -> dict[str, Any]:
    link = QKDLink("a", "b", finite_key_parameters(distance_km=distance),
                   identity_a=SiteIdentity.generate(), identity_b=SiteIdentity.generate())
    reports = []
    started = time.perf_counter()
    for _ in range(rounds):
        report = link.run_round(pulses).to_json()
        report["round_trips"] = report["ec_round_trips"]
        reports.append(report)
    return _rates(reports, time.perf_counter() - started)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--pulses", type=float,
                        help="pulses per round (default 5e8 at 25 km, 1e9 beyond: the "
                        "finite-key bound gives no key from 5e8 pulses at 50 km)")
    parser.add_argument("--rtt-ms", type=float, default=5.0)
    parser.add_argument("--distances", type=float, nargs="+", default=[25.0, 50.0])
    parser.add_argument("--repeats", type=int, default=3,
                        help="loopback and relay runs, alternated (the machine is shared: "
                        "the ratio of each adjacent pair is reported, and the median)")
    parser.add_argument("--lanes", type=int, default=6, help="qkd link --lanes")
    parser.add_argument("--skip-in-process", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {"simulation": SIMULATION_LABEL, "rtt_ms": args.rtt_ms,
                               "lanes": args.lanes, "cpus": os.cpu_count(), "links": []}
    for distance in args.distances:
        pulses = int(args.pulses or (5e8 if distance <= 25 else 1e9))
        entry: dict[str, Any] = {"distance_km": distance, "pulses_per_round": pulses,
                                 "load_average_before": os.getloadavg()[0]}
        if not args.skip_in_process:
            entry["in_process"] = in_process(distance, pulses, args.rounds)
            _show(distance, pulses, "in-process", entry["in_process"], args.json)
        loop, relayed = [], []
        for _ in range(args.repeats):
            loop.append(two_process(distance, pulses, args.rounds, 0.0, args.lanes))
            _show(distance, pulses, "two-process, loopback", loop[-1], args.json)
            relayed.append(two_process(distance, pulses, args.rounds, args.rtt_ms, args.lanes))
            _show(distance, pulses, f"two-process, relay {args.rtt_ms:g} ms RTT", relayed[-1],
                  args.json)
        ratios = [r["net_bits_per_s"] / lo["net_bits_per_s"]
                  for lo, r in zip(loop, relayed, strict=True) if lo["net_bits_per_s"]]
        entry.update(loopback=loop, relay=relayed, relay_to_loopback=[round(x, 3)
                                                                      for x in ratios],
                     relay_to_loopback_median=round(_median(ratios), 3),
                     load_average_after=os.getloadavg()[0])
        results["links"].append(entry)
        if not args.json:
            print(f"{distance:4g} km  relay / loopback net rate: "
                  f"{', '.join(f'{x:.2f}' for x in ratios)} (median {_median(ratios):.2f}); "
                  f"loopback median {_median([x['net_bits_per_s'] for x in loop]):.0f} bit/s, "
                  f"relay median {_median([x['net_bits_per_s'] for x in relayed]):.0f} bit/s",
                  flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"({SIMULATION_LABEL}; {os.cpu_count()} CPUs, {args.lanes} lanes, load average "
              f"{os.getloadavg()[0]:.1f})")


def _show(distance: float, pulses: int, name: str, figures: dict[str, Any],
          quiet: bool) -> None:
    if quiet:
        return
    print(f"{distance:4g} km  {pulses:.0e} pulses/round  {name:32s} "
          f"{figures['net_bits_per_s']!s:>10} bit/s  {figures['pulses_per_s']:>12.4g} "
          f"pulses/s  {figures['round_trips_per_round']:7.1f} round trips/round  "
          f"f <= {figures['ec_efficiency_max']:.3f}  ({figures['aborted']} of "
          f"{figures['rounds']} rounds aborted)", flush=True)


if __name__ == "__main__":
    main()
