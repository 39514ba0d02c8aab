"""Shared fixtures: where the known-answer vectors live, and the guard against hangs.

Vectors are read at test time from ``$HYBRIDKEX_VECTORS`` or from ``../shared/vectors``
beside the repository; they are never copied into it.  Where neither exists (a
user's machine) the vector tests skip and say how to get them; under CI (``CI`` set)
a missing vector directory is a failure, not a skip.

A test module whose tests could deadlock (real sockets, threads) marks itself
``pytestmark = pytest.mark.time_limit(seconds)``: each of its tests then runs under
tests/support.hang_guard, which dumps every thread's stack and ends the run once a test
takes longer, rather than let it hang.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import hang_guard

REPO = Path(__file__).resolve().parent.parent
VECTORS_HELP = (
    "known-answer vectors not found: set HYBRIDKEX_VECTORS to a directory laid out like "
    "../shared/vectors (acvp/, wycheproof/, xwing/, hybrid-kems/) or place it beside the repo"
)


def vectors_dir() -> Path | None:
    configured = os.environ.get("HYBRIDKEX_VECTORS")
    candidate = Path(configured) if configured else REPO.parent / "shared" / "vectors"
    return candidate if candidate.is_dir() else None


def load_vectors(relative: str) -> Any:
    """Parse one vector file, or skip (fail under CI) when the vectors are absent."""
    base = vectors_dir()
    if base is None:
        if os.environ.get("CI"):
            pytest.fail(VECTORS_HELP)
        pytest.skip(VECTORS_HELP)
    path = base / relative
    if not path.is_file():
        pytest.fail(f"vector file {relative} missing from {base}")
    with path.open() as f:
        return json.load(f)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "time_limit(seconds): dump all stacks and exit if a test runs longer")


@pytest.fixture(autouse=True)
def _no_hangs(request: pytest.FixtureRequest) -> Iterator[None]:
    """tests/support.hang_guard for tests marked ``time_limit``; nothing for the rest."""
    marker = request.node.get_closest_marker("time_limit")
    if marker is None:
        yield
        return
    with hang_guard(float(marker.args[0])):
        yield
