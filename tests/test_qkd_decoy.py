"""Decoy-state estimation: the bounds hold on the safe side, tighten, and reduce to each other."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest

from hybridkex.errors import InvalidParameter
from hybridkex.qkd import analytic, decoy
from hybridkex.qkd.decoy import BasisCounts
from hybridkex.qkd.parameters import LinkParameters

GYS = LinkParameters()


def poisson_channel(p: LinkParameters, k: float) -> tuple[float, float]:
    """Gain and QBER as the exact photon-number sum of MQZL Eqs. (7) and (9).

    An oracle independent of :mod:`analytic`: with these inputs the vacuum + weak
    bounds are mathematically guaranteed to hold, with no rounding slack.
    """
    gain = errors = 0.0
    for n in range(80):
        weight = math.exp(-k) * k**n / math.factorial(n)
        eta_n = 1.0 - (1.0 - p.eta) ** n
        gain += weight * (1.0 - (1.0 - p.y0) * (1.0 - p.eta) ** n)
        errors += weight * (0.5 * p.y0 + p.e_detector * eta_n)
    return gain, errors / gain


def expected_counts(p: LinkParameters, pulses: float) -> tuple[BasisCounts, BasisCounts]:
    """Z- and X-basis detections and errors a block of ``pulses`` produces on average."""
    intensities = (p.mu, p.nu, p.vacuum)
    probabilities = (p.p_mu, p.p_nu, p.p_vacuum)

    def basis(p_basis: float) -> BasisCounts:
        n = [pulses * pk * p_basis**2 * analytic.expected_gain(p, k)
             for k, pk in zip(intensities, probabilities, strict=True)]
        m = [nk * analytic.expected_qber(p, k) for nk, k in zip(n, intensities, strict=True)]
        return BasisCounts((n[0], n[1], n[2]), (m[0], m[1], m[2]))

    return basis(p.p_z), basis(1.0 - p.p_z)


def finite(p: LinkParameters, pulses: float) -> decoy.FiniteKeyResult:
    z, x = expected_counts(p, pulses)
    leak = decoy.ec_leakage(z.n_total, z.m_total, p.f_ec)
    return decoy.finite_key(
        z, x, (p.mu, p.nu, p.vacuum), (p.p_mu, p.p_nu, p.p_vacuum), leak
    )


def asymptotic_length(p: LinkParameters, pulses: float) -> float:
    """The same protocol (Z key, all intensities, vacuum term) with exact statistics.

    Uses the vacuum + weak bounds, the limit Lim et al.'s bounds must reach.
    """
    intensities = (p.mu, p.nu, p.vacuum)
    probabilities = (p.p_mu, p.p_nu, p.p_vacuum)
    q_mu = analytic.expected_gain(p, p.mu)
    q_nu = analytic.expected_gain(p, p.nu)
    y1_l = decoy.y1_lower(q_mu, q_nu, p.y0, p.mu, p.nu)
    e1_u = decoy.e1_upper(analytic.expected_qber(p, p.nu), q_nu, p.y0, y1_l, p.nu)
    z, _ = expected_counts(p, pulses)
    singles = decoy.tau(1, intensities, probabilities) * y1_l * (1.0 - decoy.h2(e1_u))
    vacuum = decoy.tau(0, intensities, probabilities) * p.y0
    leak = decoy.ec_leakage(z.n_total, z.m_total, p.f_ec)
    return pulses * p.p_z**2 * (vacuum + singles) - leak


# --- binary entropy -----------------------------------------------------------------


def test_h2() -> None:
    assert decoy.h2(0.0) == 0.0
    assert decoy.h2(1.0) == 1.0  # an upper bound at 1 says nothing: full cost
    assert decoy.h2(0.5) == 1.0
    assert decoy.h2(0.7) == 1.0
    assert decoy.h2(-0.1) == 0.0
    assert decoy.h2(0.11) == pytest.approx(0.4999, abs=1e-4)
    assert decoy.h2(0.25) == pytest.approx(0.8112781244591328)


# --- asymptotic vacuum + weak bounds --------------------------------------------------


@pytest.mark.parametrize("distance", [0.0, 25.0, 50.0, 100.0, 140.0])
def test_vacuum_weak_bounds_hold(distance: float) -> None:
    p = GYS.at_distance(distance)
    q_mu, _ = poisson_channel(p, p.mu)
    q_nu, e_nu = poisson_channel(p, p.nu)
    y1_l = decoy.y1_lower(q_mu, q_nu, p.y0, p.mu, p.nu)
    e1_u = decoy.e1_upper(e_nu, q_nu, p.y0, y1_l, p.nu)
    y1 = analytic.single_photon_yield(p)
    e1 = analytic.single_photon_error(p)
    assert 0.0 < y1_l <= y1
    assert e1 <= e1_u <= 0.5
    # nu = 0.05 costs a few per cent, not more (MQZL Fig. 1).
    assert y1_l > 0.97 * y1


def test_vacuum_weak_bounds_converge_as_nu_vanishes() -> None:
    p = GYS.at_distance(50.0)
    y1 = analytic.single_photon_yield(p)
    e1 = analytic.single_photon_error(p)
    q_mu, _ = poisson_channel(p, p.mu)
    gaps = []
    for nu in (0.1, 0.01, 1e-3, 1e-4):
        q_nu, e_nu = poisson_channel(p, nu)
        y1_l = decoy.y1_lower(q_mu, q_nu, p.y0, p.mu, nu)
        e1_u = decoy.e1_upper(e_nu, q_nu, p.y0, y1_l, nu)
        gaps.append(((y1 - y1_l) / y1, (e1_u - e1) / e1))
    assert all(g[0] >= 0.0 and g[1] >= 0.0 for g in gaps)
    for coarse, fine in itertools.pairwise(gaps):
        assert fine[0] < coarse[0] and fine[1] < coarse[1]
    assert gaps[-1][0] < 1e-4 and gaps[-1][1] < 1e-3
    # The gap is linear in nu (MQZL Sec. 3.4): a tenth of nu, a tenth of the gap.
    assert gaps[1][0] / gaps[2][0] == pytest.approx(10.0, rel=0.02)


def test_q1_and_clipping() -> None:
    assert decoy.q1_from_y1(0.01, 0.5) == pytest.approx(0.01 * 0.5 * math.exp(-0.5))
    # A decoy gain far too small for the signal: the lower bound proves nothing.
    assert decoy.y1_lower(0.5, 1e-9, 0.0, 0.5, 0.1) == 0.0
    assert decoy.e1_upper(0.03, 1e-3, 1e-6, 0.0, 0.1) == 0.5
    # Fewer decoy errors than the dark counts alone cause: data contradict the model.
    assert decoy.e1_upper(0.0, 1e-3, 1e-4, 0.01, 0.1) == 0.5
    assert decoy.e1_upper(0.4, 0.9, 0.0, 1e-3, 0.1) == 0.5


def test_gllp_rate_keeps_sign() -> None:
    assert decoy.gllp_rate(0.5, 0.01, 0.2, 0.001, 0.3, 1.22) < 0.0
    assert decoy.gllp_rate(0.5, 0.01, 0.0, 0.005, 0.0, 1.22) == pytest.approx(0.0025)


def test_asymptotic_from_counts_matches_direct_bounds() -> None:
    p = GYS.at_distance(50.0)
    sent = (8e11, 1e11, 1e11)
    intensities = (p.mu, p.nu, 0.0)
    detections = [s * analytic.expected_gain(p, k) for s, k in zip(sent, intensities, strict=True)]
    errors = [
        n * analytic.expected_qber(p, k) for n, k in zip(detections, intensities, strict=True)
    ]
    est = decoy.asymptotic_from_counts(detections, errors, sent, intensities)
    q_mu = analytic.expected_gain(p, p.mu)
    q_nu = analytic.expected_gain(p, p.nu)
    assert est.y0 == pytest.approx(p.y0)
    assert est.e_vacuum == pytest.approx(0.5)
    assert est.y1_l == pytest.approx(decoy.y1_lower(q_mu, q_nu, p.y0, p.mu, p.nu), rel=1e-9)
    assert est.key_rate(0.5, p.f_ec) == pytest.approx(analytic.key_rate(p, "vacuum-weak"), rel=1e-9)


def test_asymptotic_from_sampled_counts() -> None:
    """Binomial counts from a large block land near the expected-value bounds."""
    rng = np.random.default_rng(7)
    p = GYS.at_distance(25.0)
    sent = (8e10, 1e10, 1e10)
    intensities = (p.mu, p.nu, 0.0)
    detections: list[float] = []
    errors: list[float] = []
    for s, k in zip(sent, intensities, strict=True):
        n = float(rng.binomial(int(s), analytic.expected_gain(p, k)))
        detections.append(n)
        errors.append(float(rng.binomial(int(n), analytic.expected_qber(p, k))))
    est = decoy.asymptotic_from_counts(detections, errors, sent, intensities)
    assert est.y1_l == pytest.approx(analytic.single_photon_yield(p), rel=0.03)
    assert est.e1_u == pytest.approx(analytic.single_photon_error(p), rel=0.15)


# --- finite size (Lim et al. 2014) ----------------------------------------------------


def test_hoeffding_bounds_bracket_the_expectation() -> None:
    """Sampled blocks: the interval always holds e^k/p_k times the expected count."""
    rng = np.random.default_rng(2014)
    p = GYS.at_distance(50.0)
    intensities = (p.mu, p.nu, p.vacuum)
    probabilities = (p.p_mu, p.p_nu, p.p_vacuum)
    weights = np.array([pk * analytic.expected_gain(p, k)
                        for k, pk in zip(intensities, probabilities, strict=True)])
    conditional = weights / weights.sum()
    eps = 1e-10 / 21
    for _ in range(200):
        total = int(rng.poisson(2e5))
        counts = rng.multinomial(total, conditional)
        for k in range(3):
            lower, upper = decoy.hoeffding_bounds(
                float(counts[k]), float(total), intensities[k], probabilities[k], eps
            )
            truth = math.exp(intensities[k]) / probabilities[k] * total * conditional[k]
            assert lower <= truth <= upper
            observed = math.exp(intensities[k]) / probabilities[k] * counts[k]
            assert lower <= observed <= upper


def test_lim_bounds_known_answer() -> None:
    """Lim et al.'s bounds written out by hand for one small block, eps_sec/21 per bound."""
    mu1, mu2, mu3 = 0.6, 0.2, 0.0
    p1, p2, p3 = 0.7, 0.2, 0.1
    z = BasisCounts((4.0e8, 3.0e7, 2.0e5), (8.0e6, 9.0e5, 1.0e5))
    x = BasisCounts((1.0e8, 7.5e6, 5.0e4), (2.0e6, 2.25e5, 2.5e4))
    result = decoy.finite_key(z, x, (mu1, mu2, mu3), (p1, p2, p3), 5000.0)
    assert result.s_z0_l > 0 and result.s_z1_l > 0 and result.v_x1_u > 0

    delta_z = math.sqrt(z.n_total / 2 * math.log(21 / 1e-10))
    delta_x = math.sqrt(x.n_total / 2 * math.log(21 / 1e-10))
    delta_m = math.sqrt(x.m_total / 2 * math.log(21 / 1e-10))
    tau0 = p1 * math.exp(-mu1) + p2 * math.exp(-mu2) + p3
    tau1 = p1 * mu1 * math.exp(-mu1) + p2 * mu2 * math.exp(-mu2)

    def singles(c: BasisCounts, delta: float) -> float:
        s0 = tau0 * (c.n[2] - delta) / p3
        n1_plus = math.exp(mu1) / p1 * (c.n[0] + delta)
        n2_minus = math.exp(mu2) / p2 * (c.n[1] - delta)
        n3_plus = (c.n[2] + delta) / p3
        return (
            mu1 * tau1 / (mu1 * mu2 - mu2**2)
            * (n2_minus - n3_plus - mu2**2 / mu1**2 * (n1_plus - s0 / tau0))
        )

    s_z0 = tau0 * (z.n[2] - delta_z) / p3
    s_z1 = singles(z, delta_z)
    s_x1 = singles(x, delta_x)
    v_x1 = tau1 / mu2 * (math.exp(mu2) / p2 * (x.m[1] + delta_m) - (x.m[2] - delta_m) / p3)
    assert result.s_z0_l == pytest.approx(s_z0, rel=1e-12)
    assert result.s_z1_l == pytest.approx(s_z1, rel=1e-12)
    assert result.s_x1_l == pytest.approx(s_x1, rel=1e-12)
    assert result.v_x1_u == pytest.approx(v_x1, rel=1e-12)
    b = v_x1 / s_x1
    gamma = math.sqrt(
        (s_z1 + s_x1) * (1 - b) * b / (s_z1 * s_x1 * math.log(2))
        * math.log2((s_z1 + s_x1) / (s_z1 * s_x1 * (1 - b) * b) * 21**2 / 1e-20)
    )
    assert result.phi_u == pytest.approx(b + gamma, rel=1e-12)


