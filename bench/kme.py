"""KME throughput: ETSI GS QKD 014 requests per second over HTTPS with mutual TLS.

The question is what one SAE gets from its KME with the client as shipped, and how far
the KME is from the HTTPS + mutual TLS stack it runs on.  Three servers run at once,
each in a child process of its own (so the client and the servers do not share a GIL,
as in a deployment), on loopback, with the same TLS context (``server_ssl_context``: the
same CA, certificate and client-certificate requirement):

* ``kme-sqlite``: the KMEs of sites A and B (``KMEServer`` in ``BackgroundKME``) over
  ``SQLiteKeyStore`` as shipped (WAL, ``synchronous=FULL``, ``secure_delete``), holding
  the same keys, all to be taken at A;
* ``kme-memory``: the same over ``MemoryKeyStore``;
* ``plain``: an aiohttp server that answers every enc_keys POST with one fixed Key
  container of one key, without looking at the request: the floor of HTTP + TLS +
  aiohttp under the KME.

The clients, in this process, are "arms", each asking for one key per request
(``get_keys("sae-b", 1)`` by sae-a at A):

* ``keep-alive``: one ``KMEClient``, one thread, one kept-alive connection;
* ``per-connection``: the client as it was before keep-alive (``http.client``): a new
  connection (TCP connect and a full mutual-TLS handshake) for every call, closed after
  it: the rate the client goal is measured against;
* ``per-connection, own HTTP``: today's ``KMEClient`` made to open a new connection for
  every call: the same handshakes with the client's own HTTP/1.1, a stricter
  denominator shown beside the goal;
* ``8 threads, lock`` / ``8 threads, pool``: one ``KMEClient`` shared by 8 threads,
  with ``connections=1`` (one connection behind a lock) or ``connections=8``;
* ``async``: one ``AsyncKMEClient``, one request after another in one coroutine;
  ``async x8``: 8 coroutines at once over ``connections=8``;
* ``dec_keys keep-alive`` (KMEs only): one ``KMEClient`` at B fetching, by ID, the keys
  the keep-alive arm took at A in the same round (the material is checked).

The machine is shared and noisy, so the arms take turns: every round runs one batch of
every arm against every server (batches of ``--batch`` requests, ``--per-connection``
for the per-connection arm), in an order that rotates and reverses from round to round.
Clients and servers live through all the rounds; each batch's rate is a sample.  An
arm's figure is the median of its ``--rounds`` batches.  A ratio (KME / plain,
keep-alive / per-connection, ...) is the median of the ratios of the two arms' batches
in the same round, so load that drifts over the run cancels; the ratio of the two
medians, and of the two arms' fastest batches (those the machine's other load disturbed
least), are shown beside it.  The servers count the TLS handshakes they complete
(``SSLContext.session_stats()``), so "one connection" is checked on the server's side.

Goals: enc_keys over one keep-alive client at least 0.5x plain on SQLite and 0.8x on
memory, and keep-alive at least 10x per-connection (the client before keep-alive).

    PYTHONPATH=. python bench/kme.py [--rounds 30] [--batch 150] [--per-connection 30]
                                     [--dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import http.client
import json
import multiprocessing
import os
import platform
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import cryptography
from aiohttp import web

from hybridkex.keydelivery import DeliveredKey, linked_pools, random_units
from hybridkex.keydelivery.kme import BackgroundKME, KMEServer, server_ssl_context
from hybridkex.keydelivery.kme.aio_client import AsyncKMEClient
from hybridkex.keydelivery.kme.calls import (
    MAX_RESPONSE_BYTES,
    Call,
    Endpoint,
    answer,
    client_ssl_context,
    enc_keys_call,
)
from hybridkex.keydelivery.kme.client import KMEClient
from hybridkex.keydelivery.kme.peers import peer_tls
from hybridkex.keydelivery.sqlite import SQLiteKeyStore
from hybridkex.keydelivery.store import KeyStore, MemoryKeyStore
from tests.support import KMEFiles

SAE_MAP = {"sae-a": "A", "sae-b": "B"}
SERVERS = ("kme-sqlite", "kme-memory", "plain")
ARMS = ("keep-alive", "per-connection", "per-connection, own HTTP", "8 threads, lock",
        "8 threads, pool", "async", "async x8")
PER_CONNECTION_ARMS = ("per-connection", "per-connection, own HTTP")
DEC_ARM = "dec_keys keep-alive"
GOALS = (("kme-sqlite", 0.5), ("kme-memory", 0.8))
CLIENT_GOAL = 10.0
THREADS = 8  # client threads of the threaded arms
WARM_UP = 20  # untimed requests per arm before the first round: connections, caches


# -- a throw-away PKI (the tests' one, tests/support.py) ---------------------------------


class PKI(KMEFiles):
    """The test PKI's KME files, with the clients this benchmark builds."""

    @classmethod
    def make(cls, directory: Path) -> PKI:
        return cls(KMEFiles.create(directory, SAE_MAP, ca_name="hybridkex bench CA",
                                   kme_sites=("A", "B")).dir)

    def kme_client(self, url: str, sae: str, connections: int = 1,
                   cls: type[KMEClient] = KMEClient) -> KMEClient:
        return cls(url, *self.pair(sae), self.ca, connections=connections)

    def async_client(self, url: str, sae: str, connections: int = 1) -> AsyncKMEClient:
        return AsyncKMEClient(url, *self.pair(sae), self.ca, connections=connections)


