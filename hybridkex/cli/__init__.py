"""The ``hybridkex`` command line.  Each subcommand is a thin layer over the library;
each group of subcommands lives in its own module here.

Starting the command line imports no QKD simulator (numpy): the modules here import the
link and the demos inside the commands that run them, and the ``qkd`` group, whose
options name the simulator's defaults, gets its options only when it parses.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from hybridkex import __version__
from hybridkex.cli import channel as channel_commands
from hybridkex.cli import demo as demo_command
from hybridkex.cli import kme as kme_commands
from hybridkex.cli import rndl as rndl_command
from hybridkex.cli import selftest as selftest_command
from hybridkex.cli import site as site_commands
from hybridkex.errors import HybridKexError


def _exit_codes() -> str:
    lines = ["exit status (every command; docs/sites.md):"]
    for code, meaning in channel_commands.EXIT_CODES:
        lines += textwrap.wrap(meaning, 78, initial_indent=f"  {code:<5}",
                               subsequent_indent=" " * 7)
    lines.append("Every failure is one line on stderr that says what happened.")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line too (argparse would print the whole usage first), and
    arguments that may be added when the parser first parses (``build``): a command
    group that is slow to set up costs nothing when another command runs."""

    def __init__(self, *args: Any,
                 build: Callable[[argparse.ArgumentParser], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._build = build

    def parse_known_args(self, *args: Any, **kwargs: Any) -> Any:
        if self._build is not None:
            build, self._build = self._build, None
            build(self)
        return super().parse_known_args(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(channel_commands.EXIT_USAGE,
                  f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _qkd_commands(parser: argparse.ArgumentParser) -> None:
    from hybridkex.cli import qkd as qkd_commands

    qkd_commands.register(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hybridkex",
        description="Hybrid X25519 + ML-KEM + QKD key exchange.",
        epilog=_exit_codes(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hybridkex {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo_command.register(sub)
    selftest_command.register(sub)
    site_commands.register(sub)
    channel_commands.register(sub)
    sub.add_parser("qkd", help="the simulated decoy-state BB84 link", build=_qkd_commands)
    kme_commands.register(sub)
    rndl_command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except HybridKexError as exc:
        print(f"hybridkex: {' '.join(str(exc).split())}", file=sys.stderr)
        return channel_commands.EXIT_LOCAL
    except OSError as exc:  # a file the command was pointed at: say which, and why
        print(f"hybridkex: {_os_error(exc)}", file=sys.stderr)
        return channel_commands.EXIT_LOCAL
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return channel_commands.EXIT_INTERRUPTED


def _os_error(exc: OSError) -> str:
    what = exc.strerror or type(exc).__name__
    if exc.filename is not None:
        return f"{exc.filename}: {what}"
    return what
