"""Bob's end of a distillation round: one function per protocol step, in protocol order.

Bob detected the pulses.  He announces his detections, chooses the public randomness
of the estimation sample and of Cascade, drives Cascade to correct his key towards
Alice's, and checks every length Alice announces against his own bound.  Each step
receives what it must, checks it against his own record, sends what it must, and
returns what later steps need; any failure raises
:class:`~hybridkex.qkd.errors.LinkAborted`.  :func:`run_bob` runs the steps.  The
protocol as a whole is described in :mod:`hybridkex.qkd.distillation`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from functools import partial

import numpy as np
import numpy.typing as npt

from hybridkex import primitives
from hybridkex.keydelivery.keys import UNIT_BITS
from hybridkex.qkd.distillation import estimation
from hybridkex.qkd.distillation.cascade import MIN_QBER, CascadeBob
from hybridkex.qkd.distillation.channel import AuthenticatedChannel
from hybridkex.qkd.distillation.data import (
    BobData,
    DistillationConfig,
    DistillationResult,
    Sifted,
    SiftedBuilder,
    split_bob_values,
)
from hybridkex.qkd.distillation.messages import (
    MAX_SIFT_CHUNK,
    NONCE_SIZE,
    SAMPLE_SEED_SIZE,
    Amplify,
    CascadeDone,
    CascadeResponse,
    Confirm,
    Estimate,
    EstimateReply,
    Hello,
    Sift,
    SiftReply,
    Verify,
    VerifyResult,
)
from hybridkex.qkd.distillation.session import (
    CASCADE_FRAME_BITS,
    CASCADE_SEED_SIZE,
    check_confirmation,
    check_reconcilable,
    confirmation_bits,
    reconciliation_segments,
    run_guarded,
    session_id,
    split_confirmation,
    verification_input,
)
from hybridkex.qkd.distillation.toeplitz import toeplitz_hash
from hybridkex.qkd.ends import Role
from hybridkex.qkd.errors import LinkAborted, MalformedMessage
from hybridkex.qkd.progress import AMPLIFICATION, RECONCILIATION, SIFTING, StageProgress

__all__ = ["amplify", "confirm", "estimate", "hello", "reconcile", "run_bob", "sift", "verify"]

Bits = npt.NDArray[np.uint8]
RandomBytes = Callable[[int], bytes]


def run_bob(chan: AuthenticatedChannel, data: BobData, config: DistillationConfig,
            random_bytes: RandomBytes = os.urandom,
            progress: StageProgress | None = None) -> DistillationResult:
    """Bob's side of one distillation round.

    ``random_bytes`` supplies the protocol's public random choices (his nonce, the
    estimation sample's seed, Cascade's seed); only a reproducible simulation replaces
    the operating system's CSPRNG.  Bob drives sifting and reconciliation, so he is
    the end that reports their ``progress``.
    """
    result = DistillationResult(role=Role.BOB)
    return run_guarded(chan, result, partial(_steps, chan, data, config, random_bytes, result,
                                             progress))


def _steps(chan: AuthenticatedChannel, data: BobData, config: DistillationConfig,
           random_bytes: RandomBytes, result: DistillationResult,
           progress: StageProgress | None) -> None:
    announced = hello(chan, data)
    sifted = sift(chan, data, announced, random_bytes, result, progress)
    est, key = estimate(chan, sifted, announced, config, random_bytes, result)
    corrected, leaked = reconcile(chan, key, est, random_bytes, result, progress)
    del key  # the corrected key replaces it (a long block is tens of MB)
    verify(chan, corrected)
    if progress is not None:
        progress(AMPLIFICATION, 0, 1)
    output, amplified = amplify(chan, corrected, est, announced, sifted, leaked, config, result)
    if progress is not None:
        progress(AMPLIFICATION, 1, 1)
    result.keep(confirm(chan, output), amplified.reserve_bits, amplified.key_ids)


def hello(chan: AuthenticatedChannel, data: BobData) -> Hello:
    """1. Take Alice's hello; refuse it if he registered a pulse she says she never sent."""
    announced = chan.recv(Hello)
    if data.detections.last_index >= announced.pulses_sent:
        raise LinkAborted("Bob registered more pulses than Alice announces")
    return announced


def sift(chan: AuthenticatedChannel, data: BobData, announced: Hello,
         random_bytes: RandomBytes, result: DistillationResult,
         progress: StageProgress | None = None) -> Sifted:
    """2. Announce his detections and bases with his nonce (the session ID follows from
    both nonces), chunk by chunk, and take Alice's bases and intensity classes at them.
    His record is let go of as it is announced; he keeps only the matched bits."""
    nonce = random_bytes(NONCE_SIZE)
    total = len(data.detections)
    sifted = SiftedBuilder()
    if progress is not None:
        progress(SIFTING, 0, total)
    chunks = data.detections.drain(MAX_SIFT_CHUNK)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.uint8))
    for index, values in itertools.chain(chunks, [empty] if not total else []):
        basis, bit = split_bob_values(values)
        chan.send(Sift(nonce, total, index, basis))
        chan.session_id = session_id(announced.nonce, nonce)
        alice = chan.recv(SiftReply)
        if len(alice.basis) != len(index):
            raise MalformedMessage("malformed sifting reply: not one entry per detection")
        sifted.add(alice.intensity, bit, alice.basis == basis, basis)
        if progress is not None:
            progress(SIFTING, sifted.detections, total)
    return sifted.finish(result)


