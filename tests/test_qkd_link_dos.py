"""What a stranger who can reach the link's ports (no key, no signature) can make either
end hold or block, and what it cannot: each case of the attacker review of the two-host
link (issue 13), against the ends and devices in this process over real sockets.

Waits are bounded (a deadline on a condition, a socket timeout), never a measured time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from hybridkex.cli.qkd_link import _budget_check
from hybridkex.qkd.budget import BudgetExceeded
from hybridkex.qkd.distillation import DistillationConfig
from hybridkex.qkd.errors import ChannelClosed, QuantumChannelError
from hybridkex.qkd.network import lanes as lanes_module
from hybridkex.qkd.network.lanes import OPENING_BYTES, Lanes
from hybridkex.qkd.optics.devices import DetectorDevice, SourceDevice, listen
from hybridkex.qkd.optics.fibre import transmittance
from hybridkex.qkd.optics.wire import FIBRE, DeviceHello, PulseBlock, TrainEnd, decode
from hybridkex.qkd.parameters import finite_key_parameters
from tests.qkd_ends import (
    DISTANCE_KM,
    Address,
    drain_and_compare,
    link,
    make_sites,
    recv_exactly,
)

pytestmark = pytest.mark.time_limit(180)

PARAMS = finite_key_parameters(distance_km=DISTANCE_KM)


def _frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def _until(condition: Callable[[], bool], deadline_s: float = 30.0) -> bool:
    """Wait for ``condition`` (polled), at most ``deadline_s``; whether it came true."""
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def _closed_by_peer(sock: socket.socket, deadline_s: float = 20.0) -> bool:
    """Whether the peer closes ``sock`` (reads to the end) within ``deadline_s``."""
    sock.settimeout(deadline_s)
    try:
        while sock.recv(1 << 16):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


@contextlib.contextmanager
def _pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    try:
        yield a, b
    finally:
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.close()


# -- 1. the classical port's memory ----------------------------------------------------


def test_before_the_opening_only_lane_0_is_accepted() -> None:
    with _pair() as (mine, theirs):
        lanes = Lanes(mine)
        theirs.sendall(_frame(bytes([16]) + bytes(1000)))
        assert lanes.closed.wait(20)
        assert isinstance(lanes.fault, ChannelClosed)
        assert "before the opening verified the peer" in lanes.fault.reason
        with pytest.raises(ChannelClosed):
            lanes.lane(16).recv()


def test_before_the_opening_frames_and_lane_0_are_small() -> None:
    with _pair() as (mine, theirs):
        lanes = Lanes(mine)
        theirs.sendall(struct.pack(">I", OPENING_BYTES + 1))  # announced, never sent
        assert lanes.closed.wait(20)
        assert isinstance(lanes.fault, ChannelClosed) and "accepts" in lanes.fault.reason
    with _pair() as (mine, theirs):
        lanes = Lanes(mine)
        half = bytes([0]) + bytes(OPENING_BYTES // 2)
        theirs.sendall(_frame(half) * 3)  # nobody reads lane 0 yet
        assert lanes.closed.wait(20)
        assert isinstance(lanes.fault, ChannelClosed)
        assert "has not read" in lanes.fault.reason


def test_a_full_lane_ends_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lanes_module, "LANE_INBOX_BYTES", 1 << 20)
    with _pair() as (mine, theirs):
        lanes = Lanes(mine)
        lanes.opened()
        flood = _frame(bytes([3]) + bytes(1 << 16)) * 40
        threading.Thread(target=_send_quietly, args=(theirs, flood), daemon=True).start()
        assert lanes.closed.wait(20)
        assert isinstance(lanes.fault, ChannelClosed)
        assert "lane 3" in lanes.fault.reason and "has not read" in lanes.fault.reason
        queued = [lanes.lane(3).recv() for _ in range(16)]  # what fitted is still there
        assert all(len(frame) == 1 << 16 for frame in queued)
        with pytest.raises(ChannelClosed):
            lanes.lane(3).recv()  # and then the end


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)


def test_a_frame_for_a_lane_this_end_does_not_run_ends_the_connection() -> None:
    with _pair() as (mine, theirs):
        lanes = Lanes(mine, read=2)
        lanes.opened()
        theirs.sendall(_frame(bytes([2]) + b"fine") + _frame(bytes([5]) + b"nobody reads"))
        assert lanes.closed.wait(20)
        assert isinstance(lanes.fault, ChannelClosed) and "lane 5" in lanes.fault.reason
        assert lanes.lane(2).recv() == b"fine"


def test_bob_drops_a_strangers_frames_at_once_and_the_link_goes_on(tmp_path: Path) -> None:
    """A stranger's frames for lane 16, and a frame of 60 MiB announced on lane 0, end
    that stranger's connection (logged, typed) while Alice's rounds run as usual."""
    outcome: list[str] = []

    def stranger(bob: Address, _quantum: Address, stop: threading.Event) -> None:
        for payload in (_frame(bytes([16]) + bytes(1 << 16)) * 4,
                        struct.pack(">I", 60 << 20) + bytes([0]) + bytes(1 << 16)):
            with socket.create_connection(bob) as s:
                _send_quietly(s, payload)
                outcome.append("closed" if _closed_by_peer(s) else "held open")

    a_dir, b_dir = make_sites(tmp_path)
    with link(a_dir, b_dir, rounds=2, attack=stranger, give_up_s=120) as run:
        assert _until(lambda: len(outcome) == 2)
    assert outcome == ["closed", "closed"]
    assert any("before the opening verified the peer" in line for line in run.log), run.log
    assert any("this end accepts" in line for line in run.log), run.log
    assert len(run.alice) == 2 and not any(r.aborted for r in run.alice + run.bob)
    assert drain_and_compare(a_dir, b_dir) == sum(r.keys_deposited for r in run.alice)


# -- 4. idle connections do not starve the classical port -------------------------------


def test_idle_connections_do_not_keep_alice_out(tmp_path: Path) -> None:
    """Twenty connections that never say anything, renewed as Bob drops them: Alice's
    connection is opened beside them and her round runs."""

    def idle(bob: Address, _quantum: Address, stop: threading.Event) -> None:
        held: list[socket.socket] = []
        while not stop.is_set():
            held = [s for s in held if not _peer_gone(s)]
            with contextlib.suppress(OSError):  # Bob stopped: the test is over
                while len(held) < 20:
                    held.append(socket.create_connection(bob))
            stop.wait(0.05)
        for s in held:
            s.close()

    a_dir, b_dir = make_sites(tmp_path)
    with link(a_dir, b_dir, rounds=1, attack=idle, give_up_s=60) as run:
        pass
    assert len(run.alice) == 1 and not run.alice[0].aborted, (run.alice, run.log)
    assert drain_and_compare(a_dir, b_dir) == run.alice[0].keys_deposited > 0


def _peer_gone(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        gone = sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        gone = True
    if gone:
        sock.close()
    return gone


def test_a_replayed_hello_neither_opens_nor_replaces_a_connection(tmp_path: Path) -> None:
    """Alice's signed hello, recorded and sent again on a new connection, is refused:
    it cannot take the place of Alice's connection."""
    recorded: list[bytes] = []
    replayed: list[str] = []

    def record(n: int, frame: bytes) -> bytes:
        if n == 1:
            recorded.append(frame)
        return frame

    def replay(bob: Address, _quantum: Address, stop: threading.Event) -> None:
        if not _until(lambda: bool(recorded) or stop.is_set()) or stop.is_set():
            return
        with socket.create_connection(bob) as s:
            s.sendall(_frame(recorded[0]))
            replayed.append("closed" if _closed_by_peer(s) else "held open")

    a_dir, b_dir = make_sites(tmp_path)
    with link(a_dir, b_dir, rounds=3, classical=record, attack=replay, give_up_s=120) as run:
        assert _until(lambda: bool(replayed))
    assert replayed == ["closed"]
    assert any("seen before (replayed)" in line for line in run.log), run.log
    assert len(run.alice) == 3 and not any(r.aborted for r in run.alice + run.bob)
    assert {r.connection for r in run.alice} == {1}


