"""A simulated QKD link between two sites: quantum phase, distillation, deposit.

This is a **simulation** of the optical layer (:mod:`hybridkex.qkd.simulator`)
followed by the real two-party distillation protocol
(:mod:`hybridkex.qkd.distillation`).  Alice and Bob run in separate threads and
exchange only authenticated byte messages.  Site A runs Alice, site B runs Bob; both
deposit the distilled units under the same key IDs, each unit assigned to the site that
may take it by :func:`unit_initiator`.

Authentication across rounds: the first round of a link is authenticated by the two
sites' signatures (or by an initial pre-shared key).  Every successful round sets
aside part of its key, and the next round authenticates with Wegman-Carter MACs
keyed from it.  After an aborted round the two sides may have drawn different
amounts from that pool, so the link falls back to signatures for the next round.

Seeds are for simulation reports, never for keys.  A round that deposits keys (the link
has a key store) refuses a seed, draws its simulation seed from the operating system,
reports none, and gives Alice's bits a fresh one-time pad from the operating system too,
so that nothing about the keys follows from a seed or from the simulator's
(non-cryptographic) generator.  A round without a key store may take a seed and is
then reproducible, the protocol's public random choices included.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from hybridkex import primitives
from hybridkex.errors import InvalidParameter
from hybridkex.keydelivery.keys import UNIT_BYTES, StoredKey
from hybridkex.keydelivery.store import KeyStore
from hybridkex.qkd.distillation import (
    AliceData,
    BobData,
    DistillationConfig,
    DistillationResult,
    RoundMetrics,
    run_alice,
    run_bob,
)
from hybridkex.qkd.distillation.authentication import (
    AuthKeyPool,
    MessageAuthenticator,
    SignatureAuthenticator,
    WegmanCarterAuthenticator,
)
from hybridkex.qkd.distillation.channel import AuthenticatedChannel
from hybridkex.qkd.distillation.data import alice_values, bob_values
from hybridkex.qkd.distillation.detections import DetectionLog
from hybridkex.qkd.distillation.transport import ClassicalChannel, queue_pair
from hybridkex.qkd.ends import Role
from hybridkex.qkd.labels import SIMULATION_LABEL
from hybridkex.qkd.parameters import LinkParameters
from hybridkex.qkd.progress import SIMULATION, StageProgress
from hybridkex.qkd.simulator import AliceRecord, BobRecord, UInt8Array, os_random_bits, simulate

__all__ = ["LinkReport", "QKDLink", "SiteIdentity", "stored_keys",
           "unit_initiator"]


def unit_initiator(index: int, alice_site: str, bob_site: str) -> str:
    """The site that may take unit ``index`` of a round as session initiator.

    The rule: units alternate, starting with Alice's site (even indices to Alice's
    site, odd ones to Bob's).  The other site can only fetch the unit by its key ID,
    as a session's responder.

    Why split at all: if either site could take any unit, two sites opening sessions
    to each other at the same moment could both hand out the same unit.  Why
    alternate: sessions may be opened from either side, so each site gets half of
    every round, and both sites derive the same split from the unit's position alone.
    """
    return alice_site if index % 2 == 0 else bob_site


def stored_keys(material: bytes, key_ids: Sequence[str], alice_site: str,
                bob_site: str) -> list[StoredKey]:
    """A round's distilled units as the key stores take them: one per key ID, in order,
    each assigned by :func:`unit_initiator`."""
    if len(material) != UNIT_BYTES * len(key_ids):
        raise InvalidParameter("distilled key material does not match its key IDs")
    return [
        StoredKey(key_id, material[i * UNIT_BYTES:(i + 1) * UNIT_BYTES],
                  unit_initiator(i, alice_site, bob_site))
        for i, key_id in enumerate(key_ids)
    ]


def _pad_bits(alice: AliceRecord, bob: BobRecord) -> tuple[UInt8Array, UInt8Array]:
    """Alice's bits at one block's detected pulses, and Bob's at the same pulses, each
    XORed with one fresh bit from the operating system per pulse.

    The simulator draws Alice's bits uniformly and independently of everything else it
    records, with Bob's errors independent of her bit, so the padded records have
    exactly the same distribution (the errors, the bases and the intensities do not
    change).  What the pad adds: the key bits no longer come from the simulator's
    generator, whose other outputs (detections, bases) are disclosed in sifting.
    """
    if not np.array_equal(alice.index, bob.index):
        raise AssertionError("the simulator's records of Alice and Bob cover other pulses")
    pad = os_random_bits(len(alice.bit))
    return alice.bit ^ pad, bob.bit ^ pad


@dataclass(frozen=True, repr=False)
class SiteIdentity:
    """A site's signature key pair, used to authenticate a link's first round."""

    scheme: str
    private: bytes
    public: bytes

    @classmethod
    def generate(cls, scheme: str = "ML-DSA-65") -> SiteIdentity:
        public, private = primitives.signature(scheme).generate_keypair()
        return cls(scheme, private, public)

    def __repr__(self) -> str:
        return f"SiteIdentity({self.scheme})"


@dataclass(kw_only=True)
class LinkReport(RoundMetrics):
    """One round of the link, as ``hybridkex qkd simulate --json`` prints it."""

    distance_km: float
    pulses: int
    auth_mode: str = ""
    auth_bits_consumed: int = 0
    net_secret_bits: int = 0
    key_units: int = 0              # 256-bit units distilled
    keys_deposited: int = 0         # of them, deposited in key stores (0 without a store)
    auth_reserve_bits: int = 0
    qber_threshold: float = 0.0
    aborted: bool = False
    abort_reason: str = ""
    elapsed_s: float = 0.0
    simulation_s: float = 0.0
    finite_key: bool = True
    eps_sec: float = 0.0
    seed: int | None = None
    simulation: str = SIMULATION_LABEL
    key_ids: list[str] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        """Every figure; one the round did not measure is ``None`` (JSON null), never 0."""
        out = {k: v for k, v in self.__dict__.items() if k != "key_ids"}
        out["pa_terms"] = self.pa_terms.to_json() if self.pa_terms is not None else None
        return out


class QKDLink:
    """Two sites joined by a simulated link, with the authentication state between rounds."""

    def __init__(self, site_a: str, site_b: str, params: LinkParameters | None = None,
                 config: DistillationConfig | None = None, *,
                 store_a: KeyStore | None = None, store_b: KeyStore | None = None,
                 identity_a: SiteIdentity | None = None, identity_b: SiteIdentity | None = None,
                 initial_psk: bytes | None = None) -> None:
        if site_a == site_b:
            raise InvalidParameter("a link joins two different sites")
        if initial_psk is None and (identity_a is None or identity_b is None):
            raise InvalidParameter(
                "the first round needs both sites' identities or an initial pre-shared key")
        self.site_a, self.site_b = site_a, site_b
        self.params = params or LinkParameters()
        self.config = config or DistillationConfig()
        self.store_a, self.store_b = store_a, store_b
        self._identity_a, self._identity_b = identity_a, identity_b
        # The two sites' copies of the authentication pool (equal while in sync).
        self._pool_a: bytes | None = initial_psk
        self._pool_b: bytes | None = initial_psk
        self.rounds = 0

    def _authenticators(self) -> tuple[MessageAuthenticator, MessageAuthenticator, str]:
        if self._pool_a and self._pool_b:
            return (WegmanCarterAuthenticator(AuthKeyPool(self._pool_a), Role.ALICE),
                    WegmanCarterAuthenticator(AuthKeyPool(self._pool_b), Role.BOB),
                    WegmanCarterAuthenticator.kind)
        ia, ib = self._identity_a, self._identity_b
        if ia is None or ib is None:
            raise InvalidParameter("authentication pool empty and no identities to re-bootstrap")
        schemes = ia.scheme if ia.scheme == ib.scheme else f"{ia.scheme} / {ib.scheme}"
        return (SignatureAuthenticator(ia.scheme, ia.private, ib.public, ib.scheme),
                SignatureAuthenticator(ib.scheme, ib.private, ia.public, ia.scheme),
                f"signature ({schemes})")

    def run_round(self, pulses: int, seed: int | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  channel_hook: Callable[[ClassicalChannel, Role], ClassicalChannel] | None = None,
                  stages: StageProgress | None = None) -> LinkReport:
        """Simulate ``pulses`` pulses, distil, and deposit the keys into both stores.

        ``seed`` makes the round reproducible, and is refused when the link has a key
        store: anyone who knew it could recompute the keys (see the module docstring).
        ``progress(done, total)`` follows the simulated pulses; ``stages`` follows the
        whole round, stage by stage (:mod:`hybridkex.qkd.progress`).
        ``channel_hook(end, role)`` may wrap each party's end of the classical channel,
        to play an active attacker on it (tests, demonstrations).
        """
        started = time.perf_counter()
        deposits = self.store_a is not None or self.store_b is not None
        if seed is not None and deposits:
            raise InvalidParameter("a seed would let anyone who knows it recompute the keys; "
                                   "a link that deposits keys into key stores takes none "
                                   "(seeds are for simulation reports)")
        reproducible = seed is not None
        shown: int | None
        if deposits:
            seed, shown = int.from_bytes(os.urandom(32), "big"), None
        else:
            if seed is None:
                seed = int(np.random.SeedSequence().generate_state(2, np.uint32)
                           .view(np.uint64)[0])
            shown = seed
        report = LinkReport(distance_km=self.params.distance_km, pulses=pulses,
                            finite_key=self.config.finite_key, eps_sec=self.config.eps_sec,
                            qber_threshold=self.config.qber_abort, seed=shown)

        def simulated(done: int, total: int) -> None:
            if progress is not None:
                progress(done, total)
            if stages is not None:
                stages(SIMULATION, done, total)

        alice, bob = self._quantum_phase(pulses, seed, simulated, pad=deposits)
        report.simulation_s = time.perf_counter() - started

        auth_a, auth_b, report.auth_mode = self._authenticators()
        end_a: ClassicalChannel
        end_b: ClassicalChannel
        end_a, end_b = queue_pair()
        if channel_hook is not None:
            end_a, end_b = channel_hook(end_a, Role.ALICE), channel_hook(end_b, Role.BOB)
        chan_a = AuthenticatedChannel(end_a, auth_a, Role.ALICE)
        chan_b = AuthenticatedChannel(end_b, auth_b, Role.BOB)
        results: dict[Role, DistillationResult] = {}

        randomness_a, randomness_b = os.urandom, os.urandom
        if reproducible:
            # A given seed makes the whole simulated round reproducible, the protocol's
            # public random choices included.  Never outside a simulation.
            gen_a, gen_b = (np.random.Generator(np.random.PCG64([seed, 0x5EED, int(role)]))
                            for role in (Role.ALICE, Role.BOB))
            randomness_a, randomness_b = gen_a.bytes, gen_b.bytes

        def bob_side() -> None:
            try:
                results[Role.BOB] = run_bob(chan_b, bob, self.config, randomness_b, stages)
            finally:
                if Role.BOB not in results:  # an unexpected error: Bob keeps nothing
                    results[Role.BOB] = DistillationResult(
                        role=Role.BOB, aborted=True, abort_reason="internal error at Bob")
                    end_b.close()

        thread = threading.Thread(target=bob_side, name="qkd-bob", daemon=True)
        thread.start()
        results[Role.ALICE] = run_alice(chan_a, alice, self.config, randomness_a)
        thread.join()
        ra, rb = results[Role.ALICE], results[Role.BOB]
        self.rounds += 1

        report.auth_bits_consumed = max(auth_a.bits_consumed, auth_b.bits_consumed)
        self._fill(report, rb if not rb.aborted else ra)
        if ra.aborted or rb.aborted:
            report.aborted = True
            report.abort_reason = ra.abort_reason if ra.aborted else rb.abort_reason
            report.net_secret_bits = -report.auth_bits_consumed
            self._pool_a = self._pool_b = None  # out of step: re-bootstrap by signatures
        else:
            self._deposit(ra, rb, report)
            carry_a = auth_a.leftover() if isinstance(auth_a, WegmanCarterAuthenticator) else b""
            carry_b = auth_b.leftover() if isinstance(auth_b, WegmanCarterAuthenticator) else b""
            self._pool_a, self._pool_b = carry_a + ra.auth_reserve, carry_b + rb.auth_reserve
            report.auth_reserve_bits = 8 * len(ra.auth_reserve)
            report.net_secret_bits = report.secret_bits - report.auth_bits_consumed
        report.elapsed_s = time.perf_counter() - started
        return report

    def _quantum_phase(self, pulses: int, seed: int,
                       progress: Callable[[int, int], None] | None, *,
                       pad: bool = False) -> tuple[AliceData, BobData]:
        """Run the optical simulation block by block, each end keeping only its detection
        events (:class:`~hybridkex.qkd.distillation.detections.DetectionLog`): memory
        grows with the detections, four bytes per end each, never with the pulses.
        ``pad``: key bits from the operating system, not the simulator (:func:`_pad_bits`),
        for rounds whose keys are deposited."""
        alice_log, bob_log = DetectionLog(), DetectionLog()
        sent = np.zeros(3, dtype=np.int64)
        done = 0
        for block in simulate(self.params, pulses, seed):
            a, b = block.alice, block.bob
            a_bit, b_bit = _pad_bits(a, b) if pad else (a.bit, b.bit)
            alice_log.append(a.index, alice_values(a.intensity, a.basis, a_bit))
            bob_log.append(b.index, bob_values(b.basis, b_bit))
            sent += a.sent.sum(axis=1)
            done += a.pulses
            if progress is not None:
                progress(done, pulses)
        p = self.params
        alice = AliceData(
            detections=alice_log, pulses_sent=pulses,
            sent=(float(sent[0]), float(sent[1]), float(sent[2])),
            intensities=(p.mu, p.nu, p.vacuum), probabilities=(p.p_mu, p.p_nu, p.p_vacuum))
        return alice, BobData(detections=bob_log)

    @staticmethod
    def _fill(report: LinkReport, r: DistillationResult) -> None:
        for metric in fields(RoundMetrics):
            setattr(report, metric.name, getattr(r, metric.name))

    def _deposit(self, ra: DistillationResult, rb: DistillationResult,
                 report: LinkReport) -> None:
        """Both sites store the same units under the same IDs (Alice's site is site A)."""
        if ra.key_ids != rb.key_ids:
            raise AssertionError("distillation ended with different key IDs")  # confirmed above
        keys_a = stored_keys(ra.key_material, ra.key_ids, self.site_a, self.site_b)
        keys_b = stored_keys(rb.key_material, rb.key_ids, self.site_a, self.site_b)
        if self.store_a is not None:
            self.store_a.add(self.site_b, keys_a)
        if self.store_b is not None:
            self.store_b.add(self.site_a, keys_b)
        report.key_units = len(ra.key_ids)
        stored = self.store_a is not None or self.store_b is not None
        report.keys_deposited = report.key_units if stored else 0
        report.key_ids = list(ra.key_ids)
