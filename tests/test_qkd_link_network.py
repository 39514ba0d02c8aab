"""The two ends of the networked link (hybridkex.qkd.network) in one process, each with its
own site directory, over real sockets: rounds deposit identical keys, and a message
altered, truncated or replayed on either channel aborts its round with a typed error
and deposits nothing (the link then reconnects and goes on)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridkex.qkd.network.journal import DepositJournal
from tests.qkd_ends import Tamper, drain_and_compare, link, make_sites

pytestmark = pytest.mark.time_limit(120)


def _open_rounds(site_dir: Path, peer: str) -> int:
    journal = DepositJournal(site_dir / f"qkd-link-{peer}.db")
    try:
        return len(journal.open_rounds())
    finally:
        journal.close()


def test_rounds_deposit_the_same_keys_at_both_ends(tmp_path: Path) -> None:
    a_dir, b_dir = make_sites(tmp_path)
    with link(a_dir, b_dir, rounds=3) as run:
        pass
    assert [r.round for r in run.alice] == [1, 2, 3] == [r.round for r in run.bob]
    assert not any(r.aborted for r in run.alice + run.bob), run.alice
    assert run.alice[0].auth_mode.startswith("signature (Ed25519)")
    assert {r.auth_mode for r in run.alice[1:]} == {"wegman-carter-poly1305"}
    assert all(r.auth_bits_consumed > 0 for r in run.alice[1:])
    for mine, theirs in zip(run.alice, run.bob, strict=True):
        assert mine.key_ids == theirs.key_ids and mine.keys_deposited > 0
        assert mine.deposit == theirs.deposit == "done"
        assert mine.qber == theirs.qber and mine.qber is not None and 0 < mine.qber < 0.06
    assert _open_rounds(a_dir, "site-b") == _open_rounds(b_dir, "site-a") == 0
    for journal in (a_dir / "qkd-link-site-b.db", b_dir / "qkd-link-site-a.db"):
        assert journal.stat().st_mode & 0o777 == 0o600  # it holds key material
    total = sum(r.keys_deposited for r in run.alice)
    last = run.alice[-1]
    assert (last.pool_available_to_take or 0) + (last.pool_available_to_fetch or 0) == total
    assert drain_and_compare(a_dir, b_dir) == total


def test_lanes_run_rounds_side_by_side(tmp_path: Path) -> None:
    """Three lanes: the first round of each is signed, later ones use Wegman-Carter keys
    from that lane's own previous round; every round deposits the same keys at both ends."""
    a_dir, b_dir = make_sites(tmp_path)
    with link(a_dir, b_dir, rounds=7, lanes=3) as run:
        pass
    assert [r.round for r in run.alice] == list(range(1, 8)) == [r.round for r in run.bob]
    assert not any(r.aborted for r in run.alice + run.bob)
    modes = [r.auth_mode for r in run.alice]
    assert sum(m.startswith("signature") for m in modes) == 3
    assert modes.count("wegman-carter-poly1305") == 4
    assert len({r.train for r in run.alice}) == 7
    total = sum(r.keys_deposited for r in run.alice)
    assert total == sum(r.keys_deposited for r in run.bob)
    assert drain_and_compare(a_dir, b_dir) == total


def test_the_clock_paces_the_source(tmp_path: Path) -> None:
    a_dir, b_dir = make_sites(tmp_path)
    with link(a_dir, b_dir, rounds=1, pulses=4_000_000, clock_hz=1e7) as run:
        pass
    assert run.alice[0].simulation_s >= 0.4  # 4e6 pulses at 1e7 per second
    assert not run.alice[0].aborted


def _flip(number: int) -> Tamper:
    def tamper(n: int, frame: bytes) -> bytes | None:
        if n != number:
            return frame
        return frame[:-40] + bytes([frame[-40] ^ 0x01]) + frame[-39:]
    return tamper


def _cut(number: int) -> Tamper:
    def tamper(n: int, frame: bytes) -> bytes | None:
        return None if n == number else frame
    return tamper


def _replay(number: int) -> Tamper:
    kept: dict[int, bytes] = {}

    def tamper(n: int, frame: bytes) -> bytes | None:
        kept[n] = frame
        return kept[n - 1] if n == number else frame
    return tamper


