"""KME throughput: ETSI GS QKD 014 requests per second over HTTPS with mutual TLS.

Two KMEs (sites A and B) run in this process, each a :class:`KMEServer` on its own
event loop (:class:`BackgroundKME`), on loopback, over key stores of the two sites
filled with the same keys (all of them to be taken at A).  The SAEs are
:class:`KMEClient` objects (one per SAE, shared by the client threads, as the client
allows) with certificates from a throw-away CA made here with cryptography's x509
(ECDSA P-256).  Every run makes fresh stores and fresh KMEs and times, with 1 and
with 8 client threads:

* enc_keys: ``get_keys("sae-b", 1)`` at A by SAE sae-a (one key per request);
* dec_keys: ``get_keys_with_ids("sae-a", [key_id])`` at B by SAE sae-b, for the keys
  the enc_keys phase took (their material is checked against what A delivered);
* status: ``status("sae-b")`` at A by sae-a;
* status keep-alive (a diagnostic, not the client): the same status request sent
  over one kept-alive ``http.client`` connection per thread, with sae-a's
  certificate, to show what the TLS handshake per request costs.

KMEClient opens a new HTTPS connection for every request (``http.client`` connection
made and closed in ``KMEClient._exchange``), so each request pays a TCP connect and a
full mutual-TLS handshake: no keep-alive and no session resumption.  The bench does
not take that on trust: it counts the handshakes each KME's TLS context completed
(``SSLContext.session_stats()``) and prints handshakes per request and resumptions.

Stores: ``memory`` (MemoryKeyStore: the floor, HTTP + TLS + the KME's Python) and
``sqlite`` (SQLiteKeyStore as shipped: WAL, ``synchronous=FULL``, ``secure_delete``;
one file per site in ``--dir``, default a temporary directory).  Each figure is the
median of ``--repeats`` runs; the repeats are interleaved over the configurations.
Clients and servers share one process (and its GIL) on the same machine, so the
figures are what one Python process can push through both ends, not a server's
ceiling.

    PYTHONPATH=. python bench/kme.py [--requests 300] [--repeats 5] [--threads 1,8]
                                     [--only memory,sqlite] [--dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import ssl
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import cryptography

from hybridkex.keydelivery import DeliveredKey, linked_pools, random_units
from hybridkex.keydelivery.kme import BackgroundKME, KMEServer
from hybridkex.keydelivery.sqlite import SQLiteKeyStore
from hybridkex.keydelivery.store import KeyStore, MemoryKeyStore
from tests.support import KMEFiles

SAE_MAP = {"sae-a": "A", "sae-b": "B"}
OPERATIONS = ("enc_keys", "dec_keys", "status", "status keep-alive")
BACKENDS = ("memory", "sqlite")


# -- a throw-away PKI ---------------------------------------------------------------------


def make_pki(directory: Path) -> KMEFiles:
    """A CA, the KMEs' server certificate (127.0.0.1) and one client certificate per SAE."""
    return KMEFiles.create(directory, SAE_MAP, ca_name="hybridkex bench CA")


# -- timing -------------------------------------------------------------------------------