def test_hoeffding_bounds_value() -> None:
    delta = math.sqrt(1000 / 2 * math.log(1e10))
    lower, upper = decoy.hoeffding_bounds(100.0, 1000.0, 0.5, 0.8, 1e-10)
    assert lower == pytest.approx(math.exp(0.5) / 0.8 * (100 - delta))
    assert upper == pytest.approx(math.exp(0.5) / 0.8 * (100 + delta))


def test_hoeffding_delta_value() -> None:
    assert decoy.hoeffding_delta(1e6, 1e-10) == pytest.approx(math.sqrt(5e5 * math.log(1e10)))
    assert decoy.hoeffding_delta(0.0, 0.5) == 0.0


def test_finite_reduces_to_vacuum_weak_for_huge_blocks() -> None:
    """s_Z1 / N -> p_z^2 tau1 Y1^L with exactly the Ma et al. vacuum + weak Y1^L."""
    p = GYS.at_distance(25.0)
    pulses = 1e18
    result = finite(p, pulses)
    intensities = (p.mu, p.nu, p.vacuum)
    probabilities = (p.p_mu, p.p_nu, p.p_vacuum)
    y1_l = decoy.y1_lower(
        analytic.expected_gain(p, p.mu), analytic.expected_gain(p, p.nu), p.y0, p.mu, p.nu
    )
    tau1 = decoy.tau(1, intensities, probabilities)
    assert result.s_z1_l / pulses == pytest.approx(p.p_z**2 * tau1 * y1_l, rel=0.01)
    assert result.s_z0_l / pulses == pytest.approx(
        p.p_z**2 * decoy.tau(0, intensities, probabilities) * p.y0, rel=0.01
    )
    assert result.phi_u == pytest.approx(
        decoy.e1_upper(
            analytic.expected_qber(p, p.nu), analytic.expected_gain(p, p.nu), p.y0, y1_l, p.nu
        ),
        rel=0.02,
    )
    assert result.ell == pytest.approx(asymptotic_length(p, pulses), rel=0.01)


