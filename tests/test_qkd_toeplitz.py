"""Toeplitz hashing for privacy amplification: exact against independent oracles.

Oracles, none of which shares code or arithmetic with the FFT:
* the plain matrix product (:func:`toeplitz_hash_plain`) and ``np.convolve`` (small n);
* the XOR of the columns ``T`` selects, on bit-packed bytes (n = 10^5, full output);
* integer row dot products (a sample of rows, n = 2 * 10^6);
* closed forms: an all-ones key hashes to the parities of seed windows (prefix
  sums), an all-ones seed to ``popcount(key) mod 2`` in every bit, and all ones to
  ``n mod 2``: the largest sums, the worst case for rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridkex.errors import HybridKexError, InvalidParameter
from hybridkex.qkd.distillation import toeplitz
from hybridkex.qkd.distillation.toeplitz import (
    leftover_hash_output_length,
    rounding_error_bound,
    toeplitz_hash,
    toeplitz_hash_plain,
)

Bits = npt.NDArray[np.uint8]

PROPERTY = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
LARGE = 2_000_000


def _random(rng: np.random.Generator, size: int) -> Bits:
    return rng.integers(0, 2, size, dtype=np.uint8)


@st.composite
def _instances(draw: st.DrawFn, max_n: int = 300) -> tuple[Bits, Bits, int, int]:
    n = draw(st.integers(1, max_n))
    m = draw(st.integers(1, n))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
    key = (rng.random(n) < density).astype(np.uint8)
    seed = (rng.random(n + m - 1) < draw(st.sampled_from([0.1, 0.5, 1.0]))).astype(np.uint8)
    chunk = draw(st.integers(1, n))
    return key, seed, m, chunk


def _xor_of_columns(key: Bits, seed: Bits, m: int) -> Bits:
    """``T x`` as the XOR of the columns j with x_j = 1; column j is seed[n-1-j : n-1-j+m]."""
    n = key.shape[0]
    width = (m + 7) // 8
    shifted = [np.packbits(seed[s:]) for s in range(8)]  # byte b of shifted[s]: bits s+8b..
    acc = np.zeros(width, dtype=np.uint8)
    for j in np.flatnonzero(key):
        start = n - 1 - int(j)
        acc ^= shifted[start % 8][start // 8 : start // 8 + width]
    return np.unpackbits(acc)[:m]


def _rows(key: Bits, seed: Bits, rows: npt.NDArray[np.int64]) -> Bits:
    """Bits ``rows`` of ``T x`` by integer dot products: row i is seed[i : i + n] reversed."""
    n = key.shape[0]
    mask = key.astype(bool)
    return np.array([np.count_nonzero(seed[i : i + n][::-1][mask]) & 1 for i in rows],
                    dtype=np.uint8)


# --- small inputs: every code path against the plain product ------------------------


@PROPERTY
@given(_instances())
def test_equals_plain_product(case: tuple[Bits, Bits, int, int]) -> None:
    key, seed, m, chunk = case
    expected = toeplitz_hash_plain(key, seed, m)
    convolved = np.convolve(seed.astype(np.int64), key.astype(np.int64), "valid") % 2
    assert np.array_equal(expected, convolved)
    got = toeplitz_hash(key, seed, m)
    assert got.dtype == np.uint8
    assert got.shape == (m,)
    assert np.array_equal(got, expected)
    # the one-transform path, the four-step path, and a chunked key
    for chunk_length, four_step_min in ((key.size, 1 << 40), (key.size, 1), (chunk, 1)):
        bits, error = toeplitz._hash_chunked(key, seed, m, chunk_length, four_step_min)
        assert np.array_equal(bits, expected)
        assert error <= 1e-9


@PROPERTY
@given(_instances(), st.integers(0, 2**32 - 1))
def test_linear_over_gf2(case: tuple[Bits, Bits, int, int], salt: int) -> None:
    x, seed, m, _ = case
    y = _random(np.random.default_rng(salt), x.size)
    assert np.array_equal(toeplitz_hash(x ^ y, seed, m),
                          toeplitz_hash(x, seed, m) ^ toeplitz_hash(y, seed, m))


def test_indexing_convention() -> None:
    """T[i, j] = seed[i - j + n - 1]: the hash of the unit vector e_j is column j."""
    rng = np.random.default_rng(1)
    n, m = 37, 11
    seed = _random(rng, n + m - 1)
    for j in range(n):
        unit = np.zeros(n, dtype=np.uint8)
        unit[j] = 1
        column = seed[n - 1 - j : n - 1 - j + m]
        assert np.array_equal(toeplitz_hash(unit, seed, m), column)
        assert np.array_equal(toeplitz_hash_plain(unit, seed, m), column)
    ones = np.ones(n, dtype=np.uint8)
    assert np.array_equal(toeplitz_hash(ones, seed[:n], 1), [np.count_nonzero(seed[:n]) & 1])


def test_accepts_bool_and_wide_integer_dtypes() -> None:
    rng = np.random.default_rng(2)
    key, seed = _random(rng, 500), _random(rng, 749)
    expected = toeplitz_hash_plain(key, seed, 250)
    assert np.array_equal(toeplitz_hash(key.astype(bool), seed.astype(np.int64), 250), expected)
    numpy_int: Any = np.int64(250)
    assert np.array_equal(toeplitz_hash(key, seed, numpy_int), expected)
    assert np.array_equal(toeplitz_hash(key[::-1].copy()[::-1], seed, 250), expected)


# --- large inputs: exact against independent oracles -------------------------------


@pytest.mark.parametrize(("n", "m"), [(LARGE, LARGE // 2), (LARGE + 1, LARGE + 1),
                                      (LARGE + 1, 1)])
def test_all_ones_worst_case(n: int, m: int) -> None:
    bits, error = toeplitz._hash_with_error(np.ones(n, dtype=np.uint8),
                                            np.ones(n + m - 1, dtype=np.uint8), m)
    assert np.all(bits == n % 2)
    assert error <= rounding_error_bound(n, n + m - 1, toeplitz._plan(
        n + m - 1, toeplitz._FOUR_STEP_MIN)[0]) <= 0.25


def test_all_ones_key_random_seed() -> None:
    rng = np.random.default_rng(3)
    n, m = LARGE, LARGE // 2
    seed = _random(rng, n + m - 1)
    prefix = np.concatenate(([0], np.cumsum(seed, dtype=np.int64)))
    expected = ((prefix[n : n + m] - prefix[:m]) & 1).astype(np.uint8)
    assert np.array_equal(toeplitz_hash(np.ones(n, dtype=np.uint8), seed, m), expected)


def test_random_key_all_ones_seed() -> None:
    rng = np.random.default_rng(4)
    n, m = LARGE + 3, LARGE // 3
    key = _random(rng, n)
    got = toeplitz_hash(key, np.ones(n + m - 1, dtype=np.uint8), m)
    assert np.all(got == np.count_nonzero(key) % 2)


def test_random_large_sampled_rows() -> None:
    rng = np.random.default_rng(5)
    n, m = LARGE, LARGE // 2
    key, seed = _random(rng, n), _random(rng, n + m - 1)
    got = toeplitz_hash(key, seed, m)
    rows = np.concatenate(([0, 1, m - 2, m - 1], rng.choice(m, 96, replace=False)))
    assert np.array_equal(got[rows], _rows(key, seed, rows.astype(np.int64)))
    # GF(2)-linearity at full size, with a second random key
    other = _random(rng, n)
    assert np.array_equal(toeplitz_hash(key ^ other, seed, m), got ^ toeplitz_hash(other, seed, m))


@pytest.mark.parametrize("density", [0.5, 0.97])
def test_full_output_against_column_xor(density: float) -> None:
    rng = np.random.default_rng(6)
    n, m = 100_000, 50_000
    key = (rng.random(n) < density).astype(np.uint8)
    seed = (rng.random(n + m - 1) < density).astype(np.uint8)
    assert np.array_equal(toeplitz_hash(key, seed, m), _xor_of_columns(key, seed, m))


def test_chunked_large_equals_single_transform() -> None:
    rng = np.random.default_rng(7)
    n, m = 300_000, 120_000
    key, seed = _random(rng, n), _random(rng, n + m - 1)
    whole = toeplitz_hash(key, seed, m)
    chunked, _ = toeplitz._hash_chunked(key, seed, m, 70_001)
    assert np.array_equal(whole, chunked)
    assert np.array_equal(whole, _xor_of_columns(key, seed, m))


def test_different_seeds_give_different_outputs() -> None:
    rng = np.random.default_rng(8)
    n, m = 10_000, 5_000
    key = _random(rng, n)
    outputs = {toeplitz_hash(key, _random(rng, n + m - 1), m).tobytes() for _ in range(8)}
    assert len(outputs) == 8
    # and a one-bit change of the seed changes the output (it meets a 1 of the key)
    seed = _random(rng, n + m - 1)
    flipped = seed.copy()
    flipped[n - 1 - int(np.flatnonzero(key)[0])] ^= 1
    assert not np.array_equal(toeplitz_hash(key, seed, m), toeplitz_hash(key, flipped, m))


# --- the exactness certificate -----------------------------------------------------


def test_error_bound_certifies_one_transform_up_to_ten_million() -> None:
    for n in (10**3, 10**6, 10**7, 3 * 10**7):
        for m in (1, n // 2, n):
            n_fft = toeplitz._plan(n + m - 1, toeplitz._FOUR_STEP_MIN)[0]
            assert n + m - 1 <= n_fft
            assert rounding_error_bound(n, n + m - 1, n_fft) <= 0.25
            assert toeplitz._chunk_length(n, m, toeplitz._FOUR_STEP_MIN) == n


def test_chunk_plan_splits_huge_keys() -> None:
    n, m = 10**9, 5 * 10**8
    chunk = toeplitz._chunk_length(n, m, toeplitz._FOUR_STEP_MIN)
    assert chunk < n
    n_fft = toeplitz._plan(chunk + m - 1, toeplitz._FOUR_STEP_MIN)[0]
    assert rounding_error_bound(chunk, chunk + m - 1, n_fft) <= 0.25


def test_fft_lengths_are_five_smooth_and_minimal() -> None:
    smooth = sorted(2**a * 3**b * 5**c for a in range(30) for b in range(19) for c in range(13))
    for target in [1, 2, 7, 11, 97, 1_000, 65_537, 1_499_999, 14_999_999, 24_999_998]:
        assert toeplitz._next_smooth(target) == next(s for s in smooth if s >= target)
    n_fft, rows, cols, inner = toeplitz._plan(14_999_999, toeplitz._FOUR_STEP_MIN)
    assert (n_fft, rows * cols, cols % inner) == (15_000_000, 15_000_000, 0)


@pytest.mark.parametrize("min_length", [6_000, 149_999])
def test_four_step_transform_is_the_dft(min_length: int) -> None:
    """The four-step spectrum is numpy's full DFT in the order f1 + N1 f2, to ~1e-13."""
    plan = toeplitz._plan(min_length, 1)
    n_fft, rows, cols, _ = plan
    assert rows > 1
    values = np.random.default_rng(10).random(n_fft)
    spectrum = toeplitz._forward(values, plan)
    f1 = np.arange(rows // 2 + 1)[:, None]
    f2 = np.arange(cols)[None, :]
    reference = np.fft.fft(values)[f1 + rows * f2]
    assert np.max(np.abs(spectrum - reference)) <= 1e-13 * np.linalg.norm(reference)
    round_trip = toeplitz._inverse(spectrum, plan)
    assert np.max(np.abs(round_trip - values)) <= 1e-12


def test_tripwire_rejects_inaccurate_fft(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(9)
    key, seed = _random(rng, 400), _random(rng, 599)
    expected = toeplitz_hash_plain(key, seed, 200)
    exact = toeplitz._cyclic_sums

    def off_by(shift: float) -> Any:
        return lambda *args: exact(*args) + shift

    monkeypatch.setattr(toeplitz, "_sums", off_by(0.2))  # within the certified 1/4
    assert np.array_equal(toeplitz_hash(key, seed, 200), expected)
    monkeypatch.setattr(toeplitz, "_sums", off_by(0.3))
    with pytest.raises(HybridKexError, match="rounding error") as info:
        toeplitz_hash(key, seed, 200)
    assert not isinstance(info.value, InvalidParameter)
    monkeypatch.setattr(toeplitz, "_sums", off_by(float("nan")))
    with pytest.raises(HybridKexError, match="rounding error"):
        toeplitz_hash(key, seed, 200)


# --- input validation --------------------------------------------------------------

_KEY = np.array([1, 0, 1, 1], dtype=np.uint8)
_SEED = np.array([0, 1, 1, 0, 1], dtype=np.uint8)  # n + m - 1 for m = 2


@pytest.mark.parametrize(("key", "seed", "m"), [
    (_KEY, _SEED[:-1], 2),                                  # seed too short
    (_KEY, np.append(_SEED, 0).astype(np.uint8), 2),        # seed too long
    (_KEY, _SEED, 0),                                       # m = 0
    (_KEY, _SEED, -1),                                      # m < 0
    (_KEY, np.zeros(8, dtype=np.uint8), 5),                 # m > n
    (np.array([1, 2, 0, 1], dtype=np.uint8), _SEED, 2),     # non-binary key
    (_KEY, np.array([0, 1, 1, 0, 255], dtype=np.uint8), 2),  # non-binary seed
    (np.array([1, -1, 0, 1], dtype=np.int8), _SEED, 2),     # negative
    (_KEY.astype(np.float64), _SEED, 2),                    # float dtype
    (_KEY.reshape(2, 2), _SEED, 2),                         # not one-dimensional
    ([1, 0, 1, 1], _SEED, 2),                               # not an array
    (np.zeros(0, dtype=np.uint8), np.zeros(0, dtype=np.uint8), 1),  # empty key
    (_KEY, _SEED, 2.0),                                     # m not an integer
    (_KEY, _SEED[:4], True),                                # m a bool
])
def test_invalid_input_raises(key: Any, seed: Any, m: Any) -> None:
    with pytest.raises(InvalidParameter):
        toeplitz_hash(key, seed, m)
    with pytest.raises(InvalidParameter):
        toeplitz_hash_plain(key, seed, m)


def test_plain_refuses_large_matrices() -> None:
    n = 5000
    with pytest.raises(InvalidParameter, match="too large"):
        toeplitz_hash_plain(np.ones(n, dtype=np.uint8), np.ones(2 * n - 1, dtype=np.uint8), n)


# --- leftover hash lemma -----------------------------------------------------------


def test_leftover_hash_output_length() -> None:
    assert leftover_hash_output_length(1000, 100, 2.0**-10) == 880
    assert leftover_hash_output_length(1000.9, 100.2, 2.0**-10) == 880
    assert leftover_hash_output_length(10**6, 0, 1e-10) == 10**6 - 67  # 2 log2(1e10) = 66.4
    assert leftover_hash_output_length(50, 40, 2.0**-10) == 0  # clipped
    assert leftover_hash_output_length(-5, 0, 0.5) == 0


@pytest.mark.parametrize(("h", "leak", "eps"), [
    (100, 10, 0.0), (100, 10, 1.0), (100, 10, -0.1), (100, 10, float("nan")),
    (100, -1, 0.1), (float("nan"), 0, 0.1), (float("inf"), 0, 0.1), (100, float("inf"), 0.1),
    ("many", 0, 0.1),
])
def test_leftover_hash_rejects(h: Any, leak: Any, eps: Any) -> None:
    with pytest.raises(InvalidParameter):
        leftover_hash_output_length(h, leak, eps)
