"""The QKD link between two hosts, as its commands run: each host a network namespace
(tests/netns.py; loopback fallback announced) with its own site directory.

- ``qkd link --listen`` on host B and ``--connect`` on host A fill both stores with
  identical keys, and HKX/1 psk sessions between the hosts then succeed every time;
- Eve at fraction 1 on ``qkd fiber``: every round aborts, showing the QBER, nothing
  deposited;
- a relay delays (5 ms round trip) and cuts the classical connection: the link
  reconnects and goes on;
- SIGKILL of Alice, Bob or the fibre at random points, 20 times each: after restarts
  both stores hold identical available keys and a session succeeds with every one.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hybridkex.site import Site
from tests.netns import Host, two_hosts
from tests.qkd_ends import drain_and_compare, make_sites

pytestmark = pytest.mark.time_limit(240)

ROOT = Path(__file__).resolve().parent.parent
PULSES = "1e7"
SMALL = ["--pulses-per-round", PULSES, "--asymptotic"]


def hkx(*args: str) -> list[str]:
    return [sys.executable, "-m", "hybridkex", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port if port < 60000 else 40000 + port % 10000


class Proc:
    """A command on a host, its stdout JSON lines collected, its stderr in a file."""

    def __init__(self, host: Host, argv: list[str], log: Path) -> None:
        self.argv, self.host, self.log = argv, host, log
        self.lines: list[dict[str, Any]] = []
        self._lock = threading.Condition()
        self.start()

    def start(self) -> None:
        err = open(self.log, "ab")  # noqa: SIM115 - the process owns it
        self.proc = self.host.popen(self.argv, stdout=subprocess.PIPE, stderr=err,
                                    stdin=subprocess.DEVNULL, cwd=ROOT,
                                    env={**os.environ, "PYTHONPATH": str(ROOT)})
        err.close()
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            if not raw.endswith(b"\n"):
                break  # the process was killed in the middle of a line
            line = json.loads(raw)  # stdout holds JSON lines only
            with self._lock:
                self.lines.append(line)
                self._lock.notify_all()

    def wait_lines(self, count: int, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.lines) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{count} reports expected, got {len(self.lines)}: " \
                    f"{self.log.read_text()[-2000:]}"
                self._lock.wait(left)
            return list(self.lines)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 60) -> int:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


@contextlib.contextmanager
def processes() -> Iterator[list[Proc]]:
    running: list[Proc] = []
    try:
        yield running
    finally:
        for p in running:
            if p.proc.poll() is None:
                p.kill()


def bob(host: Host, site: Path, port: int, log: Path) -> Proc:
    return Proc(host, hkx("qkd", "link", "--site", str(site), "--listen",
                          f"{host.address}:{port}", "--asymptotic", "--json"), log)


def alice(host: Host, site: Path, bob_host: Host, port: int, log: Path, *extra: str) -> Proc:
    return Proc(host, hkx("qkd", "link", "--site", str(site), "--connect",
                          f"{bob_host.address}:{port}", *SMALL, "--json", *extra), log)


def psk_sessions(a: Host, a_dir: Path, b: Host, b_dir: Path, tries: int,
                 log: Path) -> None:
    """HKX/1 psk sessions from host A to ``serve`` on host B: every one must succeed."""
    port = free_port()
    with processes() as running:
        server = Proc(b, hkx("serve", "--site", str(b_dir), "--listen", f"{b.address}:{port}",
                             "--echo", "--auth", "psk"), log)
        running.append(server)
        deadline = time.monotonic() + 30
        while b"listening on" not in log.read_bytes():
            assert time.monotonic() < deadline and server.proc.poll() is None, log.read_text()
            time.sleep(0.05)
        for i in range(tries):
            out = a.run(hkx("connect", f"{b.address}:{port}", "--site", str(a_dir), "--auth",
                            "psk", "--verbose"), input=f"hello {i}".encode(),
                        capture_output=True, timeout=60, cwd=ROOT)
            assert out.returncode == 0, out.stderr.decode()
            assert out.stdout == f"hello {i}".encode()
            assert b"psk" in out.stderr and b"SIMULATED" in out.stderr
        assert server.stop() == 0


def _site_init_and_trust(a: Host, b: Host, root: Path) -> tuple[Path, Path]:
    """docs/deployment.md steps 1 to 3 with the command line: each host makes its site,
    the identity files cross, each site trusts the other (fingerprints as printed)."""
    a_dir, b_dir = root / "host-a" / "site-a", root / "host-b" / "site-b"
    printed = {}
    for host, site, name in ((a, a_dir, "site-a"), (b, b_dir, "site-b")):
        site.parent.mkdir(parents=True)
        out = host.run(hkx("site", "init", str(site), "--name", name), capture_output=True,
                       timeout=60, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        printed[name] = out.stdout.decode() + out.stderr.decode()
    for host, site, other, name in ((a, a_dir, b_dir, "site-b"), (b, b_dir, a_dir, "site-a")):
        copy = site.parent / f"{name}.identity.crt"
        copy.write_bytes((other / "identity.crt").read_bytes())  # "scp" between the hosts
        out = host.run(hkx("site", "trust", str(site), str(copy)), capture_output=True,
                       timeout=60, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        with Site.load(other) as peer:
            assert peer.fingerprint in out.stdout.decode()  # what the operators compare
            assert peer.fingerprint in printed[name]
    return a_dir, b_dir


def test_two_hosts_fill_both_sites_then_psk_sessions_succeed(tmp_path: Path) -> None:
    port = free_port()
    with two_hosts("l") as (a, b), processes() as running:
        a_dir, b_dir = _site_init_and_trust(a, b, tmp_path)
        bob_end = bob(b, b_dir, port, tmp_path / "bob.log")
        running.append(bob_end)
        alice_end = alice(a, a_dir, b, port, tmp_path / "alice.log", "--distance-km", "5",
                          "--rounds", "5")
        running.append(alice_end)
        assert alice_end.proc.wait(180) == 0, (tmp_path / "alice.log").read_text()
        reports = sorted(alice_end.wait_lines(5, 1), key=lambda r: r["round"])
        theirs = sorted(bob_end.wait_lines(5, 30), key=lambda r: r["round"])
        assert bob_end.stop() == 0
        assert [r["round"] for r in reports] == [1, 2, 3, 4, 5]
        assert all(not r["aborted"] and r["deposit"] == "done" for r in reports + theirs)
        for mine, other in zip(reports, theirs, strict=True):
            assert mine["train"] == other["train"]
            assert mine["keys_deposited"] == other["keys_deposited"] > 0
            assert isinstance(mine["qber"], float) and 0 < mine["qber"] < 0.06
            assert mine["simulated"] is True and "SIMULATION" in mine["simulation"]
            for key in ("pulses", "detections", "qber_x", "y1_lower", "e1_upper",
                        "ec_leaked_bits", "secret_bits", "auth_bits_consumed",
                        "net_secret_bits", "abort_reason", "round_trips", "pool"):
                assert key in mine
        with Site.load(a_dir) as site:
            link = site.link_info("site-b")
            assert link["simulated"] is True and link["role"] == "alice"
            assert link["distance_km"] == 5.0 and "SIMULATED" in site.qkd_source_label("site-b")
        psk_sessions(a, a_dir, b, b_dir, 4, tmp_path / "serve.log")
    assert drain_and_compare(a_dir, b_dir) > 0


def test_eve_on_the_fibre_aborts_every_round_and_deposits_nothing(tmp_path: Path) -> None:
    a_dir, b_dir = make_sites(tmp_path)
    port, fibre_port = free_port(), free_port()
    with two_hosts("e") as (a, b), processes() as running:
        running.append(bob(b, b_dir, port, tmp_path / "bob.log"))
        fibre = Proc(b, hkx("qkd", "fiber", "--listen", f"{b.address}:{fibre_port}",
                            "--connect", f"{b.address}:{port + 1}", "--distance-km", "5",
                            "--eve", "intercept-resend", "--eve-fraction", "1", "--json"),
                     tmp_path / "fibre.log")
        running.append(fibre)
        alice_end = Proc(a, hkx("qkd", "link", "--site", str(a_dir), "--connect",
                                f"{b.address}:{port}", "--quantum-connect",
                                f"{b.address}:{fibre_port}", "--pulses-per-round", "3e6",
                                "--asymptotic", "--rounds", "3", "--json"),
                         tmp_path / "alice.log")
        running.append(alice_end)
        assert alice_end.proc.wait(180) == 0, (tmp_path / "alice.log").read_text()
        reports = alice_end.lines
        assert len(reports) == 3
        for r in reports:
            assert r["aborted"] and r["keys_deposited"] == 0 and r["deposit"] == "none"
            assert "QBER" in r["abort_reason"] and r["qber_x"] > 0.15
            assert r["distance_km"] == 5.0
        assert "ABORTED" in (tmp_path / "alice.log").read_text()
        attacked = fibre.wait_lines(3, 10)
        assert all(t["attacked"] > 0 and t["eve"] == "intercept-resend" for t in attacked)
    for site_dir, peer in ((a_dir, "site-b"), (b_dir, "site-a")):
        with Site.load(site_dir) as site:
            status = site.pool_status(peer)
            assert (status.available_to_take, status.available_to_fetch) == (0, 0)


def test_sigterm_finishes_the_rounds_under_way_and_a_second_discards_them(
        tmp_path: Path) -> None:
    a_dir, b_dir = make_sites(tmp_path)
    port = free_port()
    with two_hosts("s") as (a, b), processes() as running:
        bob_end = bob(b, b_dir, port, tmp_path / "bob.log")
        running.append(bob_end)
        first = alice(a, a_dir, b, port, tmp_path / "alice.log", "--distance-km", "5")
        running.append(first)
        first.wait_lines(2, 120)
        assert first.stop() == 0  # finishes the rounds under way, then says goodbye
        assert first.lines and all(not r["aborted"] and r["deposit"] == "done"
                                   for r in first.lines), first.lines
        assert "stopping after this round" in (tmp_path / "alice.log").read_text()
        second = alice(a, a_dir, b, port, tmp_path / "alice2.log", "--distance-km", "5")
        running.append(second)
        second.wait_lines(1, 120)
        second.proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(60) == 130
        assert "discarded" in (tmp_path / "alice2.log").read_text()
        third = alice(a, a_dir, b, port, tmp_path / "alice3.log", "--distance-km", "5",
                      "--rounds", "1")
        running.append(third)
        assert third.proc.wait(120) == 0  # its opening settles whatever was under way
        assert bob_end.stop() == 0
    drain_and_compare(a_dir, b_dir)


RELAY = """
import sys
from tests.relay import Relay
host, port, listen, delay = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
r = Relay((host, port), delay, listen=(listen, 0))
print(r.address[1], flush=True)
for line in sys.stdin:
    if line.strip() == "cut":
        r.cut()
        print("cut", flush=True)
