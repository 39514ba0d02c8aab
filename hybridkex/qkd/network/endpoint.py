"""The two ends of a networked QKD link (simulated optics, real distillation and deposit).

Alice's end connects (``hybridkex qkd link --connect``), Bob's listens (``--listen``).
Each runs in its own process, usually on its own host, with its own site directory:
its signing identity, the peer it trusts, its key store and its deposit journal.

A connection, from the first message to the last:

1. **Opening** (signatures of the two sites, verified against trust/): Alice's
   :class:`~.control.LinkHello`, Bob's :class:`~.control.LinkState` (his unfinished
   deposits), then Alice settles every unfinished round of both journals
   (:meth:`~.deposit.DepositEnd.lead` with ``complete=True``).
2. **Rounds**, in lanes (:mod:`.lanes`): several rounds in flight at once, so the
   round-trip time of the classical channel is hidden.  Each lane is a sequence of
   rounds: :class:`~.control.RoundStart` names the pulse train, the distillation runs
   (:func:`~hybridkex.qkd.distillation.run_alice` /
   :func:`~hybridkex.qkd.distillation.run_bob`), then the two-phase deposit
   (:mod:`.deposit`).  A lane's first round is authenticated by signatures; every
   later one by Wegman-Carter MACs keyed from that lane's previous round (its reserve
   and what was left of its pool).  The MAC keys live only in memory: after any
   disconnect or crash a connection starts with signatures again, so no one-time key
   is ever used twice.
3. **End**: Alice's :class:`~.control.Bye` in every lane, or a dropped connection.  An
   aborted round retires its lane (frames of the dead round may still be on the way);
   when Alice has no lane left, or a deposit was interrupted, she reconnects with
   back-off, and Bob accepts the next connection.

Bob's port is open to anyone who reaches it, so he opens every connection in a thread
of its own with a short deadline for its hello (:meth:`BobEnd.run`): a connection that
never says anything, or sends frames it should not (:mod:`.lanes`), ends without
delaying the one being served or Alice's next one.

Stopping (:class:`Stop`): a first request finishes the current round, deposit included,
then ends cleanly; a second discards the round at once (the peer sees the connection
close and keeps nothing; a deposit under way is settled by the journals on the next
connection).
"""

from __future__ import annotations

import collections
import contextlib
import os
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
from hybridkex.qkd.distillation.messages import NONCE_SIZE, Hello, Message
from hybridkex.qkd.distillation.session import session_id
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
from hybridkex.qkd.network.lanes import MAX_LANES, LaneChannel, Lanes
from hybridkex.qkd.optics.devices import DetectorDevice, SourceDevice, connect_with_backoff
from hybridkex.qkd.optics.source import AliceTrain

__all__ = ["DEFAULT_LANES", "AliceEnd", "BobEnd", "Discarded", "EndSettings", "RoundReport", "Stop"]

ROUND_TIMEOUT_S = 120.0
OPEN_TIMEOUT_S = 30.0
HELLO_TIMEOUT_S = 10.0  # a new connection's hello, at Bob: Alice sends it at once
MAX_OPENINGS = 16  # connections waiting for their hello at Bob; a newer drops the oldest
SEEN_HELLOS = 65536  # hello nonces Bob remembers, to refuse a replayed hello
TRAIN_WAIT_S = 5.0  # acknowledged trains are there already; this covers slow hosts
DEFAULT_LANES = 6
DONE, RETIRE, RECONNECT = "done", "retire", "reconnect"  # what a round leaves its lane


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
        out = super().to_json()  # a figure the round did not measure is already None
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


