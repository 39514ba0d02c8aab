"""``hybridkex qkd link --site DIR ...`` (one end of a link between two hosts) and
``hybridkex qkd fiber`` (the emulated fibre between them, with an optional Eve).

::

    host B:  hybridkex qkd link --site DIR --peer NAME --listen HOST:PORT
                                [--quantum-listen HOST:QPORT]
    host A:  hybridkex qkd link --site DIR --peer NAME --connect HOST:PORT
                                [--quantum-connect HOST:QPORT] [--distance-km D]
                                [--clock-hz R] [--rounds N | --target-keys N]
    fibre:   hybridkex qkd fiber --listen HOST:P --connect HOST:QPORT [--distance-km D]
                                 [--eve intercept-resend|pns --eve-fraction F]

The optics are a simulation (:mod:`hybridkex.qkd.optics`), and everything printed says
so; distillation, authentication and the deposit are the real protocol
(:mod:`hybridkex.qkd.network`).  With ``--json`` standard output carries one JSON object
per round (per train for the fibre) and nothing else; the readable report goes to
standard error.  The one-process form ``qkd link --site-a ... --store-a ...`` is
:mod:`hybridkex.cli.qkd`'s.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from hybridkex.cli.args import address, count, number, parse_address, positive_count
from hybridkex.cli.qkd_options import DISTANCE, FRACTION, NAME, measured, usage_error
from hybridkex.errors import InvalidParameter
from hybridkex.qkd.network.lanes import MAX_LANES
from hybridkex.qkd.optics.devices import MAX_TRAIN_PULSES
from hybridkex.transport.forward import format_address

__all__ = ["add_link_options", "dispatch", "register_fiber"]

CLOCK_HZ = number(0.0, 1e15, min_open=True)

Command = Callable[[argparse.Namespace], int]


def add_link_options(k: argparse.ArgumentParser) -> None:
    """The two-host form's options, beside the one-process form's."""
    k.add_argument("--site", type=NAME, metavar="DIR",
                   help="this end's site directory (a path; the two-host form)")
    k.add_argument("--peer", type=NAME, metavar="NAME", help="the other site (default: the "
                   "only peer in trust/)")
    where = k.add_mutually_exclusive_group()
    where.add_argument("--listen", type=address, metavar="HOST:PORT",
                       help="be Bob (the receiver): wait for Alice's classical connection here "
                       "(HOST:PORT)")
    where.add_argument("--connect", type=address, metavar="HOST:PORT",
                       help="be Alice (the sender): connect to Bob there (HOST:PORT)")
    k.add_argument("--quantum-listen", type=address, metavar="HOST:QPORT",
                   help="Bob's detector listens here for the pulses (default HOST:PORT+1)")
    k.add_argument("--quantum-connect", type=address, metavar="HOST:QPORT",
                   help="Alice's source sends the pulses here: Bob's detector or a "
                   "`qkd fiber` (default HOST:PORT+1)")
    k.add_argument("--clock-hz", type=CLOCK_HZ, metavar="R",
                   help="pace the emulated source at this many pulses per second "
                   "(> 0; default: as fast as it goes)")
    k.add_argument("--rounds", type=positive_count, metavar="N",
                   help="stop after this many rounds, aborted ones included (1..1e18)")
    k.add_argument("--store", type=NAME, metavar="URL",
                   help="deposit into this key store instead of the site's keys.db (e.g. "
                   "the store a KME serves: sqlite:///path or postgresql://...)")
    k.add_argument("--lanes", type=count(1, MAX_LANES), metavar="N",
                   help="rounds in flight at once over the classical connection, to hide its "
                   f"round-trip time (connecting end; 1..{MAX_LANES}, default 6)")
    k.add_argument("--asymptotic", action="store_true",
                   help="asymptotic decoy bounds instead of finite-size (both ends alike)")
    k.add_argument("--max-pulses-per-round", type=positive_count, metavar="N",
                   help="the longest pulse train the detector takes (listening end; "
                   f"1..1e18, default {MAX_TRAIN_PULSES:.0e}); it also holds at most "
                   "--memory-limit-mb of clicks")


def dispatch(one_process: Command) -> Command:
    """``qkd link``: the two-host form when --site is given, else the one-process form."""

    def run(args: argparse.Namespace) -> int:
        two_host = ("site", "peer", "listen", "connect", "quantum_listen", "quantum_connect",
                    "clock_hz", "rounds", "store", "asymptotic", "lanes",
                    "max_pulses_per_round")
        one = ("site_a", "store_a", "site_b", "store_b")
        if args.site is None:
            if any(getattr(args, name) not in (None, False) for name in two_host):
                return _usage("qkd link: the two-host options need --site DIR")
            if any(getattr(args, name) is None for name in one):
                return _usage("qkd link: give --site DIR with --listen or --connect (one end "
                              "of a two-host link), or --site-a, --store-a, --site-b and "
                              "--store-b (both ends in this process)")
            if args.distance_km is None:
                args.distance_km = 25.0
            return one_process(args)
        if any(getattr(args, name) is not None for name in one):
            return _usage("qkd link: --site (one end) and --site-a/--site-b (both ends) "
                          "exclude each other")
        return _two_host(args)

    return run


def _usage(message: str) -> int:
    print(f"hybridkex: {message}", file=sys.stderr)
    return 2


# -- one end of a two-host link ----------------------------------------------------------------


def _two_host(args: argparse.Namespace) -> int:
    from hybridkex.keydelivery.store import open_store
    from hybridkex.qkd.budget import BudgetExceeded
    from hybridkex.qkd.distillation import DistillationConfig
    from hybridkex.qkd.labels import SIMULATION_LABEL
    from hybridkex.qkd.network.deposit import DepositEnd
    from hybridkex.qkd.network.endpoint import (
        DEFAULT_LANES,
        AliceEnd,
        BobEnd,
        Discarded,
        EndSettings,
        RoundReport,
        Stop,
    )
    from hybridkex.qkd.network.journal import DepositJournal
    from hybridkex.qkd.optics.devices import DetectorDevice, SourceDevice, listen
    from hybridkex.qkd.parameters import finite_key_parameters
    from hybridkex.site import Site
    from hybridkex.site.keysource import KME

    if args.listen is None and args.connect is None:
        return _usage("qkd link --site: give --listen HOST:PORT (Bob) or --connect "
                      "HOST:PORT (Alice)")
    alice = args.connect is not None
    if not alice and any(v is not None for v in (args.quantum_connect, args.distance_km,
                                                 args.clock_hz, args.rounds,
                                                 args.target_keys, args.lanes)):
        return _usage("qkd link --listen: --quantum-connect, --distance-km, --clock-hz, "
                      "--rounds, --target-keys and --lanes belong to the connecting end "
                      "(Alice)")
    budget: Callable[[float], None] | None = None
    if alice:  # refused now, before anything starts, if the run cannot fit
        budget = _budget_check(args, finite_key_parameters(),
                               DistillationConfig(finite_key=not args.asymptotic),
                               args.lanes or DEFAULT_LANES)
        at_km = finite_key_parameters(
            distance_km=args.distance_km if args.distance_km is not None else 25.0)
        try:
            budget(at_km.eta)
        except BudgetExceeded as exc:
            usage_error(args, str(exc))
    if alice and args.quantum_listen is not None:
        return _usage("qkd link --connect: --quantum-listen belongs to the listening end")
    if alice and args.max_pulses_per_round is not None:
        return _usage("qkd link --connect: --max-pulses-per-round belongs to the listening "
                      "end (the connecting end sets --pulses-per-round)")
    if args.rounds is not None and args.target_keys is not None:
        return _usage("qkd link: --rounds and --target-keys exclude each other")
    address = parse_address(args.connect or args.listen, "--connect" if alice else "--listen")
    quantum = (parse_address(args.quantum_connect or args.quantum_listen,
                             "--quantum-connect" if alice else "--quantum-listen")
               if (args.quantum_connect or args.quantum_listen)
               else (address[0], address[1] + 1))
    if quantum[1] > 65535:
        raise InvalidParameter("the quantum port PORT+1 is out of range; give it explicitly")

    # The link writes into a store; a site's KME client is not a store, so it is not opened.
    site = Site.load(args.site, open_kme=False)
    if site.settings.key_source.kind == KME and args.store is None:
        site.close()
        raise InvalidParameter(
            f"site {site.name} draws its keys from its KME ([key_source] kind = \"kme\"), so "
            "the link must deposit into the store that KME serves: give --store with the URL "
            "`kme serve --store` was given")
    peer = args.peer or site.default_peer()
    peer_scheme, peer_public = site.peer_key(peer)
    store = site.store if args.store is None else open_store(args.store, site.name)
    journal = DepositJournal(site.path / f"qkd-link-{peer}.db")
    settings = EndSettings(site.name, peer, site.scheme, site.identity.private_key,
                           peer_scheme, peer_public, store,
                           DepositEnd(journal, store, site.name, peer),
                           DistillationConfig(finite_key=not args.asymptotic))
    params = finite_key_parameters()
    stop = Stop()
    role = "alice" if alice else "bob"
    deposited = {"keys": 0, "distance": args.distance_km}

    def log(text: str) -> None:
        print(f"hybridkex qkd link ({site.name}, {role}): {text}", file=sys.stderr, flush=True)

    output = threading.Lock()

    def on_report(report: RoundReport) -> None:
        with output:
            if args.json:
                print(json.dumps(report.to_json()), flush=True)
            print(_describe(report), file=sys.stderr, flush=True)
        if report.deposit == "done":
            deposited["keys"] += report.keys_deposited
            deposited["distance"] = report.distance_km
            _record(site, peer, role, address, quantum, deposited, previous)

    previous = int(site.link_info(peer).get("keys_deposited", 0))
    _record(site, peer, role, address, quantum, deposited, previous)
    _signals(stop)
    print(f"*** QKD link: {SIMULATION_LABEL} ***", file=sys.stderr, flush=True)
    try:
        if alice:
            source = SourceDevice(quantum, params, args.pulses_per_round, args.distance_km,
                                  args.clock_hz, log=log, check=budget)
            log(f"Alice (sender) to {peer} at {format_address(address)}, pulses to "
                f"{format_address(quantum)}, {args.pulses_per_round:.3g} pulses per round")
            try:
                AliceEnd(settings, address, source, args.pulses_per_round, stop, on_report, log,
                         rounds=args.rounds, target_keys=args.target_keys,
                         lanes=args.lanes or DEFAULT_LANES).run()
            finally:
                source.close()
        else:
            server = _bound(listen, address, "--listen")
            detector = _bound(lambda where: DetectorDevice(
                where, params, log=log,
                max_pulses=args.max_pulses_per_round or MAX_TRAIN_PULSES,
                memory_bytes=int(args.memory_limit_mb * (1 << 20))), quantum,
                "--quantum-listen")
            log(f"Bob (receiver) for {peer}: listening on {format_address(server.getsockname())}"
                f", detector on {format_address(detector.address)}")
            try:
                BobEnd(settings, server, detector, stop, on_report, log).run()
            finally:
                detector.close()
                server.close()
    except Discarded:
        log("the round under way was discarded; the journals settle any deposit on the "
            "next connection")
        return 130
    finally:
        journal.close()
        if store is not site.store:
            store.close()
        site.close()
    log(f"stopped: {deposited['keys']} keys deposited")
    return 0


def _budget_check(args: argparse.Namespace, params: Any, config: Any,
                  lanes: int) -> Callable[[float], None]:
    """What Alice checks before she starts (at the transmittance of --distance-km) and on
    every connection (at the one the element downstream asks for: a fibre with Eve asks
    for 1, and that hello is not authenticated): one round's distillation of
    --pulses-per-round, plus the pulse trains she holds at once (one per lane, one
    ready, two the detector has not acknowledged), within --memory-limit-mb; and the
    round within --time-limit-s."""
    from dataclasses import replace

    from hybridkex.qkd.budget import BudgetExceeded, check_budget
    from hybridkex.qkd.optics.source import RECORD_BYTES_PER_LIT_PULSE

    held = lanes + 3

    def check(tau: float) -> None:
        at = replace(params, distance_km=0.0, eta_bob=min(1.0, max(tau, 0.0)))
        cost = check_budget(at, args.pulses_per_round, args.memory_limit_mb,
                            args.time_limit_s, config=config,
                            pulses_option="--pulses-per-round")
        # at distance 0 and detector efficiency tau, a detection is a pulse with light
        trains = held * RECORD_BYTES_PER_LIT_PULSE * cost.detections
        total_mb = (cost.memory_bytes + trains) / (1 << 20)
        if total_mb > args.memory_limit_mb:
            raise BudgetExceeded(
                f"refused: at transmittance {tau:.3g}, {args.pulses_per_round:.3g} pulses per "
                f"round would need about {total_mb:,.0f} MiB with the {held} pulse trains "
                f"Alice holds at once ({lanes} lanes), above --memory-limit-mb "
                f"{args.memory_limit_mb:g}; lower --pulses-per-round or --lanes, or raise "
                "--memory-limit-mb")

    return check


def _bound(make: Callable[[tuple[str, int]], Any], address: tuple[str, int],
           option: str) -> Any:
    """A listening socket or device on ``address``, or one line saying why not."""
    try:
        return make(address)
    except OSError as exc:
        raise InvalidParameter(f"cannot listen on {format_address(address)} ({option}): "
                               f"{exc.strerror or exc}") from None


def _record(site: Any, peer: str, role: str, address: tuple[str, int],
            quantum: tuple[str, int], deposited: dict[str, Any], previous: int) -> None:
    """site.toml's [links.<peer>]: who, where, SIMULATED, how far, how many keys."""
    link: dict[str, Any] = {
        "qkd": "SIMULATED decoy-state BB84 (Monte Carlo optics), not a physical QKD device",
        "simulated": True,
        "role": role,
        "address": format_address(address),
        "quantum_address": format_address(quantum),
        "keys_deposited": previous + int(deposited["keys"]),
    }
    if deposited["distance"] is not None:
        link["distance_km"] = float(deposited["distance"])
    site.record_link(peer, link)


