"""One simulated link end to end: simulation, the authenticated two-party distillation,
deposit into both sites' key stores; and an active attacker on the classical channel."""

from __future__ import annotations

import pytest

from hybridkex.keydelivery.store import MemoryKeyStore
from hybridkex.qkd.distillation import DistillationConfig
from hybridkex.qkd.distillation.transport import ClassicalChannel
from hybridkex.qkd.ends import Role
from hybridkex.qkd.link import LinkReport, QKDLink, SiteIdentity, stored_keys
from hybridkex.qkd.parameters import Eavesdropper, finite_key_parameters
from hybridkex.qkd.simulator import pns_matching_fraction

PULSES = 400_000_000  # enough for a positive finite-size key at 25 km with the preset
IDENTITY_A = SiteIdentity.generate("Ed25519")  # fast to sign; ML-DSA is tested via the CLI
IDENTITY_B = SiteIdentity.generate("Ed25519")


def _link(distance_km: float = 25.0, eve: Eavesdropper | None = None,
          config: DistillationConfig | None = None) -> tuple[QKDLink, MemoryKeyStore,
                                                              MemoryKeyStore]:
    """A link that deposits into two key stores: its rounds take no seed."""
    a, b = MemoryKeyStore("A"), MemoryKeyStore("B")
    params = finite_key_parameters(distance_km=distance_km, eve=eve)
    link = QKDLink("A", "B", params, config, store_a=a, store_b=b, identity_a=IDENTITY_A,
                   identity_b=IDENTITY_B)
    return link, a, b


def _simulation(distance_km: float = 25.0, eve: Eavesdropper | None = None) -> QKDLink:
    """A link without key stores, whose rounds a seed makes reproducible."""
    return QKDLink("A", "B", finite_key_parameters(distance_km=distance_km, eve=eve),
                   identity_a=IDENTITY_A, identity_b=IDENTITY_B)


@pytest.fixture(scope="module")
def two_rounds() -> tuple[list[LinkReport], MemoryKeyStore, MemoryKeyStore]:
    link, a, b = _link()
    reports = [link.run_round(PULSES), link.run_round(PULSES)]
    return reports, a, b


def test_a_round_deposits_identical_keys_at_both_sites(
        two_rounds: tuple[list[LinkReport], MemoryKeyStore, MemoryKeyStore]) -> None:
    reports, a, b = two_rounds
    first = reports[0]
    assert not first.aborted, first.abort_reason
    assert first.secret_bits > 0 and first.keys_deposited > 0
    assert first.qber is not None and 0.02 < first.qber < 0.05  # e_det 3.3% at 25 km
    assert first.qber_basis == "Z-key" and first.seed is None
    assert first.ec_efficiency is not None
    assert 1.0 < first.ec_efficiency < 1.2
    taken = a.take("B", 5)
    assert [k.key for k in b.fetch("A", [k.key_id for k in taken])] == [k.key for k in taken]
    taken_by_b = b.take("A", 5)
    assert [k.key for k in a.fetch("B", [k.key_id for k in taken_by_b])] == [
        k.key for k in taken_by_b]


def test_first_round_by_signatures_later_rounds_by_one_time_macs(
        two_rounds: tuple[list[LinkReport], MemoryKeyStore, MemoryKeyStore]) -> None:
    first, second = two_rounds[0]
    assert first.auth_mode.startswith("signature") and first.auth_bits_consumed == 0
    assert second.auth_mode == "wegman-carter-poly1305"
    assert not second.aborted, second.abort_reason
    assert second.auth_bits_consumed > 0
    assert second.net_secret_bits == second.secret_bits - second.auth_bits_consumed
    assert first.auth_reserve_bits > second.auth_bits_consumed