# -- 2. and 5. the quantum port ---------------------------------------------------------


def _detector_client(detector: DetectorDevice) -> socket.socket:
    s = socket.create_connection(detector.address)
    s.settimeout(20)
    head = recv_exactly(s, 4)
    assert isinstance(decode(recv_exactly(s, struct.unpack(">I", head)[0])), DeviceHello)
    return s


def _block(train: bytes, number: int, slots: int, lit: int) -> bytes:
    """A pulse block of ``slots`` slots, the first ``lit`` of them bright (every one
    clicks)."""
    offset = np.arange(lit, dtype=np.uint32)
    photons = np.full(lit, 255, np.uint8)
    state = np.zeros(lit, np.uint8)
    return _frame(PulseBlock(train, number, number * slots, slots, offset, photons,
                             state).encode())


def test_the_detector_refuses_a_train_longer_than_its_maximum() -> None:
    log: list[str] = []
    detector = DetectorDevice(("127.0.0.1", 0), PARAMS, log=log.append, max_pulses=1 << 21)
    try:
        train = os.urandom(16)
        with _detector_client(detector) as s:
            for number in range(4):  # 4 blocks of 2^20 slots: twice the maximum
                _send_quietly(s, _block(train, number, 1 << 20, 10))
            assert _closed_by_peer(s)
        assert any("longer than 2097152 pulses" in line for line in log), log
        with pytest.raises(QuantumChannelError, match="unusable"):
            detector.train(train, 1 << 22, 0.0)
    finally:
        detector.close()


