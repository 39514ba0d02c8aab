"""Exactly once through SIGKILL: two KMEs killed again and again under traffic.

A master SAE takes keys at KME A (enc_keys, random sizes), the slave SAE fetches them
at KME B (dec_keys), and a third SAE at site B keeps asking for them too.  Meanwhile
KME A, KME B or both are SIGKILLed at random moments (during enc_keys, during the
sync that reserves keys ahead, during dec_keys) and restarted from the zygote in
tests/kme_worker.py, ``HYBRIDKEX_KME_KILLS`` times (default 200).  Afterwards:

* no key ID came back twice from enc_keys, and none twice from dec_keys;
* the third SAE never got a key;
* every key enc_keys returned is bound at B (its reservation is in B's store):
  delivered, or still deliverable to the slave, which then fetches it;
* every key the slave fetched is the master's, bit for bit.

A second test runs two KME processes per site on one PostgreSQL store.
``HYBRIDKEX_CRASH_SEED`` replays a campaign.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hybridkex.keydelivery.errors import KeyNotAvailable, KeySourceError
from hybridkex.keydelivery.kme.client import KMEAuthenticationError, KMEClient
from hybridkex.keydelivery.sqlite import SQLiteKeyStore
from hybridkex.keydelivery.store import KeyStore
from tests.keystore_worker import drop_schema, new_schema, postgres_dsn
from tests.test_kme import PKI, REPO, SAE_MAP, _fill, _post, free_ports
from tests.test_kme import pki as pki  # the module-scoped certificates fixture

KILLS = int(os.environ.get("HYBRIDKEX_KME_KILLS", "200"))
SIZES = (64, 256, 512, 1024)


class Zygote:
    """tests/kme_worker.py: forks KME processes; ``spawn`` waits until one listens."""

    def __init__(self, pki: PKI, workdir: Path, store_a: str, store_b: str) -> None:
        sae_map = workdir / "saes.json"
        sae_map.write_text(json.dumps(SAE_MAP))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.kme_worker", str(pki.dir), str(sae_map),
             store_a, store_b], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        self.ready: queue.Queue[tuple[str, int, int]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            word, site, port, pid = line.split()
            if word == "ready":
                self.ready.put((site, int(port), int(pid)))

    def spawn(self, site: str, port: int, peer_port: int, ahead: int = 3) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{site} {port} {peer_port} {ahead}\n")
        self.proc.stdin.flush()
        got = self.ready.get(timeout=30)
        assert got[:2] == (site, port), got
        return got[2]

    def close(self, pids: list[int]) -> None:
        for pid in pids:
            _kill(pid)
        self.proc.kill()
        self.proc.wait()


def _kill(pid: int) -> None:
    """SIGKILL, and wait until the process is gone (so its port is free again)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.002)


class Slave:
    """A plain dec_keys caller that knows only key IDs (the keys have mixed sizes)."""

    def __init__(self, pki: PKI, url: str, sae: str) -> None:
        self.pki, self.url, self.sae = pki, url, sae

    def get(self, key_ids: list[str]) -> dict[str, bytes]:
        """The keys, or KeyNotAvailable (400), KMEAuthenticationError (401),
        KeySourceError (a KME down or cut off)."""
        try:
            status, body = _post(self.pki, self.url, self.sae, "/api/v1/keys/sae-a/dec_keys",
                                 {"key_IDs": [{"key_ID": k} for k in key_ids]})
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise KeySourceError(type(exc).__name__) from None
        if status == 400:
            raise KeyNotAvailable("400")
        if status == 401:
            raise KMEAuthenticationError("401")
        if status != 200:
            raise KeySourceError(str(status))
        return {k["key_ID"]: base64.b64decode(k["key"]) for k in body["keys"]}