@pytest.mark.parametrize("distance", [25.0, 50.0])
def test_finite_key_grows_with_block_and_approaches_asymptotic(distance: float) -> None:
    p = GYS.at_distance(distance)
    blocks = [1e6, 1e8, 1e10, 1e12, 1e14]
    results = [finite(p, n) for n in blocks]
    per_pulse = [r.ell / n for r, n in zip(results, blocks, strict=True)]
    for smaller, larger in itertools.pairwise(per_pulse):
        assert larger > smaller
    positive = [r.ell for r in results if r.ell > 0.0]
    assert positive == sorted(positive) and len(positive) >= 2
    ratio = results[3].ell / asymptotic_length(p, blocks[3])
    assert 0.75 < ratio < 1.0  # 1e12 pulses: within 25 % of the asymptotic key
    ratio = results[4].ell / asymptotic_length(p, blocks[4])
    assert 0.97 < ratio < 1.0  # 1e14 pulses: within 3 %
    # The phase-error bound tightens towards the asymptotic e1 bound.
    phis = [r.phi_u for r in results]
    assert phis == sorted(phis, reverse=True)


@pytest.mark.parametrize("distance", [25.0, 100.0])
def test_finite_key_tends_to_analytic_rate_times_n(distance: float) -> None:
    """Huge block, nearly all pulses signals: ell -> N x the analytic GLLP rate.

    Two protocol differences are scaled out or made small: the finite protocol keys
    in Z only (``p_z^2`` instead of the analytic sifting factor ``q``), and it keys
    on decoy and vacuum pulses too, which here are 2 % of the pulses; so agreement
    to within 3 % is what the physics allows, and what is required.
    """
    p = replace(GYS, p_mu=0.98, p_nu=0.01).at_distance(distance)
    pulses = 1e20
    result = finite(p, pulses)
    expected = pulses * analytic.key_rate(p, "vacuum-weak") * p.p_z**2 / analytic.sifting_factor(p)
    assert result.ell == pytest.approx(expected, rel=0.03)