# -- the servers, each in a child process ------------------------------------------------------

# The plain server's one answer: a Key container with one 256-bit key, as the KME's.
FIXED_ANSWER = json.dumps({"keys": [{"key_ID": "5d1f1bd4-2d1a-4f4c-8c0e-3d6f0e6a3b1e",
                                     "key": "q" * 43 + "="}]}).encode()


def _plain_app() -> web.Application:
    async def enc_keys(_: web.Request) -> web.Response:
        return web.Response(body=FIXED_ANSWER, content_type="application/json")

    app = web.Application()
    app.add_routes([web.post("/api/v1/keys/{slave_SAE_ID}/enc_keys", enc_keys)])
    return app


class _PlainServer:
    """The plain aiohttp server on its own event loop in a thread (as BackgroundKME)."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(_plain_app(), access_log=None, handle_signals=False)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ctx)
        self.loop.run_until_complete(site.start())
        self.port = int(self.runner.addresses[0][1])
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()


def _fill(backend: str, run_dir: Path, keys: int) -> tuple[KeyStore, KeyStore]:
    if backend == "kme-memory":
        stores: tuple[KeyStore, KeyStore] = (MemoryKeyStore("A"), MemoryKeyStore("B"))
    else:
        stores = SQLiteKeyStore("A", run_dir / "a.db"), SQLiteKeyStore("B", run_dir / "b.db")
    pools = linked_pools("A", "B", random_units("A", "B", keys, 0),
                         store_a=stores[0], store_b=stores[1])
    return pools.store_a, pools.store_b


def serve(kind: str, pki_dir: str, run_dir: str, keys: int, pipe: Connection) -> None:
    """The child process: start ``kind``, send its ports, answer "stats" until "stop"."""
    pki = PKI(Path(pki_dir))
    contexts: dict[str, ssl.SSLContext] = {}
    closers: list[Callable[[], None]] = []
    ports: dict[str, int] = {}
    if kind == "plain":
        plain = _PlainServer(pki.server_context())
        contexts["A"], ports["A"] = plain.ctx, plain.port
        closers.append(plain.close)
    else:
        # Two KMEs that sync, as deployed: each site's certificate (CN = site ID) serves
        # its SAEs and authenticates it to the other KME.
        stores = _fill(kind, Path(run_dir), keys)
        kmes: dict[str, BackgroundKME] = {}
        for site, store in zip(("A", "B"), stores, strict=True):
            cert, key = pki.pair(f"kme-{site}")
            ctx = server_ssl_context(cert, key, pki.ca)
            kmes[site] = BackgroundKME(KMEServer(store, site, SAE_MAP, ctx,
                                                 peer_tls=peer_tls(cert, key, pki.ca))).start()
            contexts[site], ports[site] = ctx, kmes[site].port
            closers += [kmes[site].close, store.close]
        kmes["A"].server.set_peer("B", kmes["B"].url)
        kmes["B"].server.set_peer("A", kmes["A"].url)
    pipe.send(ports)
    while (command := pipe.recv()) != "stop":
        assert command == "stats"
        pipe.send(({site: int(ctx.session_stats()["accept_good"])
                    for site, ctx in contexts.items()}, time.process_time()))
    for close in closers:
        close()
    pipe.send("stopped")


class ServerProcess:
    """``serve`` in a spawned child process, as a context manager."""

    def __init__(self, kind: str, pki: PKI, run_dir: Path, keys: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(target=serve, name=f"bench-{kind}", daemon=True,
                                        args=(kind, str(pki.dir), str(run_dir), keys, child))
        self._process.start()
        if not self._pipe.poll(120):
            self._process.kill()
            raise SystemExit(f"the {kind} server did not start")
        self.ports: dict[str, int] = self._pipe.recv()

    def url(self, site: str) -> str:
        return f"https://127.0.0.1:{self.ports[site]}"

    def stats(self, site: str = "A") -> tuple[int, float]:
        """The TLS handshakes ``site``'s KME has completed, and the CPU seconds the
        server process has used (all its threads)."""
        self._pipe.send("stats")
        counts, cpu = self._pipe.recv()
        return int(counts[site]), float(cpu)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._process.is_alive():
            return
        self._pipe.send("stop")
        if self._pipe.poll(60):
            self._pipe.recv()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


# -- the arms ---------------------------------------------------------------------------------


class HTTPClientPerConnection:
    """The client before keep-alive (git history: hybridkex/keydelivery/kme/client.py at
    15b0442): every call opens an ``http.client.HTTPSConnection`` (TCP connect, full
    mutual-TLS handshake), sends the request, reads the answer and closes.  The request
    and the checks of the answer are today's (calls.py), so only the transport differs."""

    def __init__(self, url: str, cert: Path, key: Path, ca: Path) -> None:
        self._endpoint = Endpoint.parse(url)
        self._ssl = client_ssl_context(cert, key, ca)

    def get_keys(self, slave_sae: str, number: int = 1, size: int = 256) -> list[DeliveredKey]:
        call = enc_keys_call(slave_sae, number, size)
        conn = http.client.HTTPSConnection(self._endpoint.host, self._endpoint.port,
                                           timeout=10, context=self._ssl)
        try:
            conn.request(call.method, self._endpoint.prefix + call.path, body=call.body,
                         headers=call.headers)
            response = conn.getresponse()
            raw = response.read(MAX_RESPONSE_BYTES + 1)
        finally:
            conn.close()
        keys: list[DeliveredKey] = answer(call, response.status, raw)
        return keys

    def close(self) -> None:
        pass  # nothing is kept open


