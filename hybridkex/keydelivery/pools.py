"""Two sites' key stores filled with the same units: what a QKD link leaves behind.

Tests, benchmarks, the README example and the RNDL demo all need "site A and site B
share these keys".  :func:`linked_pools` is the one way to build that: it deposits one
list of units into both sites' stores, each unit assigned to the site that may take
it, exactly as the link's distillation does.

Without ``units`` it draws fresh units from the operating system's random source.
Those are **not** QKD keys: they stand in for a link's output where the test or the
example is about something else.  Pass a link's distilled units to use real ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from hybridkex.errors import InvalidParameter
from hybridkex.keydelivery.keys import UNIT_BYTES, StoredKey, new_key_id
from hybridkex.keydelivery.store import KeyStore, MemoryKeyStore

__all__ = ["LinkedPools", "linked_pools", "random_units"]


@dataclass(frozen=True, repr=False)
class LinkedPools:
    """Site A's and site B's stores, and the units both hold (never shown in a repr)."""

    site_a: str
    site_b: str
    store_a: KeyStore
    store_b: KeyStore
    units: tuple[StoredKey, ...]

    def taken_by(self, site: str) -> list[StoredKey]:
        """The units ``site`` may take (it is their initiator), in deposit order."""
        return [u for u in self.units if u.initiator == site]

    def material(self) -> dict[str, bytes]:
        """Key ID -> unit material, for tests that check what a session used."""
        return {u.key_id: u.key for u in self.units}

    def __repr__(self) -> str:
        return (f"LinkedPools({self.site_a!r}, {self.site_b!r}, "
                f"units={len(self.units)})")


def random_units(site_a: str, site_b: str, a_takes: int,
                 b_takes: int | None = None) -> list[StoredKey]:
    """Fresh units from ``os.urandom``: ``a_takes`` for site A to take, ``b_takes``
    (default: the same) for site B.  Stand-ins for a link's output, not QKD keys."""
    b_takes = a_takes if b_takes is None else b_takes
    if a_takes < 0 or b_takes < 0:
        raise InvalidParameter("unit counts must not be negative")
    return [StoredKey(new_key_id(), os.urandom(UNIT_BYTES), initiator)
            for initiator, count in ((site_a, a_takes), (site_b, b_takes))
            for _ in range(count)]


def linked_pools(site_a: str, site_b: str, units: Iterable[StoredKey] | int = 32, *,
                 store_a: KeyStore | None = None,
                 store_b: KeyStore | None = None) -> LinkedPools:
    """Deposit the same units into site A's and site B's stores.

    ``units`` is a link's distilled units, or a number: that many fresh random units
    for each direction (:func:`random_units`).  The stores default to fresh
    :class:`~hybridkex.keydelivery.store.MemoryKeyStore` objects for the two sites;
    pass others (SQLite, PostgreSQL) to fill those instead.
    """
    batch = (random_units(site_a, site_b, units) if isinstance(units, int)
             else list(units))
    a = MemoryKeyStore(site_a) if store_a is None else store_a
    b = MemoryKeyStore(site_b) if store_b is None else store_b
    if a.site_id != site_a or b.site_id != site_b:
        raise InvalidParameter("each store must belong to its site")
    a.add(site_b, batch)
    b.add(site_a, batch)
    return LinkedPools(site_a, site_b, a, b, tuple(batch))