@dataclass
class Ledger:
    """What the SAEs saw.  Only the traffic threads write it."""

    taken: dict[str, bytes] = field(default_factory=dict)
    fetched: dict[str, bytes] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    stolen: list[str] = field(default_factory=list)
    enc_failures: int = 0
    dec_failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _traffic(master: KMEClient, slave: Slave, thief: Slave, ledger: Ledger,
             stop: threading.Event, rng: random.Random) -> None:
    while not stop.is_set():
        size = rng.choice(SIZES)
        try:
            keys = master.get_keys("sae-b", rng.randint(1, 2), size)
        except KeySourceError:
            ledger.enc_failures += 1
            keys = []
        with ledger.lock:
            for k in keys:
                if k.key_id in ledger.taken:
                    ledger.duplicates.append(k.key_id)
                ledger.taken[k.key_id] = k.key
                ledger.pending.append(k.key_id)
            batch = ledger.pending[:3]
        if not batch:
            continue
        try:
            thief.get(batch[:1])
            ledger.stolen += batch[:1]
        except KeySourceError:
            pass  # 401, or a KME down
        try:
            got = slave.get(batch)
        except KeyNotAvailable:
            # one of them B delivered into an answer a kill cut off (all or nothing:
            # the others are still there): ask for each alone
            got = {}
            for key_id in batch:
                try:
                    got.update(slave.get([key_id]))
                except KeyNotAvailable:
                    with ledger.lock:  # set aside; checked against B's store at the end
                        ledger.pending.remove(key_id)
                except KeySourceError:
                    ledger.dec_failures += 1
        except KeySourceError:
            ledger.dec_failures += 1
            continue
        with ledger.lock:
            for key_id, material in got.items():
                if key_id in ledger.fetched:
                    ledger.duplicates.append(key_id)
                ledger.fetched[key_id] = material
            ledger.pending = [k for k in ledger.pending if k not in got]


def _slave_rows(db: Path) -> dict[str, tuple[int, str]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute(
            "SELECT key_id, state, waiting FROM bound_keys WHERE master_side = 0")}


@pytest.fixture
def stores(tmp_path: Path) -> tuple[Path, Path]:
    a_db, b_db = tmp_path / "a.db", tmp_path / "b.db"
    a, b = SQLiteKeyStore("A", a_db), SQLiteKeyStore("B", b_db)
    _fill(a, b, 80_000)
    a.close()
    b.close()
    return a_db, b_db


def test_two_kmes_survive_sigkill_without_a_duplicate_or_an_undeliverable_key(
        pki: PKI, tmp_path: Path, stores: tuple[Path, Path]) -> None:
    seed = int(os.environ.get("HYBRIDKEX_CRASH_SEED") or random.randrange(2**32))
    print(f"KME crash campaign seed: HYBRIDKEX_CRASH_SEED={seed}")
    rng = random.Random(seed)
    a_db, b_db = stores
    port_a, port_b = free_ports(2)
    zygote = Zygote(pki, tmp_path, f"sqlite:///{a_db}", f"sqlite:///{b_db}")
    pids = {"A": zygote.spawn("A", port_a, port_b), "B": zygote.spawn("B", port_b, port_a)}
    ports = {"A": (port_a, port_b), "B": (port_b, port_a)}
    ledger = Ledger()
    stop = threading.Event()
    master = pki.client(f"https://127.0.0.1:{port_a}", "sae-a", timeout=3)
    slave = Slave(pki, f"https://127.0.0.1:{port_b}", "sae-b")
    thief = Slave(pki, f"https://127.0.0.1:{port_b}", "sae-c2")
    worker = threading.Thread(target=_traffic, daemon=True,
                              args=(master, slave, thief, ledger, stop, random.Random(seed + 1)))
    worker.start()
    kills = {"A": 0, "B": 0}
    restarting = 0.0
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.01, 0.15))
            victims = rng.choice((["A"], ["B"], ["A", "B"]))
            for site in victims:
                _kill(pids[site])
                kills[site] += 1
            started = time.monotonic()
            for site in victims:
                pids[site] = zygote.spawn(site, *ports[site])
            restarting += time.monotonic() - started
        stop.set()
        worker.join(timeout=60)
        assert not worker.is_alive()
        # quiet now: the slave fetches every key still pending
        for key_id in list(ledger.pending):
            try:
                ledger.fetched.update(slave.get([key_id]))
            except KeyNotAvailable:
                continue
        with pytest.raises(KMEAuthenticationError):  # a delivered key is still not sae-c2's
            thief.get(list(ledger.fetched)[:1])
    finally:
        stop.set()
        zygote.close(list(pids.values()))

    rows = _slave_rows(b_db)
    undeliverable = [k for k in ledger.taken if k not in rows]
    lost = [k for k in ledger.taken if k not in ledger.fetched]
    print(f"{sum(kills.values())} kills (A {kills['A']}, B {kills['B']}); "
          f"{len(ledger.taken)} keys taken, {len(ledger.fetched)} fetched, {len(lost)} "
          f"delivered by B into an answer a kill cut off; enc_keys failed "
          f"{ledger.enc_failures}x, dec_keys {ledger.dec_failures}x; "
          f"{len(rows)} reservations at B; {restarting:.1f} s spent restarting KMEs")
    assert sum(kills.values()) >= KILLS
    assert len(ledger.taken) > KILLS  # traffic ran between the kills
    assert ledger.duplicates == []
    assert ledger.stolen == []
    assert undeliverable == []
    assert all(ledger.fetched[k] == ledger.taken[k] for k in ledger.fetched)
    # a key not fetched was delivered at B (its answer lost to a kill), never left open
    assert all(rows[k] == (2, "[]") for k in lost)
    assert len(lost) <= 3 * kills["B"]


