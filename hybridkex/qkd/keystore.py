"""The QKD key store: keys shared by two sites, each delivered exactly once.

Both sites of a link hold the same keys under the same UUID key IDs.  Every key is
assigned, when it is deposited, to the site that may *take* it (the initiator of a
session); the other site may only *fetch* it by ID (the responder).  Splitting the
pool by direction means two sites opening sessions to each other at the same time
can never both hand out one key.

A key moves ``available -> delivered`` once, atomically, and its material is erased
in the same transaction: there is no state in which a delivered key can be read
again.  A crash after the commit but before the caller saw the key loses that key,
which is safe; delivering it twice never happens.

Keys are stored as 256-bit units.  A request for another size is served as ETSI GS
QKD 014 allows: a shorter key is the first bits of one unit (the rest is erased
with it), a longer one the concatenation of consecutive units cut to length.  The
first unit's ID is the key ID; the others travel as the key's ``extension`` IDs, so
the responder assembles the same bits.

Backends: :class:`MemoryKeyStore` (tests), :class:`SQLiteKeyStore` (the embedded
default: WAL, ``synchronous=FULL``, ``secure_delete``), and
:class:`~hybridkex.qkd.keystore_postgres.PostgresKeyStore` for a KME run as several
processes or hosts (needs ``pip install 'hybridkex[postgres]'``).  ``open_store(url)``
opens one from ``memory:``, ``sqlite:///path`` or ``postgresql://...``.
"""

from __future__ import annotations

import abc
import collections
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hybridkex.errors import HybridKexError, InvalidParameter

__all__ = [
    "UNIT_BITS",
    "DeliveredKey",
    "KeyNotAvailable",
    "KeySourceError",
    "KeyStore",
    "KeysExhausted",
    "MemoryKeyStore",
    "SQLiteKeyStore",
    "StoreStatus",
    "StoredKey",
    "key_id_bytes",
    "key_id_text",
    "open_store",
]

UNIT_BITS = 256
UNIT_BYTES = UNIT_BITS // 8
MAX_KEY_BITS = 64 * UNIT_BITS
MAX_KEYS_PER_REQUEST = 1024


class KeySourceError(HybridKexError):
    """A key source could not deliver what was asked."""


class KeysExhausted(KeySourceError):
    """Not enough keys are available for this link; nothing was delivered."""


class KeyNotAvailable(KeySourceError):
    """A key ID is unknown, already delivered, or not this side's to fetch; nothing was
    delivered."""


@dataclass(frozen=True, repr=False)
class StoredKey:
    """One 256-bit unit as deposited by distillation; ``initiator`` is the site that takes it."""

    key_id: str
    key: bytes
    initiator: str

    def __repr__(self) -> str:
        return f"StoredKey(key_id={self.key_id!r}, initiator={self.initiator!r})"


@dataclass(frozen=True, repr=False)
class DeliveredKey:
    """A key handed to a consumer.  ``ids`` names every unit it was assembled from."""

    key_id: str
    key: bytes
    size_bits: int
    extension: tuple[str, ...] = ()

    @property
    def ids(self) -> tuple[str, ...]:
        return (self.key_id, *self.extension)

    def __repr__(self) -> str:  # never the key material
        return f"DeliveredKey(key_id={self.key_id!r}, size_bits={self.size_bits})"


@dataclass(frozen=True)
class StoreStatus:
    """What a link's pool holds, from one site's point of view."""

    local_site: str
    peer_site: str
    available_to_take: int
    available_to_fetch: int
    delivered: int
    low_water: int
    unit_bits: int = UNIT_BITS

    @property
    def below_low_water(self) -> bool:
        return self.available_to_take < self.low_water


KeyRef = str | Sequence[str]


