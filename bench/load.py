"""HKX/1 over real sockets: many concurrent connections, and bulk throughput against TLS 1.3.

1. **Load.** A server process runs ``hybridkex.asyncio.start_server`` with an echo
   callback (``backlog=2048``); a client process opens ``--connections`` connections
   with ``hybridkex.asyncio.open_connection``, all at once, and holds every one open
   until all have completed their handshake (the opening burst).  Each then echoes
   ``--echoes`` messages of 256 bytes and closes, and from then on, for ``--seconds``,
   every client keeps connecting, echoing and closing again (the churn), so the server
   always has about ``--connections`` connections open or in their handshake.  Reported:
   handshakes per second during the churn (every churn handshake over the time until the
   last of them completed), handshake latency (``open_connection`` called
   to returned, so it includes the TCP connect and the wait behind every other client)
   as p50/p99 for the burst and for the churn, echo round trips, each process's CPU time
   per connection (handshake, echoes and close; unlike the rates, it does not depend on
   how much CPU other jobs leave to the two processes), errors (every exception
   on either side, and server-side handshakes that never reached the callback: there
   must be none), and each process's peak memory (``ru_maxrss``) next to its resident
   memory before the first connection.  Handshakes are psk mode (suite 0x0101), the
   cheapest HKX/1 handshake: 4 QKD pool keys per side, deposited beforehand into
   in-memory key stores, twice as many as the most handshakes the run can make at
   ``--rate-ceiling`` handshakes/s.
2. **Throughput.** ``--megabytes`` MiB in one direction over one loopback TCP
   connection, sent with ``sendall`` of 1 MiB blocks and received with ``recv_into`` a
   1 MiB buffer; timed from the first byte sent (after the handshake) to the receiver's
   one-byte acknowledgement of the last, and each end's CPU time over the same span
   (``time.process_time``), reported as MB per CPU second.  The receiver is one process;
   every transfer is sent from a fresh process, so that each starts from the same
   state.  On a shared 2-core machine the MB/s also depend on whether sender and
   receiver share a core; ``taskset -c 1`` gives steadier figures (docs/performance.md).
   Two senders, interleaved in every repeat: a blocking ``SecureSocket`` (suite 0x0101,
   AES-256-GCM), which seals straight into a buffer of its own and writes up to 1 MiB
   at a time, and whose receiver reads into the connection's buffer and opens records
   straight into the application's; and stdlib ``ssl`` TLS 1.3
   (TLS_AES_256_GCM_SHA384, a self-signed ECDSA P-256 certificate).  ``HKX/TLS`` is the
   ratio of the medians.

The client draws its pool keys from stores of 512 keys, one after another; the server's
store holds them all.  The shards date from when ``MemoryKeyStore.take`` scanned the
whole pool on every call (1.2 ms per take at 40,000 keys); since it is O(count) they
change nothing (about 8 us per take of 4 keys at 2,000 and at 88,000 keys), and are
kept so that figures stay comparable.

    python bench/load.py                        # 1000 connections, 10 s; 5 x 64 MiB; ~20 s
    python bench/load.py --quick                # 200 connections, 3 s; 3 x 16 MiB; ~10 s
    python bench/load.py --connections 1000 --seconds 10 --json
    python bench/load.py --profile              # also: where a throughput run spends its time
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import multiprocessing
import os
import platform
import pstats
import resource
import socket
import ssl
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cryptography
from cryptography import x509
from cryptography.hazmat.backends.openssl import backend as openssl_backend
from cryptography.hazmat.primitives import serialization

from hybridkex import asyncio as hkx
from hybridkex.keydelivery import (
    UNIT_BITS,
    DeliveredKey,
    StoredKey,
    StoreKeySource,
    linked_pools,
    random_units,
)
from hybridkex.keydelivery.errors import KeysExhausted, KeySourceError
from hybridkex.protocol import SUITES, Config
from hybridkex.protocol import Connection as HkxConnection
from hybridkex.transport import Context
from tests.support import CLIENT, SERVER, self_signed

HOST = "127.0.0.1"
SUITE = SUITES[0x0101]
PSK_UNITS = 4  # pool keys one psk handshake takes at each site
SHARD = 512  # keys per client-side store
MESSAGE = 256  # bytes per echo
BLOCK = 1 << 20  # throughput: bytes per sendall / recv_into buffer
BACKLOG = 2048
PIPE_LIMIT = 600.0  # seconds a parent waits for a child's answer before giving up

GOAL_CONNECTIONS = 1000  # concurrent connections, with 0 errors
GOAL_THROUGHPUT = 1.5  # HKX/1 MB/s over TLS 1.3 MB/s, at least

Batch = list[StoredKey]  # all initiated by CLIENT
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


# -- sites and key pools --------------------------------------------------------------------


def key_batch(count: int) -> Batch:
    """``count`` fresh pool keys, as the QKD link would deliver them to both sites; each
    process deposits them with ``linked_pools`` and keeps its own site's store."""
    return random_units(CLIENT, SERVER, count, 0)


