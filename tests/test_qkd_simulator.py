"""The decoy-state BB84 simulator: statistics against the physics, Eve, blocks, memory.

Expected values are computed here from the formulas of Ma, Qi, Zhao, Lo, PRA 72,
012326 (2005) (``Q_k = Y0 + 1 - e^{-eta k}``, ``E_k Q_k = Y0/2 + e_det (1 - e^{-eta k})``)
and from a direct per-photon simulation written independently below.  Statistical
checks allow 4.5 binomial standard deviations; seeds are fixed, so the suite is
deterministic.
"""

from __future__ import annotations

import math
import tracemalloc
from dataclasses import replace

import numpy as np
import pytest
from numpy.typing import NDArray

from hybridkex.errors import InvalidParameter
from hybridkex.qkd.parameters import Eavesdropper, LinkParameters
from hybridkex.qkd.simulator import (
    CHUNK_PULSES,
    DECOY,
    SIGNAL,
    VACUUM,
    SimulatedBlock,
    SimulationStats,
    pns_matching_fraction,
    simulate,
)

SIGMAS = 4.5
GYS = LinkParameters()


def run(params: LinkParameters, pulses: int, seed: int = 1,
        block_size: int = 1 << 22) -> SimulationStats:
    return SimulationStats.from_blocks(simulate(params, pulses, seed, block_size))


def ma_gain(p: LinkParameters, intensity: float) -> float:
    return p.y0 + 1.0 - math.exp(-p.eta * intensity)


def ma_error_gain(p: LinkParameters, intensity: float) -> float:
    return p.y0 / 2 + p.e_detector * (1.0 - math.exp(-p.eta * intensity))


def assert_binomial(successes: int, trials: int, probability: float, sigmas: float = SIGMAS,
                    what: str = "") -> None:
    """``successes`` out of ``trials`` is within ``sigmas`` std of ``probability``."""
    assert trials > 0
    expected = trials * probability
    std = math.sqrt(trials * probability * (1.0 - probability))
    assert abs(successes - expected) <= sigmas * std, (
        f"{what}: {successes} / {trials} = {successes / trials:.6g}, expected "
        f"{probability:.6g} (z = {(successes - expected) / std:.2f})")


def assert_same_rate(k1: int, n1: int, k2: int, n2: int, what: str,
                     sigmas: float = 5.0) -> None:
    """Two binomial samples agree (two-sample z-test with pooled variance)."""
    pooled = (k1 + k2) / (n1 + n2)
    std = math.sqrt(max(pooled * (1 - pooled), 1e-300) * (1 / n1 + 1 / n2))
    z = (k1 / n1 - k2 / n2) / std
    assert abs(z) <= sigmas, f"{what}: {k1}/{n1} vs {k2}/{n2} (z = {z:.2f})"


# ------------------------------------------------------------------ honest link vs. Ma et al.


@pytest.mark.parametrize("distance", [1.0, 3.0, 5.0])
def test_qber_is_misalignment_at_short_distance(distance: float) -> None:
    p = GYS.at_distance(distance)
    stats = run(p, 30_000_000, seed=11)
    for k, intensity in ((SIGNAL, p.mu), (DECOY, p.nu)):
        expected = ma_error_gain(p, intensity) / ma_gain(p, intensity)
        assert_binomial(stats.sifted_errors(k), stats.sifted(k), expected, what=f"E_{k}")
    assert abs(stats.qber(SIGNAL) - p.e_detector) < 2e-3


@pytest.mark.parametrize("distance", [0.0, 25.0, 50.0, 100.0])
def test_gains_match_formula(distance: float) -> None:
    p = GYS.at_distance(distance)
    stats = run(p, 100_000_000, seed=int(distance) + 3)
    for k, intensity in ((SIGNAL, p.mu), (DECOY, p.nu), (VACUUM, p.vacuum)):
        assert_binomial(int(stats.detected[k].sum()), int(stats.sent[k].sum()),
                        ma_gain(p, intensity), what=f"Q_{k} at {distance} km")
    # the error gain of the signal, the bulk of the key
    assert_binomial(stats.sifted_errors(SIGNAL), stats.sifted(SIGNAL),
                    ma_error_gain(p, p.mu) / ma_gain(p, p.mu), what="E_mu")
    assert stats.pulses == 100_000_000
    assert_binomial(int(stats.sent[SIGNAL].sum()), stats.pulses, p.p_mu, what="p_mu")
    assert_binomial(int(stats.sent[DECOY].sum()), stats.pulses, p.p_nu, what="p_nu")


