"""Where a session's QKD keys come from: one interface over the key store and a KME.

The handshake needs two operations, with ETSI GS QKD 014 semantics:

* ``take(peer, count, size_bits)`` - as initiator (master SAE): new keys shared with
  ``peer``, with their IDs, to send to the peer;
* ``fetch(peer, key_ids, size_bits)`` - as responder (slave SAE): the keys ``peer``
  took, by ID (a key ID, or a key's unit IDs ``DeliveredKey.ids``), all or nothing.

:class:`StoreKeySource` draws them from an in-process
:class:`~hybridkex.qkd.keystore.KeyStore` (``peer`` is the peer's site ID);
:class:`KMEKeySource` from a KME over the ETSI REST API (``peer`` is mapped to the
peer's SAE ID).  Both raise the key store's errors: ``KeysExhausted``,
``KeyNotAvailable`` and other ``KeySourceError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from hybridkex.qkd.keystore import UNIT_BITS, DeliveredKey, KeySourceError, KeyStore
from hybridkex.qkd.kme_client import KMEClient

__all__ = ["KMEKeySource", "KeyRef", "KeySource", "StoreKeySource"]

KeyRef = str | Sequence[str]


@runtime_checkable
class KeySource(Protocol):
    """The two operations a session draws QKD keys with."""

    def take(self, peer: str, count: int = 1,
             size_bits: int = UNIT_BITS) -> list[DeliveredKey]: ...

    def fetch(self, peer: str, key_ids: Sequence[KeyRef],
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


class KMEKeySource:
    """A :class:`KeySource` over an ETSI GS QKD 014 KME.

    ``peers`` maps the peer identifier the session uses to the peer's SAE ID; without
    it (``None``) the peer identifier *is* the SAE ID.  ``take`` is Get key for that
    slave SAE, ``fetch`` Get key with key IDs from that master SAE.
    """

    def __init__(self, client: KMEClient, peers: Mapping[str, str] | None = None) -> None:
        self.client = client
        self.peers = dict(peers) if peers is not None else None

    def sae_of(self, peer: str) -> str:
        if self.peers is None:
            return peer
        try:
            return self.peers[peer]
        except KeyError:
            raise KeySourceError(f"no SAE ID is configured for peer {peer!r}") from None

    def take(self, peer: str, count: int = 1, size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        return self.client.get_keys(self.sae_of(peer), count, size_bits)

    def fetch(self, peer: str, key_ids: Sequence[KeyRef],
              size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        return self.client.get_keys_with_ids(self.sae_of(peer), key_ids, size_bits)

    def __repr__(self) -> str:
        return f"KMEKeySource({self.client!r})"
