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
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from hybridkex.errors import InvalidParameter
from hybridkex.keydelivery.errors import KeyNotAvailable, KeysExhausted
from hybridkex.keydelivery.keys import (
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
            check_key_id(k.key_id)
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
