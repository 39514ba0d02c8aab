"""The emulated optics of the two-host link (hybridkex.qkd.optics) against the in-process
simulator: the same law for detections, QBER, decoy bounds and key per pulse, with and
without Eve; and the quantum channel's frames refused when malformed."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from hybridkex.qkd import decoy
from hybridkex.qkd.distillation import AliceData, BobData, DistillationConfig, run_alice, run_bob
from hybridkex.qkd.distillation.authentication import SignatureAuthenticator
from hybridkex.qkd.distillation.channel import AuthenticatedChannel
from hybridkex.qkd.distillation.data import alice_values, bob_values, split_bob_values
from hybridkex.qkd.distillation.detections import DetectionLog
from hybridkex.qkd.distillation.transport import queue_pair
from hybridkex.qkd.ends import Role
from hybridkex.qkd.errors import LinkAborted, QuantumChannelError
from hybridkex.qkd.link import QKDLink, SiteIdentity
from hybridkex.qkd.optics import wire
from hybridkex.qkd.optics.chain import emulate
from hybridkex.qkd.optics.source import PulseSource
from hybridkex.qkd.parameters import Eavesdropper, LinkParameters, finite_key_parameters
from hybridkex.qkd.simulator import simulate

PULSES = 6_000_000
ROUNDS = 8
CONFIG = DistillationConfig(finite_key=False)
ID_A, ID_B = SiteIdentity.generate("Ed25519"), SiteIdentity.generate("Ed25519")

Records = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                np.ndarray]


def _params(eve: Eavesdropper | None) -> LinkParameters:
    return finite_key_parameters(distance_km=5.0, eve=eve)


def _rate(hits: np.ndarray, among: np.ndarray) -> float:
    return int(np.count_nonzero(hits)) / max(1, int(np.count_nonzero(among)))


def _observables(rec: Records, params: LinkParameters) -> dict[str, float]:
    """Detections, QBER per basis and the vacuum+weak bounds, from both ends' records."""
    intensity, a_basis, a_bit, b_basis, b_bit, sent, _ = rec
    match = a_basis == b_basis
    err = a_bit != b_bit
    det = [float(np.count_nonzero(intensity == k)) for k in range(3)]
    x = match & (a_basis == 1)
    errs = [float(np.count_nonzero(err & x & (intensity == k))) for k in range(3)]
    xdet = [float(np.count_nonzero(x & (intensity == k))) for k in range(3)]
    est = decoy.asymptotic_from_counts(xdet, errs, [s * (1 - params.p_z) ** 2 for s in sent],
                                       (params.mu, params.nu, params.vacuum))
    return {"detections": float(len(intensity)),
            "qber_z": _rate(err & match & (a_basis == 0), match & (a_basis == 0)),
            "qber_x": _rate(err & x, x),
            "y1_lower": est.y1_l, "e1_upper": est.e1_u, "signal_share": det[0] / sum(det)}


def _emulated(params: LinkParameters, seed: int) -> Records:
    # Alice's bits from a seeded generator too (the link takes them from the operating
    # system), so that the comparison at 3 standard errors below is one fixed draw.
    bit_rng = np.random.default_rng([seed, 7])
    train, record, _ = emulate(params, PULSES, np.random.default_rng(seed),
                               bits=lambda n: bit_rng.integers(0, 2, n, dtype=np.uint8))
    index, basis_b, bit_b = _clicks(record.bob_data())
    intensity, basis, bit = train.settings_at(index)
    return (intensity, basis, bit, basis_b, bit_b, train.sent.astype(float), index)


def _clicks(bob: BobData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bob's record as arrays: pulse index, basis, bit (reading drains it)."""
    parts = list(bob.detections.drain(1 << 30))
    index = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    values = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.uint8)
    basis, bit = split_bob_values(values)
    return index, basis, bit


def _simulated(params: LinkParameters, seed: int) -> Records:
    parts: dict[str, list[np.ndarray]] = {k: [] for k in "iabcde"}
    sent = np.zeros(3)
    for block in simulate(params, PULSES, seed):
        arrays: list[np.ndarray] = [block.alice.intensity, block.alice.basis,
                                    block.alice.bit, block.bob.basis, block.bob.bit,
                                    block.bob.index]
        for key, arr in zip("iabcde", arrays, strict=True):
            parts[key].append(arr)
        sent += block.alice.sent.sum(axis=1)
    cat = [np.concatenate(parts[k]) for k in "iabcde"]
    return cat[0], cat[1], cat[2], cat[3], cat[4], sent, cat[5]


