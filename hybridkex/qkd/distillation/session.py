"""What both ends of a round compute alike: the session ID, the verification input, the
confirmation tag, and the rule that a failed round ends both ends with no key.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from hybridkex import primitives
from hybridkex.qkd.distillation.cascade import MAX_KEY_BITS, MIN_FRAME_BITS
from hybridkex.qkd.distillation.channel import AuthenticatedChannel
from hybridkex.qkd.distillation.data import DistillationResult
from hybridkex.qkd.ends import Role
from hybridkex.qkd.errors import LinkAborted

__all__ = [
    "CASCADE_FRAME_BITS",
    "CASCADE_SEED_SIZE",
    "RECONCILE_SEGMENT_BITS",
    "check_reconcilable",
    "confirmation_tag",
    "reconciliation_segments",
    "run_guarded",
    "session_id",
    "verification_input",
]

CONFIRM_LABEL = b"hybridkex qkd key confirmation v1"
SESSION_LABEL = b"hybridkex qkd session"
# Cascade frames reconciled side by side over shared messages (bench/qkd_cascade.py:
# 1e5-bit frames reach f ~1.04 at 2 Mbit/s); one failed frame fails verification of
# the whole block, which is then discarded.
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


def confirmation_tag(final_key: bytes, session: bytes, sender: Role) -> bytes:
    """The sender's proof that it holds ``final_key`` in this session."""
    return primitives.mac("HMAC-SHA256").compute(
        final_key, CONFIRM_LABEL + session + bytes([sender]))


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