def test_small_block_gives_no_key() -> None:
    result = finite(GYS.at_distance(25.0), 1e6)
    assert result.ell <= 0.0
    assert result.phi_u == 0.5


def test_finite_key_result_fields() -> None:
    result = finite(GYS.at_distance(25.0), 1e12)
    assert result.eps_sec == 1e-10 and result.eps_cor == 1e-15
    assert result.s_z1_l > 0 and result.s_x1_l > 0 and result.v_x1_u > 0
    assert result.v_x1_u / result.s_x1_l < result.phi_u < 0.5
    penalty = 6 * math.log2(21 / 1e-10) + math.log2(2 / 1e-15)
    expected = (result.s_z0_l + result.s_z1_l * (1 - decoy.h2(result.phi_u))
                - result.lambda_ec - penalty)
    assert result.ell == pytest.approx(expected, abs=1e-3)
    # Stricter security costs key.
    z, x = expected_counts(GYS.at_distance(25.0), 1e12)
    stricter = decoy.finite_key(z, x, (0.48, 0.05, 0.0), (0.8, 0.1, 0.1), result.lambda_ec,
                                eps_sec=1e-20)
    assert stricter.ell < result.ell


def test_gamma_shrinks_with_more_singles() -> None:
    small = decoy.finite_gamma(1e-10, 0.03, 1e4, 1e4)
    large = decoy.finite_gamma(1e-10, 0.03, 1e8, 1e8)
    assert 0.0 < large < small
    assert decoy.finite_gamma(1e-10, 0.0, 1e6, 1e6) == 0.0
    assert 0.0 < decoy.finite_gamma(1e-10, 1e-300, 1e6, 1e6) < 1e-140