def test_vacuum_yield_is_y0() -> None:
    p = replace(GYS, p_mu=0.1, p_nu=0.1)  # 80 % vacuum pulses
    stats = run(p, 200_000_000, seed=5)
    assert_binomial(int(stats.detected[VACUUM].sum()), int(stats.sent[VACUUM].sum()), p.y0,
                    what="Y0")
    # dark counts carry no information: half of them are errors
    noisy = replace(p, y0=1e-3)
    stats = run(noisy, 10_000_000, seed=6)
    assert_binomial(int(stats.detected[VACUUM].sum()), int(stats.sent[VACUUM].sum()), 1e-3,
                    what="Y0 noisy")
    assert_binomial(int(stats.errors[VACUUM].sum()), int(stats.detected[VACUUM].sum()), 0.5,
                    what="e0")


def test_exact_closed_forms_agree_with_ma_to_second_order() -> None:
    """The simulator's exact per-pulse probabilities (module docstring) vs Ma et al."""
    for distance in (0.0, 25.0, 50.0, 100.0, 150.0):
        p = GYS.at_distance(distance)
        s = math.sqrt(1.0 - p.y0)
        for intensity in (p.mu, p.nu):
            x = p.eta * intensity
            gain = p.y0 + (1.0 - p.y0) * (1.0 - math.exp(-x))
            error_gain = ((1 - s * math.exp(-x * p.e_detector))
                          * (1 + s * math.exp(-x * (1 - p.e_detector))) / 2)
            assert abs(gain / ma_gain(p, intensity) - 1) < 2 * p.y0
            assert abs(error_gain / ma_error_gain(p, intensity) - 1) < 3e-5
    # with a bright, lossless link the third-order terms become visible, as documented
    bright = replace(GYS, distance_km=0.0, eta_bob=1.0, mu=0.9)
    x = bright.eta * bright.mu
    s = math.sqrt(1.0 - bright.y0)
    exact = ((1 - s * math.exp(-x * bright.e_detector))
             * (1 + s * math.exp(-x * (1 - bright.e_detector))) / 2)
    assert 1e-3 < abs(exact / ma_error_gain(bright, bright.mu) - 1) < 0.1
    stats = run(bright, 2_000_000, seed=8)
    assert_binomial(stats.sifted_errors(SIGNAL), stats.sifted(SIGNAL),
                    exact / (bright.y0 + (1 - bright.y0) * (1 - math.exp(-x))), what="bright")


def test_biased_basis_sifting_ratio() -> None:
    p = replace(GYS, p_z=0.9, distance_km=10.0)
    stats = run(p, 20_000_000, seed=9)
    assert_binomial(stats.sifted(), int(stats.detected.sum()), 0.9**2 + 0.1**2,
                    what="sifting")
    assert_binomial(int(stats.sent[:, 0].sum()), stats.pulses, 0.9, what="Alice Z")
    bob_z = int(stats.detected[:, :, 0].sum())
    assert_binomial(bob_z, int(stats.detected.sum()), 0.9, what="Bob Z")
    # QBER is the same in both bases
    assert_same_rate(stats.sifted_errors(basis=0), stats.sifted(basis=0),
                     stats.sifted_errors(basis=1), stats.sifted(basis=1), "QBER Z vs X")


# ------------------------------------------------------------------ eavesdroppers


