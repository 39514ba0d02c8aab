"""Benchmark: exact Toeplitz hashing (qkd.distillation.toeplitz) against plain numpy FFT.

The baseline is what one writes first: ``np.fft.rfft`` of the 0/1 key and seed at the
full linear-convolution length ``n + (n + m - 1) - 1``, multiply, ``irfft``, round,
mod 2.  A second baseline is the same code at the next 5-smooth length, to show how
much of the gain is only the choice of length (the full length usually has a large
prime factor, which sends numpy's FFT to the slow Bluestein algorithm).

Both are timed in the same run on the same random input (medians of ``repeats``,
the candidates interleaved so that a busy machine penalises them alike), their
outputs are compared with ours, and ours is checked independently: exactly, bit by
bit, on a sample of rows (a row of ``T`` dotted with the key in integers), and in
full on the all-ones input, whose hash is ``n mod 2`` in every bit.

Run ``PYTHONPATH=. python bench/qkd_toeplitz.py [n ...]`` from the repository root for
the table (default: 10^6 and 10^7 input bits, m = n/2).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from hybridkex.qkd.distillation import toeplitz

Bits = npt.NDArray[np.uint8]
Result = dict[str, float | int | bool]


def baseline_toeplitz(key: Bits, seed: Bits, m: int,
                      fft_length: int | None = None) -> tuple[Bits, float]:
    """Plain float64 FFT Toeplitz product and its largest distance from an integer."""
    n = key.shape[0]
    size = n + seed.shape[0] - 1 if fft_length is None else fft_length
    sums = np.fft.irfft(np.fft.rfft(key, size) * np.fft.rfft(seed, size), size)[n - 1 : n - 1 + m]
    nearest = np.rint(sums)
    return (nearest.astype(np.int64) % 2).astype(np.uint8), float(np.max(np.abs(sums - nearest)))


def _rows_exact(key: Bits, seed: Bits, rows: npt.NDArray[np.int64]) -> Bits:
    """Output bits ``rows`` by integer dot products: row i of T is seed[i : i + n] reversed."""
    n = key.shape[0]
    mask = key.astype(bool)
    return np.array([np.count_nonzero(seed[i : i + n][::-1][mask]) & 1 for i in rows],
                    dtype=np.uint8)


def _timed(call: Callable[[], object], times: list[float]) -> None:
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)


def bench_toeplitz(n_bits: int, m_bits: int | None = None, repeats: int = 5,
                   rng_seed: int = 0, check_rows: int = 64) -> Result:
    """Time ours against both baselines on random input of ``n_bits`` (``m = n/2``)."""
    m = n_bits // 2 if m_bits is None else m_bits
    rng = np.random.default_rng(rng_seed)
    key = rng.integers(0, 2, n_bits, dtype=np.uint8)
    seed = rng.integers(0, 2, n_bits + m - 1, dtype=np.uint8)
    smooth = toeplitz._next_smooth(n_bits + seed.shape[0] - 1)

    ours, ours_error = toeplitz._hash_with_error(key, seed, m)  # also warms the caches
    base, base_error = baseline_toeplitz(key, seed, m)
    tuned, tuned_error = baseline_toeplitz(key, seed, m, smooth)

    t_ours: list[float] = []
    t_base: list[float] = []
    t_tuned: list[float] = []
    for _ in range(repeats):
        _timed(lambda: toeplitz.toeplitz_hash(key, seed, m), t_ours)
        _timed(lambda: baseline_toeplitz(key, seed, m), t_base)
        _timed(lambda: baseline_toeplitz(key, seed, m, smooth), t_tuned)

    rows = rng.choice(m, size=min(check_rows, m), replace=False).astype(np.int64)
    ones = np.ones(n_bits, dtype=np.uint8)
    all_ones = toeplitz.toeplitz_hash(ones, np.ones(n_bits + m - 1, dtype=np.uint8), m)

    chunk, block_rows = toeplitz._block_plan(n_bits, m, toeplitz._FOUR_STEP_MIN)
    fft_length = toeplitz._plan(chunk + block_rows - 1, toeplitz._FOUR_STEP_MIN)[0]
    s_ours = statistics.median(t_ours)
    s_base = statistics.median(t_base)
    s_tuned = statistics.median(t_tuned)
    return {
        "n_bits": n_bits,
        "m_bits": m,
        "repeats": repeats,
        "ours_s": s_ours,
        "baseline_s": s_base,
        "smooth_baseline_s": s_tuned,
        "ours_mbit_s": n_bits / s_ours / 1e6,
        "baseline_mbit_s": n_bits / s_base / 1e6,
        "smooth_baseline_mbit_s": n_bits / s_tuned / 1e6,
        "speedup": s_base / s_ours,
        "speedup_vs_smooth": s_tuned / s_ours,
        "baseline_fft_length": n_bits + seed.shape[0] - 1,
        "smooth_fft_length": smooth,
        # one product: a key chunk times a block of output rows (docs: "Memory")
        "ours_fft_length": fft_length,
        "ours_products": -(-n_bits // chunk) * -(-m // block_rows),
        "ours_max_rounding_error": ours_error,
        "ours_error_bound": toeplitz.rounding_error_bound(chunk, chunk + block_rows - 1,
                                                          fft_length),
        "baseline_max_rounding_error": base_error,
        "smooth_baseline_max_rounding_error": tuned_error,
        "baseline_equals_ours": bool(np.array_equal(base, ours)),
        "smooth_baseline_equals_ours": bool(np.array_equal(tuned, ours)),
        "ours_rows_checked": int(rows.shape[0]),
        "ours_rows_exact": bool(np.array_equal(_rows_exact(key, seed, rows), ours[rows])),
        "ours_all_ones_exact": bool(np.all(all_ones == n_bits % 2)),
    }


def main(argv: list[str]) -> int:
    sizes = [int(float(a)) for a in argv] or [10**6, 10**7]
    header = (f"{'n bits':>10} {'m bits':>9} {'ours Mbit/s':>11} {'base Mbit/s':>11} "
              f"{'x base':>7} {'smooth Mbit/s':>13} {'x smooth':>8} {'base=ours':>9} "
              f"{'ours exact':>10} {'ours err':>9} {'bound':>7} {'base err':>9}")
    print(header)
    for n in sizes:
        r = bench_toeplitz(n, repeats=5 if n <= 2 * 10**6 else 3)
        exact = r["ours_rows_exact"] and r["ours_all_ones_exact"]
        print(f"{r['n_bits']:>10} {r['m_bits']:>9} {r['ours_mbit_s']:>11.2f} "
              f"{r['baseline_mbit_s']:>11.2f} {r['speedup']:>7.1f} "
              f"{r['smooth_baseline_mbit_s']:>13.2f} {r['speedup_vs_smooth']:>8.2f} "
              f"{r['baseline_equals_ours']!s:>9} {exact!s:>10} "
              f"{r['ours_max_rounding_error']:>9.1e} {r['ours_error_bound']:>7.3f} "
              f"{r['baseline_max_rounding_error']:>9.1e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