def estimate(chan: AuthenticatedChannel, sifted: Sifted, announced: Hello,
             config: DistillationConfig, random_bytes: RandomBytes,
             result: DistillationResult) -> tuple[estimation.Estimates, Bits]:
    """3. Pick the Z sample with a fresh public seed, disclose his X bits and the sample,
    count the errors against Alice's, and stop if no key can come out.  Returns the
    estimates and his key block."""
    sample_seed = random_bytes(SAMPLE_SEED_SIZE)
    z_bits, x_bits = sifted.z_bits, sifted.x_bits
    sample = estimation.sample_z(len(z_bits), sample_seed, config)
    chan.send(Estimate(sample_seed, x_bits, z_bits[sample]))
    alice = chan.recv(EstimateReply)
    if len(alice.x_bits) != len(x_bits) or len(alice.z_sample_bits) != np.count_nonzero(
            sample):
        raise MalformedMessage("malformed estimation reply: bit counts differ from sifting")
    est = estimation.estimate(sifted.z_intensity, sifted.x_intensity, sample,
                              z_bits[sample] ^ alice.z_sample_bits, x_bits ^ alice.x_bits)
    estimation.check_worth_reconciling(est, announced, sifted.intensity, config, result)
    return est, z_bits[~sample]


def reconcile(chan: AuthenticatedChannel, key: Bits, est: estimation.Estimates,
              random_bytes: RandomBytes, result: DistillationResult,
              progress: StageProgress | None = None) -> tuple[Bits, int]:
    """4. Drive Cascade towards Alice's key over deferred frames, segment by segment
    (:func:`.session.reconciliation_segments`), then send the tagged summary that
    authenticates them.  Returns his corrected key and the bits leaked."""
    check_reconcilable(key)
    qber = max(est.qber_sample, MIN_QBER)
    corrected = key.copy()
    leaked = round_trips = 0
    if progress is not None:
        progress(RECONCILIATION, 0, len(key))
    for lo, hi in reconciliation_segments(len(key)):
        cascade = CascadeBob(key[lo:hi], qber, random_bytes(CASCADE_SEED_SIZE),
                             frame_bits=CASCADE_FRAME_BITS)
        while (request := cascade.request()) is not None:
            chan.send(request, deferred=True)
            cascade.receive(chan.recv(CascadeResponse, deferred=True))
        corrected[lo:hi] = cascade.corrected
        leaked += cascade.leaked_bits
        round_trips += cascade.round_trips
        del cascade  # before the next segment's: one Cascade's memory at a time
        if progress is not None:
            progress(RECONCILIATION, hi, len(key))
    errors = int(np.count_nonzero(corrected != key))
    chan.send(CascadeDone(leaked, errors))
    result.record_reconciliation(len(key), leaked, errors, round_trips)
    return corrected, leaked


def verify(chan: AuthenticatedChannel, corrected: Bits) -> None:
    """5. Check Alice's one-time hash against his corrected key and tell her the result."""
    alice = chan.recv(Verify)
    same = primitives.mac("Poly1305").verify(alice.key, verification_input(corrected),
                                             alice.tag)
    chan.send(VerifyResult(same))
    if not same:
        raise LinkAborted("verification hash mismatch: the block is discarded")


def amplify(chan: AuthenticatedChannel, corrected: Bits, est: estimation.Estimates,
            announced: Hello, sifted: Sifted, leaked: int, config: DistillationConfig,
            result: DistillationResult) -> tuple[Bits, Amplify]:
    """6. Compute his own bound, accept Alice's output length only if it is the same, and
    hash his key down with her seed."""
    length = estimation.secret_length(est, announced, sifted.intensity, leaked, config)
    estimation.record_length(result, length)
    alice = chan.recv(Amplify)
    reserve, n_keys = estimation.output_plan(length.bits, config)
    out_bits = estimation.output_length(reserve + n_keys * UNIT_BITS, len(corrected))
    if (alice.out_bits, alice.reserve_bits) != (out_bits, reserve):
        raise LinkAborted("Alice's key length differs from Bob's bound")
    if len(alice.seed) != len(corrected) + alice.out_bits - 1 or len(alice.key_ids) != n_keys:
        raise MalformedMessage("malformed privacy amplification message: seed length or "
                               "key ID count")
    result.pa_input_bits, result.secret_bits = len(corrected), reserve + n_keys * UNIT_BITS
    return toeplitz_hash(corrected, alice.seed, alice.out_bits), alice


def confirm(chan: AuthenticatedChannel, output: Bits) -> Bits:
    """7. Check Alice's half of the confirmation bits against his, disclose his half, and
    return the key that follows them.  The confirmation bits are never key."""
    confirmation, final = split_confirmation(output)
    check_confirmation(confirmation, chan.recv(Confirm).bits, Role.ALICE)
    chan.send(Confirm(confirmation_bits(confirmation, Role.BOB)))
    return final
