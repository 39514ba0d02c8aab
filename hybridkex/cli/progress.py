"""The progress display of a simulated link round: one bar over every stage, with an ETA.

A round's stages count different things (pulses, detections, key bits), so the bar
weighs each stage by its predicted time (:func:`hybridkex.qkd.budget.round_cost`) and
the ETA scales what is left of the prediction by how fast the round has gone so far.
On a terminal the bar redraws itself in place; anywhere else (a log file, a pipe)
it writes a plain line when a stage starts and then at most every ten seconds, so a
log gets a readable record and no carriage returns.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

from hybridkex.qkd.budget import RoundCost
from hybridkex.qkd.labels import SIMULATION_LABEL
from hybridkex.qkd.progress import STAGES

__all__ = ["ItemProgress", "RoundProgress"]

_UNITS = {"simulation": "pulses", "sifting": "detections", "reconciliation": "key bits",
          "amplification": "steps"}
_REDRAW_S = 0.2
_LINE_S = 10.0


class RoundProgress:
    """Shows the progress of one round on ``stream`` (stderr by default)."""

    def __init__(self, cost: RoundCost, stream: TextIO | None = None,
                 line_interval_s: float = _LINE_S) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        total = math.fsum(cost.stage_seconds.get(s, 0.0) for s in STAGES)
        self._weight = {s: cost.stage_seconds.get(s, 0.0) / total if total else 0.25
                        for s in STAGES}
        self._started = time.monotonic()
        self._last = -math.inf
        self._stage = ""
        self._line_interval = line_interval_s
        self._open = False
        if not self._tty:
            self._write(f"{SIMULATION_LABEL}: a round of {cost.pulses:.3g} pulses, "
                        f"predicted {_clock(cost.seconds)}\n")

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        new_stage = stage != self._stage
        finished = stage == STAGES[-1] and done >= total
        interval = _REDRAW_S if self._tty else self._line_interval
        if not (new_stage or finished or now - self._last >= interval):
            return
        self._stage, self._last = stage, now
        fraction = self._fraction(stage, done, total)
        elapsed = now - self._started
        eta = "--:--" if fraction < 0.01 else _clock(elapsed * (1.0 - fraction) / fraction)
        if finished:
            eta = "done"
        text = (f"{stage} {done:.3g}/{total:.3g} {_UNITS.get(stage, '')}, "
                f"{_clock(elapsed)} elapsed, ETA {eta}")
        if self._tty:
            width = 24
            filled = min(width, int(width * fraction))
            self._write(f"\r[{'#' * filled}{'.' * (width - filled)}] {100 * fraction:3.0f}% "
                        f"{text}\033[K")
            self._open = True
        else:
            self._write(f"progress {100 * fraction:3.0f}%: {text}\n")

    def finish(self) -> None:
        """End the display (a terminal gets its newline)."""
        if self._tty and self._open:
            self._write("\n")
            self._open = False

    def _fraction(self, stage: str, done: int, total: int) -> float:
        before = 0.0
        for name in STAGES:
            if name == stage:
                part = min(max(done / total, 0.0), 1.0) if total else 1.0
                return min(before + self._weight[name] * part, 1.0)
            before += self._weight[name]
        return before

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()


def _clock(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds >= 3600:
        return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


class ItemProgress:
    """Progress through a list of runs (the points of a sweep), with the same policy as
    :class:`RoundProgress`: redrawn in place on a terminal, occasional lines elsewhere."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None,
                 line_interval_s: float = _LINE_S) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        self._label, self._total = label, total
        self._started = time.monotonic()
        self._last = -math.inf
        self._line_interval = line_interval_s

    def __call__(self, done: int, what: str = "") -> None:
        now = time.monotonic()
        last = done >= self._total
        if not self._tty and not last and now - self._last < self._line_interval:
            return
        self._last = now
        elapsed = now - self._started
        eta = "done" if last else _clock(elapsed * (self._total - done) / done) if done else "--:--"
        text = f"{self._label}: {done}/{self._total} {what}, ETA {eta}"
        if self._tty:
            self._stream.write(f"\r{text}\033[K" + ("\n" if last else ""))
        else:
            self._stream.write(text + "\n")
        self._stream.flush()