def _agree(name: str, emulated: list[float], simulated: list[float]) -> None:
    e, s = np.array(emulated), np.array(simulated)
    se = math.sqrt(e.var(ddof=1) / len(e) + s.var(ddof=1) / len(s))
    assert abs(e.mean() - s.mean()) <= 3 * se + 1e-12, (
        f"{name}: emulated {e.mean():.6g} +- {e.std(ddof=1) / math.sqrt(len(e)):.2g}, "
        f"simulated {s.mean():.6g} +- {s.std(ddof=1) / math.sqrt(len(s)):.2g}")


def _distil(records: Records, params: LinkParameters, seed: int) -> float:
    """Secret bits per pulse after the real distillation of an emulated round."""
    intensity, a_basis, a_bit, b_basis, b_bit, sent, index = records
    alice_log, bob_log = DetectionLog(), DetectionLog()
    alice_log.append(index, alice_values(intensity, a_basis, a_bit))
    bob_log.append(index, bob_values(b_basis, b_bit))
    alice = AliceData(detections=alice_log,
                      pulses_sent=PULSES, sent=(sent[0], sent[1], sent[2]),
                      intensities=(params.mu, params.nu, params.vacuum),
                      probabilities=(params.p_mu, params.p_nu, params.p_vacuum))
    bob = BobData(detections=bob_log)
    end_a, end_b = queue_pair(20)
    chan_a = AuthenticatedChannel(end_a, SignatureAuthenticator(
        "Ed25519", ID_A.private, ID_B.public), Role.ALICE)
    chan_b = AuthenticatedChannel(end_b, SignatureAuthenticator(
        "Ed25519", ID_B.private, ID_A.public), Role.BOB)
    import threading

    out = {}
    gen_b = np.random.default_rng([seed, 1])
    def bob_side() -> None:
        try:
            out["b"] = run_bob(chan_b, bob, CONFIG, gen_b.bytes)
        finally:
            end_b.close()

    thread = threading.Thread(target=bob_side)
    thread.start()
    result = run_alice(chan_a, alice, CONFIG, np.random.default_rng([seed, 0]).bytes)
    thread.join()
    return 0.0 if result.aborted else result.secret_bits / PULSES


EVES: list[Eavesdropper | None] = [None, Eavesdropper("intercept-resend", 0.5),
                                   Eavesdropper("intercept-resend", 1.0),
                                   Eavesdropper("pns", 0.6)]


@pytest.mark.parametrize("eve", EVES, ids=lambda e: "no-eve" if e is None
                         else f"{e.kind}-{e.fraction:g}")
def test_emulated_optics_have_the_simulators_law(eve: Eavesdropper | None) -> None:
    params = _params(eve)
    emulated = [_emulated(params, 1000 + r) for r in range(ROUNDS)]
    simulated = [_simulated(params, 2000 + r) for r in range(ROUNDS)]
    obs_e = [_observables(r, params) for r in emulated]
    obs_s = [_observables(r, params) for r in simulated]
    for name in obs_e[0]:
        _agree(name, [o[name] for o in obs_e], [o[name] for o in obs_s])
    if eve is None:
        link = QKDLink("a", "b", params, CONFIG, identity_a=ID_A, identity_b=ID_B)
        key_s = [link.run_round(PULSES, seed=3000 + r).secret_bits / PULSES
                 for r in range(ROUNDS)]
        key_e = [_distil(rec, params, 4000 + r) for r, rec in enumerate(emulated)]
        assert np.mean(key_e) > 0 and np.mean(key_s) > 0
        _agree("secret bits per pulse", key_e, key_s)
    if eve is not None and eve.kind == "intercept-resend":
        assert all(o["qber_z"] > 0.11 for o in obs_e)  # every such round aborts


def test_pns_lowers_the_key_without_raising_the_qber() -> None:
    honest, pns = _params(None), _params(Eavesdropper("pns", 0.6))
    e_honest = [_observables(_emulated(honest, 5000 + r), honest) for r in range(4)]
    e_pns = [_observables(_emulated(pns, 6000 + r), pns) for r in range(4)]
    assert np.mean([o["qber_z"] for o in e_pns]) < 0.05
    assert np.mean([o["y1_lower"] for o in e_pns]) < 0.8 * np.mean(
        [o["y1_lower"] for o in e_honest])


