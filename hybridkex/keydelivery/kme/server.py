"""The KME server: ETSI GS QKD 014 V1.1.1 key delivery over HTTPS with mutual TLS (aiohttp).

One KME serves the SAEs attached to one site.  The caller is identified by the subject
common name of its client certificate (issued by the configured CA); the SAE map
(SAE ID -> site ID) says where every SAE is attached.  Keys come from the site's
:class:`~hybridkex.keydelivery.store.KeyStore`, bound to SAEs
(:mod:`hybridkex.keydelivery.binding`):

* ``enc_keys`` from master SAE *M* (here) for slave SAE *S* (at a peer site):
  ``store.reserve``, the reservation sent to S's KME (:mod:`.peers`, :mod:`.sync`),
  and ``store.confirm`` once that KME recorded it.  Reserving ahead, one round
  reserves up to ``reserve_ahead`` keys more, which this process claims at once
  (the store counts them delivered) and hands out from memory, so most calls touch
  neither the store nor the peer; a crash loses the keys held, never repeats them;
* ``dec_keys`` from slave SAE *S* (here) naming *M*: ``store.deliver``, only keys bound
  to M and S, each once to each slave SAE, all or nothing;
* ``status``: the free units of the link plus the keys reserved for (M, S);
* ``POST /kme-sync/v1/reservations`` from a peer KME: ``store.record``;
* SKIP (:mod:`.skip`): ``/capabilities``, ``/key``, ``/key/{keyId}``, ``/entropy``.

Key store calls block, so they run in a thread pool (a memory store is called inline).
Every error is an Error body (clause 6.5) with 400, 401 or 503 (404/405 for paths and
methods the API does not have, 409 for a refused sync); an unexpected failure is
logged (type and traceback, never a message that could carry data) and answered 503
with a generic message, never 500.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import re
import secrets
import signal
import ssl
import threading
import traceback
import weakref
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from hybridkex.errors import InvalidParameter
from hybridkex.keydelivery.binding import Binding
from hybridkex.keydelivery.errors import (
    KeyAccessDenied,
    KeyNotAvailable,
    KeysExhausted,
    KeySourceError,
    ReservationRefused,
)
from hybridkex.keydelivery.keys import MAX_KEYS_PER_REQUEST, DeliveredKey, units_for
from hybridkex.keydelivery.kme.formats import (
    DEFAULT_KEY_SIZE,
    KEY_ID_ERROR,
    KEYS_NOT_FOUND,
    BadRequest,
    KeyIDRef,
    KMEError,
    KMELimits,
    ServerError,
    Unauthorized,
    decode_json,
    error_body,
    key_container,
    parse_key_ids,
    parse_key_ids_query,
    parse_key_request,
    parse_key_request_query,
    status_body,
)
from hybridkex.keydelivery.kme.peers import (
    PeerKMEs,
    PeerTLS,
    check_peer_url,
    common_name,
    peer_tls,
)
from hybridkex.keydelivery.kme.skip import (
    capabilities_body,
    entropy_bits,
    key_body,
    parse_key_id,
    parse_remote,
    parse_size,
)
from hybridkex.keydelivery.kme.sync import RESERVATIONS_PATH, Conflict, parse_reservations
from hybridkex.keydelivery.store import KeyStore, MemoryKeyStore

__all__ = [
    "DEFAULT_RESERVE_AHEAD",
    "DEFAULT_RETENTION_S",
    "BackgroundKME",
    "KMEServer",
    "SAEMap",
    "load_sae_map",
    "openapi_document",
    "parse_sae_map",
    "peer_tls",
    "run_until_signalled",
    "sae_id_of",
    "server_ssl_context",
]

log = logging.getLogger("hybridkex.kme")

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

API = "/api/v1/keys"
OPENAPI_PATH = "/api/v1/openapi.yaml"
_NO_STORE = {"Cache-Control": "no-store"}
DEFAULT_RESERVE_AHEAD = 128
"""Keys reserved ahead per (binding, size) in one sync round (0: reserve per request).