class PerConnectionClient(KMEClient):
    """KMEClient as it was before keep-alive: every call opens a new connection (TCP
    connect, full mutual-TLS handshake) and closes it at the end."""

    def _exchange(self, call: Call) -> tuple[int, bytes]:
        try:
            return super()._exchange(call)
        finally:
            self.close()


@dataclass
class Sample:
    """One batch: requests/s, the CPU seconds of this process (the client) and of the
    server's, and the TLS handshakes the server completed meanwhile."""

    rate: float
    cpu: float
    server_cpu: float
    handshakes: int
    requests: int


@dataclass
class Arm:
    """One client against one server; ``batch(n)`` sends ``n`` requests, returning the
    seconds they took and the keys they got."""

    server: str
    name: str
    size: int
    batch: Callable[[int], tuple[float, list[DeliveredKey]]]
    site: str = "A"
    samples: list[Sample] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(s.rate for s in self.samples)

    @property
    def best(self) -> float:
        """The fastest batch: the one the machine's other load disturbed least."""
        return max(s.rate for s in self.samples)

    @property
    def handshakes(self) -> int:
        return sum(s.handshakes for s in self.samples)

    @property
    def requests(self) -> int:
        return sum(s.requests for s in self.samples)

    @property
    def handshakes_per_request(self) -> float:
        return (sum(s.handshakes for s in self.samples)
                / sum(s.requests for s in self.samples))

    @property
    def client_cpu_us(self) -> float:
        """Median client CPU microseconds per request."""
        return statistics.median(1e6 * s.cpu / s.requests for s in self.samples)

    @property
    def server_cpu_us(self) -> float:
        """Median server CPU microseconds per request."""
        return statistics.median(1e6 * s.server_cpu / s.requests for s in self.samples)

    def as_dict(self) -> dict[str, Any]:
        return {"server": self.server, "arm": self.name,
                "requests_per_s": round(self.rate, 1),
                "best_batch_requests_per_s": round(self.best, 1),
                "tls_handshakes": self.handshakes, "requests": self.requests,
                "client_cpu_us_per_request": round(self.client_cpu_us, 1),
                "server_cpu_us_per_request": round(self.server_cpu_us, 1),
                "batches_requests_per_s": [round(s.rate, 1) for s in self.samples],
                "tls_handshakes_per_request": round(self.handshakes_per_request, 4)}


