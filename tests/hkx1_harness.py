"""Test harness for the HKX/1 behaviour tests (test_protocol_*.py), on top of tests/hkx1.py.

What tests/hkx1.py does not give: pools whose key IDs and material the test knows
(``LinkedPools``, kept in the :class:`World`),
a record of every secret a session touched (QKD keys, private keys, KEM secrets and
everything the key schedule derives) so reprs and error texts can be searched for
them, and a wire that keeps going when one side fails (recording each side's error)
and lets a man in the middle rewrite what crosses it.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hybridkex.errors import AlertReceived, ProtocolError
from hybridkex.keydelivery import KeyStore, LinkedPools, StoreKeySource, linked_pools
from hybridkex.protocol import (
    ClientConnection,
    Config,
    Connection,
    Event,
    HandshakeComplete,
    ServerConnection,
    State,
    SystemRandomness,
)
from tests.hkx1 import CLIENT, SERVER, Sites, drain, make_sites

ROLES = ("client", "server")
SITE_OF = {"client": CLIENT, "server": SERVER}
OTHER = {"client": "server", "server": "client"}

# Record content types and the record framing, written out here (RFC 8446 numbering) so
# the tests do not read them back from the code under test.
ALERT, HANDSHAKE, APPLICATION_DATA = 21, 22, 23
TAG_SIZE = 16  # both record AEADs (AES-256-GCM, ChaCha20-Poly1305)


def split_records(data: bytes) -> list[tuple[int, bytes]]:
    """``type(1) | length(2) | payload`` records; the data must hold whole records."""
    records = []
    pos = 0
    while pos < len(data):
        assert pos + 3 <= len(data), "a record header is cut off"
        length = int.from_bytes(data[pos + 1:pos + 3], "big")
        assert pos + 3 + length <= len(data), "a record is cut off"
        records.append((data[pos], data[pos + 3:pos + 3 + length]))
        pos += 3 + length
    return records


def join_records(records: Iterable[tuple[int, bytes]]) -> bytes:
    return b"".join(bytes([t]) + len(p).to_bytes(2, "big") + p for t, p in records)


# -- secrets ----------------------------------------------------------------------------


class Secrets:
    """Every secret a test's sessions handled, and a search for them in text."""

    def __init__(self) -> None:
        self.values: list[tuple[str, bytes]] = []

    def add(self, name: str, value: bytes) -> None:
        self.values.append((name, bytes(value)))

    def log(self, name: str, value: bytes) -> None:
        """Config.secret_log: everything the key schedule derives.  The transcript hash
        is logged there too, but it is a hash of public messages and session_info()
        shows it on purpose, so it is not searched for."""
        if "transcript_hash" not in name:
            self.add(name, value)

    def get(self, name: str) -> bytes:
        """The latest value recorded under ``name``."""
        matches = [value for n, value in self.values if n == name]
        assert matches, f"no secret {name!r} was recorded"
        return matches[-1]

    def names(self) -> set[str]:
        return {name for name, _ in self.values}

    def leaks(self, text: str) -> list[str]:
        """Names of the secrets ``text`` shows: as hex (either case), as a bytes repr,
        as base64 or as raw bytes read as Latin-1."""
        lower = text.lower()
        found = []
        for name, value in self.values:
            forms = (value.hex(), repr(value)[2:-1], base64.b64encode(value).decode(),
                     value.decode("latin-1"))
            if value.hex() in lower or any(f in text for f in forms[1:]):
                found.append(name)
        return found

    def assert_clean(self, *objects: object) -> None:
        """Neither repr() nor str() of any object shows a secret."""
        assert self.values, "no secrets were recorded: the check would be vacuous"
        for obj in objects:
            for text in (repr(obj), str(obj)):
                leaked = self.leaks(text)
                assert not leaked, f"{type(obj).__name__} text shows {leaked}: {text[:200]}"


class RecordingRandomness(SystemRandomness):
    """The system's randomness, remembering the KEM private keys and shared secrets."""

    def __init__(self, secrets: Secrets) -> None:
        self.secrets = secrets

    def kem_keypair(self, kem_name: str) -> tuple[bytes, bytes]:
        public, private = super().kem_keypair(kem_name)
        self.secrets.add(f"{kem_name} private key", private)
        return public, private

    def encapsulate(self, kem_name: str, public: bytes) -> tuple[bytes, bytes]:
        secret, ciphertext = super().encapsulate(kem_name, public)
        self.secrets.add(f"{kem_name} shared secret", secret)
        return secret, ciphertext

    def __repr__(self) -> str:
        return "RecordingRandomness()"


# -- worlds ---------------------------------------------------------------------------

OTHER_SITE = {"client": SERVER, "server": CLIENT}


def role_store(pools: LinkedPools, role: str) -> KeyStore:
    """The store of ``role`` ("client" or "server"): the client is site A."""
    return pools.store_a if role == "client" else pools.store_b


def key_ids(pools: LinkedPools, site: str) -> list[str]:
    """The IDs of the units ``site`` may take, in deposit order (the order take() hands
    them out)."""
    return [unit.key_id for unit in pools.taken_by(site)]


