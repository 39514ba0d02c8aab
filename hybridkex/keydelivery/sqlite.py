"""The SQLite key store: the embedded default, one file per site (``keys.db``)."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hybridkex.errors import InvalidParameter
from hybridkex.keydelivery.errors import KeyNotAvailable, KeysExhausted
from hybridkex.keydelivery.keys import StoredKey
from hybridkex.keydelivery.store import KeyStore, StoreStatus

__all__ = ["SQLiteKeyStore"]


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
"""


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
        self._connection().executescript(_SCHEMA)
        with self._transaction() as db:
            row = db.execute("SELECT value FROM store_meta WHERE name = 'site_id'").fetchone()
            if row is None:
                db.execute("INSERT INTO store_meta VALUES ('site_id', ?)", (site_id,))
            elif row[0] != site_id:
                raise InvalidParameter("this key store file belongs to another site")

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

    def _add(self, peer: str, keys: list[StoredKey]) -> None:
        try:
            with self._transaction() as db:
                db.executemany(
                    "INSERT INTO qkd_keys (key_id, peer_site, initiator, material) "
                    "VALUES (?, ?, ?, ?)",
                    [(str(uuid.UUID(k.key_id)), peer, int(k.initiator == self.site_id), k.key)
                     for k in keys])
        except sqlite3.IntegrityError:
            raise InvalidParameter("a key ID is already in the store") from None

    def _erase(self, db: sqlite3.Connection, key_ids: list[str]) -> None:
        now = time.time()
        db.executemany(
            "UPDATE qkd_keys SET material = NULL, delivered_at = ? WHERE key_id = ?",
            [(now, key_id) for key_id in key_ids])

    def _take(self, peer: str, units: int) -> list[tuple[str, bytes]]:
        with self._transaction() as db:
            rows = db.execute(
                "SELECT key_id, material FROM qkd_keys WHERE peer_site = ? AND initiator = 1 "
                "AND material IS NOT NULL ORDER BY seq LIMIT ?", (peer, units)).fetchall()
            if len(rows) < units:
                raise KeysExhausted(f"{len(rows)} keys available for {peer!r}, {units} needed")
            self._erase(db, [r[0] for r in rows])
        return [(r[0], bytes(r[1])) for r in rows]

    def _fetch(self, peer: str, key_ids: list[str]) -> dict[str, bytes]:
        with self._transaction() as db:
            found: dict[str, bytes] = {}
            for key_id in key_ids:
                row = db.execute(
                    "SELECT material FROM qkd_keys WHERE key_id = ? AND peer_site = ? "
                    "AND initiator = 0 AND material IS NOT NULL", (key_id, peer)).fetchone()
                if row is None:
                    raise KeyNotAvailable("a requested key ID is unknown or already delivered")
                found[key_id] = bytes(row[0])
            self._erase(db, key_ids)
        return found

    def status(self, peer: str) -> StoreStatus:
        db = self._connection()
        take, fetch, delivered = db.execute(
            "SELECT "
            "COALESCE(SUM(initiator = 1 AND material IS NOT NULL), 0), "
            "COALESCE(SUM(initiator = 0 AND material IS NOT NULL), 0), "
            "COALESCE(SUM(material IS NULL), 0) "
            "FROM qkd_keys WHERE peer_site = ?", (peer,)).fetchone()
        return StoreStatus(self.site_id, peer, take, fetch, delivered, self.low_water)

    def peers(self) -> list[str]:
        rows = self._connection().execute(
            "SELECT DISTINCT peer_site FROM qkd_keys ORDER BY peer_site").fetchall()
        return [r[0] for r in rows]

    def purge_log(self) -> None:
        """Checkpoint and truncate the write-ahead log, so erased keys leave no old pages."""
        self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._connections_lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()