def test_the_detector_holds_a_bounded_number_of_clicks() -> None:
    """A train whose clicks alone exceed the detector's memory is refused; kept trains
    make room for a newer one, oldest first."""
    log: list[str] = []
    detector = DetectorDevice(("127.0.0.1", 0), PARAMS, log=log.append,
                              memory_bytes=1 << 20)
    try:
        flood = os.urandom(16)
        with _detector_client(detector) as s:
            for number in range(8):  # every slot clicks
                _send_quietly(s, _block(flood, number, 1 << 18, 1 << 18))
            assert _closed_by_peer(s)
        assert any("more clicks than the detector holds" in line for line in log), log

        trains = [os.urandom(16) for _ in range(3)]
        with _detector_client(detector) as s:
            for train in trains:  # each more than half the memory (4 bytes a click)
                s.sendall(_block(train, 0, 1 << 18, 150_000))
                s.sendall(_frame(TrainEnd(train, 1 << 18, 1).encode()))
                recv_exactly(s, struct.unpack(">I", recv_exactly(s, 4))[0])  # acknowledged
        assert len(detector.train(trains[2], 1 << 18, 0.0).detections) >= 150_000
        for older in trains[:2]:  # each made room for the next
            with pytest.raises(QuantumChannelError, match="never arrived"):
                detector.train(older, 1 << 18, 0.0)
    finally:
        detector.close()


def test_connecting_to_the_detector_does_not_cut_the_sources_trains(tmp_path: Path) -> None:
    """Connections to the detector's port that send nothing, or the first block of a
    train while one of the source's is arriving, do not replace the source's."""
    refused: list[bool] = []

    def hijack(_bob: Address, quantum: Address, stop: threading.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError), socket.create_connection(quantum) as s:
                stop.wait(0.02)  # says nothing
            with contextlib.suppress(OSError), socket.create_connection(quantum) as s:
                s.settimeout(20)
                recv_exactly(s, struct.unpack(">I", recv_exactly(s, 4))[0])
                _send_quietly(s, _block(os.urandom(16), 0, 1 << 20, 5))
                refused.append(_closed_by_peer(s, 2.0))

    a_dir, b_dir = make_sites(tmp_path)
    with link(a_dir, b_dir, rounds=3, attack=hijack, give_up_s=150) as run:
        pass
    assert len(run.alice) == 3, (run.alice, run.log)
    assert not any(r.aborted for r in run.alice + run.bob), (run.alice, run.log)
    assert any("while a pulse train is arriving" in line for line in run.log), run.log
    assert drain_and_compare(a_dir, b_dir) == sum(r.keys_deposited for r in run.alice)


