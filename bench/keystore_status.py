"""status() against a store full of delivered rows: counters, not a scan.

Fills a SQLite store with ``--rows`` units for one direction, delivers all but a few
thousand of them through the store API (1024 per take), then times ``status()`` and,
for comparison, the full-scan query ``status()`` ran before the counters (kept here
only as a measuring stick).

    PYTHONPATH=. python bench/keystore_status.py [--rows 1000000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

from hybridkex.keydelivery.keys import StoredKey
from hybridkex.keydelivery.sqlite import SQLiteKeyStore

OLD_STATUS = ("SELECT COALESCE(SUM(initiator = 1 AND material IS NOT NULL), 0), "
              "COALESCE(SUM(initiator = 0 AND material IS NOT NULL), 0), "
              "COALESCE(SUM(material IS NULL), 0) FROM qkd_keys WHERE peer_site = ?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="hkx-status-"))
    path = directory / "a.db"
    store = SQLiteKeyStore("A", path)
    store.add("B", [StoredKey(str(uuid.uuid4()), os.urandom(32), "A") for _ in range(args.rows)])
    for _ in range((args.rows - 2048) // 1024):
        store.take("B", 1024)
    for _ in range(3):
        status = store.status("B")
    calls = 1000
    started = time.perf_counter()
    for _ in range(calls):
        status = store.status("B")
    new = (time.perf_counter() - started) / calls
    with sqlite3.connect(path) as db:
        started = time.perf_counter()
        for _ in range(5):
            db.execute(OLD_STATUS, ("B",)).fetchone()
        old = (time.perf_counter() - started) / 5
    store.close()
    print(f"{args.rows} rows, {status.delivered} delivered: status() {new * 1e6:.1f} us; "
          f"the full-scan query it replaced {old * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
