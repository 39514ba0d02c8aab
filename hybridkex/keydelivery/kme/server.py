"""The KME server: ETSI GS QKD 014 V1.1.1 key delivery over HTTPS with mutual TLS (aiohttp).

One KME serves the SAEs attached to one site.  The caller is identified by the subject
common name of its client certificate (issued by the configured CA); the SAE map
(SAE ID -> site ID) says where every SAE is attached.  Keys come from the site's
:class:`~hybridkex.keydelivery.store.KeyStore`:

* ``enc_keys`` from master SAE *M* (here) for slave SAE *S*:
  ``store.take(peer=site_of(S), number, size)``;
* ``dec_keys`` from slave SAE *S* (here) with master SAE *M*:
  ``store.fetch(peer=site_of(M), key_ids)``, all or nothing;
* ``status``: the counts of the link to ``site_of(S)``.

Key store calls block, so they run in a thread pool.  Every error is an Error body
(clause 6.5) with 400, 401 or 503 (404/405 for paths and methods the API does not
have); an unexpected failure is logged (type and traceback, never a message that could
carry data) and answered 503 with a generic message, never 500.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import signal
import ssl
import threading
import traceback
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from hybridkex.errors import InvalidParameter
from hybridkex.keydelivery.errors import KeyNotAvailable, KeysExhausted, KeySourceError
from hybridkex.keydelivery.keys import UNIT_BITS, DeliveredKey
from hybridkex.keydelivery.kme.formats import (
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
from hybridkex.keydelivery.store import KeyStore

__all__ = [
    "BackgroundKME",
    "KMEServer",
    "load_sae_map",
    "openapi_document",
    "parse_sae_map",
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
_LIMIT_MARK = re.compile(r"(?m)^([ \t]*\w+:[ \t]*)\d+([ \t]*#[ \t]*limit:(\w+))[ \t]*$")


# -- configuration ------------------------------------------------------------------------


def parse_sae_map(value: Any) -> dict[str, str]:
    """Check an SAE map: a JSON object of SAE ID -> site ID, both non-empty strings."""
    if not isinstance(value, dict) or not value:
        raise InvalidParameter("the SAE map must be a non-empty JSON object of SAE ID -> site ID")
    for sae, site in value.items():
        if not isinstance(sae, str) or not sae or not isinstance(site, str) or not site:
            raise InvalidParameter("every SAE map entry must map a non-empty SAE ID string to "
                                   "a non-empty site ID string")
    return dict(value)


def load_sae_map(path: str | Path) -> dict[str, str]:
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
    """The SAE ID in a verified client certificate: its subject's single common name."""
    if not isinstance(peercert, dict):
        return None
    names = [value for rdn in peercert.get("subject", ()) for key, value in rdn
             if key == "commonName"]
    if len(names) != 1 or not isinstance(names[0], str) or not names[0]:
        return None
    return names[0]


def openapi_document(limits: KMELimits) -> str:
    """The served OpenAPI document, with the numbers marked ``# limit:<name>`` filled in."""
    text = resources.files("hybridkex.keydelivery.kme").joinpath("openapi.yaml").read_text("utf-8")

    def fill(match: re.Match[str]) -> str:
        return f"{match.group(1)}{getattr(limits, match.group(3))}{match.group(2)}"

    return _LIMIT_MARK.sub(fill, text)


# -- the server ---------------------------------------------------------------------------


