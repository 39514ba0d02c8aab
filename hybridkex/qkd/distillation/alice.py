"""Alice's end of a distillation round: one function per protocol step, in protocol order.

Alice sent the pulses.  She opens the round, answers Bob's sifting and estimation
messages, answers Cascade's parity queries, and chooses the public randomness of
verification and privacy amplification.  Each step receives what it must, checks it
against her own record, sends what it must, and returns what later steps need; any
failure raises :class:`~hybridkex.qkd.errors.LinkAborted`.  :func:`run_alice` runs the
steps.  The protocol as a whole is described in :mod:`hybridkex.qkd.distillation`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from functools import partial

import numpy as np
import numpy.typing as npt

from hybridkex import primitives
from hybridkex.keydelivery.keys import UNIT_BITS
from hybridkex.qkd.distillation import estimation
from hybridkex.qkd.distillation.cascade import CascadeAlice
from hybridkex.qkd.distillation.channel import AuthenticatedChannel
from hybridkex.qkd.distillation.data import (
    AliceData,
    DistillationConfig,
    DistillationResult,
    Sifted,
    SiftedBuilder,
    split_alice_values,
)
from hybridkex.qkd.distillation.messages import (
    NONCE_SIZE,
    VERIFY_KEY_SIZE,
    Amplify,
    CascadeDone,
    CascadeRequest,
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

__all__ = ["amplify", "confirm", "estimate", "hello", "reconcile", "run_alice", "sift",
           "verify"]

Bits = npt.NDArray[np.uint8]
RandomBytes = Callable[[int], bytes]


def run_alice(chan: AuthenticatedChannel, data: AliceData, config: DistillationConfig,
              random_bytes: RandomBytes = os.urandom) -> DistillationResult:
    """Alice's side of one distillation round.

    ``random_bytes`` supplies the protocol's public random choices (her nonce, the
    verification key, the Toeplitz seed, the key IDs); only a reproducible simulation
    replaces the operating system's CSPRNG.
    """
    result = DistillationResult(role=Role.ALICE)
    return run_guarded(chan, result, partial(_steps, chan, data, config, random_bytes, result))


def _steps(chan: AuthenticatedChannel, data: AliceData, config: DistillationConfig,
           random_bytes: RandomBytes, result: DistillationResult) -> None:
    announced = hello(chan, data, random_bytes)
    sifted = sift(chan, data, announced, result)
    est, key = estimate(chan, sifted, announced, config, result)
    leaked = reconcile(chan, key, result)
    verify(chan, key, random_bytes)
    output, amplified = amplify(chan, key, est, announced, sifted, leaked, config, random_bytes,
                                result)
    result.keep(confirm(chan, output), amplified.reserve_bits, amplified.key_ids)


def hello(chan: AuthenticatedChannel, data: AliceData, random_bytes: RandomBytes) -> Hello:
    """1. Open the round: a fresh nonce (the session ID until Bob's nonce arrives) and
    what Bob needs to estimate alike: intensities, their probabilities, pulses sent."""
    announced = Hello(random_bytes(NONCE_SIZE), data.intensities, data.probabilities,
                      data.sent, data.pulses_sent)
    chan.session_id = announced.nonce
    chan.send(announced)
    return announced


def sift(chan: AuthenticatedChannel, data: AliceData, announced: Hello,
         result: DistillationResult) -> Sifted:
    """2. Look up Bob's detections, chunk by chunk, in her record and disclose her basis
    and intensity class at each; refuse any pulse she never sent or that produced no
    click, and any chunk that does not follow the last.  Her record is let go of as
    Bob's announcement passes it; she keeps only the matched bits."""
    first = bob = chan.recv(Sift)
    chan.session_id = session_id(announced.nonce, bob.nonce)
    sifted = SiftedBuilder()
    last = -1
    while True:
        if bob.nonce != first.nonce or bob.total != first.total:
            raise LinkAborted("a sifting chunk changes the nonce or the total")
        if len(bob.index) and (bob.index[0] <= last or bob.index[-1] >= data.pulses_sent):
            raise LinkAborted("sifting message announces invalid pulse indices")
        values = data.detections.lookup(bob.index)
        if values is None:
            raise LinkAborted("Bob announced a pulse that produced no click")
        intensity, basis, bit = split_alice_values(values)
        chan.send(SiftReply(basis, intensity))
        sifted.add(intensity, bit, basis == bob.basis, basis)
        if sifted.detections > first.total:
            raise LinkAborted("sifting announces more detections than its total")
        if sifted.detections == first.total:
            return sifted.finish(result)
        last = int(bob.index[-1])
        bob = chan.recv(Sift)


def estimate(chan: AuthenticatedChannel, sifted: Sifted, announced: Hello,
             config: DistillationConfig, result: DistillationResult
             ) -> tuple[estimation.Estimates, Bits]:
    """3. Disclose her X bits and the Z sample Bob's seed picks, count the errors, and
    stop if no key can come out.  Returns the estimates and her key block."""
    bob = chan.recv(Estimate)
    z_bits, x_bits = sifted.z_bits, sifted.x_bits
    sample = estimation.sample_z(len(z_bits), bob.sample_seed, config)
    if len(bob.x_bits) != len(x_bits) or len(bob.z_sample_bits) != np.count_nonzero(sample):
        raise MalformedMessage("malformed estimation message: bit counts differ from sifting")
    chan.send(EstimateReply(x_bits, z_bits[sample]))
    est = estimation.estimate(sifted.z_intensity, sifted.x_intensity, sample,
                              z_bits[sample] ^ bob.z_sample_bits, x_bits ^ bob.x_bits)
    estimation.check_worth_reconciling(est, announced, sifted.intensity, config, result)
    return est, z_bits[~sample]


def reconcile(chan: AuthenticatedChannel, key: Bits, result: DistillationResult) -> int:
    """4. Answer Cascade's parity queries, segment by segment
    (:func:`.session.reconciliation_segments`: a request with setup starts the next),
    until Bob is done.  The queries and answers are deferred frames; Bob's tagged
    summary authenticates them.  Returns the bits leaked."""
    check_reconcilable(key)
    segments = reconciliation_segments(len(key))
    current = leaked = round_trips = 0
    cascade = CascadeAlice(key[slice(*segments[0])])
    expected = {CascadeRequest: True, CascadeDone: False}  # message class: deferred?
    while not isinstance(message := chan.recv_any(expected), CascadeDone):
        assert isinstance(message, CascadeRequest)
        if message.setup is not None and cascade.frames:  # Bob starts the next segment
            leaked, round_trips = leaked + cascade.leaked_bits, round_trips + cascade.round_trips
            current += 1
            if current == len(segments):
                raise LinkAborted("reconciliation asks for more segments than the key has")
            del cascade  # before the next segment's: one Cascade's memory at a time
            cascade = CascadeAlice(key[slice(*segments[current])])
        chan.send(cascade.respond(message), deferred=True)
    if current != len(segments) - 1 or not cascade.frames:
        raise LinkAborted("reconciliation ended before every segment was reconciled")
    leaked, round_trips = leaked + cascade.leaked_bits, round_trips + cascade.round_trips
    if message.leaked_bits != leaked:
        raise LinkAborted("the parties disagree on the bits reconciliation disclosed")
    if message.errors > len(key):
        raise MalformedMessage("malformed reconciliation summary: more errors than key bits")
    result.record_reconciliation(len(key), message.leaked_bits, message.errors, round_trips)
    return leaked


def verify(chan: AuthenticatedChannel, key: Bits, random_bytes: RandomBytes) -> None:
    """5. Send a one-time universal hash of her key; Bob says whether his matches."""
    verify_key = random_bytes(VERIFY_KEY_SIZE)
    tag = primitives.mac("Poly1305").compute(verify_key, verification_input(key))
    chan.send(Verify(verify_key, tag))
    if not chan.recv(VerifyResult).matched:
        raise LinkAborted("verification hash mismatch: the block is discarded")


def amplify(chan: AuthenticatedChannel, key: Bits, est: estimation.Estimates,
            announced: Hello, sifted: Sifted, leaked: int, config: DistillationConfig,
            random_bytes: RandomBytes, result: DistillationResult) -> tuple[Bits, Amplify]:
    """6. Size the output by the bounds with the real leakage, choose a fresh Toeplitz seed
    and the key IDs, send them, and hash her key down.  The output is the confirmation
    bits, then the key (the authentication reserve, then the units)."""
    length = estimation.secret_length(est, announced, sifted.intensity, leaked, config)
    estimation.record_length(result, length)
    reserve, n_keys = estimation.output_plan(length.bits, config)
    out_bits = estimation.output_length(reserve + n_keys * UNIT_BITS, len(key))
    seed = np.unpackbits(np.frombuffer(random_bytes((len(key) + out_bits + 6) // 8),
                                       dtype=np.uint8))[:len(key) + out_bits - 1]
    key_ids = tuple(str(uuid.UUID(bytes=random_bytes(16), version=4)) for _ in range(n_keys))
    amplified = Amplify(out_bits, reserve, seed, key_ids)
    chan.send(amplified)
    result.pa_input_bits, result.secret_bits = len(key), reserve + n_keys * UNIT_BITS
    return toeplitz_hash(key, seed, out_bits), amplified


def confirm(chan: AuthenticatedChannel, output: Bits) -> Bits:
    """7. Disclose her half of the confirmation bits, check Bob's half against hers, and
    return the key that follows them.  The confirmation bits are never key."""
    confirmation, final = split_confirmation(output)
    chan.send(Confirm(confirmation_bits(confirmation, Role.ALICE)))
    check_confirmation(confirmation, chan.recv(Confirm).bits, Role.BOB)
    return final
