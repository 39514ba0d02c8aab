"""The two ends of a networked QKD link (simulated optics, real distillation and deposit).

Alice's end connects (``hybridkex qkd link --connect``), Bob's listens (``--listen``).
Each runs in its own process, usually on its own host, with its own site directory:
its signing identity, the peer it trusts, its key store and its deposit journal.

A connection, from the first message to the last:

1. **Opening** (signatures of the two sites, verified against trust/): Alice's
   :class:`~.control.LinkHello`, Bob's :class:`~.control.LinkState` (his unfinished
   deposits), then Alice settles every unfinished round of both journals
   (:meth:`~.deposit.DepositEnd.lead` with ``complete=True``).
2. **Rounds**, until Alice stops: :class:`~.control.RoundStart` names the pulse train,
   the distillation runs (:func:`~hybridkex.qkd.distillation.run_alice` /
   :func:`~hybridkex.qkd.distillation.run_bob`), then the two-phase deposit
   (:mod:`.deposit`).  The first round of a connection is authenticated by signatures;
   every later one by Wegman-Carter MACs keyed from the previous round's reserve and
   what was left of its pool.  The MAC keys live only in memory: after any disconnect or
   crash a connection starts with signatures again, so no one-time key is ever used
   twice.
3. **End**: Alice's :class:`~.control.Bye`, or a dropped connection.  An aborted round
   also ends the connection (frames of the dead round may still be on the way); Alice
   reconnects with back-off and Bob accepts the next connection.

Stopping (:class:`Stop`): a first request finishes the current round, deposit included,
then ends cleanly; a second discards the round at once (the peer sees the connection
close and keeps nothing; a deposit under way is settled by the journals on the next
connection).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hybridkex.errors import HybridKexError
from hybridkex.keydelivery.store import KeyStore
from hybridkex.qkd.distillation import (
    DistillationConfig,
    DistillationResult,
    RoundMetrics,
    run_alice,
    run_bob,
)
from hybridkex.qkd.distillation.authentication import (
    AuthKeyPool,
    MessageAuthenticator,
    SignatureAuthenticator,
    WegmanCarterAuthenticator,
)
from hybridkex.qkd.distillation.messages import NONCE_SIZE, Hello, Message, Sift
from hybridkex.qkd.distillation.session import session_id
from hybridkex.qkd.distillation.transport import SocketChannel
from hybridkex.qkd.ends import Role
from hybridkex.qkd.errors import LinkAborted, QuantumChannelError
from hybridkex.qkd.link import LinkReport, stored_keys
from hybridkex.qkd.network.channel import LinkChannel
from hybridkex.qkd.network.control import (
    Bye,
    Commit,
    JournalEntry,
    LinkHello,
    LinkState,
    RoundStart,
)
from hybridkex.qkd.network.deposit import DepositEnd, DepositMismatch
from hybridkex.qkd.optics.devices import DetectorDevice, SourceDevice, connect_with_backoff
from hybridkex.qkd.optics.source import AliceTrain

__all__ = ["AliceEnd", "BobEnd", "EndSettings", "RoundReport", "Stop"]

ROUND_TIMEOUT_S = 120.0
OPEN_TIMEOUT_S = 30.0
TRAIN_WAIT_S = 20.0


class Discarded(BaseException):
    """Raised (from a signal handler) to discard the current round at once."""


@dataclass
class Stop:
    """How a link end is asked to stop: ``requested`` finishes the round first."""

    requested: threading.Event = field(default_factory=threading.Event)

    def __call__(self) -> bool:
        return self.requested.is_set()


@dataclass(frozen=True, repr=False)
class EndSettings:
    """What one end needs: its site, the peer, keys to sign with and to verify the peer."""

    site: str
    peer: str
    scheme: str
    private_key: bytes
    peer_scheme: str
    peer_public_key: bytes
    store: KeyStore
    deposit: DepositEnd
    config: DistillationConfig = field(default_factory=DistillationConfig)

    def signatures(self) -> MessageAuthenticator:
        return SignatureAuthenticator(self.scheme, self.private_key, self.peer_public_key,
                                      self.peer_scheme)

    def auth_label(self) -> str:
        if self.scheme == self.peer_scheme:
            return f"signature ({self.scheme})"
        return f"signature ({self.scheme} / {self.peer_scheme})"


@dataclass(kw_only=True)
class RoundReport(LinkReport):
    """One round as one end reports it (``qkd link --json`` prints one per round)."""

    role: str
    site: str
    peer: str
    round: int = 0
    connection: int = 0
    train: str = ""
    round_trips: int = 0
    deposit: str = "none"
    abort_error: str | None = None  # the LinkAborted subclass that ended the round
    pool_available_to_take: int | None = None
    pool_available_to_fetch: int | None = None
    simulated: bool = True

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        reached_reconciliation = self.ec_round_trips > 0
        reached_amplification = self.pa_input_bits > 0
        if self.aborted and not reached_reconciliation:
            out["qber"] = None
            out["ec_efficiency"] = None
        if self.aborted and not reached_amplification:
            out["y1_lower"] = out["e1_upper"] = None
        if self.detections == 0 and self.aborted:
            out["qber_x"] = None
        if self.simulation_s == 0.0:
            out["simulation_s"] = None
        out["pool"] = {"available_to_take": out.pop("pool_available_to_take"),
                       "available_to_fetch": out.pop("pool_available_to_fetch")}
        return out


def _fill(report: RoundReport, result: DistillationResult) -> None:
    for name in RoundMetrics.__dataclass_fields__:
        setattr(report, name, getattr(result, name))


def _first_nonce(train: bytes) -> Callable[[int], bytes]:
    """Alice's randomness for a round: the hello's nonce is the pulse train's ID."""
    unused = [train]

    def random_bytes(n: int) -> bytes:
        if unused and n == NONCE_SIZE:
            return unused.pop()
        return os.urandom(n)

    return random_bytes