@dataclass
class World:
    """Two sites (tests/hkx1.Sites), their known pools (``linked_pools``: the client is
    site A), and the secrets they handled."""

    sites: Sites
    pools: LinkedPools | None
    secrets: Secrets

    @property
    def known_pools(self) -> LinkedPools:
        assert self.pools is not None
        return self.pools

    def store(self, role: str) -> KeyStore:
        return role_store(self.known_pools, role)

    def delivered(self, role: str) -> int:
        """Units delivered so far by ``role``'s store."""
        return self.store(role).status(OTHER_SITE[role]).delivered

    def pair(self) -> tuple[ClientConnection, ServerConnection]:
        return self.sites.pair()

    def config(self, role: str) -> Config:
        return self.sites.client if role == "client" else self.sites.server


def build(*, qkd: bool = True, keys: int = 16, scheme: str = "ML-DSA-65",
          x509_chain: bool = False, client: dict[str, Any] | None = None,
          server: dict[str, Any] | None = None) -> World:
    """make_sites with known pools and secret tracking; ``client`` / ``server`` override
    Config fields last (so ``{"key_source": None}`` takes a site's pool away)."""
    secrets = Secrets()
    pools = linked_pools(CLIENT, SERVER, keys) if qkd else None
    if pools is not None:
        for key_id, material in pools.material().items():
            secrets.add(f"QKD key {key_id}", material)
    overrides: dict[str, dict[str, Any]] = {}
    for role, given in (("client", client), ("server", server)):
        base: dict[str, Any] = {"randomness": RecordingRandomness(secrets),
                                "secret_log": secrets.log}
        if pools is not None:
            base["key_source"] = StoreKeySource(role_store(pools, role))
        overrides[role] = {**base, **(given or {})}
    made = make_sites(scheme=scheme, x509_chain=x509_chain, qkd=False,
                      client=overrides["client"], server=overrides["server"])
    for config in (made.client, made.server):
        if config.identity is not None:
            secrets.add(f"{config.site} signing key", config.identity.private_key)
    sites = Sites(made.client, made.server,
                  pools.store_a if pools else None, pools.store_b if pools else None)
    return World(sites, pools, secrets)


# -- the wire, with failures ----------------------------------------------------------

Tamper = Callable[[str, bytes], bytes]


@dataclass
class Outcome:
    """What each side reported until the wire went quiet: its events, and the
    ProtocolError it raised, if it raised one (after which it is not read from)."""

    events: dict[str, list[Event]] = field(default_factory=lambda: {r: [] for r in ROLES})
    errors: dict[str, ProtocolError] = field(default_factory=dict)

    def completed(self, role: str) -> bool:
        return any(isinstance(e, HandshakeComplete) for e in self.events[role])


def exchange(client: Connection, server: Connection, *, tamper: Tamper | None = None,
             rounds: int = 16) -> Outcome:
    """Like tests/hkx1.pump, but a side that raises a ProtocolError is recorded and left
    alone (its alert still goes out), and ``tamper(sender role, bytes)`` may rewrite
    every flight on its way."""
    outcome = Outcome()
    for _ in range(rounds):
        moved = False
        for sender, receiver in ((client, server), (server, client)):
            data = sender.data_to_send()
            if not data:
                continue
            if tamper is not None:
                data = tamper(sender.role, data)
            if receiver.role not in outcome.errors:
                receiver.receive_data(data)
                moved = True
        for conn in (client, server):
            if conn.role in outcome.errors:
                continue
            try:
                outcome.events[conn.role] += drain(conn)
            except ProtocolError as exc:
                outcome.errors[conn.role] = exc
                moved = True
        if not moved:
            return outcome
    raise AssertionError("the connections kept talking for too many rounds")


def start(world: World, *, tamper: Tamper | None = None
          ) -> tuple[ClientConnection, ServerConnection, Outcome]:
    client, server = world.pair()
    client.start_handshake()
    return client, server, exchange(client, server, tamper=tamper)


def assert_refused(world: World, client: Connection, server: Connection, outcome: Outcome, *,
                   detector: str, error: type[ProtocolError], alert: int | None = None,
                   detector_only: bool = False) -> ProtocolError:
    """``detector`` raised ``error`` (with ``alert``), the other side learned of it by a
    matching AlertReceived, neither completed the handshake, both are in state ERROR, and
    no error text shows a secret.  ``detector_only``: the other side completed before
    the detector refused it (the client's identity, checked after the client finished)."""
    other = OTHER[detector]
    exc = outcome.errors.get(detector)
    assert isinstance(exc, error), f"{detector} raised {exc!r}, expected {error.__name__}"
    assert not isinstance(exc, AlertReceived)
    if alert is not None:
        assert exc.alert == alert, f"{detector} sent alert {exc.alert}, expected {alert}"
    peer_exc = outcome.errors.get(other)
    assert isinstance(peer_exc, AlertReceived), f"{other} ended with {peer_exc!r}"
    assert peer_exc.alert == exc.alert
    assert not outcome.completed(detector)
    if not detector_only:
        assert not outcome.completed(other)
    for conn in (client, server):
        assert conn.state is State.ERROR
        assert not conn.handshake_complete
    world.secrets.assert_clean(exc, peer_exc, client, server, *outcome.events["client"],
                               *outcome.events["server"])
    return exc
