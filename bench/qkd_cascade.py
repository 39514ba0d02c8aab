"""Benchmark: Cascade (qkd.distillation.cascade) efficiency, frame error rate and speed.

Alice's key is uniformly random; Bob's copy has independent errors with probability
``qber`` (a binary symmetric channel, so the number of errors in a frame varies).  The
two parties are separate objects exchanging bytes in one process, as over a loopback
channel with no latency.  Frames are reconciled in sessions of up to ``session_bits``
bits (all frames of a session share the messages, so a session's round trips are those
of its slowest frame).

Reported per configuration:

* ``f_median``, ``f_mean``: efficiency ``leaked / (n h2(qber))`` per frame, with the
  nominal ``qber``; ``f_mean_realised`` uses each frame's actual error rate instead.
* ``fer``: frames whose corrected key differs from Alice's, over all frames, with a
  one-sided 95% upper confidence bound (``fer_upper95``; 0 failures in N frames gives
  about 3/N).
* ``mbit_s``: sifted-key bits per second of CPU time, Alice's and Bob's work added
  (both run on one core, one after the other; key generation not timed).
* ``round_trips``: request/response pairs per session (mean), and ``session_frames``.

Run ``python bench/qkd_cascade.py`` for the table at QBER 1, 2, 5% and frames of 10^4 and
10^5 bits (a couple of minutes); ``--quick`` runs a tenth of the frames, ``--paper`` adds
rows with option (8) of Martinez-Mateo et al. as published (16 passes, all odd blocks of
a pass bisected together, which suits its larger blocks better).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence

import numpy as np

from hybridkex.qkd.distillation.cascade import (
    CascadeAlice,
    CascadeBob,
    binary_entropy,
    paper_schedule,
)
from hybridkex.qkd.distillation.messages import CascadeRequest, CascadeResponse

Result = dict[str, float | int | str]


def fer_upper_bound(failures: int, frames: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound on a failure probability."""
    if failures >= frames:
        return 1.0
    alpha = 1.0 - confidence

    def cdf(p: float) -> float:
        return sum(math.comb(frames, k) * p**k * (1.0 - p) ** (frames - k)
                   for k in range(failures + 1))

    lo, hi = failures / frames, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if cdf(mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def bench_cascade(frame_bits: int, qber: float, frames: int, *,
                  passes: int | Sequence[int] | None = None, concurrency: float = 0.25,
                  session_bits: int = 2_000_000, rng_seed: int = 0) -> Result:
    """Reconcile ``frames`` frames of ``frame_bits`` bits at error rate ``qber``."""
    per_session = max(1, min(frames, session_bits // frame_bits))
    rng = np.random.default_rng(rng_seed)
    h = binary_entropy(qber)
    effs: list[float] = []
    realised: list[float] = []
    failures = 0
    seconds = 0.0
    trips: list[int] = []
    leaked = 0
    wire = 0
    done = 0
    session = 0
    schedule: tuple[int, ...] = ()
    while done < frames:
        count = min(per_session, frames - done)
        n = count * frame_bits
        alice_bits = rng.integers(0, 2, n, dtype=np.uint8)
        errors = (rng.random(n) < qber).astype(np.uint8)
        bob_bits = alice_bits ^ errors
        start = time.process_time()
        alice = CascadeAlice(alice_bits)
        bob = CascadeBob(bob_bits, qber, rng_seed * 1_000_003 + session, passes,
                         frame_bits=frame_bits, concurrency=concurrency)
        while (request := bob.request()) is not None:
            raw_request = request.encode()  # over the wire, as the link sends it
            raw_response = alice.respond(CascadeRequest.decode(raw_request)).encode()
            bob.receive(CascadeResponse.decode(raw_response))
            wire += len(raw_request) + len(raw_response)
        seconds += time.process_time() - start
        assert alice.leaked_bits == bob.leaked_bits
        schedule = bob.schedule
        wrong = (bob.corrected != alice_bits).reshape(count, frame_bits).any(axis=1)
        failures += int(wrong.sum())
        effs.extend((bob.frame_leaked_bits / (frame_bits * h)).tolist())
        rate = errors.reshape(count, frame_bits).mean(axis=1)
        realised.extend(
            float(leak) / (frame_bits * binary_entropy(float(r)))
            for leak, r in zip(bob.frame_leaked_bits, rate, strict=True) if r > 0)
        trips.append(bob.round_trips)
        leaked += bob.leaked_bits
        done += count
        session += 1
    return {
        "frame_bits": frame_bits,
        "qber": qber,
        "frames": frames,
        "schedule": ",".join(str(c) for c in schedule[:3]) + f"+{len(schedule) - 3}h",
        "f_median": float(np.median(effs)),
        "f_mean": float(np.mean(effs)),
        "f_mean_realised": float(np.mean(realised)) if realised else float("nan"),
        "fer": failures / frames,
        "failures": failures,
        "fer_upper95": fer_upper_bound(failures, frames),
        "mbit_s": frames * frame_bits / seconds / 1e6,
        "round_trips": float(np.mean(trips)),
        "session_frames": per_session,
        "leaked_per_frame": leaked / frames,
        "wire_bytes_per_frame": wire / frames,
    }


def main(argv: list[str]) -> int:
    scale = 0.1 if "--quick" in argv else 1.0
    configs: list[tuple[int, float, int, int | Sequence[int] | None, float]] = []
    for frame_bits, frames in ((10_000, 4_000), (100_000, 400)):
        for qber in (0.01, 0.02, 0.05):
            configs.append((frame_bits, qber, max(10, int(frames * scale)), None, 0.25))
            if "--paper" in argv:
                configs.append((frame_bits, qber, max(10, int(frames * scale)),
                                paper_schedule(qber), 1.0))
    print(f"{'frame':>7} {'QBER':>5} {'schedule':>12} {'f med':>6} {'f mean':>6} "
          f"{'f real':>6} {'frames':>6} {'fail':>4} {'FER <(95%)':>10} {'Mbit/s':>6} "
          f"{'RT/sess':>7} {'fr/sess':>7} {'B/frame':>8}")
    for frame_bits, qber, frames, passes, concurrency in configs:
        r = bench_cascade(frame_bits, qber, frames, passes=passes, concurrency=concurrency)
        print(f"{r['frame_bits']:>7} {r['qber']:>5.2f} {r['schedule']:>12} "
              f"{r['f_median']:>6.3f} {r['f_mean']:>6.3f} {r['f_mean_realised']:>6.3f} "
              f"{r['frames']:>6} {r['failures']:>4} {r['fer_upper95']:>10.1e} "
              f"{r['mbit_s']:>6.2f} {r['round_trips']:>7.0f} {r['session_frames']:>7} "
              f"{r['wire_bytes_per_frame']:>8.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
