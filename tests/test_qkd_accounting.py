"""The secret key length a round reports, recomputed from its ``pa_terms`` by a formula of
this test's own (the contract of ``hybridkex qkd simulate --json``).

Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014), keyed in Z:

    l = s_Z0 + s_Z1 (1 - h(phi_Z)) - lambda_EC - 6 log2(21/eps_sec) - log2(2/eps_cor)

where the last term is the paper's bound on its ceil(log2(1/eps_cor))-bit verification
hash.  The protocol discloses a 128-bit verification tag instead, and 256 confirmation bits
of the privacy amplification output, so both are deducted at their length.  The
asymptotic mode drops the vacuum and finite-size terms and keeps every disclosure.

Nothing here calls the code's formula: the recomputation is the test's, and every term
is shown to matter (dropping any one changes the length of some run).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import pytest

from hybridkex.qkd.link import QKDLink, SiteIdentity
from hybridkex.qkd.parameters import finite_key_parameters

TERMS = ("s_z0_lower", "s_z1_lower", "phi_z_upper", "ec_leaked_bits",
         "verification_tag_bits", "confirmation_bits", "eps_sec")


def _h(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def _lim_length(t: dict[str, Any]) -> float:
    """l before the floor, from the reported terms alone."""
    ell = float(t["s_z1_lower"] * (1.0 - _h(t["phi_z_upper"])) - t["ec_leaked_bits"]
                - t["verification_tag_bits"] - t["confirmation_bits"])
    if t["eps_sec"] is not None:  # finite-size: the vacuum term and the epsilon price
        ell += t["s_z0_lower"] - 6.0 * math.log2(21.0 / t["eps_sec"])
    return ell


def _without(t: dict[str, Any], term: str) -> dict[str, Any]:
    """The terms with one dropped (its contribution set to nothing)."""
    dropped = dict(t)
    if term == "eps_sec":  # dropping the finite-size price
        dropped["eps_sec"] = 21.0
    else:
        dropped[term] = 0.0
    return dropped


def _simulate(*args: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-m", "hybridkex", "qkd", "simulate", "--json",
                             *args], capture_output=True, text=True, timeout=600,
                            check=False)
    report: dict[str, Any] = json.loads(result.stdout)
    assert result.returncode == (3 if report["aborted"] else 0), result.stderr
    return report


def _library(pulses: int, seed: int, **params: float) -> dict[str, Any]:
    identity = SiteIdentity.generate("Ed25519")
    link = QKDLink("A", "B", finite_key_parameters(**params), identity_a=identity,
                   identity_b=SiteIdentity.generate("Ed25519"))
    return link.run_round(pulses, seed).to_json()


@pytest.fixture(scope="module")
def runs() -> list[dict[str, Any]]:
    return [
        _simulate("--distance-km", "25", "--pulses", "3e8", "--seed", "1"),
        _simulate("--distance-km", "25", "--pulses", "3e8", "--seed", "1", "--asymptotic"),
        _simulate("--distance-km", "10", "--pulses", "2e8", "--seed", "4", "--eps-sec",
                  "1e-6"),
        # many dark counts on the vacuum decoys: a positive vacuum bound s_Z0
        _library(400_000_000, 7, distance_km=20.0, y0=1e-4, p_nu=0.3),
        # too far for a key: the round ends before reconciliation, on estimated terms
        _simulate("--distance-km", "60", "--pulses", "3e8", "--seed", "7"),
    ]


def test_the_reported_length_is_lim_et_al_from_the_reported_terms(
        runs: list[dict[str, Any]]) -> None:
    for report in runs:
        t = report["pa_terms"]
        assert set(TERMS) <= t.keys()
        assert math.floor(_lim_length(t)) == t["length"], t
        assert t["verification_tag_bits"] == 128  # the whole Poly1305 tag
        assert t["confirmation_bits"] == 256
        if t["eps_sec"] is not None:
            assert t["eps_terms"] == 21
            assert t["eps_per_term"] == pytest.approx(t["eps_sec"] / 21)
            assert t["finite_size_bits"] == pytest.approx(6 * math.log2(21 / t["eps_sec"]))
            assert report["e1_upper"] == t["phi_z_upper"]  # shown as phi_Z^U


def test_completed_rounds_keep_no_more_than_the_length(runs: list[dict[str, Any]]) -> None:
    completed = [r for r in runs if not r["aborted"]]
    assert len(completed) == 4
    for report in completed:
        t = report["pa_terms"]
        assert not t["ec_leaked_estimated"]
        assert t["ec_leaked_bits"] == report["ec_leaked_bits"]
        assert t["length"] - 256 < report["secret_bits"] <= t["length"]
        # eps_cor: Poly1305's collision bound 8 ceil(L/16) / 2^106 on the L-byte
        # verification input, the block's length (8 bytes) and its packed bits
        input_bytes = 8 + math.ceil(report["pa_input_bits"] / 8)
        assert t["eps_cor"] == pytest.approx(8 * math.ceil(input_bytes / 16) / 2**106)


def test_an_early_abort_reports_the_estimated_terms(runs: list[dict[str, Any]]) -> None:
    aborted = runs[-1]
    assert aborted["aborted"] and "not positive" in aborted["abort_reason"]
    t = aborted["pa_terms"]
    assert t["ec_leaked_estimated"] and t["length"] < 0
    assert aborted["ec_leaked_bits"] is None  # reconciliation never ran


@pytest.mark.parametrize("term", TERMS)
def test_dropping_any_term_changes_the_length_of_some_run(runs: list[dict[str, Any]],
                                                          term: str) -> None:
    """The recomputation above would fail if the code left out ``term``."""
    assert any(math.floor(_lim_length(_without(r["pa_terms"], term))) != r["pa_terms"]["length"]
               for r in runs)


def test_the_runs_cover_both_bounds_and_a_positive_vacuum_term(
        runs: list[dict[str, Any]]) -> None:
    bounds = {r["pa_terms"]["bound"].split()[0] for r in runs}
    assert bounds == {"finite-key", "asymptotic"}
    assert any((r["pa_terms"]["s_z0_lower"] or 0.0) > 1.0 for r in runs)
