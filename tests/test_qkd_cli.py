"""``hybridkex qkd simulate`` and ``hybridkex qkd sweep``: the JSON contract and the physics
they must reproduce."""

from __future__ import annotations

import json
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


def _json(*args: str) -> Any:
    result = _run(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_simulate_at_25_km_gives_a_positive_net_key_with_f_reported() -> None:
    report = _json("simulate", "--distance-km", "25", "--pulses", "4e8", "--seed", "1")
    assert report.keys() >= SIMULATE_KEYS
    assert not report["aborted"]
    assert report["net_secret_bits"] > 0
    assert 1.0 < report["ec_efficiency"] < 1.2
    assert report["secret_bits"] < report["pa_input_bits"] < report["sifted_bits"]
    assert "SIMULATION" in report["simulation"]


def test_simulate_with_full_intercept_resend_aborts() -> None:
    report = _json("simulate", "--distance-km", "25", "--pulses", "1e8", "--eve",
                   "intercept-resend", "--eve-fraction", "1", "--seed", "2")
    assert report["aborted"] and report["abort_reason"]
    assert report["secret_bits"] == 0 and report["keys_deposited"] == 0


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
