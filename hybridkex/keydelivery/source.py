"""Where a session's QKD keys come from: one interface over the key store and a KME.

The handshake needs two operations, with ETSI GS QKD 014 semantics:

* ``take(peer, count, size_bits)`` - as initiator (master SAE): new keys shared with
  ``peer``, with their IDs, to send to the peer;
* ``fetch(peer, key_ids, size_bits)`` - as responder (slave SAE): the keys ``peer``
  took, by ID (a key ID, or a key's unit IDs ``DeliveredKey.ids``), all or nothing.

:class:`StoreKeySource` draws them from an in-process
:class:`~hybridkex.keydelivery.store.KeyStore` (``peer`` is the peer's site ID);
:class:`~hybridkex.keydelivery.kme.client.KMEKeySource` from a KME over the ETSI
REST API (``peer`` is mapped to the peer's SAE ID).  Both raise the key-delivery
errors: ``KeysExhausted``, ``KeyNotAvailable`` and other ``KeySourceError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from hybridkex.keydelivery.keys import UNIT_BITS, DeliveredKey, KeyRef

if TYPE_CHECKING:
    from hybridkex.keydelivery.store import KeyStore

__all__ = ["AsyncKeySource", "KeySource", "StoreKeySource"]


@runtime_checkable
class KeySource(Protocol):
    """The two operations a session draws QKD keys with."""

    def take(self, peer: str, count: int = 1,
             size_bits: int = UNIT_BITS) -> list[DeliveredKey]: ...

    def fetch(self, peer: str, key_ids: Sequence[KeyRef],
              size_bits: int = UNIT_BITS) -> list[DeliveredKey]: ...


@runtime_checkable
class AsyncKeySource(Protocol):
    """The same two operations for an event loop: a source whose answer comes over the
    network (a KME) implements these natively, so an asyncio driver never blocks on it.

    An asyncio driver given an :class:`AsyncKeySource` awaits it; given a plain
    :class:`KeySource`, it runs the call in an executor thread.  Either way the event
    loop keeps serving other connections while the keys are on their way.
    """

    async def take_async(self, peer: str, count: int = 1,
                         size_bits: int = UNIT_BITS) -> list[DeliveredKey]: ...

    async def fetch_async(self, peer: str, key_ids: Sequence[KeyRef],
                          size_bits: int = UNIT_BITS) -> list[DeliveredKey]: ...


class StoreKeySource:
    """A :class:`KeySource` over a key store; ``peer`` is the peer's site ID."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store

    def take(self, peer: str, count: int = 1, size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        return self.store.take(peer, count, size_bits)

    def fetch(self, peer: str, key_ids: Sequence[KeyRef],
              size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        return self.store.fetch(peer, key_ids, size_bits)

    def __repr__(self) -> str:
        return f"StoreKeySource({self.store!r})"