def in_threads(threads: int, work: Callable[[int], None]) -> float:
    """Run ``work(i)`` in ``threads`` threads started together; the wall time they took."""
    barrier = threading.Barrier(threads + 1)
    failures: list[BaseException] = []

    def body(index: int) -> None:
        barrier.wait()
        try:
            work(index)
        except BaseException as exc:
            failures.append(exc)

    pool = [threading.Thread(target=body, args=(i,), name=f"sae-{i}") for i in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise failures[0]
    return elapsed


def share(items: Sequence[Any], threads: int, index: int) -> Sequence[Any]:
    """Thread ``index``'s share of ``items`` (round robin)."""
    return items[index::threads]


@dataclass
class Sample:
    """One operation in one run: requests/s and the TLS handshakes the KME completed."""

    rate: float
    handshakes: int
    resumed: int
    requests: int


def handshakes(ctx: ssl.SSLContext) -> tuple[int, int]:
    stats = ctx.session_stats()
    return stats["accept_good"], stats["hits"]


def timed(threads: int, requests: int, ctx: ssl.SSLContext,
          work: Callable[[int], None]) -> Sample:
    good0, hits0 = handshakes(ctx)
    elapsed = in_threads(threads, work)
    good1, hits1 = handshakes(ctx)
    return Sample(requests / elapsed, good1 - good0, hits1 - hits0, requests)


# -- one run ------------------------------------------------------------------------------


def open_stores(backend: str, workdir: Path) -> tuple[KeyStore, KeyStore]:
    if backend == "memory":
        return MemoryKeyStore("A"), MemoryKeyStore("B")
    run = workdir / uuid.uuid4().hex
    run.mkdir()
    return SQLiteKeyStore("A", run / "a.db"), SQLiteKeyStore("B", run / "b.db")


def run_once(backend: str, pki: KMEFiles, workdir: Path, threads: int,
             requests: int) -> dict[str, Sample]:
    """Fresh stores holding ``requests`` keys (taken at A), two fresh KMEs, four phases."""
    store_a, store_b = open_stores(backend, workdir)
    try:
        linked_pools("A", "B", random_units("A", "B", requests, 0),
                     store_a=store_a, store_b=store_b)
        ctx_a, ctx_b = pki.server_context(), pki.server_context()
        with (BackgroundKME(KMEServer(store_a, "A", SAE_MAP, ctx_a)) as kme_a,
              BackgroundKME(KMEServer(store_b, "B", SAE_MAP, ctx_b)) as kme_b):
            sae_a, sae_b = pki.client(kme_a.url, "sae-a"), pki.client(kme_b.url, "sae-b")
            slots = list(range(requests))
            taken: list[DeliveredKey | None] = [None] * requests
            fetched: list[DeliveredKey | None] = [None] * requests
            samples: dict[str, Sample] = {}

            def enc(index: int) -> None:
                for slot in share(slots, threads, index):
                    taken[slot] = sae_a.get_keys("sae-b", 1)[0]

            samples["enc_keys"] = timed(threads, requests, ctx_a, enc)
            ids = [k.key_id for k in taken if k is not None]
            assert len(set(ids)) == requests, "enc_keys delivered a key twice"

            def dec(index: int) -> None:
                for slot in share(slots, threads, index):
                    fetched[slot] = sae_b.get_keys_with_ids("sae-a", [ids[slot]])[0]

            samples["dec_keys"] = timed(threads, requests, ctx_b, dec)
            assert [(k.key_id, k.key) for k in taken if k is not None] == [
                (k.key_id, k.key) for k in fetched if k is not None], "A and B disagree"

            def status(index: int) -> None:
                for _ in share(slots, threads, index):
                    assert sae_a.status("sae-b").slave_sae_id == "sae-b"

            samples["status"] = timed(threads, requests, ctx_a, status)

            raw_ctx = pki.ssl_context("sae-a")

            def status_keepalive(index: int) -> None:
                conn = http.client.HTTPSConnection("127.0.0.1", kme_a.port, timeout=10.0,
                                                   context=raw_ctx)
                try:
                    for _ in share(slots, threads, index):
                        conn.request("GET", "/api/v1/keys/sae-b/status",
                                     headers={"Accept": "application/json"})
                        response = conn.getresponse()
                        body = response.read()
                        assert response.status == 200 and b'"slave_SAE_ID"' in body
                finally:
                    conn.close()

            samples["status keep-alive"] = timed(threads, requests, ctx_a, status_keepalive)
            return samples
    finally:
        store_a.close()
        store_b.close()


# -- reporting ----------------------------------------------------------------------------


@dataclass
class Result:
    backend: str
    operation: str
    threads: int
    samples: list[Sample] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(s.rate for s in self.samples)

    @property
    def handshakes_per_request(self) -> float:
        return (sum(s.handshakes for s in self.samples)
                / sum(s.requests for s in self.samples))

    @property
    def resumed(self) -> int:
        return sum(s.resumed for s in self.samples)

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend, "operation": self.operation, "threads": self.threads,
            "requests_per_s": round(self.rate, 1),
            "ms_per_request_per_thread": round(1e3 * self.threads / self.rate, 3),
            "runs_requests_per_s": [round(s.rate, 1) for s in self.samples],
            "tls_handshakes_per_request": round(self.handshakes_per_request, 4),
            "tls_resumptions": self.resumed,
        }