@pytest.mark.parametrize("fraction", [0.25, 0.5, 1.0])
def test_intercept_resend_raises_qber(fraction: float) -> None:
    p = replace(GYS, distance_km=25.0, eve=Eavesdropper("intercept-resend", fraction))
    stats = run(p, 50_000_000, seed=21)
    e_d, y0, mu = p.e_detector, p.y0, p.mu
    # Eve at Alice's side resends one photon (if she saw any) through the whole fibre
    attacked_gain = (1 - math.exp(-mu)) * p.eta + y0
    attacked_errors = (1 - math.exp(-mu)) * p.eta * (e_d / 2 + 0.25) + y0 / 2
    gain = (1 - fraction) * ma_gain(p, mu) + fraction * attacked_gain
    error_gain = (1 - fraction) * ma_error_gain(p, mu) + fraction * attacked_errors
    assert_binomial(int(stats.detected[SIGNAL].sum()), int(stats.sent[SIGNAL].sum()), gain,
                    what="Q_mu under intercept-resend")
    assert_binomial(stats.sifted_errors(SIGNAL), stats.sifted(SIGNAL), error_gain / gain,
                    what="E_mu under intercept-resend")
    # the textbook e_d + f/4, lowered by f e_d / 2 (a resent photon measured in the right
    # basis only suffers misalignment half the time) and by the attacked pulses' smaller
    # gain (one photon through the fibre instead of a weak coherent pulse)
    assert -0.025 < stats.qber(SIGNAL) - (e_d + fraction / 4) < 0.0
    # Eve knows the bit where she measured in Alice's basis and had a photon
    known = int(stats.eve_known[SIGNAL].sum())
    expected_known = fraction * (1 - math.exp(-mu)) * p.eta / 2 / gain
    assert_binomial(known, int(stats.detected[SIGNAL].sum()), expected_known, what="known")


def y1_lower(q_mu: float, q_nu: float, y0: float, mu: float, nu: float) -> float:
    """Vacuum + weak decoy lower bound on the single-photon yield (Ma et al. eq. 34)."""
    return mu / (mu * nu - nu**2) * (q_nu * math.exp(nu) - q_mu * math.exp(mu) * nu**2 / mu**2
                                    - (mu**2 - nu**2) / mu**2 * y0)


def pns_gain(p: LinkParameters, intensity: float, fraction: float) -> tuple[float, float]:
    """Bob's gain under PNS, and its part from multi-photon pulses (known to Eve).

    From the photon-number sums, with z = 1 - eta_bob:
    sum_{n>=2} P(n) z^(n-1) = e^{-k} (e^{k z} - 1 - k z) / z.
    """
    z = 1.0 - p.eta_bob
    p_multi = 1 - math.exp(-intensity) * (1 + intensity)
    lost = math.exp(-intensity) * (math.expm1(intensity * z) - intensity * z) / z
    multi = p_multi - lost  # P(n >= 2 and at least one of the n - 1 photons detected)
    single = intensity * math.exp(-intensity) * (1 - fraction) * p.eta
    gain = p.y0 + (1 - p.y0) * (single + multi)
    return gain, p_multi * p.y0 + (1 - p.y0) * multi


def test_pns_lowers_decoy_estimate_not_gain() -> None:
    honest = GYS.at_distance(25.0)
    fraction = pns_matching_fraction(honest)
    assert 0.2 < fraction < 0.8
    attacked = replace(honest, eve=Eavesdropper("pns", fraction))
    pulses = 40_000_000
    h, a = run(honest, pulses, seed=31), run(attacked, pulses, seed=32)
    mu, nu = honest.mu, honest.nu
    for k, intensity in ((SIGNAL, mu), (DECOY, nu), (VACUUM, honest.vacuum)):
        gain, known = pns_gain(honest, intensity, fraction)
        assert_binomial(int(a.detected[k].sum()), int(a.sent[k].sum()), gain,
                        what=f"PNS Q_{k}")
        if intensity > 0:
            # Eve knows the bit of every detected multi-photon pulse
            assert_binomial(int(a.eve_known[k].sum()), int(a.detected[k].sum()),
                            known / gain, what=f"PNS known {k}")
    # Bob's signal gain and QBER look normal ...
    assert_binomial(int(a.detected[SIGNAL].sum()), int(a.sent[SIGNAL].sum()),
                    ma_gain(honest, mu), what="Q_mu unchanged")
    assert abs(a.qber(SIGNAL) - h.qber(SIGNAL)) < 0.004
    # ... but the decoy pulses give it away: Y1^L drops far below the honest value
    y1_honest = y1_lower(h.gain(SIGNAL), h.gain(DECOY), h.gain(VACUUM), mu, nu)
    y1_attack = y1_lower(a.gain(SIGNAL), a.gain(DECOY), a.gain(VACUUM), mu, nu)
    assert y1_honest > 0.85 * honest.eta
    assert y1_attack < 0.6 * y1_honest
    assert a.gain(SIGNAL) / a.gain(DECOY) > 1.5 * h.gain(SIGNAL) / h.gain(DECOY)
    assert int(h.eve_known.sum()) == 0