A round costs three store transactions (reserve, the peer's record, confirm; each an
fsync on SQLite) and one KME-to-KME request, whatever it carries: 128 keys a round
spread that over 128 ``enc_keys`` calls.  A KME that dies loses what it holds, fewer
than one and a half rounds' worth per pair and size (the top-up starts when half are
gone; a round is at most a quarter of the free pool)."""
DEFAULT_RETENTION_S = 86_400.0
"""Delivered rows stay one day in the store, then are purged."""
_LIMIT_MARK = re.compile(r"(?m)^([ \t]*\w+:[ \t]*)\d+([ \t]*#[ \t]*limit:(\w+))[ \t]*$")


# -- configuration ------------------------------------------------------------------------


class SAEMap(dict[str, str]):
    """SAE ID -> site ID, plus each SAE's SKIP peer where the map names one.

    In the JSON an entry is ``"sae-a": "A"`` or ``"sae-a": {"site": "A", "skip_peer":
    "sae-b"}``; SKIP names no peer SAE, so a SKIP key that ``sae-a`` takes is bound to
    its ``skip_peer``.
    """

    skip_peers: dict[str, str]

    def __init__(self, sites: Mapping[str, str], skip_peers: Mapping[str, str]) -> None:
        super().__init__(sites)
        self.skip_peers = dict(skip_peers)


def parse_sae_map(value: Any) -> SAEMap:
    """Check an SAE map: a JSON object of SAE ID -> site ID, or SAE ID -> ``{"site":
    ..., "skip_peer": ...}``, all non-empty strings; a skip peer is an SAE of the map
    attached to another site."""
    if not isinstance(value, dict) or not value:
        raise InvalidParameter("the SAE map must be a non-empty JSON object of SAE ID -> site ID")
    sites: dict[str, str] = {}
    skip_peers: dict[str, str] = {}
    for sae, entry in value.items():
        site, skip_peer = entry, None
        if isinstance(entry, dict):
            if not set(entry) <= {"site", "skip_peer"} or "site" not in entry:
                raise InvalidParameter(f"SAE map entry {sae!r} must be a site ID or an object "
                                       'with "site" and optionally "skip_peer"')
            site, skip_peer = entry["site"], entry.get("skip_peer")
        if not isinstance(sae, str) or not sae or not isinstance(site, str) or not site:
            raise InvalidParameter("every SAE map entry must map a non-empty SAE ID string to "
                                   "a non-empty site ID string")
        if skip_peer is not None:
            if not isinstance(skip_peer, str) or not skip_peer:
                raise InvalidParameter(f"the skip_peer of {sae!r} must be an SAE ID")
            skip_peers[sae] = skip_peer
        sites[sae] = site
    for sae, peer in skip_peers.items():
        if sites.get(peer) in (None, sites[sae]):
            raise InvalidParameter(f"the skip_peer of {sae!r} must be an SAE of the map "
                                   "attached to another site")
    return SAEMap(sites, skip_peers)


def load_sae_map(path: str | Path) -> SAEMap:
    """Read an SAE map file (JSON); errors name the file in one line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidParameter(f"cannot read SAE map {path}: {reason}") from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidParameter(f"SAE map {path} is not JSON: {exc}") from None
    try:
        return parse_sae_map(value)
    except InvalidParameter as exc:
        raise InvalidParameter(f"SAE map {path}: {exc}") from None


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.strerror or "not a valid PEM file")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def server_ssl_context(cert: str | Path, key: str | Path, ca: str | Path) -> ssl.SSLContext:
    """TLS >= 1.2 server context that requires a client certificate issued by ``ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        # an encrypted key fails here instead of prompting for a passphrase
        ctx.load_cert_chain(str(cert), str(key), password=b"")
    except (OSError, ValueError) as exc:
        raise InvalidParameter(f"cannot load the KME certificate {cert} with key {key}: "
                               f"{_ssl_reason(exc)}") from None
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (OSError, ValueError) as exc:
        raise InvalidParameter(f"cannot load the CA certificate {ca}: {_ssl_reason(exc)}") from None
    return ctx


def sae_id_of(peercert: Any) -> str | None:
    """The SAE ID in a verified client certificate: its subject's single common name,
    which must not be empty."""
    return common_name(peercert) or None


def openapi_document(limits: KMELimits) -> str:
    """The served OpenAPI document, with the numbers marked ``# limit:<name>`` filled in."""
    text = resources.files("hybridkex.keydelivery.kme").joinpath("openapi.yaml").read_text("utf-8")

    def fill(match: re.Match[str]) -> str:
        return f"{match.group(1)}{getattr(limits, match.group(3))}{match.group(2)}"

    return _LIMIT_MARK.sub(fill, text)


