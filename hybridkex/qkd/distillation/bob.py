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
    X,
    Z,
)
from hybridkex.qkd.distillation.messages import (
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
    run_guarded,
    session_id,
    split_confirmation,
    verification_input,
)
from hybridkex.qkd.distillation.toeplitz import toeplitz_hash
from hybridkex.qkd.ends import Role
from hybridkex.qkd.errors import LinkAborted, MalformedMessage

__all__ = ["amplify", "confirm", "estimate", "hello", "reconcile", "run_bob", "sift", "verify"]

Bits = npt.NDArray[np.uint8]
RandomBytes = Callable[[int], bytes]


def run_bob(chan: AuthenticatedChannel, data: BobData, config: DistillationConfig,
            random_bytes: RandomBytes = os.urandom) -> DistillationResult:
    """Bob's side of one distillation round.

    ``random_bytes`` supplies the protocol's public random choices (his nonce, the
    estimation sample's seed, Cascade's seed); only a reproducible simulation replaces
    the operating system's CSPRNG.
    """
    result = DistillationResult(role=Role.BOB)
    return run_guarded(chan, result, partial(_steps, chan, data, config, random_bytes, result))


def _steps(chan: AuthenticatedChannel, data: BobData, config: DistillationConfig,
           random_bytes: RandomBytes, result: DistillationResult) -> None:
    announced = hello(chan, data)
    sifted = sift(chan, data, announced, random_bytes, result)
    est, key = estimate(chan, sifted, announced, config, random_bytes, result)
    corrected, leaked = reconcile(chan, key, est, random_bytes, result)
    verify(chan, corrected)
    output, amplified = amplify(chan, corrected, est, announced, sifted, leaked, config, result)
    result.keep(confirm(chan, output), amplified.reserve_bits, amplified.key_ids)


def hello(chan: AuthenticatedChannel, data: BobData) -> Hello:
    """1. Take Alice's hello; refuse it if he registered a pulse she says she never sent."""
    announced = chan.recv(Hello)
    if len(data.index) and data.index[-1] >= announced.pulses_sent:
        raise LinkAborted("Bob registered more pulses than Alice announces")
    return announced


def sift(chan: AuthenticatedChannel, data: BobData, announced: Hello,
         random_bytes: RandomBytes, result: DistillationResult) -> Sifted:
    """2. Announce his detections and bases with his nonce (the session ID follows from
    both nonces), and take Alice's bases and intensity classes at them."""
    nonce = random_bytes(NONCE_SIZE)
    chan.send(Sift(nonce, data.index, data.basis))
    chan.session_id = session_id(announced.nonce, nonce)
    alice = chan.recv(SiftReply)
    if len(alice.basis) != len(data.index):
        raise MalformedMessage("malformed sifting reply: not one entry per detection")
    match = alice.basis == data.basis
    result.detections, result.sifted_bits = len(data.index), int(np.count_nonzero(match))
    return Sifted(alice.intensity, data.bit, match & (data.basis == Z),
                  match & (data.basis == X))


def estimate(chan: AuthenticatedChannel, sifted: Sifted, announced: Hello,
             config: DistillationConfig, random_bytes: RandomBytes,
             result: DistillationResult) -> tuple[estimation.Estimates, Bits]:
    """3. Pick the Z sample with a fresh public seed, disclose his X bits and the sample,
    count the errors against Alice's, and stop if no key can come out.  Returns the
    estimates and his key block."""
    sample_seed = random_bytes(SAMPLE_SEED_SIZE)
    z_bits = sifted.bit[sifted.z]
    x_bits = sifted.bit[sifted.x]
    sample = estimation.sample_z(len(z_bits), sample_seed, config)
    chan.send(Estimate(sample_seed, x_bits, z_bits[sample]))
    alice = chan.recv(EstimateReply)
    if len(alice.x_bits) != len(x_bits) or len(alice.z_sample_bits) != np.count_nonzero(
            sample):
        raise MalformedMessage("malformed estimation reply: bit counts differ from sifting")
    est = estimation.estimate(sifted.intensity[sifted.z], sifted.intensity[sifted.x], sample,
                              z_bits[sample] ^ alice.z_sample_bits, x_bits ^ alice.x_bits)
    estimation.check_worth_reconciling(est, announced, sifted.intensity, config, result)
    return est, z_bits[~sample]


def reconcile(chan: AuthenticatedChannel, key: Bits, est: estimation.Estimates,
              random_bytes: RandomBytes, result: DistillationResult) -> tuple[Bits, int]:
    """4. Drive Cascade towards Alice's key over deferred frames, then send the tagged
    summary that authenticates them.  Returns his corrected key and the bits leaked."""
    check_reconcilable(key)
    cascade = CascadeBob(key, max(est.qber_sample, MIN_QBER), random_bytes(CASCADE_SEED_SIZE),
                         frame_bits=CASCADE_FRAME_BITS)
    while (request := cascade.request()) is not None:
        chan.send(request, deferred=True)
        cascade.receive(chan.recv(CascadeResponse, deferred=True))
    corrected = cascade.corrected
    errors = int(np.count_nonzero(corrected != key))
    chan.send(CascadeDone(cascade.leaked_bits, errors))
    result.record_reconciliation(len(key), cascade.leaked_bits, errors, cascade.round_trips)
    return corrected, cascade.leaked_bits


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