"""


def test_relay_delays_and_cuts_the_classical_connection(tmp_path: Path) -> None:
    a_dir, b_dir = make_sites(tmp_path)
    port = free_port()
    with two_hosts("r") as (a, b), processes() as running:
        running.append(bob(b, b_dir, port, tmp_path / "bob.log"))
        relay = a.popen([sys.executable, "-c", RELAY, b.address, str(port), a.address,
                         "0.0025"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
                        env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            assert relay.stdout is not None and relay.stdin is not None
            relay_port = int(relay.stdout.readline())
            alice_end = Proc(a, hkx("qkd", "link", "--site", str(a_dir), "--connect",
                                    f"{a.address}:{relay_port}", "--quantum-connect",
                                    f"{b.address}:{port + 1}", *SMALL, "--distance-km", "5",
                                    "--rounds", "10", "--lanes", "2", "--json"),
                             tmp_path / "alice.log")
            running.append(alice_end)
            alice_end.wait_lines(2, 120)
            relay.stdin.write(b"cut\n")
            relay.stdin.flush()
            assert relay.stdout.readline().strip() == b"cut"
            assert alice_end.proc.wait(180) == 0, (tmp_path / "alice.log").read_text()
        finally:
            relay.kill()
            relay.wait()
        reports = sorted(alice_end.lines, key=lambda r: r["round"])
        assert len(reports) == 10
        assert max(r["connection"] for r in reports) >= 2  # it reconnected
        assert not reports[-1]["aborted"] and reports[-1]["connection"] >= 2
        assert all(r["round_trips"] > 0 for r in reports if not r["aborted"])
    drain_and_compare(a_dir, b_dir)


@pytest.mark.time_limit(480)  # 60 restarts of Python processes: minutes on a busy machine
def test_sigkill_alice_bob_or_the_fibre_at_random_points(tmp_path: Path) -> None:
    """20 kills of each process at random moments; after restarts the two stores hold
    identical available keys and a session succeeds with every one of them."""
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    a_dir, b_dir = make_sites(tmp_path)
    port, fibre_port = free_port(), free_port()
    with two_hosts("k") as (a, b), processes() as running:
        procs = {
            "bob": bob(b, b_dir, port, tmp_path / "bob.log"),
            "fibre": Proc(b, hkx("qkd", "fiber", "--listen", f"{b.address}:{fibre_port}",
                                 "--connect", f"{b.address}:{port + 1}", "--distance-km",
                                 "5"), tmp_path / "fibre.log"),
            "alice": Proc(a, hkx("qkd", "link", "--site", str(a_dir), "--connect",
                                 f"{b.address}:{port}", "--quantum-connect",
                                 f"{b.address}:{fibre_port}", "--pulses-per-round", "4e6",
                                 "--asymptotic", "--json"), tmp_path / "alice.log"),
        }
        running.extend(procs.values())
        kills = int(os.environ.get("HKX_KILLS", "60"))
        for kill in range(kills):
            # the link is running rounds again (a report since the last kill), then a
            # random moment inside the next ones: distillation, deposit or in between
            procs["alice"].wait_lines(len(procs["alice"].lines) + 1, 60)
            time.sleep(rng.uniform(0.0, 0.6))
            victim = procs[("alice", "bob", "fibre")[kill % 3]]
            victim.kill()
            victim.start()
            print(f"kill {kill}: {time.monotonic():.1f}", flush=True)
        settled = len(procs["alice"].lines)
        later = procs["alice"].wait_lines(settled + 2, 120)
        assert any(r["deposit"] == "done" for r in later[settled:])
        assert procs["alice"].stop() == 0
        assert procs["bob"].stop() == 0
        procs["fibre"].stop()
        cut_short = [r for r in procs["alice"].lines if r["aborted"]]
        assert len(cut_short) >= 5, (  # kills landed inside rounds, not only between them
            len(procs["alice"].lines), (tmp_path / "alice.log").read_text()[-3000:])
    log = (tmp_path / "alice.log").read_text() + (tmp_path / "bob.log").read_text()
    assert "Traceback" not in log
    print(f"{len(cut_short)} rounds cut short, {log.count('unfinished deposit')} journal "
          "settlements after restarts")
    keys = sessions_with_every_key(a_dir, b_dir)
    assert keys > 0


def sessions_with_every_key(a_dir: Path, b_dir: Path) -> int:
    """HKX/1 sessions in both directions until neither site has a key left to take;
    every one must succeed with a QKD key.  Returns the pool units they used."""
    used = 0
    with Site.load(a_dir) as a, Site.load(b_dir) as b:
        for client, server in ((a, b), (b, a)):
            while client.pool_status(server.name).available_to_take:
                c_sock, s_sock = socket.socketpair()
                out: dict[str, Any] = {}

                def serve(sock: socket.socket = s_sock, site: Site = server,
                          out: dict[str, Any] = out) -> None:
                    with site.context().wrap_socket(sock, server_side=True) as conn:
                        out["info"] = conn.session_info()
                        conn.sendall(conn.recv(100))

                thread = threading.Thread(target=serve)
                thread.start()
                with client.context().wrap_socket(c_sock, peer=server.name) as conn:
                    conn.sendall(b"ping")
                    assert conn.recv(100) == b"ping"
                    info = conn.session_info()
                thread.join(10)
                assert info.qkd_key_ids and out["info"].qkd_key_ids == info.qkd_key_ids
                used += info.pool_keys_spent
        for site, peer in ((a, b.name), (b, a.name)):
            assert site.pool_status(peer).available_to_fetch == 0
    return used