# -- 3. and 6. what the source is told downstream ---------------------------------------


class _FakeFibre:
    """A listener that answers every connection with a fibre hello of its choice."""

    def __init__(self, tau: float, distance_km: float) -> None:
        self.server = listen(("127.0.0.1", 0))
        self.address: Address = self.server.getsockname()[:2]
        self.hello = _frame(DeviceHello(FIBRE, tau, distance_km).encode())
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            with contextlib.suppress(OSError), sock:
                sock.sendall(self.hello)
                sock.settimeout(20)
                while sock.recv(1 << 16):
                    pass

    def close(self) -> None:
        self.server.close()


def test_a_forged_fibre_length_is_logged_and_retried_not_fatal() -> None:
    fibre = _FakeFibre(0.5, 99.0)
    log: list[str] = []
    source = SourceDevice(fibre.address, PARAMS, 1_000_000, DISTANCE_KM, log=log.append)
    try:
        assert _until(lambda: fibre.connections >= 3), (fibre.connections, log)
        assert source.refusals >= 2 and source.emitted_pulses == 0
        assert any("99 km long" in line and "trying again in" in line for line in log), log
    finally:
        source.close()
        fibre.close()


def _budget_args(pulses: int) -> argparse.Namespace:
    return argparse.Namespace(pulses_per_round=pulses, memory_limit_mb=512.0,
                              time_limit_s=3600.0)


def test_the_budget_counts_the_trains_alice_holds_for_her_lanes() -> None:
    """At 0 km a round of 5e8 pulses fits one round's distillation but not the pulse
    trains Alice holds with 6 lanes (each about 11 bytes per pulse with light); fewer
    pulses or fewer lanes fit."""
    honest = transmittance(0.0, PARAMS.alpha_db_per_km) * PARAMS.eta_bob
    with pytest.raises(BudgetExceeded, match="pulse trains Alice holds at once"):
        _budget_check(_budget_args(500_000_000), finite_key_parameters(),
                      DistillationConfig(), lanes=6)(honest)
    _budget_check(_budget_args(50_000_000), finite_key_parameters(), DistillationConfig(),
                  lanes=6)(honest)
    _budget_check(_budget_args(500_000_000), finite_key_parameters(), DistillationConfig(),
                  lanes=6)(transmittance(25.0, PARAMS.alpha_db_per_km) * PARAMS.eta_bob)


def test_the_source_checks_the_memory_budget_at_the_transmittance_asked_for() -> None:
    """A fibre hello asking for transmittance 1 (as a fibre with Eve does) with the
    default 5e8 pulses per round: refused in one line naming the option, nothing
    emitted, tried again later; at the honest transmittance the same round fits."""
    check = _budget_check(_budget_args(500_000_000), finite_key_parameters(),
                          DistillationConfig(), lanes=6)
    check(transmittance(25.0, PARAMS.alpha_db_per_km) * PARAMS.eta_bob)  # fits
    fibre = _FakeFibre(1.0, DISTANCE_KM)
    log: list[str] = []
    source = SourceDevice(fibre.address, PARAMS, 500_000_000, DISTANCE_KM, log=log.append,
                          check=check)
    try:
        assert _until(lambda: source.refusals >= 2), log
        assert source.emitted_pulses == 0
        line = next(line for line in log if "transmittance of 1" in line)
        assert "--pulses-per-round" in line and "--memory-limit-mb" in line
        assert "\n" not in line
    finally:
        source.close()
        fibre.close()
