"""Privacy amplification: Toeplitz hashing over GF(2), computed exactly by FFT.

Convention
    The hash of an ``n``-bit key ``x`` to ``m`` bits under an ``(n + m - 1)``-bit seed
    ``s`` is ``y = T x`` over GF(2), with the ``m x n`` Toeplitz matrix

        ``T[i, j] = s[i - j + n - 1]``    (``0 <= i < m``, ``0 <= j < n``).

    So the first row of ``T`` is ``s[n-1], s[n-2], ..., s[0]``, the first column is
    ``s[n-1], s[n], ..., s[n+m-2]``, and every seed bit is used.  Equivalently
    ``y[i] = (sum_j s[i + n - 1 - j] x[j]) mod 2``: ``y`` is the "valid" part of the
    linear convolution ``s * x`` (``np.convolve(s, x, "valid") % 2``).  Over uniformly
    random seeds these matrices form a two-universal family (Krawczyk, CRYPTO '94;
    Mansour, Nisan, Tiwari, STOC '90), which is what the leftover hash lemma needs.

How it is computed
    The integer sums ``c[i] = sum_j s[i + n - 1 - j] x[j]`` (at most ``n``) are the
    entries ``n - 1 .. n + m - 2`` of the *cyclic* convolution of the key with the seed
    for any cyclic length ``N >= n + m - 1`` (no term wraps round), so one real FFT of
    length ``N ~ n + m`` suffices, not the ``2n + m`` of a linear convolution.  ``N`` is
    the smallest 5-smooth number that large (pocketfft, numpy's FFT, falls back to the
    much slower Bluestein algorithm for lengths with a large prime factor).  For large
    ``N`` the transform is done as a four-step FFT ``N = N1 N2`` (a batch of length-N1
    real FFTs down the columns, a twiddle multiplication, a batch of length-N2 FFTs
    along the rows), which keeps each small FFT in cache and is two to three times
    faster than numpy's one long transform; the spectrum is left in the four-step
    order, which a pointwise product does not mind, and the inverse undoes the steps.
    The float sums are rounded to the nearest integer and reduced mod 2.

Memory
    One transform of ``N`` points holds about ``30 N`` bytes (the padded inputs, two
    half spectra, the four-step's copies).  So that a long key does not need one huge
    transform, no product uses more than ``2^21`` points (about 64 MB): the output is
    cut into blocks of rows and the key into chunks, each (block, chunk) pair is a
    Toeplitz product of its own with the seed bits it meets, and the parities of a
    block's chunks add.  A key of 1.5e7 bits hashed to 2.7e6 then takes 45 products
    instead of one, at about the same total time.

Why the result is exact
    Write ``u = 2^-53`` and let ``a`` (the key, or a chunk of it, ``la`` bits) and
    ``b`` (the seed bits it meets, ``lb = la + m - 1`` bits) be 0/1 vectors, so
    ``||a||_2 <= sqrt(la)``, ``||a||_1 <= la`` and likewise for ``b``.

    *Model.*  A computed length-``N`` DFT (forward or inverse, numpy's or the
    four-step composite) has normwise relative error ``||fl(F v) - F v||_2 <= delta
    ||F v||_2`` for the full (Hermitian) spectrum, with
    ``delta = u (C (ceil(log2 N) + 2) + 16)`` and ``C = 64``.  This is the standard
    result for Cooley-Tukey FFTs with accurate twiddles (Higham, *Accuracy and
    Stability of Numerical Algorithms*, 2nd ed., Thm 24.2: ``delta <= log2(N) eta /
    (1 - log2(N) eta)``, ``eta = mu + gamma_4 (sqrt 2 + mu) ~ 6.7u``): ``C = 64`` is
    about ten times the radix-2 constant, room for pocketfft's radix-3/4/5 passes, and
    the ``+2`` and ``+16`` cover the two rounded stage lengths of the four-step split
    and its two twiddle multiplications.  A pointwise complex product has relative
    error at most ``4u`` (``sqrt(5) u`` is the known sharp bound).

    *Bound.*  With ``A = F a``, ``B = F b`` (``||A||_2 = sqrt(N) ||a||_2``,
    ``||B||_inf <= ||b||_1``), ``c = a (*) b`` and Young's inequality
    ``||c||_2 <= ||a||_2 ||b||_1``, the error of the computed product spectrum is at
    most ``sqrt(N) E_P`` with

        ``E_P = (1 + 4u) [delta (||a||_2 ||b||_1 + ||a||_1 ||b||_2)
        + delta^2 sqrt(N) ||a||_2 ||b||_2] + 4u ||a||_2 ||b||_1``,

    and the inverse transform (which divides norms by ``sqrt(N)``) yields

        ``max_k |c~[k] - c[k]| <= ||c~ - c||_2 <= (1 + delta) E_P
        + delta ||a||_2 ||b||_1``.

    :func:`rounding_error_bound` evaluates this.  The key is split into as few
    equal chunks as make the bound at most 1/4 (a chunk's contribution is itself a
    Toeplitz product, and the parities of the chunks add); the split depends on the
    lengths only, never on the bits, so the running time leaks nothing about them.
    Every sum is then within 1/4 of its integer, so rounding recovers it exactly.
    For ``m = n/2`` the bound is 0.0007 at ``n = 10^6`` and 0.025 at ``n = 10^7``;
    one chunk suffices up to ``n = 4 * 10^7`` (``3 * 10^7`` when ``m = n``), and each
    further chunk costs one more transform of length ``~ n/chunks + m``.  The errors
    observed in practice are around ``10^-9`` at ``n = 10^7``, seven orders of
    magnitude below the bound: the float FFT is nowhere near failing at these sizes,
    and the bound, not the observation, is the reason to rely on it.

    *Tripwire.*  The largest distance of a computed sum from its integer is checked
    as well; were it above 1/4 the model above would be wrong for this numpy build,
    and :class:`~hybridkex.errors.HybridKexError` is raised instead of a hash that
    could be silently wrong.  It never fires if the model holds.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from hybridkex.errors import HybridKexError, InvalidParameter

__all__ = [
    "leftover_hash_output_length",
    "rounding_error_bound",
    "toeplitz_hash",
    "toeplitz_hash_plain",
]

Bits = npt.NDArray[np.uint8]
_Floats = npt.NDArray[np.float64]
_Complex = npt.NDArray[np.complex128]

_U = 2.0**-53
#: the constant ``C`` of the FFT error model (about ten times the radix-2 value).
_FFT_ERROR_CONSTANT = 64
#: the largest rounding error the chunk plan allows, and the tripwire threshold.
_MAX_ROUNDING_ERROR = 0.25
#: cyclic lengths from this on use the four-step split; shorter ones fit in cache.
_FOUR_STEP_MIN = 1 << 14
#: the column length N1 the four-step split aims for.
_FOUR_STEP_ROWS = 500
#: the longest transform one product may use: its memory, about 30 bytes per point, is
#: what privacy amplification holds at a time (two ends in one process: twice that).
_MAX_TRANSFORM_POINTS = 1 << 21
#: the most bits toeplitz_hash_plain builds a matrix for.
_PLAIN_MAX_ENTRIES = 1 << 24


# --- validation ----------------------------------------------------------------------


def _bits(name: str, value: object, length: int | None = None) -> Bits:
    """Check a 0/1 vector and return it as uint8 (a view when it already is one)."""
    if not isinstance(value, np.ndarray):
        raise InvalidParameter(f"{name} must be a numpy array of bits")
    if value.ndim != 1:
        raise InvalidParameter(f"{name} must be one-dimensional, not {value.ndim}-dimensional")
    if value.dtype.kind not in "biu":
        raise InvalidParameter(f"{name} must have an integer or bool dtype, not {value.dtype}")
    if length is not None and value.shape[0] != length:
        raise InvalidParameter(f"{name} has {value.shape[0]} bits, expected {length}")
    if value.dtype.kind != "b" and value.size and (value.min() < 0 or value.max() > 1):
        raise InvalidParameter(f"{name} must hold only 0 and 1")
    return value.astype(np.uint8, copy=False)


def _check(key_bits: object, seed_bits: object, m: object) -> tuple[Bits, Bits, int]:
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)):
        raise InvalidParameter("the output length m must be an integer")
    out = int(m)
    key = _bits("key_bits", key_bits)
    n = key.shape[0]
    if n == 0:
        raise InvalidParameter("key_bits is empty")
    if not 0 < out <= n:
        raise InvalidParameter(f"the output length m = {out} must satisfy 0 < m <= n = {n}")
    seed = _bits("seed_bits", seed_bits, n + out - 1)
    return key, seed, out


# --- transform plan ------------------------------------------------------------------


def _next_smooth(target: int) -> int:
    """The least ``2^a 3^b 5^c >= target``."""
    best = 1 << max(target - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            value = p35
            while value < target:
                value *= 2
            best = min(best, value)
            p35 *= 3
        p5 *= 5
    return best


def _divisor_near(value: int, target: float) -> int:
    """The divisor of a 5-smooth ``value`` closest to ``target`` on a log scale."""
    best, best_distance = 1, math.inf
    p2 = 1
    while value % p2 == 0:
        p23 = p2
        while value % p23 == 0:
            d = p23
            while value % d == 0:
                distance = abs(math.log(d / target))
                if distance < best_distance:
                    best, best_distance = d, distance
                d *= 5
            p23 *= 3
        p2 *= 2
    return best


@functools.lru_cache(maxsize=16)
def _plan(min_length: int, four_step_min: int) -> tuple[int, int, int, int]:
    """``(N, N1, N2, K)``: the cyclic length and, if ``N1 > 1``, its four-step split.

    ``N2 = K * (N2 // K)`` lets the twiddles come from two small tables.
    """
    n_fft = _next_smooth(min_length)
    if n_fft < four_step_min:
        return n_fft, 1, n_fft, 1
    rows = _divisor_near(n_fft, min(_FOUR_STEP_ROWS, math.sqrt(n_fft)))
    cols = n_fft // rows
    return n_fft, rows, cols, _divisor_near(cols, math.sqrt(cols))


@functools.lru_cache(maxsize=8)
def _twiddles(n_fft: int, rows: int, cols: int, inner: int) -> tuple[_Complex, _Complex]:
    """``w^(f1 r)``, ``w = exp(-2 pi i / N)``, for ``r = r_hi K + r_lo``: the ``r_hi`` and
    ``r_lo`` factors, shaped to broadcast over ``(rows//2 + 1, cols // K, K)``.

    The exponents are exact integers ``f1 r <= N/2`` (``f1 <= N1/2``, ``r < N2``), so
    every angle lies in ``[0, pi]`` and each entry is within a few ulps.
    """
    f1 = np.arange(rows // 2 + 1, dtype=np.int64)[:, None]

    def table(r: npt.NDArray[np.int64]) -> _Complex:
        angle = (2.0 * np.pi / n_fft) * (f1 * r).astype(np.float64)
        out = np.empty(angle.shape, dtype=np.complex128)
        out.real = np.cos(angle)
        out.imag = -np.sin(angle)
        out.flags.writeable = False
        return out

    high = table(np.arange(cols // inner, dtype=np.int64)[None, :] * inner)[:, :, None]
    low = table(np.arange(inner, dtype=np.int64)[None, :])[:, None, :]
    return high, low


def _forward(values: _Floats, plan: tuple[int, int, int, int]) -> _Complex:
    """The half spectrum of a real vector of length N, in four-step order."""
    n_fft, rows, cols, inner = plan
    if rows == 1:
        return np.fft.rfft(values, n_fft)
    high, low = _twiddles(n_fft, rows, cols, inner)
    spectrum = np.ascontiguousarray(np.fft.rfft(values.reshape(rows, cols), axis=0))
    blocks = spectrum.reshape(rows // 2 + 1, cols // inner, inner)
    blocks *= high
    blocks *= low
    return np.fft.fft(spectrum, axis=1)


def _inverse(spectrum: _Complex, plan: tuple[int, int, int, int]) -> _Floats:
    """Undo :func:`_forward` (including the 1/N), returning a flat real vector."""
    n_fft, rows, cols, inner = plan
    if rows == 1:
        return np.fft.irfft(spectrum, n_fft)
    high, low = _twiddles(n_fft, rows, cols, inner)
    columns = np.ascontiguousarray(np.fft.ifft(spectrum, axis=1))
    blocks = columns.reshape(rows // 2 + 1, cols // inner, inner)
    blocks *= np.conj(high)
    blocks *= np.conj(low)
    return np.ascontiguousarray(np.fft.irfft(columns, rows, axis=0)).reshape(n_fft)


def _padded(bits: Bits, n_fft: int) -> _Floats:
    out = np.zeros(n_fft, dtype=np.float64)
    out[: bits.shape[0]] = bits
    return out


def _cyclic_sums(key: Bits, seed: Bits, m: int, four_step_min: int) -> _Floats:
    """The float sums ``c[i] = sum_j seed[i + len(key) - 1 - j] key[j]``, ``i < m``."""
    la = key.shape[0]
    plan = _plan(la + m - 1, four_step_min)
    product = _forward(_padded(key, plan[0]), plan)
    product *= _forward(_padded(seed, plan[0]), plan)
    return _inverse(product, plan)[la - 1 : la - 1 + m]


#: the convolution step, a module attribute so a test can substitute a faulty one.
_sums: Callable[[Bits, Bits, int, int], _Floats] = _cyclic_sums


# --- exactness -----------------------------------------------------------------------


def _relative_fft_error(n_fft: int) -> float:
    return _U * (_FFT_ERROR_CONSTANT * (math.ceil(math.log2(max(n_fft, 2))) + 2) + 16)


def rounding_error_bound(key_length: int, seed_length: int, fft_length: int) -> float:
    """An upper bound on ``|computed - exact|`` for any sum of one FFT Toeplitz product.

    ``key_length`` and ``seed_length`` are the 0/1 vectors convolved (a key chunk and
    the seed bits it meets), ``fft_length`` the cyclic length; the derivation and the
    error model are in the module docstring.
    """
    delta = _relative_fft_error(fft_length)
    a2, a1 = math.sqrt(key_length), float(key_length)
    b2, b1 = math.sqrt(seed_length), float(seed_length)
    e_product = (1 + 4 * _U) * (
        delta * (a2 * b1 + a1 * b2) + delta**2 * math.sqrt(fft_length) * a2 * b2
    ) + 4 * _U * a2 * b1
    return (1 + delta) * e_product + delta * a2 * b1


def _chunk_length(n: int, m: int, four_step_min: int) -> int:
    """The longest key chunk whose products the error bound certifies (lengths only)."""
    chunks = 1
    while True:
        length = -(-n // chunks)
        n_fft = _plan(length + m - 1, four_step_min)[0]
        if rounding_error_bound(length, length + m - 1, n_fft) <= _MAX_ROUNDING_ERROR:
            return length
        if length == 1:  # unreachable for any array that fits in memory
            raise HybridKexError("no FFT length certifies an exact Toeplitz product")
        chunks += 1


def _block_plan(n: int, m: int, four_step_min: int) -> tuple[int, int]:
    """``(chunk, rows)``: the key chunk and the block of output rows of one product.

    Exactness caps the chunk (:func:`_chunk_length`); memory caps the transform, which
    needs about 30 bytes per point: one product of a ``chunk``-bit key chunk and
    ``rows`` output bits has ``chunk + rows - 1`` points at most
    :data:`_MAX_TRANSFORM_POINTS` (a block of rows is itself a Toeplitz product, with
    the seed bits it meets).  Both depend on the lengths only.
    """
    cap = _MAX_TRANSFORM_POINTS
    rows = m if m <= 3 * cap // 4 else cap // 2
    chunk = min(_chunk_length(n, rows, four_step_min), max(cap - rows + 1, 1), n)
    return chunk, rows


def _hash_chunked(key: Bits, seed: Bits, m: int, chunk: int,
                  four_step_min: int = _FOUR_STEP_MIN,
                  rows: int | None = None) -> tuple[Bits, float]:
    """The hash, summed over key chunks of ``chunk`` bits for each block of ``rows``
    output bits (all of them by default), and the largest distance of a computed sum
    from its integer (the tripwire's measurement)."""
    n = key.shape[0]
    block = m if rows is None else rows
    parity = np.zeros(m, dtype=np.uint8)
    worst = 0.0
    for first in range(0, m, block):
        last = min(first + block, m)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            # rows first..last-1, columns start..stop-1 of T meet the seed bits
            # first + n - stop .. last + n - start - 2
            sums = _sums(key[start:stop], seed[first + n - stop : last + n - start - 1],
                         last - first, four_step_min)
            nearest = np.rint(sums)
            sums -= nearest
            error = float(np.max(np.abs(sums, out=sums)))
            if not error <= _MAX_ROUNDING_ERROR:  # also catches NaN
                raise HybridKexError(
                    f"FFT rounding error {error:.3g} exceeds the certified "
                    f"{_MAX_ROUNDING_ERROR}: numpy's FFT is less accurate than the error "
                    "model assumes"
                )
            worst = max(worst, error)
            parity[first:last] ^= np.fmod(nearest, 2.0).astype(np.uint8)  # 0.0 or 1.0
    return parity, worst


def _hash_with_error(key_bits: Bits, seed_bits: Bits, m: int) -> tuple[Bits, float]:
    key, seed, out = _check(key_bits, seed_bits, m)
    chunk, rows = _block_plan(key.shape[0], out, _FOUR_STEP_MIN)
    return _hash_chunked(key, seed, out, chunk, _FOUR_STEP_MIN, rows)


# --- public API ----------------------------------------------------------------------


def toeplitz_hash(key_bits: Bits, seed_bits: Bits, m: int) -> Bits:
    """Hash ``n`` key bits to ``m`` bits with the Toeplitz matrix the seed defines.

    ``key_bits``: ``n`` bits, ``seed_bits``: ``n + m - 1`` bits (1-D numpy arrays of
    an integer or bool dtype holding 0/1), ``0 < m <= n``.  Returns ``T x`` over GF(2)
    as ``m`` uint8 bits, where ``T[i, j] = seed_bits[i - j + n - 1]``.  Exact for every
    input: see the module docstring for the argument.  Raises
    :class:`~hybridkex.errors.InvalidParameter` for malformed input.
    """
    return _hash_with_error(key_bits, seed_bits, m)[0]


def toeplitz_hash_plain(key_bits: Bits, seed_bits: Bits, m: int) -> Bits:
    """The same hash as :func:`toeplitz_hash` by building ``T`` and multiplying.

    A reference for tests: it needs ``m n`` bytes, so it refuses ``m n > 2^24``.
    """
    key, seed, out = _check(key_bits, seed_bits, m)
    n = key.shape[0]
    if out * n > _PLAIN_MAX_ENTRIES:
        raise InvalidParameter(f"a {out} x {n} matrix is too large for the plain product")
    index = np.arange(out)[:, None] - np.arange(n)[None, :] + (n - 1)
    sums: npt.NDArray[np.int64] = seed[index].astype(np.int64) @ key.astype(np.int64)
    return (sums & 1).astype(np.uint8)


def leftover_hash_output_length(n_secret_bits_lower_bound: float, leaked_bits: float,
                                epsilon_pa: float) -> int:
    """How many bits a two-universal hash may extract: the leftover hash lemma.

    ``ell = floor(H - leak - 2 log2(1/epsilon_pa))``, clipped at 0, where ``H`` is a
    lower bound on the (smooth) min-entropy of the key given Eve's information before
    error correction (``n_secret_bits_lower_bound``) and ``leak`` the bits error
    correction and verification disclosed.  The hashed key is then within
    ``epsilon_pa / 2`` of uniform and independent of Eve (the lemma gives distance
    ``2^(-(H - leak - ell)/2) / 2``), plus whatever smoothing parameter ``H`` carries.
    This is the generic helper; the finite-key length a link uses, with its
    statistical corrections, is computed by the post-processing.
    """
    try:
        h, leak, eps = float(n_secret_bits_lower_bound), float(leaked_bits), float(epsilon_pa)
    except (TypeError, ValueError) as exc:
        raise InvalidParameter("leftover hash lemma arguments must be real numbers") from exc
    if not (math.isfinite(h) and math.isfinite(leak)):
        raise InvalidParameter("the min-entropy bound and the leak must be finite")
    if leak < 0:
        raise InvalidParameter("leaked_bits must be non-negative")
    if not 0 < eps < 1:
        raise InvalidParameter("epsilon_pa must lie strictly between 0 and 1")
    return max(0, math.floor(h - leak - 2 * math.log2(1 / eps)))
