"""Decoy-state estimation: what the observed statistics prove about single photons.

A weak-coherent source emits Poisson photon-number mixtures, so the counts Bob sees
mix single-photon events (secure) with multi-photon events (open to photon-number
splitting).  Sending the same states at several intensities lets Alice and Bob
bound the single-photon yield and error rate from the observed gains alone.  This
module holds the one implementation of each bound; the analytic model
(:mod:`hybridkex.qkd.analytic`) feeds it expected values, the post-processing feeds
it counts measured on the (simulated) link, so the two can only agree or disagree
for physical reasons, never because two copies of a formula drifted apart.

Asymptotic bounds (infinitely many pulses)
    Ma, Qi, Zhao, Lo, "Practical decoy state for quantum key distribution",
    PRA 72, 012326 (2005), their vacuum + weak decoy case:

    * ``Y1 >= Y1^L = mu/(mu nu - nu^2) [Q_nu e^nu - Q_mu e^mu nu^2/mu^2
      - (mu^2 - nu^2)/mu^2 Y0]``  (:func:`y1_lower`)
    * ``e1 <= e1^U = (E_nu Q_nu e^nu - e0 Y0) / (Y1^L nu)``  (:func:`e1_upper`)
    * ``Q1 = Y1 mu e^-mu``  (:func:`q1_from_y1`)

    and the GLLP key rate per pulse (Gottesman, Lo, Lütkenhaus, Preskill, QIC 4, 325
    (2004); Lo, Ma, Chen, PRL 94, 230504 (2005)),
    ``R = q {-Q_mu f H2(E_mu) + Q1 [1 - H2(e1)]}``  (:func:`gllp_rate`).

Finite-size bounds (a block of N pulses)
    Lim, Curty, Walenta, Xu, Zbinden, "Concise security bounds for practical
    decoy-state quantum key distribution", PRA 89, 022307 (2014), with intensities
    ``mu1 > mu2 + mu3``, ``mu2 > mu3 >= 0`` chosen with probabilities ``p_k``.  The
    paper keys in X and tests in Z; this module keys in **Z** and tests in **X**
    (the roles are symmetric), so its ``s_Z,0``, ``s_Z,1`` are the paper's
    ``s_X,0``, ``s_X,1`` and its ``v_X,1``, ``phi_Z`` the paper's ``v_Z,1``,
    ``phi_X``.  With ``tau_n = sum_k p_k e^-k k^n / n!`` and the Hoeffding deviation
    ``delta(n, eps) = sqrt(n/2 ln(1/eps))`` taken at ``eps = eps_sec/21``:

    * ``n^±_B,k = e^k/p_k (n_B,k ± delta(n_B, eps_sec/21))``, ``m^±`` likewise with
      the basis error total ``m_B``;
    * ``s^l_B,0 = tau0/(mu2 - mu3) (mu2 n^-_B,mu3 - mu3 n^+_B,mu2)``;
    * ``s^l_B,1 = mu1 tau1 / (mu1(mu2 - mu3) - mu2^2 + mu3^2) [n^-_B,mu2 - n^+_B,mu3
      - (mu2^2 - mu3^2)/mu1^2 (n^+_B,mu1 - s^l_B,0/tau0)]``;
    * ``v^u_X,1 = tau1/(mu2 - mu3) (m^+_X,mu2 - m^-_X,mu3)``;
    * ``phi^u_Z = v^u_X,1/s^l_X,1 + gamma(eps_sec, v^u_X,1/s^l_X,1, s^l_Z,1, s^l_X,1)``
      with ``gamma(a, b, c, d) = sqrt((c+d)(1-b)b/(c d ln 2)
      log2((c+d)/(c d (1-b) b) 21^2/a^2))``;
    * ``ell = s^l_Z,0 + s^l_Z,1 (1 - h2(phi^u_Z)) - lambda_EC - 6 log2(21/eps_sec)
      - log2(2/eps_cor)``, secure with ``eps_sec`` and correct with ``eps_cor``.

    The full paper text could not be retrieved while this was written; the formulas
    above are the ones widely reproduced from it (checked against an independent
    open-source implementation of the same paper and against the vacuum + weak limit
    they must reduce to as N grows: ``s^l_Z,1/N -> p_z^2 tau1 Y1^L`` with exactly
    the Ma et al. ``Y1^L``, which the tests verify).

Clipping conventions (why, in one place): a *lower* bound below zero carries no
information and is replaced by zero, which is always true; an *upper* bound on an
error rate above 1/2, or one the data drive negative (data that contradict the
model, e.g. fewer errors than the dark counts alone must cause), is replaced by
1/2, where ``1 - h2`` is zero and no key is credited.  Nothing is ever clipped in
the optimistic direction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from hybridkex.errors import InvalidParameter

__all__ = [
    "E0_BACKGROUND",
    "EPS_SPLIT",
    "AsymptoticEstimate",
    "BasisCounts",
    "FiniteKeyResult",
    "asymptotic_from_counts",
    "e1_upper",
    "ec_leakage",
    "finite_gamma",
    "finite_key",
    "finite_size_bits",
    "gllp_rate",
    "h2",
    "hoeffding_bounds",
    "hoeffding_delta",
    "q1_from_y1",
    "tau",
    "y1_lower",
]

#: Error rate of a click that carries no signal (a dark count is a coin toss).
E0_BACKGROUND = 0.5


def _check_finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParameter(f"{name} must be a real number")
    if not math.isfinite(value):
        raise InvalidParameter(f"{name} must be finite")
    return float(value)


def _check_probability(name: str, value: float) -> float:
    value = _check_finite(name, value)
    if not 0.0 <= value <= 1.0:
        raise InvalidParameter(f"{name} must be in [0, 1]")
    return value


def _check_count(name: str, value: float) -> float:
    value = _check_finite(name, value)
    if value < 0.0:
        raise InvalidParameter(f"{name} must be a non-negative count")
    return value


def h2(x: float) -> float:
    """Binary entropy in bits, made safe for bounds.

    ``x <= 0`` gives 0 and ``x >= 1/2`` gives 1: every caller passes an *upper*
    bound on an error rate, and an upper bound at or past 1/2 says nothing, so it
    must cost the full bit rather than the smaller ``h2`` of a rate above 1/2.
    """
    x = _check_finite("x", x)
    if x <= 0.0:
        return 0.0
    if x >= 0.5:
        return 1.0
    return -x * math.log2(x) - (1.0 - x) * math.log2(1.0 - x)


# ---------------------------------------------------------------------------
# Asymptotic vacuum + weak decoy bounds (Ma, Qi, Zhao, Lo 2005)
# ---------------------------------------------------------------------------


def _check_vacuum_weak(mu: float, nu: float) -> tuple[float, float]:
    mu = _check_finite("mu", mu)
    nu = _check_finite("nu", nu)
    if not mu > nu > 0.0:
        raise InvalidParameter("intensities must satisfy mu > nu > 0")
    return mu, nu


def y1_lower(q_mu: float, q_nu: float, y0: float, mu: float, nu: float) -> float:
    """Lower bound on the single-photon yield Y1 from the signal and weak-decoy gains.

    Clipped to [0, 1]: a negative value proves nothing (0 always holds) and a yield
    is a probability.  The bound tightens linearly as ``nu -> 0``.
    """
    mu, nu = _check_vacuum_weak(mu, nu)
    q_mu = _check_probability("q_mu", q_mu)
    q_nu = _check_probability("q_nu", q_nu)
    y0 = _check_probability("y0", y0)
    denominator = mu * nu - nu * nu
    if denominator <= 0.0:  # mu > nu > 0, but the product can underflow
        raise InvalidParameter("intensities too small for the vacuum + weak bound")
    bound = (
        mu
        / denominator
        * (
            q_nu * math.exp(nu)
            - q_mu * math.exp(mu) * nu * nu / (mu * mu)
            - (mu * mu - nu * nu) / (mu * mu) * y0
        )
    )
    return min(max(bound, 0.0), 1.0)


def e1_upper(
    e_nu: float,
    q_nu: float,
    y0: float,
    y1_l: float,
    nu: float,
    e0: float = E0_BACKGROUND,
) -> float:
    """Upper bound on the single-photon error rate e1 from the weak decoy.

    Returns 1/2 (no information) when ``y1_l`` is zero or the numerator is
    negative, and never more than 1/2.
    """
    nu = _check_finite("nu", nu)
    if nu <= 0.0:
        raise InvalidParameter("nu must be positive")
    e_nu = _check_probability("e_nu", e_nu)
    q_nu = _check_probability("q_nu", q_nu)
    y0 = _check_probability("y0", y0)
    y1_l = _check_probability("y1_l", y1_l)
    e0 = _check_probability("e0", e0)
    if y1_l * nu <= 0.0:  # y1_l zero, or the product underflows
        return E0_BACKGROUND
    numerator = e_nu * q_nu * math.exp(nu) - e0 * y0
    if numerator < 0.0:
        return E0_BACKGROUND
    return min(numerator / (y1_l * nu), E0_BACKGROUND)


def q1_from_y1(y1: float, mu: float) -> float:
    """Single-photon gain at intensity ``mu``: the Poisson weight of one photon times Y1."""
    y1 = _check_probability("y1", y1)
    mu = _check_finite("mu", mu)
    if mu < 0.0:
        raise InvalidParameter("mu must be non-negative")
    return y1 * mu * math.exp(-mu)


def gllp_rate(sifting: float, q_mu: float, e_mu: float, q1: float, e1: float, f_ec: float) -> float:
    """GLLP secret key per pulse; negative values mean the bounds prove no key.

    Not clipped here, so that a caller searching for the distance where the rate
    changes sign sees the sign; :mod:`hybridkex.qkd.analytic` clips.
    """
    sifting = _check_probability("sifting", sifting)
    q_mu = _check_probability("q_mu", q_mu)
    e_mu = _check_probability("e_mu", e_mu)
    q1 = _check_probability("q1", q1)
    e1 = _check_probability("e1", e1)
    f_ec = _check_finite("f_ec", f_ec)
    if f_ec < 1.0:
        raise InvalidParameter("f_ec must be >= 1 (no code beats the Shannon limit)")
    return sifting * (-q_mu * f_ec * h2(e_mu) + q1 * (1.0 - h2(e1)))


@dataclass(frozen=True)
class AsymptoticEstimate:
    """Gains, QBERs and vacuum + weak bounds computed from observed counts."""

    q_mu: float
    e_mu: float
    q_nu: float
    e_nu: float
    y0: float
    e_vacuum: float
    y1_l: float
    e1_u: float
    q1_l: float

    def key_rate(self, sifting: float, f_ec: float) -> float:
        """GLLP key per pulse of the population the counts came from (unclipped)."""
        return gllp_rate(sifting, self.q_mu, self.e_mu, self.q1_l, self.e1_u, f_ec)


def _triple(name: str, values: Sequence[float]) -> tuple[float, float, float]:
    if isinstance(values, (str, bytes)) or len(values) != 3:
        raise InvalidParameter(f"{name} must have one entry per intensity (3)")
    a, b, c = (_check_count(f"{name}[{i}]", v) for i, v in enumerate(values))
    return a, b, c


def asymptotic_from_counts(
    detections: Sequence[float],
    errors: Sequence[float],
    sent: Sequence[float],
    intensities: Sequence[float],
) -> AsymptoticEstimate:
    """Vacuum + weak bounds from counts, per intensity (signal, weak decoy, vacuum).

    ``sent[k]`` must count the pulses of the same population as ``detections[k]``
    (e.g. basis-matched pulses for sifted detections), so that ``detections/sent``
    is the gain.  The vacuum gain stands for Y0 and its error rate for e0, both
    measured rather than assumed.  Asymptotic: sampling fluctuations are ignored,
    which is only sound for very large blocks; use :func:`finite_key` otherwise.
    """
    n = _triple("detections", detections)
    m = _triple("errors", errors)
    sent_k = _triple("sent", sent)
    if isinstance(intensities, (str, bytes)) or len(intensities) != 3:
        raise InvalidParameter("intensities must be (signal, weak decoy, vacuum)")
    mu, nu, vac = (_check_finite(f"intensities[{i}]", v) for i, v in enumerate(intensities))
    if vac != 0.0:
        raise InvalidParameter("the vacuum + weak bounds need a true vacuum (intensity 0)")
    _check_vacuum_weak(mu, nu)
    for k in range(3):
        if m[k] > n[k]:
            raise InvalidParameter(f"errors[{k}] exceeds detections[{k}]")
        if n[k] > sent_k[k]:
            raise InvalidParameter(f"detections[{k}] exceeds sent[{k}]")
        if sent_k[k] <= 0.0:
            raise InvalidParameter(f"sent[{k}] must be positive")
    gains = [n[k] / sent_k[k] for k in range(3)]
    qbers = [m[k] / n[k] if n[k] > 0.0 else E0_BACKGROUND for k in range(3)]
    y0 = gains[2]
    e_vac = qbers[2]
    y1_l = y1_lower(gains[0], gains[1], y0, mu, nu)
    e1_u = e1_upper(qbers[1], gains[1], y0, y1_l, nu, e0=e_vac)
    return AsymptoticEstimate(
        q_mu=gains[0],
        e_mu=qbers[0],
        q_nu=gains[1],
        e_nu=qbers[1],
        y0=y0,
        e_vacuum=e_vac,
        y1_l=y1_l,
        e1_u=e1_u,
        q1_l=q1_from_y1(y1_l, mu),
    )


# ---------------------------------------------------------------------------
# Finite-size bounds (Lim, Curty, Walenta, Xu, Zbinden 2014)
# ---------------------------------------------------------------------------

#: The paper splits eps_sec over 21 terms; each Hoeffding bound gets eps_sec/21.
EPS_SPLIT = 21
_EPS_SPLIT = float(EPS_SPLIT)


@dataclass(frozen=True)
class BasisCounts:
    """Detections ``n`` and bit errors ``m`` in one basis, per intensity index 0, 1, 2.

    Counts are floats so that expected counts (analytic model) and observed
    counts (simulation) go through the same code.
    """

    n: tuple[float, float, float]
    m: tuple[float, float, float]

    def __post_init__(self) -> None:
        n = _triple("n", self.n)
        m = _triple("m", self.m)
        for k in range(3):
            if m[k] > n[k]:
                raise InvalidParameter(f"m[{k}] exceeds n[{k}]: more errors than detections")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "m", m)

    @property
    def n_total(self) -> float:
        return self.n[0] + self.n[1] + self.n[2]

    @property
    def m_total(self) -> float:
        return self.m[0] + self.m[1] + self.m[2]


@dataclass(frozen=True)
class FiniteKeyResult:
    """Lim et al. bounds for one block, and the secret key length they allow.

    ``ell`` is not clipped or rounded: zero or negative means no key can be
    extracted with the requested security; a caller extracts ``floor(ell)`` bits.
    """

    s_z0_l: float
    s_z1_l: float
    v_x1_u: float
    s_x1_l: float
    phi_u: float
    ell: float
    eps_sec: float
    eps_cor: float
    lambda_ec: float
    verification_bits: float


def hoeffding_delta(n: float, eps: float) -> float:
    """Hoeffding deviation ``sqrt(n/2 ln(1/eps))`` for a total of ``n`` events."""
    n = _check_count("n", n)
    eps = _check_finite("eps", eps)
    if not 0.0 < eps < 1.0:
        raise InvalidParameter("eps must be in (0, 1)")
    return math.sqrt(n / 2.0 * math.log(1.0 / eps))


def hoeffding_bounds(
    n_k: float, n_total: float, intensity: float, p_k: float, eps: float
) -> tuple[float, float]:
    """``(n^-, n^+)``: the interval holding ``e^k/p_k`` times the expected count.

    ``n_k`` events were seen at intensity ``k`` out of ``n_total`` in the basis;
    except with probability ``2 eps`` the asymptotic (expected) value of
    ``e^k n_k / p_k`` lies inside.  The lower end is not clipped at zero: the
    bounds built from it clip where it matters.
    """
    n_k = _check_count("n_k", n_k)
    n_total = _check_count("n_total", n_total)
    if n_k > n_total:
        raise InvalidParameter("n_k exceeds n_total")
    intensity = _check_finite("intensity", intensity)
    if intensity < 0.0:
        raise InvalidParameter("intensity must be non-negative")
    p_k = _check_finite("p_k", p_k)
    if not 0.0 < p_k <= 1.0:
        raise InvalidParameter("p_k must be in (0, 1]")
    delta = hoeffding_delta(n_total, eps)
    scale = math.exp(intensity) / p_k
    return scale * (n_k - delta), scale * (n_k + delta)


def tau(n: int, intensities: Sequence[float], probabilities: Sequence[float]) -> float:
    """Probability that Alice sends ``n`` photons, averaged over her intensity choice."""
    if n < 0:
        raise InvalidParameter("photon number must be non-negative")
    return sum(
        p * math.exp(-k) * k**n / math.factorial(n)
        for k, p in zip(intensities, probabilities, strict=True)
    )


def finite_size_bits(eps_sec: float) -> float:
    """Lim et al.'s finite-size deduction ``6 log2(21/eps_sec)``: the price, in key bits,
    of the smoothing and the leftover hash lemma at ``eps_sec``."""
    return 6.0 * math.log2(_EPS_SPLIT / eps_sec)


def finite_gamma(a: float, b: float, c: float, d: float) -> float:
    """Lim et al.'s sampling correction from the test-basis to the key-basis phase error.

    ``a = eps_sec``, ``b`` the test-basis single-photon error ratio, ``c``, ``d``
    the key- and test-basis single-photon counts.  The logarithm is expanded so
    that a tiny ``b`` cannot overflow it; at ``b = 0`` (no test-basis error at all)
    the value is the formula's limit, 0.
    """
    if not (a > 0.0 and c > 0.0 and d > 0.0):
        raise InvalidParameter("gamma needs a > 0 and positive single-photon counts")
    if not 0.0 <= b < 1.0:
        raise InvalidParameter("gamma needs 0 <= b < 1")
    if b == 0.0:
        return 0.0
    if c * d == 0.0:  # the counts' product underflows: the correction is unbounded
        return math.inf
    log_inner = (
        math.log2(c + d)
        - math.log2(c)
        - math.log2(d)
        - math.log2(1.0 - b)
        - math.log2(b)
        + 2.0 * math.log2(_EPS_SPLIT / a)
    )
    value = (c + d) * (1.0 - b) * b / (c * d * math.log(2.0)) * log_inner
    return math.sqrt(max(value, 0.0))


def _check_intensities(
    intensities: Sequence[float], probabilities: Sequence[float]
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    if isinstance(intensities, (str, bytes)) or len(intensities) != 3:
        raise InvalidParameter("intensities must be (mu1, mu2, mu3)")
    if isinstance(probabilities, (str, bytes)) or len(probabilities) != 3:
        raise InvalidParameter("probabilities must have one entry per intensity (3)")
    mu1, mu2, mu3 = (_check_finite(f"intensities[{i}]", v) for i, v in enumerate(intensities))
    if not (mu3 >= 0.0 and mu2 > mu3 and mu1 > mu2 + mu3):
        raise InvalidParameter("intensities must satisfy mu1 > mu2 + mu3 and mu2 > mu3 >= 0")
    p1, p2, p3 = (_check_finite(f"probabilities[{i}]", v) for i, v in enumerate(probabilities))
    for i, p in enumerate((p1, p2, p3)):
        if not 0.0 < p <= 1.0:
            raise InvalidParameter(f"probabilities[{i}] must be in (0, 1]")
    if abs(p1 + p2 + p3 - 1.0) > 1e-9:
        raise InvalidParameter("intensity probabilities must sum to 1")
    return (mu1, mu2, mu3), (p1, p2, p3)


def _vacuum_lower(
    counts: BasisCounts, mus: tuple[float, float, float], ps: tuple[float, float, float],
    eps: float, tau0: float,
) -> float:
    _mu1, mu2, mu3 = mus
    n_tot = counts.n_total
    n_mu3_minus, _ = hoeffding_bounds(counts.n[2], n_tot, mu3, ps[2], eps)
    _, n_mu2_plus = hoeffding_bounds(counts.n[1], n_tot, mu2, ps[1], eps)
    bound = tau0 / (mu2 - mu3) * (mu2 * n_mu3_minus - mu3 * n_mu2_plus)
    return max(bound, 0.0)


def _single_lower(
    counts: BasisCounts, mus: tuple[float, float, float], ps: tuple[float, float, float],
    eps: float, tau0: float, tau1: float, s0_l: float,
) -> float:
    mu1, mu2, mu3 = mus
    n_tot = counts.n_total
    _, n_mu1_plus = hoeffding_bounds(counts.n[0], n_tot, mu1, ps[0], eps)
    n_mu2_minus, _ = hoeffding_bounds(counts.n[1], n_tot, mu2, ps[1], eps)
    _, n_mu3_plus = hoeffding_bounds(counts.n[2], n_tot, mu3, ps[2], eps)
    denominator = mu1 * (mu2 - mu3) - mu2 * mu2 + mu3 * mu3
    if denominator <= 0.0:  # positive when mu1 > mu2 + mu3, unless rounding cancels it
        raise InvalidParameter("intensities too close for the single-photon bound")
    bound = (
        mu1
        * tau1
        / denominator
        * (
            n_mu2_minus
            - n_mu3_plus
            - (mu2 * mu2 - mu3 * mu3) / (mu1 * mu1) * (n_mu1_plus - s0_l / tau0)
        )
    )
    return max(bound, 0.0)


def _single_errors_upper(
    counts: BasisCounts, mus: tuple[float, float, float], ps: tuple[float, float, float],
    eps: float, tau1: float,
) -> float:
    _mu1, mu2, mu3 = mus
    m_tot = counts.m_total
    _, m_mu2_plus = hoeffding_bounds(counts.m[1], m_tot, mu2, ps[1], eps)
    m_mu3_minus, _ = hoeffding_bounds(counts.m[2], m_tot, mu3, ps[2], eps)
    return tau1 / (mu2 - mu3) * (m_mu2_plus - m_mu3_minus)


def ec_leakage(n: float, m: float, f_ec: float) -> float:
    """Bits revealed by error correction on ``n`` bits with ``m`` errors: ``f n h2(m/n)``.

    The realistic estimate used when the real leakage is not yet known; the
    protocol itself passes the bits its Cascade run actually disclosed.
    """
    n = _check_count("n", n)
    m = _check_count("m", m)
    f_ec = _check_finite("f_ec", f_ec)
    if f_ec < 1.0:
        raise InvalidParameter("f_ec must be >= 1")
    if m > n:
        raise InvalidParameter("more errors than bits")
    return 0.0 if n == 0.0 else f_ec * n * h2(m / n)


def finite_key(
    z: BasisCounts,
    x: BasisCounts,
    intensities: Sequence[float],
    probabilities: Sequence[float],
    lambda_ec: float,
    eps_sec: float = 1e-10,
    eps_cor: float = 1e-15,
    *,
    verification_bits: float | None = None,
) -> FiniteKeyResult:
    """Secret key length of one block: Z is the key basis, X the test basis.

    ``intensities`` are (mu1, mu2, mu3) = (signal, weak decoy, vacuum or weakest
    decoy) and ``probabilities`` Alice's chance of each; ``lambda_ec`` the bits the
    error correction disclosed (see :func:`ec_leakage`).

    ``verification_bits`` is the length of the error-verification tag that was
    disclosed.  By default it is the paper's: a universal2 hash of
    ``ceil(log2(1/eps_cor))`` bits, which the paper deducts as ``log2(2/eps_cor)``
    (an upper bound on that ceiling).  A protocol that discloses another tag passes
    its length, and ``eps_cor`` is then whatever that tag's collision bound gives.
    """
    mus, ps = _check_intensities(intensities, probabilities)
    lambda_ec = _check_count("lambda_ec", lambda_ec)
    eps_sec = _check_finite("eps_sec", eps_sec)
    eps_cor = _check_finite("eps_cor", eps_cor)
    if not 0.0 < eps_sec < 1.0 or not 0.0 < eps_cor < 1.0:
        raise InvalidParameter("eps_sec and eps_cor must be in (0, 1)")
    verification = (math.log2(2.0 / eps_cor) if verification_bits is None
                    else _check_count("verification_bits", verification_bits))
    if not isinstance(z, BasisCounts) or not isinstance(x, BasisCounts):
        raise InvalidParameter("z and x must be BasisCounts")

    eps = eps_sec / _EPS_SPLIT
    tau0 = tau(0, mus, ps)
    tau1 = tau(1, mus, ps)

    s_z0_l = _vacuum_lower(z, mus, ps, eps, tau0)
    s_z1_l = _single_lower(z, mus, ps, eps, tau0, tau1, s_z0_l)
    s_x0_l = _vacuum_lower(x, mus, ps, eps, tau0)
    s_x1_l = _single_lower(x, mus, ps, eps, tau0, tau1, s_x0_l)
    v_x1_u = _single_errors_upper(x, mus, ps, eps, tau1)

    if s_z1_l <= 0.0 or s_x1_l <= 0.0 or v_x1_u < 0.0:
        # No single photons proven, or data the model cannot produce: no phase
        # error information, so the single-photon part earns nothing.
        phi_u = E0_BACKGROUND
    else:
        ratio = v_x1_u / s_x1_l
        if ratio >= E0_BACKGROUND:
            phi_u = E0_BACKGROUND
        else:
            phi_u = min(ratio + finite_gamma(eps_sec, ratio, s_z1_l, s_x1_l), E0_BACKGROUND)

    ell = (
        s_z0_l
        + s_z1_l * (1.0 - h2(phi_u))
        - lambda_ec
        - finite_size_bits(eps_sec)
        - verification
    )
    return FiniteKeyResult(
        s_z0_l=s_z0_l,
        s_z1_l=s_z1_l,
        v_x1_u=v_x1_u,
        s_x1_l=s_x1_l,
        phi_u=phi_u,
        ell=ell,
        eps_sec=eps_sec,
        eps_cor=eps_cor,
        lambda_ec=lambda_ec,
        verification_bits=verification,
    )
