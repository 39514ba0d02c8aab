"""An asyncio ETSI GS QKD 014 client, so an event loop never blocks on its KME.

:class:`AsyncKMEClient` is :class:`~hybridkex.keydelivery.kme.client.KMEClient` for a
coroutine: the same three calls, the same requests and checks of the answers
(:mod:`hybridkex.keydelivery.kme.calls`) and the same typed errors, over aiohttp (the
``kme`` extra: ``pip install 'hybridkex[kme]'``).  :class:`AsyncKMEKeySource` wraps it
as a :class:`~hybridkex.keydelivery.source.AsyncKeySource` (``take_async`` /
``fetch_async``), which an asyncio driver awaits instead of running a blocking key
source in a thread.

Connections are kept alive and shared by the coroutines that use one client: at most
``connections`` are open at once, and a coroutine that finds them all busy waits for
one (at most ``timeout``).  A kept-alive connection the KME has closed is dropped
before it is used: the event loop has already seen it close.  Get status is sent once
more if its connection fails all the same (aiohttp does this for idempotent requests);
a key request never is: once aiohttp has begun to write it, a failure raises
:class:`~hybridkex.keydelivery.kme.calls.KMEOutcomeUnknown`.

A client belongs to the event loop it is first used in.  Close it with
``await client.close()`` or ``async with client:``; it reopens when used again.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from hybridkex.errors import BackendUnavailable, InvalidParameter
from hybridkex.keydelivery.errors import KeySourceError
from hybridkex.keydelivery.keys import UNIT_BITS, DeliveredKey, KeyRef
from hybridkex.keydelivery.kme.calls import (
    DEFAULT_CONNECTIONS,
    MAX_RESPONSE_BYTES,
    Call,
    KMEClientBase,
    KMEStatus,
    PeerSAEs,
    answer,
    dec_keys_call,
    enc_keys_call,
    status_call,
)

try:
    import aiohttp
except ImportError as exc:  # pragma: no cover - aiohttp is a test dependency
    raise BackendUnavailable(
        "the asyncio KME client needs aiohttp: pip install 'hybridkex[kme]'") from exc

__all__ = ["AsyncKMEClient", "AsyncKMEKeySource"]


@dataclass
class _Attempt:
    """Whether aiohttp got as far as writing the request's head."""

    wrote: bool = False


async def _on_headers(session: aiohttp.ClientSession, context: Any, params: Any) -> None:
    # aiohttp signals this just before it writes the head: from here on, the request
    # counts as possibly sent
    if isinstance(context.trace_request_ctx, _Attempt):
        context.trace_request_ctx.wrote = True


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind an aiohttp error, if there is one."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLError) and not isinstance(current, aiohttp.ClientError):
            return current  # OpenSSL's own, not aiohttp's wrapper that also is one
        todo += [getattr(current, "certificate_error", None), getattr(current, "os_error", None),
                 current.__cause__, current.__context__]
    return None


