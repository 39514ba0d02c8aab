"""Key distillation as a two-party protocol over the authenticated classical channel.

Alice (the transmitter) and Bob (the receiver) are separate objects.  Each holds
only its own record of the quantum phase and learns the other's data only from
authenticated messages.  One function per protocol step, in protocol order:

1. ``hello`` (A->B): fresh nonce, announced intensities and probabilities.
2. ``sift`` (B->A): the pulses Bob detected and his bases.  Alice answers with her
   bases and intensity classes at those pulses; both keep the basis matches.
3. ``estimate`` (B<->A): every X-basis bit and a random sample of Z-basis bits are
   disclosed.  Both count errors per basis and intensity, bound the single-photon
   yield and phase error (finite-size, Lim et al. 2014, or asymptotic), and abort
   if the QBER exceeds the threshold or no key length is positive.
4. ``reconcile``: Cascade on the remaining Z bits, Bob correcting towards Alice;
   every parity bit Alice reveals is counted.
5. ``verify``: Alice sends a one-time universal hash (Poly1305 under a fresh public
   key) of her key; a mismatch discards the block.
6. ``amplify``: Alice sends a fresh Toeplitz seed; both hash the key down to the
   length the bounds allow (the leftover hash lemma with the disclosed bits).
7. ``confirm``: both exchange an HMAC keyed by the final key, so each knows the
   other holds the same key before either deposits anything.

Every message is authenticated (:mod:`hybridkex.qkd.wire`).  Any failure raises
:class:`LinkAborted` and neither side keeps a key from the round; the
authentication key it spent stays spent.
"""

from __future__ import annotations

import hmac
import math
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from hybridkex import primitives
from hybridkex.errors import InvalidParameter
from hybridkex.keydelivery.keys import UNIT_BITS, StoredKey
from hybridkex.qkd import decoy
from hybridkex.qkd.authentication import ALICE, BOB, AuthKeysExhausted
from hybridkex.qkd.cascade import CascadeAlice, CascadeBob, CascadeError
from hybridkex.qkd.channel import ChannelClosed
from hybridkex.qkd.toeplitz import toeplitz_hash
from hybridkex.qkd.wire import AuthenticatedChannel, LinkAborted, MessageType, Reader, Writer

__all__ = [
    "AliceData",
    "BobData",
    "DistillationConfig",
    "DistillationResult",
    "RoundMetrics",
    "run_alice",
    "run_bob",
]

Bits = npt.NDArray[np.uint8]
Z, X = 0, 1
PROTOCOL_VERSION = 1
CONFIRM_LABEL = b"hybridkex qkd key confirmation v1"
# Cascade frames reconciled side by side over shared messages (bench/qkd_cascade.py:
# 1e5-bit frames reach f ~1.04 at 2 Mbit/s); one failed frame fails verification of
# the whole block, which is then discarded.
CASCADE_FRAME_BITS = 100_000


@dataclass(frozen=True)
class DistillationConfig:
    """Security and protocol choices; both sites must use the same."""

    finite_key: bool = True
    eps_sec: float = 1e-10
    eps_cor: float = 1e-15
    qber_abort: float = 0.11          # above this Z QBER no key can be distilled with Cascade
    z_sample_fraction: float = 0.05   # Z bits disclosed to estimate the QBER for Cascade
    z_sample_minimum: int = 256
    f_ec_estimate: float = 1.1        # for the early abort before reconciliation only
    auth_reserve_bits: int = 4096     # final-key bits kept to authenticate the next round


@dataclass(repr=False)
class AliceData:
    """What Alice recorded: her choices at each pulse that Bob may announce, and her totals.

    The simulator keeps Alice's choices only at pulses that produced a click, which is
    all she keeps once Bob has announced them; she still looks them up by Bob's
    announced indices and refuses an index she has no record of.
    """

    index: npt.NDArray[np.int64]
    intensity: Bits       # 0 signal, 1 weak decoy, 2 vacuum
    basis: Bits           # 0 Z, 1 X
    bit: Bits
    pulses_sent: int
    sent: tuple[float, float, float]   # pulses sent per intensity class
    intensities: tuple[float, float, float]
    probabilities: tuple[float, float, float]