def sync_batch(client: KMEClient | HTTPClientPerConnection,
               threads: ThreadPoolExecutor | None) -> Callable[[int], tuple[float,
                                                                           list[DeliveredKey]]]:
    def batch(n: int) -> tuple[float, list[DeliveredKey]]:
        started = time.perf_counter()
        if threads is None:
            keys = [k for _ in range(n) for k in client.get_keys("sae-b")]
        else:
            parts = threads.map(lambda i: [k for _ in range(i, n, THREADS)
                                           for k in client.get_keys("sae-b")], range(THREADS))
            keys = [k for part in parts for k in part]
        elapsed = time.perf_counter() - started
        assert len(keys) == n
        return elapsed, keys

    return batch


def async_batch(client: AsyncKMEClient, concurrency: int,
                loop: asyncio.AbstractEventLoop) -> Callable[[int], tuple[float,
                                                                          list[DeliveredKey]]]:
    def batch(n: int) -> tuple[float, list[DeliveredKey]]:
        async def worker(index: int) -> list[DeliveredKey]:
            return [k for _ in range(index, n, concurrency) for k in await client.get_keys(
                "sae-b")]

        async def run() -> list[list[DeliveredKey]]:
            return await asyncio.gather(*(worker(i) for i in range(concurrency)))

        started = time.perf_counter()
        parts = loop.run_until_complete(run())
        elapsed = time.perf_counter() - started
        keys = [k for part in parts for k in part]
        assert len(keys) == n
        return elapsed, keys

    return batch


def recording(batch: Callable[[int], tuple[float, list[DeliveredKey]]],
              pending: list[DeliveredKey]) -> Callable[[int], tuple[float, list[DeliveredKey]]]:
    """``batch``, noting the keys it took in ``pending`` for the dec_keys arm."""

    def run(n: int) -> tuple[float, list[DeliveredKey]]:
        elapsed, keys = batch(n)
        pending.extend(keys)
        return elapsed, keys

    return run


def close_async(client: AsyncKMEClient, loop: asyncio.AbstractEventLoop) -> None:
    loop.run_until_complete(client.close())


def dec_batch(client: KMEClient,
              pending: list[DeliveredKey]) -> Callable[[int], tuple[float, list[DeliveredKey]]]:
    """dec_keys of the next ``n`` keys in ``pending`` (taken by the keep-alive arm)."""

    def batch(n: int) -> tuple[float, list[DeliveredKey]]:
        taken = [pending.pop(0) for _ in range(min(n, len(pending)))]
        started = time.perf_counter()
        fetched = [client.get_keys_with_ids("sae-a", [k.key_id])[0] for k in taken]
        elapsed = time.perf_counter() - started
        assert [k.key for k in fetched] == [k.key for k in taken], "A and B disagree"
        return elapsed, fetched

    return batch


