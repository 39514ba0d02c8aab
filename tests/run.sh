#!/usr/bin/env bash
# The whole test suite, from a fresh clone: install what the tests need into .venv,
# then lint (ruff), type-check (mypy) and run pytest.  README.md and .ci/run call this.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
# A throw-away PostgreSQL server for the key store tests (apt-get installs it if absent):
# exports HYBRIDKEX_TEST_POSTGRES, and stops the server when this script exits.
source tests/postgres.sh

echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest "$@"
