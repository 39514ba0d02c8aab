"""Crash safety of the key stores: a worker killed with SIGKILL at random moments.

The worker (``python -m tests.keystore_worker ...``, run from the repository root)
opens both sites of one link, A and B, and loops: pick a direction X -> Y, take
keys at X, fetch the same IDs at Y, check the bits agree, and go on.  Around each
step it appends a record to a log (one ``write`` per record, then ``fsync``).  A
SIGKILL can cut a ``write`` short where it crosses a page of the file, so every
record ends in `` $`` and every run starts on a fresh line: a record without its
end mark is torn, was the run's last, and is read as never written:

    S <pid>                      a run starts
    TB <X> <units>               about to take <units> 256-bit units at X
    T <X> <size> <key>,<key>...  take returned; <key> = unit IDs joined by '+', ':',
                                 and the first 8 bytes of SHA-256 of the key, in hex
    F <X> <key>,<key>...         fetch of exactly those keys at Y returned
    E                            take found the pool exhausted (nothing delivered)
    BAD <why>                    the fetched bits differ from the taken ones

:func:`run_campaign` deposits keys in both directions, then starts the worker,
waits until it is ready, lets it run for a random time and kills it with SIGKILL,
again and again.  :func:`check_campaign` then holds the log and the stores' rows
to the invariants listed in its docstring.  tests/test_keystore_crash.py runs
campaigns for SQLite and PostgreSQL; bench/keystore_crash.py runs long ones.

Also here: where the PostgreSQL tests find their server (``HYBRIDKEX_TEST_POSTGRES``)
and a fresh schema per test.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import select
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hybridkex.keydelivery import UNIT_BITS, UNIT_BYTES, StoredKey, linked_pools, new_key_id
from hybridkex.keydelivery.errors import KeysExhausted
from hybridkex.keydelivery.sqlite import SQLiteKeyStore
from hybridkex.keydelivery.store import KeyStore

REPO = Path(__file__).resolve().parent.parent
SITES = ("A", "B")
RECORD_END = "$"  # the last field of every complete log record
POSTGRES_ENV = "HYBRIDKEX_TEST_POSTGRES"
POSTGRES_HELP = (
    f"{POSTGRES_ENV} is not set: the PostgreSQL key store tests need a server; "
    "`source tests/postgres.sh` starts a throw-away one (tests/run.sh does)"
)


# -- the PostgreSQL test server ---------------------------------------------------------

def postgres_dsn() -> str:
    """The test server's DSN; skip without one, but fail under CI (``CI`` set)."""
    import pytest

    dsn = os.environ.get(POSTGRES_ENV)
    if not dsn:
        if os.environ.get("CI"):
            pytest.fail(POSTGRES_HELP)
        pytest.skip(POSTGRES_HELP)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        message = "psycopg is not installed: pip install 'hybridkex[postgres]'"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return dsn


def new_schema(dsn: str) -> str:
    """Create and return an empty schema with a fresh name."""
    import psycopg
    from psycopg import sql

    name = f"hkx_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    return name


