"""Every ``hybridkex qkd`` option refuses nonsense with one line and exit status 2, says its
unit in its help, and a run too large for the memory or time limit is refused at once.

The table below must name every option of every ``qkd`` subcommand: a new option without
bad values to try here fails :func:`test_the_table_covers_every_option`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest

from hybridkex.cli import main, qkd_eve, qkd_link
from hybridkex.cli import qkd as qkd_commands

VALID = {
    "simulate": ["--distance-km", "25", "--pulses", "1e6"],
    "link": ["--site-a", "A", "--store-a", "memory:", "--site-b", "B", "--store-b", "memory:"],
    "sweep": ["--from-km", "0", "--to-km", "10", "--step-km", "10"],
    "eve-sweep": ["--eve", "intercept-resend", "--from", "0", "--to", "1", "--step", "0.5"],
    "fiber": ["--listen", "127.0.0.1:7100", "--connect", "127.0.0.1:7001"],
}
ADDRESSES = ["", "host", "host:", ":7000", "host:65536", "host:-1", "host:7e3", "host:port"]
NOT_NUMBERS = ["nan", "NaN", "inf", "-inf", "1,000", "", "abc", "1e400"]
NAMES = ["", "   ", "a\x01b"]
BAD: dict[str, list[str]] = {
    "--distance-km": [*NOT_NUMBERS, "-1", "-0.5", "1001"],
    "--pulses": [*NOT_NUMBERS, "0", "-5", "1.5", "1e30", "1,000,000"],
    "--eve": ["bogus", "", "INTERCEPT-RESEND"],
    "--eve-fraction": [*NOT_NUMBERS, "-0.1", "2", "1.0001"],
    "--seed": [*NOT_NUMBERS, "-1", "1.5", "2e20"],
    "--preset": ["bogus", ""],
    "--p-z": [*NOT_NUMBERS, "0", "1", "-0.5", "1.5"],
    "--mu": [*NOT_NUMBERS, "0", "-1", "101"],
    "--nu": [*NOT_NUMBERS, "-0.1", "100", "1e9"],
    "--eps-sec": [*NOT_NUMBERS, "0", "-1", "5", "1", "1e-400"],
    "--memory-limit-mb": [*NOT_NUMBERS, "0", "-1", "1", "1e12"],
    "--time-limit-s": [*NOT_NUMBERS, "0", "-1"],
    "--site-a": NAMES, "--site-b": NAMES, "--store-a": NAMES, "--store-b": NAMES,
    "--target-keys": [*NOT_NUMBERS, "0", "-3", "2.5"],
    "--pulses-per-round": [*NOT_NUMBERS, "0", "-3", "2.5"],
    "--from-km": [*NOT_NUMBERS, "-1", "1001"],
    "--to-km": [*NOT_NUMBERS, "-1", "1001"],
    "--step-km": [*NOT_NUMBERS, "0", "-1"],
    "--model": ["bogus", "vacuum_weak"],
    "--plot": ["/nonexistent-directory/rate.png", "/", "."],
    "--from": [*NOT_NUMBERS, "-0.1", "1.5"],
    "--to": [*NOT_NUMBERS, "-0.1", "1.5"],
    "--step": [*NOT_NUMBERS, "0", "-0.1", "1.5"],
    "--site": NAMES, "--peer": NAMES, "--store": NAMES,
    "--listen": ADDRESSES, "--connect": ADDRESSES, "--quantum-listen": ADDRESSES,
    "--quantum-connect": ADDRESSES,
    "--clock-hz": [*NOT_NUMBERS, "0", "-1", "1e16"],
    "--rounds": [*NOT_NUMBERS, "0", "-3", "2.5"],
    "--lanes": [*NOT_NUMBERS, "0", "-1", "17", "2.5"],
    "--max-pulses-per-round": [*NOT_NUMBERS, "0", "-3", "2.5"],
}
FLAGS = {"--json", "--asymptotic", "--help"}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    qkd = argparse.ArgumentParser(prog="hybridkex qkd")
    qkd_commands.register(qkd)
    action = next(a for a in qkd._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.option_strings[-1]: a for a in parser._actions if a.option_strings}


CASES = [(command, option, value)
         for command, parser in sorted(_subcommands().items())
         for option in sorted(_options(parser)) if option not in FLAGS
         for value in BAD[option]]


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def test_the_table_covers_every_option() -> None:
    for command, parser in _subcommands().items():
        for option in _options(parser):
            assert option in FLAGS or option in BAD, f"qkd {command} {option}: add bad values"


@pytest.fixture
def nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands themselves do nothing: a bad value must be refused while parsing, and
    one that got through would make the command return 0 rather than run a link."""
    for module, name in ((qkd_commands, "cmd_simulate"), (qkd_commands, "cmd_link"),
                         (qkd_commands, "cmd_sweep"), (qkd_eve, "cmd_eve_sweep"),
                         (qkd_link, "cmd_fiber"), (qkd_link, "_two_host")):
        monkeypatch.setattr(module, name, lambda args: 0)