# -- the server ---------------------------------------------------------------------------


class KMEServer:
    """The KME of site ``site_id``: its key store, SAE map, TLS context and limits.

    ``peers`` maps each peer site ID to its KME's base URL; reservations for keys whose
    slave SAEs are at that site are sent there (with ``peer_tls``, this KME's
    own certificate as client certificate, see :func:`peer_tls`), and sync requests
    are accepted only from those KMEs.  ``reserve_ahead`` keys per (binding, size) are
    reserved at both KMEs in one sync round, so most ``enc_keys`` calls need no round
    trip to the peer;
    ``retention_s`` is how long delivered rows stay in the store before they are
    purged.
    """

    def __init__(self, store: KeyStore, site_id: str, sae_map: Mapping[str, Any],
                 ssl_context: ssl.SSLContext, *, limits: KMELimits | None = None,
                 workers: int = 8, peers: Mapping[str, str] | None = None,
                 peer_tls: PeerTLS | None = None,
                 reserve_ahead: int = DEFAULT_RESERVE_AHEAD,
                 retention_s: float = DEFAULT_RETENTION_S, sync_timeout_s: float = 10.0) -> None:
        if store.site_id != site_id:
            raise InvalidParameter(f"the key store belongs to site {store.site_id!r}, "
                                   f"not {site_id!r}")
        if ssl_context.verify_mode != ssl.CERT_REQUIRED:
            raise InvalidParameter("the KME's TLS context must require client certificates")
        if peers and peer_tls is None:
            raise InvalidParameter("peer KMEs need a TLS context for the KME-to-KME channel")
        if not isinstance(reserve_ahead, int) or reserve_ahead < 0:
            raise InvalidParameter("reserve_ahead must be a non-negative int")
        if not retention_s >= 0:
            raise InvalidParameter("the retention must be a non-negative number of seconds")
        self.store = store
        self.site_id = site_id
        self.sae_map = sae_map if isinstance(sae_map, SAEMap) else parse_sae_map(dict(sae_map))
        self.ssl_context = ssl_context
        self.limits = limits or KMELimits()
        self.reserve_ahead = reserve_ahead
        self.retention_s = retention_s
        self._peers = PeerKMEs(site_id, peers or {}, peer_tls, timeout_s=sync_timeout_s)
        self._check_names()
        self._workers = workers
        self._inline = isinstance(store, MemoryKeyStore)  # never blocks: no thread hop
        self._executor: ThreadPoolExecutor | None = None
        self._runner: web.AppRunner | None = None
        self._openapi = openapi_document(self.limits)
        self._tasks: set[asyncio.Task[None]] = set()
        self._refilling: set[tuple[str, str, int]] = set()
        self._locks: dict[tuple[str, str, int], asyncio.Lock] = {}
        # keys reserved at both KMEs and claimed by this process, by (peer, tag, size)
        self._held: dict[tuple[str, str, int], collections.deque[DeliveredKey]] = {}
        self._bindings: dict[tuple[str, tuple[str, ...]], Binding] = {}
        self._names: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()
        self.address: tuple[str, int] | None = None

    def _check_names(self) -> None:
        clash = set(self._peers.urls) & set(self.sae_map)
        if clash:
            raise InvalidParameter(f"{sorted(clash)[0]!r} is both a peer KME ID and an SAE ID")
        if self.site_id in self._peers.urls:
            raise InvalidParameter("a KME is not its own peer")

    def set_peer(self, site: str, url: str) -> None:
        """Add or change a peer KME (tests that bind port 0 learn the URL late)."""
        self._peers.urls[site] = check_peer_url(site, url)
        self._check_names()

    @property
    def peers(self) -> dict[str, str]:
        return dict(self._peers.urls)

    # -- lifecycle

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=256 * 1024)
        # the router tries resources in this order: enc_keys and dec_keys, the calls a
        # KME serves most, first
        app.add_routes([
            web.post(API + "/{slave_SAE_ID}/enc_keys", self.get_key_post),
            web.get(API + "/{slave_SAE_ID}/enc_keys", self.get_key_get, allow_head=False),
            web.get(API + "/{master_SAE_ID}/dec_keys", self.get_key_with_ids_get,
                    allow_head=False),
            web.post(API + "/{master_SAE_ID}/dec_keys", self.get_key_with_ids_post),
            web.get(API + "/{slave_SAE_ID}/status", self.get_status),
            web.get(OPENAPI_PATH, self.get_openapi),
            web.post(RESERVATIONS_PATH, self.post_reservations),
            web.get("/capabilities", self.skip_capabilities, allow_head=False),
            web.get("/key", self.skip_new_key, allow_head=False),
            web.get("/key/{keyId}", self.skip_key_by_id, allow_head=False),
            web.get("/entropy", self.skip_entropy, allow_head=False),
        ])
        return app

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host:port`` (0: any free port); returns the bound address."""
        if self._runner is not None:
            raise InvalidParameter("the KME is already running")
        self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="kme-store")
        runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False,
                               shutdown_timeout=5.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, ssl_context=self.ssl_context).start()
        except BaseException:
            await runner.cleanup()
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self._runner = runner
        await self._peers.start()
        self._spawn(self._purge_loop())
        bound = runner.addresses[0]
        self.address = (str(bound[0]), int(bound[1]))
        log.info("KME for site %s listening on %s:%d", self.site_id, *self.address)
        return self.address

    async def close(self) -> None:
        """Stop listening, finish the requests under way, release the thread pool."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._peers.close()
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def _spawn(self, job: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _purge_loop(self) -> None:
        """Purge delivered rows older than the retention, every quarter retention (at
        least every second, at most hourly)."""
        interval = max(1.0, min(self.retention_s / 4, 3600.0))
        while True:
            await asyncio.sleep(interval)
            try:
                removed = await self._run(self.store.purge_delivered, self.retention_s)
            except (KeySourceError, KMEError) as exc:
                log.warning("purging delivered keys failed: %s", type(exc).__name__)
                continue
            if removed:
                log.info("purged %d delivered row(s) older than %g s", removed,
                         self.retention_s)

    # -- plumbing

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except KMEError as exc:
            response = _error_response(exc.status, exc.body())
        except web.HTTPException as exc:
            if exc.status == 413:
                response = _error_response(400, error_body("the request body is too large"))
            elif exc.status < 500:
                headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
                response = _error_response(exc.status, error_body(exc.reason), headers)
            else:
                response = _error_response(503, error_body("the KME could not serve the request"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # the type and where it was raised only: neither the message nor the source
            # lines of an unexpected error are logged, as either could carry data
            where = " <- ".join(f"{frame.filename}:{frame.lineno} in {frame.name}"
                                for frame in reversed(traceback.extract_tb(exc.__traceback__)))
            log.error("unexpected %s serving %s %s at %s", type(exc).__name__, request.method,
                      request.path, where)
            response = _error_response(503, error_body("the KME could not serve the request"))
        if log.isEnabledFor(logging.INFO):
            log.info("%s %s -> %d", request.method, request.path, response.status)
        return response

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise ServerError("the KME is not running")
        if self._inline:
            return fn(*args)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def _common_name(self, request: web.Request) -> str | None:
        """The client certificate's CN, read once per connection (a kept-alive
        connection keeps its certificate)."""
        transport = request.transport
        if transport is None:
            return None
        try:
            return self._names[transport]
        except KeyError:
            pass
        except TypeError:  # a transport that cannot be weakly referenced
            return sae_id_of(transport.get_extra_info("peercert"))
        name = self._names[transport] = sae_id_of(transport.get_extra_info("peercert"))
        return name

    def _caller(self, request: web.Request) -> str:
        """The calling SAE (from its client certificate); it must be attached to this site."""
        sae = self._common_name(request)
        if sae is None:
            raise Unauthorized("the client certificate has no single subject common name")
        if self.sae_map.get(sae) != self.site_id:
            raise Unauthorized("the calling SAE is not attached to this KME")
        return sae

    def _peer_site(self, sae: str) -> str:
        """The site of the SAE named in the path; it must be known and at another site."""
        site = self.sae_map.get(sae)
        if site is None:
            raise Unauthorized("the SAE ID in the request is unknown to this KME")
        if site == self.site_id:
            raise BadRequest("both SAEs are attached to this KME: keys are shared between sites")
        return site

    # -- Get status (clause 5.2)

    async def get_status(self, request: web.Request) -> web.Response:
        master = self._caller(request)
        slave = request.match_info["slave_SAE_ID"]
        peer = self._peer_site(slave)
        status = await self._run(self.store.status, peer)
        binding = self._binding(master, (slave,))
        ready = await self._run(self.store.ready_count, peer, binding, DEFAULT_KEY_SIZE)
        held = len(self._held.get((peer, binding.tag, DEFAULT_KEY_SIZE), ()))
        return _json(status_body(source_kme=self.site_id, target_kme=peer, master_sae=master,
                                 slave_sae=slave,
                                 available_units=status.available_to_take + ready + held,
                                 limits=self.limits))

    # -- Get key (clause 5.3)

    async def get_key_get(self, request: web.Request) -> web.Response:
        master = self._caller(request)
        slave = request.match_info["slave_SAE_ID"]
        wanted = parse_key_request_query(_query(request), self.limits)
        keys = await self._take(master, slave, wanted.additional_slaves, wanted.number,
                                wanted.size)
        return _json(key_container(keys))

    async def get_key_post(self, request: web.Request) -> web.Response:
        master = self._caller(request)
        slave = request.match_info["slave_SAE_ID"]
        raw = await request.read()
        wanted = parse_key_request(decode_json(raw) if raw.strip() else None, self.limits)
        keys = await self._take(master, slave, wanted.additional_slaves, wanted.number,
                                wanted.size)
        return _json(key_container(keys))

    def _binding(self, master: str, slaves: tuple[str, ...]) -> Binding:
        key = (master, slaves)
        binding = self._bindings.get(key)
        if binding is None:
            try:
                binding = Binding(master, slaves)
            except InvalidParameter as exc:
                raise BadRequest(str(exc)) from None
            if len(self._bindings) < 10_000:
                self._bindings[key] = binding
        return binding

    async def _take(self, master: str, slave: str, extra: tuple[str, ...], number: int,
                    size: int) -> list[DeliveredKey]:
        """Keys bound to (master, slave, extra...): from the keys this process holds,
        reserved ahead at both KMEs, else reserved now and recorded by the slave's KME
        before they are handed out."""
        peer = self._peer_site(slave)
        if extra and any(self._peer_site(s) != peer for s in extra):
            raise BadRequest("every slave SAE must be attached to the same site")
        binding = self._binding(master, (slave, *extra))
        job = (peer, binding.tag, size)
        held = self._held.get(job)
        if held is None or len(held) < number:
            # one reservation at a time per binding and size: requests that queue here
            # are served from what the one before them reserved ahead
            async with self._reserving(job):
                held = self._held.setdefault(job, collections.deque())
                if len(held) < number:
                    try:
                        held.extend(await self._reserve_now(peer, binding, size,
                                                            number - len(held)))
                    except (InvalidParameter, KeySourceError) as exc:
                        raise BadRequest(str(exc)) from None
        keys = [held.popleft() for _ in range(number)]
        if len(held) < self.reserve_ahead // 2:
            self._refill_soon(peer, binding, size)
        if log.isEnabledFor(logging.INFO):
            log.info("delivered %d key(s) of %d bits to master SAE %s for %s", len(keys), size,
                     master, ", ".join(binding.slaves))
        return keys

    def _reserving(self, job: tuple[str, str, int]) -> asyncio.Lock:
        return self._locks.setdefault(job, asyncio.Lock())

    def _ahead(self, free_units: int, units: int, number: int) -> int:
        """How many keys to reserve beyond ``number``: ``reserve_ahead`` at most, no
        more than one sync request carries, and at most a quarter of the free pool, so
        one SAE pair never holds most of a small pool."""
        if self.reserve_ahead == 0:
            return 0
        return max(0, min(self.reserve_ahead, MAX_KEYS_PER_REQUEST // units - number,
                          free_units // units // 4 - number))

    async def _reserve(self, peer: str, binding: Binding, size: int,
                       count: int) -> list[DeliveredKey]:
        """Reserve ``count`` keys, have the peer KME record them, then claim them all
        for this process in one transaction (the store counts them delivered: held
        here, a key a crash loses is never handed out by anyone)."""
        reserved = await self._run(self.store.reserve, peer, binding, size, count)
        # a failure here leaves the reservation pending: its keys are never handed out
        await self._peers.send(peer, reserved)
        return await self._run(self.store.confirm, peer, [r.key_id for r in reserved],
                               len(reserved))

    async def _reserve_now(self, peer: str, binding: Binding, size: int,
                           number: int) -> list[DeliveredKey]:
        if peer not in self._peers.urls:
            raise ServerError(f"no peer KME is configured for site {peer}")
        status = await self._run(self.store.status, peer)
        extra = self._ahead(status.available_to_take, units_for(size), number)
        try:
            return await self._reserve(peer, binding, size, number + extra)
        except KeysExhausted:
            try:
                if not extra:
                    raise
                return await self._reserve(peer, binding, size, number)
            except KeysExhausted:
                status = await self._run(self.store.status, peer)
                raise ServerError("not enough keys available",
                                  [{"stored_key_count": status.available_to_take}]) from None

    def _refill_soon(self, peer: str, binding: Binding, size: int) -> None:
        """Top up the keys held for this binding in the background."""
        job = (peer, binding.tag, size)
        if self.reserve_ahead == 0 or job in self._refilling or peer not in self._peers.urls:
            return
        self._refilling.add(job)

        async def refill() -> None:
            try:
                async with self._reserving(job):
                    held = self._held.setdefault(job, collections.deque())
                    if len(held) >= self.reserve_ahead // 2:
                        return
                    status = await self._run(self.store.status, peer)
                    count = self._ahead(status.available_to_take, units_for(size), 0)
                    if count > 0:
                        held.extend(await self._reserve(peer, binding, size, count))
            except (KMEError, KeySourceError, InvalidParameter) as exc:
                log.warning("reserving ahead for site %s failed: %s", peer, exc)
            finally:
                self._refilling.discard(job)

        self._spawn(refill())

    # -- Get key with key IDs (clause 5.4)

    async def get_key_with_ids_get(self, request: web.Request) -> web.Response:
        slave = self._caller(request)
        master = request.match_info["master_SAE_ID"]
        keys = await self._deliver(slave, master,
                                   parse_key_ids_query(_query(request), self.limits))
        return _json(key_container(keys))

    async def get_key_with_ids_post(self, request: web.Request) -> web.Response:
        slave = self._caller(request)
        master = request.match_info["master_SAE_ID"]
        raw = await request.read()
        if not raw.strip():
            raise BadRequest("the request must be a JSON object with key_IDs")
        keys = await self._deliver(slave, master, parse_key_ids(decode_json(raw), self.limits))
        return _json(key_container(keys))

    async def _deliver(self, slave: str, master: str, refs: list[KeyIDRef],
                       peer: str | None = None,
                       masters: frozenset[str] | None = None) -> list[DeliveredKey]:
        """The keys named, if each is bound to this slave SAE and to ``master`` (or,
        for SKIP, to any of ``masters`` at site ``peer``); all or nothing."""
        if peer is None:
            peer = self._peer_site(master)
        expected = [(r.size, r.units) if r.size is not None and r.units is not None else None
                    for r in refs]
        try:
            keys = await self._run(self.store.deliver, peer, slave, masters or {master},
                                   [r.key_id for r in refs], expected)
        except KeyAccessDenied:
            raise Unauthorized("a requested key is not bound to this SAE") from None
        except KeyNotAvailable:
            raise BadRequest(KEYS_NOT_FOUND, [{KEY_ID_ERROR: "not_found"}]) from None
        except (InvalidParameter, KeySourceError) as exc:
            raise BadRequest(str(exc), [{KEY_ID_ERROR: "rejected"}]) from None
        log.info("delivered %d key(s) to slave SAE %s from site %s", len(keys), slave, peer)
        return keys

    # -- the KME-to-KME sync (hybridkex.keydelivery.kme.sync)

    async def post_reservations(self, request: web.Request) -> web.Response:
        caller = self._common_name(request)
        if caller is None or caller not in self._peers.urls:
            raise Unauthorized("the calling KME is not a peer of this KME")
        raw = await request.read()
        reservations = parse_reservations(decode_json(raw), caller=caller, local=self.site_id,
                                          sae_sites=self.sae_map, limits=self.limits)
        try:
            await self._run(self.store.record, caller, reservations)
        except ReservationRefused as exc:
            raise Conflict(str(exc)) from None
        except (InvalidParameter, KeySourceError) as exc:
            raise BadRequest(str(exc)) from None
        log.info("recorded %d reservation(s) from KME %s", len(reservations), caller)
        return _json({"recorded": len(reservations)})

    # -- SKIP (hybridkex.keydelivery.kme.skip)

    async def skip_capabilities(self, request: web.Request) -> web.Response:
        self._caller(request)
        return _json(capabilities_body(self.site_id, list(self._peers.urls)))

    async def skip_new_key(self, request: web.Request) -> web.Response:
        master = self._caller(request)
        query = _query(request)
        remote = parse_remote(query)
        size = parse_size(query, self.limits)
        slave = self.sae_map.skip_peers.get(master)
        if slave is None:
            raise BadRequest("no skip_peer is configured for this SAE in the SAE map")
        if self.sae_map.get(slave) != remote:
            raise BadRequest("remoteSystemID is not the site of this SAE's skip_peer")
        (key,) = await self._take(master, slave, (), 1, size)
        return _json(key_body(key))

    async def skip_key_by_id(self, request: web.Request) -> web.Response:
        slave = self._caller(request)
        query = _query(request)
        remote = parse_remote(query)
        key_id = parse_key_id(request.match_info["keyId"])
        if remote == self.site_id or remote not in self.sae_map.values():
            raise BadRequest("remoteSystemID is not a site this KME shares keys with")
        masters = frozenset(s for s, site in self.sae_map.items() if site == remote)
        (key,) = await self._deliver(slave, "", [KeyIDRef(key_id)], peer=remote,
                                     masters=masters)
        return _json(key_body(key))

    async def skip_entropy(self, request: web.Request) -> web.Response:
        self._caller(request)
        bits = entropy_bits(_query(request))
        return _json({"randomStr": secrets.token_hex(bits // 8), "minentropy": bits})

    # -- the API description

    async def get_openapi(self, request: web.Request) -> web.Response:
        return web.Response(text=self._openapi, content_type="application/yaml")


def _query(request: web.Request) -> dict[str, list[str]]:
    query: dict[str, list[str]] = {}
    for name, value in request.query.items():
        query.setdefault(name, []).append(value)
    return query


def _json(body: Any) -> web.Response:
    return web.json_response(body, headers=_NO_STORE)


def _error_response(status: int, body: Mapping[str, Any],
                    headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(dict(body), status=status, headers={**_NO_STORE, **(headers or {})})


# -- running it ---------------------------------------------------------------------------


async def run_until_signalled(server: KMEServer, host: str, port: int,
                              on_ready: Callable[[str, int], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then stop cleanly (requests under way finish)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        address = await server.start(host, port)
        try:
            if on_ready is not None:
                on_ready(*address)
            await stop.wait()
        finally:
            await server.close()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


class BackgroundKME:
    """A :class:`KMEServer` on its own event loop in a daemon thread (tests, demos)::

        with BackgroundKME(server) as kme:
            client = KMEClient(kme.url, ...)
    """

    def __init__(self, server: KMEServer, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = server
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    def start(self) -> BackgroundKME:
        self._thread = threading.Thread(target=self._main, name=f"kme-{self.server.site_id}",
                                        daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure
        return self

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            try:
                _, self.port = loop.run_until_complete(self.server.start(self.host, self.port))
            except BaseException as exc:
                self._failure = exc
                return
            finally:
                self._ready.set()
            loop.run_forever()
            loop.run_until_complete(self.server.close())
        finally:
            loop.close()

    def close(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    def __enter__(self) -> BackgroundKME:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
