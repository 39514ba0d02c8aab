"""The deposit journal: one end's record of rounds whose keys are not yet in its store.

A small SQLite file in the site directory (``qkd-link-<peer>.db``, mode 0600, WAL,
``synchronous=FULL``, ``secure_delete``), owned by the link and separate from the key
store: the store only ever receives units that both ends have committed to
(:mod:`hybridkex.qkd.network.deposit`).  The journal holds a round's units, key
material included, from the moment this end must be able to finish the round after a
crash until its store holds them; then the material is erased and a tombstone (round
ID and final state) remains, so a round is never deposited twice.

States (one byte, also on the wire in :class:`~.control.LinkState`):

===========  =====  ===========================================================
state        end    meaning
===========  =====  ===========================================================
PENDING      Bob    distilled and confirmed; Alice has not decided
HALF         Bob    Alice decided; the units Alice's site initiates are in Bob's store
DECIDED      Alice  Alice decided to commit (after Bob's Prepared)
ADDED        Alice  every unit is in Alice's store
DONE         both   every unit is in this end's store; material erased
ABORTED      Bob    Alice never decided; the round is discarded; material erased
===========  =====  ===========================================================
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hybridkex.keydelivery.keys import StoredKey
from hybridkex.qkd.errors import JournalError

__all__ = ["ABORTED", "ADDED", "DECIDED", "DONE", "HALF", "OPEN_STATES", "PENDING",
           "DepositJournal"]

PENDING, HALF, DECIDED, ADDED, DONE, ABORTED = 1, 2, 3, 4, 5, 6
OPEN_STATES = (PENDING, HALF, DECIDED, ADDED)
KEPT_TOMBSTONES = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (
    round_id  BLOB PRIMARY KEY,
    state     INTEGER NOT NULL,
    digest    BLOB NOT NULL,
    created   REAL NOT NULL,
    seq       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS units (
    round_id  BLOB NOT NULL,
    position  INTEGER NOT NULL,
    key_id    TEXT NOT NULL,
    initiator TEXT NOT NULL,
    material  BLOB NOT NULL,
    PRIMARY KEY (round_id, position)
);
"""


class DepositJournal:
    """The journal file of one link end (one peer)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        with self._errors():
            if not self.path.exists():
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.close(fd)
            os.chmod(self.path, 0o600)
            self._db = sqlite3.connect(str(self.path), isolation_level=None,
                                       check_same_thread=False, timeout=30)
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.execute("PRAGMA secure_delete=ON")
                self._db.executescript(_SCHEMA)
                # a kill after a round's erasure and before its checkpoint leaves the
                # material in the log: clear it now
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except BaseException:
                self._db.close()
                raise
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    os.chmod(side, 0o600)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """A database failure as one typed error that names the file."""
        try:
            yield
        except sqlite3.Error as exc:
            raise JournalError(f"deposit journal {self.path}: {exc}") from None

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors():
            yield self._db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def record(self, round_id: bytes, state: int, digest: bytes,
               keys: Sequence[StoredKey]) -> None:
        """Hold ``keys`` for ``round_id`` in ``state`` (PENDING at Bob, DECIDED at Alice)."""
        with self._transaction() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM rounds").fetchone()[0]
            db.execute("INSERT INTO rounds VALUES (?, ?, ?, ?, ?)",
                       (round_id, state, digest, time.time(), seq))
            db.executemany("INSERT INTO units VALUES (?, ?, ?, ?, ?)",
                           [(round_id, i, k.key_id, k.initiator, k.key)
                            for i, k in enumerate(keys)])

    def state(self, round_id: bytes) -> int | None:
        with self._read() as db:
            row = db.execute("SELECT state FROM rounds WHERE round_id = ?",
                                   (round_id,)).fetchone()
        return None if row is None else int(row[0])

    def digest(self, round_id: bytes) -> bytes | None:
        with self._read() as db:
            row = db.execute("SELECT digest FROM rounds WHERE round_id = ?",
                                   (round_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def set_state(self, round_id: bytes, state: int) -> None:
        """Move a round on; DONE and ABORTED erase its material, from the write-ahead log
        too (``secure_delete`` zeroes the database's pages, but the log keeps the old
        ones until a checkpoint)."""
        with self._transaction() as db:
            db.execute("UPDATE rounds SET state = ? WHERE round_id = ?", (state, round_id))
            if state in (DONE, ABORTED):
                db.execute("DELETE FROM units WHERE round_id = ?", (round_id,))
                db.execute("DELETE FROM rounds WHERE state IN (?, ?) AND seq <= "
                           "(SELECT MAX(seq) FROM rounds) - ?", (DONE, ABORTED, KEPT_TOMBSTONES))
        if state in (DONE, ABORTED):
            with self._read() as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def units(self, round_id: bytes) -> list[StoredKey]:
        with self._read() as db:
            rows = db.execute(
                "SELECT key_id, material, initiator FROM units WHERE round_id = ? "
                "ORDER BY position", (round_id,)).fetchall()
        return [StoredKey(r[0], bytes(r[1]), r[2]) for r in rows]

    def open_rounds(self) -> list[tuple[bytes, int, bytes]]:
        """(round ID, state, digest) of every unfinished round, oldest first."""
        with self._read() as db:
            rows = db.execute(
                "SELECT round_id, state, digest FROM rounds WHERE state IN (?, ?, ?, ?) "
                "ORDER BY seq", OPEN_STATES).fetchall()
        return [(bytes(r[0]), int(r[1]), bytes(r[2])) for r in rows]

    def close(self) -> None:
        with self._read() as db:
            db.close()
