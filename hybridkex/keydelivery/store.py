"""Key stores: one site's QKD key pools, each unit delivered exactly once.

Both sites of a link hold the same units under the same UUID key IDs.  Every unit is
assigned, when it is deposited, to the site that may *take* it (the initiator of a
session); the other site may only *fetch* it by ID (the responder).  Splitting the
pool by direction means two sites opening sessions to each other at the same time
can never both hand out one unit.

A unit moves ``available -> delivered`` once, atomically, and its material is erased
in the same transaction: there is no state in which a delivered unit can be read
again.  A crash after the commit but before the caller saw the key loses that key,
which is safe; delivering it twice never happens.

A request for another size than 256 bits is served as ETSI GS QKD 014 allows: a
shorter key is the first bits of one unit (the rest is erased with it), a longer one
the concatenation of consecutive units cut to length (:mod:`hybridkex.keydelivery.keys`).

A KME does not hand out units directly: it binds each key to the SAEs that may have
it (:meth:`KeyStore.reserve` and the methods after it; :mod:`hybridkex.keydelivery.
binding`).  The binding moves units out of the pool in the same transaction.
:meth:`KeyStore.status` reads counters, never the delivered rows, and
:meth:`KeyStore.purge_delivered` deletes delivered rows after a retention.

Backends: :class:`MemoryKeyStore` (tests), :class:`~hybridkex.keydelivery.sqlite.
SQLiteKeyStore` (the embedded default: WAL, ``synchronous=FULL``, ``secure_delete``),
and :class:`~hybridkex.keydelivery.postgres.PostgresKeyStore` for a KME run as several
processes or hosts (needs ``pip install 'hybridkex[postgres]'``).  ``open_store(url)``
opens one from ``memory:``, ``sqlite:///path`` or ``postgresql://...``; the SQLite and
PostgreSQL modules are imported only when asked for.
"""

from __future__ import annotations

import abc
import collections
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hybridkex.errors import InvalidParameter
from hybridkex.keydelivery.binding import Binding, Reservation, check_disjoint
from hybridkex.keydelivery.errors import (
    KeyAccessDenied,
    KeyNotAvailable,
    KeysExhausted,
    ReservationRefused,
)
from hybridkex.keydelivery.keys import (
    MAX_KEYS_PER_REQUEST,
    UNIT_BITS,
    UNIT_BYTES,
    DeliveredKey,
    KeyRef,
    StoredKey,
    assemble_key,
    check_count,
    check_key_id,
    normalise_refs,
    units_for,
)

__all__ = ["KeyStore", "MemoryKeyStore", "StoreStatus", "open_store"]


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


PENDING, OPEN, DONE = 0, 1, 2
"""States of a bound key: pending (master side, until the peer KME recorded it), open
(deliverable: ready for the master, or waiting for slave SAEs), done (delivered, erased)."""

BoundRow = tuple[str, int, tuple[str, ...], bytes]
"""A bound key as a backend hands it out: key ID, size in bits, unit IDs, material."""

RecordRow = tuple[str, str, int, tuple[str, ...], tuple[str, ...]]
"""A reservation as a backend records it: key ID, binding tag, size, units, slave SAEs."""


Expected = Sequence[tuple[int, tuple[str, ...]] | None]
"""Per requested key, the (size, units) the caller claims for it, or None."""


def check_access(rows: Sequence[tuple[Binding, bool, int, tuple[str, ...]]], sae: str,
                 masters: Collection[str], expected: Expected | None) -> None:
    """For each requested key (its binding, whether ``sae`` still waits for it, its
    size and units): refuse the whole request if any key is bound to other SAEs or to
    a master not in ``masters`` (KeyAccessDenied first, so a refused SAE learns
    nothing about delivery state), then if ``sae`` already has any of them, or the
    size and units the caller claims differ from the key's (KeyNotAvailable)."""
    for binding, _, _, _ in rows:
        if binding.master not in masters or sae not in binding.slaves:
            raise KeyAccessDenied("a requested key is bound to other SAEs")
    if not all(waiting for _, waiting, _, _ in rows):
        raise KeyNotAvailable("a requested key ID is unknown or already delivered")
    for (_, _, size, units), claim in zip(rows, expected or [None] * len(rows), strict=True):
        if claim is not None and claim != (size, units):
            raise KeyNotAvailable("a key_ID_extension does not match the key's size and units")


