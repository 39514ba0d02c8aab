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
