"""The SQLite key store: the embedded default, one file per site (``keys.db``).

The file and its ``-wal`` and ``-shm`` companions hold raw keys, so they are created
0600 whoever opens them (whatever the umask), and an existing file readable by others
is narrowed to 0600 when its owner opens it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hybridkex.errors import InvalidParameter
from hybridkex.keydelivery.binding import Binding
from hybridkex.keydelivery.errors import KeyNotAvailable, KeysExhausted, ReservationRefused
from hybridkex.keydelivery.keys import StoredKey
from hybridkex.keydelivery.store import (
    DONE,
    OPEN,
    PENDING,
    BoundRow,
    Expected,
    KeyStore,
    RecordRow,
    StoreStatus,
    check_access,
)

__all__ = ["SCHEMA_VERSION", "SQLiteKeyStore"]

SCHEMA_VERSION = "2"
"""1: the units alone; 2: adds the per-pool counters and the keys bound to SAEs."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS store_meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS qkd_keys (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id        TEXT NOT NULL UNIQUE,
    peer_site     TEXT NOT NULL,
    initiator     INTEGER NOT NULL,   -- 1: this site takes it; 0: the peer does
    material      BLOB,               -- NULL once delivered
    delivered_at  REAL
);
CREATE INDEX IF NOT EXISTS qkd_keys_available
    ON qkd_keys (peer_site, initiator, seq) WHERE material IS NOT NULL;
CREATE INDEX IF NOT EXISTS qkd_keys_delivered
    ON qkd_keys (delivered_at) WHERE material IS NULL;
-- the counts status() reports, kept in the transaction that changes them, so status
-- never reads the (ever growing) delivered rows
CREATE TABLE IF NOT EXISTS pool_counts (
    peer_site  TEXT NOT NULL,
    initiator  INTEGER NOT NULL,
    available  INTEGER NOT NULL,
    delivered  INTEGER NOT NULL,
    PRIMARY KEY (peer_site, initiator)
);
-- batch IDs of deposits (KeyStore.add's batch_id): a depositor repeating a step after
-- a crash adds nothing, even once the keys' rows are purged
CREATE TABLE IF NOT EXISTS deposit_batches (
    batch_id  TEXT PRIMARY KEY,
    added_at  REAL NOT NULL
);
-- keys bound to SAEs (hybridkex.keydelivery.binding); a unit moves here from qkd_keys
CREATE TABLE IF NOT EXISTS bound_keys (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id       TEXT NOT NULL UNIQUE,
    peer_site    TEXT NOT NULL,
    master_side  INTEGER NOT NULL,   -- 1: handed to the master SAE here; 0: to slave SAEs
    binding      TEXT NOT NULL,      -- JSON ["master", "slave", ...]
    size_bits    INTEGER NOT NULL,
    units        TEXT NOT NULL,      -- JSON list of unit IDs, the key ID first
    waiting      TEXT NOT NULL,      -- JSON list of slave SAEs that have not had it yet
    state        INTEGER NOT NULL,   -- 0 pending, 1 open, 2 done
    material     BLOB,               -- NULL once done
    created_at   REAL NOT NULL,
    done_at      REAL
);
CREATE INDEX IF NOT EXISTS bound_keys_ready
    ON bound_keys (peer_site, binding, size_bits, seq) WHERE state = 1 AND master_side = 1;
CREATE INDEX IF NOT EXISTS bound_keys_closed
    ON bound_keys (state, done_at) WHERE state <> 1;
"""

_PRIVATE = stat.S_IRUSR | stat.S_IWUSR
_IDS_PER_QUERY = 500  # key IDs named in one SELECT (SQLite allows 999 parameters at least)


def _private_file(path: Path) -> None:
    """Create ``path`` 0600 if it is missing (O_CREAT with mode 0600 is not widened by
    any umask); narrow it to 0600 if it exists, is ours and others may read it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, _PRIVATE)
    except FileExistsError:
        try:
            st = path.stat()
        except OSError:
            return
        if st.st_uid == os.geteuid() and st.st_mode & 0o077:
            path.chmod(_PRIVATE)
        return
    os.close(fd)


