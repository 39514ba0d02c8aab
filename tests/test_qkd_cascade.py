"""Cascade: two separate parties exchanging bytes end with identical keys.

Also: leakage is counted the same on both sides and never below the Shannon bound,
the wire format is what the module documents, and malformed, truncated, oversized
or out-of-range messages raise CascadeError (never IndexError or ValueError).
"""

from __future__ import annotations

import itertools
import math
import struct

import numpy as np
import numpy.typing as npt
import pytest

from hybridkex.errors import HybridKexError, InvalidParameter
from hybridkex.qkd.distillation.cascade import (
    FER_TARGET,
    MAX_PASSES,
    CascadeAlice,
    CascadeBob,
    _Layout,
    binary_entropy,
    default_schedule,
    paper_schedule,
)
from hybridkex.qkd.distillation.messages import CascadeRequest, CascadeResponse
from hybridkex.qkd.errors import CascadeError

U8 = npt.NDArray[np.uint8]


def keys(n: int, qber: float, seed: int, exact: bool = False) -> tuple[U8, U8]:
    """Alice's random key and Bob's copy with errors (Bernoulli, or exactly round(n q))."""
    rng = np.random.default_rng(seed)
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    if exact:
        err = np.zeros(n, np.uint8)
        err[rng.choice(n, round(n * qber), replace=False)] = 1
    else:
        err = (rng.random(n) < qber).astype(np.uint8)
    return alice, alice ^ err


# Alice and Bob behind the wire format: every test talks bytes, so each round trip also
# goes through the documented encoding and its strict decoding.


def respond(alice: CascadeAlice, raw: object) -> bytes:
    return alice.respond(CascadeRequest.decode(raw)).encode()  # type: ignore[arg-type]


def receive(bob: CascadeBob, raw: object) -> None:
    bob.receive(CascadeResponse.decode(raw))  # type: ignore[arg-type]


def request(bob: CascadeBob) -> bytes | None:
    req = bob.request()
    return None if req is None else req.encode()


def run(alice_bits: U8, bob_bits: U8, qber: float, seed: bytes | int = b"seed",
        **kw: object) -> tuple[CascadeAlice, CascadeBob]:
    alice = CascadeAlice(alice_bits)
    bob = CascadeBob(bob_bits, qber, seed, **kw)  # type: ignore[arg-type]
    while (req := request(bob)) is not None:
        receive(bob, respond(alice, req))
    return alice, bob


def first_request(n: int = 4096, frame_bits: int | None = None) -> tuple[CascadeAlice, bytes]:
    a, b = keys(n, 0.02, 1)
    alice = CascadeAlice(a)
    bob = CascadeBob(b, 0.02, b"seed", frame_bits=frame_bits)
    req = request(bob)
    assert req is not None
    return alice, req


def leb128(values: list[int]) -> bytes:
    out = bytearray()
    for v in values:
        while True:
            byte = v & 0x7F
            v >>= 7
            out.append(byte | (0x80 if v else 0))
            if not v:
                break
    return bytes(out)


def query_request(seq: int, ids: list[int]) -> bytes:
    deltas = [ids[0]] + [b - a - 1 for a, b in itertools.pairwise(ids)] if ids else []
    return (b"HKC" + bytes([1, 1, 0]) + struct.pack("<I", seq) + struct.pack("<I", len(ids))
            + leb128(deltas))


# ----------------------------------------------------------------------------------
# correctness


@pytest.mark.parametrize("qber", [0.005, 0.01, 0.02, 0.05, 0.08])
def test_keys_agree_after_cascade(qber: float) -> None:
    for seed in range(3):
        a, b = keys(40_000, qber, 100 * seed + int(qber * 1000))
        alice, bob = run(a, b, qber, seed.to_bytes(2, "little"), frame_bits=10_000)
        assert bob.done
        assert bob.frames == 4
        assert np.array_equal(bob.corrected, a)
        assert np.count_nonzero(a ^ b) > 0
        assert alice.leaked_bits == bob.leaked_bits
        assert int(bob.frame_leaked_bits.sum()) == bob.leaked_bits
        assert alice.round_trips == bob.round_trips
        assert bob.unresolved_nodes() == 0
        assert request(bob) is None


def test_one_100k_frame() -> None:
    a, b = keys(100_000, 0.02, 7)
    alice, bob = run(a, b, 0.02, 12345)
    assert bob.frames == 1
    assert np.array_equal(bob.corrected, a)
    assert alice.leaked_bits == bob.leaked_bits
    f = bob.leaked_bits / (a.size * binary_entropy(0.02))
    assert 1.0 < f < 1.1


