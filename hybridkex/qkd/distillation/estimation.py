"""Parameter estimation: the Z sample, error counts, and how long a secret key the data allow.

Both ends call these functions on the same disclosed data and get the same answers, which
is what lets Bob refuse a privacy amplification length that differs from his own.  The
bounds themselves live in :mod:`hybridkex.qkd.decoy`; this module feeds them the
counts of one round and turns their result into a number of bits.

The values Alice announced in her hello enter the bounds.  Those the bounds cannot
work with (intensities out of order, probabilities that do not sum to one) make
:mod:`~hybridkex.qkd.decoy` raise :class:`~hybridkex.errors.InvalidParameter`; here that
ends the round with its message as the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hybridkex.errors import InvalidParameter
from hybridkex.keydelivery.keys import UNIT_BITS
from hybridkex.qkd import decoy
from hybridkex.qkd.distillation.data import DistillationConfig, DistillationResult, PATerms
from hybridkex.qkd.distillation.messages import Hello
from hybridkex.qkd.distillation.session import (
    CONFIRMATION_BITS,
    VERIFICATION_TAG_BITS,
    verification_collision_bound,
)
from hybridkex.qkd.errors import LinkAborted

__all__ = [
    "Estimates",
    "SecretLength",
    "check_worth_reconciling",
    "estimate",
    "output_length",
    "output_plan",
    "record_length",
    "sample_z",
    "secret_length",
]

Bits = npt.NDArray[np.uint8]
Mask = npt.NDArray[np.bool_]


def sample_z(n_z: int, seed: bytes, config: DistillationConfig) -> Mask:
    """The Z positions disclosed for QBER estimation, chosen from Bob's public seed.

    A uniform ``size``-subset without a permutation of all ``n_z`` positions (which
    ``Generator.choice`` builds: 8 bytes per Z bit): positions drawn with replacement
    until ``size`` distinct ones are in hand form a uniformly random set given their
    number, and a uniform ``size``-subset of that is uniform among all of them.
    """
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(seed, "big")))
    size = min(n_z, max(config.z_sample_minimum, math.ceil(config.z_sample_fraction * n_z)))
    chosen = np.zeros(0, dtype=np.int64)
    while chosen.size < size:
        extra = rng.integers(0, n_z, size=(size - chosen.size) * 11 // 10 + 16)
        chosen = np.union1d(chosen, extra)
    mask = np.zeros(n_z, dtype=bool)
    mask[chosen[rng.choice(chosen.size, size=size, replace=False)]] = True
    return mask


@dataclass(frozen=True)
class Estimates:
    """Counts per basis and intensity, and the two error rates the disclosed bits show.

    The Z counts are those of the key positions (the sample left out); their errors are
    not known before reconciliation, so ``z.m`` is zero.
    """

    z: decoy.BasisCounts
    x: decoy.BasisCounts
    qber_sample: float
    qber_x: float
    n_sample: int


def _counts(intensity: Bits, errors: Bits) -> decoy.BasisCounts:
    n = tuple(float(np.count_nonzero(intensity == k)) for k in range(3))
    m = tuple(float(np.count_nonzero(errors[intensity == k])) for k in range(3))
    return decoy.BasisCounts(n, m)  # type: ignore[arg-type]


def estimate(intensity_z: Bits, intensity_x: Bits, sample: Mask, z_errors_sample: Bits,
             x_errors: Bits) -> Estimates:
    keep = ~sample
    n_sample = int(np.count_nonzero(sample))
    qber_sample = float(np.count_nonzero(z_errors_sample)) / n_sample if n_sample else 0.5
    qber_x = float(np.count_nonzero(x_errors)) / len(x_errors) if len(x_errors) else 0.5
    z = decoy.BasisCounts(
        tuple(float(np.count_nonzero(intensity_z[keep] == k)) for k in range(3)),  # type: ignore[arg-type]
        (0.0, 0.0, 0.0))
    return Estimates(z, _counts(intensity_x, x_errors), qber_sample, qber_x, n_sample)


@dataclass(frozen=True)
class SecretLength:
    """The secret key length of a block, and the bounds behind it, as reported.

    ``bits`` is the key the bounds allow after everything disclosed, the confirmation
    bits included, never below zero; ``terms.length`` the same before that clip.
    """

    bits: int
    terms: PATerms
    bound: decoy.FiniteKeyResult | None
    y1_lower: float
    e1_upper: float


def secret_length(est: Estimates, hello: Hello, detected_intensity: Bits, lambda_ec: float,
                  config: DistillationConfig, *, estimated: bool = False) -> SecretLength:
    """How many secret bits the key block allows once ``lambda_ec`` bits were disclosed by
    reconciliation (``estimated``: a forecast, before reconciliation ran), the whole
    verification tag and the confirmation bits.  The terms are in :class:`PATerms`."""
    key_bits = int(est.z.n_total)
    eps_cor = verification_collision_bound(key_bits)
    if eps_cor > config.eps_cor:
        raise LinkAborted(f"the verification hash's collision bound {eps_cor:.1e} exceeds "
                          f"eps_cor {config.eps_cor:.1e}")
    try:
        if config.finite_key:
            return _finite_length(est, hello, detected_intensity, lambda_ec, config, eps_cor,
                                  estimated)
        return _asymptotic_length(est, hello, detected_intensity, lambda_ec, eps_cor,
                                  estimated)
    except InvalidParameter as exc:  # announced values the bounds do not accept
        raise LinkAborted(str(exc)) from None


def _floor_bits(ell: float) -> int:
    if not math.isfinite(ell):
        raise LinkAborted("the announced values give no finite key length")
    return math.floor(ell)


def _finite_length(est: Estimates, hello: Hello, detected_intensity: Bits, lambda_ec: float,
                   config: DistillationConfig, eps_cor: float, estimated: bool) -> SecretLength:
    """Lim et al. (2014), with the whole verification tag and the confirmation bits
    deducted (see :class:`PATerms`).  The reported Y1 bound is s_Z1 over the
    single-photon pulses behind the key block, N_block * tau_1 with N_block = n_key / Q
    (Q the overall gain, the same in both bases) and tau_1 = sum_k p_k mu_k e^-mu_k."""
    bound = decoy.finite_key(est.z, est.x, hello.intensities, hello.probabilities,
                             lambda_ec, config.eps_sec, eps_cor,
                             verification_bits=VERIFICATION_TAG_BITS)
    n_key = est.z.n_total
    gain = len(detected_intensity) / sum(hello.sent) if sum(hello.sent) else 0.0
    tau1 = sum(p * mu * math.exp(-mu)
               for p, mu in zip(hello.probabilities, hello.intensities, strict=True))
    y1 = min(1.0, bound.s_z1_l * gain / (n_key * tau1)) if n_key and tau1 else 0.0
    length = _floor_bits(bound.ell - CONFIRMATION_BITS)
    terms = PATerms(
        bound="finite-key (Lim et al. 2014)", s_z0_lower=bound.s_z0_l,
        s_z1_lower=bound.s_z1_l, phi_z_upper=bound.phi_u, ec_leaked_bits=lambda_ec,
        ec_leaked_estimated=estimated, verification_tag_bits=VERIFICATION_TAG_BITS,
        confirmation_bits=CONFIRMATION_BITS,
        finite_size_bits=decoy.finite_size_bits(config.eps_sec), eps_sec=config.eps_sec,
        eps_terms=decoy.EPS_SPLIT, eps_per_term=config.eps_sec / decoy.EPS_SPLIT,
        eps_cor=eps_cor, length=length)
    return SecretLength(max(0, length), terms, bound, y1, bound.phi_u)


def _asymptotic_length(est: Estimates, hello: Hello, detected_intensity: Bits,
                       lambda_ec: float, eps_cor: float, estimated: bool) -> SecretLength:
    """Asymptotic length (sampling fluctuations ignored; for comparison with the analytic
    model): gains per intensity from all detections, error rates from the X basis, the
    vacuum + weak bounds, and ell = sum_k n_Z,k * (Y1 k e^-k / Q_k) * (1 - h2(e1)) - leak,
    where the leak is reconciliation's, the verification tag and the confirmation bits.

    Intensities the vacuum + weak bounds do not apply to give no key (not an abort of
    their own): the round then ends because the length is not positive.
    """
    detections = [float(np.count_nonzero(detected_intensity == k)) for k in range(3)]
    qber_x = [est.x.m[k] / est.x.n[k] if est.x.n[k] else 0.5 for k in range(3)]
    try:
        a = decoy.asymptotic_from_counts(
            detections, [qber_x[k] * detections[k] for k in range(3)], hello.sent,
            hello.intensities)
        y1_l, e1_u = a.y1_l, a.e1_u
        gains = (a.q_mu, a.q_nu)
        singles = sum(
            est.z.n[k] * min(1.0, y1_l * mu * math.exp(-mu) / gains[k])
            for k, mu in enumerate(hello.intensities[:2]) if gains[k] > 0
        )
    except InvalidParameter:
        y1_l, e1_u, singles = 0.0, decoy.E0_BACKGROUND, 0.0
    length = _floor_bits(singles * (1.0 - decoy.h2(e1_u)) - lambda_ec - VERIFICATION_TAG_BITS
                         - CONFIRMATION_BITS)
    terms = PATerms(
        bound="asymptotic (vacuum + weak decoy, Ma et al. 2005)", s_z0_lower=None,
        s_z1_lower=singles, phi_z_upper=e1_u, ec_leaked_bits=lambda_ec,
        ec_leaked_estimated=estimated, verification_tag_bits=VERIFICATION_TAG_BITS,
        confirmation_bits=CONFIRMATION_BITS, finite_size_bits=None, eps_sec=None,
        eps_terms=None, eps_per_term=None, eps_cor=eps_cor, length=length)
    return SecretLength(max(0, length), terms, None, y1_l, e1_u)


def record_length(result: DistillationResult, length: SecretLength) -> None:
    """Report the bounds and the terms of the secret length, whatever comes next."""
    result.bound, result.pa_terms = length.bound, length.terms
    result.y1_lower, result.e1_upper = length.y1_lower, length.e1_upper


def check_worth_reconciling(est: Estimates, hello: Hello, detected_intensity: Bits,
                            config: DistillationConfig, result: DistillationResult) -> None:
    """Record the measured error rates, and abort before reconciliation when no key can
    come out of this block; the reason names the values that decided it."""
    result.record_estimation(est.qber_sample, est.n_sample, est.qber_x, int(est.x.n_total))
    if not est.n_sample:
        raise LinkAborted("no Z-basis detections to estimate the QBER from")
    if est.qber_sample > config.qber_abort:
        raise LinkAborted(f"QBER {est.qber_sample:.4f} (Z sample; X basis {est.qber_x:.4f}) "
                          f"above the threshold {config.qber_abort}")
    n_key = est.z.n_total
    leak = decoy.ec_leakage(n_key, est.qber_sample * n_key, config.f_ec_estimate)
    length = secret_length(est, hello, detected_intensity, leak, config, estimated=True)
    record_length(result, length)
    if length.bits <= 0:
        t = length.terms
        raise LinkAborted(f"the estimated secret key length is not positive ({t.length} bits: "
                          f"s_Z1 >= {t.s_z1_lower:.0f}, phi_Z^U {t.phi_z_upper:.4f}, "
                          f"reconciliation ~{t.ec_leaked_bits:.0f} bits)")


def output_plan(secret_bits: int, config: DistillationConfig) -> tuple[int, int]:
    """(authentication reserve bits, number of 256-bit units) from a secret length."""
    reserve = min(config.auth_reserve_bits, (secret_bits // 8) * 8)
    return reserve, (secret_bits - reserve) // UNIT_BITS


def output_length(secret_bits: int, key_bits: int) -> int:
    """Privacy amplification's output length for ``secret_bits`` of key: the confirmation
    bits, then the key.  Refuse an output the ``key_bits`` block cannot give."""
    if secret_bits <= 0:
        raise LinkAborted("the secret key length after reconciliation is not positive")
    out_bits = CONFIRMATION_BITS + secret_bits
    if out_bits > key_bits:
        raise LinkAborted("the secret key length exceeds the reconciled key")
    return out_bits
