"""Key delivery: where a session's QKD keys come from and where a link's keys go.

Owned by neither the protocol nor the QKD link, this layer is the boundary between
them (ETSI GS QKD 014 calls the role "key delivery"):

* :mod:`~hybridkex.keydelivery.keys` - units, keys, key IDs and their wire codec;
* :mod:`~hybridkex.keydelivery.errors` - what a key source raises;
* :mod:`~hybridkex.keydelivery.source` - the :class:`KeySource` interface a session
  draws keys through, and :class:`StoreKeySource` over a local store;
* :mod:`~hybridkex.keydelivery.store` - key stores (:class:`MemoryKeyStore`), with
  :mod:`~hybridkex.keydelivery.sqlite` and :mod:`~hybridkex.keydelivery.postgres`;
* :mod:`~hybridkex.keydelivery.pools` - :func:`linked_pools`, two sites' stores
  holding the same units;
* :mod:`~hybridkex.keydelivery.kme` - the ETSI GS QKD 014 KME: server, clients
  (blocking and asyncio), and the key sources over them,
  :class:`~hybridkex.keydelivery.kme.client.KMEKeySource` and
  :class:`~hybridkex.keydelivery.kme.aio_client.AsyncKMEKeySource`.

Importing this package loads none of sqlite3, http.client, aiohttp or numpy: the
stores and the KME clients are imported when named (``SQLiteKeyStore``,
``PostgresKeyStore``, ``KMEClient``, ``KMEKeySource``, ``AsyncKMEClient``,
``AsyncKMEKeySource``; the last two need aiohttp, the ``kme`` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hybridkex.keydelivery.errors import KeyNotAvailable, KeysExhausted, KeySourceError
from hybridkex.keydelivery.keys import (
    UNIT_BITS,
    UNIT_BYTES,
    DeliveredKey,
    KeyRef,
    StoredKey,
    key_id_bytes,
    key_id_text,
    new_key_id,
)
from hybridkex.keydelivery.pools import LinkedPools, linked_pools, random_units
from hybridkex.keydelivery.source import AsyncKeySource, KeySource, StoreKeySource
from hybridkex.keydelivery.store import KeyStore, MemoryKeyStore, StoreStatus, open_store

if TYPE_CHECKING:
    from hybridkex.keydelivery.kme.aio_client import AsyncKMEClient, AsyncKMEKeySource
    from hybridkex.keydelivery.kme.client import KMEClient, KMEKeySource
    from hybridkex.keydelivery.postgres import PostgresKeyStore
    from hybridkex.keydelivery.sqlite import SQLiteKeyStore

__all__ = [
    "UNIT_BITS",
    "UNIT_BYTES",
    "AsyncKMEClient",
    "AsyncKMEKeySource",
    "AsyncKeySource",
    "DeliveredKey",
    "KMEClient",
    "KMEKeySource",
    "KeyNotAvailable",
    "KeyRef",
    "KeySource",
    "KeySourceError",
    "KeyStore",
    "KeysExhausted",
    "LinkedPools",
    "MemoryKeyStore",
    "PostgresKeyStore",
    "SQLiteKeyStore",
    "StoreKeySource",
    "StoreStatus",
    "StoredKey",
    "key_id_bytes",
    "key_id_text",
    "linked_pools",
    "new_key_id",
    "open_store",
    "random_units",
]

_LAZY = {
    "AsyncKMEClient": "hybridkex.keydelivery.kme.aio_client",
    "AsyncKMEKeySource": "hybridkex.keydelivery.kme.aio_client",
    "KMEClient": "hybridkex.keydelivery.kme.client",
    "KMEKeySource": "hybridkex.keydelivery.kme.client",
    "PostgresKeyStore": "hybridkex.keydelivery.postgres",
    "SQLiteKeyStore": "hybridkex.keydelivery.sqlite",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
