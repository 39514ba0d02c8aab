"""Shared set-up for the HKX/1 protocol tests: two sites, their pools, keys and a wire.

Everything a protocol test needs to build a client and a server that can talk: a
QKD pool deposited identically into both sites' in-memory stores (half the keys
initiated by each site, as the QKD link deposits them), signing identities as raw
keys or X.509 chains, and ``pump`` moving bytes between the two connections.
"""

from __future__ import annotations

import datetime
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa
from cryptography.x509.oid import NameOID

from hybridkex.keydelivery.keys import StoredKey
from hybridkex.keydelivery.source import StoreKeySource
from hybridkex.keydelivery.store import MemoryKeyStore
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

CLIENT, SERVER = "site-a", "site-b"
SCHEMES = ("ML-DSA-65", "ML-DSA-44", "ML-DSA-87", "Ed25519", "ECDSA-P256", "ML-DSA-65+Ed25519")
X509_SCHEMES = ("ML-DSA-44", "ML-DSA-65", "ML-DSA-87", "Ed25519", "ECDSA-P256")


def linked_pools(keys_per_direction: int = 32) -> tuple[MemoryKeyStore, MemoryKeyStore]:
    """Two sites' stores holding the same QKD keys: ``keys_per_direction`` initiated by each."""
    a, b = MemoryKeyStore(CLIENT), MemoryKeyStore(SERVER)
    batch = [StoredKey(str(uuid.uuid4()), os.urandom(32), initiator)
             for initiator in (CLIENT, SERVER) for _ in range(keys_per_direction)]
    a.add(SERVER, batch)
    b.add(CLIENT, batch)
    return a, b


# -- X.509 ----------------------------------------------------------------------------

_KEYGEN: dict[str, Callable[[], Any]] = {
    "ML-DSA-44": mldsa.MLDSA44PrivateKey.generate,
    "ML-DSA-65": mldsa.MLDSA65PrivateKey.generate,
    "ML-DSA-87": mldsa.MLDSA87PrivateKey.generate,
    "Ed25519": ed25519.Ed25519PrivateKey.generate,
    "ECDSA-P256": lambda: ec.generate_private_key(ec.SECP256R1()),
}


def private_bytes(scheme: str, key: Any) -> bytes:
    """A cryptography private key as hybridkex's signature scheme takes it."""
    if scheme == "ECDSA-P256":
        return int(key.private_numbers().private_value).to_bytes(32, "big")
    if scheme.startswith("ML-DSA"):
        return bytes(key.private_bytes_raw())
    return bytes(key.private_bytes_raw())


def certificate(subject: str, key: Any, issuer: x509.Certificate | None, issuer_key: Any,
                *, ca: bool, scheme: str, days: int = 1,
                not_before: datetime.datetime | None = None) -> x509.Certificate:
    start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return builder.sign(issuer_key, hashes.SHA256() if scheme == "ECDSA-P256" else None)


@dataclass
class PKI:
    """A root CA, an intermediate, and leaves for both sites, all of one scheme."""

    scheme: str
    root: x509.Certificate
    intermediate: x509.Certificate
    identities: dict[str, SigningIdentity] = field(default_factory=dict)

    @classmethod
    def create(cls, scheme: str) -> PKI:
        gen = _KEYGEN[scheme]
        root_key, mid_key = gen(), gen()
        root = certificate("hkx test root", root_key, None, root_key, ca=True, scheme=scheme)
        mid = certificate("hkx test intermediate", mid_key, root, root_key, ca=True,
                          scheme=scheme)
        pki = cls(scheme, root, mid)
        for site in (CLIENT, SERVER):
            leaf_key = gen()
            leaf = certificate(site, leaf_key, mid, mid_key, ca=False, scheme=scheme)
            pki.identities[site] = SigningIdentity.from_chain(
                scheme, private_bytes(scheme, leaf_key), [leaf, mid])
        return pki

    def trust(self) -> TrustStore:
        return TrustStore(anchors=[self.root])


# -- sites ----------------------------------------------------------------------------


@dataclass
class Sites:
    """Both ends' configurations; build connections with ``pair``."""

    client: Config
    server: Config
    client_store: MemoryKeyStore | None = None
    server_store: MemoryKeyStore | None = None

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
    stores: tuple[MemoryKeyStore, MemoryKeyStore] | tuple[None, None] = (
        linked_pools(keys_per_direction) if qkd else (None, None))
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
