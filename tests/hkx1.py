"""Shared set-up for the HKX/1 protocol tests: two sites, their pools, keys and a wire.

Everything a protocol test needs to build a client and a server that can talk: a
QKD pool deposited identically into both sites' in-memory stores (half the keys
initiated by each site, as the QKD link deposits them: ``linked_pools``), signing
identities as raw keys or X.509 chains (tests/support.PKI), and ``pump`` moving bytes
between the two connections.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hybridkex.keydelivery import KeyStore, linked_pools
from hybridkex.keydelivery.source import StoreKeySource
from hybridkex.protocol import (
    ClientConnection,
    Config,
    Connection,
    ConnectionClosed,
    Event,
    NeedData,
    ServerConnection,
    SigningIdentity,
    TrustStore,
)
from tests.support import CLIENT, PKI, SERVER

SCHEMES = ("ML-DSA-65", "ML-DSA-44", "ML-DSA-87", "Ed25519", "ECDSA-P256", "ML-DSA-65+Ed25519")
X509_SCHEMES = ("ML-DSA-44", "ML-DSA-65", "ML-DSA-87", "Ed25519", "ECDSA-P256")

__all__ = ["CLIENT", "SCHEMES", "SERVER", "X509_SCHEMES", "SecretLog", "Sites", "drain",
           "handshake", "make_sites", "pump", "raw_identities"]


# -- sites ----------------------------------------------------------------------------


@dataclass
class Sites:
    """Both ends' configurations; build connections with ``pair``."""

    client: Config
    server: Config
    client_store: KeyStore | None = None
    server_store: KeyStore | None = None

    def pair(self) -> tuple[ClientConnection, ServerConnection]:
        return ClientConnection(self.client, SERVER), ServerConnection(self.server)


def raw_identities(scheme: str = "ML-DSA-65") -> tuple[dict[str, SigningIdentity],
                                                        dict[str, TrustStore]]:
    ids = {site: SigningIdentity.generate(scheme) for site in (CLIENT, SERVER)}
    trust = {CLIENT: TrustStore(pinned={SERVER: (scheme, ids[SERVER].public_key)}),
             SERVER: TrustStore(pinned={CLIENT: (scheme, ids[CLIENT].public_key)})}
    return ids, trust


def make_sites(*, scheme: str = "ML-DSA-65", x509_chain: bool = False, qkd: bool = True,
               keys_per_direction: int = 32, client: dict[str, Any] | None = None,
               server: dict[str, Any] | None = None) -> Sites:
    """Two sites that trust each other; ``client`` / ``server`` override Config fields."""
    if x509_chain:
        pki = PKI.create(scheme)
        ids = pki.identities
        trust = {CLIENT: pki.trust(), SERVER: pki.trust()}
    else:
        ids, trust = raw_identities(scheme)
    pools = linked_pools(CLIENT, SERVER, keys_per_direction) if qkd else None
    stores = (pools.store_a, pools.store_b) if pools is not None else (None, None)
    sources = [StoreKeySource(s) if s is not None else None for s in stores]
    options: dict[str, dict[str, Any]] = {CLIENT: dict(client or {}), SERVER: dict(server or {})}
    configs = {}
    for site, source in zip((CLIENT, SERVER), sources, strict=True):
        fields: dict[str, Any] = {"site": site, "key_source": source,
                                  "identity": ids[site], "trust": trust[site]}
        fields.update(options[site])
        configs[site] = Config(**fields)
    return Sites(configs[CLIENT], configs[SERVER], stores[0], stores[1])


class SecretLog:
    """Every secret each side's key schedule derived, by role and name."""

    def __init__(self) -> None:
        self.secrets: dict[str, dict[str, bytes]] = {"client": {}, "server": {}}

    def hook(self, role: str) -> Callable[[str, bytes], None]:
        def log(name: str, secret: bytes) -> None:
            self.secrets[role][name] = secret
        return log

    def handshake_secret(self, role: str) -> bytes:
        """The handshake traffic secret ``role`` seals its flight with (from its own log)."""
        return self.secrets[role][f"{role}_handshake_traffic_secret"]


# -- the wire -------------------------------------------------------------------------


def drain(conn: Connection) -> list[Event]:
    """Every event the connection has now (stops at NEED_DATA or ConnectionClosed)."""
    events: list[Event] = []
    while True:
        event = conn.next_event()
        if isinstance(event, NeedData):
            return events
        events.append(event)
        if isinstance(event, ConnectionClosed):
            return events


def pump(client: Connection, server: Connection,
         rounds: int = 16) -> dict[str, list[Event]]:
    """Move bytes both ways until neither side has anything to send."""
    events: dict[str, list[Event]] = {"client": [], "server": []}
    for _ in range(rounds):
        # Drain first: events (and answers) may already be waiting from bytes fed earlier.
        for conn in (client, server):
            events[conn.role] += drain(conn)
        moved = False
        for sender, receiver in ((client, server), (server, client)):
            data = sender.data_to_send()
            if data:
                receiver.receive_data(data)
                moved = True
        if not moved:
            return events
    raise AssertionError("the connections kept talking for too many rounds")


def handshake(sites: Sites) -> tuple[ClientConnection, ServerConnection,
                                     dict[str, list[Event]]]:
    client, server = sites.pair()
    client.start_handshake()
    events = pump(client, server)
    return client, server, events
