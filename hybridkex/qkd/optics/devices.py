"""The optical devices on the network: Alice's source, the fibre, Bob's detector (simulated).

Each runs in a thread of its process and talks TCP (frames of
:class:`~hybridkex.qkd.distillation.transport.SocketChannel`, messages of :mod:`.wire`):

- :class:`DetectorDevice` listens (Bob's host).  On each connection it first sends its
  :class:`~.wire.DeviceHello`, then registers every train it receives.  Bob's
  distillation end asks for a train by its ID (:meth:`DetectorDevice.train`).  A new
  connection replaces the one before only once it has sent the first block of a train
  (within :data:`FIRST_FRAME_S`), and never while a train is arriving on the one
  before (a block came in the last :data:`STALLED_S`): whoever can reach the port
  cannot cut the source's trains by connecting.
- :class:`SourceDevice` connects (Alice's host), straight to the detector or to a
  :class:`FibreDevice`, reconnecting with back-off.  It emits trains back to back, paced
  by its clock, and offers each one the detector acknowledged whole to Alice's
  distillation end (:meth:`SourceDevice.next_train`): the quantum phase of the next
  rounds runs while the current ones are distilled, as a real source runs continuously.
- :class:`FibreDevice` (``hybridkex qkd fiber``) listens for the source and connects to
  the detector; Eve, if any, acts here.

Anything malformed ends that connection; the detector marks the train it was receiving
as broken, so the round that asks for it aborts with a
:class:`~hybridkex.qkd.errors.QuantumChannelError`.

What a sender can make the detector hold is bounded: a train of more than
``max_pulses`` slots is refused, and the clicks of the train arriving plus those of the
trains kept for Bob's rounds (at most :data:`KEPT_TRAINS`) stay within ``memory_bytes``
(plus one block, at most :data:`~.wire.MAX_BLOCK_SLOTS` clicks): kept trains go oldest
first to make room, and a train that alone would hold more is refused.

The source refuses what it should not emit: a fibre of another length than it was
given, or a transmittance downstream that would make a train's record too large for
the memory budget (``check``).  Either is a :class:`Misconfigured` error, logged, and the
source tries again with back-off, as after a dropped connection: the hellos are not
authenticated, so a forged one must not end Alice's process.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hybridkex.errors import InvalidParameter
from hybridkex.qkd.distillation.data import BobData
from hybridkex.qkd.distillation.transport import SocketChannel
from hybridkex.qkd.errors import ChannelClosed, QuantumChannelError
from hybridkex.qkd.optics.detector import BobTrain, Detector
from hybridkex.qkd.optics.fibre import Fibre, FibreStats, transmittance
from hybridkex.qkd.optics.source import AliceTrain, PulseSource
from hybridkex.qkd.optics.wire import (
    DETECTOR,
    FIBRE,
    DeviceHello,
    PulseBlock,
    TrainEnd,
    TrainReceived,
    decode,
)
from hybridkex.qkd.parameters import Eavesdropper, LinkParameters

__all__ = [
    "DetectorDevice",
    "FibreDevice",
    "Misconfigured",
    "ReadyTrain",
    "SourceDevice",
    "connect_with_backoff",
    "listen",
]

BLOCK_SLOTS = 1 << 22
KEPT_TRAINS = 20  # more than the lanes a link runs, so no train waiting for one goes
#: the longest train the detector takes by default (20 rounds of the CLI's default size)
MAX_TRAIN_PULSES = 10**10
KEPT_BROKEN = 4096  # reasons of broken trains kept (a few bytes each)
#: the clicks the detector holds by default, the train arriving and the trains kept
DETECTOR_MEMORY_BYTES = 512 << 20
FIRST_FRAME_S = 10.0  # a new quantum connection's first pulse block comes within this
STALLED_S = 10.0  # a train from which no block came for this long is not arriving
MAX_WAITING = 16  # quantum connections waiting for their first block; newer drops oldest
RETRY_MAX_S = 5.0  # the source's longest back-off after a misconfigured connection
Address = tuple[str, int]


def listen(address: Address) -> socket.socket:
    """A listening socket that a restarted process can bind again at once (SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(address)
    server.listen(8)
    return server


def connect_with_backoff(address: Address, stop: threading.Event,
                         first_delay_s: float = 0.05, max_delay_s: float = 1.0,
                         on_retry: Callable[[OSError, float], None] | None = None,
                         ) -> socket.socket | None:
    """Connect, retrying with exponential back-off until ``stop`` is set (then None)."""
    delay = first_delay_s
    while not stop.is_set():
        try:
            sock = socket.create_connection(address, timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(None)
            return sock
        except OSError as exc:
            if on_retry is not None:
                on_retry(exc, delay)
            stop.wait(delay)
            delay = min(2 * delay, max_delay_s)
    return None


class Misconfigured(QuantumChannelError):
    """The optical devices do not fit together: a fibre of another length than the link
    was told, or a transmittance that would not fit the memory budget.  The source logs
    it and tries again with back-off (the device hello is not authenticated)."""


def _close(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()


def _read_hello(channel: SocketChannel) -> DeviceHello:
    message = decode(channel.recv())
    if not isinstance(message, DeviceHello):
        raise QuantumChannelError("malformed quantum frame: expected the device hello")
    return message


# -- Bob's detector -------------------------------------------------------------------------


class DetectorDevice:
    """Bob's receiver on ``address``; :meth:`train` hands a registered train to Bob."""

    def __init__(self, address: Address, params: LinkParameters,
                 rng: np.random.Generator | None = None,
                 log: Callable[[str], None] | None = None,
                 max_pulses: int = MAX_TRAIN_PULSES,
                 memory_bytes: int = DETECTOR_MEMORY_BYTES) -> None:
        if max_pulses < 1 or memory_bytes < 1:
            raise InvalidParameter("the detector's limits must be positive")
        self.detector = Detector(params.eta_bob, params.y0, params.e_detector, params.p_z, rng)
        self.max_pulses, self.memory_bytes = max_pulses, memory_bytes
        self._server = listen(address)
        self.address: Address = self._server.getsockname()[:2]
        self._log = log or (lambda _: None)
        self._lock = threading.Condition()
        self._trains: collections.OrderedDict[bytes, BobTrain] = collections.OrderedDict()
        self._broken: collections.OrderedDict[bytes, str] = collections.OrderedDict()
        self._seen: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._kept_bytes = 0  # clicks of the trains in self._trains
        self._current: socket.socket | None = None  # the connection trains come from
        self._arriving = False  # a train is under way on it
        self._last_block = 0.0  # when its last block came (time.monotonic())
        self._waiting: collections.OrderedDict[socket.socket, None] = collections.OrderedDict()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="qkd-detector", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _peer = self._server.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._waiting[sock] = None
                dropped = list(self._waiting)[:-MAX_WAITING]
            for old in dropped:
                _close(old)
            threading.Thread(target=self._serve, args=(sock,), name="qkd-detector-in",
                             daemon=True).start()

    def _take(self, sock: socket.socket) -> None:
        """Make ``sock`` (which has sent a train's first block) the connection trains come
        from, unless a train is arriving on the current one."""
        with self._lock:
            self._waiting.pop(sock, None)
            now = time.monotonic()
            if self._current is not None and self._arriving \
                    and now - self._last_block < STALLED_S:
                raise QuantumChannelError("a second quantum connection while a pulse train "
                                          "is arriving on the first: refused")
            old, self._current = self._current, sock
            self._arriving, self._last_block = True, now
        _close(old)

    def _mark(self, sock: socket.socket, arriving: bool) -> None:
        with self._lock:
            if self._current is sock:
                self._arriving, self._last_block = arriving, time.monotonic()

    def _serve(self, sock: socket.socket) -> None:
        channel = SocketChannel(sock)
        current: BobTrain | None = None
        try:
            channel.send(DeviceHello(DETECTOR, self.detector.eta_bob, 0.0).encode())
            sock.settimeout(FIRST_FRAME_S)
            first = decode(channel.recv())
            sock.settimeout(None)
            if not isinstance(first, PulseBlock) or first.number != 0 or first.start != 0:
                raise QuantumChannelError("malformed quantum frame: a connection must start "
                                          "with the first block of a train")
            self._take(sock)
            message: object = first
            while True:
                if message is None:
                    message = decode(channel.recv())
                if isinstance(message, PulseBlock):
                    if current is None or message.train != current.train:
                        if current is not None:
                            self._finish(current.train, "the pulse train was cut off")
                        if message.number != 0 or message.start != 0:
                            raise QuantumChannelError(
                                "malformed quantum frame: a train starts in its middle")
                        current = self._begin(message.train)
                    if message.number != current.blocks or message.start != current.slots:
                        raise QuantumChannelError(
                            "malformed quantum frame: pulse blocks out of order")
                    if message.start + message.slots > self.max_pulses:
                        raise QuantumChannelError(
                            f"a pulse train longer than {self.max_pulses} pulses, the most "
                            "this detector takes")
                    self.detector.detect(message, current)
                    self._within_memory(current)
                    self._mark(sock, True)
                elif isinstance(message, TrainEnd):
                    if current is None or message.train != current.train or (
                            message.slots, message.blocks) != (current.slots, current.blocks):
                        raise QuantumChannelError(
                            "malformed quantum frame: the train end does not match its train")
                    whole, current = current, None
                    self._mark(sock, False)
                    self._finish(whole.train, whole)
                    channel.send(TrainReceived(whole.train).encode())
                else:
                    raise QuantumChannelError("malformed quantum frame: a device hello "
                                              "from upstream")
                message = None
        except (QuantumChannelError, ChannelClosed) as exc:
            if current is not None:
                self._finish(current.train, exc.reason)
            if isinstance(exc, QuantumChannelError):
                self._log(f"quantum channel: {exc.reason}")
        finally:
            with self._lock:
                self._waiting.pop(sock, None)
                if self._current is sock:
                    self._current, self._arriving = None, False
            _close(sock)

    def _within_memory(self, train: BobTrain) -> None:
        """Make room for the clicks of the train arriving, dropping the oldest kept trains
        first; refuse it once it alone would hold more than ``memory_bytes``."""
        size = train.detections.nbytes
        if size > self.memory_bytes:
            raise QuantumChannelError(
                f"a pulse train with more clicks than the detector holds "
                f"({self.memory_bytes >> 20} MiB)")
        with self._lock:
            self._evict(self.memory_bytes - size)

    def _begin(self, train: bytes) -> BobTrain:
        with self._lock:
            if train in self._seen:
                raise QuantumChannelError("malformed quantum frame: a pulse train repeated")
            self._seen[train] = None
            while len(self._seen) > 4096:
                self._seen.popitem(last=False)
        return BobTrain(train)

    def _evict(self, room: int) -> None:
        """Drop the oldest kept trains until at most :data:`KEPT_TRAINS` are kept, in at
        most ``room`` bytes (the lock is held)."""
        while self._trains and (len(self._trains) > KEPT_TRAINS or self._kept_bytes > room):
            _, gone = self._trains.popitem(last=False)
            self._kept_bytes -= gone.detections.nbytes

    def _finish(self, train: bytes, outcome: BobTrain | str) -> None:
        """Keep ``outcome`` for the round that asks for it.  A broken train is kept apart
        (its reason only), so broken ones never push out trains waiting for a round."""
        with self._lock:
            if isinstance(outcome, str):
                self._broken[train] = outcome
                while len(self._broken) > KEPT_BROKEN:
                    self._broken.popitem(last=False)
            else:
                self._trains[train] = outcome
                self._kept_bytes += outcome.detections.nbytes
                self._evict(self.memory_bytes)
            self._lock.notify_all()

    def train(self, train: bytes, slots: int, timeout_s: float) -> BobData:
        """The clicks of ``train`` (waiting up to ``timeout_s`` for it to arrive whole);
        each train is handed out once."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while train not in self._trains and train not in self._broken:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    raise QuantumChannelError("the pulse train of this round never arrived "
                                              "whole at Bob's detector")
                self._lock.wait(min(left, 0.5))
            outcome: BobTrain | str
            if train in self._broken:
                outcome = self._broken.pop(train)
            else:
                outcome = self._trains.pop(train)
                self._kept_bytes -= outcome.detections.nbytes
        if isinstance(outcome, str):
            raise QuantumChannelError(f"the pulse train of this round is unusable: {outcome}")
        if outcome.slots != slots:
            raise QuantumChannelError(f"Alice announces {slots} pulses, Bob's detector "
                                      f"registered {outcome.slots} slots")
        return outcome.bob_data()

    def close(self) -> None:
        self._stop.set()
        _close(self._server)
        with self._lock:
            _close(self._current)
            self._lock.notify_all()


# -- Alice's source ------------------------------------------------------------------------


@dataclass
class ReadyTrain:
    """A train the source emitted whole, for Alice's distillation end."""

    record: AliceTrain
    distance_km: float
    emitted_s: float


class SourceDevice:
    """Alice's transmitter: connects to ``target`` and emits trains of ``pulses`` slots.

    ``distance_km`` is the fibre this device emulates itself when it is connected straight
    to Bob's detector; behind a ``qkd fiber`` the fibre's own length applies and
    ``distance_km`` must be None or equal to it.  ``clock_hz`` paces the emission
    (None: as fast as it goes).  ``check``, if given, is called with the transmittance
    the element downstream asks the source to apply, before any pulse is emitted on
    that connection, and raises :class:`~hybridkex.errors.InvalidParameter` to refuse
    it (the memory budget: Alice's record of a train grows with the pulses that leave
    with light).
    """

    def __init__(self, target: Address, params: LinkParameters, pulses: int,
                 distance_km: float | None = None, clock_hz: float | None = None,
                 ahead: int = 1, rng: np.random.Generator | None = None,
                 log: Callable[[str], None] | None = None,
                 check: Callable[[float], None] | None = None) -> None:
        self.target, self.params, self.pulses = target, params, pulses
        self.distance_km, self.clock_hz = distance_km, clock_hz
        self._rng = rng if rng is not None else np.random.default_rng()
        self._log = log or (lambda _: None)
        self._check = check
        self._ready: queue.Queue[ReadyTrain] = queue.Queue(maxsize=max(1, ahead))
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self.refusals = 0  # connections refused as Misconfigured
        self.emitted_pulses = 0
        self.busy_s = 0.0
        self._thread = threading.Thread(target=self._run, name="qkd-source", daemon=True)
        self._thread.start()

    def next_train(self, timeout_s: float | None = None) -> ReadyTrain | None:
        """The oldest complete train not yet used (None if none came in ``timeout_s``)."""
        try:
            return self._ready.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def _run(self) -> None:
        delay = 0.0  # the back-off after a misconfigured connection
        while not self._stop.is_set():
            sock = connect_with_backoff(self.target, self._stop)
            if sock is None:
                return
            self._sock = sock
            try:
                channel = SocketChannel(sock)
                hello = _read_hello(channel)
                source, distance = self._configure(hello)
                delay = 0.0
                pending: dict[bytes, ReadyTrain] = {}
                room = threading.Semaphore(2)  # trains sent and not yet acknowledged
                acks = threading.Thread(target=self._acks, args=(channel, pending, room),
                                        name="qkd-source-acks", daemon=True)
                acks.start()
                while not self._stop.is_set():
                    while not room.acquire(timeout=0.2):
                        if self._stop.is_set() or not acks.is_alive():
                            raise ChannelClosed("the detector stopped acknowledging")
                    self._emit(channel, source, distance, pending)
            except Misconfigured as exc:
                self.refusals += 1
                delay = min(RETRY_MAX_S, 2 * delay or 0.1)
                self._log(f"quantum channel: {exc.reason}; trying again in {delay:.1f} s")
                _close(sock)
                self._stop.wait(delay)
            except QuantumChannelError as exc:
                self._log(f"quantum channel: {exc.reason}")
            except ChannelClosed:
                pass
            finally:
                _close(sock)
                self._sock = None
            self._stop.wait(0.05)

    def _configure(self, hello: DeviceHello) -> tuple[PulseSource, float]:
        p = self.params
        if hello.kind == FIBRE:
            if self.distance_km is not None and abs(self.distance_km - hello.distance_km) > 1e-9:
                raise Misconfigured(
                    f"the fibre is {hello.distance_km:g} km long, but this link was given "
                    f"--distance-km {self.distance_km:g}")
            tau, distance = hello.transmittance, hello.distance_km
        else:
            distance = p.distance_km if self.distance_km is None else self.distance_km
            tau = max(transmittance(distance, p.alpha_db_per_km) * hello.transmittance, 1e-300)
        if self._check is not None:
            try:
                self._check(tau)
            except InvalidParameter as exc:
                raise Misconfigured(f"the {'fibre' if hello.kind == FIBRE else 'detector'} "
                                    f"asks for a transmittance of {tau:.3g}: {exc}") from None
        return PulseSource(p, tau, self._rng), distance

    def _acks(self, channel: SocketChannel, pending: dict[bytes, ReadyTrain],
              room: threading.Semaphore) -> None:
        """Offer each train once the detector acknowledges it whole (oldest first)."""
        try:
            while not self._stop.is_set():
                message = decode(channel.recv())
                if not isinstance(message, TrainReceived):
                    raise QuantumChannelError("malformed quantum frame: expected a train "
                                              "acknowledgement")
                ready = pending.pop(message.train, None)
                if ready is None:
                    raise QuantumChannelError("malformed quantum frame: an acknowledgement "
                                              "of a train never sent")
                room.release()
                while not self._stop.is_set():
                    try:
                        self._ready.put(ready, timeout=0.2)
                        break
                    except queue.Full:
                        continue
        except (QuantumChannelError, ChannelClosed) as exc:
            if isinstance(exc, QuantumChannelError):
                self._log(f"quantum channel: {exc.reason}")
            _close(self._sock)

    def _emit(self, channel: SocketChannel, source: PulseSource, distance: float,
              pending: dict[bytes, ReadyTrain]) -> None:
        train = source.new_train()
        started = time.monotonic()
        while train.slots < self.pulses:
            if self._stop.is_set():
                return
            slots = min(BLOCK_SLOTS, self.pulses - train.slots)
            work = time.perf_counter()
            block = source.block(train, slots)
            channel.send(block.encode())
            self.busy_s += time.perf_counter() - work
            self.emitted_pulses += slots
            if self.clock_hz:
                lag = started + train.slots / self.clock_hz - time.monotonic()
                if lag > 0:
                    self._stop.wait(lag)
        pending[train.train] = ReadyTrain(train, distance, time.monotonic() - started)
        channel.send(TrainEnd(train.train, train.slots, len(train.blocks)).encode())

    def close(self) -> None:
        self._stop.set()
        _close(self._sock)
        self._thread.join(5)


# -- the fibre ------------------------------------------------------------------------------


class FibreDevice:
    """``hybridkex qkd fiber``: listens for the source on ``listen_at``, connects to the
    detector at ``target``, and carries the light through :class:`~.fibre.Fibre`."""

    def __init__(self, listen_at: Address, target: Address, distance_km: float,
                 alpha_db_per_km: float, eve: Eavesdropper | None = None,
                 rng: np.random.Generator | None = None,
                 on_train: Callable[[bytes, int, FibreStats], None] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.distance_km, self.alpha = distance_km, alpha_db_per_km
        self.eve = eve
        self.target = target
        self._rng = rng if rng is not None else np.random.default_rng()
        self._server = listen(listen_at)
        self.address: Address = self._server.getsockname()[:2]
        self._on_train = on_train or (lambda *_: None)
        self._log = log or (lambda _: None)
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []

    def serve_forever(self) -> None:
        """Until :meth:`close`: accept the source, connect downstream, carry the light.

        The source is accepted first: the detector gives a new connection only
        :data:`FIRST_FRAME_S` to send its first block, so the fibre connects to it once
        there is light to carry."""
        while not self._stop.is_set():
            up = self._accept()
            if up is None:
                return
            self._socks = [up]
            try:
                down = connect_with_backoff(self.target, self._stop)
                if down is None:
                    return
                self._socks.append(down)
                downstream = SocketChannel(down)
                hello = _read_hello(downstream)
                fibre = Fibre(self.distance_km, self.alpha, hello.transmittance,
                              self.eve, self._rng)
                upstream = SocketChannel(up)
                upstream.send(DeviceHello(FIBRE, fibre.upstream_transmittance,
                                          self.distance_km + hello.distance_km).encode())
                self._carry(upstream, downstream, fibre)
            except QuantumChannelError as exc:
                self._log(f"quantum channel: {exc.reason}")
            except ChannelClosed:
                pass
            finally:
                for s in self._socks:
                    _close(s)
                self._socks = []

    def _accept(self) -> socket.socket | None:
        self._server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                sock, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return None
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        return None

    def _acks(self, downstream: SocketChannel, upstream: SocketChannel) -> None:
        """Carry the detector's acknowledgements back to the source."""
        try:
            while not self._stop.is_set():
                raw = downstream.recv()
                if not isinstance(decode(raw), TrainReceived):
                    raise QuantumChannelError("malformed quantum frame: expected a train "
                                              "acknowledgement")
                upstream.send(raw)
        except (QuantumChannelError, ChannelClosed):
            for s in list(self._socks):
                _close(s)

    def _carry(self, upstream: SocketChannel, downstream: SocketChannel, fibre: Fibre) -> None:
        threading.Thread(target=self._acks, args=(downstream, upstream), name="qkd-fibre-acks",
                         daemon=True).start()
        while not self._stop.is_set():
            raw = upstream.recv()
            message = decode(raw)
            if isinstance(message, PulseBlock):
                downstream.send(fibre.transmit(message).encode())
            elif isinstance(message, TrainEnd):
                downstream.send(raw)
                self._on_train(message.train, message.slots, fibre.stats.reset())
            else:
                raise QuantumChannelError("malformed quantum frame: a device hello from "
                                          "upstream")

    def close(self) -> None:
        self._stop.set()
        _close(self._server)
        for s in list(self._socks):
            _close(s)
