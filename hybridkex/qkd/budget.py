"""What a simulated round will cost, known before it starts: detections, key bits, memory, time.

A round's memory grows with its detections, not its pulses (the simulator and the
records keep detection events only: :mod:`hybridkex.qkd.distillation.detections`), and
its time with both.  :func:`round_cost` predicts both from the simulator's exact
expectations (:func:`hybridkex.qkd.simulator.expected_rates`) and the measured cost of
each stage, so that :func:`check_budget` can refuse a run that would not fit *before*
it starts, with one line that names the option to change, instead of running until
the kernel kills it.

The constants are measurements on one core of a 2-core x86-64 machine
(docs/performance.md, "QKD: memory and time of one round"); the time figures are
conservative there and only as good as that on other machines.  Memory is the peak
resident size a round adds to the process, both ends in one process as ``qkd
simulate`` runs them; it holds because :func:`release_freed_memory` lets freed arrays
go back to the operating system.
"""

from __future__ import annotations

import ctypes
import math
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass

from hybridkex.errors import InvalidParameter
from hybridkex.qkd.distillation.data import DistillationConfig
from hybridkex.qkd.distillation.messages import MAX_SIFT_CHUNK
from hybridkex.qkd.distillation.session import RECONCILE_SEGMENT_BITS
from hybridkex.qkd.parameters import LinkParameters
from hybridkex.qkd.progress import AMPLIFICATION, RECONCILIATION, SIFTING, SIMULATION
from hybridkex.qkd.simulator import Z_BASIS, ExpectedRates, expected_rates

__all__ = [
    "DEFAULT_MEMORY_LIMIT_MB",
    "DEFAULT_TIME_LIMIT_S",
    "BudgetExceeded",
    "RoundCost",
    "check_budget",
    "peak_rss_bytes",
    "release_freed_memory",
    "round_cost",
]

DEFAULT_MEMORY_LIMIT_MB = 512
DEFAULT_TIME_LIMIT_S = 3600.0

_MB = 1 << 20
# Measured at 1e9 and 1e10 pulses at 25 km (docs/performance.md), rounded up.
# Peak bytes per detection while both records are held (4 bytes each end).
_RECORD_BYTES = 8.0
# One sifting chunk in flight: its message, frame, tag input and decoded copies.
_SIFT_CHUNK_BYTES = 90.0 * MAX_SIFT_CHUNK
# What sifting keeps at both ends: each detection's intensity class, and a bit and a
# class per basis match; then per key bit each end's key block, Bob's corrected copy,
# the verification input and the privacy amplification seed.
_SIFTED_BYTES = 2.0
_SIFTED_MATCHED_BYTES = 4.0
_KEY_BYTES = 6.0
# Cascade, both ends, per bit of the segment being reconciled.
_CASCADE_BYTES = 90.0
# Privacy amplification: both ends at once, each one transform (at most 2^21 points,
# about 40 bytes each with its spectra) and its seed.
_AMPLIFY_BYTES = 2 * 110.0 * _MB
_AMPLIFY_BYTES_PER_BIT = 2 * 40.0 * 1.3
_FIXED_BYTES = 45.0 * _MB
# Seconds per pulse simulated, per detection sifted, per key bit reconciled and per
# key bit amplified, and per round (signatures, threads, FFT plans), with both ends
# sharing the machine's two cores; measured at 1e10 pulses, rounded up.
_SIMULATION_S = 4.0e-9
_SIFTING_S = 8.0e-7
_RECONCILIATION_S = 2.0e-6
_AMPLIFICATION_S = 2.0e-6
_FIXED_S = 1.0


class BudgetExceeded(InvalidParameter):
    """A run was refused before it started: it would not fit the memory or time limit.
    The message names the option to change."""


@dataclass(frozen=True)
class RoundCost:
    """The expected cost of one round of ``pulses`` pulses."""

    pulses: int
    detections: float
    key_bits: float
    memory_bytes: float
    stage_seconds: dict[str, float]

    @property
    def seconds(self) -> float:
        return _FIXED_S + math.fsum(self.stage_seconds.values())


def round_cost(params: LinkParameters, pulses: int,
               config: DistillationConfig | None = None) -> RoundCost:
    """The expected detections, key bits, peak memory and time of one round."""
    config = config or DistillationConfig()
    return _cost(expected_rates(params), pulses, config)


