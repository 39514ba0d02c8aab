"""Argument types the command groups share: each refuses nonsense (NaN, inf, negative
or zero where meaningless, ``1,000``) when the command line is parsed, with one line
that says what was wrong."""

from __future__ import annotations

import argparse
import math

from hybridkex.errors import InvalidParameter

__all__ = ["connection_count", "fraction", "grace_seconds", "kilometres", "number",
           "parse_address", "positive_count", "positive_number", "seconds"]


def number(text: str) -> float:
    """A finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
    return value


def positive_count(text: str) -> int:
    """A whole number of at least 1, also written as a float (``5e8``)."""
    value = number(text)
    if value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, not {text}")
    return int(value)


def positive_number(text: str) -> float:
    """A finite number above 0."""
    value = number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def kilometres(text: str) -> float:
    """A fibre length: a finite number of km, 0 or more."""
    value = number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"a distance must be 0 km or more, not {text}")
    return value


def fraction(text: str) -> float:
    """A fraction from 0 to 1."""
    value = number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, not {text}")
    return value


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