def tls_probe(pki: KMEFiles, port: int) -> str:
    """The protocol and cipher a client with sae-a's certificate negotiates."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10.0,
                                       context=pki.ssl_context("sae-a"))
    try:
        conn.connect()
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


def table(results: Sequence[Result]) -> str:
    header = ("store", "operation", "threads", "req/s", "ms/req", "TLS hs/req", "runs (req/s)")
    rows = [header] + [
        (r.backend, r.operation, str(r.threads), f"{r.rate:,.0f}",
         f"{1e3 * r.threads / r.rate:.2f}", f"{r.handshakes_per_request:.2f}",
         " ".join(f"{s.rate:.0f}" for s in r.samples))
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [c.ljust(w) if i < 2 else c.rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300,
                        help="requests per operation per run (default 300)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="runs; the median is shown (default 5)")
    parser.add_argument("--threads", default="1,8", help="client thread counts (default 1,8)")
    parser.add_argument("--only", default=",".join(BACKENDS),
                        help="stores to run (default memory,sqlite)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the SQLite files go (default: a temporary directory)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    try:
        args.thread_counts = [int(t) for t in args.threads.split(",") if t]
    except ValueError:
        parser.error("--threads takes comma-separated integers")
    args.backends = [b for b in args.only.split(",") if b]
    if unknown := set(args.backends) - set(BACKENDS):
        parser.error(f"unknown store(s): {', '.join(sorted(unknown))}")
    if (args.requests < 1 or args.repeats < 1 or not args.thread_counts
            or min(args.thread_counts) < 1 or not args.backends):
        parser.error("--requests, --repeats and every thread count must be at least 1")
    if args.requests > 1_000_000:
        parser.error("--requests must be at most 1000000 (the KME's max_key_count)")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    configs = [(b, t) for b in args.backends for t in args.thread_counts]
    results = {(b, op, t): Result(b, op, t) for b, t in configs for op in OPERATIONS}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hkx-kme-bench-", dir=args.dir) as tmp:
        workdir = Path(tmp)
        pki_dir = workdir / "pki"
        pki_dir.mkdir()
        pki = make_pki(pki_dir)
        with BackgroundKME(KMEServer(MemoryKeyStore("A"), "A", SAE_MAP,
                                     pki.server_context())) as probe:
            tls = tls_probe(pki, probe.port)
        env = environment(tls)
        if not args.json:
            print(f"Python {env['python']}, {env['openssl']}, aiohttp {env['aiohttp']}, "
                  f"nproc {env['nproc']}, {env['machine']}; {tls}, ECDSA P-256 certificates",
                  flush=True)
            print(f"{args.requests} requests per operation per run, 1 key each, median of "
                  f"{args.repeats} runs; clients and both KMEs in this process", flush=True)
        for backend in args.backends:  # warm up (imports, first connections); not timed
            run_once(backend, pki, workdir, 1, min(args.requests, 20))
        for repeat in range(args.repeats):
            for backend, threads in configs:
                print(f"[{repeat + 1}/{args.repeats}] {backend}, {threads} thread(s)",
                      file=sys.stderr, flush=True)
                for op, sample in run_once(backend, pki, workdir, threads,
                                           args.requests).items():
                    results[backend, op, threads].samples.append(sample)
    elapsed = time.perf_counter() - started
    ordered = [results[b, op, t] for b in args.backends for op in OPERATIONS
               for t in args.thread_counts]
    per_request = [r.handshakes_per_request for r in ordered if r.operation != "status keep-alive"]
    new_connection = bool(per_request) and min(per_request) >= 0.99
    if args.json:
        print(json.dumps({
            "environment": env,
            "settings": {"requests": args.requests, "repeats": args.repeats,
                         "threads": args.thread_counts, "stores": args.backends,
                         "keys_per_request": 1, "elapsed_seconds": round(elapsed, 1)},
            "kmeclient_new_tls_connection_per_request": new_connection,
            "results": [r.as_dict() for r in ordered],
        }, indent=2))
        return 0
    print()
    print(table(ordered))
    print()
    print("ms/req = threads / (req/s): the time one request takes as a thread sees it.")
    print("TLS hs/req = full TLS handshakes the KME completed per request "
          f"(session resumptions: {sum(r.resumed for r in ordered)}).")
    if new_connection:
        print("KMEClient opens a new TLS connection (TCP connect + full mutual-TLS handshake) "
              "for every request; 'status keep-alive' is the same request over one kept-alive "
              "connection per thread (http.client directly, not KMEClient), for comparison.")
    print(f"({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
