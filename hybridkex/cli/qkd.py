"""``hybridkex qkd simulate`` and ``hybridkex qkd sweep``: the simulated QKD link.

Everything these commands show is labelled a simulation: the optical layer is a
Monte Carlo model, the distillation that follows it is the real protocol.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from functools import partial
from typing import Any

from hybridkex.cli import qkd_link
from hybridkex.cli.args import positive_count
from hybridkex.errors import InvalidParameter
from hybridkex.keydelivery.store import open_store
from hybridkex.qkd import analytic, montecarlo
from hybridkex.qkd.distillation import DistillationConfig
from hybridkex.qkd.labels import SIMULATION_LABEL
from hybridkex.qkd.link import QKDLink, SiteIdentity
from hybridkex.qkd.parameters import Eavesdropper, LinkParameters, finite_key_parameters


def register(qkd: argparse.ArgumentParser) -> None:
    """Add the ``qkd`` subcommands to the ``hybridkex qkd`` parser.  The command line
    calls this only when that parser parses (:mod:`hybridkex.cli`), because these
    options name the simulator's defaults, and importing it loads numpy."""
    qsub = qkd.add_subparsers(dest="qkd_command", required=True)

    p = qsub.add_parser("simulate", help="one link session end to end (simulation)")
    p.add_argument("--distance-km", type=float, required=True)
    p.add_argument("--pulses", type=positive_count, required=True)
    p.add_argument("--eve", choices=["intercept-resend", "pns"])
    p.add_argument("--eve-fraction", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--preset", choices=["finite-key", "gys"], default="finite-key",
                   help="intensities and probabilities: finite-key (default; see "
                   "docs/qkd.md) or the GYS set of the analytic curves")
    p.add_argument("--p-z", type=float,
                   help="probability of the Z basis (0.5: standard BB84; more: efficient BB84)")
    p.add_argument("--mu", type=float, help="signal intensity")
    p.add_argument("--nu", type=float, help="weak decoy intensity")
    p.add_argument("--asymptotic", action="store_true",
                   help="asymptotic decoy bounds instead of finite-size (Lim et al. 2014)")
    p.add_argument("--eps-sec", type=float, default=DistillationConfig.eps_sec)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_simulate)

    k = qsub.add_parser("link", help="run the simulated link: one end of it on this host "
                        "(--site with --listen or --connect), or both ends in this process "
                        "(--site-a ... --store-b), filling the sites' key stores")
    k.add_argument("--site-a")
    k.add_argument("--store-a", help="memory:, sqlite:///path or postgresql://...")
    k.add_argument("--site-b")
    k.add_argument("--store-b")
    k.add_argument("--distance-km", type=float, help="fibre length (default 25)")
    k.add_argument("--target-keys", type=positive_count,
                   help="stop once this many 256-bit keys were deposited (default: run until "
                   "interrupted)")
    k.add_argument("--pulses-per-round", type=positive_count, default=500_000_000)
    k.add_argument("--json", action="store_true", help="one JSON object per round on stdout")
    qkd_link.add_link_options(k)
    k.set_defaults(func=qkd_link.dispatch(cmd_link))
    qkd_link.register_fiber(qsub)

    s = qsub.add_parser("sweep", help="key rate against distance: analytic, and simulated")
    s.add_argument("--from-km", type=float, required=True)
    s.add_argument("--to-km", type=float, required=True)
    s.add_argument("--step-km", type=float, required=True)
    s.add_argument("--model", choices=list(analytic.MODELS), default="vacuum-weak")
    s.add_argument("--mu", type=float, default=LinkParameters.mu)
    s.add_argument("--nu", type=float, default=LinkParameters.nu)
    s.add_argument("--pulses", type=positive_count,
                   help="also estimate the rate from this many simulated pulses per point")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--plot", metavar="FILE.png", help="draw rate against distance (needs "
                   "the plot extra: pip install 'hybridkex[plot]')")
    s.set_defaults(func=cmd_sweep)


