"""The two-phase deposit (hybridkex.qkd.network.deposit) settling the journals after a
crash at each point: whatever state each end was left in, both stores end with the same
available keys, or neither with any of them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from hybridkex.keydelivery.keys import StoredKey, new_key_id
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
    keys = stored_keys(bytes(range(32)) * 6, [new_key_id() for _ in range(6)], "site-a",
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
    _alice_decided(alice, bob, keys)
    bob.store.add("site-a", [k for k in keys if k.initiator == "site-a"])
    bob.journal.set_state(ROUND, HALF)


def _bob_added_but_crashed(alice: DepositEnd, bob: DepositEnd, keys: list[StoredKey]) -> None:
    _alice_decided(alice, bob, keys)  # Bob added his first half, then died before HALF
    bob.store.add("site-a", [k for k in keys if k.initiator == "site-a"])


def _alice_added(alice: DepositEnd, bob: DepositEnd, keys: list[StoredKey]) -> None:
    _bob_half(alice, bob, keys)
    alice.store.add("site-b", keys)
    alice.journal.set_state(ROUND, ADDED)


def _bob_done(alice: DepositEnd, bob: DepositEnd, keys: list[StoredKey]) -> None:
    _alice_added(alice, bob, keys)
    bob.store.add("site-a", [k for k in keys if k.initiator == "site-b"])
    bob.journal.set_state(ROUND, DONE)


@pytest.mark.parametrize(("crash", "deposited"), [
    (_bob_pending, False), (_alice_decided, True), (_bob_half, True),
    (_bob_added_but_crashed, True), (_alice_added, True), (_bob_done, True)],
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


def test_a_half_deposited_round_alice_does_not_know_is_refused(tmp_path: Path) -> None:
    alice, bob, keys = _ends(tmp_path)
    _bob_pending(alice, bob, keys)
    bob.journal.set_state(ROUND, HALF)  # impossible unless Alice's journal was lost
    with pytest.raises(DepositMismatch):
        _settle(alice, bob)