def test_pns_fraction_is_literal_and_matching_fraction_clips() -> None:
    p = GYS.at_distance(25.0)
    none = run(replace(p, eve=Eavesdropper("pns", 0.0)), 20_000_000, seed=41)
    full = run(replace(p, eve=Eavesdropper("pns", 1.0)), 20_000_000, seed=42)
    assert none.gain(SIGNAL) > 1.2 * ma_gain(p, p.mu)
    assert full.gain(SIGNAL) < 0.9 * ma_gain(p, p.mu)
    for stats, fraction in ((none, 0.0), (full, 1.0)):
        assert_binomial(int(stats.detected[SIGNAL].sum()), int(stats.sent[SIGNAL].sum()),
                        pns_gain(p, p.mu, fraction)[0], what=f"PNS f={fraction}")
    assert pns_matching_fraction(p.at_distance(60.0)) == 1.0
    assert pns_matching_fraction(p.at_distance(0.0)) == 0.0


# ------------------------------------------------------------------ direct per-photon check


def direct_simulation(p: LinkParameters, pulses: int, seed: int) -> dict[str, NDArray[np.int64]]:
    """Pulse by pulse, photon by photon: an independent implementation of the model."""
    rng = np.random.default_rng(seed)
    k = rng.choice(3, size=pulses, p=[p.p_mu, p.p_nu, p.p_vacuum])
    a = (rng.random(pulses) >= p.p_z).astype(np.int64)
    b = (rng.random(pulses) >= p.p_z).astype(np.int64)
    x = rng.integers(0, 2, pulses)
    n = rng.poisson(np.array([p.mu, p.nu, p.vacuum])[k])
    basis, bit, photons = a.copy(), x.copy(), n.copy()
    transmission = np.full(pulses, p.eta)
    knows = np.zeros(pulses, dtype=bool)
    if p.eve is not None and p.eve.kind == "intercept-resend":
        hit = rng.random(pulses) < p.eve.fraction
        e = rng.integers(0, 2, pulses)
        # Eve's ideal detectors: in Alice's basis every photon shows x, else each is random
        ones = np.where(e == a, n * x, rng.binomial(n, 0.5))
        double = (ones > 0) & (ones < n)
        eve_bit = np.where(double, rng.integers(0, 2, pulses), (ones > 0).astype(np.int64))
        got = hit & (n > 0)
        basis = np.where(hit, e, basis)
        bit = np.where(got, eve_bit, bit)
        photons = np.where(hit, got.astype(np.int64), photons)
        knows = got & (e == a)
    elif p.eve is not None:
        blocked = (n == 1) & (rng.random(pulses) < p.eve.fraction)
        multi = n >= 2
        photons = np.where(blocked, 0, np.where(multi, n - 1, n))
        transmission = np.where(multi, p.eta_bob, p.eta)
        knows = multi
    arrived = rng.binomial(photons, transmission)
    to_bit = rng.binomial(arrived, np.where(b == basis, 1 - p.e_detector, 0.5))
    to_other = arrived - to_bit
    dark = 1 - math.sqrt(1 - p.y0)
    click_bit = (to_bit > 0) | (rng.random(pulses) < dark)
    click_other = (to_other > 0) | (rng.random(pulses) < dark)
    detected = click_bit | click_other
    bob = np.where(click_bit & ~click_other, bit,
                   np.where(click_other & ~click_bit, 1 - bit, rng.integers(0, 2, pulses)))
    cell = k * 4 + a * 2 + b

    def count(mask: NDArray[np.bool_]) -> NDArray[np.int64]:
        return np.bincount(cell[mask], minlength=12).reshape(3, 2, 2).astype(np.int64)

    return {"sent": count(np.ones(pulses, dtype=bool)), "detected": count(detected),
            "errors": count(detected & (bob != x)), "known": count(detected & knows)}


BRIGHT = LinkParameters(distance_km=0.0, eta_bob=0.6, y0=0.02, e_detector=0.08, mu=0.9,
                        nu=0.3, vacuum=0.05, p_mu=0.5, p_nu=0.3, p_z=0.7)


@pytest.mark.parametrize("eve", [None, Eavesdropper("intercept-resend", 0.5),
                                 Eavesdropper("pns", 0.4)], ids=["none", "ir", "pns"])
