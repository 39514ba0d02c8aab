"""The two-phase deposit: a key is usable at both ends or at neither.

After a round's key confirmation both ends hold the same units, but either may die
before the other has stored them.  So no unit reaches a key store before both ends
hold it durably, and no unit becomes *takeable* anywhere before the other end can
serve it.  Alice coordinates; every step is journaled (:mod:`.journal`) before the
message that announces it, so each can be repeated after a crash:

1. Bob journals the units as PENDING and sends :class:`~.control.Prepared` with a digest
   of the key IDs.
2. Alice checks the digest, journals DECIDED (the commit point: from here the round is
   deposited at both ends, whatever fails), sends :class:`~.control.Commit`.
3. Bob adds the units *Alice's site* initiates to his store (there he can only fetch
   them, by an ID only Alice can hand out), journals HALF, sends
   :class:`~.control.Ready`.
4. Alice adds every unit to her store (hers to take, Bob's to fetch), journals ADDED,
   sends :class:`~.control.Release`.
5. Bob adds the units his site initiates, journals DONE, sends :class:`~.control.Done`;
   Alice journals DONE.

A unit is takeable at its initiator only after the other end holds it (3 before 4,
4 before 5), so a session never names a key its peer lacks.  After any crash or
disconnect the next connection settles the journals (:func:`settle` with
``complete=True``): Alice commits every round she decided, Bob discards every pending
round Alice never decided.

Adding to a store is idempotent by batch, not by key: each step's units go to the store
under a batch ID (round, site, step) recorded in the same transaction
(:meth:`~hybridkex.keydelivery.store.KeyStore.add`), so a step repeated after a crash
adds nothing.  Key IDs alone could not say so: between a crash and the next connection
the keys may have been used at both ends and their rows purged, and adding them again
would make them takeable a second time at one end.  The batch records go once the
journal has the round DONE.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from hybridkex import primitives
from hybridkex.keydelivery.keys import StoredKey
from hybridkex.keydelivery.store import KeyStore
from hybridkex.qkd.distillation.channel import AuthenticatedChannel
from hybridkex.qkd.errors import LinkAborted
from hybridkex.qkd.network.control import Commit, Done, Prepared, Ready, Release
from hybridkex.qkd.network.journal import (
    ABORTED,
    ADDED,
    DECIDED,
    DONE,
    HALF,
    PENDING,
    DepositJournal,
)

__all__ = ["DepositEnd", "DepositMismatch", "key_digest"]

_LABEL = b"hybridkex qkd deposit v1"


class DepositMismatch(LinkAborted):
    """The two ends' journals disagree about a round: nothing of it is deposited."""


def key_digest(round_id: bytes, keys: Sequence[StoredKey]) -> bytes:
    """What both ends compare before committing: the round's key IDs and initiators."""
    data = _LABEL + round_id + b"".join(
        k.key_id.encode() + b"|" + k.initiator.encode() + b";" for k in keys)
    return primitives.digest("SHA-256", data)


class DepositEnd:
    """One end's side of the deposit: its journal, its store, its site and the peer."""

    def __init__(self, journal: DepositJournal, store: KeyStore, site: str, peer: str) -> None:
        self.journal, self.store, self.site, self.peer = journal, store, site, peer

    def _batch(self, round_id: bytes, step: int) -> str:
        """The store's batch ID for one step of one round at this end."""
        return f"qkd-link/{self.site}/{self.peer}/{round_id.hex()}/{step}"

    def _add(self, round_id: bytes, step: int, keys: Sequence[StoredKey]) -> int:
        """Add one step's units; nothing if this step was done before a crash."""
        return self.store.add(self.peer, keys, batch_id=self._batch(round_id, step))

    def _done(self, round_id: bytes, steps: Sequence[int]) -> None:
        """The round is DONE here: its units leave the journal, its batch records the store."""
        self.journal.set_state(round_id, DONE)
        for step in steps:
            self.store.forget_batch(self._batch(round_id, step))

    def _mine(self, keys: Sequence[StoredKey], own: bool) -> list[StoredKey]:
        return [k for k in keys if (k.initiator == self.site) == own]

    # -- Bob ------------------------------------------------------------------------------

    def prepare(self, chan: AuthenticatedChannel, round_id: bytes,
                keys: Sequence[StoredKey]) -> None:
        """Step 1 (Bob)."""
        digest = key_digest(round_id, keys)
        self.journal.record(round_id, PENDING, digest, keys)
        chan.send(Prepared(round_id, digest))

    def follow(self, chan: AuthenticatedChannel, commit: Commit) -> int:
        """Steps 3 and 5 (Bob), from Alice's Commit; returns the units added now."""
        added = 0
        for round_id in commit.rounds:
            state = self.journal.state(round_id)
            if state == PENDING:
                added += self._add(round_id, HALF,
                                   self._mine(self.journal.units(round_id), own=False))
                self.journal.set_state(round_id, HALF)
            elif state not in (HALF, DONE):
                raise DepositMismatch("Alice commits a round Bob's journal does not hold")
        if commit.complete:
            for round_id, state, _ in self.journal.open_rounds():
                if round_id in commit.rounds:
                    continue
                if state != PENDING:
                    raise DepositMismatch("Bob's journal holds a round half deposited that "
                                          "Alice does not commit")
                self.journal.set_state(round_id, ABORTED)
        chan.send(Ready(commit.rounds))
        release = chan.recv(Release)
        if release.rounds != commit.rounds:
            raise DepositMismatch("Alice releases other rounds than she committed")
        for round_id in commit.rounds:
            if self.journal.state(round_id) == HALF:
                added += self._add(round_id, DONE,
                                   self._mine(self.journal.units(round_id), own=True))
                self._done(round_id, (HALF, DONE))
        chan.send(Done(commit.rounds))
        return added

    # -- Alice ----------------------------------------------------------------------------

    def decide(self, chan: AuthenticatedChannel, round_id: bytes,
               keys: Sequence[StoredKey]) -> None:
        """Step 2 (Alice): Bob's Prepared must match her own units; then the commit point."""
        prepared = chan.recv(Prepared)
        if prepared.round_id != round_id or not hmac.compare_digest(
                prepared.digest, key_digest(round_id, keys)):
            raise DepositMismatch("Bob prepared other keys than Alice holds")
        self.journal.record(round_id, DECIDED, prepared.digest, keys)

    def lead(self, chan: AuthenticatedChannel, rounds: tuple[bytes, ...],
             complete: bool) -> int:
        """Steps 2 to 5 (Alice) for rounds she decided; returns the units added now."""
        chan.send(Commit(rounds, complete))
        ready = chan.recv(Ready)
        if ready.rounds != rounds:
            raise DepositMismatch("Bob answers for other rounds than Alice committed")
        added = 0
        for round_id in rounds:
            if self.journal.state(round_id) == DECIDED:
                added += self._add(round_id, ADDED, self.journal.units(round_id))
                self.journal.set_state(round_id, ADDED)
        chan.send(Release(rounds))
        done = chan.recv(Done)
        if done.rounds != rounds:
            raise DepositMismatch("Bob confirms other rounds than Alice released")
        for round_id in rounds:
            self._done(round_id, (ADDED,))
        return added

    def alice_open(self) -> tuple[bytes, ...]:
        """Every round Alice decided and has not finished, oldest first."""
        return tuple(r for r, state, _ in self.journal.open_rounds()
                     if state in (DECIDED, ADDED))
