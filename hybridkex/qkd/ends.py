"""The two ends of a QKD link, named as in every QKD paper.

**Alice** prepares and sends the pulses, **Bob** detects them.  The names follow the
optics, not the sites: site A runs Alice and site B runs Bob in this repository, but
nothing above the link depends on that.  Which site may take which distilled unit is
the link's rule (:func:`hybridkex.qkd.link.unit_initiator`).
"""

from __future__ import annotations

import enum

__all__ = ["Role"]


class Role(enum.IntEnum):
    """Alice sends the pulses, Bob detects them.

    The value is the byte that names a classical frame's sender, so it is part of the
    wire format; it also decides which half of the confirmation bits each end discloses.
    """

    ALICE = 0
    BOB = 1

    @property
    def peer(self) -> Role:
        return Role.BOB if self is Role.ALICE else Role.ALICE
