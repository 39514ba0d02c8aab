"""The model as run, and the picture of an eavesdropper.

``as-run`` is the asymptotic rate of the protocol the simulated link runs (Z-keyed with
p_Z, X for the phase-error estimate, Cascade's leakage); the full protocol in
asymptotic mode must agree with it within statistical error, and it must sit below the
published GLLP curves, which credit both bases.  ``eve-sweep`` must report the QBER
the protocol measured, rising with Eve's fraction as the model predicts.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest

from hybridkex.cli import main
from hybridkex.qkd import analytic
from hybridkex.qkd.distillation import DistillationConfig
from hybridkex.qkd.link import QKDLink, SiteIdentity
from hybridkex.qkd.parameters import LinkParameters, finite_key_parameters
from hybridkex.qkd.simulator import X_BASIS, expected_rates

IDENTITY = SiteIdentity.generate("Ed25519")


def _cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    assert main(["qkd", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_simulate_asymptotic_agrees_with_the_as_run_model() -> None:
    """Eight rounds of 1.5e8 pulses at 25 km (fixed seeds, so the outcome is fixed):
    the mean secret bits per pulse is within 4 standard errors of the model fed with
    the Cascade efficiency the rounds measured, and within 3 % of it."""
    params = finite_key_parameters(distance_km=25.0)
    link = QKDLink("A", "B", params, DistillationConfig(finite_key=False),
                   identity_a=IDENTITY, identity_b=IDENTITY)
    pulses = 150_000_000
    rates, efficiencies = [], []
    for seed in range(8):
        report = link.run_round(pulses, seed=100 + seed)
        assert not report.aborted, report.abort_reason
        rates.append(report.secret_bits / pulses)
        assert report.ec_efficiency is not None
        efficiencies.append(report.ec_efficiency)
    mean = statistics.fmean(rates)
    stderr = statistics.stdev(rates) / math.sqrt(len(rates))
    model = analytic.as_run_rate(params, f_ec=statistics.fmean(efficiencies))
    assert abs(mean - model) < 4 * stderr, (mean, stderr, model)
    assert abs(mean - model) < 0.03 * model
    # the model's own f is what the rounds measure, to 1 %
    assert statistics.fmean(efficiencies) == pytest.approx(analytic.CASCADE_EFFICIENCY, rel=0.01)
    # and the published curve is not what the protocol delivers: it credits both bases
    assert analytic.key_rate(params, "vacuum-weak") > 1.4 * model


def test_as_run_keys_from_z_alone() -> None:
    """With p_Z = 1/2 the published rate has q = 1/2 where as-run keys from 1/4 of the
    clicks; as p_Z grows the two approach (both bases' sifting goes to p_Z^2)."""
    balanced, biased = LinkParameters(distance_km=25.0), LinkParameters(distance_km=25.0,
                                                                        p_z=0.9)
    assert analytic.as_run_rate(balanced) < 0.5 * analytic.key_rate(balanced, "vacuum-weak")
    ratio = analytic.as_run_rate(biased) / analytic.key_rate(biased, "vacuum-weak")
    assert 0.6 < ratio < 1.2
    counts = analytic.expected_protocol_counts(balanced)
    assert math.fsum(counts.z_key) == pytest.approx(
        0.95 * 0.25 * math.fsum(counts.detections))


def test_sweep_as_run_is_drawn_beside_the_published_curves(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "rate.png"
    sweep = _cli_json(capsys, "sweep", "--from-km", "0", "--to-km", "150", "--step-km", "25",
                      "--model", "as-run", "--pulses", "2e8", "--seed", "4",
                      "--plot", str(target))
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sweep["model"] == "as-run" and sweep["f_ec"] == analytic.CASCADE_EFFICIENCY
    assert set(sweep["published_max_distance_km"]) == {"vacuum-weak", "infinite-decoy"}
    assert abs(sweep["published_max_distance_km"]["vacuum-weak"] - 140.55) < 0.5
    assert sweep["max_distance_km"] > 100
    for point in sweep["points"]:
        published = point["published_rates"]
        assert point["analytic_rate"] <= published["infinite-decoy"]
        if point["distance_km"] <= 75:  # the simulated points agree with as-run
            difference = abs(point["simulated_rate"] - point["analytic_rate"])
            assert difference < 5 * point["simulated_stderr"] + 0.03 * point["analytic_rate"]
    assert sweep["points"][-1]["analytic_rate"] == 0.0


def test_sweep_plot_title_names_the_model_and_its_parameters() -> None:
    from hybridkex.cli.qkd_plot import sweep_title

    params = {"mu": 0.6, "nu": 0.1, "p_mu": 0.8, "p_nu": 0.1, "p_z": 0.7, "f_ec": 1.22,
              "e_detector": 0.033, "y0": 1.7e-6, "eta_bob": 0.045, "alpha_db_per_km": 0.21}
    title = sweep_title({"model": "no-decoy", "parameters": params, "simulation": None})
    assert "no-decoy" in title and "mu 0.6" in title and "p_Z 0.7" in title
    assert "SIMULATION" in sweep_title({"model": "as-run", "parameters": params, "f_ec": 1.06,
                                        "simulation": "SIMULATION (x)"})


EVE_KEYS = {"eve_fraction", "qber", "qber_theory", "aborted", "secret_bits"}


def test_eve_sweep_reports_the_measured_qber_rising_as_the_model_predicts(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "eve.png"
    result = _cli_json(capsys, "eve-sweep", "--eve", "intercept-resend", "--from", "0",
                       "--to", "1", "--step", "0.5", "--pulses", "1.5e8", "--seed", "9",
                       "--plot", str(target))
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    points = result["points"]
    assert [p["eve_fraction"] for p in points] == [0.0, 0.5, 1.0]
    assert all(p.keys() >= EVE_KEYS for p in points)
    assert "SIMULATION" in result["simulation"] and result["qber_basis"] == "X"
    qbers = [p["qber"] for p in points]
    assert qbers == sorted(qbers) and qbers[-1] > 0.2
    for p in points:
        assert abs(p["qber"] - p["qber_theory"]) < 4 * p["qber_stderr"], p
        assert isinstance(p["secret_bits"], int) and isinstance(p["aborted"], bool)
    e_det = result["parameters"]["e_detector"]
    # exactly 1/4 + e_det/2 at p = 1 (attacked clicks); e_det + p/4 is the textbook line
    assert points[-1]["qber_theory"] == pytest.approx(0.25 + e_det / 2, abs=0.002)
    assert points[1]["qber_theory"] == pytest.approx(e_det + 0.5 / 4, abs=0.02)
    assert [p["aborted"] for p in points[1:]] == [True, True]
    assert all(p["secret_bits"] == 0 for p in points[1:])


def test_eve_sweep_pns_leaves_the_qber_but_the_decoys_see_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    """PNS at any blocking fraction still splits every multi-photon pulse: the QBER stays
    at the link's own, while the decoy bounds leave no key."""
    result = _cli_json(capsys, "eve-sweep", "--eve", "pns", "--from", "0", "--to", "1",
                       "--step", "1", "--pulses", "4e8", "--seed", "2")
    honest = expected_rates(finite_key_parameters(distance_km=25.0)).qber[X_BASIS]
    for point in result["points"]:
        assert abs(point["qber"] - point["qber_theory"]) < 4 * point["qber_stderr"], point
        assert abs(point["qber_theory"] - honest) < 0.01
        assert point["secret_bits"] == 0 and point["aborted"]
