"""The ``hybridkex`` command line.  Each subcommand is a thin layer over the library;
each group of subcommands lives in its own module here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hybridkex import __version__
from hybridkex.cli import channel as channel_commands
from hybridkex.cli import demo as demo_command
from hybridkex.cli import kme as kme_commands
from hybridkex.cli import qkd as qkd_commands
from hybridkex.cli import rndl as rndl_command
from hybridkex.cli import selftest as selftest_command
from hybridkex.cli import site as site_commands
from hybridkex.errors import HybridKexError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybridkex",
        description="Hybrid X25519 + ML-KEM + QKD key exchange.",
    )
    parser.add_argument("--version", action="version", version=f"hybridkex {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo_command.register(sub)
    selftest_command.register(sub)
    site_commands.register(sub)
    channel_commands.register(sub)
    qkd_commands.register(sub)
    kme_commands.register(sub)
    rndl_command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except HybridKexError as exc:
        print(f"hybridkex: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
