"""The two ends of a QKD link, and which of the two sites may take which distilled key.

The ends are named as in every QKD paper: **Alice** prepares and sends the pulses, **Bob**
detects them.  The names follow the optics, not the sites: site A runs Alice and site B
runs Bob in this repository, but nothing above the link depends on that.

What a round distils belongs to both sites: each deposits the same 256-bit units under
the same key IDs (:mod:`hybridkex.keydelivery`).  :func:`unit_initiator` is the one
statement of who may *take* each unit.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from hybridkex.errors import InvalidParameter
from hybridkex.keydelivery.keys import UNIT_BYTES, StoredKey

__all__ = ["Role", "stored_keys", "unit_initiator"]


class Role(enum.IntEnum):
    """Alice sends the pulses, Bob detects them.

    The value is the byte that names a classical frame's sender, and the last input of
    the key-confirmation tag, so it is part of the wire format.
    """

    ALICE = 0
    BOB = 1

    @property
    def peer(self) -> Role:
        return Role.BOB if self is Role.ALICE else Role.ALICE


def unit_initiator(index: int, alice_site: str, bob_site: str) -> str:
    """The site that may take unit ``index`` of a round as session initiator.

    The rule: units alternate, starting with Alice's site (even indices to Alice's
    site, odd ones to Bob's).  The other site can only fetch the unit by its key ID,
    as a session's responder.

    Why split at all: if either site could take any unit, two sites opening sessions
    to each other at the same moment could both hand out the same unit.  Why
    alternate: sessions may be opened from either side, so each site gets half of
    every round, and both sites derive the same split from the unit's position alone.
    """
    return alice_site if index % 2 == 0 else bob_site


def stored_keys(material: bytes, key_ids: Sequence[str], alice_site: str,
                bob_site: str) -> list[StoredKey]:
    """A round's distilled units as the key stores take them: one per key ID, in order,
    each assigned by :func:`unit_initiator`."""
    if len(material) != UNIT_BYTES * len(key_ids):
        raise InvalidParameter("distilled key material does not match its key IDs")
    return [
        StoredKey(key_id, material[i * UNIT_BYTES:(i + 1) * UNIT_BYTES],
                  unit_initiator(i, alice_site, bob_site))
        for i, key_id in enumerate(key_ids)
    ]