@pytest.mark.usefixtures("nothing_runs")
@pytest.mark.parametrize(("command", "option", "value"), CASES)
def test_a_bad_value_is_one_line_and_exit_status_2(capsys: pytest.CaptureFixture[str],
                                                   command: str, option: str,
                                                   value: str) -> None:
    argv = [a for a in VALID[command]]
    if option in argv:
        argv[argv.index(option) + 1] = value
    else:
        argv += [option, value]
    if option == "--eve-fraction":
        argv += ["--eve", "intercept-resend"]
    code, err = _run(capsys, ["qkd", command, *argv])
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"argument {option}" in err or (option == "--eve-fraction" and "--eve" in err), err


@pytest.mark.parametrize(("command", "argv", "names"), [
    ("simulate", ["--eve-fraction", "0.5"], "--eve"),
    ("simulate", ["--mu", "0.1", "--nu", "0.2"], "--mu"),
    ("simulate", ["--preset", "gys", "--nu", "0.6"], "--mu"),
    ("sweep", ["--from-km", "50", "--to-km", "10"], "--to-km"),
    ("sweep", ["--mu", "0.1", "--nu", "0.2"], "--mu"),
    ("eve-sweep", ["--from", "0.8", "--to", "0.2"], "--to"),
    ("eve-sweep", ["--step", "1e-9"], "--step"),
    ("sweep", ["--to-km", "1000", "--step-km", "1e-9"], "--step-km"),
])
def test_bad_combinations_are_one_line_and_exit_status_2(capsys: pytest.CaptureFixture[str],
                                                         command: str, argv: list[str],
                                                         names: str) -> None:
    base = list(VALID[command])
    for option, value in zip(argv[::2], argv[1::2], strict=True):
        if option in base:
            base[base.index(option) + 1] = value
        else:
            base += [option, value]
    code, err = _run(capsys, ["qkd", command, *base])
    assert code == 2 and err.count("\n") == 1 and names in err, err


def test_every_option_says_its_unit_or_its_choices_in_its_help() -> None:
    for command, parser in _subcommands().items():
        for option, action in _options(parser).items():
            if option == "--help":
                continue
            assert action.help, f"qkd {command} {option} has no help"
            if action.nargs != 0 and not action.choices:
                assert "(" in action.help and ")" in action.help, (
                    f"qkd {command} {option}: say the unit and range in parentheses")


@pytest.mark.parametrize("value", ["1e18", "1e17"])
def test_a_run_over_the_time_limit_is_refused_at_once(capsys: pytest.CaptureFixture[str],
                                                      value: str) -> None:
    started = time.monotonic()
    code, err = _run(capsys, ["qkd", "simulate", "--distance-km", "100", "--pulses", value])
    assert time.monotonic() - started < 5
    assert code == 2 and err.count("\n") == 1, err
    assert "refused before starting" in err and "--pulses" in err
    assert "--time-limit-s" in err or "--memory-limit-mb" in err


def test_a_run_over_the_memory_limit_names_the_options_to_change(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(capsys, ["qkd", "simulate", "--distance-km", "0", "--pulses", "1e10"])
    assert code == 2 and err.count("\n") == 1, err
    assert "--memory-limit-mb 512" in err and "lower --pulses" in err
    code, err = _run(capsys, ["qkd", "link", *VALID["link"], "--distance-km", "0",
                              "--pulses-per-round", "2e10"])
    assert code == 2 and "--pulses-per-round" in err, err
    code, err = _run(capsys, ["qkd", "eve-sweep", *VALID["eve-sweep"], "--pulses", "2e9",
                              "--time-limit-s", "60"])
    assert code == 2 and "over 3 runs" in err and "--time-limit-s 60" in err, err


def test_the_plot_option_accepts_a_file_in_an_existing_directory(tmp_path: Path) -> None:
    from hybridkex.cli.qkd_options import OUTPUT_FILE

    assert OUTPUT_FILE(str(tmp_path / "rate.png")) == str(tmp_path / "rate.png")
    with pytest.raises(argparse.ArgumentTypeError):
        OUTPUT_FILE(str(tmp_path / "missing" / "rate.png"))