def test_uneven_frames_and_bob_input_untouched() -> None:
    a, b = keys(25_123, 0.03, 8)
    original = b.copy()
    alice, bob = run(a, b, 0.03, 5, frame_bits=5_000)
    assert bob.frames == 6
    starts = bob.frame_starts
    assert starts[0] == 0 and starts[-1] == a.size
    assert set(np.diff(starts).tolist()) <= {4187, 4188}
    assert np.array_equal(bob.corrected, a)
    assert np.array_equal(b, original)
    assert alice.frames == bob.frames


def test_zero_errors_stay_consistent() -> None:
    a, _ = keys(20_000, 0.0, 9)
    alice, bob = run(a, a.copy(), 0.02, 1, frame_bits=10_000)
    assert np.array_equal(bob.corrected, a)
    assert bob.round_trips == 1                       # only the block parities
    assert alice.leaked_bits == bob.leaked_bits > 0
    assert bob.unresolved_nodes() == 0


def test_zero_qber_estimate_and_small_key() -> None:
    a, b = keys(64, 0.0, 10)
    b[5] ^= 1
    _, bob = run(a, b, 0.0, 2)
    assert np.array_equal(bob.corrected, a)


def test_explicit_and_paper_schedules() -> None:
    a, b = keys(20_000, 0.02, 11)
    for sched in (paper_schedule(0.02), (6, 8) + (0,) * 10, (5, 8, 11, 14, 0, 0)):
        alice, bob = run(a, b, 0.02, 3, passes=sched)
        assert np.array_equal(bob.corrected, a)
        assert bob.schedule == tuple(sched)
        assert alice.leaked_bits == bob.leaked_bits


@pytest.mark.parametrize("concurrency", [0.05, 1.0])
def test_concurrency_settings_agree(concurrency: float) -> None:
    a, b = keys(40_000, 0.03, 19)
    alice, bob = run(a, b, 0.03, 6, frame_bits=10_000, concurrency=concurrency)
    assert np.array_equal(bob.corrected, a)
    assert alice.leaked_bits == bob.leaked_bits
    assert bob.unresolved_nodes() == 0


def test_fewer_concurrent_bisections_leak_less_and_take_longer() -> None:
    a, b = keys(100_000, 0.02, 20)
    runs = [run(a, b, 0.02, 7, frame_bits=10_000, concurrency=c)[1] for c in (0.1, 1.0)]
    assert all(np.array_equal(bob.corrected, a) for bob in runs)
    assert runs[0].leaked_bits < runs[1].leaked_bits
    assert runs[0].round_trips > runs[1].round_trips


def test_alice_and_bob_accept_bytes_like_messages() -> None:
    a, b = keys(5_000, 0.03, 12)
    alice = CascadeAlice(a)
    bob = CascadeBob(b, 0.03, b"x")
    while (req := request(bob)) is not None:
        receive(bob, memoryview(respond(alice, bytearray(req))))
    assert np.array_equal(bob.corrected, a)


# ----------------------------------------------------------------------------------
# leakage


def test_leakage_at_least_shannon_bound_and_efficient() -> None:
    n, qber, effs = 10_000, 0.02, []
    for seed in range(4):
        a, b = keys(4 * n, qber, 200 + seed)
        # every frame with exactly round(n q) errors
        err = np.zeros(4 * n, np.uint8)
        rng = np.random.default_rng(seed)
        for f in range(4):
            err[f * n + rng.choice(n, round(n * qber), replace=False)] = 1
        b = a ^ err
        alice, bob = run(a, b, qber, seed, frame_bits=n)
        assert np.array_equal(bob.corrected, a)
        assert alice.leaked_bits == bob.leaked_bits
        bound = math.log2(math.comb(n, round(n * qber)))        # ~ n h2(q)
        assert np.all(bob.frame_leaked_bits >= bound)
        assert np.all(bob.frame_leaked_bits >= n * binary_entropy(qber) * 0.99)
        effs.extend((bob.frame_leaked_bits / (n * binary_entropy(qber))).tolist())
    assert 1.0 < float(np.median(effs)) < 1.1


