"""Forwarding through two sites, against stunnel4: throughput, and many concurrent streams.

Everything runs as real processes on loopback: ``hybridkex serve --forward`` (site-b)
and ``hybridkex connect --listen-local`` (site-a), started with ``python -m hybridkex``
exactly as a user starts them, and Debian's ``stunnel4`` as the reference.  The two
site directories are made with ``hybridkex site init`` and ``site trust``; their key
stores (keys.db) get random pool keys from ``linked_pools`` (as the tests do), enough
for every handshake of the run, so no simulated QKD link has to run first.

1. **Throughput.**  A sink service sits behind the server end and a source client
   pushes ``--megabytes`` MiB through the client end, over one stream:

       source -> client end -> (channel) -> server end -> sink

   The sink greets each connection with one byte, which reaches the source only once
   the whole path is up (for hybridkex: the channel's handshake has completed and the
   server has connected to the sink), so the clock starts after the handshake.  The
   source then sends an 8-byte length and the data (``sendall`` of 1 MiB blocks of
   random bytes); the sink reads it all with ``recv_into`` and answers with the count
   it received, and the clock stops when that answer arrives.  MB/s is 10^6 bytes of
   data per second.  Each relay process's CPU time over the same span
   (/proc/PID/stat, all threads) gives MB per CPU second per end.
   Four paths, interleaved in every repeat (the order rotates), each relay pair started
   once and kept for the whole run:

   * **HKX/1**: ``connect --listen-local`` -> ``serve --forward``, psk authentication,
     the sites' default suite HKX1_X25519_MLKEM768_AES_256_GCM_SHA384 (AES-256-GCM).
   * **TLS**: the same with ``--tls`` (certificate mode, X25519MLKEM768,
     TLS_AES_256_GCM_SHA384; the sites' ML-DSA-65 certificates).
   * **stunnel**: a client-mode stunnel -> a server-mode stunnel, TLS 1.3 only,
     ciphersuite TLS_AES_256_GCM_SHA384, both ends authenticated (the server's
     certificate is checked against a test CA for "localhost", and the server requires
     the client's), ECDSA P-256 certificates from ``tests.support.tls_files``.
     stunnel runs with its defaults otherwise (a thread per connection).
   * **direct**: the source straight to the sink, no relay: what the source and the
     sink themselves reach.

   ``ours/stunnel`` is the ratio of the medians; ``paired`` (the median of the
   per-repeat ratios) is printed beside it.

2. **Concurrent streams.**  A fresh relay pair (HKX/1, then ``--tls``) with
   ``--max-connections`` above ``--streams``, in front of an echo service.  The bench
   opens ``--streams`` local connections at once; each sends ``--message`` bytes and
   reads them back, and every stream is held open until all have answered (or
   failed), so all are open at the same moment.  Then each closes its sending side,
   reads the end of file (the half-close through both relays) and closes.  Errors are
   every exception, every wrong or missing echo, and every stream the relays' logs
   report as refused or failed (both logs must say each stream closed cleanly).
   Memory: each relay process's resident memory before the first stream (VmRSS), its
   peak during the run (VmHWM, reset just before the streams open, and VmRSS sampled
   every 50 ms), and the peak over the baseline divided by the number of streams.

The bench raises its own open-file limit to the hard limit (the relays raise theirs for
``--max-connections``).  stunnel4 is Debian's package: if it is missing, the bench
installs it with apt-get when it runs as root (``--no-install`` to forbid), and
otherwise says why the stunnel figures are "not measured".  Exit status 1 if a
concurrency run saw any error.

    python bench/forward.py                 # 5 x 64 MiB of each kind; 1000 streams; ~2 minutes
    python bench/forward.py --quick         # 3 x 16 MiB; 200 streams
    python bench/forward.py --json          # the same as JSON on stdout
    python bench/forward.py --only throughput --profile   # py-spy of both HKX/1 relays
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cryptography
from cryptography.hazmat.backends.openssl import backend as openssl_backend

from hybridkex.keydelivery import linked_pools
from hybridkex.site import Site
from tests.support import Process, tls_files

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SITE_A, SITE_B = "site-a", "site-b"
BLOCK = 1 << 20  # bytes per sendall / recv_into buffer
PSK_KEYS = 4  # pool keys a psk handshake takes (client) and fetches (server)
READY_TIMEOUT = 60.0  # seconds a process or a transfer may take to get going
TRANSFER_TIMEOUT = 600.0
STREAM_TIMEOUT = 300.0  # seconds a concurrency run may take in all
CIPHERSUITE = "TLS_AES_256_GCM_SHA384"
STUNNEL_PACKAGE = "stunnel4"

GOAL_RATIO = 0.8  # ours / stunnel MB/s, at least
GOAL_STREAMS = 1000  # concurrent forwarded streams, with 0 errors

KINDS = ("hkx", "tls", "stunnel", "direct")
LABELS = {
    "hkx": "HKX/1: connect --listen-local -> serve --forward",
    "tls": "TLS 1.3: the same with --tls",
    "stunnel": "stunnel4 client -> stunnel4 server (TLS 1.3)",
    "direct": "direct: source -> sink, no relay",
}


def _progress(text: str) -> None:
    print(f"[forward] {text}", file=sys.stderr, flush=True)


# -- stunnel4 ---------------------------------------------------------------------------------


def stunnel_binary(install: bool) -> tuple[str | None, str]:
    """Debian's stunnel (``stunnel4``), installed with apt-get when absent and allowed
    (root only).  Returns (path, what happened) or (None, why not)."""
    for name in ("stunnel4", "stunnel"):
        found = shutil.which(name)
        if found:
            return found, "found"
    if not install:
        return None, f"{STUNNEL_PACKAGE} is not installed (--no-install)"
    if os.geteuid() != 0:
        return None, (f"{STUNNEL_PACKAGE} is not installed, and installing it needs root: "
                      f"apt-get install {STUNNEL_PACKAGE}")
    if shutil.which("apt-get") is None:
        return None, f"{STUNNEL_PACKAGE} is not installed, and there is no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _progress(f"installing Debian's {STUNNEL_PACKAGE} with apt-get")
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                     STUNNEL_PACKAGE]):
        try:
            result = subprocess.run(command, env=env, stdin=subprocess.DEVNULL,
                                    capture_output=True, text=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"{' '.join(command)} failed: {exc}"
        if result.returncode != 0:
            last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["?"]
            return None, (f"{' '.join(command)} failed with status {result.returncode}: "
                          f"{last[0]}")
    for name in ("stunnel4", "stunnel"):
        found = shutil.which(name)
        if found:
            return found, f"installed Debian's {STUNNEL_PACKAGE}"
    return None, f"apt-get installed {STUNNEL_PACKAGE}, but no stunnel4 is on PATH"


def stunnel_version(binary: str) -> str:
    result = subprocess.run([binary, "-version"], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=30, check=False)
    lines = [line.strip() for line in (result.stderr + result.stdout).splitlines()]
    wanted = [line for line in lines if line.startswith(("stunnel ", "Compiled with",
                                                         "Running  with", "Running with"))]
    return "; ".join(" ".join(line.split()) for line in wanted) or "?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def stunnel_config(path: Path, *, client: bool, accept: int, connect: int,
                   files: Path) -> Path:
    """One service, TLS 1.3 only with one ciphersuite, both ends authenticated."""
    lines = [
        "foreground = yes",
        "pid =",
        "syslog = no",
        "debug = 5",  # notice: one line per connection, and "Configuration successful"
        "[bench]",
        f"client = {'yes' if client else 'no'}",
        f"accept = {HOST}:{accept}",
        f"connect = {HOST}:{connect}",
        "sslVersionMin = TLSv1.3",
        "sslVersionMax = TLSv1.3",
        f"ciphersuites = {CIPHERSUITE}",
        f"CAfile = {files / 'ca.pem'}",
        "verifyChain = yes",
    ]
    if client:
        lines += ["checkHost = localhost", f"cert = {files / 'client.pem'}",
                  f"key = {files / 'client.key'}"]
    else:
        lines += [f"cert = {files / 'localhost.pem'}", f"key = {files / 'localhost.key'}"]
    path.write_text("\n".join(lines) + "\n")
    return path


# -- processes ------------------------------------------------------------------------------


def _clock_ticks() -> int:
    return int(os.sysconf("SC_CLK_TCK"))


class Relay(Process):
    """One relay process (a hybridkex command or stunnel): tests/support.Process (its
    stderr lines collected as they come), with its memory and CPU read from /proc."""

    def __init__(self, name: str, args: list[str], ready: str) -> None:
        self.name = name
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        super().__init__(args, ready, timeout=READY_TIMEOUT, cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL)
        self.pid = self.process.pid

    def count(self, pattern: str) -> int:
        with self._changed:
            return sum(1 for line in self.lines if re.search(pattern, line))

    def matching(self, pattern: str) -> list[str]:
        with self._changed:
            return [line for line in self.lines if re.search(pattern, line)]

    def wait_count(self, pattern: str, count: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (found := self.count(pattern)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return found

    def memory_kib(self, field: str) -> int | None:
        """VmRSS or VmHWM, in KiB (None once the process is gone)."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def reset_peak(self) -> bool:
        """Set VmHWM back to the current resident size (Linux's clear_refs value 5)."""
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return False
        return True

    def cpu_seconds(self) -> float:
        """Time on a CPU of the whole process (every thread) so far: the scheduler's
        nanosecond count (/proc/PID/task/*/schedstat), where /proc/PID/stat counts in
        ticks of 10 ms, too coarse for a transfer of a tenth of a second."""
        total = 0
        try:
            tasks = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            tasks = []
        for task in tasks:
            with contextlib.suppress(OSError), \
                    open(f"/proc/{self.pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        if total:
            return total / 1e9
        with open(f"/proc/{self.pid}/stat") as f:  # no schedstat in this kernel
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _clock_ticks()

    def stop(self) -> int:
        """SIGTERM, then its exit status (killed if it does not stop within 30 s)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(10)
        self._reader.join(10)
        return code


@dataclass
class Pair:
    """A client end and a server end: connect to ``port`` to reach the target."""

    kind: str
    client: Relay | None
    server: Relay | None
    port: int

    @property
    def relays(self) -> tuple[Relay, ...]:
        return tuple(r for r in (self.client, self.server) if r is not None)

    def stop(self) -> None:
        for relay in self.relays:  # the client end first: it holds the channels
            relay.stop()


def hybridkex_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "hybridkex", *args]


def hkx_pair(sites: tuple[Path, Path], target: int, *, tls: bool, max_connections: int,
             timeout: float) -> Pair:
    a, b = sites
    protocol = ["--tls"] if tls else []
    limits = ["--max-connections", str(max_connections), "--timeout", f"{timeout:g}",
              "--grace", "5"]
    server = Relay(f"serve --forward{' --tls' if tls else ''}", hybridkex_args(
        "serve", "--site", str(b), "--listen", f"{HOST}:0", "--forward", f"{HOST}:{target}",
        *limits, *protocol), "listening on ")
    port = _port_after(server.first, "listening on ")
    auth = [] if tls else ["--auth", "psk"]
    try:
        client = Relay(f"connect --listen-local{' --tls' if tls else ''}", hybridkex_args(
            "connect", "--site", str(a), "--listen-local", f"{HOST}:0", *limits, *auth,
            *protocol, f"{HOST}:{port}"), "forwarding ")
    except BaseException:
        server.stop()
        raise
    return Pair("tls" if tls else "hkx", client, server, _port_after(client.first,
                                                                      "forwarding "))


def stunnel_pair(binary: str, files: Path, target: int) -> Pair:
    middle, local = free_port(), free_port()
    server = Relay("stunnel server", [binary, str(stunnel_config(
        files / "server.conf", client=False, accept=middle, connect=target, files=files))],
        "Configuration successful")
    try:
        client = Relay("stunnel client", [binary, str(stunnel_config(
            files / "client.conf", client=True, accept=local, connect=middle,
            files=files))], "Configuration successful")
    except BaseException:
        server.stop()
        raise
    return Pair("stunnel", client, server, local)


def _port_after(line: str, after: str) -> int:
    match = re.search(re.escape(after) + re.escape(HOST) + r":(\d+)", line)
    if not match:
        raise RuntimeError(f"no port in {line!r}")
    return int(match.group(1))


# -- the two sites ------------------------------------------------------------------------------


def make_sites(base: Path, keys_per_direction: int) -> tuple[Path, Path]:
    """site-a and site-b: ``site init``, each trusting the other (``site trust``), and
    ``keys_per_direction`` random pool keys per direction in both keys.db."""
    a, b = base / SITE_A, base / SITE_B
    for directory, name in ((a, SITE_A), (b, SITE_B)):
        _cli("site", "init", str(directory), "--name", name)
    _cli("site", "trust", str(a), str(b / "identity.crt"))
    _cli("site", "trust", str(b), str(a / "identity.crt"))
    with Site.load(a) as site_a, Site.load(b) as site_b:
        linked_pools(SITE_A, SITE_B, keys_per_direction, store_a=site_a.store,
                     store_b=site_b.store)
    return a, b


def _cli(*args: str) -> None:
    result = subprocess.run(hybridkex_args(*args), cwd=ROOT, capture_output=True, text=True,
                            timeout=120, check=False,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    if result.returncode != 0:
        raise RuntimeError(f"hybridkex {' '.join(args)}: {result.stderr.strip()}")


# -- throughput -----------------------------------------------------------------------------


class SinkService:
    """Greets each connection with one byte, reads an 8-byte length and that many bytes,
    answers with the count received.  A thread per connection, blocking sockets."""

    def __init__(self) -> None:
        self.listener = socket.create_server((HOST, 0), backlog=128)
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        buffer = bytearray(BLOCK)
        view = memoryview(buffer)
        with conn, contextlib.suppress(OSError):
            conn.sendall(b"R")
            header = _receive_exactly(conn, 8)
            if len(header) < 8:
                return
            (remaining,) = struct.unpack(">Q", header)
            received = 0
            while remaining:
                n = conn.recv_into(view, min(BLOCK, remaining))
                if not n:
                    break
                received += n
                remaining -= n
            conn.sendall(struct.pack(">Q", received))

    def close(self) -> None:
        self.listener.close()


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


@dataclass
class Transfer:
    kind: str
    seconds: float
    mb_s: float
    cpu_s: dict[str, float]  # "client", "server": each relay's CPU seconds over the span


def transfer(pair: Pair, total: int, block: memoryview) -> Transfer:
    """Push ``total`` bytes through ``pair`` to the sink; timed from the first byte sent
    (after the path is up) to the sink's count."""
    with socket.create_connection((HOST, pair.port), timeout=READY_TIMEOUT) as sock:
        if _receive_exactly(sock, 1) != b"R":
            raise RuntimeError(f"{pair.kind}: the path to the sink did not open")
        sock.settimeout(TRANSFER_TIMEOUT)
        cpu_before = {side: r.cpu_seconds() for side, r in _sides(pair)}
        started = time.perf_counter()
        sock.sendall(struct.pack(">Q", total))
        for _ in range(total // BLOCK):
            sock.sendall(block)
        answer = _receive_exactly(sock, 8)
        seconds = time.perf_counter() - started
        cpu = {side: r.cpu_seconds() - cpu_before[side] for side, r in _sides(pair)}
    if len(answer) != 8 or struct.unpack(">Q", answer)[0] != total:
        raise RuntimeError(f"{pair.kind}: the sink did not receive all {total} bytes")
    return Transfer(pair.kind, seconds, total / 1e6 / seconds, cpu)


def _sides(pair: Pair) -> Iterator[tuple[str, Relay]]:
    if pair.client is not None:
        yield "client", pair.client
    if pair.server is not None:
        yield "server", pair.server


def run_throughput(pairs: dict[str, Pair], megabytes: int, repeats: int,
                   profile: Path | None) -> dict[str, Any]:
    total = megabytes * BLOCK
    block = memoryview(os.urandom(BLOCK))
    kinds = [k for k in KINDS if k in pairs]
    for kind in kinds:  # warm-up: imports, first handshakes, page faults
        transfer(pairs[kind], 4 * BLOCK, block)
    runs: dict[str, list[Transfer]] = {k: [] for k in kinds}
    for repeat in range(repeats):
        order = kinds[repeat % len(kinds):] + kinds[:repeat % len(kinds)]
        for kind in order:
            result = transfer(pairs[kind], total, block)
            runs[kind].append(result)
            _progress(f"throughput {repeat + 1}/{repeats} {kind}: {result.mb_s:.0f} MB/s")
    mb_s = {k: statistics.median(t.mb_s for t in runs[k]) for k in kinds}
    per_cpu: dict[str, dict[str, float]] = {}
    for kind in kinds:
        per_cpu[kind] = {}
        for side in ("client", "server"):
            spent = [t.cpu_s[side] for t in runs[kind] if side in t.cpu_s]
            if spent:
                per_cpu[kind][side] = total / 1e6 / statistics.median(spent)
        if len(per_cpu[kind]) == 2:  # the two relays together
            per_cpu[kind]["both"] = total / 1e6 / statistics.median(
                sum(t.cpu_s.values()) for t in runs[kind])
    out: dict[str, Any] = {"megabytes": megabytes, "repeats": repeats, "mb_s": mb_s,
                           "runs": {k: [round(t.mb_s, 1) for t in runs[k]] for k in kinds},
                           "mb_per_cpu_s": per_cpu, "ratios": {}}
    if "stunnel" in kinds:
        for ours in ("hkx", "tls"):
            if ours in kinds:
                paired = statistics.median(
                    x.mb_s / y.mb_s for x, y in zip(runs[ours], runs["stunnel"], strict=True))
                out["ratios"][ours] = {
                    "over_stunnel": mb_s[ours] / mb_s["stunnel"], "paired": paired,
                    "cpu_over_stunnel": per_cpu[ours]["both"] / per_cpu["stunnel"]["both"]}
    if profile is not None and "hkx" in pairs:
        out["profile"] = profile_transfer(pairs["hkx"], total, block, profile)
    return out


def profile_transfer(pair: Pair, total: int, block: memoryview, directory: Path
                     ) -> dict[str, Any]:
    """py-spy (sampling, native frames off) on both relays during one more transfer; the
    functions with the most own samples in each."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {"error": "py-spy is not installed (pip install py-spy)"}
    directory.mkdir(parents=True, exist_ok=True)
    spies = {}
    for side, relay in _sides(pair):
        out = directory / f"{pair.kind}-{side}.txt"
        spies[side] = (out, subprocess.Popen(
            [spy, "record", "--pid", str(relay.pid), "--rate", "500", "--format", "raw",
             "--output", str(out), "--nonblocking"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    time.sleep(1.0)  # py-spy attaches
    result = transfer(pair, total, block)
    report: dict[str, Any] = {"mb_s": result.mb_s}
    for side, (out, process) in spies.items():
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        report[side] = {"file": str(out), "top": top_functions(out)}
    return report


def top_functions(collapsed: Path, count: int = 15) -> list[tuple[str, float]]:
    """From py-spy's collapsed stacks: each function's share of own (leaf) samples."""
    if not collapsed.exists():
        return []
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():
            continue
        leaf = stack.split(";")[-1]
        own[leaf] += int(samples)
        total += int(samples)
    return [(name, round(100 * n / total, 1)) for name, n in own.most_common(count)] \
        if total else []


# -- concurrent streams ---------------------------------------------------------------------


class EchoService:
    """An asyncio echo server: every byte back, then the end of file after the client's."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._echo, HOST, 0, backlog=4096)
        self.port = int(self.server.sockets[0].getsockname()[1])

    @staticmethod
    async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
            writer.close()
            await writer.wait_closed()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class MemoryWatch:
    """Samples each relay's VmRSS every ``period`` seconds; the maximum seen."""

    def __init__(self, relays: Sequence[Relay], period: float = 0.05) -> None:
        self.relays = relays
        self.period = period
        self.peak: dict[str, int] = {r.name: 0 for r in relays}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for relay in self.relays:
                rss = relay.memory_kib("VmRSS")
                if rss is not None:
                    self.peak[relay.name] = max(self.peak[relay.name], rss)
            self._stop.wait(self.period)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def _streams(port: int, count: int, message: int, relays: Sequence[Relay]
                   ) -> dict[str, Any]:
    errors: Counter[str] = Counter()
    answered = 0
    settled = 0
    all_settled = asyncio.Event()
    held_rss: dict[str, int | None] = {}
    opened_s: list[float] = []
    started = time.perf_counter()

    def settle() -> None:
        nonlocal settled
        settled += 1
        if settled == count:
            for relay in relays:  # all answered streams are open now
                held_rss[relay.name] = relay.memory_kib("VmRSS")
            all_settled.set()

    async def stream(number: int) -> None:
        nonlocal answered
        data = number.to_bytes(4, "big") * (message // 4)
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        counted = False
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(data)
            await writer.drain()
            echoed = await reader.readexactly(len(data))
            if echoed != data:
                errors["the echo differs from what was sent"] += 1
            else:
                answered += 1
                opened_s.append(time.perf_counter() - started)
            settle()
            counted = True
            await all_settled.wait()
            writer.write_eof()
            rest = await reader.read()
            if rest:
                errors["data after the echo"] += 1
        except (OSError, asyncio.IncompleteReadError) as exc:
            errors[f"{type(exc).__name__}: {exc}" if not isinstance(
                exc, asyncio.IncompleteReadError) else
                f"the stream ended after {len(exc.partial)} of {len(data)} bytes"] += 1
            if not counted:
                settle()
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    try:
        async with asyncio.timeout(STREAM_TIMEOUT):
            await asyncio.gather(*(stream(i) for i in range(count)))
    except TimeoutError:
        errors[f"not finished within {STREAM_TIMEOUT:g} s"] += 1
    elapsed = time.perf_counter() - started
    return {"answered": answered, "errors": dict(errors), "seconds": elapsed,
            "all_answered_s": max(opened_s) if opened_s else None,
            "rss_held_kib": held_rss}


def run_streams(kind: str, sites: tuple[Path, Path], count: int, message: int,
                timeout: float) -> dict[str, Any]:
    """``count`` concurrent streams through a fresh relay pair to an echo service."""

    async def main() -> dict[str, Any]:
        echo = EchoService()
        await echo.start()
        pair = await asyncio.to_thread(hkx_pair, sites, echo.port, tls=kind == "tls",
                                       max_connections=count + 64, timeout=timeout)
        try:
            # one stream first, so that both processes have loaded what a stream needs
            warm = await _streams(pair.port, 1, message, [])
            if warm["errors"]:
                raise RuntimeError(f"{kind}: the warm-up stream failed: {warm['errors']}")
            await asyncio.sleep(0.2)
            before = {r.name: r.memory_kib("VmRSS") for r in pair.relays}
            reset = all(r.reset_peak() for r in pair.relays)
            with MemoryWatch(pair.relays) as watch:
                result = await _streams(pair.port, count, message, pair.relays)
                hwm = {r.name: r.memory_kib("VmHWM") for r in pair.relays}
            # every stream (and the warm-up) closed cleanly in both logs, nothing refused
            for relay in pair.relays:
                relay.wait_count(r"closed cleanly", count + 1, 30.0)
            logs: dict[str, dict[str, int]] = {}
            failures: dict[str, list[str]] = {}
            for relay in pair.relays:
                logs[relay.name] = {
                    "closed_cleanly": relay.count(r"closed cleanly") - 1,  # not the warm-up
                    "refused": relay.count(r": refused: "),
                    "failed": relay.count(r"failed"),
                }
                failures[relay.name] = relay.matching(r"failed|refused")[:5]
        finally:
            await asyncio.to_thread(pair.stop)
            await echo.close()
        errors = dict(result["errors"])
        for name, log in logs.items():
            for what in ("refused", "failed"):
                if log[what]:
                    errors[f"{name} log: {what}"] = log[what]
            missing = count - log["closed_cleanly"]
            if missing > 0:
                errors[f"{name} log: streams not closed cleanly"] = missing
        memory = {}
        for relay in pair.relays:
            name = relay.name
            base = before[name]
            peak_candidates = [x for x in (hwm.get(name) if reset else None,
                                           watch.peak.get(name)) if x]
            peak = max(peak_candidates) if peak_candidates else None
            memory[name] = {
                "rss_before_kib": base,
                "peak_kib": peak,
                "peak_source": "VmHWM and sampled VmRSS" if reset else "sampled VmRSS",
                "rss_all_open_kib": result["rss_held_kib"].get(name),
                "per_stream_kib": (peak - base) / count if peak and base else None,
            }
        return {"kind": kind, "streams": count, "message_bytes": message,
                "answered": result["answered"], "seconds": result["seconds"],
                "all_answered_s": result["all_answered_s"],
                "error_count": sum(errors.values()), "errors": errors,
                "logs": logs, "log_failures": failures, "memory": memory}

    return asyncio.run(main())


# -- the run ----------------------------------------------------------------------------------


def raise_fd_limit() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def environment(stunnel: str | None) -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {"python": platform.python_version(), "cryptography": cryptography.__version__,
            "openssl": openssl_backend.openssl_version_text(),
            "ssl_module": ssl.OPENSSL_VERSION,
            "stunnel": stunnel_version(stunnel) if stunnel else None,
            "nproc": usable, "machine": platform.machine(),
            "load_average": os.getloadavg(), "nofile": raise_fd_limit()}


def goals(results: dict[str, Any]) -> list[tuple[bool | None, str]]:
    out: list[tuple[bool | None, str]] = []
    bulk = results.get("throughput")
    if bulk is not None:
        for ours, label in (("hkx", "HKX/1"), ("tls", "--tls")):
            ratio = bulk["ratios"].get(ours)
            if ratio is None:
                out.append((None, f"{label} throughput / stunnel4: not measured "
                            f"({results.get('stunnel_status', 'no stunnel')})"))
            else:
                out.append((ratio["over_stunnel"] >= GOAL_RATIO,
                            f"{label} throughput {ratio['over_stunnel']:.2f}x stunnel4 "
                            f"(paired {ratio['paired']:.2f}, per CPU second "
                            f"{ratio['cpu_over_stunnel']:.2f}; goal >= {GOAL_RATIO}x)"))
    for run in results.get("streams", []):
        label = "HKX/1" if run["kind"] == "hkx" else "--tls"
        ok = run["error_count"] == 0 and run["answered"] == run["streams"]
        if run["streams"] < GOAL_STREAMS:
            out.append((None, f"{label}: {run['answered']} of {run['streams']} concurrent "
                        f"streams, {run['error_count']} errors ({GOAL_STREAMS} not tested: "
                        "--streams is below it)"))
        else:
            out.append((ok, f"{label}: {run['answered']} of {run['streams']} concurrent "
                        f"streams answered, {run['error_count']} errors (goal "
                        f"{GOAL_STREAMS} with 0 errors)"))
    return out


def _mib(kib: int | float | None) -> str:
    return "not measured" if kib is None else f"{kib / 1024:.0f} MiB"


def report(results: dict[str, Any], env: dict[str, Any]) -> None:
    load = ", ".join(f"{x:.2f}" for x in env["load_average"])
    after = ", ".join(f"{x:.2f}" for x in env.get("load_average_after", ()))
    print(f"Python {env['python']}, cryptography {env['cryptography']}, {env['openssl']}; "
          f"nproc {env['nproc']}, {env['machine']}; load average {load} (after: {after})")
    print(f"stunnel: {env['stunnel'] or 'not measured: ' + results['stunnel_status']}")
    bulk = results.get("throughput")
    if bulk is not None:
        print(f"\nThroughput: {bulk['megabytes']} MiB one way through one stream, median of "
              f"{bulk['repeats']} (MB/s = 10^6 bytes per second)")
        print(f"  {'':<52} {'MB/s':>6} {'MB per CPU-s':>27}   runs, MB/s")
        print(f"  {'':<52} {'':>6} {'client':>8} {'server':>8} {'both':>8}")
        for kind, mb_s in bulk["mb_s"].items():
            cpu = bulk["mb_per_cpu_s"][kind]
            cells = [f"{cpu[s]:8.0f}" if s in cpu else f"{'':>8}"
                     for s in ("client", "server", "both")]
            runs = ", ".join(f"{x:.0f}" for x in bulk["runs"][kind])
            print(f"  {LABELS[kind]:<52} {mb_s:6.0f} {' '.join(cells)}   ({runs})")
        for ours, ratio in bulk["ratios"].items():
            print(f"  {ours}/stunnel {ratio['over_stunnel']:.2f} (paired {ratio['paired']:.2f}); "
                  f"per CPU second of both relays {ratio['cpu_over_stunnel']:.2f}")
        profile = bulk.get("profile")
        if profile:
            if "error" in profile:
                print(f"  profile: {profile['error']}")
            for side in ("client", "server"):
                if side in profile:
                    print(f"\n  py-spy, HKX/1 {side} end, own samples "
                          f"({profile[side]['file']}):")
                    for name, share in profile[side]["top"]:
                        print(f"    {share:5.1f}%  {name}")
    for run in results.get("streams", []):
        print(f"\nConcurrent streams ({'HKX/1, psk' if run['kind'] == 'hkx' else '--tls'}): "
              f"{run['streams']} at once through the relays to an echo service, "
              f"{run['message_bytes']} B each way")
        all_answered = run["all_answered_s"]
        print(f"  answered: {run['answered']} of {run['streams']}, all within "
              f"{all_answered:.1f} s" if all_answered is not None else "  answered: none")
        print(f"  run: {run['seconds']:.1f} s; errors: {run['error_count']}")
        for what, n in sorted(run["errors"].items()):
            print(f"    {n:6d}  {what}")
        for name, log in run["logs"].items():
            print(f"  {name} log: {log['closed_cleanly']} closed cleanly, {log['refused']} "
                  f"refused, {log['failed']} failed")
        for name, mem in run["memory"].items():
            per = mem["per_stream_kib"]
            print(f"  {name}: RSS before {_mib(mem['rss_before_kib'])}, with all open "
                  f"{_mib(mem['rss_all_open_kib'])}, peak {_mib(mem['peak_kib'])} "
                  f"({mem['peak_source']}); per stream "
                  + ("not measured" if per is None else f"{per:.0f} KiB"))
    print("\nGoals")
    for met, text in goals(results):
        mark = "not measured" if met is None else "met" if met else "MISSED"
        print(f"  [{mark}] {text}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--megabytes", type=int, help="MiB per transfer (default 64, quick 16)")
    parser.add_argument("--repeats", type=int, help="transfers of each kind (default 7, "
                        "quick 3)")
    parser.add_argument("--streams", type=int, help="concurrent streams (default 1000, "
                        "quick 200)")
    parser.add_argument("--message", type=int, default=1024,
                        help="bytes each stream sends and gets back (default 1024)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="the relays' handshake time limit, seconds (default 120)")
    parser.add_argument("--only", choices=("throughput", "streams"), help="one part only")
    parser.add_argument("--no-tls", action="store_true", help="HKX/1 only, not --tls")
    parser.add_argument("--no-install", action="store_true",
                        help="do not install stunnel4 when it is missing")
    parser.add_argument("--profile", type=Path, nargs="?", const=Path("forward-profile"),
                        metavar="DIR", help="py-spy both HKX/1 relays during one more "
                        "transfer; collapsed stacks in DIR (default ./forward-profile)")
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--json", action="store_true", help="results as JSON on stdout")
    args = parser.parse_args(argv)
    args.megabytes = args.megabytes or (16 if args.quick else 64)
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.streams = args.streams or (200 if args.quick else 1000)
    if min(args.megabytes, args.repeats, args.streams, args.message, args.timeout) <= 0:
        parser.error("--megabytes, --repeats, --streams, --message and --timeout must be "
                     "positive")
    args.message = max(4, args.message - args.message % 4)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stunnel, status = (None, "not needed") if args.only == "streams" else \
        stunnel_binary(not args.no_install)
    if args.only != "streams" and stunnel is None:
        _progress(f"stunnel4 not measured: {status}")
    env = environment(stunnel)
    results: dict[str, Any] = {"stunnel_status": status}
    kinds = ("hkx",) if args.no_tls else ("hkx", "tls")
    # psk: 4 keys per HKX/1 handshake, each side; warm-ups and spares on top
    handshakes = (args.repeats + 4) + (args.streams + 4)
    with tempfile.TemporaryDirectory(prefix="hkx-forward-") as tmp:
        base = Path(tmp)
        _progress("making site-a and site-b")
        sites = make_sites(base, PSK_KEYS * handshakes + 64)
        if args.only in (None, "throughput"):
            sink = SinkService()
            pairs: dict[str, Pair] = {}
            try:
                for kind in kinds:
                    pairs[kind] = hkx_pair(sites, sink.port, tls=kind == "tls",
                                           max_connections=16, timeout=args.timeout)
                if stunnel is not None:
                    files = base / "stunnel"
                    files.mkdir()
                    tls_files(files, server="localhost", clients=["client"])
                    pairs["stunnel"] = stunnel_pair(stunnel, files, sink.port)
                pairs["direct"] = Pair("direct", None, None, sink.port)
                _progress(f"throughput: {args.repeats} x {args.megabytes} MiB of each of "
                          f"{', '.join(pairs)}")
                results["throughput"] = run_throughput(pairs, args.megabytes, args.repeats,
                                                       args.profile)
            finally:
                for pair in pairs.values():
                    pair.stop()
                sink.close()
        if args.only in (None, "streams"):
            results["streams"] = []
            for kind in kinds:
                _progress(f"streams: {args.streams} concurrent, {kind}")
                results["streams"].append(run_streams(kind, sites, args.streams,
                                                      args.message, args.timeout))
    env["load_average_after"] = os.getloadavg()
    if args.json:
        results["goals"] = [{"met": met, "goal": text} for met, text in goals(results)]
        json.dump({"environment": env, **results}, sys.stdout, indent=1)
        print()
    else:
        report(results, env)
    return 1 if any(run["error_count"] for run in results.get("streams", [])) else 0


if __name__ == "__main__":
    raise SystemExit(main())
