"""Key store throughput: keys per second through take (at A) + fetch (at B).

Each measurement deposits fresh keys at both sites of one link, then times a loop
of ``take(count=batch)`` at the initiator followed by ``fetch`` of the same IDs at
the responder, until ``--keys`` keys have passed; a key counts once it has been
delivered at both sites.  One key per call and batches of 16 (one transaction
each), the median of ``--repeats`` runs, for:

* memory: MemoryKeyStore (the floor: the Python around the storage);
* sqlite: SQLiteKeyStore as shipped (WAL, ``synchronous=FULL``, ``secure_delete``),
  one database file per site, in ``--dir`` (default: a temporary directory);
* postgresql: PostgresKeyStore on ``--dsn`` or ``$HYBRIDKEX_TEST_POSTGRES``, both
  sites in one fresh schema (dropped afterwards); skipped without a DSN;
* with ``--diagnose``, also SQLite with ``synchronous=NORMAL``: *not* a configuration
  anyone should run (a power cut can lose committed deliveries' erasure, so a key
  could be delivered again), only to show how much of the time is the fsync.

    python bench/keystore.py [--keys 2000] [--repeats 5] [--dsn postgresql://...]
                             [--only memory,sqlite,postgresql] [--diagnose]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hybridkex.keydelivery import linked_pools, random_units
from hybridkex.keydelivery.sqlite import SQLiteKeyStore
from hybridkex.keydelivery.store import KeyStore, MemoryKeyStore

BATCHES = (1, 16)
GOAL_SQLITE = 5000.0

Opener = Callable[[str], KeyStore]


class _NormalSyncSQLite(SQLiteKeyStore):
    """Diagnostic only: the shipped store with synchronous=NORMAL."""

    def _connection(self) -> sqlite3.Connection:
        db = super()._connection()
        db.execute("PRAGMA synchronous=NORMAL")
        return db


def measure(open_site: Opener, keys: int, batch: int) -> tuple[float, float, float]:
    """(keys per second, median take latency, median fetch latency) for one run."""
    a, b = open_site("A"), open_site("B")
    try:
        linked_pools("A", "B", random_units("A", "B", keys, 0), store_a=a, store_b=b)
        take_s: list[float] = []
        fetch_s: list[float] = []
        started = time.perf_counter()
        for _ in range(keys // batch):
            t0 = time.perf_counter()
            taken = a.take("B", batch)
            t1 = time.perf_counter()
            fetched = b.fetch("A", [k.key_id for k in taken])
            t2 = time.perf_counter()
            take_s.append(t1 - t0)
            fetch_s.append(t2 - t1)
            assert fetched[0].key == taken[0].key
        elapsed = time.perf_counter() - started
        return (keys // batch * batch / elapsed, statistics.median(take_s),
                statistics.median(fetch_s))
    finally:
        a.close()
        b.close()


@contextmanager
def backend(name: str, workdir: Path, dsn: str) -> Iterator[Callable[[], Opener]]:
    """Yields a function making a fresh, empty pair of sites for each run."""
    if name == "memory":
        yield lambda: MemoryKeyStore
        return
    if name in ("sqlite", "sqlite-normal"):
        cls = SQLiteKeyStore if name == "sqlite" else _NormalSyncSQLite

        def fresh_sqlite() -> Opener:
            run = workdir / uuid.uuid4().hex
            run.mkdir()
            return lambda site: cls(site, run / f"{site}.db")

        yield fresh_sqlite
        return
    import psycopg
    from psycopg import sql

    from hybridkex.keydelivery.postgres import PostgresKeyStore

    schemas: list[str] = []

    def fresh_pg() -> Opener:
        schemas.append(f"hkx_bench_{uuid.uuid4().hex[:12]}")
        schema = schemas[-1]
        return lambda site: PostgresKeyStore(site, dsn, schema=schema)

    try:
        yield fresh_pg
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for schema in schemas:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(schema)))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=2000, help="keys per run (default 2000)")
    parser.add_argument("--repeats", type=int, default=5, help="runs; the median is shown")
    parser.add_argument("--dsn", default=os.environ.get("HYBRIDKEX_TEST_POSTGRES", ""))
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the SQLite files go (default: a temporary directory)")
    parser.add_argument("--only", default="memory,sqlite,postgresql")
    parser.add_argument("--diagnose", action="store_true",
                        help="also SQLite with synchronous=NORMAL, to isolate the fsync cost")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    if args.diagnose and "sqlite" in names:
        names.insert(names.index("sqlite") + 1, "sqlite-normal")
    print(f"take + fetch, {args.keys} keys per run, median of {args.repeats} runs")
    print(f"{'backend':<14} {'batch':>5} {'keys/s':>10} {'take ms':>8} {'fetch ms':>8}  "
          "runs (keys/s)")
    status = 0
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for name in names:
            if name == "postgresql" and not args.dsn:
                print(f"{name:<14} skipped: no --dsn and HYBRIDKEX_TEST_POSTGRES is not set")
                continue
            with backend(name, Path(tmp), args.dsn) as fresh:
                for batch in BATCHES:
                    runs = [measure(fresh(), args.keys, batch) for _ in range(args.repeats)]
                    rate = statistics.median(r[0] for r in runs)
                    take_ms = statistics.median(r[1] for r in runs) * 1e3
                    fetch_ms = statistics.median(r[2] for r in runs) * 1e3
                    spread = " ".join(f"{r[0]:.0f}" for r in runs)
                    note = ""
                    if name == "sqlite":
                        note = "  (goal 5000: " + ("met)" if rate >= GOAL_SQLITE else "NOT met)")
                    print(f"{name:<14} {batch:>5} {rate:>10.0f} {take_ms:>8.3f} "
                          f"{fetch_ms:>8.3f}  {spread}{note}")
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
