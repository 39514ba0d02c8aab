"""The QKD link's figures in one run: simulated pulses per second, Cascade efficiency,
frame error rate and throughput, Toeplitz hashing against a plain FFT baseline.

Each part is its own script (bench/qkd_simulator.py, bench/qkd_cascade.py,
bench/qkd_toeplitz.py) and can be run alone; this runs them one after the other so
one set of figures comes from one machine state.  docs/performance.md records them.

    python bench/qkd.py [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import qkd_cascade
import qkd_simulator
import qkd_toeplitz


def main(argv: list[str]) -> int:
    quick = ["--quick"] if "--quick" in argv else []
    print("== simulator (one core)")
    status = qkd_simulator.main([])
    print("\n== Cascade")
    status |= qkd_cascade.main(quick)
    print("\n== Toeplitz privacy amplification")
    status |= qkd_toeplitz.main([])
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