def test_tau() -> None:
    mus = (0.5, 0.1, 0.0)
    ps = (0.7, 0.2, 0.1)
    assert decoy.tau(0, mus, ps) == pytest.approx(
        0.7 * math.exp(-0.5) + 0.2 * math.exp(-0.1) + 0.1
    )
    assert decoy.tau(1, mus, ps) == pytest.approx(
        0.7 * 0.5 * math.exp(-0.5) + 0.2 * 0.1 * math.exp(-0.1)
    )


def test_ec_leakage() -> None:
    assert decoy.ec_leakage(1000.0, 110.0, 1.0) == pytest.approx(1000 * decoy.h2(0.11))
    assert decoy.ec_leakage(0.0, 0.0, 1.2) == 0.0


# --- typed errors -------------------------------------------------------------------


def _good_counts() -> tuple[BasisCounts, BasisCounts]:
    return expected_counts(GYS.at_distance(25.0), 1e10)


def test_rejects_negative_or_inconsistent_counts() -> None:
    with pytest.raises(InvalidParameter):
        BasisCounts((-1.0, 10.0, 1.0), (0.0, 0.0, 0.0))
    with pytest.raises(InvalidParameter):
        BasisCounts((10.0, 10.0, 1.0), (0.0, -2.0, 0.0))
    with pytest.raises(InvalidParameter):
        BasisCounts((10.0, 10.0, 1.0), (11.0, 0.0, 0.0))
    with pytest.raises(InvalidParameter):
        BasisCounts((10.0, 10.0), (0.0, 0.0))  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter):
        BasisCounts((math.nan, 10.0, 1.0), (0.0, 0.0, 0.0))