# -- two KME processes per site on one PostgreSQL store ---------------------------------------


@pytest.fixture
def pg_stores() -> Iterator[tuple[str, str]]:
    dsn = postgres_dsn()
    schema = new_schema(dsn)
    sep = "&" if "?" in dsn else "?"
    url = f"{dsn}{sep}options=-csearch_path%3D{schema}"
    a = _pg(url, "A")
    b = _pg(url, "B")
    _fill(a, b, 4000)
    a.close()
    b.close()
    yield url, url
    drop_schema(dsn, schema)


def _pg(url: str, site: str) -> KeyStore:
    from hybridkex.keydelivery.store import open_store

    return open_store(url, site)


def test_two_kme_processes_per_site_on_one_postgres_store(
        pki: PKI, tmp_path: Path, pg_stores: tuple[str, str]) -> None:
    """A1 and A2 serve site A, B1 and B2 site B, each pair on one PostgreSQL store.
    Masters take at both A processes at once; for every key, the slave asks B1 and B2
    at the same moment: exactly one of them delivers it."""
    ports = free_ports(4)
    zygote = Zygote(pki, tmp_path, *pg_stores)
    pids: list[int] = []
    try:
        pids.append(zygote.spawn("B", ports[2], ports[0]))
        pids.append(zygote.spawn("B", ports[3], ports[0]))
        pids.append(zygote.spawn("A", ports[0], ports[2]))
        pids.append(zygote.spawn("A", ports[1], ports[3]))
        masters = [pki.client(f"https://127.0.0.1:{p}", "sae-a") for p in ports[:2]]
        slaves = [Slave(pki, f"https://127.0.0.1:{p}", "sae-b") for p in ports[2:]]
        taken: dict[str, bytes] = {}
        lock = threading.Lock()

        def take(master: KMEClient) -> None:
            for n in range(40):
                for k in master.get_keys("sae-b", 2, SIZES[n % len(SIZES)]):
                    with lock:
                        assert k.key_id not in taken
                        taken[k.key_id] = k.key

        threads = [threading.Thread(target=take, args=(m,)) for m in masters for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(taken) == 4 * 40 * 2
        wins: dict[str, int] = {}
        wrong: list[str] = []
        barrier = threading.Barrier(2)

        def fetch(slave: Slave, key_id: str) -> None:
            barrier.wait()
            try:
                got = slave.get([key_id])
            except KeyNotAvailable:
                return
            with lock:
                if got != {key_id: taken[key_id]}:
                    wrong.append(key_id)
                wins[key_id] = wins.get(key_id, 0) + 1

        for key_id in taken:
            pair = [threading.Thread(target=fetch, args=(s, key_id)) for s in slaves]
            for t in pair:
                t.start()
            for t in pair:
                t.join()
        assert wins == dict.fromkeys(taken, 1) and wrong == []
    finally:
        zygote.close(pids)