@dataclass(repr=False)
class BobData:
    """What Bob's detectors registered: pulse index, his basis, his bit."""

    index: npt.NDArray[np.int64]
    basis: Bits
    bit: Bits


@dataclass(kw_only=True)
class RoundMetrics:
    """The figures of one distillation round, as both parties can report them."""

    detections: int = 0
    sifted_bits: int = 0
    qber: float = 0.0
    qber_x: float = 0.0
    y1_lower: float = 0.0
    e1_upper: float = 0.0
    ec_leaked_bits: int = 0
    ec_efficiency: float = 0.0
    ec_round_trips: int = 0
    pa_input_bits: int = 0
    secret_bits: int = 0


@dataclass(kw_only=True)
class DistillationResult(RoundMetrics):
    """What one party reports for a round; ``keys`` is empty when the round aborted."""

    role: int
    auth_reserve: bytes = field(default=b"", repr=False)
    keys: list[StoredKey] = field(default_factory=list, repr=False)
    aborted: bool = False
    abort_reason: str = ""
    bound: decoy.FiniteKeyResult | None = None


# --- helpers shared by both sides -------------------------------------------------------


def _counts(intensity: Bits, errors: Bits) -> decoy.BasisCounts:
    n = tuple(float(np.count_nonzero(intensity == k)) for k in range(3))
    m = tuple(float(np.count_nonzero(errors[intensity == k])) for k in range(3))
    return decoy.BasisCounts(n, m)  # type: ignore[arg-type]


def _sample_z(n_z: int, seed: bytes, config: DistillationConfig) -> npt.NDArray[np.bool_]:
    """The Z positions disclosed for QBER estimation, chosen from Bob's public seed."""
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(seed, "big")))
    size = min(n_z, max(config.z_sample_minimum, math.ceil(config.z_sample_fraction * n_z)))
    mask = np.zeros(n_z, dtype=bool)
    mask[rng.choice(n_z, size=size, replace=False)] = True
    return mask


@dataclass
class _Estimate:
    z: decoy.BasisCounts
    x: decoy.BasisCounts
    qber_sample: float
    qber_x: float


def _session_id(nonce_a: bytes, nonce_b: bytes) -> bytes:
    return primitives.digest("SHA-256", b"hybridkex qkd session" + nonce_a + nonce_b)[:16]


def _estimate(intensity_z: Bits, intensity_x: Bits, sample: npt.NDArray[np.bool_],
              z_errors_sample: Bits, x_errors: Bits) -> _Estimate:
    keep = ~sample
    n_sample = int(np.count_nonzero(sample))
    qber_sample = float(np.count_nonzero(z_errors_sample)) / n_sample if n_sample else 0.5
    qber_x = float(np.count_nonzero(x_errors)) / len(x_errors) if len(x_errors) else 0.5
    # Z counts are those of the key positions; their errors are not known yet.
    z = decoy.BasisCounts(
        tuple(float(np.count_nonzero(intensity_z[keep] == k)) for k in range(3)),  # type: ignore[arg-type]
        (0.0, 0.0, 0.0))
    return _Estimate(z, _counts(intensity_x, x_errors), qber_sample, qber_x)


@dataclass(frozen=True)
class _Announced:
    """What Alice announces in HELLO and both sides then use identically."""

    intensities: tuple[float, float, float]
    probabilities: tuple[float, float, float]
    sent: tuple[float, float, float]


def _secret_length(est: _Estimate, announced: _Announced, detected_intensity: Bits,
                   lambda_ec: float, config: DistillationConfig
                   ) -> tuple[int, decoy.FiniteKeyResult | None, float, float]:
    """(secret bits, finite-key bounds or None, Y1 lower, e1 upper) for the key block.

    Both sides call this on the same disclosed data and get the same answer.
    """
    if config.finite_key:
        bound = decoy.finite_key(est.z, est.x, announced.intensities, announced.probabilities,
                                 lambda_ec, config.eps_sec, config.eps_cor)
        # Reported Y1 bound: s_Z1 over the single-photon pulses behind the key block,
        # N_block * tau_1 with N_block = n_key / Q (Q the overall gain, the same in
        # both bases) and tau_1 = sum_k p_k mu_k e^-mu_k.
        n_key = est.z.n_total
        gain = len(detected_intensity) / sum(announced.sent) if sum(announced.sent) else 0.0
        tau1 = sum(p * mu * math.exp(-mu)
                   for p, mu in zip(announced.probabilities, announced.intensities, strict=True))
        y1 = min(1.0, bound.s_z1_l * gain / (n_key * tau1)) if n_key and tau1 else 0.0
        return max(0, math.floor(bound.ell)), bound, y1, bound.phi_u
    return _asymptotic_length(est, announced, detected_intensity, lambda_ec)


