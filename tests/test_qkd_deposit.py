"""The two-phase deposit (hybridkex.qkd.network.deposit) settling the journals after a
crash at each point: whatever state each end was left in, both stores end with the same
available keys, or neither with any of them."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from hybridkex.keydelivery.keys import StoredKey, new_key_id
from hybridkex.keydelivery.sqlite import SQLiteKeyStore
from hybridkex.keydelivery.store import MemoryKeyStore
from hybridkex.qkd.distillation.authentication import SignatureAuthenticator
from hybridkex.qkd.distillation.channel import AuthenticatedChannel
from hybridkex.qkd.distillation.transport import queue_pair
from hybridkex.qkd.ends import Role
from hybridkex.qkd.errors import LinkAborted
from hybridkex.qkd.link import SiteIdentity, stored_keys
from hybridkex.qkd.network.control import Commit
from hybridkex.qkd.network.deposit import DepositEnd, DepositMismatch, key_digest
from hybridkex.qkd.network.journal import (
    ABORTED,
    ADDED,
    DECIDED,
    DONE,
    HALF,
    PENDING,
    DepositJournal,
)

ROUND = bytes(range(16))
A, B = SiteIdentity.generate("Ed25519"), SiteIdentity.generate("Ed25519")


def _ends(tmp_path: Path) -> tuple[DepositEnd, DepositEnd, list[StoredKey]]:
    alice = DepositEnd(DepositJournal(tmp_path / "a.db"), MemoryKeyStore("site-a"), "site-a",
                       "site-b")
    bob = DepositEnd(DepositJournal(tmp_path / "b.db"), MemoryKeyStore("site-b"), "site-b",
                     "site-a")
    keys = stored_keys(os.urandom(32 * 6), [new_key_id() for _ in range(6)], "site-a",
                       "site-b")
    return alice, bob, keys


def _settle(alice: DepositEnd, bob: DepositEnd) -> None:
    """What a new connection does: Alice leads every round she decided, completely."""
    end_a, end_b = queue_pair(10)
    chan_a = AuthenticatedChannel(end_a, SignatureAuthenticator("Ed25519", A.private, B.public),
                                  Role.ALICE, session_id=ROUND)
    chan_b = AuthenticatedChannel(end_b, SignatureAuthenticator("Ed25519", B.private, A.public),
                                  Role.BOB, session_id=ROUND)
    errors: list[BaseException] = []

    def bob_side() -> None:
        try:
            bob.follow(chan_b, chan_b.recv(Commit))
        except BaseException as exc:
            errors.append(exc)
            end_b.close()

    thread = threading.Thread(target=bob_side)
    thread.start()
    try:
        alice.lead(chan_a, alice.alice_open(), complete=True)
    except LinkAborted:
        if not errors:
            raise
    thread.join(10)
    if errors:
        raise errors[0]  # Bob's refusal, which ended the exchange


def _status(end: DepositEnd) -> tuple[int, int]:
    s = end.store.status(end.peer)
    return s.available_to_take, s.available_to_fetch


Step = Callable[[DepositEnd, DepositEnd, list[StoredKey]], None]


def _bob_pending(alice: DepositEnd, bob: DepositEnd, keys: list[StoredKey]) -> None:
    bob.journal.record(ROUND, PENDING, key_digest(ROUND, keys), keys)


def _alice_decided(alice: DepositEnd, bob: DepositEnd, keys: list[StoredKey]) -> None:
    _bob_pending(alice, bob, keys)
    alice.journal.record(ROUND, DECIDED, key_digest(ROUND, keys), keys)


def _bob_half(alice: DepositEnd, bob: DepositEnd, keys: list[StoredKey]) -> None:
    _bob_added_but_crashed(alice, bob, keys)
    bob.journal.set_state(ROUND, HALF)


def _bob_added_but_crashed(alice: DepositEnd, bob: DepositEnd, keys: list[StoredKey]) -> None:
    _alice_decided(alice, bob, keys)  # Bob added his first half, then died before HALF
    bob._add(ROUND, HALF, [k for k in keys if k.initiator == "site-a"])


def _alice_added_but_crashed(alice: DepositEnd, bob: DepositEnd,
                             keys: list[StoredKey]) -> None:
    _bob_half(alice, bob, keys)  # Alice added every unit, then died before ADDED
    alice._add(ROUND, ADDED, keys)


def _alice_added(alice: DepositEnd, bob: DepositEnd, keys: list[StoredKey]) -> None:
    _alice_added_but_crashed(alice, bob, keys)
    alice.journal.set_state(ROUND, ADDED)


def _bob_done_but_crashed(alice: DepositEnd, bob: DepositEnd, keys: list[StoredKey]) -> None:
    _alice_added(alice, bob, keys)  # Bob added the units his site takes, died before DONE
    bob._add(ROUND, DONE, [k for k in keys if k.initiator == "site-b"])


def _bob_done(alice: DepositEnd, bob: DepositEnd, keys: list[StoredKey]) -> None:
    _bob_done_but_crashed(alice, bob, keys)
    bob._done(ROUND, (HALF, DONE))


@pytest.mark.parametrize(("crash", "deposited"), [
    (_bob_pending, False), (_alice_decided, True), (_bob_half, True),
    (_bob_added_but_crashed, True), (_alice_added_but_crashed, True), (_alice_added, True),
    (_bob_done_but_crashed, True), (_bob_done, True)],
    ids=lambda v: getattr(v, "__name__", str(v)))
def test_the_journals_settle_every_crash_point(tmp_path: Path, crash: Step,
                                               deposited: bool) -> None:
    alice, bob, keys = _ends(tmp_path)
    crash(alice, bob, keys)
    _settle(alice, bob)
    expected = (3, 3) if deposited else (0, 0)
    assert _status(alice) == _status(bob) == expected
    assert alice.journal.open_rounds() == bob.journal.open_rounds() == []
    assert bob.journal.state(ROUND) == (DONE if deposited else ABORTED)
    if deposited:
        mine = alice.store.take("site-b", 3)
        assert [k.key for k in bob.store.fetch("site-a", [k.key_id for k in mine])] == \
            [k.key for k in mine]
    _settle(alice, bob)  # settling again changes nothing
    assert _status(alice) == ((0, 3) if deposited else (0, 0))
    assert _status(bob) == ((3, 0) if deposited else (0, 0))


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
@pytest.mark.parametrize("crash", [_bob_added_but_crashed, _alice_added_but_crashed,
                                   _bob_done_but_crashed],
                         ids=lambda v: v.__name__)
def test_keys_used_and_purged_before_the_settling_are_not_added_again(
        tmp_path: Path, crash: Step, backend: str) -> None:
    """An end dies after a step's store add and before its journal says so; while it is
    down the keys it already serves are used at both ends and their rows purged (a KME's
    retention).  Settling must not add them again: a key issued twice, and takeable at one
    end only, is the failure this guards against."""
    alice, bob, keys = _ends(tmp_path)
    if backend == "sqlite":
        alice.store = SQLiteKeyStore("site-a", tmp_path / "ka.db")
        bob.store = SQLiteKeyStore("site-b", tmp_path / "kb.db")
    crash(alice, bob, keys)
    used: set[str] = set()
    for taker, fetcher in ((alice, bob), (bob, alice)):  # whatever is usable now, used
        level = taker.store.status(taker.peer).available_to_take
        if level and fetcher.store.status(fetcher.peer).available_to_fetch >= level:
            got = taker.store.take(taker.peer, level)
            fetched = fetcher.store.fetch(fetcher.peer, [k.key_id for k in got])
            assert [k.key for k in fetched] == [k.key for k in got]
            used |= {k.key_id for k in got}
    alice.store.purge_delivered(0)
    bob.store.purge_delivered(0)
    _settle(alice, bob)
    for taker, fetcher in ((alice, bob), (bob, alice)):
        level = taker.store.status(taker.peer).available_to_take
        assert fetcher.store.status(fetcher.peer).available_to_fetch >= level
        for key in taker.store.take(taker.peer, level) if level else []:
            assert key.key_id not in used, "a key used before the crash is issued again"
            assert fetcher.store.fetch(fetcher.peer, [key.key_id])[0].key == key.key
    assert alice.journal.open_rounds() == bob.journal.open_rounds() == []


def test_a_half_deposited_round_alice_does_not_know_is_refused(tmp_path: Path) -> None:
    alice, bob, keys = _ends(tmp_path)
    _bob_pending(alice, bob, keys)
    bob.journal.set_state(ROUND, HALF)  # impossible unless Alice's journal was lost
    with pytest.raises(DepositMismatch):
        _settle(alice, bob)


def test_an_erased_round_leaves_no_material_in_the_journals_files(tmp_path: Path) -> None:
    """DONE and ABORTED erase a round's units from the database and from its write-ahead
    log, which otherwise keeps the old pages until a checkpoint."""
    journal = DepositJournal(tmp_path / "qkd-link-site-a.db")
    secrets = []
    for final in (DONE, ABORTED):
        secret = os.urandom(32)
        secrets.append(secret)
        round_id = os.urandom(16)
        journal.record(round_id, PENDING, b"d" * 32, [StoredKey(new_key_id(), secret, "site-a")])
        journal.set_state(round_id, final)
        for path in tmp_path.iterdir():
            assert secret not in path.read_bytes(), path.name
    held = os.urandom(32)
    journal.record(os.urandom(16), PENDING, b"d" * 32, [StoredKey(new_key_id(), held, "site-a")])
    assert any(held in p.read_bytes() for p in tmp_path.iterdir())  # the check can see it
    journal.close()