def _cost(rates: ExpectedRates, pulses: int, config: DistillationConfig) -> RoundCost:
    detections = pulses * rates.detection
    matched = pulses * (rates.matched[0] + rates.matched[1])
    key_bits = pulses * rates.matched[Z_BASIS] * (1.0 - config.z_sample_fraction)
    chunk = min(detections, MAX_SIFT_CHUNK) / MAX_SIFT_CHUNK * _SIFT_CHUNK_BYTES
    kept = _SIFTED_BYTES * detections + _SIFTED_MATCHED_BYTES * matched + _KEY_BYTES * key_bits
    peaks = (
        _RECORD_BYTES * detections + chunk,                                  # sifting
        kept + _CASCADE_BYTES * min(key_bits, RECONCILE_SEGMENT_BITS),       # reconciliation
        kept + min(_AMPLIFY_BYTES, _AMPLIFY_BYTES_PER_BIT * key_bits),       # amplification
    )
    stages = {
        SIMULATION: pulses * _SIMULATION_S,
        SIFTING: detections * _SIFTING_S,
        RECONCILIATION: key_bits * _RECONCILIATION_S,
        AMPLIFICATION: key_bits * _AMPLIFICATION_S,
    }
    return RoundCost(pulses, detections, key_bits, _FIXED_BYTES + max(peaks), stages)


def check_budget(params: LinkParameters, pulses: int, memory_limit_mb: float,
                 time_limit_s: float, *, config: DistillationConfig | None = None,
                 rounds: int = 1, pulses_option: str = "--pulses") -> RoundCost:
    """The cost of ``rounds`` rounds of ``pulses`` pulses, or :class:`BudgetExceeded` if
    they would need more memory or time than allowed; its message names the options
    that would change that."""
    config = config or DistillationConfig()
    rates = expected_rates(params)
    cost = _cost(rates, pulses, config)
    memory_mb = cost.memory_bytes / _MB
    if memory_mb > memory_limit_mb:
        fit = _most_pulses(rates, config, pulses,
                           lambda c: c.memory_bytes / _MB <= memory_limit_mb)
        raise BudgetExceeded(
            f"refused before starting: {pulses:.3g} pulses per round would need about "
            f"{memory_mb:,.0f} MiB ({cost.detections:.3g} detections expected), above "
            f"--memory-limit-mb {memory_limit_mb:g}; lower {pulses_option}"
            f"{_at_most(fit)} or raise --memory-limit-mb")
    seconds = rounds * cost.seconds
    if seconds > time_limit_s:
        fit = _most_pulses(rates, config, pulses,
                           lambda c: rounds * c.seconds <= time_limit_s)
        runs = f" over {rounds} runs" if rounds > 1 else ""
        raise BudgetExceeded(
            f"refused before starting: {pulses:.3g} pulses per round{runs} would take "
            f"about {_duration(seconds)}, above --time-limit-s {time_limit_s:g}; lower "
            f"{pulses_option}{_at_most(fit)} or raise --time-limit-s")
    return cost


def _most_pulses(rates: ExpectedRates, config: DistillationConfig, upper: int,
                 fits: Callable[[RoundCost], bool]) -> int:
    """About the most pulses whose cost still fits (costs grow with the pulses)."""
    low, high = 0, upper
    while high - low > max(1, low // 100):
        middle = (low + high) // 2
        if fits(_cost(rates, middle, config)):
            low = middle
        else:
            high = middle
    return low


def _at_most(pulses: int) -> str:
    return f" (at most about {pulses:.2g} fit)" if pulses >= 1 else ""


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    years = seconds / (365.25 * 86400)
    return f"{years:.3g} years" if years >= 1 else f"{seconds / 86400:.0f} days"


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


def release_freed_memory() -> None:
    """Let freed arrays go back to the operating system (glibc; elsewhere nothing).

    glibc serves allocations above its mmap threshold (128 KiB) from their own
    mappings, returned when freed, but raises the threshold to the size of every such
    block freed, up to 32 MiB; from then on arrays of a few MB come from its heaps,
    and those keep freed memory.  A round allocates and frees many such arrays, so
    the process would keep the peak of every stage.  Fixing the threshold keeps it at
    what the stages need at the same time.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 256 * 1024)
    except (OSError, AttributeError):
        return


_M_MMAP_THRESHOLD = -3  # <malloc.h>