def test_the_detector_sees_only_light_and_dark_counts() -> None:
    """What crosses the quantum channel names no intensity class, and a source whose
    light never arrives still gives Bob dark counts in every slot."""
    params = replace(_params(None), y0=1e-3)
    source = PulseSource(params, 1e-12, np.random.default_rng(1))
    train = source.new_train()
    block = source.block(train, 100_000)
    assert len(block.offset) == 0
    frame = block.encode()
    assert len(frame) == len(wire.MAGIC) + 1 + 36
    from hybridkex.qkd.optics.detector import BobTrain, Detector

    record = BobTrain(train.train)
    Detector(params.eta_bob, params.y0, params.e_detector, params.p_z,
             np.random.default_rng(2)).detect(block, record)
    clicks, _, _ = _clicks(record.bob_data())
    assert 50 <= len(clicks) <= 150  # Binomial(1e5, 1e-3)
    intensity, _, _ = train.settings_at(clicks)
    assert set(np.unique(intensity)) <= {0, 1, 2}
    with pytest.raises(LinkAborted):
        train.settings_at(clicks)  # never drawn twice


def _block() -> bytes:
    source = PulseSource(_params(None), 0.5, np.random.default_rng(3))
    return source.block(source.new_train(), 1000).encode()


def _n(frame: bytes) -> int:
    """Pulses in an encoded block: 41 bytes of header, then 6 per pulse."""
    return (len(frame) - 41) // 6


CORRUPT: list[tuple[str, Callable[[bytes], bytes]]] = [
    ("truncated", lambda b: b[:-1]),
    ("trailing", lambda b: b + b"\x00"),
    ("magic", lambda b: b"XKP1" + b[4:]),
    ("type", lambda b: b[:4] + b"\x09" + b[5:]),
    ("zero photons", lambda b: b[:41 + 4 * _n(b)] + bytes(_n(b)) + b[41 + 5 * _n(b):]),
    ("bad state", lambda b: b[:-1] + b"\x07"),
    ("count", lambda b: b[:37] + (10**6).to_bytes(4, "big") + b[41:]),
    ("empty", lambda b: b""),
]


@pytest.mark.parametrize("corrupt", CORRUPT, ids=[c[0] for c in CORRUPT])
def test_malformed_quantum_frames_are_refused(corrupt: tuple[str, Callable[[bytes], bytes]],
                                              ) -> None:
    good = _block()
    assert isinstance(wire.decode(good), wire.PulseBlock)
    with pytest.raises(QuantumChannelError):
        wire.decode(corrupt[1](good))


def test_device_hello_refuses_out_of_range_values() -> None:
    hello = wire.DeviceHello(wire.DETECTOR, 0.045, 0.0).encode()
    assert wire.decode(hello) == wire.DeviceHello(wire.DETECTOR, 0.045, 0.0)
    for bad in (wire.DeviceHello(wire.DETECTOR, 0.0, 0.0), wire.DeviceHello(3, 0.5, 0.0),
                wire.DeviceHello(wire.FIBRE, float("nan"), 0.0),
                wire.DeviceHello(wire.FIBRE, 0.5, -1.0)):
        with pytest.raises(QuantumChannelError):
            wire.decode(bad.encode())


def test_a_pulse_blocks_repr_shows_no_polarisation() -> None:
    source = PulseSource(_params(None), 0.5, np.random.default_rng(5))
    block = source.block(source.new_train(), 1000)
    assert len(block.state) > 0 and "state" not in repr(block) and "array" not in repr(block)


def test_alices_bits_come_from_the_os_not_the_generator_behind_the_bases() -> None:
    """Two sources on the same seed emit the same slots, classes and bases (all disclosed
    in sifting), and still different bits: the key is not a function of that seed."""
    params = _params(None)
    blocks = []
    for _ in range(2):
        source = PulseSource(params, 0.5, np.random.default_rng(7))
        blocks.append(source.block(source.new_train(), 20_000))
    one, two = blocks
    assert np.array_equal(one.offset, two.offset) and len(one.offset) > 1000
    assert np.array_equal(one.basis, two.basis)
    assert not np.array_equal(one.bit, two.bit)
    assert 0.45 < float(one.bit.mean()) < 0.55
