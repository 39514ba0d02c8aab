"""Both ends of a networked QKD link in this process, each with its own site directory,
and a proxy that can tamper with either channel.  For the tests of what the ends do
with what crosses between them (tests/test_qkd_link_network.py); the tests of the
processes on two hosts are in tests/test_qkd_twohost.py."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hybridkex.qkd.distillation import DistillationConfig
from hybridkex.qkd.network.deposit import DepositEnd
from hybridkex.qkd.network.endpoint import AliceEnd, BobEnd, EndSettings, RoundReport, Stop
from hybridkex.qkd.network.journal import DepositJournal
from hybridkex.qkd.optics.devices import DetectorDevice, SourceDevice, listen
from hybridkex.qkd.parameters import finite_key_parameters
from hybridkex.site import Site

PULSES = 10_000_000
DISTANCE_KM = 5.0
CONFIG = DistillationConfig(finite_key=False)

Tamper = Callable[[int, bytes], bytes | None]  # (frame number, frame) -> frame or None (cut)
Address = tuple[str, int]
# (Bob's classical address, his detector's address, stop) -> None, run in a thread
Attack = Callable[[Address, Address, threading.Event], None]


def make_sites(root: Path) -> tuple[Path, Path]:
    """Two site directories that trust each other (as after exchanging identity.crt)."""
    a_dir, b_dir = root / "host-a" / "site", root / "host-b" / "site"
    with Site.init(a_dir, "site-a", sig="Ed25519") as a, \
            Site.init(b_dir, "site-b", sig="Ed25519") as b:
        a.trust(b.public_identity_file)
        b.trust(a.public_identity_file)
    return a_dir, b_dir


class Proxy:
    """Forwards ``listen`` -> ``target`` frame by frame (u32 length, frame), passing each
    frame of one direction through ``tamper`` (``upstream=True``: what the connecting end
    sends)."""

    def __init__(self, target: tuple[str, int], tamper: Tamper, upstream: bool = True) -> None:
        self.target, self.tamper, self.upstream = target, tamper, upstream
        self.server = listen(("127.0.0.1", 0))
        self.address = self.server.getsockname()[:2]
        self.frames = 0
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
                server = socket.create_connection(self.target)
            except OSError:
                return
            self.sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, self.upstream),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, not self.upstream),
                             daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, tampered: bool) -> None:
        try:
            while True:
                head = recv_exactly(source, 4)
                frame = recv_exactly(source, struct.unpack(">I", head)[0])
                if tampered:
                    self.frames += 1
                    out = self.tamper(self.frames, frame)
                    if out is None:
                        sink.sendall(head + frame[: len(frame) // 2])  # truncated, then cut
                        raise OSError("cut")
                    frame = out
                sink.sendall(struct.pack(">I", len(frame)) + frame)
        except OSError:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.close()
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.close()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from ``sock``, or OSError if it closes first."""
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return bytes(data)


@dataclass
class Run:
    alice: list[RoundReport] = field(default_factory=list)
    bob: list[RoundReport] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


@contextlib.contextmanager
def link(a_dir: Path, b_dir: Path, rounds: int, *, classical: Tamper | None = None,
         classical_upstream: bool = True, quantum: Tamper | None = None,
         pulses: int = PULSES, lanes: int = 1,
         clock_hz: float | None = None, attack: Attack | None = None,
         give_up_s: float | None = None) -> Iterator[Run]:
    """Run Alice for ``rounds`` rounds against Bob, in ``lanes`` lanes (one by default,
    so that frames come in protocol order); yields when Alice is done (the reports of
    each end sorted by round), or after ``give_up_s`` if given.  ``attack`` runs in a
    thread of its own from before Alice starts until the end."""
    run = Run()
    params = finite_key_parameters(distance_km=DISTANCE_KM)
    with Site.load(a_dir) as site_a, Site.load(b_dir) as site_b:
        ends = {}
        for site, peer in ((site_a, "site-b"), (site_b, "site-a")):
            scheme, public = site.peer_key(peer)
            journal = DepositJournal(site.path / f"qkd-link-{peer}.db")
            ends[site.name] = (EndSettings(site.name, peer, site.scheme,
                                           site.identity.private_key, scheme, public, site.store,
                                           DepositEnd(journal, site.store, site.name, peer),
                                           CONFIG), journal)
        detector = DetectorDevice(("127.0.0.1", 0), params, log=run.log.append)
        q_target = detector.address
        q_proxy = Proxy(q_target, quantum) if quantum is not None else None
        source = SourceDevice(q_proxy.address if q_proxy else q_target, params, pulses,
                              DISTANCE_KM, clock_hz)
        server = listen(("127.0.0.1", 0))
        c_proxy = (Proxy(server.getsockname()[:2], classical, classical_upstream)
                   if classical is not None else None)
        stop_a, stop_b = Stop(), Stop()
        bob = BobEnd(ends["site-b"][0], server, detector, stop_b, run.bob.append,
                     run.log.append)
        bob_thread = threading.Thread(target=bob.run, daemon=True)
        bob_thread.start()
        alice = AliceEnd(ends["site-a"][0],
                         c_proxy.address if c_proxy else server.getsockname()[:2], source,
                         pulses, stop_a, run.alice.append, run.log.append, rounds=rounds,
                         lanes=lanes)
        attacking = threading.Event()
        if attack is not None:
            threading.Thread(target=attack, args=(server.getsockname()[:2], q_target,
                                                  attacking), daemon=True).start()
        try:
            failed: list[BaseException] = []

            def run_alice() -> None:
                try:
                    alice.run()
                except BaseException as exc:
                    failed.append(exc)

            alice_thread = threading.Thread(target=run_alice, daemon=True)
            alice_thread.start()
            alice_thread.join(give_up_s)
            stop_a.requested.set()
            alice_thread.join(30)
            if failed:
                raise failed[0]
            stop_b.requested.set()
            bob_thread.join(10)
            run.alice.sort(key=lambda r: r.round)
            run.bob.sort(key=lambda r: r.round)
            yield run
        finally:
            attacking.set()
            stop_a.requested.set()
            stop_b.requested.set()
            bob_thread.join(10)
            source.close()
            detector.close()
            server.close()
            for proxy in (c_proxy, q_proxy):
                if proxy is not None:
                    proxy.close()
            for _, journal in ends.values():
                journal.close()


def drain_and_compare(a_dir: Path, b_dir: Path) -> int:
    """Both stores hold exactly the same available units, each assigned to the same site:
    every unit one site can take, the other can fetch by its ID with the same material,
    and nothing is left over at either.  Uses (and so spends) every unit; returns how many.
    """
    with Site.load(a_dir) as a, Site.load(b_dir) as b:
        total = 0
        for taker, fetcher in ((a, b), (b, a)):
            mine = taker.pool_status(fetcher.name)
            theirs = fetcher.pool_status(taker.name)
            assert mine.available_to_take == theirs.available_to_fetch
            if mine.available_to_take:
                keys = taker.store.take(fetcher.name, mine.available_to_take)
                same = fetcher.store.fetch(taker.name, [k.key_id for k in keys])
                assert [k.key for k in keys] == [k.key for k in same]
                total += len(keys)
        for site, peer in ((a, b.name), (b, a.name)):
            status = site.pool_status(peer)
            assert (status.available_to_take, status.available_to_fetch) == (0, 0)
    return total
