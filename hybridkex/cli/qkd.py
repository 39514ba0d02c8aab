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
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from hybridkex.cli import qkd_eve, qkd_link
from hybridkex.cli.args import OneLineParser, positive_count, seed
from hybridkex.cli.progress import ItemProgress, RoundProgress
from hybridkex.cli.qkd_options import (
    DECOY_INTENSITY,
    DISTANCE,
    EPSILON,
    FRACTION,
    INTENSITY,
    NAME,
    NOT_MEASURED,
    OPEN_PROBABILITY,
    OUTPUT_FILE,
    STEP_KM,
    add_budget_options,
    measured,
    simulate_parameters,
    usage_error,
    within_budget,
)
from hybridkex.cli.qkd_plot import MODEL_LABELS, plot_sweep
from hybridkex.errors import HybridKexError, InvalidParameter
from hybridkex.keydelivery.store import KeyStore, open_store
from hybridkex.qkd import analytic, montecarlo
from hybridkex.qkd.distillation import DistillationConfig
from hybridkex.qkd.labels import SIMULATION_LABEL
from hybridkex.qkd.link import QKDLink, SiteIdentity
from hybridkex.qkd.parameters import LinkParameters, finite_key_parameters

#: ``qkd simulate``'s exit status when the round aborted (no key); 1 is an error.
EXIT_ABORTED = 3
_SIMULATE_EPILOG = (f"exit status: 0 when the round distilled a key, {EXIT_ABORTED} when it "
                    "aborted (the report shows the measured values and bounds that decided "
                    "it), 1 on an error")