class ShardedSource:
    """The client's key source: the batch dealt into stores of ``SHARD`` keys, drawn one
    store after another (each a :class:`StoreKeySource`); see the module docstring."""

    def __init__(self, batch: Batch) -> None:
        self._shards: list[StoreKeySource] = []
        for start in range(0, len(batch), SHARD):
            shard = linked_pools(CLIENT, SERVER, batch[start:start + SHARD])
            self._shards.append(StoreKeySource(shard.store_a))
        self._current = 0
        self.remaining = len(batch)

    def take(self, peer: str, count: int = 1, size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        while self._current < len(self._shards):
            try:
                keys = self._shards[self._current].take(peer, count, size_bits)
            except KeysExhausted:
                self._current += 1
                continue
            self.remaining -= count
            return keys
        raise KeysExhausted("the load client's pool is used up")

    def fetch(self, peer: str, key_ids: Sequence[str | Sequence[str]],
              size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        raise KeySourceError("the load client only initiates")


def client_context(batch: Batch) -> tuple[Context, ShardedSource]:
    source = ShardedSource(batch)
    config = Config(CLIENT, key_source=source, auth="psk", suites=(SUITE,))
    return Context.from_config(config), source


def server_config(batch: Batch) -> Config:
    store = linked_pools(CLIENT, SERVER, batch).store_b
    return Config(SERVER, key_source=StoreKeySource(store), auth="psk", suites=(SUITE,))


class CountingContext(Context):
    """The server's Context, counting the connections it was asked to serve."""

    accepted = 0

    def new_connection(self, server_side: bool, peer: str | None, *,
                       key_events: bool = False) -> HkxConnection:
        CountingContext.accepted += 1
        return super().new_connection(server_side, peer, key_events=key_events)


# -- process plumbing -------------------------------------------------------------------------


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard limit; returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def rss_kib() -> int:
    """Resident memory now, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def process_figures() -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"maxrss_kib": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime}


def answer(pipe: Pipe, seconds: float = PIPE_LIMIT) -> Any:
    if not pipe.poll(seconds):
        raise TimeoutError(f"a child process gave no answer within {seconds:.0f} s")
    return pipe.recv()


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- load: the server -----------------------------------------------------------------------


def load_server(pipe: Pipe, batch: Batch) -> None:
    raise_fd_limit()
    asyncio.run(_load_server(pipe, batch))


async def _load_server(pipe: Pipe, batch: Batch) -> None:
    context = CountingContext.from_config(server_config(batch))
    errors: Counter[str] = Counter()
    handshakes = 0

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal handshakes
        handshakes += 1
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except Exception as exc:
            errors[f"server: {type(exc).__name__}: {exc}"] += 1
        finally:
            writer.close()

    baseline = rss_kib()
    server = await hkx.start_server(echo, HOST, 0, context=context, backlog=BACKLOG)
    cpu = time.process_time()
    pipe.send(server.sockets[0].getsockname()[1])
    await asyncio.to_thread(pipe.recv)  # "stop"
    server.close()
    await server.wait_closed()
    cpu = time.process_time() - cpu
    pipe.send({"accepted": CountingContext.accepted, "handshakes": handshakes,
               "errors": dict(errors), "rss_before_kib": baseline, "load_cpu_s": cpu,
               "cpu_ms_per_handshake": 1e3 * cpu / max(handshakes, 1),
               **process_figures()})


# -- load: the clients --------------------------------------------------------------------------


@dataclass
class LoadState:
    connections: int
    burst_latency: list[float] = field(default_factory=list)
    churn_latency: list[float] = field(default_factory=list)
    echo_rtt: list[float] = field(default_factory=list)
    churn_done: list[float] = field(default_factory=list)  # when each churn handshake ended
    errors: Counter[str] = field(default_factory=Counter)
    open_now: int = 0
    peak_open: int = 0
    settled: int = 0  # burst connections up or failed
    pool_ran_dry: bool = False


def load_client(pipe: Pipe, batch: Batch, port: int, connections: int, seconds: float,
                echoes: int) -> None:
    raise_fd_limit()
    pipe.send(asyncio.run(_load_client(batch, port, connections, seconds, echoes)))


async def _load_client(batch: Batch, port: int, connections: int, seconds: float,
                       echoes: int) -> dict[str, Any]:
    context, source = client_context(batch)
    state = LoadState(connections)
    all_up = asyncio.Event()
    message = os.urandom(MESSAGE)
    baseline = rss_kib()

    async def handshake(latencies: list[float]) -> Streams | None:
        started = time.perf_counter()
        try:
            streams = await hkx.open_connection(HOST, port, context=context, peer=SERVER)
        except Exception as exc:
            state.errors[f"client handshake: {type(exc).__name__}: {exc}"] += 1
            return None
        latencies.append(time.perf_counter() - started)
        state.open_now += 1
        state.peak_open = max(state.peak_open, state.open_now)
        return streams

    async def echo_and_close(streams: Streams) -> None:
        reader, writer = streams
        try:
            for _ in range(echoes):
                started = time.perf_counter()
                writer.write(message)
                if await reader.readexactly(MESSAGE) != message:
                    raise RuntimeError("the echo differs")
                state.echo_rtt.append(time.perf_counter() - started)
            writer.close()
            await writer.wait_closed()
        except Exception as exc:
            state.errors[f"client echo: {type(exc).__name__}: {exc}"] += 1
            writer.transport.abort()
        finally:
            state.open_now -= 1

    def settle_one() -> None:
        state.settled += 1
        if state.settled == connections:
            all_up.set()

    deadline = 0.0

    async def client() -> None:
        streams = await handshake(state.burst_latency)
        settle_one()
        await all_up.wait()  # every connection of the burst is open (or failed) together
        if streams is not None:
            await echo_and_close(streams)
        while time.perf_counter() < deadline:
            if source.remaining < PSK_UNITS * 2:
                state.pool_ran_dry = True
                return
            streams = await handshake(state.churn_latency)
            if streams is None:
                continue
            state.churn_done.append(time.perf_counter())
            await echo_and_close(streams)

    cpu = time.process_time()
    started = time.perf_counter()
    deadline = started + 3600.0  # set for real once the burst is up
    tasks = [asyncio.create_task(client()) for _ in range(connections)]
    await all_up.wait()
    burst_s = time.perf_counter() - started
    churn_start = time.perf_counter()
    deadline = churn_start + seconds
    await asyncio.gather(*tasks)
    # The clients move in a convoy (each completes about the same number of cycles), so
    # a count of handshakes done by the deadline would step in units of ``connections``;
    # instead: every churn handshake over the time until the last of them completed.
    churn_s = (max(state.churn_done) - churn_start) if state.churn_done else float("nan")
    cpu = time.process_time() - cpu
    handshakes = len(state.burst_latency) + len(state.churn_latency)
    return {
        "connections": connections, "seconds": seconds, "echoes": echoes,
        "burst_s": burst_s, "peak_open": state.peak_open,
        "burst_handshakes": len(state.burst_latency),
        "churn_handshakes": len(state.churn_latency),
        "handshakes_per_s": len(state.churn_done) / churn_s, "churn_s": churn_s,
        "burst_p50_ms": 1e3 * percentile(state.burst_latency, 0.50),
        "burst_p99_ms": 1e3 * percentile(state.burst_latency, 0.99),
        "churn_p50_ms": 1e3 * percentile(state.churn_latency, 0.50),
        "churn_p99_ms": 1e3 * percentile(state.churn_latency, 0.99),
        "echo_p50_ms": 1e3 * percentile(state.echo_rtt, 0.50),
        "echo_p99_ms": 1e3 * percentile(state.echo_rtt, 0.99),
        "errors": dict(state.errors), "pool_ran_dry": state.pool_ran_dry,
        "rss_before_kib": baseline, "load_cpu_s": cpu,
        "cpu_ms_per_handshake": 1e3 * cpu / max(handshakes, 1), **process_figures(),
    }


def run_load(connections: int, seconds: float, echoes: int,
             rate_ceiling: float) -> dict[str, Any]:
    mp = multiprocessing.get_context("spawn")
    expected = connections + int(seconds * rate_ceiling)
    batch = key_batch(2 * PSK_UNITS * expected)  # 8 keys per handshake the run could make
    server_pipe, server_end = mp.Pipe()
    server = mp.Process(target=load_server, args=(server_end, batch), name="load-server")
    server.start()
    client: Any = None
    try:
        port = answer(server_pipe, 60)
        client_pipe, client_end = mp.Pipe()
        client = mp.Process(target=load_client, name="load-client",
                            args=(client_end, batch, port, connections, seconds, echoes))
        client.start()
        clients = answer(client_pipe)
        server_pipe.send("stop")
        served = answer(server_pipe, 60)
    finally:
        for process in (client, server):
            if process is not None:
                process.join(10)
                if process.is_alive():
                    process.terminate()
    missing = served["accepted"] - served["handshakes"]
    errors = dict(clients["errors"])
    errors.update(served["errors"])
    if missing:
        errors["server: handshakes that never reached the callback"] = missing
    handshakes = clients["burst_handshakes"] + clients["churn_handshakes"]
    if handshakes != served["handshakes"]:
        errors["client and server count different handshakes"] = abs(
            handshakes - served["handshakes"])
    return {"client": clients, "server": served, "keys_deposited": len(batch),
            "errors": errors, "error_count": sum(errors.values())}


# -- throughput -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    cert_pem: bytes
    key_pem: bytes


def self_signed_files() -> TlsFiles:
    """A self-signed ECDSA P-256 certificate for localhost (tests/support.self_signed),
    which the client trusts as itself."""
    issued = self_signed("ECDSA-P256", "localhost", ca=False, san=[x509.DNSName("localhost")])
    return TlsFiles(issued.certificate.public_bytes(serialization.Encoding.PEM),
                    issued.key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))


def tls_server_context(files: TlsFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with tempfile.TemporaryDirectory() as directory:
        cert, key = Path(directory, "cert.pem"), Path(directory, "key.pem")
        cert.write_bytes(files.cert_pem)
        key.write_bytes(files.key_pem)
        ctx.load_cert_chain(cert, key)
    return ctx


def tls_client_context(files: TlsFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=files.cert_pem.decode("ascii"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def _receive(sock: Any, total: int) -> None:
    buffer = memoryview(bytearray(BLOCK))
    got = 0
    while got < total:
        count = sock.recv_into(buffer)
        if not count:
            raise EOFError("the sender closed early")
        got += count


def receiver(pipe: Pipe, batch: Batch, files: TlsFiles, total: int) -> None:
    """Serves one transfer per connection; the first cleartext byte says which kind."""
    hkx_context = Context.from_config(server_config(batch))
    tls_context = tls_server_context(files)
    with socket.create_server((HOST, 0)) as listener:
        pipe.send(listener.getsockname()[1])
        while True:
            conn, _ = listener.accept()
            conn.settimeout(60)
            kind = conn.recv(1)
            if kind in (b"", b"q"):
                conn.close()
                return
            profile = cProfile.Profile() if kind.isupper() else None
            secure: Any = conn
            if kind in (b"h", b"H"):
                secure = hkx_context.wrap_socket(conn, server_side=True)
            elif kind == b"t":
                secure = tls_context.wrap_socket(conn, server_side=True)
            if profile is not None:
                profile.enable()
            cpu = time.process_time()
            _receive(secure, total)
            cpu = time.process_time() - cpu
            if profile is not None:
                profile.disable()
            secure.sendall(b"k")
            secure.close()
            pipe.send((cpu, _top(profile) if profile is not None else None))


def _top(profile: cProfile.Profile, lines: int = 14) -> str:
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(lines)
    return out.getvalue()


@dataclass(frozen=True)
class Transfer:
    """One transfer: MB/s of wall time, and MB per CPU second at each end."""

    mb_s: float
    sender_mb_cpu_s: float
    receiver_mb_cpu_s: float
    receiver_profile: str | None = None


class Senders:
    """The sending ends of the three kinds of transfer, against one receiver process."""

    def __init__(self, pipe: Pipe, port: int, batch: Batch, files: TlsFiles,
                 total: int) -> None:
        self.pipe = pipe
        self.port = port
        self.context, _ = client_context(batch)
        self.tls_context = tls_client_context(files)
        self.data = os.urandom(BLOCK)  # bytes: for SecureSocket.sendall, the cheapest kind
        self.blocks = total // BLOCK
        self.total = self.blocks * BLOCK
        self.seen: dict[str, str] = {}

    def _connect(self, kind: bytes) -> socket.socket:
        sock = socket.create_connection((HOST, self.port), timeout=60)
        sock.sendall(kind)
        return sock

    def _timed(self, secure: Any, send: Callable[[], None]) -> Transfer:
        cpu = time.process_time()
        started = time.perf_counter()
        send()
        if secure.recv(1) != b"k":
            raise RuntimeError("the receiver did not acknowledge the transfer")
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        secure.close()
        receiver_cpu, profile = answer(self.pipe, 60)
        return Transfer(self.total / elapsed / 1e6, self.total / cpu / 1e6,
                        self.total / receiver_cpu / 1e6, profile)

    def _send_all(self, secure: Any) -> Callable[[], None]:
        def send() -> None:
            for _ in range(self.blocks):
                secure.sendall(self.data)
        return send

    def hkx(self, profile: cProfile.Profile | None = None) -> Transfer:
        secure = self.context.wrap_socket(self._connect(b"H" if profile else b"h"), peer=SERVER)
        info = secure.session_info()
        self.seen["hkx"] = f"{info.suite}, {info.auth_mode}"
        send = self._send_all(secure)
        if profile is None:
            return self._timed(secure, send)

        def profiled() -> None:
            profile.enable()
            send()
            profile.disable()
        return self._timed(secure, profiled)

    def tls(self) -> Transfer:
        secure = self.tls_context.wrap_socket(self._connect(b"t"), server_hostname="localhost")
        cipher = secure.cipher()
        self.seen["tls"] = f"{secure.version()}, {cipher[0] if cipher else '?'}"
        return self._timed(secure, self._send_all(secure))



def sender(result: Pipe, receiver_pipe: Pipe, port: int, batch: Batch, files: TlsFiles,
           total: int, kind: str, profile: bool) -> None:
    """One transfer, from a fresh process: how fast the HKX/1 sender is depends on what
    its process allocated and freed before (see docs/performance.md), so every transfer
    of every kind starts from the same state.  ``batch`` holds this transfer's keys."""
    senders = Senders(receiver_pipe, port, batch, files, total)
    sending = cProfile.Profile() if profile else None
    transfer = senders.hkx(sending) if kind == "hkx" else getattr(senders, kind)()
    profiles = ({"sender": _top(sending), "receiver": transfer.receiver_profile or ""}
                if sending is not None else {})
    result.send((transfer, profiles, senders.seen))


def run_throughput(megabytes: int, repeats: int, profile: bool) -> dict[str, Any]:
    mp = multiprocessing.get_context("spawn")
    total = megabytes * BLOCK
    batch = key_batch(PSK_UNITS * (repeats + 1))
    files = self_signed_files()
    receiver_pipe, receiver_end = mp.Pipe()
    process = mp.Process(target=receiver, args=(receiver_end, batch, files, total),
                         name="receiver")
    process.start()
    transfers: dict[str, list[Transfer]] = {"hkx": [], "tls": []}
    profiles: dict[str, str] = {}
    seen: dict[str, str] = {}
    used = 0
    try:
        port = answer(receiver_pipe, 60)

        def transfer(kind: str, profiled: bool = False) -> Transfer:
            nonlocal used
            keys = batch[used:used + PSK_UNITS] if kind == "hkx" else []
            used += len(keys)
            result_pipe, result_end = mp.Pipe()
            child = mp.Process(target=sender, name=f"sender-{kind}", args=(
                result_end, receiver_pipe, port, keys, files, total, kind, profiled))
            child.start()
            try:
                reply = answer(result_pipe)
            finally:
                child.join(10)
                if child.is_alive():
                    child.terminate()
            done: Transfer = reply[0]
            profiles.update(reply[1])
            seen.update(reply[2])
            return done

        kinds = ["hkx", "tls"]
        for repeat in range(repeats):
            _progress(f"throughput repeat {repeat + 1}/{repeats}")
            for kind in kinds if repeat % 2 == 0 else kinds[::-1]:
                transfers[kind].append(transfer(kind))
        if profile:
            transfer("hkx", profiled=True)
        with socket.create_connection((HOST, port), timeout=60) as quit_:
            quit_.sendall(b"q")
    finally:
        process.join(10)
        if process.is_alive():
            process.terminate()
    runs = {name: [t.mb_s for t in ts] for name, ts in transfers.items()}
    medians = {name: statistics.median(values) for name, values in runs.items()}
    cpu = {end: {name: statistics.median(getattr(t, f"{end}_mb_cpu_s") for t in ts)
                 for name, ts in transfers.items()} for end in ("sender", "receiver")}
    return {
        "megabytes": megabytes, "repeats": repeats, "runs": runs,
        "mb_s": medians, "mb_per_cpu_s": cpu, "negotiated": seen,
        "hkx_over_tls": medians["hkx"] / medians["tls"],
        "hkx_over_tls_paired": statistics.median(
            h / t for h, t in zip(runs["hkx"], runs["tls"], strict=True)),
        "cpu_hkx_over_tls": {end: cpu[end]["hkx"] / cpu[end]["tls"] for end in cpu},
        "profiles": profiles,
    }


# -- the run --------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    return {"python": platform.python_version(), "cryptography": cryptography.__version__,
            "openssl": openssl_backend.openssl_version_text(),
            "ssl_module": ssl.OPENSSL_VERSION, "nproc": usable,
            "machine": platform.machine(), "load_average": os.getloadavg(),
            "nofile": raise_fd_limit()}


def goals(results: dict[str, Any]) -> list[tuple[bool, str]]:
    out: list[tuple[bool, str]] = []
    load = results.get("load")
    if load is not None:
        peak, errors = load["client"]["peak_open"], load["error_count"]
        if load["client"]["connections"] < GOAL_CONNECTIONS:
            out.append((errors == 0, f"{errors} errors (goal 0; {GOAL_CONNECTIONS} "
                        f"connections not tested: --connections is below it)"))
        else:
            out.append((peak >= GOAL_CONNECTIONS and errors == 0,
                        f"{peak} connections open at once, {errors} errors "
                        f"(goal {GOAL_CONNECTIONS} with 0 errors)"))
    bulk = results.get("throughput")
    if bulk is not None:
        out.append((bulk["hkx_over_tls"] >= GOAL_THROUGHPUT,
                    f"bulk throughput {bulk['hkx_over_tls']:.2f}x TLS 1.3 "
                    f"(goal >= {GOAL_THROUGHPUT:.1f}x)"))
    return out


def report(results: dict[str, Any], env: dict[str, Any]) -> None:
    load_avg = ", ".join(f"{x:.2f}" for x in env["load_average"])
    print(f"Python {env['python']}, cryptography {env['cryptography']}, {env['openssl']}; "
          f"ssl module {env['ssl_module']}; nproc {env['nproc']}, {env['machine']}; "
          f"load average {load_avg}; open files limit {env['nofile'][0]}")
    load = results.get("load")
    if load is not None:
        c, s = load["client"], load["server"]
        print(f"\nLoad: {c['connections']} concurrent asyncio clients, psk handshakes "
              f"({SUITE.name}), {c['echoes']} echoes of {MESSAGE} B per connection; "
              f"{load['keys_deposited']} pool keys deposited per site")
        print(f"  opening burst: {c['burst_handshakes']} handshakes in {c['burst_s']:.2f} s, "
              f"{c['peak_open']} connections open at once; latency p50 "
              f"{c['burst_p50_ms']:.0f} ms, p99 {c['burst_p99_ms']:.0f} ms")
        print(f"  churn for {c['seconds']:g} s: {c['churn_handshakes']} handshakes in "
              f"{c['churn_s']:.2f} s, {c['handshakes_per_s']:.0f}/s; "
              f"latency p50 {c['churn_p50_ms']:.0f} ms, p99 {c['churn_p99_ms']:.0f} ms; "
              f"echo round trip p50 {c['echo_p50_ms']:.1f} ms, p99 {c['echo_p99_ms']:.1f} ms")
        for name, p in (("client", c), ("server", s)):
            print(f"  {name} process: peak RSS {p['maxrss_kib'] / 1024:.0f} MiB "
                  f"(before the first connection {p['rss_before_kib'] / 1024:.0f} MiB); "
                  f"CPU {p['load_cpu_s']:.1f} s under load, "
                  f"{p['cpu_ms_per_handshake']:.2f} ms per connection (handshake, echoes, "
                  f"close)")
        print(f"  server: {s['accepted']} connections accepted, {s['handshakes']} handshakes")
        print(f"  errors: {load['error_count']}")
        for what, count in sorted(load["errors"].items()):
            print(f"    {count:6d}  {what}")
        if c["pool_ran_dry"]:
            print("  WARNING: the client's key pool ran low and it stopped early; "
                  "raise --rate-ceiling")
    bulk = results.get("throughput")
    if bulk is not None:
        mb = bulk["mb_s"]
        print(f"\nThroughput: {bulk['megabytes']} MiB one way over loopback, median of "
              f"{bulk['repeats']} (MB/s = 10^6 bytes of plaintext per second)")
        rows = (("hkx", f"HKX/1 SecureSocket ({bulk['negotiated'].get('hkx', '')})"),
                ("tls", f"stdlib ssl ({bulk['negotiated'].get('tls', '')})"))
        cpu = bulk["mb_per_cpu_s"]
        print(f"  {'':<66} {'MB/s':>6} {'MB/CPU-s':>17}   runs, MB/s")
        print(f"  {'':<66} {'':>6} {'sender':>8} {'receiver':>8}")
        for key, label in rows:
            runs = ", ".join(f"{x:.0f}" for x in bulk["runs"][key])
            print(f"  {label:<66} {mb[key]:6.0f} {cpu['sender'][key]:8.0f} "
                  f"{cpu['receiver'][key]:8.0f}   ({runs})")
        ratio = bulk["cpu_hkx_over_tls"]
        print(f"  HKX/TLS {bulk['hkx_over_tls']:.2f} (paired {bulk['hkx_over_tls_paired']:.2f});"
              f" per CPU second: sender {ratio['sender']:.2f}, receiver "
              f"{ratio['receiver']:.2f}")
        for side, text in bulk["profiles"].items():
            print(f"\nProfile of one HKX/1 transfer, {side} (cProfile, by own time):\n{text}")
    print("Goals")
    for met, text in goals(results):
        print(f"  [{'met' if met else 'MISSED'}] {text}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--connections", type=int, help="concurrent clients (default 1000, "
                        "quick 200)")
    parser.add_argument("--seconds", type=float, help="churn after the burst (default 10, "
                        "quick 3)")
    parser.add_argument("--echoes", type=int, default=2, help="echoes per connection")
    parser.add_argument("--megabytes", type=int, help="MiB per transfer (default 64, quick 16)")
    parser.add_argument("--repeats", type=int, help="transfers of each kind (default 5, "
                        "quick 3)")
    parser.add_argument("--rate-ceiling", type=float, default=1000.0,
                        help="handshakes/s the key deposit is sized for (default 1000)")
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--only", choices=("load", "throughput"), help="one part only")
    parser.add_argument("--profile", action="store_true",
                        help="profile one HKX/1 transfer, both ends")
    parser.add_argument("--json", action="store_true", help="results as JSON on stdout")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    connections = args.connections or (200 if args.quick else 1000)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    megabytes = args.megabytes or (16 if args.quick else 64)
    repeats = args.repeats or (3 if args.quick else 5)
    if min(connections, seconds, megabytes, repeats, args.echoes) <= 0:
        raise SystemExit("--connections, --seconds, --megabytes, --repeats and --echoes "
                         "must be positive")
    env = environment()
    results: dict[str, Any] = {}
    if args.only in (None, "load"):
        _progress(f"load: {connections} connections, {seconds:g} s of churn")
        results["load"] = run_load(connections, seconds, args.echoes, args.rate_ceiling)
    if args.only in (None, "throughput"):
        results["throughput"] = run_throughput(megabytes, repeats, args.profile)
    env["load_average_after"] = os.getloadavg()
    if args.json:
        results["goals"] = [{"met": met, "goal": text} for met, text in goals(results)]
        json.dump({"environment": env, **results}, sys.stdout, indent=1)
        print()
    else:
        report(results, env)
    load = results.get("load")
    return 1 if load is not None and load["error_count"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