def _signals(stop: Any) -> None:
    """First SIGINT/SIGTERM: finish the round, then stop.  Second: discard it now."""
    from hybridkex.qkd.network.endpoint import Discarded

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.requested.is_set():
            raise Discarded
        stop.requested.set()
        print("hybridkex qkd link: stopping after this round (again to discard it)",
              file=sys.stderr, flush=True)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def _describe(r: Any) -> str:
    """The round's one-line report; a figure the round did not measure says so."""
    head = f"round {r.round} ({r.role}, {r.site}-{r.peer}, SIMULATED optics)"
    if r.aborted:
        return (f"{head}: ABORTED: {r.abort_reason}; QBER X {measured(r.qber_x, '.4f')}; "
                f"{r.pulses:.3g} pulses, {measured(r.detections, 'd')} detections, "
                f"{r.round_trips} round trips, nothing deposited")
    pool = (f"pool {r.pool_available_to_take} to take / {r.pool_available_to_fetch} to fetch"
            if r.pool_available_to_take is not None else "pool not read")
    note = "" if r.deposit == "done" else f" (deposit {r.deposit}: {r.abort_reason})"
    return (f"{head}: {r.pulses:.3g} pulses, {measured(r.detections, 'd')} detections, "
            f"QBER {measured(r.qber, '.4f')} (X {measured(r.qber_x, '.4f')}), "
            f"Y1 >= {measured(r.y1_lower, '.3g')}, e1 <= {measured(r.e1_upper, '.4f')}, "
            f"{measured(r.ec_leaked_bits, 'd')} bits leaked "
            f"(f {measured(r.ec_efficiency, '.3f')}), {r.round_trips} round trips, "
            f"{r.secret_bits} secret bits, {r.auth_mode} {r.auth_bits_consumed} auth bits, "
            f"net {r.net_secret_bits}, +{r.keys_deposited} keys{note}, {pool}")


