"""``hybridkex qkd simulate`` and ``hybridkex qkd sweep``: the simulated QKD link.

Everything these commands show is labelled a simulation: the optical layer is a
Monte Carlo model, the distillation that follows it is the real protocol.  A figure the
round did not measure shows as "not measured" (JSON null), never as zero.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

from hybridkex.cli.args import fraction, kilometres, positive_count, positive_number
from hybridkex.errors import HybridKexError, InvalidParameter
from hybridkex.keydelivery.store import KeyStore, open_store
from hybridkex.qkd import analytic, montecarlo
from hybridkex.qkd.distillation import DistillationConfig
from hybridkex.qkd.labels import SIMULATION_LABEL
from hybridkex.qkd.link import QKDLink, SiteIdentity
from hybridkex.qkd.parameters import Eavesdropper, LinkParameters, finite_key_parameters

#: ``qkd simulate``'s exit status when the round aborted (no key); 1 is an error.
EXIT_ABORTED = 3
_SIMULATE_EPILOG = (f"exit status: 0 when the round distilled a key, {EXIT_ABORTED} when it "
                    "aborted (the report shows the measured values and bounds that decided "
                    "it), 1 on an error")


def register(qkd: argparse.ArgumentParser) -> None:
    """Add the ``qkd`` subcommands to the ``hybridkex qkd`` parser.  The command line
    calls this only when that parser parses (:mod:`hybridkex.cli`), because these
    options name the simulator's defaults, and importing it loads numpy."""
    qsub = qkd.add_subparsers(dest="qkd_command", required=True)

    p = qsub.add_parser("simulate", help="one link session end to end (simulation)",
                        epilog=_SIMULATE_EPILOG)
    p.add_argument("--distance-km", type=kilometres, required=True)
    p.add_argument("--pulses", type=positive_count, required=True)
    p.add_argument("--eve", choices=["intercept-resend", "pns"])
    p.add_argument("--eve-fraction", type=fraction, default=1.0,
                   help="fraction of the pulses Eve attacks, 0 to 1 (default 1: every "
                   "pulse; only with --eve)")
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

    k = qsub.add_parser("link", help="run the simulated link, filling both sites' key stores")
    k.add_argument("--site-a", required=True)
    k.add_argument("--store-a", required=True, help="memory:, sqlite:///path or postgresql://...")
    k.add_argument("--site-b", required=True)
    k.add_argument("--store-b", required=True)
    k.add_argument("--distance-km", type=kilometres, default=25.0)
    k.add_argument("--target-keys", type=positive_count,
                   help="stop once this many 256-bit keys were deposited (default: run until "
                   "interrupted)")
    k.add_argument("--pulses-per-round", type=positive_count, default=500_000_000)
    k.add_argument("--json", action="store_true", help="one JSON object per round on stdout")
    k.set_defaults(func=cmd_link)

    s = qsub.add_parser("sweep", help="key rate against distance: analytic, and simulated")
    s.add_argument("--from-km", type=kilometres, required=True)
    s.add_argument("--to-km", type=kilometres, required=True)
    s.add_argument("--step-km", type=positive_number, required=True)
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


def _open_store(url: str, site: str, option: str) -> KeyStore:
    """The store ``url`` names, or one line saying why it cannot be opened."""
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if not path.parent.is_dir():
            raise InvalidParameter(f"{option} {url}: the directory {path.parent} does not "
                                   "exist (sqlite:///relative/path, sqlite:////absolute/path)")
    try:
        return open_store(url, site)
    except HybridKexError:
        raise
    except Exception as exc:  # sqlite3.Error, OSError: a file that cannot be opened
        raise InvalidParameter(f"{option} {url}: cannot open the key store: "
                               f"{type(exc).__name__}: {exc}") from None


