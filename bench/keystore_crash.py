"""Key store crash stress: SIGKILL a worker taking and fetching keys, N times, then
check that no key was delivered twice or in part and that both sites agree.

The long form of tests/test_keystore_crash.py; the worker and the invariants are in
tests/keystore_worker.py.  PostgreSQL runs on ``--dsn`` or ``$HYBRIDKEX_TEST_POSTGRES``
(a fresh schema, dropped afterwards; ``source tests/postgres.sh`` starts a server).

    python bench/keystore_crash.py [--backend sqlite|postgresql|both] [--kills 1000]
                                   [--max-run-ms 50] [--seed N] [--dsn postgresql://...]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.keystore_worker import Target, drop_schema, new_schema, run_campaign


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--kills", type=int, default=1000, help="kills per backend")
    parser.add_argument("--max-run-ms", type=float, default=50.0,
                        help="each run is killed after a random time up to this, once ready")
    parser.add_argument("--units", type=int, default=5000,
                        help="units deposited per direction (more are added if they run out)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--dsn", default=os.environ.get("HYBRIDKEX_TEST_POSTGRES", ""))
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"seed {seed}")
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    status = 0
    for name in backends:
        if name == "postgresql" and not args.dsn:
            print("postgresql: skipped, no --dsn and HYBRIDKEX_TEST_POSTGRES is not set")
            status = 1 if args.backend == "postgresql" else status
            continue
        with tempfile.TemporaryDirectory() as tmp:
            schema = new_schema(args.dsn) if name == "postgresql" else ""
            target = Target(name, Path(tmp), args.dsn, schema)
            try:
                report = run_campaign(target, args.kills, max_run_s=args.max_run_ms / 1e3,
                                      units_per_direction=args.units, seed=seed,
                                      progress=True)
                print("OK  " + report.summary())
            except AssertionError as exc:
                print(f"FAIL {name}: {exc}")
                status = 1
            finally:
                if schema:
                    drop_schema(args.dsn, schema)
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
