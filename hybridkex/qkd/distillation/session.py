"""What both ends of a round compute alike: the session ID, the verification input and
its collision bound, the confirmation bits, and the rule that a failed round ends both
ends with no key.
"""

from __future__ import annotations

import hmac
import itertools
import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from hybridkex import primitives
from hybridkex.qkd.distillation.cascade import MAX_KEY_BITS, MIN_FRAME_BITS
from hybridkex.qkd.distillation.channel import AuthenticatedChannel
from hybridkex.qkd.distillation.data import DistillationResult
from hybridkex.qkd.distillation.messages import CONFIRM_SIZE, VERIFY_TAG_SIZE
from hybridkex.qkd.ends import Role
from hybridkex.qkd.errors import LinkAborted

__all__ = [
    "CASCADE_FRAME_BITS",
    "CASCADE_SEED_SIZE",
    "CONFIRMATION_BITS",
    "RECONCILE_SEGMENT_BITS",
    "VERIFICATION_TAG_BITS",
    "check_confirmation",
    "check_reconcilable",
    "confirmation_bits",
    "reconciliation_segments",
    "run_guarded",
    "session_id",
    "split_confirmation",
    "verification_collision_bound",
    "verification_input",
]

#: The verification tag, disclosed whole before privacy amplification and deducted whole.
VERIFICATION_TAG_BITS = 8 * VERIFY_TAG_SIZE
#: Privacy amplification output bits that confirm the key and are then discarded: the
#: first half goes A->B, the second B->A.
CONFIRMATION_BITS = 2 * 8 * CONFIRM_SIZE
SESSION_LABEL = b"hybridkex qkd session"
# Cascade frames reconciled side by side over shared messages: 1e5-bit frames leak
# less than 1e4-bit ones and are no slower (docs/performance.md, QKD link); one
# failed frame fails verification of the whole block, which is then discarded.
CASCADE_FRAME_BITS = 100_000
CASCADE_SEED_SIZE = 32  # Bob's public seed of Cascade's permutations
# Cascade's memory grows with the key it reconciles at once: about 90 bytes per bit for
# both ends together (its trees of every pass).  A longer key block is reconciled in
# segments of at most this many bits, one after the other, each a Cascade run of its
# own with a fresh seed; a round of up to about 1.4e9 pulses at 25 km needs only one.
RECONCILE_SEGMENT_BITS = 1 << 21


def session_id(nonce_a: bytes, nonce_b: bytes) -> bytes:
    """The ID every frame after Bob's sifting message carries: fresh from both nonces."""
    return primitives.digest("SHA-256", SESSION_LABEL + nonce_a + nonce_b)[:16]


def verification_input(bits: npt.NDArray[np.uint8]) -> bytes:
    """The reconciled key as the verification hash sees it: its length, then its bits."""
    return len(bits).to_bytes(8, "big") + np.packbits(bits).tobytes()


def verification_collision_bound(key_bits: int) -> float:
    """The chance that two different ``key_bits``-bit keys get the same verification tag.

    The tag is Poly1305 under a key Alice draws after reconciliation has fixed both
    keys.  Poly1305 is an epsilon-almost-Delta-universal hash with epsilon =
    8 ceil(L/16) / 2^106 for L-byte inputs (Bernstein, "The Poly1305-AES
    message-authentication code", FSE 2005); the pad half of its key cancels in a
    comparison, so that is the collision bound, and the round's eps_cor.
    """
    input_bytes = 8 + (key_bits + 7) // 8  # the length of verification_input
    return 8 * math.ceil(input_bytes / 16) / 2.0**106


def split_confirmation(output: npt.NDArray[np.uint8]) -> tuple[bytes, npt.NDArray[np.uint8]]:
    """Privacy amplification's output as (the confirmation bits, the key kept).

    The confirmation bits come first; they are disclosed and never used as key."""
    return np.packbits(output[:CONFIRMATION_BITS]).tobytes(), output[CONFIRMATION_BITS:]


def confirmation_bits(confirmation: bytes, sender: Role) -> bytes:
    """The half of the confirmation bits that ``sender`` discloses."""
    return confirmation[:CONFIRM_SIZE] if sender is Role.ALICE else confirmation[CONFIRM_SIZE:]


def check_confirmation(confirmation: bytes, received: bytes, sender: Role) -> None:
    """End the round unless the peer's half equals this end's (compared in constant time)."""
    if not hmac.compare_digest(received, confirmation_bits(confirmation, sender)):
        raise LinkAborted("key confirmation failed: the two ends' keys differ")


def check_reconcilable(key: npt.NDArray[np.uint8]) -> None:
    """Refuse a key block Cascade cannot take, before either end starts on it."""
    if not MIN_FRAME_BITS <= len(key) <= MAX_KEY_BITS:
        raise LinkAborted(f"a key block of {len(key)} bits is outside what reconciliation "
                          f"takes ({MIN_FRAME_BITS}..{MAX_KEY_BITS})")


def reconciliation_segments(key_bits: int) -> list[tuple[int, int]]:
    """The ``(start, stop)`` segments a key block is reconciled in: as few as keep each
    within :data:`RECONCILE_SEGMENT_BITS`, their lengths differing by at most one (so
    none is shorter than half the maximum).  Both ends derive them from the length."""
    count = max(1, -(-key_bits // RECONCILE_SEGMENT_BITS))
    q, r = divmod(key_bits, count)
    bounds = [i * q + min(i, r) for i in range(count + 1)]
    return list(itertools.pairwise(bounds))


def run_guarded(chan: AuthenticatedChannel, result: DistillationResult,
                protocol: Callable[[], None]) -> DistillationResult:
    """Run one end's steps; on an abort tell the peer, keep no key, report why.

    Only :class:`~hybridkex.qkd.errors.LinkAborted` ends a round here: every message is
    checked as it is decoded and every step checks what it receives, so anything else
    is a fault of this end and propagates.
    """
    try:
        protocol()
    except LinkAborted as exc:
        if not exc.reason.startswith("peer aborted"):
            chan.abort(exc.reason)
        result.discard(exc.reason)
    return result