def test_a_link_that_deposits_keys_refuses_a_seed() -> None:
    from hybridkex.errors import InvalidParameter

    link, a, _ = _link()
    with pytest.raises(InvalidParameter, match="recompute the keys"):
        link.run_round(PULSES // 2, seed=5)
    assert not a.peers()


def test_rounds_that_deposit_keys_never_repeat_them() -> None:
    deposited = []
    for _ in range(2):
        link, a, _ = _link()
        report = link.run_round(PULSES // 2)
        assert not report.aborted, report.abort_reason
        assert report.seed is None  # nothing that would reproduce the keys is reported
        taken = a.take("B", 3)
        deposited.append(([k.key_id for k in taken], [k.key for k in taken]))
    (ids_1, keys_1), (ids_2, keys_2) = deposited
    assert not set(ids_1) & set(ids_2)
    assert not set(keys_1) & set(keys_2)


def test_a_seed_reproduces_a_round_that_deposits_nothing() -> None:
    reports = [_simulation().run_round(PULSES // 2, seed=seed) for seed in (5, 5, 6)]
    assert reports[0].key_units > 0 and reports[0].keys_deposited == 0
    assert reports[0].key_ids == reports[1].key_ids != reports[2].key_ids
    assert reports[0].to_json()["pa_terms"] == reports[1].to_json()["pa_terms"]


def test_full_intercept_resend_aborts_and_deposits_nothing() -> None:
    link, a, b = _link(eve=Eavesdropper("intercept-resend", 1.0))
    report = link.run_round(PULSES // 4)
    assert report.aborted and "QBER" in report.abort_reason
    assert report.keys_deposited == 0
    assert a.status("B").available_to_take == 0 and b.status("A").available_to_fetch == 0


def test_partial_intercept_resend_raises_the_qber() -> None:
    report = _simulation(eve=Eavesdropper("intercept-resend", 0.2)).run_round(PULSES // 4,
                                                                             seed=3)
    assert report.qber_x is not None and report.qber_x > 0.033 + 0.2 / 4 - 0.02


def test_pns_attack_is_caught_by_the_decoy_estimates() -> None:
    honest = _simulation().run_round(PULSES, seed=21)
    fraction = pns_matching_fraction(finite_key_parameters(distance_km=25.0))
    attacked = _simulation(eve=Eavesdropper("pns", fraction)).run_round(PULSES, seed=21)
    assert honest.qber_x is not None and attacked.qber_x is not None
    assert honest.y1_lower is not None and attacked.y1_lower is not None
    # The attack keeps the signal gain and QBER honest-looking ...
    assert abs(attacked.qber_x - honest.qber_x) < 0.01
    # ... but the decoy bound on single-photon yield collapses, and with it the key.
    assert attacked.y1_lower < 0.8 * honest.y1_lower
    assert attacked.aborted or attacked.secret_bits < 0.5 * honest.secret_bits


class _Tamper:
    """An active attacker on one end of the classical channel."""

    def __init__(self, end: ClassicalChannel, frame_number: int, mode: str) -> None:
        self.end, self.frame_number, self.mode, self.count = end, frame_number, mode, 0

    def send(self, frame: bytes) -> None:
        if self.count == self.frame_number:
            if self.mode == "flip":
                frame = frame[:-40] + bytes([frame[-40] ^ 1]) + frame[-39:]
            elif self.mode == "replay":
                self.end.send(frame)
        self.count += 1
        self.end.send(frame)

    def recv(self) -> bytes:
        return self.end.recv()

    def close(self) -> None:
        self.end.close()


@pytest.mark.parametrize("mode", ["flip", "replay"])
@pytest.mark.parametrize(("role", "frame_number"), [(Role.ALICE, 0), (Role.BOB, 0),
                                                    (Role.BOB, 3), (Role.ALICE, 5)])
def test_tampered_or_replayed_message_aborts_the_round(mode: str, role: Role,
                                                       frame_number: int) -> None:
    link, a, b = _link()

    def hook(end: ClassicalChannel, who: Role) -> ClassicalChannel:
        return _Tamper(end, frame_number, mode) if who is role else end

    report = link.run_round(PULSES // 2, channel_hook=hook)
    assert report.aborted
    assert report.keys_deposited == 0 and not a.peers() and not b.peers()


def test_tampered_parity_message_is_caught_by_the_covering_tag() -> None:
    """Cascade frames carry no tag of their own; the next tagged frame covers them."""
    link, _, _ = _link()
    link.run_round(PULSES // 2)  # bootstrap; the next round uses one-time MACs

    def hook(end: ClassicalChannel, who: Role) -> ClassicalChannel:
        return _Tamper(end, 8, "flip") if who is Role.BOB else end  # a parity request

    report = link.run_round(PULSES // 2, channel_hook=hook)
    assert report.aborted and "authentication" in report.abort_reason
    assert report.auth_bits_consumed > 0 and report.net_secret_bits < 0


def test_after_an_aborted_round_the_link_rebootstraps_with_signatures() -> None:
    link, _, _ = _link()
    link.run_round(PULSES // 2)

    def hook(end: ClassicalChannel, who: Role) -> ClassicalChannel:
        return _Tamper(end, 2, "flip") if who is Role.ALICE else end

    assert link.run_round(PULSES // 2, channel_hook=hook).aborted
    report = link.run_round(PULSES // 2)
    assert report.auth_mode.startswith("signature") and not report.aborted


def test_a_link_needs_identities_or_a_psk() -> None:
    from hybridkex.errors import InvalidParameter

    with pytest.raises(InvalidParameter):
        QKDLink("A", "B")
    with pytest.raises(InvalidParameter):
        QKDLink("A", "A", identity_a=IDENTITY_A, identity_b=IDENTITY_B)


def test_an_initial_psk_authenticates_the_first_round() -> None:
    a, b = MemoryKeyStore("A"), MemoryKeyStore("B")
    link = QKDLink("A", "B", finite_key_parameters(distance_km=25.0),
                   store_a=a, store_b=b, initial_psk=bytes(range(256)) * 16)
    report = link.run_round(PULSES // 2)
    assert report.auth_mode == "wegman-carter-poly1305" and not report.aborted
    assert report.auth_bits_consumed > 0


def test_units_alternate_between_the_sites_starting_with_alice() -> None:
    ids = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(5)]
    material = b"".join(bytes([i]) * 32 for i in range(5))
    keys = stored_keys(material, ids, "site-of-alice", "site-of-bob")
    assert [k.initiator for k in keys] == ["site-of-alice", "site-of-bob"] * 2 + [
        "site-of-alice"]
    assert [k.key for k in keys] == [bytes([i]) * 32 for i in range(5)]
    assert [k.key_id for k in keys] == ids
    from hybridkex.errors import InvalidParameter

    with pytest.raises(InvalidParameter):
        stored_keys(material[:-1], ids, "site-of-alice", "site-of-bob")