def run_rounds(pki: PKI, workdir: Path, rounds: int, batch: int, per_connection: int,
               progress: bool) -> list[Arm]:
    """Start the servers and the clients, then the rounds; every arm with its samples."""
    keys = ((rounds + 1) * (batch * (len(ARMS) - len(PER_CONNECTION_ARMS))
                            + per_connection * len(PER_CONNECTION_ARMS))
            + 2 * len(ARMS) * WARM_UP)
    loop = asyncio.new_event_loop()
    threads = ThreadPoolExecutor(THREADS, thread_name_prefix="sae")
    closers: list[Callable[[], None]] = []
    arms: list[Arm] = []
    servers: dict[str, ServerProcess] = {}
    try:
        for kind in SERVERS:
            run_dir = workdir / kind
            run_dir.mkdir()
            servers[kind] = ServerProcess(kind, pki, run_dir, keys)
            closers.append(servers[kind].close)
        for kind, server in servers.items():
            url = server.url("A")
            clients: dict[str, KMEClient | HTTPClientPerConnection] = {
                "keep-alive": pki.kme_client(url, "sae-a"),
                "per-connection": HTTPClientPerConnection(url, *pki.pair("sae-a"), pki.ca),
                "per-connection, own HTTP": pki.kme_client(url, "sae-a",
                                                           cls=PerConnectionClient),
                "8 threads, lock": pki.kme_client(url, "sae-a", connections=1),
                "8 threads, pool": pki.kme_client(url, "sae-a", connections=8)}
            closers += [c.close for c in clients.values()]
            aio = {"async": pki.async_client(url, "sae-a"),
                   "async x8": pki.async_client(url, "sae-a", connections=8)}
            closers += [functools.partial(close_async, c, loop) for c in aio.values()]
            mine = [Arm(kind, "keep-alive", batch, sync_batch(clients["keep-alive"], None)),
                    Arm(kind, "per-connection", per_connection,
                        sync_batch(clients["per-connection"], None)),
                    Arm(kind, "per-connection, own HTTP", per_connection,
                        sync_batch(clients["per-connection, own HTTP"], None)),
                    Arm(kind, "8 threads, lock", batch,
                        sync_batch(clients["8 threads, lock"], threads)),
                    Arm(kind, "8 threads, pool", batch,
                        sync_batch(clients["8 threads, pool"], threads)),
                    Arm(kind, "async", batch, async_batch(aio["async"], 1, loop)),
                    Arm(kind, "async x8", batch, async_batch(aio["async x8"], 8, loop))]
            assert tuple(a.name for a in mine) == ARMS
            arms += mine
            if kind != "plain":
                bob = pki.kme_client(server.url("B"), "sae-b")
                closers.append(bob.close)
                pending: list[DeliveredKey] = []
                mine[0].batch = recording(mine[0].batch, pending)
                arms.append(Arm(kind, DEC_ARM, batch, dec_batch(bob, pending), site="B"))
        for arm in arms:  # warm up: connections, caches; not timed
            arm.batch(WARM_UP)
        for index in range(rounds):
            if progress:
                print(f"[round {index + 1}/{rounds}]", file=sys.stderr, flush=True)
            order = arms[index % len(arms):] + arms[:index % len(arms)]
            if index % 2:
                order.reverse()
            # dec_keys after the enc_keys of the same round, so it has this round's keys
            order.sort(key=lambda a: a.name == DEC_ARM)
            for arm in order:
                server = servers[arm.server]
                handshakes, server_cpu = server.stats(arm.site)
                cpu = time.process_time()
                elapsed, got = arm.batch(arm.size)
                cpu = time.process_time() - cpu
                handshakes_after, server_cpu_after = server.stats(arm.site)
                arm.samples.append(Sample(len(got) / elapsed, cpu, server_cpu_after - server_cpu,
                                          handshakes_after - handshakes, len(got)))
        return arms
    finally:
        for close in reversed(closers):
            close()
        threads.shutdown()
        loop.close()


# -- reporting ---------------------------------------------------------------------------------