def _asymptotic_length(est: _Estimate, announced: _Announced, detected_intensity: Bits,
                       lambda_ec: float) -> tuple[int, None, float, float]:
    """Asymptotic length (sampling fluctuations ignored; for comparison with the analytic
    model): gains per intensity from all detections, error rates from the X basis, the
    vacuum + weak bounds, and ell = sum_k n_Z,k * (Y1 k e^-k / Q_k) * (1 - h2(e1)) - leak.
    """
    detections = [float(np.count_nonzero(detected_intensity == k)) for k in range(3)]
    qber_x = [est.x.m[k] / est.x.n[k] if est.x.n[k] else 0.5 for k in range(3)]
    try:
        a = decoy.asymptotic_from_counts(
            detections, [qber_x[k] * detections[k] for k in range(3)], announced.sent,
            announced.intensities)
    except (ValueError, ZeroDivisionError):
        return 0, None, 0.0, 0.5
    gains = (a.q_mu, a.q_nu)
    singles = sum(
        est.z.n[k] * min(1.0, a.y1_l * mu * math.exp(-mu) / gains[k])
        for k, mu in enumerate(announced.intensities[:2]) if gains[k] > 0
    )
    ell = singles * (1.0 - decoy.h2(a.e1_u)) - lambda_ec
    return max(0, math.floor(ell)), None, a.y1_l, a.e1_u


def _confirmation(final_key: bytes, session_id: bytes, role: int) -> bytes:
    return primitives.mac("HMAC-SHA256").compute(
        final_key, CONFIRM_LABEL + session_id + bytes([role]))


def _split_output(result: DistillationResult, final_bits: Bits, key_ids: list[str],
                  initiators: tuple[str, str], reserve_bits: int) -> None:
    material = np.packbits(final_bits).tobytes()
    reserve_bytes = reserve_bits // 8
    result.auth_reserve = material[:reserve_bytes]
    unit = UNIT_BITS // 8
    body = material[reserve_bytes:]
    result.keys = [
        StoredKey(key_id, body[i * unit:(i + 1) * unit], initiators[i % 2])
        for i, key_id in enumerate(key_ids)
    ]