def _check_plot(path: str) -> None:
    """Refuse, before any computation, a --plot file that cannot be written."""
    target = Path(path)
    parent = target.parent
    if not parent.is_dir():
        raise InvalidParameter(f"--plot {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidParameter(f"--plot {path}: the directory {parent} is not writable")
    if target.is_dir():
        raise InvalidParameter(f"--plot {path} is a directory")
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError:
        raise InvalidParameter(
            "--plot needs matplotlib: pip install 'hybridkex[plot]'") from None
    formats = FigureCanvasAgg.get_supported_filetypes()
    suffix = target.suffix.lower().lstrip(".")
    if suffix and suffix not in formats:
        raise InvalidParameter(f"--plot {path}: matplotlib cannot write .{suffix} files; "
                               f"name a .png, .pdf or .svg file (or one of "
                               f"{', '.join('.' + f for f in sorted(formats))})")


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
    else:
        _print_report(report.to_json())
    return EXIT_ABORTED if report.aborted else 0


def cmd_link(args: argparse.Namespace) -> int:
    store_a = _open_store(args.store_a, args.site_a, "--store-a")
    try:
        store_b = _open_store(args.store_b, args.site_b, "--store-b")
    except BaseException:
        store_a.close()
        raise
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


NOT_MEASURED = "not measured"
_QBER_BASIS = {"Z-key": "Z key block, errors corrected", "Z-sample": "Z sample"}


def _value(value: float | None, spec: str) -> str:
    """A figure as text, or "not measured" (the round ended before the step that measures
    it): never a zero that was not measured."""
    return NOT_MEASURED if value is None else format(value, spec)


def _print_report(r: dict[str, Any]) -> None:
    print(f"*** {SIMULATION_LABEL} ***")
    seed = "seed not shown" if r["seed"] is None else f"seed {r['seed']}"
    print(f"link: {r['distance_km']:g} km, {r['pulses']:.3g} pulses ({seed})")
    print(f"  detections            {_value(r['detections'], 'd')}")
    print(f"  sifted bits           {_value(r['sifted_bits'], 'd')}")
    basis = _QBER_BASIS.get(r["qber_basis"] or "", "")
    print(f"  QBER                  {_value(r['qber'], '.4f')}"
          + (f" ({basis})" if basis else "") + f", abort above {r['qber_threshold']:g}")
    print(f"                        X basis {_value(r['qber_x'], '.4f')}, "
          f"Z sample {_value(r['qber_z_sample'], '.4f')}")
    terms = r["pa_terms"]
    if r["finite_key"]:
        bound, error = f"finite-size, eps_sec {r['eps_sec']:.0e}", "phi_Z^U"
    else:
        bound, error = "asymptotic", "e1"
    if r["y1_lower"] is None:
        print(f"  single-photon bounds  {NOT_MEASURED}")
    else:
        print(f"  single-photon bounds  Y1 >= {r['y1_lower']:.4g}, "
              f"{error} <= {r['e1_upper']:.4f}  ({bound})")
    if r["ec_leaked_bits"] is None:
        print(f"  error correction      {NOT_MEASURED}")
    else:
        print(f"  error correction      {r['ec_leaked_bits']} bits disclosed, "
              f"f = {_value(r['ec_efficiency'], '.3f')}, {r['ec_round_trips']} round trips")
    if terms is None:
        print(f"  secret length         {NOT_MEASURED}")
    else:
        _print_terms(terms, error)
    if r["pa_input_bits"] is None:
        print(f"  privacy amplification {NOT_MEASURED}")
    else:
        print(f"  privacy amplification {r['pa_input_bits']} -> {r['secret_bits']} bits kept "
              f"(+{terms['confirmation_bits']} confirmation bits, disclosed and discarded)")
    print(f"  authentication        {r['auth_mode']}, {r['auth_bits_consumed']} key bits spent")
    print(f"  net secret bits       {r['net_secret_bits']}")
    if r["aborted"]:
        print(f"  ABORTED: {r['abort_reason']}")
    else:
        where = ("deposited in the key stores" if r["keys_deposited"]
                 else "deposited nowhere (no key store)")
        print(f"  key units             {r['key_units']} x 256 bits, {where}")
        print(f"                        {r['auth_reserve_bits']} bits kept to authenticate "
              "the next round")
    print(f"  time                  {r['elapsed_s']:.2f} s "
          f"(optical simulation {r['simulation_s']:.2f} s)")


def _print_terms(t: dict[str, Any], error: str) -> None:
    """Every term of the secret length, as ``pa_terms`` has them."""
    leak = (f"~{t['ec_leaked_bits']:.0f} (estimated before reconciliation)"
            if t["ec_leaked_estimated"] else f"{t['ec_leaked_bits']:.0f}")
    vacuum = "" if t["s_z0_lower"] is None else f"s_Z0 {t['s_z0_lower']:.0f} + "
    finite = ("" if t["finite_size_bits"] is None
              else f" - finite size {t['finite_size_bits']:.1f}")
    print(f"  secret length         {t['length']} bits  ({t['bound']})")
    print(f"    = {vacuum}s_Z1 {t['s_z1_lower']:.0f} x (1 - h({error} {t['phi_z_upper']:.4f}))"
          f" - reconciliation {leak}")
    print(f"      - verification tag {t['verification_tag_bits']}"
          f" - confirmation {t['confirmation_bits']}{finite}")
    eps = ("" if t["eps_sec"] is None else
           f"eps_sec {t['eps_sec']:.1e} ({t['eps_terms']} terms of {t['eps_per_term']:.1e}), ")
    print(f"  security              {eps}eps_cor {t['eps_cor']:.1e} (verification "
          "hash collision bound)")


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.to_km < args.from_km:
        raise InvalidParameter("need --to-km >= --from-km")
    if args.plot:
        _check_plot(args.plot)
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