def test_matches_direct_per_photon_simulation(eve: Eavesdropper | None) -> None:
    """A bright, noisy link where multi-photon and double-click effects are large."""
    p = replace(BRIGHT, eve=eve)
    direct = direct_simulation(p, 2_000_000, seed=51)
    stats = run(p, 10_000_000, seed=52, block_size=1_000_000)
    basis_p = (p.p_z, 1 - p.p_z)
    for k in range(3):
        for a_ in range(2):
            for b_ in range(2):
                where = f"k={k} a={a_} b={b_}"
                # stats has sent[k, a]; Bob's basis is independent of everything before
                sent = round(float(stats.sent[k, a_]) * basis_p[b_])
                assert_same_rate(int(stats.detected[k, a_, b_]), sent,
                                 int(direct["detected"][k, a_, b_]),
                                 int(direct["sent"][k, a_, b_]), f"gain {where}")
                assert_same_rate(int(stats.errors[k, a_, b_]), int(stats.detected[k, a_, b_]),
                                 int(direct["errors"][k, a_, b_]),
                                 int(direct["detected"][k, a_, b_]), f"errors {where}")
                if eve is not None:
                    assert_same_rate(int(stats.eve_known[k, a_, b_]),
                                     int(stats.detected[k, a_, b_]),
                                     int(direct["known"][k, a_, b_]),
                                     int(direct["detected"][k, a_, b_]), f"known {where}")


# ------------------------------------------------------------------ records, seeds, blocks


def collect(params: LinkParameters, pulses: int, seed: int, block_size: int
            ) -> tuple[list[SimulatedBlock], dict[str, NDArray[np.generic]]]:
    blocks = list(simulate(params, pulses, seed, block_size))
    joined: dict[str, NDArray[np.generic]] = {
        "index": np.concatenate([b.alice.index for b in blocks]),
        "intensity": np.concatenate([b.alice.intensity for b in blocks]),
        "alice_basis": np.concatenate([b.alice.basis for b in blocks]),
        "alice_bit": np.concatenate([b.alice.bit for b in blocks]),
        "bob_basis": np.concatenate([b.bob.basis for b in blocks]),
        "bob_bit": np.concatenate([b.bob.bit for b in blocks]),
        "sent": np.sum([b.alice.sent for b in blocks], axis=0),
    }
    if params.eve is not None:
        joined["eve_knows"] = np.concatenate([b.eve_knows for b in blocks
                                              if b.eve_knows is not None])
    return blocks, joined


def test_reproducible_and_seed_dependent() -> None:
    p = GYS.at_distance(5.0)
    _, first = collect(p, 1_000_000, 7, 1 << 18)
    _, again = collect(p, 1_000_000, 7, 1 << 18)
    _, other = collect(p, 1_000_000, 8, 1 << 18)
    for name in first:
        assert np.array_equal(first[name], again[name]), name
    assert not np.array_equal(first["index"], other["index"])
    assert first["index"].size > 10_000


@pytest.mark.parametrize("eve", [None, Eavesdropper("intercept-resend", 0.3),
                                 Eavesdropper("pns", 0.5)], ids=["none", "ir", "pns"])
def test_block_size_does_not_change_results(eve: Eavesdropper | None) -> None:
    p = replace(GYS, distance_km=0.0, eve=eve)
    pulses = 3 * CHUNK_PULSES + 12_345
    _, reference = collect(p, pulses, 3, 1 << 22)
    assert reference["index"].size > 1000
    for block_size in (997, CHUNK_PULSES - 1, CHUNK_PULSES, 100_000, 1 << 20):
        blocks, joined = collect(p, pulses, 3, block_size)
        for name in reference:  # detections and the run's totals: identical
            assert np.array_equal(joined[name], reference[name]), (block_size, name)
        start = 0
        for block in blocks:
            size = min(block_size, pulses - start)
            assert block.alice.start == block.bob.start == start
            assert block.alice.pulses == block.bob.pulses == size
            assert int(block.alice.sent.sum()) == size
            index = block.alice.index
            assert index.size == 0 or (index[0] >= start and index[-1] < start + size)
            start += size
        assert start == pulses
    # one pulse per block
    blocks, single = collect(p, 5_000, 3, 1)
    _, whole = collect(p, 5_000, 3, 5_000)
    assert len(blocks) == 5_000
    for name in whole:
        assert np.array_equal(single[name], whole[name]), name
    # a shorter run is a prefix of a longer one
    prefix = np.asarray(reference["index"], dtype=np.int64) < 5_000
    for name in whole:
        if name != "sent":
            assert np.array_equal(whole[name], reference[name][prefix]), name


