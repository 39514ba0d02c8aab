"""The ``hybridkex`` console script, run as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hybridkex import cli, selftest


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hybridkex", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def test_selftest_passes_and_lists_algorithms() -> None:
    result = _run("selftest")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "self-test passed" in result.stdout
    for name in ("ML-KEM-768", "ML-DSA-65+Ed25519", "X25519MLKEM768", "Poly1305"):
        assert name in result.stdout


def test_selftest_json_is_one_object() -> None:
    result = _run("selftest", "--json")
    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert report["passed"] is True
    assert all(check["passed"] for check in report["checks"])
    assert {a["name"] for a in report["algorithms"]} >= {"X-Wing", "ML-DSA-87", "AES-256-GCM"}


def test_selftest_reports_a_failing_check_and_exits_nonzero(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken() -> None:
        raise selftest.SelfTestFailure("wrong answer")

    monkeypatch.setattr(selftest, "CHECKS", [*selftest.CHECKS, ("broken", broken)])
    assert cli.main(["selftest"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "broken" in out and "self-test FAILED" in out


def test_no_subcommand_is_a_usage_error() -> None:
    assert _run().returncode == 2