class _End:
    """What both ends share: authentication state per lane, reports, the pool level."""

    role: Role

    def __init__(self, settings: EndSettings, stop: Stop,
                 on_report: Callable[[RoundReport], None],
                 log: Callable[[str], None]) -> None:
        self.s = settings
        self.stop = stop
        self.on_report = on_report
        self.log = log
        self.pools: dict[int, bytes] = {}  # lane -> Wegman-Carter key for its next round
        self.connections = 0
        self.keys_deposited = 0
        self._lock = threading.Lock()
        self._fault: BaseException | None = None

    def _authenticator(self, lane: int) -> tuple[MessageAuthenticator, str]:
        pool = self.pools.pop(lane, b"")  # spent from here on, whatever happens
        if pool:
            return WegmanCarterAuthenticator(AuthKeyPool(pool), self.role), \
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
        with self._lock:
            self.keys_deposited += report.keys_deposited if report.deposit != "none" else 0
            with contextlib.suppress(HybridKexError):
                status = self.s.store.status(self.s.peer)
                report.pool_available_to_take = status.available_to_take
                report.pool_available_to_fetch = status.available_to_fetch
            report.elapsed_s = time.perf_counter() - started
            self.on_report(report)

    def _carry(self, lane: int, auth: MessageAuthenticator, result: DistillationResult) -> None:
        leftover = auth.leftover() if isinstance(auth, WegmanCarterAuthenticator) else b""
        self.pools[lane] = leftover + result.auth_reserve

    def _lanes(self, lanes: Lanes, numbers: range,
               body: Callable[[Lanes, int], None]) -> None:
        """Run ``body(lanes, n)`` for every lane in a thread of its own; wait for all.  An
        unexpected error in one closes the connection and is raised here."""

        def run(n: int) -> None:
            try:
                body(lanes, n)
            except LinkAborted:
                lanes.close()
            except BaseException as exc:  # a fault of this end: end the connection
                with self._lock:
                    self._fault = self._fault or exc
                lanes.close()

        threads = [threading.Thread(target=run, args=(n,), name=f"qkd-lane-{n}", daemon=True)
                   for n in numbers]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        finally:
            lanes.close()
            for t in threads:
                t.join(5)
        fault, self._fault = self._fault, None
        if fault is not None:
            raise fault
        if lanes.fault is not None:  # the peer sent what this end must not hold
            raise lanes.fault


class AliceEnd(_End):
    """The connecting end: it sends the pulses and leads every round and deposit.

    ``lanes`` rounds run side by side (:mod:`.lanes`), so the classical round-trip time
    is hidden behind the other lanes' work.
    """

    role = Role.ALICE

    def __init__(self, settings: EndSettings, address: tuple[str, int], source: SourceDevice,
                 pulses: int, stop: Stop, on_report: Callable[[RoundReport], None],
                 log: Callable[[str], None], rounds: int | None = None,
                 target_keys: int | None = None, lanes: int = DEFAULT_LANES) -> None:
        super().__init__(settings, stop, on_report, log)
        if not 1 <= lanes <= MAX_LANES:
            raise HybridKexError(f"the link runs 1 to {MAX_LANES} lanes")
        self.address, self.source, self.pulses = address, source, pulses
        self.rounds_limit, self.target_keys, self.lane_count = rounds, target_keys, lanes
        self.rounds = 0     # rounds started
        self.reserved = 0   # rounds started or about to be

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
            self.pools = {}
            lanes = Lanes(sock, read=self.lane_count)
            try:
                self._connection(lanes)
            except LinkAborted as exc:
                if not self.stop():
                    self.log(f"connection {self.connections} ended: {exc.reason}")
            finally:
                lanes.close()
            if not self.done() and not self.stop():
                self.stop.requested.wait(0.2)

    def _retry(self, exc: OSError, delay: float) -> None:
        if delay >= 1.0:
            self.log(f"cannot reach Bob at {self.address[0]}:{self.address[1]} "
                     f"({exc.strerror or exc}); retrying in {delay:.1f} s")

    def _connection(self, lanes: Lanes) -> None:
        opening = lanes.lane(0)
        opening.timeout_s = OPEN_TIMEOUT_S
        chan = LinkChannel(opening, self.s.signatures(), Role.ALICE)
        nonce = os.urandom(NONCE_SIZE)
        chan.session_id = nonce
        chan.send(LinkHello(nonce, self.s.site, self.s.peer))
        state = chan.recv(LinkState)
        lanes.opened()
        chan.session_id = session_id(nonce, state.nonce)
        self._check_journals(state.entries)
        open_rounds = self.s.deposit.alice_open()
        added = self.s.deposit.lead(chan, open_rounds, complete=True)
        if open_rounds or state.entries:
            self.log(f"settled {len(set(open_rounds) | {e.round_id for e in state.entries})} "
                     f"unfinished deposit(s) from the journals: {added} keys added here")
        self._lanes(lanes, range(1, self.lane_count + 1), self._lane)

    def _check_journals(self, bob: tuple[JournalEntry, ...]) -> None:
        for entry in bob:
            mine = self.s.deposit.journal.digest(entry.round_id)
            if mine is not None and mine != entry.digest:
                raise DepositMismatch("the two journals disagree about a round's keys")

    def _reserve(self) -> bool:
        with self._lock:
            if self.stop() or self.done() or (self.rounds_limit is not None
                                              and self.reserved >= self.rounds_limit):
                return False
            self.reserved += 1
            return True

    def _lane(self, lanes: Lanes, number: int) -> None:
        transport = lanes.lane(number)
        transport.timeout_s = ROUND_TIMEOUT_S
        while not lanes.closed.is_set():
            if not self._reserve():
                self._bye(transport, number, "Alice stops" if self.stop() else "Alice is done")
                return
            ready = None
            while ready is None and not lanes.closed.is_set() and not self.stop():
                ready = self.source.next_train(0.5)
            if ready is None:
                with self._lock:
                    self.reserved -= 1
                continue
            outcome = self._round(transport, number, ready.record, ready.distance_km,
                                  ready.emitted_s)
            if outcome == RECONNECT:
                lanes.close()
            if outcome != DONE:
                return

    def _bye(self, transport: LaneChannel, lane: int, reason: str) -> None:
        auth, _ = self._authenticator(lane)
        chan = LinkChannel(transport, auth, Role.ALICE, session_id=os.urandom(NONCE_SIZE))
        with contextlib.suppress(LinkAborted):
            chan.send(Bye(reason))

    def _round(self, transport: LaneChannel, lane: int, train: AliceTrain, distance_km: float,
               emitted_s: float) -> str:
        started = time.perf_counter()
        auth, mode = self._authenticator(lane)
        chan = LinkChannel(transport, auth, Role.ALICE, session_id=train.train)
        data = train.alice_data()
        with self._lock:
            self.rounds += 1
            number = self.rounds
        report = self._report(number, train.train, train.slots, distance_km)
        report.simulation_s, report.auth_mode = emitted_s, mode
        try:
            chan.send(RoundStart(train.train, train.slots, distance_km, number))
        except LinkAborted:
            with self._lock:
                self.rounds -= 1  # the round never started
                self.reserved -= 1
            raise
        result = run_alice(chan, data, self.s.config, _first_nonce(train.train))
        _fill(report, result)
        if result.aborted:
            report.aborted, report.abort_reason = True, result.abort_reason
            self._finish(report, chan, auth, started)
            return RETIRE
        keys = stored_keys(result.key_material, result.key_ids, self.s.site, self.s.peer)
        round_id = chan.session_id or b""
        try:
            self.s.deposit.decide(chan, round_id, keys)
        except LinkAborted as exc:
            chan.abort(f"deposit: {exc.reason}")
            report.aborted, report.abort_reason = True, f"deposit: {exc.reason}"
            self._finish(report, chan, auth, started)
            return RECONNECT
        report.deposit = "pending"
        report.keys_deposited = len(keys)
        report.key_ids = list(result.key_ids)
        try:
            self.s.deposit.lead(chan, (round_id,), complete=False)
        except LinkAborted as exc:
            chan.abort(f"deposit: {exc.reason}")
            report.abort_reason = f"deposit completes on the next connection ({exc.reason})"
            self._finish(report, chan, auth, started)
            return RECONNECT
        report.deposit = "done"
        report.auth_reserve_bits = 8 * len(result.auth_reserve)
        self._carry(lane, auth, result)
        self._finish(report, chan, auth, started)
        return DONE


