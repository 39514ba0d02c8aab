"""One KME key source for both kinds of caller: threads that may block, and event loops.

A site's sessions run in both worlds: ``connect`` drives a blocking socket, ``serve``
drives every connection on one asyncio event loop, and a library user may do either
with the same :class:`~hybridkex.transport.Context`.  :class:`DualKMEKeySource` is a
:class:`~hybridkex.keydelivery.source.KeySource` (``take`` / ``fetch`` over one
kept-alive :class:`~hybridkex.keydelivery.kme.client.KMEClient`) *and* an
:class:`~hybridkex.keydelivery.source.AsyncKeySource` (``take_async`` /
``fetch_async``), so an asyncio driver awaits the KME instead of blocking on it.

The asyncio face is an :class:`~hybridkex.keydelivery.kme.aio_client.AsyncKMEKeySource`
per running event loop (an :class:`~hybridkex.keydelivery.kme.aio_client.AsyncKMEClient`
serves one loop), made when a loop first asks.  Without aiohttp (the ``kme`` extra) the
asyncio face runs the blocking client in the shared key-source executor instead: either
way the loop never waits on the network.  ``await source.aclose()`` at the end of a
loop closes that loop's connections; :meth:`close` closes the blocking client's.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from hybridkex.errors import BackendUnavailable
from hybridkex.keydelivery.keys import UNIT_BITS, DeliveredKey, KeyRef
from hybridkex.keydelivery.kme.calls import DEFAULT_CONNECTIONS, KMEStatus, PeerSAEs
from hybridkex.keydelivery.kme.client import KMEClient, KMEKeySource
from hybridkex.keydelivery.request import key_source_executor

if TYPE_CHECKING:
    from hybridkex.keydelivery.kme.aio_client import AsyncKMEKeySource

__all__ = ["DualKMEKeySource"]

_T = TypeVar("_T")


class DualKMEKeySource(PeerSAEs):
    """A KME key source for blocking callers and event loops alike:
    ``DualKMEKeySource(base_url, cert, key, ca, peers)``.

    ``peers`` maps the session's peer identifier (a site name) to the peer's SAE ID, as
    for :class:`~hybridkex.keydelivery.kme.client.KMEKeySource`; a peer it does not
    name is a :class:`~hybridkex.keydelivery.errors.KeySourceError`.  ``timeout`` and
    ``connections`` apply to each client (the blocking one, and one per event loop).
    """

    def __init__(self, base_url: str, cert: str | Path, key: str | Path, ca: str | Path,
                 peers: Mapping[str, str] | None = None, *, timeout: float = 10.0,
                 connections: int = DEFAULT_CONNECTIONS) -> None:
        super().__init__(peers)
        self.client = KMEClient(base_url, cert, key, ca, timeout=timeout,
                                connections=connections)
        self.blocking = KMEKeySource(self.client, self.peers)
        self.base_url = self.client.base_url
        self._files = (cert, key, ca)
        self._timeout = timeout
        self._connections = connections
        self._lock = threading.Lock()
        # (a plain dict: each client holds its loop, so weak keys would never be freed;
        # loops that ended without aclose() are dropped when a new loop asks)
        self._per_loop: dict[asyncio.AbstractEventLoop, AsyncKMEKeySource] = {}
        self._no_aiohttp = False

    def __repr__(self) -> str:
        return f"DualKMEKeySource({self.base_url!r})"

    # -- blocking: KeySource

    def take(self, peer: str, count: int = 1, size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        return self.blocking.take(peer, count, size_bits)

    def fetch(self, peer: str, key_ids: Sequence[KeyRef],
              size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        return self.blocking.fetch(peer, key_ids, size_bits)

    def status(self, peer: str) -> KMEStatus:
        """Get status for ``peer``'s SAE: what this SAE can obtain for it."""
        return self.client.status(self.sae_of(peer))

    def close(self) -> None:
        """Close the blocking client's idle connections (it reconnects when used)."""
        self.client.close()

    # -- asyncio: AsyncKeySource

    async def take_async(self, peer: str, count: int = 1,
                         size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        source = self._for_this_loop()
        if source is None:
            return await self._in_executor(lambda: self.take(peer, count, size_bits))
        return await source.take_async(peer, count, size_bits)

    async def fetch_async(self, peer: str, key_ids: Sequence[KeyRef],
                          size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        source = self._for_this_loop()
        if source is None:
            return await self._in_executor(lambda: self.fetch(peer, key_ids, size_bits))
        return await source.fetch_async(peer, key_ids, size_bits)

    async def status_async(self, peer: str) -> KMEStatus:
        """:meth:`status` for an event loop."""
        sae = self.sae_of(peer)
        source = self._for_this_loop()
        if source is None:
            return await self._in_executor(lambda: self.client.status(sae))
        return await source.client.status(sae)

    async def aclose(self) -> None:
        """Close the connections the running event loop's client opened."""
        with self._lock:
            source = self._per_loop.pop(asyncio.get_running_loop(), None)
        if source is not None:
            await source.client.close()

    def _for_this_loop(self) -> AsyncKMEKeySource | None:
        """The running loop's asyncio source, made on first use; None without aiohttp."""
        if self._no_aiohttp:
            return None
        loop = asyncio.get_running_loop()
        with self._lock:
            source = self._per_loop.get(loop)
            if source is not None:
                return source
            for ended in [other for other in self._per_loop if other.is_closed()]:
                del self._per_loop[ended]
            try:
                from hybridkex.keydelivery.kme.aio_client import (
                    AsyncKMEClient,
                    AsyncKMEKeySource,
                )
            except (BackendUnavailable, ImportError):  # no aiohttp (the kme extra)
                self._no_aiohttp = True
                return None
            cert, key, ca = self._files
            source = AsyncKMEKeySource(
                AsyncKMEClient(self.base_url, cert, key, ca, timeout=self._timeout,
                               connections=self._connections), self.peers)
            self._per_loop[loop] = source
            return source

    @staticmethod
    async def _in_executor(call: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(key_source_executor(), call)