def test_degenerate_links() -> None:
    always = run(replace(GYS, y0=1.0), 100_000)  # every detector always fires
    assert int(always.detected.sum()) == 100_000
    assert_binomial(int(always.errors.sum()), 100_000, 0.5, what="all double clicks")
    dead = run(replace(GYS, y0=0.0, eta_bob=0.0), 100_000)
    assert int(dead.detected.sum()) == 0 and int(dead.sent.sum()) == 100_000
    perfect = run(replace(GYS, y0=0.0, e_detector=0.0, distance_km=0.0), 1_000_000)
    assert int(perfect.detected.sum()) > 10_000 and perfect.sifted_errors() == 0
    z_only = run(replace(GYS, p_z=1.0), 1_000_000)
    assert z_only.sifting_ratio() == 1.0 and int(z_only.sent[:, 1].sum()) == 0
    signal_only = run(replace(GYS, p_mu=1.0, p_nu=0.0), 100_000)
    assert int(signal_only.sent[SIGNAL].sum()) == 100_000


def test_records_are_separate_typed_and_read_only() -> None:
    p = replace(GYS, distance_km=0.0, eve=Eavesdropper("pns", 0.5))
    block = next(simulate(p, 200_000, 1, 100_000))
    alice, bob = block.alice, block.bob
    assert alice.index.dtype == np.int64 and bob.index.dtype == np.int64
    assert np.array_equal(alice.index, bob.index)
    assert not np.shares_memory(alice.index, bob.index)
    assert np.all(np.diff(alice.index) > 0)
    for array in (alice.intensity, alice.basis, alice.bit, bob.basis, bob.bit):
        assert array.dtype == np.uint8 and array.shape == alice.index.shape
        assert set(np.unique(array).tolist()) <= {0, 1, 2}
    assert set(np.unique(alice.bit).tolist()) == {0, 1}
    assert alice.sent.shape == (3, 2) and alice.sent.dtype == np.int64
    assert block.eve_knows is not None and block.eve_knows.dtype == np.bool_
    with pytest.raises(ValueError, match="read-only"):
        alice.bit[0] = 1
    with pytest.raises(ValueError, match="read-only"):
        bob.index[0] = 0
    honest = next(simulate(GYS, 1000, 1))
    assert honest.eve_knows is None
    assert list(simulate(GYS, 0, 1)) == []


def test_memory_stays_flat() -> None:
    p = GYS.at_distance(0.0)  # the highest detection rate
    peaks = []
    for pulses in (5_000_000, 50_000_000):
        stats = SimulationStats()
        tracemalloc.start()
        try:
            for block in simulate(p, pulses, 1, 1 << 20):
                stats.add(block)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert stats.pulses == pulses
    assert peaks[1] < 16 * 2**20, peaks
    assert peaks[1] < 1.5 * peaks[0] + 2**20, peaks


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(("pulses", "seed", "block_size"), [
    (-1, 1, 10), (10, -1, 10), (10, 1, 0), (1.5, 1, 10), (10, 1.0, 10), (10, True, 10),
    ("10", 1, 10), (10, 1, None),
])
def test_invalid_arguments_raise_eagerly(pulses: object, seed: object,
                                         block_size: object) -> None:
    with pytest.raises(InvalidParameter):
        simulate(GYS, pulses, seed, block_size)  # type: ignore[arg-type]


def test_invalid_parameters_raise() -> None:
    with pytest.raises(InvalidParameter):
        simulate(replace(GYS, distance_km=math.nan), 10, 1)
    with pytest.raises(InvalidParameter):
        simulate(replace(GYS, alpha_db_per_km=-0.2), 10, 1)
    with pytest.raises(InvalidParameter):
        simulate("GYS", 10, 1)  # type: ignore[arg-type]
    for bad in ({"p_z": 1.5}, {"y0": -1e-6}, {"mu": 0.01}, {"p_mu": 0.9, "p_nu": 0.2},
                {"distance_km": -1.0}, {"e_detector": 2.0}):
        with pytest.raises(InvalidParameter):
            replace(GYS, **bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter):
        Eavesdropper("beam-splitter")
    with pytest.raises(InvalidParameter):
        Eavesdropper("pns", fraction=1.5)
    with pytest.raises(InvalidParameter):
        pns_matching_fraction(replace(GYS, distance_km=math.inf))