def test_zero_error_leakage_is_the_block_parities() -> None:
    a, _ = keys(10_000, 0.0, 13)
    _, bob = run(a, a.copy(), 0.02, 1)
    sched = default_schedule(0.02, None, 10_000)
    blocks = [-(-10_000 // (1 << e)) for e in sched[:3]] + [2] * (len(sched) - 3)
    assert bob.leaked_bits == blocks[0] + sum(k - 1 for k in blocks[1:])


def test_round_trips_are_batched() -> None:
    a, b = keys(100_000, 0.02, 14)
    _, bob = run(a, b, 0.02, 4, frame_bits=10_000)
    assert bob.frames == 10
    # many parities per round trip: bisections of all blocks and frames run together
    assert bob.leaked_bits / bob.round_trips > 50
    assert bob.round_trips < 400


# ----------------------------------------------------------------------------------
# wire format


def test_first_request_layout() -> None:
    _, req = first_request(4096, 1024)
    magic, version, mtype, flags, seq = struct.unpack_from("<3sBBBI", req, 0)
    assert (magic, version, mtype, flags, seq) == (b"HKC", 1, 1, 1, 0)
    n, frame_bits = struct.unpack_from("<II", req, 10)
    assert (n, frame_bits) == (4096, 1024)
    seed_len = req[18]
    assert req[19:19 + seed_len] == b"seed"
    pos = 19 + seed_len
    npasses = req[pos]
    codes = tuple(req[pos + 1:pos + 1 + npasses])
    assert codes == default_schedule(0.02, None, 1024)
    pos += 1 + npasses
    assert struct.unpack_from("<I", req, pos) == (0,)
    assert len(req) == pos + 4


def test_first_response_layout_and_node_numbering() -> None:
    alice, req = first_request(4096, 1024)
    resp = respond(alice, req)
    magic, version, mtype, seq, count = struct.unpack_from("<3sBBII", resp, 0)
    assert (magic, version, mtype, seq) == (b"HKC", 1, 2, 0)
    assert len(resp) == 13 + (count + 7) // 8
    # a later query for the root of block 3 of pass 0 answers that block's parity
    layout = _Layout(4096, 1024, b"seed", default_schedule(0.02, None, 1024))
    ps = layout.passes[0]
    keyidx, slot = layout.frame_slots(0, np.arange(layout.nframes, dtype=np.int64))
    members = keyidx[(slot >> ps.depth) == 3]
    assert members.size == ps.blk_len[3]
    resp2 = respond(alice, query_request(1, [ps.node_base + 3 * ps.width + 1]))
    assert resp2[9:13] == struct.pack("<I", 1)
    a = keys(4096, 0.02, 1)[0]
    assert resp2[13] == int(a[members].sum() % 2)


# ----------------------------------------------------------------------------------
# bad input: Alice


def test_truncated_first_request() -> None:
    alice, req = first_request()
    for cut in range(len(req)):
        with pytest.raises(CascadeError):
            respond(CascadeAlice(keys(4096, 0.02, 1)[0]), req[:cut])
    assert respond(alice, req)              # the whole request still works


def test_corrupted_first_request_fields() -> None:
    _, req = first_request()
    a = keys(4096, 0.02, 1)[0]
    bad = {
        "magic": b"XKC" + req[3:],
        "version": req[:3] + b"\x02" + req[4:],
        "type": req[:4] + b"\x02" + req[5:],
        "flags": req[:5] + b"\x03" + req[6:],
        "seq": req[:6] + struct.pack("<I", 1) + req[10:],
        "n": req[:10] + struct.pack("<I", 4095) + req[14:],
        "frame small": req[:14] + struct.pack("<I", 63) + req[18:],
        "frame big": req[:14] + struct.pack("<I", 4097) + req[18:],
        "seed_len 0": req[:18] + b"\x00" + req[19:],
        "seed_len long": req[:18] + b"\xff" + req[19:],
        "trailing": req + b"\x00",
        "oversized": req + b"\x00" * (5 * 4096 + 300),
    }
    pos = 19 + 4
    bad["passes 0"] = req[:pos] + b"\x00" + req[pos + 1:]
    bad["passes 33"] = req[:pos] + bytes([33]) + req[pos + 1:] + bytes(17)
    bad["code 31"] = req[:pos + 1] + b"\x1f" + req[pos + 2:]
    bad["9 explicit"] = (req[:pos] + bytes([9]) + bytes(range(2, 11)) + struct.pack("<I", 0))
    bad["too many tops"] = (req[:pos] + bytes([8]) + b"\x01" * 8 + struct.pack("<I", 0))
    for name, msg in bad.items():
        with pytest.raises(CascadeError):
            respond(CascadeAlice(a), msg)
        assert name


def test_bad_query_requests_are_refused() -> None:
    alice, req = first_request()
    respond(alice, req)
    layout = _Layout(4096, 4096, b"seed", default_schedule(0.02, None, 4096))
    total = layout.total_nodes
    ps = layout.passes[0]
    good = ps.node_base + ps.width + 2                 # left child of block 0's root
    halving = layout.passes[3]
    short = int(np.argmin(halving.blk_len))
    beyond = halving.node_base + short * halving.width + (1 << halving.depth) + int(
        halving.blk_len[short])                        # a padding leaf of a halving block
    cases = {
        "outside the key": query_request(1, [total]),
        "far outside": query_request(1, [2**34]),
        "h = 0": query_request(1, [ps.node_base + ps.width]),
        "padding": query_request(1, [beyond]),
        "count too big": query_request(1, [good])[:-1] + b"",
        "count vs bytes": query_request(1, [good, good + 1])[:-1],
        "trailing": query_request(1, [good]) + b"\x00",
        "non-canonical": query_request(1, [])[:-4] + struct.pack("<I", 1) + b"\x80\x00",
        "overlong": query_request(1, [])[:-4] + struct.pack("<I", 1) + b"\xff" * 6 + b"\x01",
        "unterminated": query_request(1, [])[:-4] + struct.pack("<I", 1) + b"\x85",
        "wrong seq": query_request(0, [good]),
        "second hello": req[:6] + struct.pack("<I", 1) + req[10:],
        "leak budget": query_request(1, list(range(1, 4097))),
        "count > budget": query_request(1, [])[:-4] + struct.pack("<I", 5000) + b"\x00" * 5000,
    }
    before = alice.leaked_bits
    for msg in cases.values():
        with pytest.raises(CascadeError):
            respond(alice, msg)
    assert alice.leaked_bits == before             # nothing revealed by refused requests
    resp = respond(alice, query_request(1, [good]))  # the session goes on
    assert struct.unpack_from("<I", resp, 9) == (1,)


def test_query_before_first_request_and_non_bytes() -> None:
    alice = CascadeAlice(keys(1000, 0.0, 1)[0])
    with pytest.raises(CascadeError):
        respond(alice, query_request(0, [5]))
    with pytest.raises(CascadeError):
        respond(alice, "not bytes")


def test_random_mutations_only_raise_cascade_error() -> None:
    rng = np.random.default_rng(15)
    a, b = keys(8_000, 0.03, 16)
    alice = CascadeAlice(a)
    bob = CascadeBob(b, 0.03, b"m", frame_bits=4_000)
    reqs = []
    while (req := request(bob)) is not None:
        reqs.append(req)
        receive(bob, respond(alice, req))
    for i, req in enumerate(reqs[:12]):
        for _ in range(40):
            msg = bytearray(req)
            for _ in range(int(rng.integers(1, 4))):
                msg[int(rng.integers(len(msg)))] ^= 1 << int(rng.integers(8))
            fresh = CascadeAlice(a)
            try:
                for earlier in reqs[:i]:
                    respond(fresh, earlier)
                respond(fresh, bytes(msg))
            except CascadeError:
                pass


# ----------------------------------------------------------------------------------
# bad input: Bob


def test_bad_responses_are_refused() -> None:
    a, b = keys(4096, 0.02, 1)
    alice = CascadeAlice(a)
    bob = CascadeBob(b, 0.02, b"seed")
    with pytest.raises(CascadeError):
        bob.receive(CascadeResponse(0, np.zeros(0, np.uint8)))  # nothing asked yet
    req = request(bob)
    assert req is not None
    with pytest.raises(CascadeError):
        request(bob)                                  # response outstanding
    resp = respond(alice, req)
    count = struct.unpack_from("<I", resp, 9)[0]
    bad: list[object] = [resp[:cut] for cut in range(len(resp))]
    bad += [
        resp + b"\x00",
        b"XKC" + resp[3:],
        resp[:3] + b"\x02" + resp[4:],
        resp[:4] + b"\x01" + resp[5:],
        resp[:5] + struct.pack("<I", 1) + resp[9:],
        resp[:9] + struct.pack("<I", count + 1) + resp[13:],
        resp[:9] + struct.pack("<I", count - 1) + resp[13:],
        "not bytes",
    ]
    if count % 8:
        bad.append(resp[:-1] + bytes([resp[-1] | 0x80]))  # a padding bit set
    for msg in bad:
        with pytest.raises(CascadeError):
            receive(bob, msg)
    receive(bob, resp)                                  # the real one still works
    while (req := request(bob)) is not None:
        receive(bob, respond(alice, req))
    assert np.array_equal(bob.corrected, a)


def test_lying_alice_never_crashes_bob() -> None:
    rng = np.random.default_rng(17)
    a, b = keys(8_000, 0.03, 18)
    for trial in range(6):
        alice = CascadeAlice(a)
        bob = CascadeBob(b, 0.03, trial, frame_bits=4_000)
        try:
            while (req := request(bob)) is not None:
                resp = bytearray(respond(alice, req))
                count = struct.unpack_from("<I", resp, 9)[0]
                for _ in range(3):
                    if count:
                        bit = int(rng.integers(count))
                        resp[13 + bit // 8] ^= 1 << (bit % 8)
                receive(bob, bytes(resp))
        except CascadeError:
            continue
        assert bob.done


# ----------------------------------------------------------------------------------
# parameters


def test_errors_are_typed() -> None:
    assert issubclass(CascadeError, HybridKexError)
    assert not issubclass(CascadeError, ValueError)


@pytest.mark.parametrize(
    ("args", "kw"),
    [
        ((np.array([0, 1, 2] * 30), 0.02, 1), {}),
        ((np.zeros(10, np.uint8), 0.02, 1), {}),
        ((np.zeros((10, 10), np.uint8), 0.02, 1), {}),
        ((np.zeros(100, np.uint8), 0.5, 1), {}),
        ((np.zeros(100, np.uint8), -0.1, 1), {}),
        ((np.zeros(100, np.uint8), 0.02, -1), {}),
        ((np.zeros(100, np.uint8), 0.02, b""), {}),
        ((np.zeros(100, np.uint8), 0.02, b"x" * 65), {}),
        ((np.zeros(100, np.uint8), 0.02, 1.5), {}),
        ((np.zeros(100, np.uint8), 0.02, 1), {"frame_bits": 63}),
        ((np.zeros(100, np.uint8), 0.02, 1), {"passes": 0}),
        ((np.zeros(100, np.uint8), 0.02, 1), {"passes": MAX_PASSES + 1}),
        ((np.zeros(100, np.uint8), 0.02, 1), {"passes": (31,)}),
        ((np.zeros(100, np.uint8), 0.02, 1), {"passes": (1,) * 9}),
        ((np.zeros(100, np.uint8), 0.02, 1), {"passes": ()}),
        ((np.zeros(100, np.uint8), 0.02, 1), {"concurrency": 0.0}),
        ((np.zeros(100, np.uint8), 0.02, 1), {"concurrency": 1.5}),
    ],
)
def test_bad_parameters(args: tuple[object, ...], kw: dict[str, object]) -> None:
    with pytest.raises(InvalidParameter):
        CascadeBob(*args, **kw)  # type: ignore[arg-type]


def test_bad_alice_key() -> None:
    with pytest.raises(InvalidParameter):
        CascadeAlice(np.array([0, 1, 3]))
    with pytest.raises(InvalidParameter):
        CascadeAlice(np.zeros(0, np.uint8))


def test_schedules() -> None:
    assert default_schedule(0.02, 16, 10_000) == (5, 8, 11) + (0,) * 13
    assert default_schedule(0.005, 16, 10_000)[:3] == (7, 9, 11)
    assert default_schedule(0.01, 16, 10_000)[:3] == (6, 8, 11)
    assert default_schedule(0.01, 16, 100_000)[:3] == (6, 9, 12)
    # automatic pass count: the undetectable-pair floor times 2**-halving is tiny
    for qber, n in ((0.01, 10_000), (0.02, 10_000), (0.05, 100_000)):
        sched = default_schedule(qber, None, n)
        halving = len(sched) - 3
        pairs = (qber * n) ** 2 / 2 * math.prod(2**e / n for e in sched[:3])
        assert (pairs + 0.25) * 2.0**-halving <= FER_TARGET
        assert sched[3:] == (0,) * halving
    assert paper_schedule(0.02, 16) == (6, 9, 12) + (0,) * 13
    assert len(default_schedule(0.02, 2)) == 2
    assert binary_entropy(0.5) == 1.0 and binary_entropy(0.0) == 0.0
