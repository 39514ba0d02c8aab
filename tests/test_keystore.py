"""Key store: the same keys under the same IDs on both sites, each delivered once."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hybridkex.errors import InvalidParameter
from hybridkex.qkd.keystore import (
    KeyNotAvailable,
    KeysExhausted,
    KeyStore,
    MemoryKeyStore,
    SQLiteKeyStore,
    StoredKey,
    StoreStatus,
    new_key_id,
    open_store,
)

Factory = Callable[[str], KeyStore]


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    opened: list[KeyStore] = []

    def factory(site: str) -> KeyStore:
        store: KeyStore
        if request.param == "memory":
            store = MemoryKeyStore(site)
        else:
            store = SQLiteKeyStore(site, tmp_path / f"{site}.db")
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


def _link(make_store: Factory, n: int = 20) -> tuple[KeyStore, KeyStore, list[StoredKey]]:
    """Two sites holding the same n keys, alternately assigned to each as initiator."""
    a, b = make_store("A"), make_store("B")
    keys = [StoredKey(new_key_id(), os.urandom(32), "A" if i % 2 == 0 else "B")
            for i in range(n)]
    a.add("B", keys)
    b.add("A", keys)
    return a, b, keys


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