class KMEServer:
    """The KME of site ``site_id``: its key store, SAE map, TLS context and limits."""

    def __init__(self, store: KeyStore, site_id: str, sae_map: Mapping[str, str],
                 ssl_context: ssl.SSLContext, *, limits: KMELimits | None = None,
                 workers: int = 8) -> None:
        if store.site_id != site_id:
            raise InvalidParameter(f"the key store belongs to site {store.site_id!r}, "
                                   f"not {site_id!r}")
        if ssl_context.verify_mode != ssl.CERT_REQUIRED:
            raise InvalidParameter("the KME's TLS context must require client certificates")
        self.store = store
        self.site_id = site_id
        self.sae_map = parse_sae_map(dict(sae_map))
        self.ssl_context = ssl_context
        self.limits = limits or KMELimits()
        self._workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._runner: web.AppRunner | None = None
        self._openapi = openapi_document(self.limits)
        self.address: tuple[str, int] | None = None

    # -- lifecycle

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=256 * 1024)
        app.add_routes([
            web.get(API + "/{slave_SAE_ID}/status", self.get_status),
            web.get(API + "/{slave_SAE_ID}/enc_keys", self.get_key_get, allow_head=False),
            web.post(API + "/{slave_SAE_ID}/enc_keys", self.get_key_post),
            web.get(API + "/{master_SAE_ID}/dec_keys", self.get_key_with_ids_get,
                    allow_head=False),
            web.post(API + "/{master_SAE_ID}/dec_keys", self.get_key_with_ids_post),
            web.get(OPENAPI_PATH, self.get_openapi),
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
        bound = runner.addresses[0]
        self.address = (str(bound[0]), int(bound[1]))
        log.info("KME for site %s listening on %s:%d", self.site_id, *self.address)
        return self.address

    async def close(self) -> None:
        """Stop listening, finish the requests under way, release the thread pool."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

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
        log.info("%s %s -> %d", request.method, request.path, response.status)
        return response

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise ServerError("the KME is not running")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def _caller(self, request: web.Request) -> str:
        """The calling SAE (from its client certificate); it must be attached to this site."""
        transport = request.transport
        sae = sae_id_of(transport.get_extra_info("peercert") if transport else None)
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
        return _json(status_body(source_kme=self.site_id, target_kme=peer, master_sae=master,
                                 slave_sae=slave, available_units=status.available_to_take,
                                 limits=self.limits))

    # -- Get key (clause 5.3)

    async def get_key_get(self, request: web.Request) -> web.Response:
        master = self._caller(request)
        peer = self._peer_site(request.match_info["slave_SAE_ID"])
        wanted = parse_key_request_query(_query(request), self.limits)
        return await self._take(master, peer, wanted.number, wanted.size)

    async def get_key_post(self, request: web.Request) -> web.Response:
        master = self._caller(request)
        peer = self._peer_site(request.match_info["slave_SAE_ID"])
        raw = await request.read()
        wanted = parse_key_request(decode_json(raw) if raw.strip() else None, self.limits)
        return await self._take(master, peer, wanted.number, wanted.size)

    async def _take(self, master: str, peer: str, number: int, size: int) -> web.Response:
        try:
            keys = await self._run(self.store.take, peer, number, size)
        except KeysExhausted:
            status = await self._run(self.store.status, peer)
            raise ServerError("not enough keys available",
                              [{"stored_key_count": status.available_to_take}]) from None
        except (InvalidParameter, KeySourceError) as exc:
            raise BadRequest(str(exc)) from None
        log.info("delivered %d key(s) of %d bits to master SAE %s for site %s",
                 len(keys), size, master, peer)
        return _json(key_container(keys))

    # -- Get key with key IDs (clause 5.4)

    async def get_key_with_ids_get(self, request: web.Request) -> web.Response:
        slave = self._caller(request)
        peer = self._peer_site(request.match_info["master_SAE_ID"])
        return await self._fetch(slave, peer, parse_key_ids_query(_query(request), self.limits))

    async def get_key_with_ids_post(self, request: web.Request) -> web.Response:
        slave = self._caller(request)
        peer = self._peer_site(request.match_info["master_SAE_ID"])
        raw = await request.read()
        if not raw.strip():
            raise BadRequest("the request must be a JSON object with key_IDs")
        return await self._fetch(slave, peer, parse_key_ids(decode_json(raw), self.limits))

    async def _fetch(self, slave: str, peer: str, refs: list[KeyIDRef]) -> web.Response:
        flat = [unit for ref in refs for unit in ref.units]
        try:
            # every unit of every key in one store call: all of them are delivered, or none
            units = await self._run(self.store.fetch, peer, flat, UNIT_BITS)
        except KeyNotAvailable:
            raise BadRequest(KEYS_NOT_FOUND, [{KEY_ID_ERROR: "not_found"}]) from None
        except (InvalidParameter, KeySourceError) as exc:
            raise BadRequest(str(exc), [{KEY_ID_ERROR: "rejected"}]) from None
        material = iter(units)
        keys = []
        for ref in refs:
            joined = b"".join(next(material).key for _ in ref.units)
            keys.append(DeliveredKey(ref.units[0], joined[: ref.size // 8], ref.size,
                                     ref.units[1:]))
        log.info("delivered %d key(s) to slave SAE %s from site %s", len(keys), slave, peer)
        return _json(key_container(keys))

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