class AsyncKMEClient(KMEClientBase):
    """An SAE's connection to its KME, for asyncio: ``AsyncKMEClient(base_url, cert,
    key, ca)``; every call is a coroutine.

    ``timeout`` (seconds) bounds the wait for a free connection, connecting, and each
    wait for the KME's answer; ``connections`` is how many connections the coroutines
    sharing this client may have open at once.
    """

    def __init__(self, base_url: str, cert: str | Path, key: str | Path, ca: str | Path, *,
                 timeout: float = 10.0, connections: int = DEFAULT_CONNECTIONS) -> None:
        super().__init__(base_url, cert, key, ca, timeout=timeout, connections=connections)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the three methods of clause 5

    async def status(self, slave_sae: str) -> KMEStatus:
        """Get status (clause 5.2): what this (master) SAE can obtain for ``slave_sae``."""
        return cast(KMEStatus, await self._run(status_call(slave_sae)))

    async def get_keys(self, slave_sae: str, number: int = 1,
                       size: int = UNIT_BITS) -> list[DeliveredKey]:
        """Get key (clause 5.3, POST): ``number`` new keys of ``size`` bits for ``slave_sae``."""
        return cast(list[DeliveredKey], await self._run(enc_keys_call(slave_sae, number, size)))

    async def get_keys_with_ids(self, master_sae: str, key_ids: Sequence[str | Sequence[str]],
                                size: int | None = None) -> list[DeliveredKey]:
        """Get key with key IDs (clause 5.4, POST): the keys ``master_sae`` obtained, by
        key ID or by a key's unit IDs (``DeliveredKey.ids``); without ``size``, at the
        size the KME reserved each key with (as
        :meth:`~hybridkex.keydelivery.kme.client.KMEClient.get_keys_with_ids`)."""
        return cast(list[DeliveredKey],
                    await self._run(dec_keys_call(master_sae, key_ids, size)))

    # -- the session

    async def close(self) -> None:
        """Close the connections; the client opens new ones if it is used again."""
        session, self._session = self._session, None
        self._loop = None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> AsyncKMEClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _current_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is not None and not self._session.closed:
            if self._loop is loop:
                return self._session
            if self._loop is not None and not self._loop.is_closed():
                raise InvalidParameter("an AsyncKMEClient serves the event loop it was first "
                                       "used in; make one client per event loop")
            # that loop has ended, and its connections with it: start afresh
        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(_on_headers)
        t = self.timeout
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self.connections),
            timeout=aiohttp.ClientTimeout(total=None, connect=t, sock_connect=t, sock_read=t),
            trace_configs=[trace], auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)
        self._loop = loop
        return self._session

    async def _run(self, call: Call) -> Any:
        status, raw = await self._exchange(call)
        return answer(call, status, raw)

    async def _exchange(self, call: Call) -> tuple[int, bytes]:
        session = self._current_session()
        attempt = _Attempt()
        try:
            async with session.request(call.method, self.base_url + call.path, data=call.body,
                                       headers=call.headers, allow_redirects=False,
                                       trace_request_ctx=attempt) as response:
                return response.status, await self._read(response)
        except KeySourceError:
            raise
        except (aiohttp.ClientError, OSError) as exc:  # TimeoutError is an OSError
            cause = exc if isinstance(exc, TimeoutError) else _ssl_error(exc) or exc
            raise self._endpoint.failure(call, cause, sent=attempt.wrote,
                                         timeout=self.timeout) from None

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        """The whole body, at most MAX_RESPONSE_BYTES."""
        length = response.content_length
        chunks: list[bytes] = []
        total = 0
        while length is None or length <= MAX_RESPONSE_BYTES:
            chunk = await response.content.read(1 << 16)
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > MAX_RESPONSE_BYTES:
                break
            chunks.append(chunk)
        response.close()  # the rest is never read: the connection is not reused
        raise self._endpoint.too_large()


class AsyncKMEKeySource(PeerSAEs):
    """An :class:`~hybridkex.keydelivery.source.AsyncKeySource` over an ETSI GS QKD 014
    KME: ``take_async`` is Get key for the peer's SAE, ``fetch_async`` Get key with key
    IDs from it.  ``peers`` maps the session's peer identifier to the peer's SAE ID (as
    for :class:`~hybridkex.keydelivery.kme.client.KMEKeySource`)."""

    def __init__(self, client: AsyncKMEClient, peers: Mapping[str, str] | None = None) -> None:
        super().__init__(peers)
        self.client = client

    async def take_async(self, peer: str, count: int = 1,
                         size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        return await self.client.get_keys(self.sae_of(peer), count, size_bits)

    async def fetch_async(self, peer: str, key_ids: Sequence[KeyRef],
                          size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        return await self.client.get_keys_with_ids(self.sae_of(peer), key_ids, size_bits)

    def __repr__(self) -> str:
        return f"AsyncKMEKeySource({self.client!r})"