def drop_schema(dsn: str, name: str) -> None:
    """Drop a test schema; if a failed test left a session holding locks in it, leave
    it (the test cluster is thrown away) rather than wait."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '5s'")
        try:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(name)))
        except psycopg.errors.LockNotAvailable:
            print(f"schema {name} is still in use; left in place")


# -- where a campaign's stores live ---------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """The two sites' stores: SQLite files in ``directory``, or one PostgreSQL schema."""

    backend: str  # "sqlite" or "postgresql"
    directory: Path
    dsn: str = ""
    schema: str = ""

    def application_name(self) -> str:
        return f"hkx-crash-{self.schema}"[:63]

    def open(self, site: str) -> KeyStore:
        if self.backend == "sqlite":
            return SQLiteKeyStore(site, self.directory / f"{site}.db")
        from hybridkex.keydelivery.postgres import PostgresKeyStore

        return PostgresKeyStore(site, self.dsn, schema=self.schema,
                                application_name=self.application_name())

    def worker_args(self) -> list[str]:
        args = ["--backend", self.backend, "--dir", str(self.directory)]
        if self.backend == "postgresql":
            args += ["--dsn", self.dsn, "--schema", self.schema]
        return args

    def rows(self, site: str) -> dict[str, Row]:
        """Every unit ``site`` holds, read straight from the database."""
        if self.backend == "sqlite":
            db = sqlite3.connect(self.directory / f"{site}.db")
            try:
                result = db.execute(
                    "SELECT key_id, initiator, material, delivered_at IS NOT NULL "
                    "FROM qkd_keys ORDER BY seq").fetchall()
            finally:
                db.close()
            peer = other(site)
            return {r[0]: Row(site if r[1] else peer, None if r[2] is None else bytes(r[2]),
                              bool(r[3])) for r in result}
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            result = conn.execute(
                sql.SQL("SELECT key_id, initiator, material, delivered_at IS NOT NULL "
                        "FROM {} WHERE site_id = %s ORDER BY seq").format(
                            sql.Identifier(self.schema, "hybridkex_qkd_keys")),
                (site,)).fetchall()
        peer = other(site)
        return {str(r[0]): Row(site if r[1] else peer,
                               None if r[2] is None else bytes(r[2]), bool(r[3]))
                for r in result}

    def wait_for_disconnect(self, timeout_s: float = 10.0) -> None:
        """Until the server has noticed the killed worker and ended its session (its
        transaction rolled back, its locks released)."""
        if self.backend != "postgresql":
            return
        import psycopg

        deadline = time.monotonic() + timeout_s
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while True:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                    (self.application_name(),)).fetchone()
                if row is not None and row[0] == 0:
                    return
                if time.monotonic() > deadline:
                    raise AssertionError("the killed worker's session did not end")
                time.sleep(0.002)


@dataclass(frozen=True)
class Row:
    initiator: str
    material: bytes | None
    delivered_at_set: bool


def other(site: str) -> str:
    return "B" if site == "A" else "A"


def digest(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


# -- the worker ---------------------------------------------------------------------------

class Log:
    """Append-only, one write per record, fsync'd; each record ends in ``RECORD_END``."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._started = False

    def write(self, *fields: object) -> None:
        # The first record of a run starts with a newline, ending a line the previous
        # run's SIGKILL may have torn.
        lead = "" if self._started else "\n"
        self._started = True
        line = lead + " ".join(str(f) for f in (*fields, RECORD_END)) + "\n"
        os.write(self._fd, line.encode())
        os.fsync(self._fd)


def worker(target: Target, log_path: Path, seed: int) -> int:
    stores = {site: target.open(site) for site in SITES}
    log = Log(log_path)
    log.write("S", os.getpid())
    print("ready", flush=True)
    rng = random.Random(seed)
    while True:
        x = rng.choice(SITES)
        y = other(x)
        size = rng.choice((128, 256, 512))
        count = rng.randint(1, 4)
        log.write("TB", x, count * -(-size // UNIT_BITS))
        try:
            keys = stores[x].take(y, count, size)
        except KeysExhausted:
            log.write("E")
            return 0
        groups = ",".join("+".join(k.ids) for k in keys)
        log.write("T", x, size, ",".join(f"{'+'.join(k.ids)}:{digest(k.key)}" for k in keys))
        fetched = stores[y].fetch(x, [k.ids for k in keys], size)
        if [k.key for k in fetched] != [k.key for k in keys]:
            log.write("BAD", "fetched bits differ from taken bits")
            return 3
        log.write("F", x, groups)


# -- the campaign ---------------------------------------------------------------------------

@dataclass
class Deposit:
    """What was deposited: unit IDs per initiator in deposit order, and their bits."""

    order: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SITES})
    material: dict[str, bytes] = field(default_factory=dict)

    def add(self, target: Target, units_per_direction: int, rng: random.Random) -> None:
        """Units the two sites initiate in turn, with material from the campaign's seeded
        ``rng``, deposited into both sites' stores by ``linked_pools``."""
        batch = [StoredKey(new_key_id(), rng.randbytes(UNIT_BYTES), SITES[i % 2])
                 for i in range(2 * units_per_direction)]
        a, b = target.open(SITES[0]), target.open(SITES[1])
        try:
            linked_pools(SITES[0], SITES[1], batch, store_a=a, store_b=b)
        finally:
            a.close()
            b.close()
        for k in batch:
            self.order[k.initiator].append(k.key_id)
            self.material[k.key_id] = k.key


@dataclass
class Report:
    backend: str
    runs: int = 0
    kills: int = 0
    exhausted: int = 0
    units_deposited: int = 0
    takes_logged: int = 0
    fetches_logged: int = 0
    killed_in_take: int = 0        # runs that ended with a take in flight (TB last)
    take_committed_unlogged: int = 0  # ... of which the take had committed: orphans
    killed_in_fetch: int = 0       # runs that ended with a fetch in flight (T last)
    fetch_committed_unlogged: int = 0
    drained_units: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.backend}: {self.kills} kills in {self.runs} runs, "
                f"{self.seconds:.1f} s; {self.takes_logged} takes and {self.fetches_logged} "
                f"fetches logged; killed with a take in flight {self.killed_in_take} times "
                f"({self.take_committed_unlogged} had committed: keys lost, never reused), "
                f"with a fetch in flight {self.killed_in_fetch} times "
                f"({self.fetch_committed_unlogged} had committed); "
                f"{self.units_deposited} units deposited, {self.drained_units} drained at the end")


