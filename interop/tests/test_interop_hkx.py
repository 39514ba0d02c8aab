"""HKX/1 handshakes whose KEM and signature steps run in another implementation.

A connection draws every KEM key pair, encapsulation and signature through its
Config.randomness (hybridkex/protocol/randomness.py).  PeerRandomness hands the
chosen steps to a peer (OpenSSL 3.5 through Node.js, liboqs, pqcrypto, kyber-py,
dilithium-py) and counts them, so each test knows the peer really did them.  The
two connections are real hybridkex ones over tests/hkx1's in-memory wire: the
handshake must complete with the same transcript and exporter on both sides, and
application data must go both ways.

What cannot be handed over: the client's decapsulation, which connection.py does
with hybridkex.primitives and the private key Randomness.kem_keypair returned (so
that key must be the 64-byte ML-KEM seed), and the signature key, which HKX/1
identities hold as the 32-byte ML-DSA seed.  Peers that make only expanded keys sit
those rows out (interop_matrix.py says so, and checks it).
"""

from __future__ import annotations

from collections import Counter

import pytest
from interop_matrix import Cell, Row, cells
from interop_peers import MLDSAPeer, MLKEMPeer, OpenSSLKEM, PQCryptoKEM

from hybridkex.errors import HybridKexError
from hybridkex.protocol import SUITES, Connection, DataReceived
from hybridkex.protocol.randomness import SystemRandomness
from tests.hkx1 import handshake, make_sites, pump


class PeerRandomness(SystemRandomness):
    """The operating system's randomness, except for the steps given to a peer.

    ``keypairs``: the ML-KEM key pairs (in the seed form the client decapsulates
    with); ``encapsulations``: the ML-KEM encapsulations; ``x25519``: X25519's key
    pairs and encapsulations; ``signer``: the ML-DSA signatures.  ``done`` counts what
    the peers did, by step and algorithm.
    """

    def __init__(self, *, keypairs: MLKEMPeer | None = None,
                 encapsulations: MLKEMPeer | None = None, x25519: OpenSSLKEM | None = None,
                 signer: MLDSAPeer | None = None) -> None:
        self.keypairs = keypairs
        self.encapsulations = encapsulations
        self.x25519 = x25519
        self.signer = signer
        self.done: Counter[str] = Counter()

    def kem_keypair(self, kem_name: str) -> tuple[bytes, bytes]:
        if kem_name.startswith("ML-KEM") and self.keypairs is not None:
            self.done[f"keypair {kem_name}"] += 1
            return self.keypairs.keygen_seed_form(kem_name)
        if kem_name == "X25519" and self.x25519 is not None:
            self.done["keypair X25519"] += 1
            return self.x25519.x25519_keygen()
        return super().kem_keypair(kem_name)

    def encapsulate(self, kem_name: str, public: bytes) -> tuple[bytes, bytes]:
        if kem_name.startswith("ML-KEM") and self.encapsulations is not None:
            self.done[f"encapsulate {kem_name}"] += 1
            return self.encapsulations.encapsulate(kem_name, public)
        if kem_name == "X25519" and self.x25519 is not None:
            self.done["encapsulate X25519"] += 1
            return self.x25519.x25519_encapsulate(public)
        return super().encapsulate(kem_name, public)

    def sign(self, scheme: str, private: bytes, message: bytes) -> bytes:
        if scheme.startswith("ML-DSA") and self.signer is not None:
            self.done[f"sign {scheme}"] += 1
            return self.signer.sign_with_seed(scheme, private, message)
        return super().sign(scheme, private, message)


def _received(events: list[object]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, DataReceived)]


