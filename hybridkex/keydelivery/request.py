"""One call on a key source, described rather than made: what a sans-IO connection
asks its driver for when it needs QKD keys.

A connection that never calls its key source itself (``key_events=True``, as the
asyncio drivers create them) stops where it needs keys and hands out a
:class:`KeyRequest`.  The driver makes the call where waiting does no harm, and
answers with the keys or with the source's :class:`~hybridkex.keydelivery.errors.
KeySourceError`: :meth:`KeyRequest.perform` for a thread that may block,
:meth:`KeyRequest.perform_async` for an event loop, which awaits an
:class:`~hybridkex.keydelivery.source.AsyncKeySource` natively and runs any other
source in an executor thread.  Either way the loop keeps serving other connections
while the keys are on their way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from hybridkex.errors import InvalidParameter
from hybridkex.keydelivery.errors import KeySourceError
from hybridkex.keydelivery.keys import UNIT_BITS, DeliveredKey
from hybridkex.keydelivery.source import AsyncKeySource, KeySource

__all__ = ["FETCH", "KEY_SOURCE_THREADS", "TAKE", "KeyRequest", "key_source_executor"]

TAKE, FETCH = "take", "fetch"
#: Threads of the shared executor that blocking key sources run in by default.  Their
#: calls wait (a KME over the network, a store's fsync), they do not compute, so they
#: get more threads than an event loop's default executor (which is sized for CPUs).
KEY_SOURCE_THREADS = 64
_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def key_source_executor() -> concurrent.futures.ThreadPoolExecutor:
    """The shared executor for blocking key source calls (threads start on demand)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(
                KEY_SOURCE_THREADS, thread_name_prefix="hybridkex-keys")
        return _executor


@dataclass(frozen=True)
class KeyRequest:
    """``take(peer, count, size_bits)`` (as initiator) or ``fetch(peer, key_ids,
    size_bits)`` (as responder), with ETSI GS QKD 014 semantics; ``purpose`` says what
    the keys are for, for messages (never key material)."""

    operation: str
    peer: str
    count: int
    key_ids: tuple[str, ...] = ()
    size_bits: int = UNIT_BITS
    purpose: str = "QKD keys"

    def __post_init__(self) -> None:
        if self.operation not in (TAKE, FETCH):
            raise InvalidParameter(f"a key request is {TAKE!r} or {FETCH!r}")
        if self.operation == FETCH and len(self.key_ids) != self.count:
            raise InvalidParameter("a fetch names one key ID per key")

    @classmethod
    def take(cls, peer: str, count: int, size_bits: int = UNIT_BITS, *,
             purpose: str = "QKD keys") -> KeyRequest:
        return cls(TAKE, peer, count, (), size_bits, purpose)

    @classmethod
    def fetch(cls, peer: str, key_ids: Sequence[str], size_bits: int = UNIT_BITS, *,
              purpose: str = "QKD keys") -> KeyRequest:
        return cls(FETCH, peer, len(key_ids), tuple(key_ids), size_bits, purpose)

    def perform(self, source: KeySource) -> list[DeliveredKey]:
        """Make the call on a blocking source (it may wait for the network)."""
        if self.operation == TAKE:
            keys = source.take(self.peer, self.count, self.size_bits)
        else:
            keys = source.fetch(self.peer, list(self.key_ids), self.size_bits)
        return self.check(keys)

    async def perform_async(self, source: KeySource | AsyncKeySource,
                            executor: concurrent.futures.Executor | None = None
                            ) -> list[DeliveredKey]:
        """Make the call without blocking the running event loop: awaited on an
        :class:`AsyncKeySource`, in ``executor`` (default: :func:`key_source_executor`)
        otherwise."""
        if isinstance(source, AsyncKeySource):
            if self.operation == TAKE:
                keys = await source.take_async(self.peer, self.count, self.size_bits)
            else:
                keys = await source.fetch_async(self.peer, list(self.key_ids), self.size_bits)
            return self.check(keys)
        if not isinstance(source, KeySource):
            raise InvalidParameter("the key source has neither take/fetch nor "
                                   "take_async/fetch_async")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor or key_source_executor(), self.perform,
                                          source)

    def check(self, keys: Sequence[DeliveredKey]) -> list[DeliveredKey]:
        """The keys, if they are what was asked for: the count, the size, and for a
        fetch the IDs in order.  A source that answers otherwise is refused like one
        that could not deliver."""
        keys = list(keys)
        if len(keys) != self.count or not all(isinstance(k, DeliveredKey) for k in keys):
            raise KeySourceError(f"the key source answered {len(keys)} keys for "
                                 f"{self.purpose}; {self.count} were asked for")
        if any(len(k.key) * 8 != self.size_bits for k in keys):
            raise KeySourceError(f"the key source answered keys of another size than "
                                 f"{self.size_bits} bits for {self.purpose}")
        if self.operation == FETCH and tuple(k.key_id.lower() for k in keys) != tuple(
                i.lower() for i in self.key_ids):
            raise KeySourceError(f"the key source answered other key IDs than those asked "
                                 f"for {self.purpose}")
        return keys
