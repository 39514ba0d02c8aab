"""Keys bound to SAEs: what a KME reserves, and what it tells the slave's KME.

A key store's units belong to a *link* (a pair of sites).  A KME shared by several
applications (SAEs) must not let any SAE at the slave's site fetch what a master SAE
took: it binds every key it hands out to the **master SAE** and the **slave SAEs**
that may fetch it, with its size and the units that make it up.  The master's KME
records the binding in its store, tells the slave's KME (the KME-to-KME sync, see
:mod:`hybridkex.keydelivery.kme.sync`), and hands the key to the master only once the
slave's KME has recorded it too.  The slave's KME then delivers the key only to the
SAEs named, each exactly once, whatever size it has.

This module holds the shapes both ends agree on; the stores keep them
(:meth:`~hybridkex.keydelivery.store.KeyStore.reserve` and the methods after it).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass

from hybridkex.errors import InvalidParameter
from hybridkex.keydelivery.keys import check_key_id, units_for

__all__ = ["Binding", "Reservation"]


@dataclass(frozen=True)
class Binding:
    """Who may have a key: the master SAE that takes it and the slave SAEs that fetch it.

    ``slaves`` keeps the order the master asked for (the ``slave_SAE_ID`` of the path
    first, then ``additional_slave_SAE_IDs``); every SAE ID appears once.
    """

    master: str
    slaves: tuple[str, ...]

    def __post_init__(self) -> None:
        names = (self.master, *self.slaves)
        if not self.slaves or not all(isinstance(n, str) and n for n in names):
            raise InvalidParameter("a binding names a master SAE and at least one slave SAE")
        if len(set(names)) != len(names):
            raise InvalidParameter("an SAE ID appears twice in a binding")

    @functools.cached_property
    def tag(self) -> str:
        """The binding as one string, for a store's index: ``["master", "slave", ...]``
        (computed once: the KME looks it up on every request)."""
        return json.dumps([self.master, *self.slaves], separators=(",", ":"))

    @classmethod
    def from_tag(cls, tag: str) -> Binding:
        names = json.loads(tag)
        return cls(names[0], tuple(names[1:]))


@dataclass(frozen=True)
class Reservation:
    """One key bound to SAEs, without its material: what the sync carries.

    ``units`` are the store units the key is cut from, in order; the key ID is the
    first of them, so a plain ETSI client that knows only the key ID names the key.
    """

    key_id: str
    size_bits: int
    units: tuple[str, ...]
    binding: Binding

    def __post_init__(self) -> None:
        if len(self.units) != units_for(self.size_bits):
            raise InvalidParameter(f"a {self.size_bits}-bit key is made of "
                                   f"{units_for(self.size_bits)} units, not {len(self.units)}")
        if not self.units or self.units[0] != self.key_id:
            raise InvalidParameter("a key's ID is the ID of its first unit")
        for unit in self.units:
            if check_key_id(unit) != unit:
                raise InvalidParameter("unit IDs are lower-case UUID strings")
        if len(set(self.units)) != len(self.units):
            raise InvalidParameter("a unit appears twice in a key")


def check_disjoint(reservations: Sequence[Reservation]) -> None:
    """Refuse a batch in which two keys share a unit."""
    units = [u for r in reservations for u in r.units]
    if len(set(units)) != len(units):
        raise InvalidParameter("two keys of one batch share a unit")