def bound_key(row: BoundRow) -> DeliveredKey:
    key_id, size, units, material = row
    return DeliveredKey(key_id, material, size, units[1:])


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

    def add(self, peer: str, keys: Iterable[StoredKey], *, batch_id: str | None = None) -> int:
        """Deposit distilled keys for the link to ``peer``; returns how many were added.

        The whole batch is added or none of it (a duplicate ID refuses the batch).

        ``batch_id`` makes the deposit idempotent for a depositor that repeats a step
        after a crash: the store records it in the transaction that adds the keys, and a
        batch ID it has recorded adds nothing and returns 0, whatever has become of
        those keys since (taken, delivered, purged by :meth:`purge_delivered`).  A key
        ID alone cannot say that once its row is purged.  The record stays until
        :meth:`forget_batch`.
        """
        batch = list(keys)
        for k in batch:
            check_key_id(k.key_id)
            if len(k.key) != UNIT_BYTES:
                raise InvalidParameter(f"stored keys are {UNIT_BYTES} bytes")
            if k.initiator not in (self.site_id, peer):
                raise InvalidParameter("a key's initiator must be one of the link's two sites")
        if len({k.key_id for k in batch}) != len(batch):
            raise InvalidParameter("a key ID appears twice in the batch")
        if batch_id is not None and not (isinstance(batch_id, str) and 0 < len(batch_id) <= 200):
            raise InvalidParameter("a batch ID is a string of 1 to 200 characters")
        return len(batch) if self._add(peer, batch, batch_id) else 0

    def forget_batch(self, batch_id: str) -> None:
        """Drop the record of ``batch_id`` (see :meth:`add`): its depositor will never
        repeat that step again."""
        self._forget_batch(batch_id)

    def take(self, peer: str, count: int = 1, size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        """As initiator: the next ``count`` keys of ``size_bits`` for ``peer``, with their IDs."""
        units = units_for(size_bits)
        needed = check_count(count) * units
        taken = self._take(peer, needed)
        keys = [
            assemble_key(tuple(i for i, _ in taken[n:n + units]),
                      [m for _, m in taken[n:n + units]], size_bits)
            for n in range(0, needed, units)
        ]
        self._signal(peer)
        return keys

    def fetch(self, peer: str, key_ids: Sequence[KeyRef],
              size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        """As responder: the keys ``peer`` took, by ID.  All or nothing."""
        refs = normalise_refs(key_ids, units_for(size_bits))
        flat = [i for ref in refs for i in ref]
        material = self._fetch(peer, flat)
        return [assemble_key(ref, [material[i] for i in ref], size_bits) for ref in refs]

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
    def _add(self, peer: str, keys: list[StoredKey], batch_id: str | None) -> bool:
        """Add ``keys`` and record ``batch_id`` in one transaction; False (nothing added)
        if ``batch_id`` was recorded before."""

    @abc.abstractmethod
    def _forget_batch(self, batch_id: str) -> None: ...

    @abc.abstractmethod
    def _take(self, peer: str, units: int) -> list[tuple[str, bytes]]:
        """Atomically mark ``units`` available initiator-side keys delivered, erase them,
        and return (id, material) in deposit order; raise KeysExhausted if too few."""

    @abc.abstractmethod
    def _fetch(self, peer: str, key_ids: list[str]) -> dict[str, bytes]:
        """Atomically deliver exactly these responder-side keys, or raise KeyNotAvailable."""

    # -- keys bound to SAEs (what a KME does with the units) ----------------------------

    def reserve(self, peer: str, binding: Binding, size_bits: int,
                count: int) -> list[Reservation]:
        """Master side: set ``count`` keys of ``size_bits`` aside for ``binding``, cut
        from the oldest units this site takes for ``peer``; all or nothing.

        The keys are *pending*: no one gets them until :meth:`confirm` says the peer's
        KME has recorded them.  A pending key that is never confirmed is never handed
        out (its units are lost, which is safe); :meth:`purge_delivered` drops it
        after the retention.  Raises KeysExhausted if too few units are free.
        """
        units = units_for(size_bits)
        if not isinstance(count, int) or isinstance(count, bool) or not (
                1 <= count * units <= MAX_KEYS_PER_REQUEST):
            raise InvalidParameter(f"a reservation spans 1 to {MAX_KEYS_PER_REQUEST} units")
        groups = self._reserve(peer, binding.tag, size_bits, units, count)
        return [Reservation(g[0], size_bits, g, binding) for g in groups]

    def confirm(self, peer: str, key_ids: Sequence[str],
                hand_out: int = 0) -> list[DeliveredKey]:
        """Master side: the peer's KME recorded these pending keys.  The first
        ``hand_out`` of them are handed out now (delivered, erased) and returned; the
        rest become ready for :meth:`take_bound`.  All or nothing."""
        ids = [check_key_id(k) for k in key_ids]
        if not 0 <= hand_out <= len(ids):
            raise InvalidParameter("cannot hand out more keys than are confirmed")
        return [bound_key(row) for row in self._confirm(peer, ids, hand_out)]

    def take_bound(self, peer: str, binding: Binding, size_bits: int,
                   count: int) -> list[DeliveredKey]:
        """Master side: hand out the ``count`` oldest ready keys of ``size_bits`` for
        ``binding``, or raise KeysExhausted and hand out nothing."""
        check_count(count)
        return [bound_key(row)
                for row in self._take_bound(peer, binding.tag, size_bits, count)]

    def ready_count(self, peer: str, binding: Binding, size_bits: int) -> int:
        """Master side: ready keys of ``size_bits`` for ``binding`` (an index of ready
        keys only; delivered ones are never counted)."""
        return self._ready_count(peer, binding.tag, size_bits)

    def record(self, peer: str, reservations: Sequence[Reservation]) -> None:
        """Slave side: bind the units named by ``peer``'s KME to its reservations.

        Every unit must be one ``peer`` takes, still available and unbound here; the
        units leave the pool and the key, cut to its size, waits for its slave SAEs.
        All or nothing: ReservationRefused records none of the batch (a replayed
        reservation is refused this way, as its units are no longer available).
        """
        batch = list(reservations)
        if not batch:
            raise InvalidParameter("a reservation batch names at least one key")
        check_disjoint(batch)
        self._record(peer, [(r.key_id, r.binding.tag, r.size_bits, r.units,
                             r.binding.slaves) for r in batch])

    def deliver(self, peer: str, sae: str, masters: Collection[str], key_ids: Sequence[str],
                expected: Expected | None = None) -> list[DeliveredKey]:
        """Slave side: the keys a master SAE at ``peer`` took, for slave SAE ``sae``;
        all or nothing.  Each key's master must be in ``masters`` (ETSI names one in
        the path; SKIP names only the remote site).  Each key goes to each of its
        slave SAEs exactly once, and its material is erased when the last has it.
        ``expected`` optionally gives, per key, the (size, units) the caller claims.

        KeyAccessDenied if a key is bound to other SAEs or another master (nothing is
        delivered, the key stays deliverable to its SAEs); KeyNotAvailable if a key
        is unknown, ``sae`` already has it, or a claim does not match.
        """
        ids = [check_key_id(k) for k in key_ids]
        check_count(len(ids))
        if len(set(ids)) != len(ids):
            raise KeyNotAvailable("a key ID appears twice in the request")
        if expected is not None and len(expected) != len(ids):
            raise InvalidParameter("expected must give one claim (or None) per key")
        return [bound_key(row) for row in self._deliver(peer, sae, frozenset(masters), ids,
                                                        expected)]

    def purge_delivered(self, older_than_s: float) -> int:
        """Delete the rows of units and keys delivered (or left pending) more than
        ``older_than_s`` seconds ago; returns how many rows went.  Their material is
        already erased: this only keeps the store from growing.  The counts of
        :meth:`status` are kept."""
        if not older_than_s >= 0:
            raise InvalidParameter("the retention must be a non-negative number of seconds")
        return self._purge(time.time() - older_than_s)

    # -- what a backend implements for bound keys -------------------------------------------

    @abc.abstractmethod
    def _reserve(self, peer: str, tag: str, size_bits: int, units: int,
                 count: int) -> list[tuple[str, ...]]: ...

    @abc.abstractmethod
    def _confirm(self, peer: str, key_ids: list[str], hand_out: int) -> list[BoundRow]: ...

    @abc.abstractmethod
    def _take_bound(self, peer: str, tag: str, size_bits: int,
                    count: int) -> list[BoundRow]: ...

    @abc.abstractmethod
    def _ready_count(self, peer: str, tag: str, size_bits: int) -> int: ...

    @abc.abstractmethod
    def _record(self, peer: str, rows: list[RecordRow]) -> None: ...

    @abc.abstractmethod
    def _deliver(self, peer: str, sae: str, masters: frozenset[str], key_ids: list[str],
                 expected: Expected | None) -> list[BoundRow]: ...

    @abc.abstractmethod
    def _purge(self, cutoff: float) -> int: ...

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


class _Bound:
    """A bound key in a :class:`MemoryKeyStore` (see :meth:`KeyStore.reserve`)."""

    __slots__ = ("created", "done_at", "master_side", "material", "peer", "size", "state",
                 "tag", "units", "waiting")

    def __init__(self, peer: str, master_side: bool, tag: str, size: int,
                 units: tuple[str, ...], waiting: list[str], material: bytes) -> None:
        self.peer = peer
        self.master_side = master_side
        self.tag = tag
        self.size = size
        self.units = units
        self.waiting = waiting
        self.state = PENDING if master_side else OPEN
        self.material: bytearray | None = bytearray(material)
        self.created = time.time()
        self.done_at: float | None = None

    def erase(self) -> bytes:
        assert self.material is not None
        out = bytes(self.material)
        self.material[:] = bytes(len(self.material))
        self.material = None
        self.state = DONE
        self.done_at = time.time()
        return out


class MemoryKeyStore(KeyStore):
    """In-process store for tests and simulations; a lock makes each operation atomic.

    Counts are counters, so :meth:`status` costs the same whatever the store holds.
    """

    def __init__(self, site_id: str, low_water: int = 64,
                 on_low_water: Callable[[StoreStatus], None] | None = None) -> None:
        super().__init__(site_id, low_water, on_low_water)
        self._lock = threading.Lock()
        # peer -> key_id -> [initiator_is_local, material or None, delivered_at or None]
        self._pools: dict[str, dict[str, list[Any]]] = {}
        # peer -> IDs this site may still take, in deposit order (take is O(count))
        self._takeable: dict[str, collections.deque[str]] = {}
        # peer -> [available to take, available to fetch, delivered]
        self._counts: dict[str, list[int]] = {}
        self._bound: dict[str, _Bound] = {}
        # (peer, tag, size) -> ready master-side keys, oldest first
        self._ready: dict[tuple[str, str, int], collections.deque[str]] = {}
        self._batches: set[str] = set()  # batch IDs recorded by add (see KeyStore.add)

    def _add(self, peer: str, keys: list[StoredKey], batch_id: str | None) -> bool:
        with self._lock:
            if batch_id is not None and batch_id in self._batches:
                return False
            pool = self._pools.setdefault(peer, {})
            if any(k.key_id in pool for k in keys):
                raise InvalidParameter("a key ID is already in the store")
            if batch_id is not None:
                self._batches.add(batch_id)
            takeable = self._takeable.setdefault(peer, collections.deque())
            counts = self._counts.setdefault(peer, [0, 0, 0])
            for k in keys:
                key_id = str(uuid.UUID(k.key_id))
                mine = k.initiator == self.site_id
                pool[key_id] = [mine, bytearray(k.key), None]
                if mine:
                    takeable.append(key_id)
                counts[0 if mine else 1] += 1
        return True

    def _forget_batch(self, batch_id: str) -> None:
        with self._lock:
            self._batches.discard(batch_id)

    def _take_locked(self, peer: str, units: int) -> list[tuple[str, bytes]]:
        pool = self._pools.get(peer, {})
        takeable = self._takeable.get(peer, collections.deque())
        if len(takeable) < units:
            raise KeysExhausted(f"{len(takeable)} keys available for {peer!r}, "
                                f"{units} needed")
        chosen = [takeable.popleft() for _ in range(units)]
        return [(key_id, self._deliver_unit(peer, pool, key_id)) for key_id in chosen]

    def _take(self, peer: str, units: int) -> list[tuple[str, bytes]]:
        with self._lock:
            return self._take_locked(peer, units)

    def _fetch(self, peer: str, key_ids: list[str]) -> dict[str, bytes]:
        with self._lock:
            pool = self._pools.get(peer, {})
            for key_id in key_ids:
                entry = pool.get(key_id)
                if entry is None or entry[0] or entry[1] is None:
                    raise KeyNotAvailable("a requested key ID is unknown or already delivered")
            return {key_id: self._deliver_unit(peer, pool, key_id) for key_id in key_ids}

    def _deliver_unit(self, peer: str, pool: dict[str, list[Any]], key_id: str) -> bytes:
        entry = pool[key_id]
        material = entry[1]
        assert material is not None
        out = bytes(material)
        material[:] = bytes(len(material))  # overwrite before dropping the reference
        entry[1] = None
        entry[2] = time.time()
        counts = self._counts[peer]
        counts[0 if entry[0] else 1] -= 1
        counts[2] += 1
        return out

    def status(self, peer: str) -> StoreStatus:
        with self._lock:
            take, fetch, delivered = self._counts.get(peer, (0, 0, 0))
        return StoreStatus(self.site_id, peer, available_to_take=take,
                           available_to_fetch=fetch, delivered=delivered,
                           low_water=self.low_water)

    def peers(self) -> list[str]:
        with self._lock:
            return sorted(self._pools)

    # -- bound keys

    def _reserve(self, peer: str, tag: str, size_bits: int, units: int,
                 count: int) -> list[tuple[str, ...]]:
        with self._lock:
            taken = self._take_locked(peer, units * count)
            groups = []
            for n in range(0, len(taken), units):
                part = taken[n:n + units]
                ids = tuple(i for i, _ in part)
                material = b"".join(m for _, m in part)[: size_bits // 8]
                self._bound[ids[0]] = _Bound(peer, True, tag, size_bits, ids, [], material)
                groups.append(ids)
            return groups

    def _confirm(self, peer: str, key_ids: list[str], hand_out: int) -> list[BoundRow]:
        with self._lock:
            rows = [self._bound.get(k) for k in key_ids]
            if any(r is None or r.peer != peer or not r.master_side or r.state != PENDING
                   for r in rows):
                raise KeyNotAvailable("a key to confirm is not pending here")
            out: list[BoundRow] = []
            for n, (key_id, row) in enumerate(zip(key_ids, rows, strict=True)):
                assert row is not None
                if n < hand_out:
                    out.append((key_id, row.size, row.units, row.erase()))
                else:
                    row.state = OPEN
                    self._ready.setdefault((peer, row.tag, row.size),
                                           collections.deque()).append(key_id)
            return out

    def _take_bound(self, peer: str, tag: str, size_bits: int, count: int) -> list[BoundRow]:
        with self._lock:
            ready = self._ready.get((peer, tag, size_bits), collections.deque())
            if len(ready) < count:
                raise KeysExhausted(f"{len(ready)} reserved keys ready, {count} needed")
            out: list[BoundRow] = []
            for _ in range(count):
                key_id = ready.popleft()
                row = self._bound[key_id]
                out.append((key_id, row.size, row.units, row.erase()))
            return out

    def _ready_count(self, peer: str, tag: str, size_bits: int) -> int:
        with self._lock:
            return len(self._ready.get((peer, tag, size_bits), ()))

    def _record(self, peer: str, rows: list[RecordRow]) -> None:
        with self._lock:
            pool = self._pools.get(peer, {})
            for key_id, _, _, units, _ in rows:
                if key_id in self._bound:
                    raise ReservationRefused("a key ID is already bound here")
                for unit in units:
                    entry = pool.get(unit)
                    if entry is None or entry[0] or entry[1] is None:
                        raise ReservationRefused(
                            "a reserved unit is unknown here, already bound or delivered, "
                            "or not the peer's to take")
            for key_id, tag, size, units, slaves in rows:
                material = b"".join(self._deliver_unit(peer, pool, u) for u in units)
                self._bound[key_id] = _Bound(peer, False, tag, size, units, list(slaves),
                                             material[: size // 8])

    def _deliver(self, peer: str, sae: str, masters: frozenset[str], key_ids: list[str],
                 expected: Expected | None) -> list[BoundRow]:
        with self._lock:
            rows = []
            for key_id in key_ids:
                row = self._bound.get(key_id)
                if row is None or row.peer != peer or row.master_side:
                    raise KeyNotAvailable("a requested key ID is unknown or already delivered")
                rows.append(row)
            check_access([(Binding.from_tag(r.tag), sae in r.waiting, r.size, r.units)
                          for r in rows], sae, masters, expected)
            out: list[BoundRow] = []
            for key_id, row in zip(key_ids, rows, strict=True):
                row.waiting.remove(sae)
                assert row.material is not None
                material = bytes(row.material) if row.waiting else row.erase()
                out.append((key_id, row.size, row.units, material))
            return out

    def _purge(self, cutoff: float) -> int:
        with self._lock:
            gone = [k for k, r in self._bound.items()
                    if (r.state == DONE and r.done_at is not None and r.done_at < cutoff)
                    or (r.state == PENDING and r.created < cutoff)]
            for k in gone:
                del self._bound[k]
            removed = len(gone)
            for pool in self._pools.values():
                old = [k for k, e in pool.items() if e[1] is None and e[2] < cutoff]
                for k in old:
                    del pool[k]
                removed += len(old)
            return removed


def open_store(url: str, site_id: str, **options: object) -> KeyStore:
    """Open a key store from a URL: ``memory:``, ``sqlite:///path/to/keys.db`` or
    ``postgresql://user@host:port/db`` (psycopg 3 needed only for the last; without
    it, BackendUnavailable says what to install)."""
    if url == "memory:":
        return MemoryKeyStore(site_id, **options)  # type: ignore[arg-type]
    if url.startswith("sqlite:///"):
        from hybridkex.keydelivery.sqlite import SQLiteKeyStore

        return SQLiteKeyStore(site_id, url[len("sqlite:///"):], **options)  # type: ignore[arg-type]
    if url.startswith(("postgresql://", "postgres://")):
        from hybridkex.keydelivery.postgres import PostgresKeyStore

        return PostgresKeyStore(site_id, url, **options)  # type: ignore[arg-type]
    raise InvalidParameter(
        "key store URL must be memory:, sqlite:///path or postgresql://...")
