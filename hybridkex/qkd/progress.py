"""How a link round reports its progress: stage by stage, each with its own unit.

A round spends its time in the optical simulation (counted in pulses), in sifting
(detections), in reconciliation (key bits) and in privacy amplification (one step).
Whoever shows progress gets ``(stage, done, total)`` calls; weighing the stages into
one bar with an ETA is the display's business (``hybridkex.cli.progress``).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["AMPLIFICATION", "RECONCILIATION", "SIFTING", "SIMULATION", "STAGES",
           "StageProgress"]

SIMULATION = "simulation"
SIFTING = "sifting"
RECONCILIATION = "reconciliation"
AMPLIFICATION = "amplification"
#: the stages in the order a round goes through them
STAGES = (SIMULATION, SIFTING, RECONCILIATION, AMPLIFICATION)


class StageProgress(Protocol):
    """Called with the stage, the work done in it so far, and the stage's total work."""

    def __call__(self, stage: str, done: int, total: int) -> None: ...