def connect(row: Row, client: PeerRandomness, server: PeerRandomness) -> tuple[Connection,
                                                                              Connection]:
    """A complete HKX/1 session in ``row``'s suite, checked end to end."""
    suite = SUITES[row.suite]
    sites = make_sites(
        client={"randomness": client, "suites": (suite,), "auth": "signature"},
        server={"randomness": server, "suites": (suite,), "auth": "signature"})
    c, s, _ = handshake(sites)
    assert c.handshake_complete and s.handshake_complete
    for conn in (c, s):
        info = conn.session_info()
        assert info.suite == suite.name
        assert info.kems == tuple(k.algorithm for k in suite.kems)
        assert info.auth_mode == "signature" and info.qkd and info.fallback is None
    assert c.session_info().transcript_hash == s.session_info().transcript_hash
    assert (c.export_keying_material("hybridkex interop", b"", 32)
            == s.export_keying_material("hybridkex interop", b"", 32))
    c.send(b"client to server")
    s.send(b"server to client")
    events = pump(c, s)
    assert _received(list(events["server"])) == [b"client to server"]
    assert _received(list(events["client"])) == [b"server to client"]
    return c, s


@pytest.mark.parametrize("cell", cells("test_hkx_server_encapsulation_by_peer"), ids=str)
def test_hkx_server_encapsulation_by_peer(cell: Cell, kem_peer: MLKEMPeer) -> None:
    client, server = PeerRandomness(), PeerRandomness(encapsulations=kem_peer)
    connect(cell.row, client, server)
    assert server.done == Counter({f"encapsulate {cell.row.alg}": 1})
    assert not client.done


@pytest.mark.parametrize("cell", cells("test_hkx_client_keypair_by_peer"), ids=str)
def test_hkx_client_keypair_by_peer(cell: Cell, kem_peer: MLKEMPeer) -> None:
    client, server = PeerRandomness(keypairs=kem_peer), PeerRandomness()
    connect(cell.row, client, server)
    assert client.done == Counter({f"keypair {cell.row.alg}": 1})
    assert not server.done


@pytest.mark.parametrize("cell", cells("test_hkx_both_mlkem_steps_by_peer"), ids=str)
def test_hkx_both_mlkem_steps_by_peer(cell: Cell, kem_peer: MLKEMPeer) -> None:
    client, server = PeerRandomness(keypairs=kem_peer), PeerRandomness(encapsulations=kem_peer)
    connect(cell.row, client, server)
    assert client.done == Counter({f"keypair {cell.row.alg}": 1})
    assert server.done == Counter({f"encapsulate {cell.row.alg}": 1})


@pytest.mark.parametrize("cell", cells("test_hkx_every_kem_step_by_peer"), ids=str)
def test_hkx_every_kem_step_by_peer(cell: Cell, openssl: OpenSSLKEM) -> None:
    client = PeerRandomness(keypairs=openssl, x25519=openssl)
    server = PeerRandomness(encapsulations=openssl, x25519=openssl)
    connect(cell.row, client, server)
    assert client.done == Counter({"keypair ML-KEM-768": 1, "keypair X25519": 1})
    assert server.done == Counter({"encapsulate ML-KEM-768": 1, "encapsulate X25519": 1})


@pytest.mark.parametrize("cell", cells("test_hkx_signatures_by_peer"), ids=str)
def test_hkx_signatures_by_peer(cell: Cell, sig_peer: MLDSAPeer) -> None:
    client, server = PeerRandomness(signer=sig_peer), PeerRandomness(signer=sig_peer)
    connect(cell.row, client, server)
    assert client.done == server.done == Counter({f"sign {cell.row.alg}": 1})


# --- the control: the handshake really depends on the peer's answer ---------------------


class WrongSecret(PQCryptoKEM):
    """pqcrypto's encapsulation with one bit of the shared secret flipped."""

    def encapsulate(self, alg: str, ek: bytes) -> tuple[bytes, bytes]:
        secret, ciphertext = super().encapsulate(alg, ek)
        return bytes([secret[0] ^ 1]) + secret[1:], ciphertext


def test_hkx_fails_when_the_peer_secret_disagrees() -> None:
    """A peer whose secret differs from the ciphertext's makes the handshake fail."""
    suite = SUITES[0x0101]
    server = PeerRandomness(encapsulations=WrongSecret())
    sites = make_sites(client={"suites": (suite,), "auth": "signature"},
                       server={"randomness": server, "suites": (suite,), "auth": "signature"})
    with pytest.raises(HybridKexError):
        handshake(sites)
    assert server.done == Counter({"encapsulate ML-KEM-768": 1})
