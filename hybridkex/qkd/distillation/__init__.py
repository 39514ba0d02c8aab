"""Key distillation: the two-party protocol that turns the raw records of a QKD link
into identical secret keys, over an authenticated classical channel.

Alice (the transmitter) and Bob (the receiver) are separate parties.  Each holds only
its own record of the quantum phase and learns the other's data only from
authenticated messages.  The steps, in protocol order (each is one function in
:mod:`.alice` and one in :mod:`.bob`):

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
   key) of her key; a mismatch discards the block.  The whole tag is deducted from
   the key length, and its collision bound is the round's eps_cor.
6. ``amplify``: Alice sends a fresh Toeplitz seed; both hash the key down to the
   confirmation bits and the length the bounds allow (the leftover hash lemma with
   every disclosed bit deducted; the terms are reported as ``PATerms``).
7. ``confirm``: each discloses half of the confirmation bits and compares the other
   half with its own, so each knows the other holds the same key before either keeps
   anything; the confirmation bits are never key.

Any failure raises :class:`~hybridkex.qkd.errors.LinkAborted` and neither side keeps
a key from the round; the authentication key it spent stays spent.  The output is the
final key (:class:`~.data.DistillationResult`); which site may take which unit of it
is the link's rule (:func:`hybridkex.qkd.link.unit_initiator`).

Where things are:

- :mod:`.messages`: every message as a typed class, with its encoding and strict
  decoding; :mod:`.codec` the field encodings they share.
- :mod:`.channel`: frames, numbered, bound to the session and authenticated;
  :mod:`.transport` the untrusted transports that carry them (queues, TCP).
- :mod:`.authentication`: signatures for a link's first round, Wegman-Carter MACs
  from earlier QKD key afterwards.
- :mod:`.alice`, :mod:`.bob`: the steps of each end; :mod:`.session` what both ends
  compute alike; :mod:`.estimation` the sample, the counts and the secret length;
  :mod:`.data` the records, the configuration and the result.
- :mod:`.cascade` (error correction) and :mod:`.toeplitz` (privacy amplification).
"""

from hybridkex.qkd.distillation.alice import run_alice
from hybridkex.qkd.distillation.bob import run_bob
from hybridkex.qkd.distillation.data import (
    AliceData,
    BobData,
    DistillationConfig,
    DistillationResult,
    PATerms,
    RoundMetrics,
)

__all__ = [
    "AliceData",
    "BobData",
    "DistillationConfig",
    "DistillationResult",
    "PATerms",
    "RoundMetrics",
    "run_alice",
    "run_bob",
]