@dataclass
class Ratio:
    name: str
    numerator: Arm
    denominator: Arm
    goal: float | None

    @property
    def per_round(self) -> list[float]:
        return [a.rate / b.rate for a, b in zip(self.numerator.samples,
                                                 self.denominator.samples, strict=True)]

    @property
    def value(self) -> float:
        """The median of the per-round ratios (drift cancels within a round)."""
        return statistics.median(self.per_round)

    @property
    def of_medians(self) -> float:
        return self.numerator.rate / self.denominator.rate

    @property
    def of_bests(self) -> float:
        return self.numerator.best / self.denominator.best

    @property
    def met(self) -> bool | None:
        return None if self.goal is None else self.value >= self.goal

    def quartiles(self) -> tuple[float, float]:
        runs = sorted(self.per_round)
        if len(runs) < 4:
            return runs[0], runs[-1]
        q = statistics.quantiles(runs, n=4)
        return q[0], q[2]

    def as_dict(self) -> dict[str, Any]:
        low, high = self.quartiles()
        return {"ratio": self.name, "median_of_round_ratios": round(self.value, 3),
                "ratio_of_medians": round(self.of_medians, 3),
                "ratio_of_best_batches": round(self.of_bests, 3),
                "round_ratios_quartiles": [round(low, 3), round(high, 3)],
                "goal": self.goal, "met": self.met}


def ratios(arms: Sequence[Arm]) -> list[Ratio]:
    by = {(a.server, a.name): a for a in arms}
    out = [Ratio(f"{server} / plain, keep-alive", by[server, "keep-alive"],
                 by["plain", "keep-alive"], goal) for server, goal in GOALS]
    out += [Ratio(f"keep-alive / per-connection, {server}", by[server, "keep-alive"],
                  by[server, "per-connection"], CLIENT_GOAL if server != "plain" else None)
            for server in SERVERS]
    out += [Ratio(f"keep-alive / per-connection own HTTP, {server}", by[server, "keep-alive"],
                  by[server, "per-connection, own HTTP"], None) for server in SERVERS]
    out += [Ratio(f"8 threads pool / lock, {server}", by[server, "8 threads, pool"],
                  by[server, "8 threads, lock"], None) for server in SERVERS]
    out += [Ratio(f"async / keep-alive, {server}", by[server, "async"],
                  by[server, "keep-alive"], None) for server in SERVERS]
    out += [Ratio(f"async x8 / keep-alive, {server}", by[server, "async x8"],
                  by[server, "keep-alive"], None) for server in SERVERS]
    return out


def cpu_checks(arms: Sequence[Arm]) -> list[tuple[str, float]]:
    """The goals' ratios from CPU time instead of the clock: what they would be if CPU
    were all a request cost, which the machine's load does not skew as much (an
    fsync's wait is not CPU, so SQLite looks better here than it is)."""
    by = {(a.server, a.name): a for a in arms}

    def total(server: str, arm: str) -> float:
        return by[server, arm].client_cpu_us + by[server, arm].server_cpu_us

    out = [(f"{server} / plain, keep-alive: server CPU",
            by["plain", "keep-alive"].server_cpu_us / by[server, "keep-alive"].server_cpu_us)
           for server, _ in GOALS]
    out += [(f"keep-alive / per-connection, {server}: client + server CPU",
             total(server, "per-connection") / total(server, "keep-alive"))
            for server in SERVERS]
    out += [(f"keep-alive / per-connection own HTTP, {server}: client + server CPU",
             total(server, "per-connection, own HTTP") / total(server, "keep-alive"))
            for server in SERVERS]
    return out


def tls_probe(pki: PKI, url: str) -> str:
    """The protocol and cipher the client negotiates."""
    client = pki.kme_client(url, "sae-a")
    conn = client._connect(Call("probe", "GET", "/", None, idempotent=True))
    try:
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        cipher = sock.cipher()
        return f"{sock.version()} {cipher[0] if cipher else '?'}"
    finally:
        conn.close()


def environment(tls: str) -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    return {
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "aiohttp": aiohttp.__version__,
        "cryptography": cryptography.__version__,
        "nproc": usable,
        "machine": platform.machine(),
        "tls": tls,
        "certificates": "ECDSA P-256",
    }