class SQLiteKeyStore(KeyStore):
    """SQLite file store: WAL journal, ``synchronous=FULL``, ``secure_delete=ON``.

    Each operation is one ``BEGIN IMMEDIATE`` transaction, so concurrent threads and
    processes on the same file serialise, and a crash leaves either the state
    before the operation or the state after it.  Erased key material is overwritten
    with zeros in the database file (``secure_delete``); the write-ahead log keeps
    old pages until a checkpoint, which :meth:`purge_log` forces.
    """

    def __init__(self, site_id: str, path: str | Path, low_water: int = 64,
                 on_low_water: Callable[[StoreStatus], None] | None = None,
                 busy_timeout_s: float = 30.0) -> None:
        super().__init__(site_id, low_water, on_low_water)
        self.path = str(path)
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        if self.path != ":memory:" and not self.path.startswith("file:"):
            # SQLite gives -wal and -shm the mode of the database file (and fchmods
            # them to it), so a 0600 database keeps its companions 0600 too
            base = Path(self.path)
            _private_file(base)
            for companion in (Path(f"{base}-wal"), Path(f"{base}-shm")):
                if companion.exists():
                    _private_file(companion)
        self._connection().executescript(_SCHEMA)
        with self._transaction() as db:
            row = db.execute("SELECT value FROM store_meta WHERE name = 'site_id'").fetchone()
            if row is None:
                db.execute("INSERT INTO store_meta VALUES ('site_id', ?)", (site_id,))
            elif row[0] != site_id:
                raise InvalidParameter("this key store file belongs to another site")
            version = db.execute(
                "SELECT value FROM store_meta WHERE name = 'schema_version'").fetchone()
            if version is None:  # a new file, or one written before the counters
                db.execute("DELETE FROM pool_counts")
                db.execute(
                    "INSERT INTO pool_counts SELECT peer_site, initiator, "
                    "SUM(material IS NOT NULL), SUM(material IS NULL) FROM qkd_keys "
                    "GROUP BY peer_site, initiator")
                db.execute("INSERT INTO store_meta VALUES ('schema_version', ?)",
                           (SCHEMA_VERSION,))
            elif version[0] != SCHEMA_VERSION:
                raise InvalidParameter(f"this key store file has schema version {version[0]}, "
                                       f"this hybridkex uses {SCHEMA_VERSION}")

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA secure_delete=ON")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
            with self._connections_lock:
                self._connections.append(db)
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @staticmethod
    def _count(db: sqlite3.Connection, peer: str, initiator: int, available: int,
               delivered: int) -> None:
        db.execute(
            "INSERT INTO pool_counts VALUES (?, ?, ?, ?) ON CONFLICT (peer_site, initiator) "
            "DO UPDATE SET available = available + excluded.available, "
            "delivered = delivered + excluded.delivered",
            (peer, initiator, available, delivered))

    def _add(self, peer: str, keys: list[StoredKey], batch_id: str | None) -> bool:
        try:
            with self._transaction() as db:
                if batch_id is not None:
                    if db.execute("SELECT 1 FROM deposit_batches WHERE batch_id = ?",
                                  (batch_id,)).fetchone():
                        return False
                    db.execute("INSERT INTO deposit_batches VALUES (?, ?)",
                               (batch_id, time.time()))
                rows = [(str(uuid.UUID(k.key_id)), peer, int(k.initiator == self.site_id), k.key)
                        for k in keys]
                db.executemany(
                    "INSERT INTO qkd_keys (key_id, peer_site, initiator, material) "
                    "VALUES (?, ?, ?, ?)", rows)
                for initiator in (0, 1):
                    added = sum(1 for r in rows if r[2] == initiator)
                    if added:
                        self._count(db, peer, initiator, added, 0)
        except sqlite3.IntegrityError:
            raise InvalidParameter("a key ID is already in the store") from None
        return True

    def _forget_batch(self, batch_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM deposit_batches WHERE batch_id = ?", (batch_id,))

    def _erase(self, db: sqlite3.Connection, peer: str, initiator: int,
               key_ids: list[str]) -> None:
        now = time.time()
        db.executemany(
            "UPDATE qkd_keys SET material = NULL, delivered_at = ? WHERE key_id = ?",
            [(now, key_id) for key_id in key_ids])
        self._count(db, peer, initiator, -len(key_ids), len(key_ids))

    @staticmethod
    def _named(db: sqlite3.Connection, select: str, key_ids: list[str], params: tuple[Any, ...],
               missing: str) -> list[Any]:
        """The row ``select`` finds for each of ``key_ids``, in the order asked for;
        KeyNotAvailable(``missing``) unless every key ID has one.

        ``select`` names ``key_id`` as its first column (left out of the rows returned)
        and ends in ``key_id IN ({ids})``; ``params`` come before the IDs.  One query
        per :data:`_IDS_PER_QUERY` IDs, not one per ID: a sync round names hundreds.
        """
        found: dict[str, Any] = {}
        for start in range(0, len(key_ids), _IDS_PER_QUERY):
            chunk = key_ids[start:start + _IDS_PER_QUERY]
            for row in db.execute(select.format(ids=",".join("?" * len(chunk))),
                                  (*params, *chunk)):
                found[row[0]] = row[1:]
        try:
            return [found[key_id] for key_id in key_ids]
        except KeyError:
            raise KeyNotAvailable(missing) from None

    def _take_in(self, db: sqlite3.Connection, peer: str, units: int) -> list[tuple[str, bytes]]:
        rows = db.execute(
            "SELECT key_id, material FROM qkd_keys WHERE peer_site = ? AND initiator = 1 "
            "AND material IS NOT NULL ORDER BY seq LIMIT ?", (peer, units)).fetchall()
        if len(rows) < units:
            raise KeysExhausted(f"{len(rows)} keys available for {peer!r}, {units} needed")
        self._erase(db, peer, 1, [r[0] for r in rows])
        return [(r[0], bytes(r[1])) for r in rows]

    def _take(self, peer: str, units: int) -> list[tuple[str, bytes]]:
        with self._transaction() as db:
            return self._take_in(db, peer, units)

    def _fetch_in(self, db: sqlite3.Connection, peer: str, key_ids: list[str]) -> dict[str, bytes]:
        rows = self._named(db, "SELECT key_id, material FROM qkd_keys WHERE peer_site = ? "
                           "AND initiator = 0 AND material IS NOT NULL AND key_id IN ({ids})",
                           key_ids, (peer,), "a requested key ID is unknown or already delivered")
        self._erase(db, peer, 0, key_ids)
        return {key_id: bytes(row[0]) for key_id, row in zip(key_ids, rows, strict=True)}

    def _fetch(self, peer: str, key_ids: list[str]) -> dict[str, bytes]:
        with self._transaction() as db:
            return self._fetch_in(db, peer, key_ids)

    def status(self, peer: str) -> StoreStatus:
        counts = {initiator: (available, delivered) for initiator, available, delivered in
                  self._connection().execute(
                      "SELECT initiator, available, delivered FROM pool_counts "
                      "WHERE peer_site = ?", (peer,))}
        take, delivered_taken = counts.get(1, (0, 0))
        fetch, delivered_fetched = counts.get(0, (0, 0))
        return StoreStatus(self.site_id, peer, take, fetch, delivered_taken + delivered_fetched,
                           self.low_water)

    def peers(self) -> list[str]:
        rows = self._connection().execute(
            "SELECT DISTINCT peer_site FROM pool_counts ORDER BY peer_site").fetchall()
        return [r[0] for r in rows]

    # -- bound keys

    def _reserve(self, peer: str, tag: str, size_bits: int, units: int,
                 count: int) -> list[tuple[str, ...]]:
        now = time.time()
        with self._transaction() as db:
            taken = self._take_in(db, peer, units * count)
            groups = []
            rows = []
            for n in range(0, len(taken), units):
                part = taken[n:n + units]
                ids = tuple(i for i, _ in part)
                rows.append((ids[0], peer, tag, size_bits, json.dumps(ids), PENDING,
                             b"".join(m for _, m in part)[: size_bits // 8], now))
                groups.append(ids)
            db.executemany(
                "INSERT INTO bound_keys (key_id, peer_site, master_side, binding, size_bits, "
                "units, waiting, state, material, created_at) "
                "VALUES (?, ?, 1, ?, ?, ?, '[]', ?, ?, ?)", rows)
        return groups

    def _hand_out(self, db: sqlite3.Connection, rows: list[tuple[int, str, int, str, bytes]],
                  ) -> list[BoundRow]:
        db.executemany("UPDATE bound_keys SET material = NULL, state = ?, done_at = ? "
                       "WHERE seq = ?", [(DONE, time.time(), r[0]) for r in rows])
        return [(r[1], r[2], tuple(json.loads(r[3])), bytes(r[4])) for r in rows]

    def _confirm(self, peer: str, key_ids: list[str], hand_out: int) -> list[BoundRow]:
        with self._transaction() as db:
            rows = self._named(
                db, "SELECT key_id, seq, key_id, size_bits, units, material FROM bound_keys "
                "WHERE peer_site = ? AND master_side = 1 AND state = ? AND key_id IN ({ids})",
                key_ids, (peer, PENDING), "a key to confirm is not pending here")
            db.executemany("UPDATE bound_keys SET state = ? WHERE seq = ?",
                           [(OPEN, r[0]) for r in rows[hand_out:]])
            return self._hand_out(db, rows[:hand_out])

    def _take_bound(self, peer: str, tag: str, size_bits: int, count: int) -> list[BoundRow]:
        with self._transaction() as db:
            rows = db.execute(
                "SELECT seq, key_id, size_bits, units, material FROM bound_keys "
                "WHERE peer_site = ? AND binding = ? AND size_bits = ? AND state = 1 "
                "AND master_side = 1 ORDER BY seq LIMIT ?",
                (peer, tag, size_bits, count)).fetchall()
            if len(rows) < count:
                raise KeysExhausted(f"{len(rows)} reserved keys ready, {count} needed")
            return self._hand_out(db, rows)

    def _ready_count(self, peer: str, tag: str, size_bits: int) -> int:
        row = self._connection().execute(
            "SELECT COUNT(*) FROM bound_keys WHERE peer_site = ? AND binding = ? "
            "AND size_bits = ? AND state = 1 AND master_side = 1",
            (peer, tag, size_bits)).fetchone()
        return int(row[0])

    def _record(self, peer: str, rows: list[RecordRow]) -> None:
        now = time.time()
        with self._transaction() as db:
            # every unit of the batch in one pass (the batch names each unit once)
            try:
                material = self._fetch_in(db, peer, [u for row in rows for u in row[3]])
            except KeyNotAvailable:
                raise ReservationRefused(
                    "a reserved unit is unknown here, already bound or delivered, "
                    "or not the peer's to take") from None
            try:
                db.executemany(
                    "INSERT INTO bound_keys (key_id, peer_site, master_side, binding, "
                    "size_bits, units, waiting, state, material, created_at) "
                    "VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, ?)",
                    [(key_id, peer, tag, size, json.dumps(units), json.dumps(slaves), OPEN,
                      b"".join(material[u] for u in units)[: size // 8], now)
                     for key_id, tag, size, units, slaves in rows])
            except sqlite3.IntegrityError:
                raise ReservationRefused("a key ID is already bound here") from None

    def _deliver(self, peer: str, sae: str, masters: frozenset[str], key_ids: list[str],
                 expected: Expected | None) -> list[BoundRow]:
        with self._transaction() as db:
            rows = self._named(
                db, "SELECT key_id, seq, key_id, size_bits, units, material, binding, waiting "
                "FROM bound_keys WHERE peer_site = ? AND master_side = 0 AND key_id IN ({ids})",
                key_ids, (peer,), "a requested key ID is unknown or already delivered")
            waiting = [json.loads(r[6]) for r in rows]
            check_access([(Binding.from_tag(r[5]), sae in w, r[2], tuple(json.loads(r[3])))
                          for r, w in zip(rows, waiting, strict=True)], sae, masters, expected)
            out: list[BoundRow] = []
            now = time.time()
            for row, still in zip(rows, waiting, strict=True):
                still.remove(sae)
                out.append((row[1], row[2], tuple(json.loads(row[3])), bytes(row[4])))
                if still:
                    db.execute("UPDATE bound_keys SET waiting = ? WHERE seq = ?",
                               (json.dumps(still), row[0]))
                else:
                    db.execute("UPDATE bound_keys SET waiting = '[]', material = NULL, "
                               "state = ?, done_at = ? WHERE seq = ?", (DONE, now, row[0]))
            return out

    def _purge(self, cutoff: float) -> int:
        with self._transaction() as db:
            units = db.execute("DELETE FROM qkd_keys WHERE material IS NULL AND delivered_at < ?",
                               (cutoff,)).rowcount
            done = db.execute("DELETE FROM bound_keys WHERE state = ? AND done_at < ?",
                              (DONE, cutoff)).rowcount
            pending = db.execute("DELETE FROM bound_keys WHERE state = ? AND created_at < ?",
                                 (PENDING, cutoff)).rowcount
        return int(units + done + pending)

    def purge_log(self) -> None:
        """Checkpoint and truncate the write-ahead log, so erased keys leave no old pages."""
        self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._connections_lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()