def _read_ready(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline() if ready else b""
    if line.strip() != b"ready":
        proc.kill()
        proc.wait()
        raise AssertionError(f"worker did not start (exit {proc.returncode}, said {line!r})")


def run_campaign(target: Target, kills: int, *, max_run_s: float = 0.05,
                 units_per_direction: int = 3000, seed: int | None = None,
                 log: Path | None = None, progress: bool = False) -> Report:
    """Kill the worker ``kills`` times at random moments, then check everything."""
    rng = random.Random(seed)
    log_path = log or target.directory / "crash.log"
    report = Report(target.backend)
    deposit = Deposit()
    deposit.add(target, units_per_direction, rng)
    started = time.monotonic()
    stderr_path = target.directory / "worker.stderr"
    while report.kills < kills:
        with stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.keystore_worker", *target.worker_args(),
                 "--log", str(log_path), "--seed", str(rng.getrandbits(32))],
                cwd=REPO, stdout=subprocess.PIPE, stderr=stderr)
            report.runs += 1
            try:
                _read_ready(proc, 30.0)
                time.sleep(rng.uniform(0, max_run_s))
                proc.kill()  # SIGKILL
                code = proc.wait()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                assert proc.stdout is not None
                proc.stdout.close()
        if code == -9:
            report.kills += 1
            target.wait_for_disconnect()
        elif code == 0:  # the pool ran dry: deposit more
            report.exhausted += 1
            deposit.add(target, units_per_direction, rng)
        else:
            raise AssertionError(
                f"worker failed with exit {code}: {stderr_path.read_text()[-2000:]}")
        if progress and report.kills % 50 == 0 and code == -9:
            print(f"  {report.kills} kills", flush=True)
    report.units_deposited = len(deposit.material)
    check_campaign(target, deposit, log_path, report)
    report.seconds = time.monotonic() - started
    return report


# -- the invariants -------------------------------------------------------------------------

@dataclass
class _Take:
    direction: str
    size: int
    keys: list[tuple[str, ...]]
    digests: list[str]

    @property
    def ids(self) -> list[str]:
        return [i for k in self.keys for i in k]


def parse_log(log_path: Path) -> list[list[list[str]]]:
    """The log as runs of records.

    A torn record (killed mid-write: no end mark) must be the last of its run and is
    dropped, so the run reads as killed just before it, which is what happened as far
    as the log can tell.
    """
    runs: list[list[list[str]]] = []
    torn = False
    for line in log_path.read_text().split("\n"):
        if not line:
            continue
        record = line.split(" ")
        if record[-1] != RECORD_END:
            torn = True
            continue
        record.pop()
        if record[0] == "S":
            runs.append([])
            torn = False
        else:
            assert runs, "a record before the first S"
            assert not torn, "a record after a torn one in the same run"
            runs[-1].append(record)
    return runs