def _output_plan(secret_bits: int, config: DistillationConfig) -> tuple[int, int]:
    """(authentication reserve bits, number of 256-bit keys) from a secret length."""
    reserve = min(config.auth_reserve_bits, (secret_bits // 8) * 8)
    return reserve, (secret_bits - reserve) // UNIT_BITS


def _early_check(est: _Estimate, announced: _Announced, detected_intensity: Bits,
                 config: DistillationConfig) -> None:
    """Abort before reconciliation when no key can come out of this block."""
    if est.qber_sample > config.qber_abort:
        raise LinkAborted(f"QBER {est.qber_sample:.3f} above the threshold {config.qber_abort}")
    n_key = est.z.n_total
    leak = decoy.ec_leakage(n_key, est.qber_sample * n_key, config.f_ec_estimate)
    ell, _, _, _ = _secret_length(est, announced, detected_intensity, leak, config)
    if ell <= 0:
        raise LinkAborted("the estimated secret key length is not positive")


def _key_bytes(bits: Bits) -> bytes:
    return len(bits).to_bytes(8, "big") + np.packbits(bits).tobytes()


def _guard(chan: AuthenticatedChannel, result: DistillationResult,
           step: Callable[[], None]) -> DistillationResult:
    """Run the protocol; on any failure tell the peer, keep no key, report why."""
    try:
        step()
    except (LinkAborted, CascadeError, ChannelClosed, AuthKeysExhausted, InvalidParameter,
            ValueError, IndexError, OverflowError) as exc:
        # The last three can only come from peer data that passed the framing checks
        # but not the arithmetic on it; they end the round like any malformed message.
        if isinstance(exc, LinkAborted):
            reason = exc.reason
        elif isinstance(exc, ValueError | IndexError | OverflowError) and not isinstance(
                exc, InvalidParameter):
            reason = "malformed classical message"
        else:
            reason = str(exc)
        if not reason.startswith("peer aborted"):
            chan.abort(reason)
        result.keys, result.auth_reserve = [], b""
        result.aborted, result.abort_reason = True, reason
    return result


def run_alice(chan: AuthenticatedChannel, data: AliceData, config: DistillationConfig,
              initiators: tuple[str, str],
              random_bytes: Callable[[int], bytes] = os.urandom) -> DistillationResult:
    """Alice's side of one distillation round.  ``initiators`` alternate over the keys.

    ``random_bytes`` supplies the protocol's public random choices (nonces, the
    verification key, the Toeplitz seed); only a reproducible simulation replaces
    the operating system's CSPRNG.
    """
    result = DistillationResult(role=ALICE)

    def protocol() -> None:
        # 1. hello
        nonce_a = random_bytes(16)
        chan.session_id = nonce_a
        announced = _Announced(data.intensities, data.probabilities, data.sent)
        hello = Writer().u8(PROTOCOL_VERSION).blob(nonce_a)
        for v in (*announced.intensities, *announced.probabilities, *announced.sent):
            hello.f64(v)
        chan.send(MessageType.HELLO, hello.u64(data.pulses_sent).build())

        # 2. sifting
        r = Reader(chan.recv(MessageType.SIFT))
        nonce_b = r.blob()
        index = r.u64_array()
        bob_basis = r.bits()
        r.end()
        if len(nonce_b) != 16 or len(bob_basis) != len(index):
            raise LinkAborted("malformed sifting message")
        if len(index) and (np.any(np.diff(index) <= 0) or index[0] < 0
                           or index[-1] >= data.pulses_sent):
            raise LinkAborted("sifting message announces invalid pulse indices")
        chan.session_id = _session_id(nonce_a, nonce_b)
        pos = np.searchsorted(data.index, index)
        pos_ok = pos < len(data.index)
        if not np.all(pos_ok) or not np.array_equal(data.index[pos], index):
            raise LinkAborted("Bob announced a pulse that produced no click")
        a_basis, a_int, a_bit = data.basis[pos], data.intensity[pos], data.bit[pos]
        chan.send(MessageType.SIFT_REPLY, Writer().bits(a_basis).u8_array(a_int).build())
        match = a_basis == bob_basis
        z, x = match & (a_basis == Z), match & (a_basis == X)
        result.detections, result.sifted_bits = len(index), int(np.count_nonzero(match))

        # 3. parameter estimation
        r = Reader(chan.recv(MessageType.ESTIMATE))
        sample_seed = r.blob()
        bob_x, bob_sample = r.bits(), r.bits()
        r.end()
        z_bits, z_int = a_bit[z], a_int[z]
        sample = _sample_z(len(z_bits), sample_seed, config)
        if len(sample_seed) != 32 or len(bob_x) != np.count_nonzero(x) or len(
                bob_sample) != np.count_nonzero(sample):
            raise LinkAborted("malformed estimation message")
        chan.send(MessageType.ESTIMATE_REPLY,
                  Writer().bits(a_bit[x]).bits(z_bits[sample]).build())
        est = _estimate(z_int, a_int[x], sample, z_bits[sample] ^ bob_sample, a_bit[x] ^ bob_x)
        result.qber_x = est.qber_x
        _early_check(est, announced, a_int, config)

        # 4. reconciliation: Alice answers Bob's parity queries
        key = z_bits[~sample]
        cascade = CascadeAlice(key)
        while True:
            # parity requests are deferred; the tagged DONE message covers them
            msg_type, payload = chan.recv_any({MessageType.CASCADE_REQUEST: True,
                                               MessageType.CASCADE_DONE: False})
            if msg_type == MessageType.CASCADE_DONE:
                r = Reader(payload)
                leaked, errors = r.u64(), r.u64()
                r.end()
                break
            request = payload
            chan.send(MessageType.CASCADE_RESPONSE, cascade.respond(request), deferred=True)
        if leaked != cascade.leaked_bits:
            raise LinkAborted("the parties disagree on the bits reconciliation disclosed")
        _record_reconciliation(result, len(key), leaked, errors, cascade.round_trips)

        # 5. verification
        verify_key = random_bytes(32)
        tag = primitives.mac("Poly1305").compute(verify_key, _key_bytes(key))
        chan.send(MessageType.VERIFY, Writer().blob(verify_key).blob(tag).build())
        r = Reader(chan.recv(MessageType.VERIFY_RESULT))
        ok = r.u8()
        r.end()
        if ok != 1:
            raise LinkAborted("verification hash mismatch: the block is discarded")

        # 6. privacy amplification
        ell, result.bound, result.y1_lower, result.e1_upper = _secret_length(
            est, announced, a_int, leaked, config)
        reserve, n_keys = _output_plan(ell, config)
        out_bits = reserve + n_keys * UNIT_BITS
        if out_bits <= 0:
            raise LinkAborted("the secret key length after reconciliation is not positive")
        seed_bits = np.unpackbits(np.frombuffer(random_bytes((len(key) + out_bits + 6) // 8),
                                                dtype=np.uint8))[:len(key) + out_bits - 1]
        key_ids = [str(uuid.UUID(bytes=random_bytes(16), version=4)) for _ in range(n_keys)]
        chan.send(MessageType.AMPLIFY, Writer().u64(out_bits).u64(reserve).bits(seed_bits)
                  .blob(b"".join(uuid.UUID(k).bytes for k in key_ids)).build())
        final = toeplitz_hash(key, seed_bits, out_bits)
        result.pa_input_bits, result.secret_bits = len(key), out_bits

        # 7. key confirmation
        final_bytes = np.packbits(final).tobytes()
        chan.send(MessageType.CONFIRM, _confirmation(final_bytes, chan.session_id or b"", ALICE))
        theirs = chan.recv(MessageType.CONFIRM)
        if not hmac.compare_digest(theirs, _confirmation(final_bytes, chan.session_id or b"",
                                                         BOB)):
            raise LinkAborted("key confirmation failed")
        _split_output(result, final, key_ids, initiators, reserve)

    return _guard(chan, result, protocol)


def run_bob(chan: AuthenticatedChannel, data: BobData, config: DistillationConfig,
            initiators: tuple[str, str],
            random_bytes: Callable[[int], bytes] = os.urandom) -> DistillationResult:
    """Bob's side of one distillation round."""
    result = DistillationResult(role=BOB)

    def protocol() -> None:
        # 1. hello
        r = Reader(chan.recv(MessageType.HELLO))
        version, nonce_a = r.u8(), r.blob()
        values = [r.f64() for _ in range(9)]
        pulses = r.u64()
        r.end()
        if version != PROTOCOL_VERSION or len(nonce_a) != 16:
            raise LinkAborted("unsupported or malformed hello")
        if not all(math.isfinite(v) and v >= 0 for v in values):
            raise LinkAborted("hello announces invalid parameters")
        announced = _Announced(tuple(values[0:3]), tuple(values[3:6]),  # type: ignore[arg-type]
                               tuple(values[6:9]))  # type: ignore[arg-type]
        if len(data.index) and data.index[-1] >= pulses:
            raise LinkAborted("Bob registered more pulses than Alice announces")

        # 2. sifting
        nonce_b = random_bytes(16)
        chan.send(MessageType.SIFT, Writer().blob(nonce_b).u64_array(data.index)
                  .bits(data.basis).build())
        chan.session_id = _session_id(nonce_a, nonce_b)
        r = Reader(chan.recv(MessageType.SIFT_REPLY))
        a_basis, a_int = r.bits(), r.u8_array()
        r.end()
        if len(a_basis) != len(data.index) or len(a_int) != len(data.index) or np.any(a_int > 2):
            raise LinkAborted("malformed sifting reply")
        match = a_basis == data.basis
        z, x = match & (data.basis == Z), match & (data.basis == X)
        result.detections, result.sifted_bits = len(data.index), int(np.count_nonzero(match))

        # 3. parameter estimation
        sample_seed = random_bytes(32)
        z_bits, z_int = data.bit[z], a_int[z]
        sample = _sample_z(len(z_bits), sample_seed, config)
        chan.send(MessageType.ESTIMATE, Writer().blob(sample_seed).bits(data.bit[x])
                  .bits(z_bits[sample]).build())
        r = Reader(chan.recv(MessageType.ESTIMATE_REPLY))
        alice_x, alice_sample = r.bits(), r.bits()
        r.end()
        if len(alice_x) != np.count_nonzero(x) or len(alice_sample) != np.count_nonzero(sample):
            raise LinkAborted("malformed estimation reply")
        est = _estimate(z_int, a_int[x], sample, z_bits[sample] ^ alice_sample,
                        data.bit[x] ^ alice_x)
        result.qber_x = est.qber_x
        _early_check(est, announced, a_int, config)

        # 4. reconciliation: Bob drives Cascade towards Alice's key
        key = z_bits[~sample]
        cascade = CascadeBob(key, max(est.qber_sample, 1e-4), random_bytes(32),
                             frame_bits=CASCADE_FRAME_BITS)
        while (request := cascade.request()) is not None:
            chan.send(MessageType.CASCADE_REQUEST, request, deferred=True)
            cascade.receive(chan.recv(MessageType.CASCADE_RESPONSE, deferred=True))
        corrected = cascade.corrected
        errors = int(np.count_nonzero(corrected != key))
        chan.send(MessageType.CASCADE_DONE, Writer().u64(cascade.leaked_bits).u64(errors).build())
        _record_reconciliation(result, len(key), cascade.leaked_bits, errors,
                               cascade.round_trips)

        # 5. verification
        r = Reader(chan.recv(MessageType.VERIFY))
        verify_key, tag = r.blob(), r.blob()
        r.end()
        if len(verify_key) != 32:
            raise LinkAborted("malformed verification message")
        same = primitives.mac("Poly1305").verify(verify_key, _key_bytes(corrected), tag)
        chan.send(MessageType.VERIFY_RESULT, Writer().u8(1 if same else 0).build())
        if not same:
            raise LinkAborted("verification hash mismatch: the block is discarded")

        # 6. privacy amplification
        ell, result.bound, result.y1_lower, result.e1_upper = _secret_length(
            est, announced, a_int, cascade.leaked_bits, config)
        r = Reader(chan.recv(MessageType.AMPLIFY))
        out_bits, reserve = r.u64(), r.u64()
        seed_bits, raw_ids = r.bits(), r.blob()
        r.end()
        expected_reserve, n_keys = _output_plan(ell, config)
        if (out_bits, reserve) != (expected_reserve + n_keys * UNIT_BITS, expected_reserve):
            raise LinkAborted("Alice's key length differs from Bob's bound")
        if len(seed_bits) != len(corrected) + out_bits - 1 or len(raw_ids) != 16 * n_keys:
            raise LinkAborted("malformed privacy amplification message")
        key_ids = [str(uuid.UUID(bytes=raw_ids[i:i + 16])) for i in range(0, len(raw_ids), 16)]
        final = toeplitz_hash(corrected, seed_bits, out_bits)
        result.pa_input_bits, result.secret_bits = len(corrected), out_bits

        # 7. key confirmation
        final_bytes = np.packbits(final).tobytes()
        theirs = chan.recv(MessageType.CONFIRM)
        chan.send(MessageType.CONFIRM, _confirmation(final_bytes, chan.session_id or b"", BOB))
        if not hmac.compare_digest(theirs, _confirmation(final_bytes, chan.session_id or b"",
                                                         ALICE)):
            raise LinkAborted("key confirmation failed")
        _split_output(result, final, key_ids, initiators, reserve)

    return _guard(chan, result, protocol)


def _record_reconciliation(result: DistillationResult, n: int, leaked: int, errors: int,
                           round_trips: int) -> None:
    result.qber = errors / n if n else 0.0
    result.ec_leaked_bits, result.ec_round_trips = leaked, round_trips
    shannon = n * decoy.h2(result.qber)
    result.ec_efficiency = leaked / shannon if shannon else float("inf")