def table(rows: Sequence[Sequence[str]], right_from: int) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = [c.rjust(w) if i >= right_from else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30,
                        help="rounds; every arm's figure is the median (default 30)")
    parser.add_argument("--batch", type=int, default=150,
                        help="requests per batch (default 150)")
    parser.add_argument("--per-connection", type=int, default=30,
                        help="requests per batch of the per-connection arm (default 30)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the SQLite files go (default: a temporary directory)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if min(args.rounds, args.batch, args.per_connection) < 1:
        parser.error("--rounds, --batch and --per-connection must be at least 1")
    if args.rounds * args.batch > 200_000:
        parser.error("--rounds x --batch must be at most 200000")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="hkx-kme-bench-", dir=args.dir) as tmp:
        workdir = Path(tmp)
        pki_dir = workdir / "pki"
        pki_dir.mkdir()
        pki = PKI.make(pki_dir)
        probe_dir = workdir / "probe"
        probe_dir.mkdir()
        with ServerProcess("plain", pki, probe_dir, 0) as probe:
            tls = tls_probe(pki, probe.url("A"))
        env = environment(tls)
        if not args.json:
            print(f"Python {env['python']}, {env['openssl']}, aiohttp {env['aiohttp']}, "
                  f"nproc {env['nproc']}, {env['machine']}; {tls}, ECDSA P-256 certificates",
                  flush=True)
            print(f"{args.rounds} rounds of batches of {args.batch} requests "
                  f"({args.per_connection} per-connection), 1 key each; each server in a "
                  "child process", flush=True)
        arms = run_rounds(pki, workdir, args.rounds, args.batch, args.per_connection,
                          progress=not args.json)
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()
    checks = ratios(arms)
    if args.json:
        print(json.dumps({
            "environment": env,
            "settings": {"rounds": args.rounds, "batch": args.batch,
                         "per_connection": args.per_connection, "keys_per_request": 1,
                         "elapsed_seconds": round(elapsed, 1),
                         "load_average_before": [round(x, 2) for x in load_before],
                         "load_average_after": [round(x, 2) for x in load_after]},
            "results": [a.as_dict() for a in arms],
            "ratios": [c.as_dict() for c in checks],
            "cpu_cross_checks": {name: round(value, 3) for name, value in cpu_checks(arms)},
        }, indent=2))
        return 0
    print()
    print(table([("server", "arm", "req/s", "best", "slowest", "client CPU us/req",
                  "server CPU us/req", "TLS handshakes / requests")] + [
        (a.server, a.name, f"{a.rate:,.0f}", f"{a.best:,.0f}",
         f"{min(s.rate for s in a.samples):,.0f}", f"{a.client_cpu_us:.0f}",
         f"{a.server_cpu_us:.0f}", f"{a.handshakes:,} / {a.requests:,}")
        for a in arms], right_from=2))
    print()
    rows = [("ratio", "median", "quartiles", "of medians", "of bests", "goal (median)")]
    for c in checks:
        low, high = c.quartiles()
        verdict = "-" if c.goal is None else f">= {c.goal:g}x {'met' if c.met else 'MISSED'}"
        rows.append((c.name, f"{c.value:.2f}x", f"{low:.2f}-{high:.2f}",
                     f"{c.of_medians:.2f}x", f"{c.of_bests:.2f}x", verdict))
    print(table(rows, right_from=1))
    print()
    print(table([("cross-check from CPU time (not the goals)", "ratio")] + [
        (name, f"{value:.2f}x") for name, value in cpu_checks(arms)], right_from=1))
    print()
    print("req/s: median over the rounds' batches; best / slowest: the fastest / slowest "
          "batch.  client / server CPU:")
    print("the CPU time of this process / of the server's process per request (median).  "
          "TLS handshakes: full handshakes")
    print("the server completed during the timed batches.  Ratios: median of the per-round "
          "ratios, their quartiles, the ratio")
    print("of the two arms' medians, and of their best batches.")
    print(f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
          f"({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