def _close(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()


class _End:
    """What both ends share: authentication state, reports, the pool level."""

    role: Role

    def __init__(self, settings: EndSettings, stop: Stop,
                 on_report: Callable[[RoundReport], None],
                 log: Callable[[str], None]) -> None:
        self.s = settings
        self.stop = stop
        self.on_report = on_report
        self.log = log
        self.pool: bytes | None = None
        self.connections = 0
        self.keys_deposited = 0

    def _authenticator(self) -> tuple[MessageAuthenticator, str]:
        if self.pool:
            return WegmanCarterAuthenticator(AuthKeyPool(self.pool), self.role), \
                WegmanCarterAuthenticator.kind
        return self.s.signatures(), self.s.auth_label()

    def _report(self, number: int, train: bytes, pulses: int, distance_km: float) -> RoundReport:
        return RoundReport(role=self.role.name.lower(), site=self.s.site, peer=self.s.peer,
                           round=number, connection=self.connections, train=train.hex(),
                           distance_km=distance_km, pulses=pulses,
                           finite_key=self.s.config.finite_key, eps_sec=self.s.config.eps_sec)

    def _finish(self, report: RoundReport, chan: LinkChannel, auth: MessageAuthenticator,
                started: float) -> None:
        report.auth_bits_consumed = auth.bits_consumed
        report.round_trips = chan.round_trips
        if report.aborted and report.abort_error is None:
            report.abort_error = chan.failure or "LinkAborted"
        report.net_secret_bits = (report.secret_bits if not report.aborted else 0) \
            - report.auth_bits_consumed
        with contextlib.suppress(HybridKexError):
            status = self.s.store.status(self.s.peer)
            report.pool_available_to_take = status.available_to_take
            report.pool_available_to_fetch = status.available_to_fetch
        report.elapsed_s = time.perf_counter() - started
        self.on_report(report)

    def _carry(self, auth: MessageAuthenticator, result: DistillationResult) -> None:
        leftover = auth.leftover() if isinstance(auth, WegmanCarterAuthenticator) else b""
        self.pool = leftover + result.auth_reserve


class AliceEnd(_End):
    """The connecting end: it sends the pulses and leads every round and deposit."""

    role = Role.ALICE

    def __init__(self, settings: EndSettings, address: tuple[str, int], source: SourceDevice,
                 pulses: int, stop: Stop, on_report: Callable[[RoundReport], None],
                 log: Callable[[str], None], rounds: int | None = None,
                 target_keys: int | None = None) -> None:
        super().__init__(settings, stop, on_report, log)
        self.address, self.source, self.pulses = address, source, pulses
        self.rounds_limit, self.target_keys = rounds, target_keys
        self.rounds = 0

    def done(self) -> bool:
        if self.rounds_limit is not None and self.rounds >= self.rounds_limit:
            return True
        return self.target_keys is not None and self.keys_deposited >= self.target_keys

    def run(self) -> None:
        """Connect, run rounds, reconnect after any failure, until done or stopped."""
        while not self.done() and not self.stop():
            sock = connect_with_backoff(self.address, self.stop.requested,
                                        on_retry=self._retry)
            if sock is None:
                return
            self.connections += 1
            self.pool = None
            try:
                self._connection(sock)
            except LinkAborted as exc:
                if not self.stop():
                    self.log(f"connection {self.connections} ended: {exc.reason}")
            finally:
                _close(sock)
            if self.source.error is not None:
                raise self.source.error
            if not self.done() and not self.stop():
                self.stop.requested.wait(0.2)

    def _retry(self, exc: OSError, delay: float) -> None:
        if delay >= 1.0:
            self.log(f"cannot reach Bob at {self.address[0]}:{self.address[1]} "
                     f"({exc.strerror or exc}); retrying in {delay:.1f} s")

    def _connection(self, sock: socket.socket) -> None:
        sock.settimeout(OPEN_TIMEOUT_S)
        transport = SocketChannel(sock)
        chan = LinkChannel(transport, self.s.signatures(), Role.ALICE)
        nonce = os.urandom(NONCE_SIZE)
        chan.session_id = nonce
        chan.send(LinkHello(nonce, self.s.site, self.s.peer))
        state = chan.recv(LinkState)
        chan.session_id = session_id(nonce, state.nonce)
        self._check_journals(state.entries)
        open_rounds = self.s.deposit.alice_open()
        added = self.s.deposit.lead(chan, open_rounds, complete=True)
        if open_rounds or state.entries:
            self.log(f"settled {len(open_rounds) + len(state.entries)} unfinished deposit(s) "
                     f"from the journals: {added} keys added here")
        sock.settimeout(ROUND_TIMEOUT_S)
        while True:
            if self.stop() or self.done():
                self._bye(transport, "Alice stops" if self.stop() else "Alice is done")
                return
            ready = self.source.next_train(0.5)
            if ready is None:
                if self.source.error is not None:
                    raise LinkAborted(self.source.error.reason)
                continue
            if not self._round(transport, ready.record, ready.distance_km, ready.emitted_s):
                return  # an aborted round ends the connection

    def _check_journals(self, bob: tuple[JournalEntry, ...]) -> None:
        for entry in bob:
            mine = self.s.deposit.journal.digest(entry.round_id)
            if mine is not None and mine != entry.digest:
                raise DepositMismatch("the two journals disagree about a round's keys")

    def _bye(self, transport: SocketChannel, reason: str) -> None:
        auth, _ = self._authenticator()
        chan = LinkChannel(transport, auth, Role.ALICE, session_id=os.urandom(NONCE_SIZE))
        with contextlib.suppress(LinkAborted):
            chan.send(Bye(reason))

    def _round(self, transport: SocketChannel, train: AliceTrain, distance_km: float,
               emitted_s: float) -> bool:
        started = time.perf_counter()
        self.rounds += 1
        report = self._report(self.rounds, train.train, train.slots, distance_km)
        report.simulation_s = emitted_s
        auth, report.auth_mode = self._authenticator()
        self.pool = None  # spent from here on, whatever happens
        chan = LinkChannel(transport, auth, Role.ALICE, session_id=train.train)
        data = train.alice_data()

        def fill(message: Message) -> None:
            if isinstance(message, Sift):
                data.intensity, data.basis, data.bit = train.settings_at(message.index)
                data.index = message.index

        chan.on_receive = fill
        try:
            chan.send(RoundStart(train.train, train.slots, distance_km, self.rounds))
        except LinkAborted as exc:
            self.rounds -= 1  # the round never started
            raise LinkAborted(exc.reason) from None
        result = run_alice(chan, data, self.s.config, _first_nonce(train.train))
        _fill(report, result)
        if result.aborted:
            report.aborted, report.abort_reason = True, result.abort_reason
            self._finish(report, chan, auth, started)
            return False
        keys = stored_keys(result.key_material, result.key_ids, self.s.site, self.s.peer)
        round_id = chan.session_id or b""
        try:
            self.s.deposit.decide(chan, round_id, keys)
        except LinkAborted as exc:
            report.aborted, report.abort_reason = True, f"deposit: {exc.reason}"
            self._finish(report, chan, auth, started)
            return False
        report.deposit = "pending"
        report.keys_deposited = len(keys)
        report.key_ids = list(result.key_ids)
        self.keys_deposited += len(keys)
        try:
            self.s.deposit.lead(chan, (round_id,), complete=False)
        except LinkAborted as exc:
            report.abort_reason = f"deposit completes on the next connection ({exc.reason})"
            self._finish(report, chan, auth, started)
            return False
        report.deposit = "done"
        report.auth_reserve_bits = 8 * len(result.auth_reserve)
        self._carry(auth, result)
        self._finish(report, chan, auth, started)
        return True


class BobEnd(_End):
    """The listening end: it detects the pulses and follows Alice's lead."""

    role = Role.BOB

    def __init__(self, settings: EndSettings, server: socket.socket, detector: DetectorDevice,
                 stop: Stop, on_report: Callable[[RoundReport], None],
                 log: Callable[[str], None]) -> None:
        super().__init__(settings, stop, on_report, log)
        self.server, self.detector = server, detector

    def run(self) -> None:
        """Accept Alice's connections one after the other until stopped."""
        self.server.settimeout(0.2)
        while not self.stop():
            try:
                sock, peer = self.server.accept()
            except TimeoutError:
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            self.connections += 1
            self.pool = None
            try:
                self._connection(sock)
            except LinkAborted as exc:
                if not self.stop():
                    self.log(f"connection {self.connections} from {peer[0]} ended: "
                             f"{exc.reason}")
            finally:
                _close(sock)

    def _connection(self, sock: socket.socket) -> None:
        sock.settimeout(OPEN_TIMEOUT_S)
        transport = SocketChannel(sock)
        chan = LinkChannel(transport, self.s.signatures(), Role.BOB)
        hello = chan.recv(LinkHello)
        if (hello.alice_site, hello.bob_site) != (self.s.peer, self.s.site):
            raise LinkAborted(f"a link from {hello.alice_site} to {hello.bob_site}, but this "
                              f"end is {self.s.site} waiting for {self.s.peer}")
        nonce = os.urandom(NONCE_SIZE)
        entries = tuple(JournalEntry(r, state, digest)
                        for r, state, digest in self.s.deposit.journal.open_rounds())
        chan.send(LinkState(nonce, entries))
        chan.session_id = session_id(hello.nonce, nonce)
        added = self.s.deposit.follow(chan, chan.recv(Commit))
        if entries:
            self.log(f"settled {len(entries)} unfinished deposit(s) from the journals: "
                     f"{added} keys added here")
        sock.settimeout(ROUND_TIMEOUT_S)
        while True:
            if not self._wait_readable(sock):
                return  # stopped between rounds: close
            auth, mode = self._authenticator()
            self.pool = None
            chan = LinkChannel(transport, auth, Role.BOB)
            started = time.perf_counter()
            first = chan.recv_any({RoundStart: False, Bye: False})
            if isinstance(first, Bye):
                self.log(f"Alice ended the connection ({first.reason})")
                return
            assert isinstance(first, RoundStart)
            if not self._round(chan, auth, mode, first, started):
                return

    def _wait_readable(self, sock: socket.socket) -> bool:
        while not self.stop():
            ready, _, _ = select.select([sock], [], [], 0.2)
            if ready:
                return True
        return False

    def _round(self, chan: LinkChannel, auth: MessageAuthenticator, mode: str,
               start: RoundStart, started: float) -> bool:
        report = self._report(start.number, start.train, start.pulses, start.distance_km)
        report.auth_mode = mode
        try:
            data = self.detector.train(start.train, start.pulses, TRAIN_WAIT_S)
        except QuantumChannelError as exc:
            chan.abort(exc.reason)
            report.aborted, report.abort_reason = True, exc.reason
            report.abort_error = type(exc).__name__
            self._finish(report, chan, auth, started)
            return False

        def check(message: Message) -> None:
            if isinstance(message, Hello) and (message.nonce != start.train
                                               or message.pulses_sent != start.pulses):
                raise QuantumChannelError("the hello names another pulse train than the "
                                          "round started with")

        chan.on_receive = check
        result = run_bob(chan, data, self.s.config)
        _fill(report, result)
        if result.aborted:
            report.aborted, report.abort_reason = True, result.abort_reason
            self._finish(report, chan, auth, started)
            return False
        keys = stored_keys(result.key_material, result.key_ids, self.s.peer, self.s.site)
        round_id = chan.session_id or b""
        try:
            self.s.deposit.prepare(chan, round_id, keys)
            report.deposit = "pending"
            self.s.deposit.follow(chan, chan.recv(Commit))
        except LinkAborted as exc:
            report.abort_reason = f"deposit settles on the next connection ({exc.reason})"
            self._finish(report, chan, auth, started)
            return False
        report.deposit = "done"
        report.keys_deposited = len(keys)
        report.key_ids = list(result.key_ids)
        report.auth_reserve_bits = 8 * len(result.auth_reserve)
        self.keys_deposited += len(keys)
        self._carry(auth, result)
        self._finish(report, chan, auth, started)
        return True