def units_for(size_bits: int) -> int:
    """How many 256-bit units a key of ``size_bits`` takes (checking the size)."""
    if not isinstance(size_bits, int) or isinstance(size_bits, bool):
        raise InvalidParameter("key size must be an int number of bits")
    if size_bits <= 0 or size_bits % 8 or size_bits > MAX_KEY_BITS:
        raise InvalidParameter(
            f"key size must be a positive multiple of 8 bits up to {MAX_KEY_BITS}, "
            f"got {size_bits}")
    return -(-size_bits // UNIT_BITS)


def _check_count(count: int) -> int:
    if not isinstance(count, int) or isinstance(count, bool) or not (
            1 <= count <= MAX_KEYS_PER_REQUEST):
        raise InvalidParameter(f"key count must be between 1 and {MAX_KEYS_PER_REQUEST}")
    return count


def key_id_bytes(key_id: str) -> bytes:
    """A key ID (a UUID string) as the 16 bytes protocols carry on the wire."""
    return uuid.UUID(key_id).bytes


def key_id_text(raw: bytes) -> str:
    """The key ID (UUID string) that 16 wire bytes name."""
    return str(uuid.UUID(bytes=raw))


def _check_key_id(key_id: object) -> str:
    if not isinstance(key_id, str):
        raise KeyNotAvailable("a key ID must be a UUID string")
    try:
        return str(uuid.UUID(key_id))
    except ValueError:
        raise KeyNotAvailable("a key ID is not a UUID") from None


def _normalise_refs(key_ids: Sequence[KeyRef], units: int) -> list[tuple[str, ...]]:
    """Each requested key as its tuple of unit IDs; duplicates anywhere are refused."""
    if isinstance(key_ids, str) or not isinstance(key_ids, Sequence):
        raise InvalidParameter("key_ids must be a sequence of key IDs")
    _check_count(len(key_ids))
    refs: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for ref in key_ids:
        ids = (ref,) if isinstance(ref, str) else tuple(ref)
        if len(ids) != units:
            raise KeyNotAvailable(
                f"a key of this size is made of {units} stored keys, the request names {len(ids)}")
        checked = tuple(_check_key_id(i) for i in ids)
        if seen.intersection(checked) or len(set(checked)) != len(checked):
            raise KeyNotAvailable("a key ID appears twice in the request")
        seen.update(checked)
        refs.append(checked)
    return refs


def _assemble(ids: tuple[str, ...], units: Sequence[bytes], size_bits: int) -> DeliveredKey:
    material = b"".join(units)[: size_bits // 8]
    return DeliveredKey(ids[0], material, size_bits, ids[1:])


class KeyStore(abc.ABC):
    """One site's view of its QKD key pools (one pool per peer site)."""

    site_id: str
    low_water: int
    on_low_water: Callable[[StoreStatus], None] | None

    def __init__(self, site_id: str, low_water: int = 64,
                 on_low_water: Callable[[StoreStatus], None] | None = None) -> None:
        if not isinstance(site_id, str) or not site_id:
            raise InvalidParameter("site_id must be a non-empty string")
        self.site_id = site_id
        self.low_water = low_water
        self.on_low_water = on_low_water

    # -- the interface ------------------------------------------------------------------

    def add(self, peer: str, keys: Iterable[StoredKey]) -> int:
        """Deposit distilled keys for the link to ``peer``; returns how many were added.

        The whole batch is added or none of it (a duplicate ID refuses the batch).
        """
        batch = list(keys)
        for k in batch:
            _check_key_id(k.key_id)
            if len(k.key) != UNIT_BYTES:
                raise InvalidParameter(f"stored keys are {UNIT_BYTES} bytes")
            if k.initiator not in (self.site_id, peer):
                raise InvalidParameter("a key's initiator must be one of the link's two sites")
        if len({k.key_id for k in batch}) != len(batch):
            raise InvalidParameter("a key ID appears twice in the batch")
        self._add(peer, batch)
        return len(batch)

    def take(self, peer: str, count: int = 1, size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        """As initiator: the next ``count`` keys of ``size_bits`` for ``peer``, with their IDs."""
        units = units_for(size_bits)
        needed = _check_count(count) * units
        taken = self._take(peer, needed)
        keys = [
            _assemble(tuple(i for i, _ in taken[n:n + units]),
                      [m for _, m in taken[n:n + units]], size_bits)
            for n in range(0, needed, units)
        ]
        self._signal(peer)
        return keys

    def fetch(self, peer: str, key_ids: Sequence[KeyRef],
              size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        """As responder: the keys ``peer`` took, by ID.  All or nothing."""
        refs = _normalise_refs(key_ids, units_for(size_bits))
        flat = [i for ref in refs for i in ref]
        material = self._fetch(peer, flat)
        return [_assemble(ref, [material[i] for i in ref], size_bits) for ref in refs]

    @abc.abstractmethod
    def status(self, peer: str) -> StoreStatus:
        """Counts of the pool shared with ``peer``."""

    @abc.abstractmethod
    def peers(self) -> list[str]:
        """Sites this store holds keys for."""

    def close(self) -> None:  # noqa: B027 - a backend with nothing to release keeps this
        """Release the backend's resources."""

    # -- what a backend implements --------------------------------------------------------

    @abc.abstractmethod
    def _add(self, peer: str, keys: list[StoredKey]) -> None: ...

    @abc.abstractmethod
    def _take(self, peer: str, units: int) -> list[tuple[str, bytes]]:
        """Atomically mark ``units`` available initiator-side keys delivered, erase them,
        and return (id, material) in deposit order; raise KeysExhausted if too few."""

    @abc.abstractmethod
    def _fetch(self, peer: str, key_ids: list[str]) -> dict[str, bytes]:
        """Atomically deliver exactly these responder-side keys, or raise KeyNotAvailable."""

    def _signal(self, peer: str) -> None:
        if self.on_low_water is not None:
            status = self.status(peer)
            if status.below_low_water:
                self.on_low_water(status)

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} site={self.site_id!r}>"


class MemoryKeyStore(KeyStore):
    """In-process store for tests and simulations; a lock makes each operation atomic."""

    def __init__(self, site_id: str, low_water: int = 64,
                 on_low_water: Callable[[StoreStatus], None] | None = None) -> None:
        super().__init__(site_id, low_water, on_low_water)
        self._lock = threading.Lock()
        # peer -> key_id -> [initiator_is_local, material or None]; dicts keep deposit order
        self._pools: dict[str, dict[str, tuple[bool, bytearray | None]]] = {}
        # peer -> IDs this site may still take, in deposit order (take is O(count))
        self._takeable: dict[str, collections.deque[str]] = {}

    def _add(self, peer: str, keys: list[StoredKey]) -> None:
        with self._lock:
            pool = self._pools.setdefault(peer, {})
            if any(k.key_id in pool for k in keys):
                raise InvalidParameter("a key ID is already in the store")
            takeable = self._takeable.setdefault(peer, collections.deque())
            for k in keys:
                key_id = str(uuid.UUID(k.key_id))
                mine = k.initiator == self.site_id
                pool[key_id] = (mine, bytearray(k.key))
                if mine:
                    takeable.append(key_id)

    def _take(self, peer: str, units: int) -> list[tuple[str, bytes]]:
        with self._lock:
            pool = self._pools.get(peer, {})
            takeable = self._takeable.get(peer, collections.deque())
            if len(takeable) < units:
                raise KeysExhausted(f"{len(takeable)} keys available for {peer!r}, "
                                    f"{units} needed")
            chosen = [takeable.popleft() for _ in range(units)]
            return [(key_id, self._deliver(pool, key_id)) for key_id in chosen]

    def _fetch(self, peer: str, key_ids: list[str]) -> dict[str, bytes]:
        with self._lock:
            pool = self._pools.get(peer, {})
            for key_id in key_ids:
                entry = pool.get(key_id)
                if entry is None or entry[0] or entry[1] is None:
                    raise KeyNotAvailable("a requested key ID is unknown or already delivered")
            return {key_id: self._deliver(pool, key_id) for key_id in key_ids}

    @staticmethod
    def _deliver(pool: dict[str, tuple[bool, bytearray | None]], key_id: str) -> bytes:
        mine, material = pool[key_id]
        assert material is not None
        out = bytes(material)
        material[:] = bytes(len(material))  # overwrite before dropping the reference
        pool[key_id] = (mine, None)
        return out

    def status(self, peer: str) -> StoreStatus:
        with self._lock:
            entries = list(self._pools.get(peer, {}).values())
        return StoreStatus(
            self.site_id, peer,
            available_to_take=sum(1 for mine, m in entries if mine and m is not None),
            available_to_fetch=sum(1 for mine, m in entries if not mine and m is not None),
            delivered=sum(1 for _, m in entries if m is None),
            low_water=self.low_water,
        )

    def peers(self) -> list[str]:
        with self._lock:
            return sorted(self._pools)


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


def open_store(url: str, site_id: str, **options: object) -> KeyStore:
    """Open a key store from a URL: ``memory:``, ``sqlite:///path/to/keys.db`` or
    ``postgresql://user@host:port/db`` (psycopg 3 needed only for the last; without
    it, BackendUnavailable says what to install)."""
    if url == "memory:":
        return MemoryKeyStore(site_id, **options)  # type: ignore[arg-type]
    if url.startswith("sqlite:///"):
        return SQLiteKeyStore(site_id, url[len("sqlite:///"):], **options)  # type: ignore[arg-type]
    if url.startswith(("postgresql://", "postgres://")):
        from hybridkex.qkd.keystore_postgres import PostgresKeyStore

        return PostgresKeyStore(site_id, url, **options)  # type: ignore[arg-type]
    raise InvalidParameter(
        "key store URL must be memory:, sqlite:///path or postgresql://...")


def new_key_id() -> str:
    """A fresh random key ID (UUID version 4), as ETSI GS QKD 014 uses."""
    return str(uuid.uuid4())
