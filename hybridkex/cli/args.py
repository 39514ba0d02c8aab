"""Argument types the command groups share."""

from __future__ import annotations

import argparse
import math

__all__ = ["positive_count"]


def positive_count(text: str) -> int:
    """A whole number of at least 1, also written as a float (``5e8``)."""
    value = float(text)  # accepts 1e8
    if not math.isfinite(value) or value != int(value) or value < 1:
        raise argparse.ArgumentTypeError("must be a positive whole number")
    return int(value)