# -- the fibre ---------------------------------------------------------------------------------


def register_fiber(qsub: Any) -> None:
    f = qsub.add_parser("fiber", help="the emulated fibre between two link ends, optionally "
                        "with an eavesdropper (simulation)")
    f.add_argument("--listen", type=address, required=True, metavar="HOST:P",
                   help="where Alice's source connects (HOST:PORT)")
    f.add_argument("--connect", type=address, required=True, metavar="HOST:QPORT",
                   help="Bob's detector, his --quantum-listen (HOST:PORT)")
    f.add_argument("--distance-km", type=DISTANCE, default=25.0, metavar="KM",
                   help="fibre length (km, 0..1000; default %(default)g)")
    f.add_argument("--eve", choices=["intercept-resend", "pns"],
                   help="an eavesdropper on the fibre (simulation)")
    f.add_argument("--eve-fraction", type=FRACTION, default=1.0, metavar="F",
                   help="fraction of the pulses Eve attacks (0..1; default %(default)g)")
    f.add_argument("--json", action="store_true", help="one JSON object per pulse train")
    f.set_defaults(func=lambda args: cmd_fiber(args))  # looked up when called


def cmd_fiber(args: argparse.Namespace) -> int:
    from hybridkex.qkd.labels import SIMULATION_LABEL
    from hybridkex.qkd.optics.devices import FibreDevice
    from hybridkex.qkd.optics.fibre import FibreStats
    from hybridkex.qkd.parameters import Eavesdropper, LinkParameters

    if args.eve is None and args.eve_fraction != 1.0:
        return _usage("qkd fiber: --eve-fraction needs --eve")
    eve = Eavesdropper(args.eve, args.eve_fraction) if args.eve else None
    fibre_of = "with Eve: " + f"{args.eve} on a fraction {args.eve_fraction:g}" if eve else \
        "no eavesdropper"

    def on_train(train: bytes, slots: int, stats: FibreStats) -> None:
        entry = {"train": train.hex(), "pulses": slots, "distance_km": args.distance_km,
                 "eve": args.eve, "eve_fraction": args.eve_fraction if eve else None,
                 "pulses_with_light_in": stats.pulses_in,
                 "pulses_with_light_out": stats.pulses_out,
                 "attacked": stats.attacked if eve else None,
                 "eve_knows": stats.eve_knows if eve else None,
                 "simulated": True, "simulation": SIMULATION_LABEL}
        if args.json:
            print(json.dumps(entry), flush=True)
        print(f"hybridkex qkd fiber: train {train.hex()[:8]}: {slots:.3g} pulses, "
              f"{stats.pulses_in} with light in, {stats.pulses_out} out"
              + (f", Eve attacked {stats.attacked}" if eve else ""),
              file=sys.stderr, flush=True)

    def log(text: str) -> None:
        print(f"hybridkex qkd fiber: {text}", file=sys.stderr, flush=True)

    fibre = _bound(lambda where: FibreDevice(
        where, parse_address(args.connect, "--connect"), args.distance_km,
        LinkParameters.alpha_db_per_km, eve, on_train=on_train, log=log),
        parse_address(args.listen, "--listen"), "--listen")
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()
        fibre.close()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    print(f"*** QKD fibre: {SIMULATION_LABEL} ***", file=sys.stderr, flush=True)
    log(f"{args.distance_km:g} km, {fibre_of}; listening on {format_address(fibre.address)}, "
        f"detector at {args.connect}")
    fibre.serve_forever()
    return 0
