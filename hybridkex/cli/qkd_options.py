"""The options the ``qkd`` commands share: their types and ranges, the checks that need
more than one option, and the memory and time limits a run is checked against before
it starts.

A bad value is a usage error: one line on stderr, exit status 2, before anything runs.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from hybridkex.cli.args import number
from hybridkex.errors import InvalidParameter
from hybridkex.qkd.budget import (
    DEFAULT_MEMORY_LIMIT_MB,
    DEFAULT_TIME_LIMIT_S,
    BudgetExceeded,
    RoundCost,
    check_budget,
    release_freed_memory,
)
from hybridkex.qkd.distillation.data import DistillationConfig
from hybridkex.qkd.distillation.messages import MAX_INTENSITY
from hybridkex.qkd.parameters import Eavesdropper, LinkParameters, finite_key_parameters

__all__ = [
    "DECOY_INTENSITY",
    "DISTANCE",
    "EPSILON",
    "FRACTION",
    "INTENSITY",
    "NAME",
    "NOT_MEASURED",
    "OPEN_PROBABILITY",
    "OUTPUT_FILE",
    "STEP",
    "STEP_KM",
    "add_budget_options",
    "eavesdropper",
    "measured",
    "simulate_parameters",
    "usage_error",
    "within_budget",
]

#: fibre length: beyond 1000 km (210 dB) no model keys, and the sweeps stop there
DISTANCE = number(0.0, 1000.0)
STEP_KM = number(0.0, 1000.0, min_open=True)
FRACTION = number(0.0, 1.0)
STEP = number(0.0, 1.0, min_open=True)
OPEN_PROBABILITY = number(0.0, 1.0, min_open=True, max_open=True)
INTENSITY = number(0.0, MAX_INTENSITY, min_open=True)
DECOY_INTENSITY = number(0.0, MAX_INTENSITY, max_open=True)
EPSILON = number(1e-300, 1.0, max_open=True)
_MEGABYTES = number(16.0, 1e9)
_SECONDS = number(0.0, 1e12, min_open=True)


def NAME(text: str) -> str:
    """A non-empty name or location without control characters."""
    if not text.strip() or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise argparse.ArgumentTypeError(f"{text!r}: must be non-empty, without control "
                                         "characters")
    return text


def OUTPUT_FILE(text: str) -> str:
    """A file to write: its directory must exist, and it must not be a directory."""
    path = Path(text)
    if not text or path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, not a file")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: the directory {str(parent)!r} does "
                                         "not exist")
    if not os.access(parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text!r}: the directory {str(parent)!r} is not "
                                         "writable")
    return text


def usage_error(args: argparse.Namespace, message: str) -> NoReturn:
    """A bad combination of options: one line on stderr, exit status 2.  Every ``qkd``
    subcommand sets its parser as the ``parser`` default for this."""
    parser: argparse.ArgumentParser = args.parser
    parser.error(message)


def add_budget_options(parser: argparse.ArgumentParser, *, memory: bool = True) -> None:
    """The limits a run is checked against before it starts (see
    :mod:`hybridkex.qkd.budget`)."""
    if memory:
        parser.add_argument("--memory-limit-mb", type=_MEGABYTES, metavar="MB",
                            default=DEFAULT_MEMORY_LIMIT_MB,
                            help="refuse a run whose predicted peak memory is above this "
                            "(MiB, 16..1e9; default %(default)g)")
    parser.add_argument("--time-limit-s", type=_SECONDS, metavar="S",
                        default=DEFAULT_TIME_LIMIT_S,
                        help="refuse a run whose predicted time is above this (seconds, "
                        "> 0; default %(default)g)")


def within_budget(args: argparse.Namespace, params: LinkParameters, pulses: int, *,
                  config: DistillationConfig | None = None, rounds: int = 1,
                  pulses_option: str = "--pulses") -> RoundCost:
    """The predicted cost of the run, or a usage error naming the option to change."""
    release_freed_memory()
    memory = getattr(args, "memory_limit_mb", float("inf"))
    try:
        return check_budget(params, pulses, memory, args.time_limit_s, config=config,
                            rounds=rounds, pulses_option=pulses_option)
    except BudgetExceeded as exc:
        usage_error(args, str(exc))


def eavesdropper(args: argparse.Namespace) -> Eavesdropper | None:
    """``--eve`` and ``--eve-fraction`` (default 1) as an :class:`Eavesdropper`."""
    if args.eve is None:
        if args.eve_fraction is not None:
            usage_error(args, "argument --eve-fraction: needs --eve")
        return None
    return Eavesdropper(args.eve, 1.0 if args.eve_fraction is None else args.eve_fraction)


def simulate_parameters(args: argparse.Namespace) -> LinkParameters:
    """The link parameters ``simulate`` runs with: the preset, then the single values."""
    chosen = {name: getattr(args, name) for name in ("p_z", "mu", "nu")
              if getattr(args, name) is not None}
    try:
        if args.preset == "finite-key":
            return finite_key_parameters(distance_km=args.distance_km,
                                         eve=eavesdropper(args), **chosen)
        return replace(LinkParameters(), distance_km=args.distance_km, eve=eavesdropper(args),
                       **chosen)
    except InvalidParameter as exc:
        if "intensities" in str(exc):
            usage_error(args, "arguments --mu, --nu: need --mu above --nu "
                        f"(got {chosen.get('mu', 'the preset')} and "
                        f"{chosen.get('nu', 'the preset')})")
        usage_error(args, str(exc))


NOT_MEASURED = "not measured"


def measured(value: float | None, spec: str) -> str:
    """A figure as text, or "not measured" (the round ended before the step that measures
    it): never a zero that was not measured."""
    return NOT_MEASURED if value is None else format(value, spec)