def _subset_sums(values: Sequence[int]) -> set[int]:
    sums = {0}
    for v in values:
        sums |= {s + v for s in sums}
    return sums


def check_campaign(target: Target, deposit: Deposit, log_path: Path, report: Report) -> None:
    """Hold the log and the stores to the crash-safety invariants:

    1. No unit ID is delivered twice: it appears in at most one logged take and at
       most one logged fetch, and the fetched bits always equal the taken ones
       (the worker compares them; a BAD record fails).  Every logged take's digests
       match the deposited bits.
    2. Takes are all or nothing and in deposit order: replaying the log, each
       direction's logged takes are consecutive runs of its deposit order, except
       that a run killed with a take in flight (last record TB) may have committed
       it without logging it; the units skipped before the next logged take must
       be a sum of such in-flight takes' sizes (all of a take, or none of it).
       The units the initiator holds as delivered are exactly a prefix of its
       deposit order: the logged takes plus such whole in-flight takes.
    3. Fetches are all or nothing: the responder's delivered units of a direction
       are the logged fetches plus, for each run killed with a fetch in flight
       (last record T), either all of that fetch's units or none of them; and they
       are a subset of what the initiator delivered (B never delivers what A did
       not).  A logged take without a logged fetch is always such an in-flight one.
    4. Every row: material NULL exactly when delivered_at is set; an available
       unit's bits are the deposited bits; delivered + available = deposited, at
       both sites, also as ``status()`` counts them.
    5. Draining: every unit still available is taken at its initiator and fetched
       at the responder, and every unit the initiator delivered but the responder
       did not (lost to a kill) is fetched there, with the deposited bits.  Then
       both sites hold every unit as delivered and nothing else.
    """
    runs = parse_log(log_path)
    taken_ids: set[str] = set()
    fetched_ids: set[str] = set()
    # per direction: replay pointer into the deposit order, pending in-flight takes
    pointer = dict.fromkeys(SITES, 0)
    pending: dict[str, list[int]] = {s: [] for s in SITES}
    in_flight_fetches: list[_Take] = []

    for run in runs:
        last_take: _Take | None = None
        for index, record in enumerate(run):
            kind = record[0]
            is_last = index == len(run) - 1
            assert kind != "BAD", f"worker reported: {' '.join(record)}"
            if kind == "TB":
                if is_last:
                    report.killed_in_take += 1
                    pending[record[1]].append(int(record[2]))
            elif kind == "E":
                pass
            elif kind == "T":
                x, size = record[1], int(record[2])
                keys: list[tuple[str, ...]] = []
                digests: list[str] = []
                for entry in record[3].split(","):
                    ids, dig = entry.split(":")
                    keys.append(tuple(ids.split("+")))
                    digests.append(dig)
                take = _Take(x, size, keys, digests)
                ids_list = take.ids
                # 1: never twice, and the deposited bits
                assert not taken_ids.intersection(ids_list), "a unit was taken twice"
                assert len(set(ids_list)) == len(ids_list)
                taken_ids.update(ids_list)
                for unit_ids, dig in zip(keys, digests, strict=True):
                    bits = b"".join(deposit.material[i] for i in unit_ids)[: size // 8]
                    assert digest(bits) == dig, "a taken key's bits differ from the deposit"
                # 2: consecutive in deposit order, after whole in-flight takes
                order = deposit.order[x]
                start = order.index(ids_list[0])
                skipped = start - pointer[x]
                assert skipped in _subset_sums(pending[x]), (
                    f"{skipped} units skipped before a take in direction {x}, "
                    f"in-flight takes were {pending[x]}")
                if skipped:
                    report.take_committed_unlogged += 1
                pending[x] = []
                assert order[start:start + len(ids_list)] == ids_list, \
                    "a take was not the oldest available units in order"
                pointer[x] = start + len(ids_list)
                report.takes_logged += 1
                last_take = take
                if is_last:
                    report.killed_in_fetch += 1
                    in_flight_fetches.append(take)
            elif kind == "F":
                assert last_take is not None and run[index - 1][0] == "T"
                ids_list = [i for key in record[2].split(",") for i in key.split("+")]
                assert ids_list == last_take.ids and record[1] == last_take.direction
                assert not fetched_ids.intersection(ids_list), "a unit was fetched twice"
                fetched_ids.update(ids_list)
                report.fetches_logged += 1
                last_take = None
            else:
                raise AssertionError(f"unknown log record {record!r}")
            if kind in ("TB", "T") and not is_last:
                # a take or fetch that is not the last record finished (or failed
                # cleanly); the next record must say so
                follower = run[index + 1][0]
                assert follower in (("T", "E") if kind == "TB" else ("F",)), (
                    f"{kind} followed by {follower}")

    rows = {site: target.rows(site) for site in SITES}
    for site in SITES:
        assert set(rows[site]) == set(deposit.material), f"{site} holds other units"
    for x in SITES:
        y = other(x)
        order = deposit.order[x]
        # 2: the initiator's delivered units are a prefix: logged takes + whole pending
        delivered_x = [i for i in order if rows[x][i].material is None]
        n = len(delivered_x)
        assert delivered_x == order[:n], f"{x}'s delivered units are not a prefix"
        assert n - pointer[x] in _subset_sums(pending[x]), (
            f"{x} delivered {n - pointer[x]} units past the log; in flight: {pending[x]}")
        if n > pointer[x]:
            report.take_committed_unlogged += 1
        # 3: the responder's delivered units
        delivered_y = {i for i in order if rows[y][i].material is None}
        assert delivered_y <= set(delivered_x), f"{y} delivered a unit {x} did not"
        logged_f = {i for i in fetched_ids if i in rows[x] and rows[x][i].initiator == x}
        assert logged_f <= delivered_y
        unexplained = delivered_y - logged_f
        for take in (t for t in in_flight_fetches if t.direction == x):
            got = unexplained.intersection(take.ids)
            assert not got or got == set(take.ids), "a fetch was delivered in part"
            if got:
                report.fetch_committed_unlogged += 1
            unexplained -= got
        assert not unexplained, f"{y} delivered units no logged or in-flight fetch names"

    # 4: every row
    for site in SITES:
        for key_id, row in rows[site].items():
            assert (row.material is None) == row.delivered_at_set
            if row.material is not None:
                assert row.material == deposit.material[key_id]
    stores = {site: target.open(site) for site in SITES}
    try:
        for site in SITES:
            status = stores[site].status(other(site))
            delivered = sum(1 for r in rows[site].values() if r.material is None)
            assert status.delivered == delivered
            assert (status.available_to_take + status.available_to_fetch + status.delivered
                    == len(deposit.material))
        # 5: drain
        for x in SITES:
            y = other(x)
            lost = [i for i in deposit.order[x]
                    if rows[x][i].material is None and rows[y][i].material is not None]
            for chunk in _chunks(lost, 1024):
                recovered = stores[y].fetch(x, chunk)
                assert [k.key for k in recovered] == [deposit.material[i] for i in chunk]
                report.drained_units += len(chunk)
            while (left := stores[x].status(y).available_to_take) > 0:
                drained = stores[x].take(y, min(left, 1024))
                assert [k.key for k in drained] == [deposit.material[k.key_id] for k in drained]
                again = stores[y].fetch(x, [k.key_id for k in drained])
                assert [k.key for k in again] == [k.key for k in drained]
                report.drained_units += len(drained)
        for site in SITES:
            status = stores[site].status(other(site))
            assert (status.available_to_take, status.available_to_fetch) == (0, 0)
            assert status.delivered == len(deposit.material)
        for site in SITES:
            assert all(r.material is None and r.delivered_at_set
                       for r in target.rows(site).values())
    finally:
        for store in stores.values():
            store.close()


def _chunks(items: list[str], n: int) -> list[list[str]]:
    return [items[i:i + n] for i in range(0, len(items), n)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="key store crash-test worker")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--dsn", default="")
    parser.add_argument("--schema", default="")
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    target = Target(args.backend, args.dir, args.dsn, args.schema)
    return worker(target, args.log, args.seed)


__all__ = ["Report", "Target", "check_campaign", "drop_schema", "new_schema", "postgres_dsn",
           "run_campaign", "worker"]

if __name__ == "__main__":
    raise SystemExit(main())
