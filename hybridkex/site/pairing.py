"""Pairing two sites: the trust exchange, then the **simulated** QKD link fills both stores.

:func:`pair` copies each site's certificate or pin into the other's ``trust/`` and runs
rounds of the simulated link (:mod:`hybridkex.qkd.link`) until enough keys are
deposited.  The link, and numpy with it, is imported only when :func:`pair` runs:
``serve`` and ``connect`` load a site on every start and never pair.  Everything
pairing reports says the link is a simulation.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hybridkex.errors import HybridKexError
from hybridkex.site.directory import Site
from hybridkex.site.errors import SiteError

if TYPE_CHECKING:
    from hybridkex.qkd.link import LinkReport

__all__ = ["DEFAULT_PULSES_PER_ROUND", "PairReport", "PairingFailed", "pair"]

#: Pulses per simulated link round: at 25 km about 370 keys of 256 bits, about 1 s on one core.
DEFAULT_PULSES_PER_ROUND = 500_000_000


class PairingFailed(HybridKexError):
    """The simulated QKD link could not fill the key stores (every round aborted)."""


def _simulation_label() -> str:
    """The link's label, looked up when a report is made rather than when this module
    is imported: importing even the label module loads the ``hybridkex.qkd`` package."""
    from hybridkex.qkd.labels import SIMULATION_LABEL

    return SIMULATION_LABEL


@dataclass
class PairReport:
    """What :func:`pair` did: the trust exchanged and the simulated link's rounds."""

    site_a: str
    site_b: str
    distance_km: float
    pulses_per_round: int
    trust: list[str]
    rounds: list[LinkReport] = field(default_factory=list)
    keys_deposited: int = 0
    available: dict[str, int] = field(default_factory=dict)  # site -> keys it can take
    elapsed_s: float = 0.0
    simulation: str = field(default_factory=_simulation_label)

    @property
    def aborted_rounds(self) -> int:
        return sum(r.aborted for r in self.rounds)

    @property
    def auth_bits_consumed(self) -> int:
        return sum(r.auth_bits_consumed for r in self.rounds)

    def to_json(self) -> dict[str, Any]:
        return {
            "simulated": True,
            "simulation": self.simulation,
            "site_a": self.site_a,
            "site_b": self.site_b,
            "distance_km": self.distance_km,
            "pulses_per_round": self.pulses_per_round,
            "trust": self.trust,
            "rounds": len(self.rounds),
            "aborted_rounds": self.aborted_rounds,
            "keys_deposited": self.keys_deposited,
            "available": self.available,
            "round_auth": [r.auth_mode for r in self.rounds],
            "auth_bits_consumed": self.auth_bits_consumed,
            "secret_bits": sum(r.secret_bits for r in self.rounds if not r.aborted),
            "elapsed_s": round(self.elapsed_s, 3),
        }


def pair(site_a: Site, site_b: Site, distance_km: float = 25.0, keys: int = 500, *,
         pulses_per_round: int = DEFAULT_PULSES_PER_ROUND, max_failed_rounds: int = 5,
         replace_trust: bool = False,
         on_pulses: Callable[[int, int], None] | None = None,
         on_round: Callable[[LinkReport, int], None] | None = None) -> PairReport:
    """Make two sites trust each other, then fill both key stores from a **simulated**
    QKD link until at least ``keys`` 256-bit keys were deposited (both directions
    together; each site may initiate sessions with about half of them).

    The link's first round authenticates its classical channel with the two sites'
    signing keys, each verified against the key the *other* site now trusts; later
    rounds use Wegman-Carter MACs keyed from the previous round's key.  Both site
    objects are in this process: this is a laboratory set-up, where the simulated link
    stands in for a real QKD device pair.  ``on_pulses(done, total)`` reports the
    optical simulation, ``on_round(report, deposited_so_far)`` every round.

    There is no seed: the keys go where sessions take them, so everything secret about
    them comes from the operating system (:mod:`hybridkex.qkd.link`).
    """
    if site_a.name == site_b.name:
        raise SiteError("a site cannot be paired with itself (both are named "
                        f"{site_a.name!r})")
    if keys < 1 or pulses_per_round < 1:
        raise SiteError("keys and pulses per round must be positive")
    if not 0 <= distance_km <= 1000:
        raise SiteError("distance must be between 0 and 1000 km")
    # The link (and numpy) load here, not when the site package is imported.
    from hybridkex.qkd.link import QKDLink, SiteIdentity
    from hybridkex.qkd.parameters import finite_key_parameters

    started = time.perf_counter()
    trust = [f"{site_a.name} trusts {site_b.name}: "
             + site_a.trust(site_b.public_identity_file, replace_trust).describe(),
             f"{site_b.name} trusts {site_a.name}: "
             + site_b.trust(site_a.public_identity_file, replace_trust).describe()]
    # Each side verifies the other with the key it now trusts, not the other's own file.
    public_a = _trusted_key(site_b, site_a.name)
    public_b = _trusted_key(site_a, site_b.name)
    link = QKDLink(site_a.name, site_b.name, finite_key_parameters(distance_km=distance_km),
                   store_a=site_a.store, store_b=site_b.store,
                   identity_a=SiteIdentity(site_a.scheme, site_a.identity.private_key, public_a),
                   identity_b=SiteIdentity(site_b.scheme, site_b.identity.private_key, public_b))
    report = PairReport(site_a.name, site_b.name, distance_km, pulses_per_round, trust)
    failed = 0
    while report.keys_deposited < keys:
        result = link.run_round(pulses_per_round, progress=on_pulses)
        report.rounds.append(result)
        report.keys_deposited += result.keys_deposited
        if on_round is not None:
            on_round(result, report.keys_deposited)
        failed = failed + 1 if result.aborted or not result.keys_deposited else 0
        if failed >= max_failed_rounds:
            raise PairingFailed(
                f"the simulated QKD link produced no key in {failed} consecutive rounds at "
                f"{distance_km:g} km (last: {result.abort_reason or 'no key'}); use more "
                "pulses per round or a shorter distance")
    report.available = {site_a.name: site_a.pool_status(site_b.name).available_to_take,
                        site_b.name: site_b.pool_status(site_a.name).available_to_take}
    report.elapsed_s = time.perf_counter() - started
    paired_at = datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
    for site, peer in ((site_a, site_b.name), (site_b, site_a.name)):
        previous = site.link_info(peer)
        site.record_link(peer, {
            "qkd": "SIMULATED decoy-state BB84 (Monte Carlo), not a physical QKD device",
            "simulated": True,
            "distance_km": float(distance_km),
            "keys_deposited": int(previous.get("keys_deposited", 0)) + report.keys_deposited,
            "last_paired": paired_at,
        })
    return report


def _trusted_key(site: Site, peer: str) -> bytes:
    """The public key ``site`` trusts for ``peer`` (from its pin or certificate)."""
    return site.peer_key(peer)[1]
