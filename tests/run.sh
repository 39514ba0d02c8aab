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
# iproute2's `ip` for the two-host tests (tests/netns.py: network namespaces over a veth
# pair, as root).  If it cannot be installed, tests/test_hosts.py fails and says why.
if ! command -v ip >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends iproute2; } >&2 \
        || echo "iproute2 could not be installed: the two-host tests will fail" >&2
fi
# The npm interop peers for interop/tests (Node.js 26 = OpenSSL 3.5, liboqs-js): `npm ci`
# into interop/node_modules, nothing when they are already there.  If it fails, the
# rest of the suite still runs and the interop tests fail, saying what is missing.
bash interop/install.sh || echo "interop/install.sh failed: the interop tests will fail" >&2

# Strict mode: a test that finds the shared vectors or the PostgreSQL server missing
# fails instead of skipping (tests/conftest.py, tests/keystore_worker.py).
export CI="${CI:-1}"

echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest "$@"