@pytest.mark.parametrize(
    "intensities",
    [
        (0.05, 0.48, 0.0),  # signal below decoy
        (0.3, 0.2, 0.15),  # mu1 <= mu2 + mu3
        (0.5, 0.1, 0.1),  # mu2 == mu3
        (0.5, 0.1, -0.01),  # negative vacuum
    ],
)
def test_rejects_intensities_out_of_order(intensities: tuple[float, float, float]) -> None:
    z, x = _good_counts()
    with pytest.raises(InvalidParameter):
        decoy.finite_key(z, x, intensities, (0.8, 0.1, 0.1), 0.0)


def test_rejects_bad_probabilities_and_epsilons() -> None:
    z, x = _good_counts()
    mus = (0.48, 0.05, 0.0)
    with pytest.raises(InvalidParameter):
        decoy.finite_key(z, x, mus, (0.8, 0.1, 0.2), 0.0)
    with pytest.raises(InvalidParameter):
        decoy.finite_key(z, x, mus, (0.9, 0.1, 0.0), 0.0)
    with pytest.raises(InvalidParameter):
        decoy.finite_key(z, x, mus, (0.8, 0.1, 0.1), -1.0)
    with pytest.raises(InvalidParameter):
        decoy.finite_key(z, x, mus, (0.8, 0.1, 0.1), 0.0, eps_sec=0.0)
    with pytest.raises(InvalidParameter):
        decoy.finite_key(z, x, mus, (0.8, 0.1, 0.1), 0.0, eps_cor=1.5)


def test_asymptotic_rejects_bad_input() -> None:
    sent = (1e6, 1e6, 1e6)
    with pytest.raises(InvalidParameter):
        decoy.y1_lower(0.01, 0.001, 1e-6, 0.05, 0.48)
    with pytest.raises(InvalidParameter):
        decoy.y1_lower(1.5, 0.001, 1e-6, 0.48, 0.05)
    with pytest.raises(InvalidParameter):
        decoy.e1_upper(0.03, 0.001, 1e-6, 0.01, 0.0)
    with pytest.raises(InvalidParameter):
        decoy.asymptotic_from_counts((-1.0, 1.0, 1.0), (0.0, 0.0, 0.0), sent, (0.48, 0.05, 0.0))
    with pytest.raises(InvalidParameter):
        decoy.asymptotic_from_counts((10.0, 1.0, 1.0), (11.0, 0.0, 0.0), sent, (0.48, 0.05, 0.0))
    with pytest.raises(InvalidParameter):
        decoy.asymptotic_from_counts((10.0, 1.0, 1.0), (1.0, 0.0, 0.0), sent, (0.48, 0.05, 0.01))
    with pytest.raises(InvalidParameter):
        decoy.asymptotic_from_counts((10.0, 1.0, 1.0), (1.0, 0.0, 0.0), sent, (0.48, 0.05))
    with pytest.raises(InvalidParameter):
        decoy.gllp_rate(0.5, 0.01, 0.03, 0.001, 0.03, 0.9)
    with pytest.raises(InvalidParameter):
        decoy.hoeffding_bounds(10.0, 5.0, 0.5, 0.8, 1e-10)
