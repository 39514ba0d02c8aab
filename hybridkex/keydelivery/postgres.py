"""The QKD key store on PostgreSQL, for a KME run as several processes or hosts.

Same contract as :class:`~hybridkex.keydelivery.sqlite.SQLiteKeyStore`: keys in 256-bit
units, one pool per direction, ``take`` and ``fetch`` deliver all or nothing, and a
key's material is erased in the transaction that delivers it.  Open one with
``open_store("postgresql://user@host/db", site_id)`` or construct it directly; it
needs psycopg 3 (``pip install 'hybridkex[postgres]'``).

Counts.  ``status`` reads counter rows (``hybridkex_qkd_counts``) that every take,
fetch and deposit updates in its own transaction, spread over 16 shards per pool so
concurrent takers rarely wait for one row; it never reads the delivered rows.
Keys bound to SAEs (:mod:`hybridkex.keydelivery.binding`) live in
``hybridkex_qkd_bound``, changed in one transaction per operation with row locks.

Schema.  Tables created if absent (in ``schema`` if given, else the first
schema of the connection's ``search_path``): ``hybridkex_qkd_keys`` holds one row
per unit *per site*, keyed by ``(site_id, key_id)``, and ``hybridkex_qkd_meta`` the
schema version.  Every query names the store's ``site_id``, so the two sites of a
link (or any number of sites) can share one database without seeing each other's
rows: each holds its own copy of a key, which is delivered and erased separately.

Transactions.  Each operation is one transaction at ``READ COMMITTED``, set on the
connection rather than inherited from the server's default, with
``synchronous_commit = on``, so a delivery that returned is on disk (as far as the
server's own ``fsync`` setting allows).  ``take`` and ``fetch`` are each a single
statement run in autocommit mode, which PostgreSQL makes one transaction: the
statement locks, checks, erases and returns the old material, and commits when it
ends, all in one round trip; when its check fails it changes nothing.  READ
COMMITTED is what row locking needs: a statement that waited for a row lock
re-reads the row's newest version and re-checks its condition (``material IS NOT
NULL``), where REPEATABLE READ or SERIALIZABLE would fail with a serialisation
error instead.

``take`` locks the oldest available units with ``FOR UPDATE SKIP LOCKED ... ORDER
BY seq LIMIT n`` and erases them only if it got ``n``.  ``SKIP LOCKED`` lets any
number of takers (threads, processes, hosts) work on one pool at once: each skips
the rows another has locked and is in the middle of delivering, so two takers
never get the same key and never wait for each other.  The price is that a taker
can come up short while rows it skipped are still in flight; it then takes
nothing and, only if enough keys are committed as available, tries once more with
a plain ``FOR UPDATE`` (waiting for those rows: delivered by the other, they no
longer qualify; released, they are delivered here).  Waiting takers lock in
``seq`` order and skipping takers never wait, so takers cannot deadlock.
``KeysExhausted`` therefore means the keys really were not there.

``fetch`` locks exactly the requested rows with ``FOR UPDATE`` (no ``SKIP
LOCKED``: a fetcher must wait for a concurrent fetch of the same ID to finish,
then see it delivered), in ``key_id`` order so two fetchers cannot deadlock, and
erases them only if every one is still available; if any is unknown, delivered or
the peer's to fetch, nothing is changed.

Erasure on PostgreSQL is logical, and only logical: delivery is an ``UPDATE`` that
sets ``material`` to NULL, so no query can read a delivered key again.  It does not
overwrite the bytes.  PostgreSQL's MVCC keeps the old row version, material and
all, in the table's data file until ``VACUUM`` (or autovacuum, whenever it runs)
removes it; PostgreSQL does not promise to overwrite the space it frees, and
copies remain in the write-ahead log until its segments are recycled, in any base
backup, WAL archive or replica, and in disk blocks the file system has freed.
:meth:`PostgresKeyStore.purge` runs ``VACUUM`` on the key table (``full=True``:
``VACUUM FULL``, which rewrites the table into a new file, taking an exclusive
lock while it does).  Measured once on PostgreSQL 15 (ten keys delivered from a
one-page table, after ``CHECKPOINT``): before ``purge()`` all ten keys' bytes were
in the table file, after ``VACUUM`` none were, and after ``VACUUM FULL`` all ten
were still in ``pg_wal``.  For material that must not survive on disk, the
database must sit on encrypted storage whose key can be destroyed; the SQLite
backend's ``secure_delete`` goes further on its own file.

A take or fetch whose answer never arrives (the connection drops while it runs,
or the client dies) raises :class:`~hybridkex.keydelivery.KeySourceError` if
anyone is left to raise it; the server may still have finished the statement, and
the keys it delivered are then lost, which is safe: no key is ever delivered twice.
A lost connection is replaced on the next call.  Errors from the database become
``KeySourceError``; a lock held longer than ``lock_timeout_s`` by someone else
(a stuck fetcher) does too, rather than a wait without end.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from hybridkex.errors import BackendUnavailable, InvalidParameter
from hybridkex.keydelivery.binding import Binding
from hybridkex.keydelivery.errors import (
    KeyNotAvailable,
    KeysExhausted,
    KeySourceError,
    ReservationRefused,
)
from hybridkex.keydelivery.keys import StoredKey
from hybridkex.keydelivery.store import (
    BoundRow,
    Expected,
    KeyStore,
    RecordRow,
    StoreStatus,
    check_access,
)

try:
    import psycopg
    from psycopg import sql
except ImportError as exc:  # pragma: no cover - exercised where psycopg is absent
    raise BackendUnavailable(
        "the PostgreSQL key store needs psycopg 3: pip install 'hybridkex[postgres]'"
    ) from exc

__all__ = ["BOUND_TABLE", "COUNTS_TABLE", "KEYS_TABLE", "META_TABLE", "SCHEMA_VERSION",
           "PostgresKeyStore"]

KEYS_TABLE = "hybridkex_qkd_keys"
META_TABLE = "hybridkex_qkd_meta"
COUNTS_TABLE = "hybridkex_qkd_counts"
BOUND_TABLE = "hybridkex_qkd_bound"
BATCHES_TABLE = "hybridkex_qkd_batches"
SCHEMA_VERSION = "2"
"""1: the units alone; 2: adds the counters and the keys bound to SAEs (a version 1
schema is upgraded in place, once, when a store opens it)."""

COUNTER_SHARDS = 16
"""Each connection adds its deliveries to one of this many counter rows per pool
(``pg_backend_pid() % 16``), so concurrent takers rarely wait for each other's
counter row; :meth:`PostgresKeyStore.status` adds the shards up."""

_DDL = """
CREATE TABLE IF NOT EXISTS {meta} (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS {keys} (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY,
    site_id      TEXT NOT NULL,
    key_id       UUID NOT NULL,
    peer_site    TEXT NOT NULL,
    initiator    BOOLEAN NOT NULL,           -- true: this site takes it; false: the peer does
    material     BYTEA CHECK (octet_length(material) = 32),   -- NULL once delivered
    delivered_at TIMESTAMPTZ,
    PRIMARY KEY (site_id, key_id),
    CHECK ((material IS NULL) = (delivered_at IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS {index}
    ON {keys} (site_id, peer_site, initiator, seq) WHERE material IS NOT NULL;
CREATE INDEX IF NOT EXISTS {delivered_index}
    ON {keys} (site_id, delivered_at) WHERE material IS NULL;
CREATE TABLE IF NOT EXISTS {counts} (
    site_id    TEXT NOT NULL,
    peer_site  TEXT NOT NULL,
    initiator  BOOLEAN NOT NULL,
    shard      INTEGER NOT NULL,
    available  BIGINT NOT NULL,
    delivered  BIGINT NOT NULL,
    PRIMARY KEY (site_id, peer_site, initiator, shard)
);
CREATE TABLE IF NOT EXISTS {bound} (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY,
    site_id      TEXT NOT NULL,
    key_id       UUID NOT NULL,
    peer_site    TEXT NOT NULL,
    master_side  BOOLEAN NOT NULL,       -- true: handed to the master SAE here
    binding      TEXT NOT NULL,          -- JSON ["master", "slave", ...]
    size_bits    INTEGER NOT NULL,
    units        UUID[] NOT NULL,        -- the key ID first
    waiting      TEXT[] NOT NULL,        -- slave SAEs that have not had it yet
    state        SMALLINT NOT NULL,      -- 0 pending, 1 open, 2 done
    material     BYTEA,                  -- NULL once done
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    done_at      TIMESTAMPTZ,
    PRIMARY KEY (site_id, key_id)
);
-- batch IDs of deposits (KeyStore.add's batch_id): a depositor repeating a step after a
-- crash adds nothing, even once the keys' rows are purged
CREATE TABLE IF NOT EXISTS {batches} (
    site_id   TEXT NOT NULL,
    batch_id  TEXT NOT NULL,
    added_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, batch_id)
);
CREATE INDEX IF NOT EXISTS {ready_index}
    ON {bound} (site_id, peer_site, binding, size_bits, seq) WHERE state = 1 AND master_side;
CREATE INDEX IF NOT EXISTS {closed_index}
    ON {bound} (site_id, state, done_at) WHERE state <> 1;
"""

# Adds a statement's deliveries to this connection's counter shard; {initiator} is
# TRUE for take, FALSE for fetch.  Appended to the take and fetch statements as a
# last data-modifying CTE, so the counts change in the same transaction.
_COUNTED = """, counted AS (
    INSERT INTO {counts} (site_id, peer_site, initiator, shard, available, delivered)
    SELECT %(site)s, %(peer)s, {initiator}, pg_backend_pid() %% 16, -count(*), count(*)
    FROM erased HAVING count(*) > 0
    ON CONFLICT (site_id, peer_site, initiator, shard) DO UPDATE
    SET available = {counts}.available + EXCLUDED.available,
        delivered = {counts}.delivered + EXCLUDED.delivered
)"""

# Erases the units a take or fetch chose, only if there are enough of them ("enough"),
# and returns their key IDs: the statements' last step before {counted}.  The erasing
# UPDATE names its rows by primary key (key_id = ANY(...)) rather than joining, so that
# the planner looks them up by index whatever its estimates.
_ERASED = """, erased AS (
    UPDATE {keys} SET material = NULL, delivered_at = now()
    WHERE site_id = %(site)s AND key_id = ANY(ARRAY(SELECT key_id FROM chosen))
      AND (SELECT ok FROM enough)
    RETURNING key_id
)"""

# Take, in one statement (so one transaction, one round trip): lock the oldest
# available units, and only if there are n of them erase them and return the old
# material; otherwise change nothing and return no rows.  {lock} is FOR UPDATE SKIP
# LOCKED, or FOR UPDATE for the second attempt.  The result joins two small CTEs.
_TAKE = """
WITH chosen AS (
    SELECT key_id, seq, material FROM {keys}
    WHERE site_id = %(site)s AND peer_site = %(peer)s AND initiator
      AND material IS NOT NULL
    ORDER BY seq LIMIT %(n)s
    {lock}
), enough AS (
    SELECT count(*) = %(n)s AS ok FROM chosen
){erased}{counted}
SELECT chosen.seq, chosen.key_id, chosen.material FROM chosen JOIN erased USING (key_id)
"""

# Fetch, in one statement: lock exactly the named units (in key_id order, so
# fetchers cannot deadlock), and only if every one is still available erase them
# and return the old material; otherwise change nothing.  A row that was locked by
# a concurrent fetch is read again, as that fetch left it, once the lock is free.
# "material IS NOT NULL" is left out of the WHERE on purpose: it would let the
# planner pick the partial index of available keys and filter a whole pool instead
# of looking up the primary key.
_FETCH = """
WITH chosen AS (
    SELECT key_id, material FROM {keys}
    WHERE site_id = %(site)s AND key_id = ANY(%(ids)s::uuid[])
      AND peer_site = %(peer)s AND NOT initiator
    ORDER BY key_id
    FOR UPDATE
), enough AS (
    SELECT count(*) FILTER (WHERE material IS NOT NULL) = %(n)s AS ok FROM chosen
){erased}{counted}
SELECT chosen.key_id, chosen.material FROM chosen JOIN erased USING (key_id)
"""

_AVAILABLE = """
SELECT count(*) FROM {keys}
WHERE site_id = %(site)s AND peer_site = %(peer)s AND initiator AND material IS NOT NULL
"""

_STATUS = """
SELECT COALESCE(sum(available) FILTER (WHERE initiator), 0)::bigint,
       COALESCE(sum(available) FILTER (WHERE NOT initiator), 0)::bigint,
       COALESCE(sum(delivered), 0)::bigint
FROM {counts} WHERE site_id = %(site)s AND peer_site = %(peer)s
"""

_ADD_COUNTS = """
INSERT INTO {counts} (site_id, peer_site, initiator, shard, available, delivered)
VALUES (%(site)s, %(peer)s, %(initiator)s, pg_backend_pid() %% 16, %(n)s, 0)
ON CONFLICT (site_id, peer_site, initiator, shard) DO UPDATE
SET available = {counts}.available + EXCLUDED.available
"""

_MIGRATE_COUNTS = """
INSERT INTO {counts} (site_id, peer_site, initiator, shard, available, delivered)
SELECT site_id, peer_site, initiator, 0, count(*) FILTER (WHERE material IS NOT NULL),
       count(*) FILTER (WHERE material IS NULL)
FROM {keys} GROUP BY site_id, peer_site, initiator
ON CONFLICT DO NOTHING
"""


class PostgresKeyStore(KeyStore):
    """PostgreSQL store: one READ COMMITTED transaction (for take and fetch, one
    statement) per operation, row locks, ``SKIP LOCKED`` takers.  See the module
    documentation for what erasure means here.

    ``dsn`` is a libpq connection string or URL.  ``schema``, if given, is created if
    absent and holds the tables; otherwise they go where ``search_path`` points.
    Each thread uses its own connection, opened on first use.
    """

    def __init__(self, site_id: str, dsn: str, low_water: int = 64,
                 on_low_water: Callable[[StoreStatus], None] | None = None, *,
                 schema: str | None = None, lock_timeout_s: float = 30.0,
                 connect_timeout_s: float = 10.0,
                 application_name: str = "hybridkex-keystore",
                 prepare_threshold: int | None = 5) -> None:
        super().__init__(site_id, low_water, on_low_water)
        if schema is not None and (not isinstance(schema, str) or not schema):
            raise InvalidParameter("schema must be a non-empty string or None")
        self.schema = schema
        self._dsn = dsn
        self._lock_timeout_ms = max(1, int(lock_timeout_s * 1000))
        self._connect_timeout_s = max(1, int(connect_timeout_s))
        self._application_name = application_name
        self._prepare_threshold = prepare_threshold
        self._local = threading.local()
        self._connections: list[psycopg.Connection[Any]] = []
        self._connections_lock = threading.Lock()

        def table(name: str) -> sql.Composable:
            if schema is None:
                return sql.Identifier(name)
            return sql.Identifier(schema, name)

        self._keys_table = table(KEYS_TABLE)
        self._counts_table = table(COUNTS_TABLE)
        self._bound_table = table(BOUND_TABLE)
        names = {"keys": self._keys_table, "meta": table(META_TABLE),
                 "counts": self._counts_table, "bound": self._bound_table,
                 "batches": table(BATCHES_TABLE),
                 "index": sql.Identifier(f"{KEYS_TABLE}_available"),
                 "delivered_index": sql.Identifier(f"{KEYS_TABLE}_delivered"),
                 "ready_index": sql.Identifier(f"{BOUND_TABLE}_ready"),
                 "closed_index": sql.Identifier(f"{BOUND_TABLE}_closed")}
        self._names = names

        def counted(initiator: bool) -> sql.Composed:
            return sql.SQL(_COUNTED).format(counts=self._counts_table,
                                            initiator=sql.SQL("TRUE" if initiator else "FALSE"))

        erased = sql.SQL(_ERASED).format(keys=self._keys_table)
        self._sql_take_skip = sql.SQL(_TAKE).format(
            lock=sql.SQL("FOR UPDATE SKIP LOCKED"), keys=self._keys_table, erased=erased,
            counted=counted(True))
        self._sql_take_wait = sql.SQL(_TAKE).format(
            lock=sql.SQL("FOR UPDATE"), keys=self._keys_table, erased=erased,
            counted=counted(True))
        self._sql_fetch = sql.SQL(_FETCH).format(keys=self._keys_table, erased=erased,
                                                 counted=counted(False))
        self._sql_available = sql.SQL(_AVAILABLE).format(keys=self._keys_table)
        self._sql_status = sql.SQL(_STATUS).format(counts=self._counts_table)
        self._sql_add_counts = sql.SQL(_ADD_COUNTS).format(counts=self._counts_table)
        self._create_schema(names)

    # -- connections and transactions ---------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if conn is not None:
            self._forget(conn)
        try:
            conn = psycopg.connect(
                self._dsn, autocommit=True, connect_timeout=self._connect_timeout_s,
                application_name=self._application_name,
                prepare_threshold=self._prepare_threshold)
            conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
            conn.execute("SELECT set_config('synchronous_commit', 'on', false), "
                         "set_config('default_transaction_isolation', 'read committed', false), "
                         "set_config('lock_timeout', %s, false)",
                         (f"{self._lock_timeout_ms}ms",))
        except psycopg.Error as exc:
            raise KeySourceError(f"cannot connect to the key store database: {exc}") from None
        self._local.conn = conn
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _forget(self, conn: psycopg.Connection[Any]) -> None:
        with self._connections_lock:
            if conn in self._connections:
                self._connections.remove(conn)
        conn.close()
        self._local.conn = None

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction; a database failure becomes KeySourceError, a lost
        connection is replaced on the next call."""
        conn = self._connection()
        try:
            with conn.transaction():
                yield conn
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                self._forget(conn)
            raise KeySourceError(f"key store database error: {type(exc).__name__}: {exc}") \
                from None

    def _execute(self, query: sql.Composed, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """One statement, which is one transaction (the connection is in autocommit):
        its rows, or KeySourceError; a lost connection is replaced on the next call."""
        conn = self._connection()
        try:
            return conn.execute(query, params).fetchall()
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                self._forget(conn)
            raise KeySourceError(f"key store database error: {type(exc).__name__}: {exc}") \
                from None

    def _create_schema(self, names: dict[str, sql.Composable]) -> None:
        conn = self._connection()
        try:
            with conn.transaction():
                # concurrent first starts must not race on CREATE TABLE IF NOT EXISTS
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                             (f"hybridkex_qkd_schema:{self.schema or ''}",))
                if self.schema is not None:
                    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                        sql.Identifier(self.schema)))
                conn.execute(sql.SQL(_DDL).format(**names))
                conn.execute(sql.SQL(
                    "INSERT INTO {meta} VALUES ('schema_version', %s) "
                    "ON CONFLICT (name) DO NOTHING").format(**names), (SCHEMA_VERSION,))
                row = conn.execute(sql.SQL(
                    "SELECT value FROM {meta} WHERE name = 'schema_version'").format(
                        **names)).fetchone()
                if row is not None and row[0] == "1":  # upgrade: count the existing rows once
                    conn.execute(sql.SQL(_MIGRATE_COUNTS).format(**names))
                    conn.execute(sql.SQL(
                        "UPDATE {meta} SET value = %s WHERE name = 'schema_version'").format(
                            **names), (SCHEMA_VERSION,))
                    row = (SCHEMA_VERSION,)
        except psycopg.Error as exc:
            raise KeySourceError(f"cannot create the key store tables: {exc}") from None
        if row is None or row[0] != SCHEMA_VERSION:
            raise InvalidParameter(
                f"the key store tables have schema version {row and row[0]!r}, "
                f"this hybridkex uses {SCHEMA_VERSION}")

    # -- the backend operations ------------------------------------------------------------

    def _add(self, peer: str, keys: list[StoredKey], batch_id: str | None) -> bool:
        if not keys and batch_id is None:
            return True
        columns = sql.SQL(
            "COPY {} (site_id, key_id, peer_site, initiator, material) FROM STDIN").format(
                self._keys_table)
        with self._transaction() as conn:
            if batch_id is not None and conn.execute(self._q(
                    "INSERT INTO {batches} (site_id, batch_id) VALUES (%s, %s) "
                    "ON CONFLICT DO NOTHING"), (self.site_id, batch_id)).rowcount == 0:
                return False
            try:
                with conn.cursor() as cur, cur.copy(columns) as copy:
                    copy.set_types(["text", "uuid", "text", "bool", "bytea"])
                    for k in keys:
                        copy.write_row((self.site_id, uuid.UUID(k.key_id), peer,
                                        k.initiator == self.site_id, k.key))
            except psycopg.errors.UniqueViolation:
                raise InvalidParameter("a key ID is already in the store") from None
            for initiator in (True, False):
                added = sum(1 for k in keys if (k.initiator == self.site_id) == initiator)
                if added:
                    conn.execute(self._sql_add_counts, {"site": self.site_id, "peer": peer,
                                                        "initiator": initiator, "n": added})
        self._refresh_statistics(len(keys))
        return True

    def _forget_batch(self, batch_id: str) -> None:
        with self._transaction() as conn:
            conn.execute(self._q("DELETE FROM {batches} WHERE site_id = %s AND batch_id = %s"),
                         (self.site_id, batch_id))

    def _refresh_statistics(self, added: int) -> None:
        """ANALYZE the key table when a deposit at least doubles it since its last
        statistics (or it has none), so the planner looks keys up by primary key
        rather than trusting the estimates of an empty table.  Amortised, this is a
        constant cost per key; autovacuum keeps the statistics of a steady pool."""
        conn = self._connection()
        try:
            row = conn.execute(sql.SQL("SELECT reltuples FROM pg_class WHERE oid = %s::regclass"),
                               (self._keys_table.as_string(conn),)).fetchone()
            if row is not None and (row[0] < 0 or added >= row[0]):
                conn.execute(sql.SQL("ANALYZE {}").format(self._keys_table))
        except psycopg.Error:  # not the table's owner: plans may be slower, nothing worse
            if conn.broken or conn.closed:
                self._forget(conn)

    def _take(self, peer: str, units: int) -> list[tuple[str, bytes]]:
        params = {"site": self.site_id, "peer": peer, "n": units}
        rows = self._execute(self._sql_take_skip, params)
        if len(rows) == units:
            return _in_order(rows)
        # Short, so nothing was taken.  If enough keys are committed as available,
        # some are locked by takers still in flight: wait for those rows rather
        # than report exhaustion.
        available = self._execute(self._sql_available, params)[0][0]
        if available >= units:
            rows = self._execute(self._sql_take_wait, params)
            if len(rows) == units:
                return _in_order(rows)
            available = self._execute(self._sql_available, params)[0][0]
        raise KeysExhausted(f"{available} keys available for {peer!r}, {units} needed")

    def _fetch(self, peer: str, key_ids: list[str]) -> dict[str, bytes]:
        params = {"site": self.site_id, "peer": peer, "ids": key_ids, "n": len(key_ids)}
        rows = self._execute(self._sql_fetch, params)
        if len(rows) != len(key_ids):
            raise KeyNotAvailable("a requested key ID is unknown or already delivered")
        return {str(key_id): bytes(material) for key_id, material in rows}

    def status(self, peer: str) -> StoreStatus:
        take, fetch, delivered = self._execute(
            self._sql_status, {"site": self.site_id, "peer": peer})[0]
        return StoreStatus(self.site_id, peer, take, fetch, delivered, self.low_water)

    def peers(self) -> list[str]:
        rows = self._execute(
            sql.SQL("SELECT DISTINCT peer_site FROM {} WHERE site_id = %(site)s "
                    "ORDER BY peer_site").format(self._counts_table), {"site": self.site_id})
        return [r[0] for r in rows]

    # -- bound keys (one transaction each, several statements, row locks)

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(**self._names)

    def _take_units(self, conn: psycopg.Connection[Any], peer: str,
                    units: int) -> list[tuple[str, bytes]]:
        params = {"site": self.site_id, "peer": peer, "n": units}
        rows = conn.execute(self._sql_take_skip, params).fetchall()
        if len(rows) != units:
            rows = conn.execute(self._sql_take_wait, params).fetchall()
        if len(rows) != units:
            raise KeysExhausted(f"fewer than {units} keys available for {peer!r}")
        return _in_order(rows)

    def _reserve(self, peer: str, tag: str, size_bits: int, units: int,
                 count: int) -> list[tuple[str, ...]]:
        with self._transaction() as conn:
            taken = self._take_units(conn, peer, units * count)
            groups, rows = [], []
            for n in range(0, len(taken), units):
                part = taken[n:n + units]
                ids = tuple(i for i, _ in part)
                groups.append(ids)
                rows.append((self.site_id, ids[0], peer, tag, size_bits, list(ids),
                             b"".join(m for _, m in part)[: size_bits // 8]))
            with conn.cursor() as cur:
                cur.executemany(self._q(
                    "INSERT INTO {bound} (site_id, key_id, peer_site, master_side, binding, "
                    "size_bits, units, waiting, state, material) VALUES "
                    "(%s, %s::uuid, %s, TRUE, %s, %s, %s::uuid[], '{{}}', 0, %s)"), rows)
        return groups

    def _hand_out(self, conn: psycopg.Connection[Any],
                  rows: list[tuple[Any, ...]]) -> list[BoundRow]:
        if rows:
            conn.execute(self._q("UPDATE {bound} SET state = 2, material = NULL, done_at = now() "
                                 "WHERE site_id = %s AND seq = ANY(%s)"),
                         (self.site_id, [r[0] for r in rows]))
        return [(str(r[1]), r[2], tuple(str(u) for u in r[3]), bytes(r[4])) for r in rows]

    def _lock_named(self, conn: psycopg.Connection[Any], select: str, peer: str,
                    key_ids: list[str], missing: str) -> list[tuple[Any, ...]]:
        """The rows of ``key_ids`` that ``select`` (a bound-key query taking the site,
        the key IDs and the peer, with the key ID as second column) locks in key ID
        order, so two callers cannot deadlock, returned in the order asked for;
        KeyNotAvailable(``missing``) unless every key ID has its row."""
        found = conn.execute(self._q(select), (self.site_id, key_ids, peer)).fetchall()
        if len(found) != len(key_ids):
            raise KeyNotAvailable(missing)
        by_id = {str(r[1]): r for r in found}
        return [by_id[k] for k in key_ids]

    def _confirm(self, peer: str, key_ids: list[str], hand_out: int) -> list[BoundRow]:
        with self._transaction() as conn:
            rows = self._lock_named(
                conn, "SELECT seq, key_id, size_bits, units, material FROM {bound} "
                "WHERE site_id = %s AND key_id = ANY(%s::uuid[]) AND peer_site = %s "
                "AND master_side AND state = 0 ORDER BY key_id FOR UPDATE",
                peer, key_ids, "a key to confirm is not pending here")
            if rows[hand_out:]:
                conn.execute(self._q("UPDATE {bound} SET state = 1 WHERE site_id = %s "
                                     "AND seq = ANY(%s)"),
                             (self.site_id, [r[0] for r in rows[hand_out:]]))
            return self._hand_out(conn, rows[:hand_out])

    def _take_bound(self, peer: str, tag: str, size_bits: int, count: int) -> list[BoundRow]:
        select = ("SELECT seq, key_id, size_bits, units, material FROM {bound} "
                  "WHERE site_id = %s AND peer_site = %s AND binding = %s AND size_bits = %s "
                  "AND state = 1 AND master_side ORDER BY seq LIMIT %s ")
        params = (self.site_id, peer, tag, size_bits, count)
        with self._transaction() as conn:
            rows = conn.execute(self._q(select + "FOR UPDATE SKIP LOCKED"), params).fetchall()
            if len(rows) != count:
                rows = conn.execute(self._q(select + "FOR UPDATE"), params).fetchall()
            if len(rows) != count:
                raise KeysExhausted(f"fewer than {count} reserved keys ready")
            return self._hand_out(conn, rows)

    def _ready_count(self, peer: str, tag: str, size_bits: int) -> int:
        rows = self._execute(self._q(
            "SELECT count(*) FROM {bound} WHERE site_id = %(site)s AND peer_site = %(peer)s "
            "AND binding = %(tag)s AND size_bits = %(size)s AND state = 1 AND master_side"),
            {"site": self.site_id, "peer": peer, "tag": tag, "size": size_bits})
        return int(rows[0][0])

    def _record(self, peer: str, rows: list[RecordRow]) -> None:
        flat = [u for _, _, _, units, _ in rows for u in units]
        with self._transaction() as conn:
            got = conn.execute(self._sql_fetch, {"site": self.site_id, "peer": peer,
                                                 "ids": flat, "n": len(flat)}).fetchall()
            if len(got) != len(flat):
                raise ReservationRefused(
                    "a reserved unit is unknown here, already bound or delivered, "
                    "or not the peer's to take")
            material = {str(k): bytes(m) for k, m in got}
            try:
                with conn.cursor() as cur:
                    cur.executemany(self._q(
                        "INSERT INTO {bound} (site_id, key_id, peer_site, master_side, binding, "
                        "size_bits, units, waiting, state, material) VALUES "
                        "(%s, %s::uuid, %s, FALSE, %s, %s, %s::uuid[], %s, 1, %s)"),
                        [(self.site_id, key_id, peer, tag, size, list(units), list(slaves),
                          b"".join(material[u] for u in units)[: size // 8])
                         for key_id, tag, size, units, slaves in rows])
            except psycopg.errors.UniqueViolation:
                raise ReservationRefused("a key ID is already bound here") from None

    def _deliver(self, peer: str, sae: str, masters: frozenset[str], key_ids: list[str],
                 expected: Expected | None) -> list[BoundRow]:
        with self._transaction() as conn:
            rows = self._lock_named(
                conn, "SELECT seq, key_id, size_bits, units, material, binding, waiting "
                "FROM {bound} WHERE site_id = %s AND key_id = ANY(%s::uuid[]) "
                "AND peer_site = %s AND NOT master_side ORDER BY key_id FOR UPDATE",
                peer, key_ids, "a requested key ID is unknown or already delivered")
            check_access([(Binding.from_tag(r[5]), sae in r[6], r[2],
                           tuple(str(u) for u in r[3])) for r in rows], sae, masters, expected)
            out: list[BoundRow] = []
            for row in rows:
                still = [s for s in row[6] if s != sae]
                out.append((str(row[1]), row[2], tuple(str(u) for u in row[3]), bytes(row[4])))
                if still:
                    conn.execute(self._q("UPDATE {bound} SET waiting = %s WHERE site_id = %s "
                                         "AND seq = %s"), (still, self.site_id, row[0]))
                else:
                    conn.execute(self._q("UPDATE {bound} SET waiting = '{{}}', material = NULL, "
                                         "state = 2, done_at = now() WHERE site_id = %s "
                                         "AND seq = %s"), (self.site_id, row[0]))
            return out

    def _purge(self, cutoff: float) -> int:
        with self._transaction() as conn:
            removed = 0
            for text in (
                    "DELETE FROM {keys} WHERE site_id = %s AND material IS NULL "
                    "AND delivered_at < to_timestamp(%s)",
                    "DELETE FROM {bound} WHERE site_id = %s AND state = 2 "
                    "AND done_at < to_timestamp(%s)",
                    "DELETE FROM {bound} WHERE site_id = %s AND state = 0 "
                    "AND created_at < to_timestamp(%s)"):
                removed += conn.execute(self._q(text), (self.site_id, cutoff)).rowcount
        return removed

    def purge(self, full: bool = False) -> None:
        """``VACUUM`` the key table, removing the old row versions that still hold the
        material of delivered keys (``full=True``: ``VACUUM FULL``, which rewrites the
        table and locks it meanwhile).  Needs the table's owner.  WAL segments, backups
        and replicas are out of its reach; see the module documentation."""
        conn = self._connection()
        command = sql.SQL("VACUUM (FULL) {}" if full else "VACUUM {}").format(self._keys_table)
        try:
            conn.execute(command)  # autocommit: VACUUM cannot run inside a transaction
        except psycopg.Error as exc:
            raise KeySourceError(f"VACUUM of the key table failed: {exc}") from None

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


def _in_order(rows: list[tuple[Any, ...]]) -> list[tuple[str, bytes]]:
    return [(str(key_id), bytes(material)) for _, key_id, material in sorted(rows)]
