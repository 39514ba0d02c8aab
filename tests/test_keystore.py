"""Key store: the same keys under the same IDs on both sites, each delivered once."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hybridkex.errors import BackendUnavailable, InvalidParameter
from hybridkex.keydelivery import linked_pools
from hybridkex.keydelivery.errors import KeyNotAvailable, KeysExhausted
from hybridkex.keydelivery.keys import StoredKey, new_key_id
from hybridkex.keydelivery.sqlite import SQLiteKeyStore
from hybridkex.keydelivery.store import KeyStore, MemoryKeyStore, StoreStatus, open_store
from tests.keystore_worker import drop_schema, new_schema, postgres_dsn
from tests.support import alternating_units

try:
    import psycopg
    from psycopg import sql
except ImportError:  # the PostgreSQL tests skip (fail under CI) in postgres_dsn()
    pass

Factory = Callable[[str], KeyStore]


@pytest.fixture
def pg_schema() -> Iterator[tuple[str, str]]:
    """(DSN, a fresh empty schema) on the test server; skips without one (fails under CI)."""
    dsn = postgres_dsn()
    schema = new_schema(dsn)
    yield dsn, schema
    drop_schema(dsn, schema)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    opened: list[KeyStore] = []
    dsn = schema = ""
    if request.param == "postgresql":
        # both sites in one schema (as they may share a database), a fresh one per test
        dsn, schema = request.getfixturevalue("pg_schema")

    def factory(site: str) -> KeyStore:
        store: KeyStore
        if request.param == "memory":
            store = MemoryKeyStore(site)
        elif request.param == "sqlite":
            store = SQLiteKeyStore(site, tmp_path / f"{site}.db")
        else:
            from hybridkex.keydelivery.postgres import PostgresKeyStore

            store = PostgresKeyStore(site, dsn, schema=schema)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


def _link(make_store: Factory, n: int = 20) -> tuple[KeyStore, KeyStore, list[StoredKey]]:
    """Two sites holding the same n keys, alternately assigned to each as initiator."""
    pools = linked_pools("A", "B", alternating_units("A", "B", n // 2),
                         store_a=make_store("A"), store_b=make_store("B"))
    return pools.store_a, pools.store_b, list(pools.units)


def test_take_then_fetch_gives_the_same_key(make_store: Factory) -> None:
    a, b, keys = _link(make_store)
    taken = a.take("B", 3)
    assert [k.key_id for k in taken] == [keys[0].key_id, keys[2].key_id, keys[4].key_id]
    fetched = b.fetch("A", [k.key_id for k in taken])
    assert [k.key for k in fetched] == [k.key for k in taken] == [
        keys[0].key, keys[2].key, keys[4].key]


def test_a_key_is_delivered_once(make_store: Factory) -> None:
    a, b, _ = _link(make_store)
    (key,) = a.take("B")
    b.fetch("A", [key.key_id])
    with pytest.raises(KeyNotAvailable):
        b.fetch("A", [key.key_id])
    assert key.key_id not in [k.key_id for k in a.take("B", 9)]


def test_a_site_cannot_fetch_keys_it_is_meant_to_take(make_store: Factory) -> None:
    a, _, keys = _link(make_store)
    with pytest.raises(KeyNotAvailable):
        a.fetch("B", [keys[0].key_id])  # keys[0] is A's to take
    assert a.status("B").available_to_take == 10


def test_failed_fetch_delivers_nothing(make_store: Factory) -> None:
    a, b, _ = _link(make_store)
    good = a.take("B", 2)
    with pytest.raises(KeyNotAvailable):
        b.fetch("A", [good[0].key_id, new_key_id()])
    with pytest.raises(KeyNotAvailable):
        b.fetch("A", [good[0].key_id, "not-a-uuid"])
    with pytest.raises(KeyNotAvailable):
        b.fetch("A", [good[0].key_id, good[0].key_id])
    # still there, all of it
    assert [k.key for k in b.fetch("A", [k.key_id for k in good])] == [k.key for k in good]


def test_exhausted_pool_delivers_nothing(make_store: Factory) -> None:
    a, _, _ = _link(make_store, n=4)
    with pytest.raises(KeysExhausted):
        a.take("B", 3)
    assert a.status("B").available_to_take == 2
    assert len(a.take("B", 2)) == 2
    with pytest.raises(KeysExhausted):
        a.take("B")


@pytest.mark.parametrize("size_bits", [8, 128, 256, 264, 512, 1024])
def test_other_sizes_are_assembled_identically(make_store: Factory, size_bits: int) -> None:
    a, b, keys = _link(make_store, n=40)
    taken = a.take("B", 2, size_bits)
    fetched = b.fetch("A", [k.ids for k in taken], size_bits)
    units = -(-size_bits // 256)
    mine = [k for k in keys if k.initiator == "A"]
    assert len(taken[0].ids) == units
    assert taken[0].key == b"".join(k.key for k in mine[:units])[: size_bits // 8]
    assert [k.key for k in fetched] == [k.key for k in taken]
    assert all(len(k.key) * 8 == size_bits for k in fetched)


def test_a_composite_request_must_name_every_unit(make_store: Factory) -> None:
    a, b, _ = _link(make_store)
    (key,) = a.take("B", 1, 512)
    with pytest.raises(KeyNotAvailable):
        b.fetch("A", [key.key_id], 512)
    assert b.fetch("A", [key.ids], 512)[0].key == key.key


@pytest.mark.parametrize("size_bits", [0, -8, 7, 100, 64 * 256 + 8])
def test_invalid_sizes_are_refused(make_store: Factory, size_bits: int) -> None:
    a, _, _ = _link(make_store)
    with pytest.raises(InvalidParameter):
        a.take("B", 1, size_bits)


def test_add_refuses_duplicates_and_bad_keys(make_store: Factory) -> None:
    a, _, keys = _link(make_store)
    with pytest.raises(InvalidParameter):
        a.add("B", [keys[0]])
    with pytest.raises(InvalidParameter):
        a.add("B", [StoredKey(new_key_id(), b"short", "A")])
    with pytest.raises(InvalidParameter):
        a.add("B", [StoredKey(new_key_id(), bytes(32), "C")])
    k = StoredKey(new_key_id(), bytes(32), "A")
    with pytest.raises(InvalidParameter):
        a.add("B", [k, k])
    assert a.status("B").available_to_take == 10


def test_status_counts_and_low_water_signal(make_store: Factory) -> None:
    a, _, _ = _link(make_store)
    signals: list[StoreStatus] = []
    a.low_water = 8
    a.on_low_water = signals.append
    a.take("B", 2)
    assert not signals
    a.take("B", 1)
    assert signals and signals[-1].available_to_take == 7 and signals[-1].below_low_water
    status = a.status("B")
    assert (status.available_to_take, status.available_to_fetch, status.delivered) == (7, 10, 3)
    assert a.peers() == ["B"]


def test_repr_never_shows_key_material(make_store: Factory) -> None:
    a, _, keys = _link(make_store)
    (key,) = a.take("B")
    assert key.key.hex() not in repr(key) and str(key.key) not in repr(key)
    assert keys[1].key.hex() not in repr(keys[1])


def test_concurrent_takers_never_share_a_key(make_store: Factory) -> None:
    a, b, _ = _link(make_store, n=400)
    results: list[list[str]] = [[] for _ in range(8)]

    def worker(slot: int) -> None:
        while True:
            try:
                results[slot].extend(k.key_id for k in a.take("B", 3))
            except KeysExhausted:
                return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for r in results for i in r]
    assert len(ids) == len(set(ids)) == 198  # 200 initiator keys, taken 3 at a time
    assert len(b.fetch("A", ids[:100])) == 100


def test_sqlite_store_survives_reopen_and_belongs_to_one_site(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    key = StoredKey(new_key_id(), os.urandom(32), "A")
    with SQLiteKeyStore("A", path) as store:
        store.add("B", [key])
    with SQLiteKeyStore("A", path) as store:
        assert store.take("B")[0].key == key.key
    reopened = SQLiteKeyStore("A", path)
    with pytest.raises(KeysExhausted):
        reopened.take("B")
    reopened.purge_log()
    reopened.close()
    assert key.key not in path.read_bytes()
    with pytest.raises(InvalidParameter):
        SQLiteKeyStore("B", path)


def test_open_store_urls(tmp_path: Path) -> None:
    assert isinstance(open_store("memory:", "A"), MemoryKeyStore)
    store = open_store(f"sqlite:///{tmp_path}/k.db", "A")
    assert isinstance(store, SQLiteKeyStore)
    store.close()
    with pytest.raises(InvalidParameter):
        open_store("redis://x", "A")


# -- PostgreSQL: what only a shared database server adds ---------------------------------

def _pg_link(dsn: str, schema: str, n: int = 20, **options: Any
             ) -> tuple[KeyStore, KeyStore, list[StoredKey]]:
    from hybridkex.keydelivery.postgres import PostgresKeyStore

    pools = linked_pools("A", "B", alternating_units("A", "B", n // 2),
                         store_a=PostgresKeyStore("A", dsn, schema=schema, **options),
                         store_b=PostgresKeyStore("B", dsn, schema=schema, **options))
    return pools.store_a, pools.store_b, list(pools.units)


def _pg_lock(dsn: str, schema: str, site: str, key_ids: list[str]) -> psycopg.Connection[Any]:
    """Another session, in an open transaction, holding row locks on these keys."""
    conn = psycopg.connect(dsn)
    conn.execute(
        sql.SQL("SELECT key_id FROM {} WHERE site_id = %s AND key_id = ANY(%s::uuid[]) "
                "FOR UPDATE").format(sql.Identifier(schema, "hybridkex_qkd_keys")),
        (site, key_ids)).fetchall()
    return conn


def _pg_erase(conn: psycopg.Connection[Any], schema: str, site: str, key_ids: list[str]) -> None:
    table = sql.Identifier(schema, "hybridkex_qkd_keys")
    conn.execute(
        sql.SQL("UPDATE {} SET material = NULL, delivered_at = now() WHERE site_id = %s "
                "AND key_id = ANY(%s::uuid[])").format(table),
        (site, key_ids))
    conn.commit()


def test_postgres_sites_share_a_database_without_mixing(pg_schema: tuple[str, str]) -> None:
    from hybridkex.keydelivery.postgres import PostgresKeyStore

    dsn, schema = pg_schema
    a, b, keys = _pg_link(dsn, schema)
    # a third site, C, also linked to B, holding the same key IDs under its own name
    c = PostgresKeyStore("C", dsn, schema=schema)
    c.add("B", [StoredKey(k.key_id, k.key, "C" if k.initiator == "A" else "B") for k in keys])
    assert [k.key_id for k in a.take("B", 10)] == [k.key_id for k in keys[::2]]
    assert c.status("B").available_to_take == 10  # A's deliveries are A's alone
    assert [k.key_id for k in c.take("B", 10)] == [k.key_id for k in keys[::2]]
    assert (a.peers(), b.peers(), c.peers()) == (["B"], ["A"], ["B"])
    assert b.status("A").available_to_fetch == 10
    for store in (a, b, c):
        store.close()


def test_postgres_take_skips_keys_another_taker_holds(pg_schema: tuple[str, str]) -> None:
    dsn, schema = pg_schema
    a, b, keys = _pg_link(dsn, schema, lock_timeout_s=2.0)
    mine = [k.key_id for k in keys if k.initiator == "A"]
    other = _pg_lock(dsn, schema, "A", mine[:3])  # a taker in the middle of delivering
    started = time.monotonic()
    assert [k.key_id for k in a.take("B", 2)] == mine[3:5]  # skipped, not waited for
    assert time.monotonic() - started < 1.0
    other.rollback()
    assert [k.key_id for k in a.take("B", 3)] == mine[:3]
    other.close()
    a.close()
    b.close()


def test_postgres_take_waits_for_keys_in_flight_rather_than_fail(
        pg_schema: tuple[str, str]) -> None:
    dsn, schema = pg_schema
    a, b, keys = _pg_link(dsn, schema, n=6)
    mine = [k.key_id for k in keys if k.initiator == "A"]
    # another taker holds two of the three keys: skipping them leaves one, but the
    # three are committed as available, so take waits for the other to finish
    other = _pg_lock(dsn, schema, "A", mine[:2])
    timer = threading.Timer(0.3, other.rollback)
    timer.start()
    assert [k.key_id for k in a.take("B", 3)] == mine  # the other rolled back
    timer.join()
    # ... and when the other taker delivers them, there really are too few
    a.add("B", more := [StoredKey(new_key_id(), os.urandom(32), "A") for _ in range(3)])
    other = _pg_lock(dsn, schema, "A", [k.key_id for k in more[:2]])
    timer = threading.Timer(0.3, _pg_erase, (other, schema, "A", [k.key_id for k in more[:2]]))
    timer.start()
    with pytest.raises(KeysExhausted):
        a.take("B", 3)
    timer.join()
    assert [k.key_id for k in a.take("B")] == [more[2].key_id]
    other.close()
    a.close()
    b.close()


def test_postgres_fetch_waits_for_a_concurrent_fetch_of_the_same_key(
        pg_schema: tuple[str, str]) -> None:
    dsn, schema = pg_schema
    a, b, _ = _pg_link(dsn, schema)
    first, second = a.take("B", 2)
    # another fetcher holds the first key: fetch waits, then finds it delivered
    other = _pg_lock(dsn, schema, "B", [first.key_id])
    timer = threading.Timer(0.3, _pg_erase, (other, schema, "B", [first.key_id]))
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyNotAvailable):
        b.fetch("A", [second.key_id, first.key_id])
    assert time.monotonic() - started >= 0.25
    timer.join()
    # all or nothing: the second key is still there; a fetch that was rolled back
    # leaves its key too
    other = _pg_lock(dsn, schema, "B", [second.key_id])
    timer = threading.Timer(0.3, other.rollback)
    timer.start()
    assert b.fetch("A", [second.key_id])[0].key == second.key
    timer.join()
    other.close()
    a.close()
    b.close()


def test_postgres_store_reconnects_after_losing_its_connection(
        pg_schema: tuple[str, str]) -> None:
    from hybridkex.keydelivery.errors import KeySourceError
    from hybridkex.keydelivery.postgres import PostgresKeyStore

    dsn, schema = pg_schema
    a, b, _ = _pg_link(dsn, schema)
    assert isinstance(a, PostgresKeyStore)
    pid = a._connection().info.backend_pid
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(KeySourceError):
        a.take("B")  # the outcome of this one call is unknown to it: an error
    (key,) = a.take("B")  # a new connection
    assert b.fetch("A", [key.key_id])[0].key == key.key
    a.close()
    b.close()


def test_postgres_purge_vacuums_and_the_store_goes_on(pg_schema: tuple[str, str]) -> None:
    from hybridkex.keydelivery.postgres import PostgresKeyStore

    dsn, schema = pg_schema
    a, b, _ = _pg_link(dsn, schema)
    taken = a.take("B", 4)
    assert isinstance(a, PostgresKeyStore)
    a.purge()
    a.purge(full=True)
    assert [k.key for k in b.fetch("A", [k.key_id for k in taken])] == [k.key for k in taken]
    assert a.status("B").delivered == 4
    a.close()
    b.close()


def test_postgres_refuses_tables_of_another_schema_version(pg_schema: tuple[str, str]) -> None:
    from hybridkex.keydelivery.postgres import PostgresKeyStore

    dsn, schema = pg_schema
    PostgresKeyStore("A", dsn, schema=schema).close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("UPDATE {} SET value = '99' WHERE name = 'schema_version'").format(
            sql.Identifier(schema, "hybridkex_qkd_meta")))
    with pytest.raises(InvalidParameter, match="schema version"):
        PostgresKeyStore("A", dsn, schema=schema)


def test_open_store_postgresql_url(pg_schema: tuple[str, str]) -> None:
    from hybridkex.keydelivery.postgres import PostgresKeyStore

    dsn, schema = pg_schema
    store = open_store(dsn, "A", schema=schema)
    assert isinstance(store, PostgresKeyStore) and store.schema == schema
    store.add("B", [StoredKey(new_key_id(), os.urandom(32), "A")])
    assert store.status("B").available_to_take == 1
    store.close()


def test_open_store_postgresql_without_psycopg_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg -> ImportError
    monkeypatch.delitem(sys.modules, "hybridkex.keydelivery.postgres", raising=False)
    with pytest.raises(BackendUnavailable, match=r"pip install 'hybridkex\[postgres\]'"):
        open_store("postgresql://nobody@127.0.0.1:1/none", "A")


def test_a_batch_id_makes_a_repeated_deposit_add_nothing_even_after_the_purge(
        make_store: Factory) -> None:
    """KeyStore.add(batch_id=...): the depositor's crash-safe step.  Repeating a recorded
    batch adds nothing, even once its keys were used and their rows purged (a key ID alone
    no longer tells then); another batch ID with the same keys is refused while they are
    there; forget_batch drops only the record; a failed add records nothing."""
    store = make_store("A")
    units = alternating_units("A", "B", 2)
    assert store.add("B", units, batch_id="round-1/step") == 4
    assert store.add("B", units, batch_id="round-1/step") == 0
    with pytest.raises(InvalidParameter, match="already"):
        store.add("B", units, batch_id="round-1/other")
    taken = store.take("B", 2)
    assert len(taken) == 2
    store.purge_delivered(0)
    assert store.add("B", units, batch_id="round-1/step") == 0
    assert store.status("B").available_to_take == 0  # nothing came back
    store.forget_batch("round-1/step")
    assert store.add("B", alternating_units("A", "B", 1), batch_id="round-1/step") == 2
    with pytest.raises(InvalidParameter):
        store.add("B", units, batch_id="round-2/step")  # refused: the keys are there
    assert store.add("B", alternating_units("A", "B", 1), batch_id="round-2/step") == 2
    with pytest.raises(InvalidParameter):
        store.add("B", [], batch_id="")