def register(qkd: argparse.ArgumentParser) -> None:
    """Add the ``qkd`` subcommands to the ``hybridkex qkd`` parser.  The command line
    calls this only when that parser parses (:mod:`hybridkex.cli`), because these
    options name the simulator's defaults, and importing it loads numpy.  Every option
    says its unit and range in its help, and its type refuses anything else with a
    one-line error (exit status 2)."""
    qsub = qkd.add_subparsers(dest="qkd_command", required=True, parser_class=OneLineParser)

    p = qsub.add_parser("simulate", help="one link session end to end (simulation)",
                        epilog=_SIMULATE_EPILOG,
                        description="Simulate one round of the decoy-state BB84 link and "
                        "distil it with the real two-party protocol.  A SIMULATION.")
    p.add_argument("--distance-km", type=DISTANCE, required=True, metavar="KM",
                   help="fibre length (km, 0..1000)")
    p.add_argument("--pulses", type=positive_count, required=True, metavar="N",
                   help="pulses Alice sends (a whole number, 5e8 allowed; 1..1e18)")
    p.add_argument("--eve", choices=["intercept-resend", "pns"],
                   help="an eavesdropper on the fibre (default: none)")
    p.add_argument("--eve-fraction", type=FRACTION, metavar="F",
                   help="share of pulses Eve intercepts (intercept-resend) or of "
                   "single-photon pulses she blocks (pns) (fraction, 0..1; default 1: every "
                   "pulse; needs --eve)")
    p.add_argument("--seed", type=seed, metavar="S",
                   help="make the simulated round reproducible (integer, 0..2^64-1; "
                   "default: a fresh random seed)")
    p.add_argument("--preset", choices=["finite-key", "gys"], default="finite-key",
                   help="intensities and probabilities: finite-key (default; see "
                   "docs/qkd.md) or the GYS set of the analytic curves")
    p.add_argument("--p-z", type=OPEN_PROBABILITY, metavar="P",
                   help="probability of the Z basis (probability, 0 < P < 1; 0.5: standard "
                   "BB84, more: efficient BB84; default from --preset)")
    p.add_argument("--mu", type=INTENSITY, metavar="MU",
                   help="signal intensity (mean photons per pulse, > 0 and <= 100; above "
                   "--nu; default from --preset)")
    p.add_argument("--nu", type=DECOY_INTENSITY, metavar="NU",
                   help="weak decoy intensity (mean photons per pulse, >= 0; below --mu; "
                   "default from --preset)")
    p.add_argument("--asymptotic", action="store_true",
                   help="asymptotic decoy bounds instead of finite-size (Lim et al. 2014)")
    p.add_argument("--eps-sec", type=EPSILON, default=DistillationConfig.eps_sec,
                   metavar="EPS", help="security parameter of the finite-size key "
                   "(probability, 1e-300 <= EPS < 1; default %(default)g)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_budget_options(p)
    p.set_defaults(func=cmd_simulate, parser=p)

    k = qsub.add_parser("link", help="run the simulated link: one end of it on this host "
                        "(--site with --listen or --connect), or both ends in this process "
                        "(--site-a ... --store-b), filling the sites' key stores")
    k.add_argument("--site-a", type=NAME,
                   help="name of site A, Alice's end (text, non-empty)")
    k.add_argument("--store-a", type=NAME,
                   help="site A's key store (URL: memory:, sqlite:///PATH or postgresql://...)")
    k.add_argument("--site-b", type=NAME,
                   help="name of site B, Bob's end (text, non-empty, not --site-a)")
    k.add_argument("--store-b", type=NAME,
                   help="site B's key store (URL, as --store-a)")
    k.add_argument("--distance-km", type=DISTANCE, metavar="KM",
                   help="fibre length (km, 0..1000; default 25)")
    k.add_argument("--target-keys", type=positive_count, metavar="N",
                   help="stop once this many 256-bit keys were deposited (keys, 1..1e18; "
                   "default: run until interrupted)")
    k.add_argument("--pulses-per-round", type=positive_count, default=500_000_000, metavar="N",
                   help="pulses per round (1..1e18; default %(default).0e)")
    k.add_argument("--json", action="store_true", help="one JSON object per round on stdout")
    add_budget_options(k)
    qkd_link.add_link_options(k)
    # looked up when called, so a test that replaces cmd_link replaces what runs
    k.set_defaults(func=qkd_link.dispatch(lambda args: cmd_link(args)), parser=k)
    qkd_link.register_fiber(qsub)

    s = qsub.add_parser("sweep", help="key rate against distance: analytic, and simulated")
    s.add_argument("--from-km", type=DISTANCE, required=True, metavar="KM",
                   help="first distance (km, 0..1000)")
    s.add_argument("--to-km", type=DISTANCE, required=True, metavar="KM",
                   help="last distance (km, 0..1000, at least --from-km)")
    s.add_argument("--step-km", type=STEP_KM, required=True, metavar="KM",
                   help="distance step (km, > 0)")
    s.add_argument("--model", choices=list(analytic.MODELS), default="vacuum-weak",
                   help="key-rate model (default %(default)s): a published GLLP model, or "
                   "as-run, the protocol as the simulator runs it (Z-keyed with p_Z, X for "
                   "estimation, Cascade's f), drawn beside the published curves")
    s.add_argument("--mu", type=INTENSITY, default=LinkParameters.mu, metavar="MU",
                   help="signal intensity (mean photons per pulse, > 0 and <= 100; "
                   "default %(default)g)")
    s.add_argument("--nu", type=DECOY_INTENSITY, default=LinkParameters.nu, metavar="NU",
                   help="weak decoy intensity (mean photons per pulse, >= 0, below --mu; "
                   "default %(default)g)")
    s.add_argument("--p-z", type=OPEN_PROBABILITY, default=LinkParameters.p_z, metavar="P",
                   help="probability of the Z basis at each end (probability, 0 < P < 1; "
                   "default %(default)g)")
    s.add_argument("--pulses", type=positive_count, metavar="N",
                   help="also estimate the rate from this many simulated pulses per point "
                   "(1..1e18)")
    s.add_argument("--seed", type=seed, default=1, metavar="S",
                   help="seed of the simulated points (integer, 0..2^64-1; default 1)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--plot", type=OUTPUT_FILE, metavar="FILE.png",
                   help="draw rate against distance (needs the plot extra: pip install "
                   "'hybridkex[plot]')")
    add_budget_options(s, memory=False)
    s.set_defaults(func=cmd_sweep, parser=s)

    qkd_eve.register(qsub)

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


def cmd_simulate(args: argparse.Namespace) -> int:
    params = simulate_parameters(args)
    config = DistillationConfig(finite_key=not args.asymptotic, eps_sec=args.eps_sec)
    cost = within_budget(args, params, args.pulses, config=config)
    link = QKDLink("site-a", "site-b", params, config, identity_a=SiteIdentity.generate(),
                   identity_b=SiteIdentity.generate())
    progress = None if args.json else RoundProgress(cost)
    report = link.run_round(args.pulses, args.seed, stages=progress)
    if progress is not None:
        progress.finish()
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        _print_report(report.to_json())
    return EXIT_ABORTED if report.aborted else 0


def cmd_link(args: argparse.Namespace) -> int:
    within_budget(args, finite_key_parameters(distance_km=args.distance_km),
                  args.pulses_per_round, pulses_option="--pulses-per-round")
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
                # redrawn in place on a terminal, a plain line per round elsewhere
                tty = sys.stderr.isatty()
                start, end = ("\r", "") if tty else ("", "\n")
                print(f"{start}round {rounds}: {deposited}{target} keys deposited "
                      f"({status})", end=end, file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        if not args.json and sys.stderr.isatty():
            print(file=sys.stderr)
        store_a.close()
        store_b.close()
    print(f"{deposited} keys deposited in {rounds} rounds ({aborted} aborted) for link "
          f"{args.site_a}-{args.site_b}", file=sys.stderr)
    return 0


_QBER_BASIS = {"Z-key": "Z key block, errors corrected", "Z-sample": "Z sample"}


def _print_report(r: dict[str, Any]) -> None:
    print(f"*** {SIMULATION_LABEL} ***")
    seed = "seed not shown" if r["seed"] is None else f"seed {r['seed']}"
    print(f"link: {r['distance_km']:g} km, {r['pulses']:.3g} pulses ({seed})")
    print(f"  detections            {measured(r['detections'], 'd')}")
    print(f"  sifted bits           {measured(r['sifted_bits'], 'd')}")
    basis = _QBER_BASIS.get(r["qber_basis"] or "", "")
    print(f"  QBER                  {measured(r['qber'], '.4f')}"
          + (f" ({basis})" if basis else "") + f", abort above {r['qber_threshold']:g}")
    print(f"                        X basis {measured(r['qber_x'], '.4f')}, "
          f"Z sample {measured(r['qber_z_sample'], '.4f')}")
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
              f"f = {measured(r['ec_efficiency'], '.3f')}, {r['ec_round_trips']} round trips")
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
        usage_error(args, "arguments --from-km, --to-km: need --to-km >= --from-km")
    if args.nu >= args.mu:
        usage_error(args, "arguments --mu, --nu: need --mu above --nu")
    count = qkd_eve.point_count(args.from_km, args.to_km, args.step_km)
    if count > qkd_eve.MAX_POINTS:
        usage_error(args, f"arguments --from-km, --to-km, --step-km: {count:.3g} points, at "
                    f"most {qkd_eve.MAX_POINTS}; raise --step-km")
    if args.plot:
        _check_plot(args.plot)
    params = LinkParameters(mu=args.mu, nu=args.nu, p_z=args.p_z)
    model = args.model
    points: list[dict[str, Any]] = []
    estimable = model in montecarlo.OBSERVABLE_MODELS
    distances = analytic.sweep(params, args.from_km, args.to_km, args.step_km, model)
    if args.pulses and estimable:
        farthest = params.at_distance(distances[0].distance_km if distances else 0.0)
        within_budget(args, farthest, args.pulses, rounds=len(distances))
    # The protocol's own curve is drawn beside the published ones it differs from.
    progress = None if args.json else ItemProgress("sweep", len(distances))
    published: tuple[analytic.Model, ...] = (
        ("vacuum-weak", "infinite-decoy") if model == "as-run" else ())
    for point in distances:
        entry: dict[str, Any] = {"distance_km": round(point.distance_km, 6),
                                 "analytic_rate": point.rate,
                                 # PLOB is unbounded at 0 km; JSON has no infinity
                                 "plob_bound": point.plob if point.plob != float("inf") else None}
        at = params.at_distance(point.distance_km)
        if published:
            entry["published_rates"] = {name: analytic.key_rate(at, name) for name in published}
        if args.pulses:
            if estimable:
                sim = montecarlo.simulated_rate(at, model, args.pulses, args.seed)
                entry["simulated_rate"] = sim.rate
                entry["simulated_stderr"] = sim.stderr
            else:
                entry["simulated_rate"] = None
        points.append(entry)
        if progress is not None:
            progress(len(points), f"points ({point.distance_km:g} km)")
    result: dict[str, Any] = {
        "model": model,
        "parameters": {k: v for k, v in asdict(replace(params, eve=None)).items()
                       if k not in ("distance_km", "eve")},
        "max_distance_km": round(analytic.max_distance_km(params, model), 1),
        "points": points,
        "simulation": SIMULATION_LABEL if args.pulses else None,
    }
    if model == "as-run":
        result["f_ec"] = analytic.CASCADE_EFFICIENCY
        result["z_sample_fraction"] = analytic.Z_SAMPLE_FRACTION
        result["published_max_distance_km"] = {
            name: round(analytic.max_distance_km(params, name), 1) for name in published}
    if args.pulses and not estimable:
        result["simulated_note"] = (f"the {model} bound assumes the true single-photon yield, "
                                    "which a simulated experiment cannot observe; use "
                                    "vacuum-weak, no-decoy or as-run for simulated rates")
    if args.plot:
        plot_sweep(result, args.plot)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_sweep(result)
    return 0


def _print_sweep(result: dict[str, Any]) -> None:
    print(f"model {result['model']} ({MODEL_LABELS.get(result['model'], '')}); "
          f"maximum distance {result['max_distance_km']:.1f} km")
    published = list(result.get("published_max_distance_km", {}))
    print(f"{'km':>7} {result['model']:>12} "
          + "".join(f"{name:>15}" for name in published)
          + f" {'simulated':>12} {'± stderr':>10} {'PLOB':>12}   (secret bits per pulse)")
    for p in result["points"]:
        sim = p.get("simulated_rate")
        sim_text = "" if sim is None else f"{sim:12.4e}"
        err_text = "" if sim is None else f"{p['simulated_stderr']:10.2e}"
        plob = p["plob_bound"]
        plob_text = "unbounded" if plob is None else f"{plob:12.4e}"
        others = "".join(f"{p['published_rates'][name]:15.4e}" for name in published)
        print(f"{p['distance_km']:7.1f} {p['analytic_rate']:12.4e}{others} {sim_text:>12} "
              f"{err_text:>10} {plob_text:>12}")
    for name, reach in result.get("published_max_distance_km", {}).items():
        print(f"  {name}: {MODEL_LABELS[name]}, maximum distance {reach:.1f} km")
    if result["simulation"]:
        print(f"simulated rates: {result['simulation']}")
