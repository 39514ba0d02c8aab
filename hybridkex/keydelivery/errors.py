"""The key-delivery errors: what a key source raises when it cannot deliver.

Every key source (a key store, a KME client, anything a site plugs in) raises these,
so the protocol and TLS layers catch one family whatever delivers their keys.  None
carries key material; messages name counts and sites, never bytes of a key.
"""

from __future__ import annotations

from hybridkex.errors import HybridKexError

__all__ = ["KeyAccessDenied", "KeyNotAvailable", "KeySourceError", "KeysExhausted",
           "ReservationRefused"]


class KeySourceError(HybridKexError):
    """A key source could not deliver what was asked."""


class KeysExhausted(KeySourceError):
    """Not enough keys are available for this link; nothing was delivered."""


class KeyNotAvailable(KeySourceError):
    """A key ID is unknown, already delivered, or not this side's to fetch; nothing was
    delivered."""


class KeyAccessDenied(KeySourceError):
    """The key exists but is bound to other SAEs (or another master): nothing was
    delivered, and the key stays deliverable to the SAEs it was reserved for."""


class ReservationRefused(KeySourceError):
    """A peer KME's reservation names units that are unknown, already bound or
    delivered, or not the peer's to take: nothing of it was recorded."""
