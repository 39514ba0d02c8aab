"""Crash safety: a worker taking and fetching keys is killed with SIGKILL at random
moments, again and again, and no key is ever delivered twice or half-delivered.

The worker, the log it keeps and the invariants checked are described in
tests/keystore_worker.py (check_campaign).  Each backend gets ``HYBRIDKEX_CRASH_KILLS``
kills (default 100, so 200 across the suite); ``HYBRIDKEX_CRASH_SEED`` replays a
campaign.  bench/keystore_crash.py runs longer campaigns.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.keystore_worker import (
    Report,
    Target,
    drop_schema,
    new_schema,
    parse_log,
    postgres_dsn,
    run_campaign,
)

KILLS = int(os.environ.get("HYBRIDKEX_CRASH_KILLS", "100"))


def _seed() -> int:
    seed = int(os.environ.get("HYBRIDKEX_CRASH_SEED") or random.randrange(2**32))
    print(f"crash campaign seed: HYBRIDKEX_CRASH_SEED={seed}")  # shown if the test fails
    return seed


def _check(report: Report) -> None:
    print(report.summary())
    assert report.kills == KILLS
    assert report.takes_logged > 0 and report.fetches_logged > 0
    # the kills did land inside operations, not only between them
    assert report.killed_in_take + report.killed_in_fetch > 0


@pytest.fixture
def pg_target(tmp_path: Path) -> Iterator[Target]:
    dsn = postgres_dsn()
    schema = new_schema(dsn)
    yield Target("postgresql", tmp_path, dsn, schema)
    drop_schema(dsn, schema)


def test_sqlite_store_survives_sigkill(tmp_path: Path) -> None:
    _check(run_campaign(Target("sqlite", tmp_path), KILLS, seed=_seed()))


def test_postgres_store_survives_sigkill(pg_target: Target) -> None:
    _check(run_campaign(pg_target, KILLS, seed=_seed()))


def test_log_reader_drops_a_torn_record(tmp_path: Path) -> None:
    """A SIGKILL that cuts a record short leaves a line without its end mark, which
    the next run's first record follows on a fresh line."""
    log = tmp_path / "crash.log"
    log.write_text(
        "\nS 1 $\nTB A 2 $\nT A 512 u1+u2:0011"  # run 1 killed writing its T record
        "\nS 2 $\nTB B 1 $\nT B 256 u3:2233 $\nF B u3 $\n"
    )
    runs = parse_log(log)
    assert runs == [
        [["TB", "A", "2"]],
        [["TB", "B", "1"], ["T", "B", "256", "u3:2233"], ["F", "B", "u3"]],
    ]


def test_log_reader_rejects_records_after_a_torn_one(tmp_path: Path) -> None:
    log = tmp_path / "crash.log"
    log.write_text("\nS 1 $\nTB A 2 $\nT A 512 u1+u2\nF A u1+u2 $\n")
    with pytest.raises(AssertionError, match="after a torn"):
        parse_log(log)
