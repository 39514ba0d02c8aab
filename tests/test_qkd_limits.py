"""Long rounds in bounded memory: packed detection records that sifting drains, sifting in
chunks, reconciliation in segments, privacy amplification in bounded transforms, the
cost prediction that refuses a run before it starts, and the progress display."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

from hybridkex.cli.progress import ItemProgress, RoundProgress
from hybridkex.errors import InvalidParameter
from hybridkex.qkd import budget
from hybridkex.qkd.distillation import bob as bob_steps
from hybridkex.qkd.distillation import session, toeplitz
from hybridkex.qkd.distillation.detections import OFFSET_BITS, DetectionLog
from hybridkex.qkd.link import QKDLink, SiteIdentity
from hybridkex.qkd.parameters import finite_key_parameters
from hybridkex.qkd.progress import STAGES

IDENTITY = SiteIdentity.generate("Ed25519")


def _link(distance_km: float = 25.0) -> QKDLink:
    return QKDLink("A", "B", finite_key_parameters(distance_km=distance_km),
                   identity_a=IDENTITY, identity_b=IDENTITY)


# -- the records -----------------------------------------------------------------------


def _events(rng: np.random.Generator, count: int, spread: int) -> tuple[np.ndarray, np.ndarray]:
    index = np.unique(rng.integers(0, spread, count)).astype(np.int64)
    return index, rng.integers(0, 64, index.size).astype(np.uint8)


def test_a_log_gives_back_every_event_in_order_across_segments() -> None:
    rng = np.random.default_rng(1)
    index, values = _events(rng, 50_000, 5 << OFFSET_BITS)  # five segments' spans
    log = DetectionLog()
    for lo in range(0, index.size, 7_000):
        log.append(index[lo:lo + 7_000], values[lo:lo + 7_000])
    assert len(log) == index.size and log.last_index == index[-1]
    chunks = list(log.drain(9_999))
    assert all(c[0].size <= 9_999 for c in chunks) and len(log) == 0
    assert np.array_equal(np.concatenate([c[0] for c in chunks]), index)
    assert np.array_equal(np.concatenate([c[1] for c in chunks]), values)


def test_a_lookup_finds_values_and_lets_go_of_what_it_passed() -> None:
    rng = np.random.default_rng(2)
    index, values = _events(rng, 20_000, 3 << OFFSET_BITS)
    log = DetectionLog()
    log.append(index, values)
    first = log.lookup(index[:5000:3])
    assert first is not None and np.array_equal(first, values[:5000:3])
    assert len(log) == index.size - 4999  # everything up to the last index asked is gone
    assert log.lookup(np.array([index[6000] + 1], np.int64)) is None or (
        index[6001] == index[6000] + 1)
    rest = log.lookup(index[7000:])
    assert rest is not None and np.array_equal(rest, values[7000:])
    assert log.lookup(np.array([index[-1] + 5], np.int64)) is None  # never recorded


def test_a_log_refuses_what_it_cannot_hold() -> None:
    log = DetectionLog()
    log.append(np.array([5, 9]), np.array([1, 2], np.uint8))
    for index, values in (([9, 10], [0, 0]), ([12, 11], [0, 0]), ([20], [64]), ([20], [-1]),
                          ([20, 21], [0])):
        with pytest.raises(InvalidParameter):
            log.append(np.array(index), np.array(values))


def test_a_log_is_four_bytes_per_event() -> None:
    log = DetectionLog()
    for block in range(16):
        start = block << 22
        log.append(np.arange(start, start + 13_000, dtype=np.int64) * 1,
                   np.zeros(13_000, np.uint8))
    assert log.nbytes == 4 * len(log)


# -- sifting in chunks, reconciliation in segments ----------------------------------------


def test_chunked_sifting_and_segmented_reconciliation_give_the_same_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same seed gives the same key whether sifting takes one chunk or hundreds:
    chunking changes the framing, not what either end computes."""
    whole = _link().run_round(400_000_000, seed=21)
    assert not whole.aborted, whole.abort_reason
    monkeypatch.setattr(bob_steps, "MAX_SIFT_CHUNK", 5_000)
    chunked = _link().run_round(400_000_000, seed=21)
    assert not chunked.aborted, chunked.abort_reason
    assert (chunked.detections, chunked.sifted_bits, chunked.secret_bits) == (
        whole.detections, whole.sifted_bits, whole.secret_bits)
    assert chunked.key_ids == whole.key_ids
    monkeypatch.setattr(session, "RECONCILE_SEGMENT_BITS", 200_000)
    segmented = _link().run_round(400_000_000, seed=21)
    assert not segmented.aborted, segmented.abort_reason
    assert segmented.ec_round_trips is not None and whole.ec_round_trips is not None
    assert segmented.ec_round_trips > 2 * whole.ec_round_trips  # four Cascade runs
    assert segmented.ec_efficiency is not None and 1.0 < segmented.ec_efficiency < 1.2
    assert segmented.sifted_bits == whole.sifted_bits and segmented.secret_bits > 0