class _Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.perf_counter()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self.last < 0.2 and done < total:
            return
        self.last = now
        width = 30
        filled = int(width * done / total) if total else width
        rate = done / max(now - self.started, 1e-9)
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done:.3g}/{total:.3g} pulses, {rate:.3g}/s")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def cmd_simulate(args: argparse.Namespace) -> int:
    eve = Eavesdropper(args.eve, args.eve_fraction) if args.eve else None
    chosen = {name: getattr(args, name) for name in ("p_z", "mu", "nu")
              if getattr(args, name) is not None}
    make = finite_key_parameters if args.preset == "finite-key" else partial(replace,
                                                                              LinkParameters())
    params = make(distance_km=args.distance_km, eve=eve, **chosen)
    config = DistillationConfig(finite_key=not args.asymptotic, eps_sec=args.eps_sec)
    link = QKDLink("site-a", "site-b", params, config, identity_a=SiteIdentity.generate(),
                   identity_b=SiteIdentity.generate())
    progress = None if args.json else _Progress("simulating")
    report = link.run_round(args.pulses, args.seed, progress)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    _print_report(report.to_json())
    return 0


def cmd_link(args: argparse.Namespace) -> int:
    store_a = open_store(args.store_a, args.site_a)
    store_b = open_store(args.store_b, args.site_b)
    link = QKDLink(args.site_a, args.site_b, finite_key_parameters(distance_km=args.distance_km),
                   store_a=store_a, store_b=store_b, identity_a=SiteIdentity.generate(),
                   identity_b=SiteIdentity.generate())
    deposited = rounds = aborted = 0
    if not args.json:
        print(f"*** {SIMULATION_LABEL} ***", file=sys.stderr)
    try:
        while args.target_keys is None or deposited < args.target_keys:
            report = link.run_round(args.pulses_per_round)
            rounds += 1
            aborted += report.aborted
            deposited += report.keys_deposited
            if args.json:
                print(json.dumps(report.to_json()), flush=True)
            else:
                status = report.abort_reason if report.aborted else (
                    f"+{report.keys_deposited} keys, QBER {report.qber:.3f}, "
                    f"auth {report.auth_bits_consumed} bits")
                target = f"/{args.target_keys}" if args.target_keys else ""
                print(f"\rround {rounds}: {deposited}{target} keys deposited "
                      f"({status})", end="", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        if not args.json:
            print(file=sys.stderr)
        store_a.close()
        store_b.close()
    print(f"{deposited} keys deposited in {rounds} rounds ({aborted} aborted) for link "
          f"{args.site_a}-{args.site_b}", file=sys.stderr)
    return 0


def _print_report(r: dict[str, Any]) -> None:
    print(f"*** {SIMULATION_LABEL} ***")
    print(f"link: {r['distance_km']:g} km, {r['pulses']:.3g} pulses (seed {r['seed']})")
    print(f"  detections            {r['detections']}")
    print(f"  sifted bits           {r['sifted_bits']}")
    print(f"  QBER (key, after EC)  {r['qber']:.4f}   X basis {r['qber_x']:.4f}")
    bound = f"finite-size, eps_sec {r['eps_sec']:.0e}" if r["finite_key"] else "asymptotic"
    print(f"  single-photon bounds  Y1 >= {r['y1_lower']:.3g}, e1 <= {r['e1_upper']:.4f}"
          f"  ({bound})")
    eff = r["ec_efficiency"]
    print(f"  error correction      {r['ec_leaked_bits']} bits leaked, f = "
          f"{eff:.3f}" if eff is not None else "n/a", f", {r['ec_round_trips']} round trips")
    print(f"  privacy amplification {r['pa_input_bits']} -> {r['secret_bits']} bits")
    print(f"  authentication        {r['auth_mode']}, {r['auth_bits_consumed']} key bits spent")
    print(f"  net secret bits       {r['net_secret_bits']}")
    print(f"  keys deposited        {r['keys_deposited']} x 256 bits, "
          f"{r['auth_reserve_bits']} bits kept to authenticate the next round")
    if r["aborted"]:
        print(f"  ABORTED: {r['abort_reason']}")
    print(f"  time                  {r['elapsed_s']:.2f} s "
          f"(optical simulation {r['simulation_s']:.2f} s)")


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.step_km <= 0 or args.to_km < args.from_km:
        raise InvalidParameter("need --step-km > 0 and --to-km >= --from-km")
    params = LinkParameters(mu=args.mu, nu=args.nu)
    model = args.model
    points: list[dict[str, Any]] = []
    estimable = model in montecarlo.OBSERVABLE_MODELS
    for point in analytic.sweep(params, args.from_km, args.to_km, args.step_km, model):
        entry: dict[str, Any] = {"distance_km": round(point.distance_km, 6),
                                 "analytic_rate": point.rate,
                                 # PLOB is unbounded at 0 km; JSON has no infinity
                                 "plob_bound": point.plob if point.plob != float("inf") else None}
        if args.pulses:
            if estimable:
                sim = montecarlo.simulated_rate(params.at_distance(point.distance_km), model,
                                                args.pulses, args.seed)
                entry["simulated_rate"] = sim.rate
                entry["simulated_stderr"] = sim.stderr
            else:
                entry["simulated_rate"] = None
        points.append(entry)
        if not args.json:
            print(f"\r{point.distance_km:7.1f} km", end="", file=sys.stderr, flush=True)
    if not args.json:
        print(file=sys.stderr)
    result = {
        "model": model,
        "parameters": {k: v for k, v in asdict(replace(params, eve=None)).items()
                       if k not in ("distance_km", "eve")},
        "max_distance_km": round(analytic.max_distance_km(params, model), 1),
        "points": points,
        "simulation": SIMULATION_LABEL if args.pulses else None,
    }
    if args.pulses and not estimable:
        result["simulated_note"] = (f"the {model} bound assumes the true single-photon yield, "
                                    "which a simulated experiment cannot observe; use "
                                    "vacuum-weak or no-decoy for simulated rates")
    if args.plot:
        _plot(result, args.plot)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_sweep(result)
    return 0


def _print_sweep(result: dict[str, Any]) -> None:
    print(f"model {result['model']}; maximum distance {result['max_distance_km']:.1f} km")
    print(f"{'km':>7} {'analytic':>12} {'simulated':>12} {'PLOB':>12}   (secret bits per pulse)")
    for p in result["points"]:
        sim = p.get("simulated_rate")
        sim_text = "" if sim is None else f"{sim:12.4e}"
        plob = p["plob_bound"]
        plob_text = "unbounded" if plob is None else f"{plob:12.4e}"
        print(f"{p['distance_km']:7.1f} {p['analytic_rate']:12.4e} {sim_text:>12} "
              f"{plob_text:>12}")
    if result["simulation"]:
        print(f"simulated rates: {result['simulation']}")


def _plot(result: dict[str, Any], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidParameter(
            "--plot needs matplotlib: pip install 'hybridkex[plot]'") from None
    pts = result["points"]
    km = [p["distance_km"] for p in pts]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plob = [(p["distance_km"], p["plob_bound"]) for p in pts if p["plob_bound"] is not None]
    ax.semilogy([x for x, _ in plob], [y for _, y in plob], "k--", label="PLOB bound")
    ax.semilogy(km, [max(p["analytic_rate"], 1e-300) for p in pts], label=(
        f"analytic ({result['model']})"))
    sim = [(p["distance_km"], p["simulated_rate"]) for p in pts
           if p.get("simulated_rate")]
    if sim:
        ax.semilogy([s[0] for s in sim], [s[1] for s in sim], "o",
                    label="Monte Carlo simulation")
    ax.set_xlabel("distance (km)")
    ax.set_ylabel("secret key rate (bits per pulse)")
    ax.set_ylim(1e-9, 10.0)
    ax.set_title("Decoy-state BB84, GYS parameters (simulated link)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
