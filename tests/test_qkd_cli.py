"""``hybridkex qkd simulate`` and ``hybridkex qkd sweep``: the JSON contract and the physics
they must reproduce."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SIMULATE_KEYS = {
    "distance_km", "pulses", "detections", "sifted_bits", "qber", "y1_lower", "e1_upper",
    "ec_leaked_bits", "ec_efficiency", "pa_input_bits", "secret_bits", "auth_bits_consumed",
    "net_secret_bits", "aborted", "abort_reason", "elapsed_s",
}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hybridkex", "qkd", *args],
                          capture_output=True, text=True, timeout=600, check=False)


def _json(*args: str, status: int = 0) -> Any:
    result = _run(*args, "--json")
    assert result.returncode == status, result.stderr
    return json.loads(result.stdout)


ABORTED = 3  # the documented exit status of an aborted round
#: What a round that ends at the QBER check has not measured.
NOT_MEASURED_AT_QBER_ABORT = ("y1_lower", "e1_upper", "ec_leaked_bits", "ec_efficiency",
                              "ec_round_trips", "pa_input_bits", "pa_terms")


def test_simulate_at_25_km_gives_a_positive_net_key_with_f_reported() -> None:
    report = _json("simulate", "--distance-km", "25", "--pulses", "4e8", "--seed", "1")
    assert report.keys() >= SIMULATE_KEYS
    assert not report["aborted"]
    assert report["net_secret_bits"] > 0
    assert 1.0 < report["ec_efficiency"] < 1.2
    assert report["secret_bits"] < report["pa_input_bits"] < report["sifted_bits"]
    assert "SIMULATION" in report["simulation"]
    assert report["qber_basis"] == "Z-key" and 0.02 < report["qber"] < 0.05
    assert report["keys_deposited"] == 0 < report["key_units"]  # no key store here


def _intercept_resend_qber(f: float) -> float:
    """The matching-basis QBER the simulated link should show under intercept-resend on a
    fraction ``f`` of the pulses, from the model in docs/qkd.md (finite-key preset,
    25 km): Eve resends one photon for each non-empty pulse she attacks; it errs with
    1/4 + e_det/2 (her basis is wrong half of the time); dark counts err half of the
    time.  Approximately e_det + f/4."""
    e_det, y0, eta = 0.033, 1.7e-6, 10 ** (-0.21 * 25 / 10) * 0.045
    gain = errors = 0.0
    for k, p in ((0.4, 0.4), (0.2, 0.4), (0.0, 0.2)):
        honest, attacked = 1 - math.exp(-eta * k), eta * (1 - math.exp(-k))
        gain += p * (y0 + (1 - f) * honest + f * attacked)
        errors += p * (y0 / 2 + (1 - f) * e_det * honest + f * (0.25 + e_det / 2) * attacked)
    return errors / gain


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_intercept_resend_shows_the_measured_qber_and_exits_non_zero(fraction: float) -> None:
    report = _json("simulate", "--distance-km", "25", "--pulses", "3e8", "--eve",
                   "intercept-resend", "--eve-fraction", str(fraction), "--seed", "2",
                   status=ABORTED)
    assert report["aborted"] and "QBER" in report["abort_reason"]
    assert report["secret_bits"] == 0 and report["keys_deposited"] == 0
    # the QBER that decided the abort, named by its basis, and never 0
    assert report["qber_basis"] == "Z-sample" and report["qber"] == report["qber_z_sample"]
    sigma = math.sqrt(report["qber"] * (1 - report["qber"]) / report["z_sample_bits"])
    assert abs(report["qber"] - _intercept_resend_qber(fraction)) < 4 * sigma + 0.002
    assert abs(report["qber"] - (0.033 + fraction / 4)) < 4 * sigma + 0.02
    sigma_x = math.sqrt(report["qber_x"] * (1 - report["qber_x"]) / report["x_bits"])
    assert abs(report["qber_x"] - _intercept_resend_qber(fraction)) < 4 * sigma_x + 0.002
    assert f"{report['qber']:.4f}" in report["abort_reason"]
    assert report["qber_threshold"] == 0.11
    for key in NOT_MEASURED_AT_QBER_ABORT:
        assert report[key] is None, key


def test_an_aborted_round_in_text_says_not_measured_and_exits_non_zero() -> None:
    result = _run("simulate", "--distance-km", "25", "--pulses", "1e8", "--eve",
                  "intercept-resend", "--seed", "2")
    assert result.returncode == ABORTED, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "not measured" in lines["error"] and "not measured" in lines["single-photon"]
    assert "Z sample" in lines["QBER"] and "0.0000" not in lines["QBER"]
    assert "ABORTED: QBER" in result.stdout


def test_a_round_without_key_shows_the_bounds_that_ended_it() -> None:
    report = _json("simulate", "--distance-km", "60", "--pulses", "3e8", "--seed", "7",
                   status=ABORTED)
    assert "not positive" in report["abort_reason"] and "phi_Z^U" in report["abort_reason"]
    assert report["y1_lower"] is not None and report["e1_upper"] is not None
    assert report["pa_terms"]["ec_leaked_estimated"] and report["pa_terms"]["length"] < 0
    assert str(report["pa_terms"]["length"]) in report["abort_reason"]


def test_simulate_help_documents_the_exit_status_and_the_defaults() -> None:
    result = _run("simulate", "--help")
    text = " ".join(result.stdout.split())
    assert f"{ABORTED} when it aborted" in text and "exit status: 0" in text
    assert "--eve-fraction" in text and "default 1: every pulse" in text


def test_simulate_without_json_says_it_is_a_simulation() -> None:
    result = _run("simulate", "--distance-km", "10", "--pulses", "1e8", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert "SIMULATION" in result.stdout and "net secret bits" in result.stdout
    assert "pulses" in result.stderr  # the progress bar


@pytest.mark.parametrize(("model", "published_km"), [
    # Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005), Fig. 2, GYS parameters
    ("infinite-decoy", 142.05),
    ("vacuum-weak", 140.55),
])
def test_sweep_reproduces_the_published_maximum_distances(model: str,
                                                          published_km: float) -> None:
    sweep = _json("sweep", "--from-km", "0", "--to-km", "150", "--step-km", "10",
                  "--model", model)
    assert set(sweep) >= {"model", "parameters", "max_distance_km", "points"}
    assert abs(sweep["max_distance_km"] - published_km) < 0.5
    rates = [p["analytic_rate"] for p in sweep["points"]]
    assert rates == sorted(rates, reverse=True) and rates[-1] == 0.0
    assert all({"distance_km", "analytic_rate"} <= p.keys() for p in sweep["points"])


def test_sweep_simulated_rates_agree_with_the_analytic_curve() -> None:
    sweep = _json("sweep", "--from-km", "0", "--to-km", "100", "--step-km", "50",
                  "--model", "vacuum-weak", "--pulses", "4e8", "--seed", "5")
    for point in sweep["points"]:
        difference = abs(point["simulated_rate"] - point["analytic_rate"])
        assert difference < 5 * point["simulated_stderr"] + 0.05 * point["analytic_rate"], point


def test_sweep_refuses_a_simulated_rate_it_cannot_estimate() -> None:
    sweep = _json("sweep", "--from-km", "0", "--to-km", "10", "--step-km", "10",
                  "--model", "infinite-decoy", "--pulses", "1e6")
    assert all(p["simulated_rate"] is None for p in sweep["points"])
    assert "single-photon yield" in sweep["simulated_note"]


def test_bad_arguments_fail_with_one_line() -> None:
    result = _run("sweep", "--from-km", "10", "--to-km", "0", "--step-km", "1")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--to-km" in result.stderr


def test_sweep_plot_writes_a_png(tmp_path: Path) -> None:
    target = tmp_path / "rate.png"
    result = _run("sweep", "--from-km", "0", "--to-km", "150", "--step-km", "10",
                  "--plot", str(target))
    assert result.returncode == 0, result.stderr
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_link_fills_both_sites_stores_with_the_same_keys(tmp_path: Path) -> None:
    from hybridkex.keydelivery.sqlite import SQLiteKeyStore

    a_db, b_db = tmp_path / "a.db", tmp_path / "b.db"
    result = _run("link", "--site-a", "A", "--store-a", f"sqlite:///{a_db}", "--site-b", "B",
                  "--store-b", f"sqlite:///{b_db}", "--target-keys", "100",
                  "--pulses-per-round", "3e8", "--json")
    assert result.returncode == 0, result.stderr
    rounds = [json.loads(line) for line in result.stdout.splitlines()]
    deposited = sum(r["keys_deposited"] for r in rounds)
    assert deposited >= 100
    with SQLiteKeyStore("A", a_db) as a, SQLiteKeyStore("B", b_db) as b:
        assert a.status("B").available_to_take + a.status("B").available_to_fetch == deposited
        taken = a.take("B", 10)
        assert [k.key for k in b.fetch("A", [k.key_id for k in taken])] == [
            k.key for k in taken]
        taken = b.take("A", 10)
        assert [k.key for k in a.fetch("B", [k.key_id for k in taken])] == [
            k.key for k in taken]