def test_segments_cover_the_block_in_nearly_equal_parts() -> None:
    for n in (64, session.RECONCILE_SEGMENT_BITS, session.RECONCILE_SEGMENT_BITS + 1,
              15_000_000):
        segments = session.reconciliation_segments(n)
        assert segments[0][0] == 0 and segments[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(segments))
        lengths = [hi - lo for lo, hi in segments]
        assert max(lengths) <= session.RECONCILE_SEGMENT_BITS and max(lengths) - min(lengths) <= 1


def test_a_long_key_is_amplified_in_bounded_transforms(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    n, m = 40_000, 25_000
    key, seed = rng.integers(0, 2, n, np.uint8), rng.integers(0, 2, n + m - 1, np.uint8)
    whole = toeplitz.toeplitz_hash(key, seed, m)
    lengths: list[int] = []
    exact = toeplitz._cyclic_sums

    def recording(a: np.ndarray, b: np.ndarray, rows: int, four_step: int) -> np.ndarray:
        lengths.append(a.size + rows - 1)
        return exact(a, b, rows, four_step)

    monkeypatch.setattr(toeplitz, "_MAX_TRANSFORM_POINTS", 1 << 14)
    monkeypatch.setattr(toeplitz, "_sums", recording)
    assert np.array_equal(toeplitz.toeplitz_hash(key, seed, m), whole)
    assert len(lengths) > 4 and max(lengths) <= 1 << 14


def test_a_billion_pulses_at_zero_km_complete() -> None:
    """1.1e7 detections: a sifting message of about 90 MB before chunking, beyond the
    channel's 64 MB frame limit; now six chunks, and a key block of three segments."""
    report = _link(0.0).run_round(1_000_000_000, seed=5)
    assert not report.aborted, report.abort_reason
    assert report.detections is not None and report.detections > 10_000_000
    assert report.secret_bits > 1_000_000


# -- memory and the prediction -----------------------------------------------------------


_PEAK = """
import sys
from hybridkex.cli import main
code = main(sys.argv[1:])
with open("/proc/self/status") as status:
    print(next(line for line in status if line.startswith("VmHWM")), file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_memory_stays_below_the_prediction() -> None:
    """One round of 1e9 pulses at 25 km in a process of its own (as the CLI runs it):
    its peak resident size (VmHWM, which exec resets, unlike ru_maxrss) is below the cost
    the run was admitted with."""
    result = subprocess.run(
        [sys.executable, "-c", _PEAK, "qkd", "simulate", "--distance-km", "25",
         "--pulses", "1e9", "--seed", "3", "--json"], capture_output=True, text=True,
        timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert not report["aborted"]
    peak_mb = int(result.stderr.split("VmHWM:")[1].split()[0]) / 1024
    predicted = budget.round_cost(finite_key_parameters(distance_km=25.0), 10**9)
    assert 100 < peak_mb <= predicted.memory_bytes / 2**20, (peak_mb, predicted)
    assert peak_mb < 300  # it was 373 MB before the records were packed and drained


def test_the_prediction_scales_with_detections_not_pulses() -> None:
    params = finite_key_parameters(distance_km=25.0)
    small, large = budget.round_cost(params, 10**9), budget.round_cost(params, 10**10)
    assert large.detections == pytest.approx(10 * small.detections)
    assert large.memory_bytes < 512 * 2**20  # the documented figure fits the default limit
    far = budget.round_cost(finite_key_parameters(distance_km=150.0), 10**10)
    assert far.memory_bytes < small.memory_bytes
    with pytest.raises(budget.BudgetExceeded, match="--memory-limit-mb"):
        budget.check_budget(finite_key_parameters(distance_km=0.0), 10**10, 512, 3600)
    budget.check_budget(finite_key_parameters(distance_km=0.0), 10**10, 4096, 3600)


# -- progress --------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _drive(progress: RoundProgress) -> None:
    for stage in STAGES:
        for done in (0, 50, 100):
            progress(stage, done, 100)
    progress.finish()


def test_progress_on_a_terminal_redraws_one_line_with_an_eta() -> None:
    out = _Terminal()
    cost = budget.round_cost(finite_key_parameters(), 10**8)
    _drive(RoundProgress(cost, out))
    text = out.getvalue()
    assert "\r" in text and text.endswith("\n") and text.count("\n") == 1
    assert "ETA" in text and "reconciliation" in text and "100%" in text


def test_progress_elsewhere_is_plain_lines_without_carriage_returns() -> None:
    out = io.StringIO()
    cost = budget.round_cost(finite_key_parameters(), 10**8)
    _drive(RoundProgress(cost, out, line_interval_s=3600))
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert "SIMULATION" in lines[0]
    # a line as each stage starts, and one when the round is done
    assert [line.split(":")[1].split()[0] for line in lines[1:]] == [*STAGES, STAGES[-1]]
    assert all("ETA" in line for line in lines[1:]) and "ETA done" in lines[-1]
    items = io.StringIO()
    counter = ItemProgress("sweep", 3, items, line_interval_s=3600)
    for i in range(1, 4):
        counter(i, "points")
    lines = items.getvalue().splitlines()
    assert "\r" not in items.getvalue() and len(lines) == 2  # the first, then the last
    assert lines[0].startswith("sweep: 1/3 points, ETA")
    assert lines[1] == "sweep: 3/3 points, ETA done"
