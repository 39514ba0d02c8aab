"""Argument types the command groups share, and a parser whose errors are one line.

Every type refuses what is not a plain finite number in its range (NaN, infinities,
``1,000``, a negative count) with a message that says what it wants, so a command
never starts on nonsense and never shows a traceback.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

from hybridkex.errors import InvalidParameter

__all__ = ["OneLineParser", "address", "connection_count", "count", "fraction",
           "grace_seconds", "kilometres", "number", "parse_address", "positive_count",
           "positive_number", "seconds", "seed"]


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        hint = " (write 1000 or 1e3, without separators)" if "," in text else ""
        raise argparse.ArgumentTypeError(f"{text!r} is not a number{hint}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _range_text(minimum: float | None, maximum: float | None, min_open: bool,
                max_open: bool) -> str:
    low = "" if minimum is None else f"{'>' if min_open else '>='} {minimum:g}"
    high = "" if maximum is None else f"{'<' if max_open else '<='} {maximum:g}"
    return " and ".join(part for part in (low, high) if part)


def number(minimum: float | None = None, maximum: float | None = None, *,
           min_open: bool = False, max_open: bool = False) -> Callable[[str], float]:
    """A finite number within ``[minimum, maximum]`` (either end open if asked)."""

    def parse(text: str) -> float:
        value = _float(text)
        if (minimum is not None and (value < minimum or (min_open and value == minimum))) or (
                maximum is not None and (value > maximum or (max_open and value == maximum))):
            raise argparse.ArgumentTypeError(
                f"{text!r} is out of range: must be "
                f"{_range_text(minimum, maximum, min_open, max_open)}")
        return value

    parse.__name__ = "number"
    return parse


def count(minimum: int = 1, maximum: int | None = None) -> Callable[[str], int]:
    """A whole number in ``[minimum, maximum]``, also written as a float (``5e8``)."""

    def parse(text: str) -> int:
        value = _float(text)  # accepts 5e8
        if value != math.floor(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
        whole = int(text) if text.strip().lstrip("+-").isdigit() else int(value)
        if whole < minimum or (maximum is not None and whole > maximum):
            raise argparse.ArgumentTypeError(
                f"{text!r} is out of range: must be a whole number "
                f"{_range_text(minimum, maximum, False, False)}")
        return whole

    parse.__name__ = "count"
    return parse


#: A whole number of at least 1 (pulses, keys), at most 10^18.
positive_count = count(1, 10**18)
#: A seed: a whole number from 0 to 2^64 - 1.
seed = count(0, 2**64 - 1)
#: A finite number above 0.
positive_number = number(0, min_open=True)
#: A fibre length: a finite number of km, 0 or more.
kilometres = number(0)
#: A fraction from 0 to 1.
fraction = number(0, 1)


def _seconds(text: str) -> float:
    """``text`` as a number of seconds; the caller checks the range (and NaN, inf)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None


def seconds(text: str) -> float:
    """A time limit: a finite number of seconds above 0."""
    value = _seconds(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds above 0, "
                                         f"not {text}")
    return value


def grace_seconds(text: str) -> float:
    """A grace period: a finite number of seconds, 0 or more."""
    value = _seconds(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, 0 or more, "
                                         f"not {text}")
    return value


def connection_count(text: str) -> int:
    """A connection limit: a whole number from 1 to 1,000,000."""
    if not text.isdigit() or not 1 <= int(text) <= 1_000_000:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 1000000, "
                                         f"not {text!r}")
    return int(text)


def parse_address(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port); ``what`` (the option) names it in
    the error."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidParameter(f"{what} must be HOST:PORT with a port from 0 to 65535, "
                               f"got {text!r}")
    return host, int(port_text)


def address(text: str) -> str:
    """An argument type: ``HOST:PORT`` as :func:`parse_address` takes it, checked while
    parsing (the command parses it again where it needs the parts)."""
    try:
        parse_address(text, "the address")
    except InvalidParameter as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
