"""How the simulated QKD link is labelled wherever a user sees it.

A module of its own, importing nothing, so that code which only shows the label (the
site directory, the command line) does not load the simulator and numpy with it.
"""

from __future__ import annotations

__all__ = ["SIMULATION_LABEL"]

SIMULATION_LABEL = "SIMULATION (decoy-state BB84 Monte Carlo, not a physical QKD device)"