class BobEnd(_End):
    """The listening end: it detects the pulses and follows Alice's lead, in every lane
    she opens."""

    role = Role.BOB

    def __init__(self, settings: EndSettings, server: socket.socket, detector: DetectorDevice,
                 stop: Stop, on_report: Callable[[RoundReport], None],
                 log: Callable[[str], None]) -> None:
        super().__init__(settings, stop, on_report, log)
        self.server, self.detector = server, detector
        self._openings: collections.OrderedDict[Lanes, None] = collections.OrderedDict()
        self._hellos: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._current: Lanes | None = None  # the connection verified last
        self._serving = threading.Lock()  # held by the connection being served
        self._crash: BaseException | None = None

    def run(self) -> None:
        """Accept Alice's connections until stopped; when stopped, let the connection
        being served finish its rounds (:class:`Stop`).

        Each new connection is opened in a thread of its own, with
        :data:`HELLO_TIMEOUT_S` to send a valid hello, so a connection that says
        nothing holds neither the port nor the connection being served.  At most
        :data:`MAX_OPENINGS` wait at once (a newer one drops the oldest).  A connection
        whose hello verifies (Alice's signature, a nonce not seen before) replaces the
        one being served: Alice reconnects only when she has given that one up.
        """
        self.server.settimeout(0.2)
        threads: list[threading.Thread] = []
        try:
            while not self.stop():
                if self._crash is not None:
                    raise self._crash
                try:
                    sock, peer = self.server.accept()
                except TimeoutError:
                    continue
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                lanes = Lanes(sock)
                with self._lock:
                    self._openings[lanes] = None
                    dropped = list(self._openings)[:-MAX_OPENINGS]
                for old in dropped:
                    old.close()
                thread = threading.Thread(target=self._open, args=(lanes, str(peer[0])),
                                          name="qkd-opening", daemon=True)
                thread.start()
                threads = [t for t in threads if t.is_alive()] + [thread]
        finally:
            with self._lock:
                waiting = list(self._openings)
            for lanes in waiting:
                lanes.close()
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        if self._crash is not None:
            raise self._crash

    def _open(self, lanes: Lanes, host: str) -> None:
        """One connection, from its hello to its end (in its own thread)."""
        try:
            self._opening(lanes, host)
        except LinkAborted as exc:
            if not self.stop():
                self.log(f"connection from {host} ended: {exc.reason}")
        except BaseException as exc:  # a fault of this end: run() raises it
            with self._lock:
                self._crash = self._crash or exc
        finally:
            with self._lock:
                self._openings.pop(lanes, None)
                if self._current is lanes:
                    self._current = None
            lanes.close()

    def _opening(self, lanes: Lanes, host: str) -> None:
        opening = lanes.lane(0)
        opening.timeout_s = HELLO_TIMEOUT_S
        chan = LinkChannel(opening, self.s.signatures(), Role.BOB)
        hello = chan.recv(LinkHello)
        if (hello.alice_site, hello.bob_site) != (self.s.peer, self.s.site):
            raise LinkAborted(f"a link from {hello.alice_site} to {hello.bob_site}, but this "
                              f"end is {self.s.site} waiting for {self.s.peer}")
        with self._lock:
            if hello.nonce in self._hellos:
                raise LinkAborted("a link hello this end has seen before (replayed)")
            self._hellos[hello.nonce] = None
            while len(self._hellos) > SEEN_HELLOS:
                self._hellos.popitem(last=False)
            self._openings.pop(lanes, None)  # verified: no newcomer drops it any more
            replaced, self._current = self._current, lanes
        lanes.opened()
        if replaced is not None:
            self.log("a new connection from the peer replaces the one being served")
            replaced.close()
        with self._serving:  # the replaced connection has ended once this is held
            if lanes.closed.is_set() or self.stop():
                return  # replaced in turn while it waited, or stopping
            self.connections += 1
            self.pools = {}
            try:
                self._connection(lanes, chan, hello)
            except LinkAborted as exc:
                if not self.stop():
                    self.log(f"connection {self.connections} from {host} ended: "
                             f"{exc.reason}")

    def _connection(self, lanes: Lanes, chan: LinkChannel, hello: LinkHello) -> None:
        lanes.lane(0).timeout_s = OPEN_TIMEOUT_S
        nonce = os.urandom(NONCE_SIZE)
        entries = tuple(JournalEntry(r, state, digest)
                        for r, state, digest in self.s.deposit.journal.open_rounds())
        chan.send(LinkState(nonce, entries))
        chan.session_id = session_id(hello.nonce, nonce)
        added = self.s.deposit.follow(chan, chan.recv(Commit))
        if entries:
            self.log(f"settled {len(entries)} unfinished deposit(s) from the journals: "
                     f"{added} keys added here")
        self._lanes(lanes, range(1, MAX_LANES + 1), self._lane)

    def _lane(self, lanes: Lanes, number: int) -> None:
        transport = lanes.lane(number)
        transport.timeout_s = ROUND_TIMEOUT_S
        while transport.wait(self.stop):
            auth, mode = self._authenticator(number)
            chan = LinkChannel(transport, auth, Role.BOB)
            started = time.perf_counter()
            try:
                first = chan.recv_any({RoundStart: False, Bye: False})
            except LinkAborted:
                return  # nothing sensible in this lane any more: retire it
            if isinstance(first, Bye):
                return
            assert isinstance(first, RoundStart)
            if not self._round(chan, number, auth, mode, first, started):
                return  # an aborted round retires its lane

    def _round(self, chan: LinkChannel, lane: int, auth: MessageAuthenticator, mode: str,
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
        report.keys_deposited = len(keys)
        try:
            self.s.deposit.prepare(chan, round_id, keys)
            report.deposit = "pending"
            self.s.deposit.follow(chan, chan.recv(Commit))
        except LinkAborted as exc:
            report.abort_reason = f"deposit settles on the next connection ({exc.reason})"
            self._finish(report, chan, auth, started)
            return False
        report.deposit = "done"
        report.key_ids = list(result.key_ids)
        report.auth_reserve_bits = 8 * len(result.auth_reserve)
        self._carry(lane, auth, result)
        self._finish(report, chan, auth, started)
        return True
