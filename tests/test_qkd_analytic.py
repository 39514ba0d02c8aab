"""Analytic decoy-state key rates against the published GYS numbers and against physics.

Published anchors: Ma, Qi, Zhao, Lo, "Practical decoy state for quantum key
distribution", PRA 72, 012326 (2005) ("MQZL"), for the GYS parameters of their
Table 1 (the LinkParameters defaults):

* Figure 2: maximal secure distance 142.05 km with infinitely many decoys and
  140.55 km with vacuum + weak decoy (mu = 0.48, nu = 0.05);
* Figure 1: at 40 km and nu/mu = 25 %, the vacuum + weak Y1 bound lies 3.5 % below
  the true Y1 and the e1 bound 16.8 % above the true e1;
* Sec. 3.1 / Eq. (12): optimal signal intensity 0.48 at f = 1.22 and 0.54 at f = 1.

The paper's full text could not be consulted when these tests were written; the
figures are as quoted by an independent open-source reproduction of MQZL (and
match the widely cited "about 142 km" / "about 140 km").  The code reproduces
142.01 km, 140.62 km, 3.51 %, 16.78 %, 0.479 and 0.545.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest

from hybridkex.errors import InvalidParameter
from hybridkex.qkd import analytic, decoy
from hybridkex.qkd.analytic import MODELS, Model
from hybridkex.qkd.parameters import LinkParameters

GYS = LinkParameters()
DISTANCES = [float(d) for d in range(0, 205, 5)]

# MQZL Figure 2.
PUBLISHED_INFINITE_DECOY_KM = 142.05
PUBLISHED_VACUUM_WEAK_KM = 140.55


def test_sifting_factor() -> None:
    assert analytic.sifting_factor(GYS) == 0.5
    assert analytic.sifting_factor(replace(GYS, p_z=0.9)) == pytest.approx(0.82)


def test_channel_model_matches_photon_number_sum() -> None:
    """MQZL Eqs. (10), (11) are Poisson sums of Eqs. (7), (9), bar their Y0 eta double count."""
    p = GYS.at_distance(30.0)
    eta = p.eta
    gain = errors = 0.0
    for n in range(60):
        weight = math.exp(-p.mu) * p.mu**n / math.factorial(n)
        eta_n = 1.0 - (1.0 - eta) ** n
        gain += weight * (p.y0 + eta_n)  # Eq. (10) sums Y_n = Y0 + eta_n
        errors += weight * (0.5 * p.y0 + p.e_detector * eta_n)
    assert analytic.expected_gain(p, p.mu) == pytest.approx(gain, rel=1e-12)
    assert analytic.expected_qber(p, p.mu) == pytest.approx(errors / gain, rel=1e-12)
    assert analytic.expected_gain(p, 0.0) == p.y0
    assert analytic.expected_qber(p, 0.0) == 0.5


def test_single_photon_values() -> None:
    p = GYS.at_distance(0.0)
    assert analytic.single_photon_yield(p) == pytest.approx(p.y0 + p.eta - p.y0 * p.eta)
    noiseless = replace(p, y0=0.0)
    assert analytic.single_photon_yield(noiseless) == pytest.approx(noiseless.eta)
    assert analytic.single_photon_error(noiseless) == pytest.approx(noiseless.e_detector)


def test_infinite_decoy_max_distance_matches_mqzl() -> None:
    got = analytic.max_distance_km(GYS, "infinite-decoy", tolerance_km=0.01)
    assert got == pytest.approx(PUBLISHED_INFINITE_DECOY_KM, abs=1.0)


def test_vacuum_weak_max_distance_matches_mqzl() -> None:
    got = analytic.max_distance_km(GYS, "vacuum-weak", tolerance_km=0.01)
    assert got == pytest.approx(PUBLISHED_VACUUM_WEAK_KM, abs=1.0)
    # Two decoys cost a little reach against infinitely many, as MQZL show.
    assert got < analytic.max_distance_km(GYS, "infinite-decoy", tolerance_km=0.01)


def test_vacuum_weak_deviation_at_40km_matches_mqzl_figure_1() -> None:
    p = replace(GYS, nu=0.25 * GYS.mu).at_distance(40.0)
    q_mu = analytic.expected_gain(p, p.mu)
    q_nu = analytic.expected_gain(p, p.nu)
    y1_l = decoy.y1_lower(q_mu, q_nu, p.y0, p.mu, p.nu)
    e1_u = decoy.e1_upper(analytic.expected_qber(p, p.nu), q_nu, p.y0, y1_l, p.nu)
    y1 = analytic.single_photon_yield(p)
    e1 = analytic.single_photon_error(p)
    # MQZL quote one decimal: 3.5 % and 16.8 %.
    assert 100.0 * (y1 - y1_l) / y1 == pytest.approx(3.5, abs=0.05)
    assert 100.0 * (e1_u - e1) / e1 == pytest.approx(16.8, abs=0.05)


@pytest.mark.parametrize(("f_ec", "published"), [(1.22, 0.48), (1.0, 0.54)])
def test_optimal_signal_intensity_matches_mqzl(f_ec: float, published: float) -> None:
    p = replace(GYS, f_ec=f_ec).at_distance(50.0)
    # MQZL's Eq. (12) is a small-eta approximation quoted to two decimals.
    assert analytic.best_mu(p, "infinite-decoy") == pytest.approx(published, abs=0.01)


@pytest.mark.parametrize("model", MODELS)
def test_rate_decreases_with_distance(model: Model) -> None:
    rates = [analytic.key_rate(GYS.at_distance(d), model, optimal_mu=True) for d in DISTANCES]
    assert all(r >= 0.0 for r in rates)
    for nearer, farther in itertools.pairwise(rates):
        assert farther <= nearer
        if farther > 0.0:
            assert farther < nearer


@pytest.mark.parametrize("model", ["infinite-decoy", "vacuum-weak", "single-photon"])
def test_rate_positive_then_zero(model: Model) -> None:
    reach = analytic.max_distance_km(GYS, model)
    assert analytic.key_rate(GYS.at_distance(reach - 1.0), model) > 0.0
    assert analytic.key_rate(GYS.at_distance(reach + 1.0), model) == 0.0


def test_no_decoy_far_below_decoy() -> None:
    # With the decoy-optimal mu = 0.48, GLLP without decoys proves nothing at all:
    # multi-photon pulses outnumber clicks (eta_Bob = 4.5 %).
    assert analytic.max_distance_km(GYS, "no-decoy") == 0.0
    # Even with mu optimised per distance (mu = O(eta)) it reaches a fraction.
    no_decoy = analytic.max_distance_km(GYS, "no-decoy", optimal_mu=True, tolerance_km=0.5)
    decoyed = analytic.max_distance_km(GYS, "vacuum-weak")
    assert 10.0 < no_decoy < 0.5 * decoyed


def test_no_decoy_optimal_mu_scales_with_eta() -> None:
    near = analytic.best_mu(GYS.at_distance(0.0), "no-decoy")
    far = analytic.best_mu(GYS.at_distance(30.0), "no-decoy")
    assert far < near < 0.1


def test_model_ordering_at_every_distance() -> None:
    for distance in DISTANCES:
        p = GYS.at_distance(distance)
        single = analytic.key_rate(p, "single-photon")
        infinite = analytic.key_rate(p, "infinite-decoy")
        weak = analytic.key_rate(p, "vacuum-weak")
        assert single >= infinite >= weak >= 0.0, distance


def test_single_photon_source_outreaches_decoys() -> None:
    assert analytic.max_distance_km(GYS, "single-photon") > analytic.max_distance_km(
        GYS, "infinite-decoy"
    ) + 10.0


@pytest.mark.parametrize("model", MODELS)
def test_rates_below_plob(model: Model) -> None:
    for distance in DISTANCES:
        p = GYS.at_distance(distance)
        rate = analytic.key_rate(p, model, optimal_mu=True)
        assert rate < analytic.plob_bound(p)
        assert rate < analytic.plob_bound(p, include_receiver=True)


def test_plob_values() -> None:
    assert analytic.plob_bound(GYS.at_distance(0.0)) == math.inf
    p = GYS.at_distance(50.0)
    t = 10.0 ** (-0.21 * 50.0 / 10.0)
    assert analytic.plob_bound(p) == pytest.approx(-math.log2(1.0 - t))
    assert analytic.plob_bound(p, include_receiver=True) < analytic.plob_bound(p)
    # Far out the bound is the linear 1.44 t of the repeaterless limit.
    far = GYS.at_distance(200.0)
    assert analytic.plob_bound(far) == pytest.approx(
        far.channel_transmittance / math.log(2), rel=1e-4
    )


def test_key_rate_value_at_zero_km() -> None:
    # Hand evaluation of the GLLP formula at L = 0 (eta = 0.045), infinite decoys.
    p = GYS.at_distance(0.0)
    q_mu = p.y0 + 1.0 - math.exp(-0.045 * 0.48)
    e_mu = (0.5 * p.y0 + 0.033 * (1.0 - math.exp(-0.045 * 0.48))) / q_mu
    y1 = p.y0 + 0.045 - p.y0 * 0.045
    e1 = (0.5 * p.y0 + 0.033 * 0.045) / y1

    def h(x: float) -> float:
        return -x * math.log2(x) - (1 - x) * math.log2(1 - x)

    expected = 0.5 * (-q_mu * 1.22 * h(e_mu) + y1 * 0.48 * math.exp(-0.48) * (1 - h(e1)))
    assert analytic.key_rate(p, "infinite-decoy") == pytest.approx(expected, rel=1e-12)


def test_optimal_mu_never_worse() -> None:
    for distance in (0.0, 50.0, 100.0):
        p = GYS.at_distance(distance)
        for model in ("infinite-decoy", "vacuum-weak", "no-decoy"):
            assert analytic.key_rate(p, model, optimal_mu=True) >= analytic.key_rate(p, model)


def test_sweep() -> None:
    points = analytic.sweep(GYS, 0.0, 150.0, 10.0, "vacuum-weak")
    assert [pt.distance_km for pt in points] == [float(d) for d in range(0, 160, 10)]
    for pt in points:
        at = GYS.at_distance(pt.distance_km)
        assert pt.rate == analytic.key_rate(at, "vacuum-weak")
        assert pt.plob == analytic.plob_bound(at)
    assert points[-1].rate == 0.0
    assert len(analytic.sweep(GYS, 5.0, 5.0, 1.0)) == 1


def test_invalid_inputs() -> None:
    with pytest.raises(InvalidParameter):
        analytic.key_rate(GYS, "two-decoy")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter):
        analytic.sweep(GYS, 0.0, 10.0, 0.0)
    with pytest.raises(InvalidParameter):
        analytic.sweep(GYS, 10.0, 0.0, 1.0)
    with pytest.raises(InvalidParameter):
        analytic.max_distance_km(GYS, tolerance_km=0.0)
    with pytest.raises(InvalidParameter):
        analytic.key_rate(replace(GYS, vacuum=0.01), "vacuum-weak")
    with pytest.raises(InvalidParameter):
        analytic.expected_gain(GYS, -0.1)