# Frames Alice sends on a connection: 1 LinkHello, 2 Commit, 3 Release (the opening),
# 4 RoundStart, 5 Hello, 6 SiftReply, 7 EstimateReply, 8... Cascade responses.
# Frames Bob sends: 1 LinkState, 2 Ready, 3 Done, 4 Sift, 5 Estimate, 6... requests.
CLASSICAL = [
    ("alice-altered", _flip(6), True, {"LinkAborted", "MalformedMessage"}),
    ("alice-truncated", _cut(5), True, {"ChannelClosed", "LinkAborted"}),
    ("alice-replayed", _replay(7), True, {"LinkAborted"}),
    ("bob-altered", _flip(5), False, {"LinkAborted", "MalformedMessage"}),
    ("bob-truncated", _cut(4), False, {"ChannelClosed", "LinkAborted"}),
    ("bob-replayed", _replay(5), False, {"LinkAborted"}),
    ("alice-cascade-altered", _flip(9), True, {"LinkAborted", "CascadeError",
                                               "MalformedMessage"}),
]


@pytest.mark.parametrize("case", CLASSICAL, ids=[c[0] for c in CLASSICAL])
def test_a_tampered_classical_message_aborts_the_round(
        tmp_path: Path, case: tuple[str, Tamper, bool, set[str]]) -> None:
    _, tamper, upstream, errors = case
    a_dir, b_dir = make_sites(tmp_path)
    with link(a_dir, b_dir, rounds=2, classical=tamper, classical_upstream=upstream) as run:
        pass
    first_a = run.alice[0]
    assert first_a.aborted and first_a.keys_deposited == 0
    assert first_a.abort_error in errors | {"LinkAborted", "ChannelClosed"}
    assert any(r.aborted and r.abort_error in errors for r in run.alice + run.bob), \
        [(r.role, r.abort_error, r.abort_reason) for r in run.alice + run.bob]
    bob_first = [r for r in run.bob if r.round == 1]
    assert all(r.aborted and r.keys_deposited == 0 for r in bob_first)
    assert not run.alice[1].aborted and run.alice[1].connection == 2  # reconnected
    assert drain_and_compare(a_dir, b_dir) == run.alice[1].keys_deposited


def _corrupt_last(number: int) -> Tamper:
    def tamper(n: int, frame: bytes) -> bytes | None:
        return frame[:-1] + bytes([frame[-1] ^ 0x07]) if n == number else frame
    return tamper


# A train of 1e7 pulses is three blocks and its end: frames 1-4, 5-8, ...
QUANTUM = [("altered", _corrupt_last(4), "the train end does not match"),
           ("truncated", _cut(2), None),
           ("replayed", _replay(6), "pulse blocks out of order")]


@pytest.mark.parametrize("case", QUANTUM, ids=[c[0] for c in QUANTUM])
def test_a_tampered_pulse_train_is_never_distilled(tmp_path: Path,
                                                   case: tuple[str, Tamper, str | None]) -> None:
    """Bob's detector refuses the train (QuantumChannelError) and never acknowledges it,
    so no round starts on it; the quantum connection is made again and later trains
    are distilled as usual."""
    _, tamper, refusal = case
    a_dir, b_dir = make_sites(tmp_path)
    with link(a_dir, b_dir, rounds=3, quantum=tamper) as run:
        pass
    if refusal is not None:
        assert any(line.startswith("quantum channel: malformed quantum frame")
                   and refusal in line for line in run.log), run.log
    assert not any(r.aborted for r in run.alice + run.bob), run.alice + run.bob
    assert [r.train for r in run.alice] == [r.train for r in run.bob]
    deposited = sum(r.keys_deposited for r in run.alice)
    assert drain_and_compare(a_dir, b_dir) == deposited > 0


def test_a_round_on_a_train_bob_never_registered_aborts_typed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the train a round names is not at Bob's detector (lost on the fibre after all,
    or named wrongly), the round aborts at both ends with a QuantumChannelError."""
    from hybridkex.qkd.optics.devices import DetectorDevice

    original = DetectorDevice.train

    def lose(self: DetectorDevice, train: bytes, slots: int, timeout_s: float) -> object:
        return original(self, bytes(16), slots, 0.1)  # a train never sent

    a_dir, b_dir = make_sites(tmp_path)
    monkeypatch.setattr(DetectorDevice, "train", lose)
    with link(a_dir, b_dir, rounds=1) as run:
        pass
    assert run.bob[0].aborted and run.bob[0].abort_error == "QuantumChannelError"
    assert run.alice[0].aborted and "never arrived" in run.alice[0].abort_reason
    assert drain_and_compare(a_dir, b_dir) == 0
