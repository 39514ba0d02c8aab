"""hybridkex's ML-KEM, ML-DSA, X25519 and X25519MLKEM768 against independent implementations.

Each test runs the cells of one kind of row of interop/RESULTS.md (interop_matrix.py
lists them) against OpenSSL 3.5 (Node.js 26's crypto), liboqs (liboqs-js, WebAssembly)
and pqcrypto (PQClean).  kyber-py and dilithium-py are checked against hybridkex in
tests/test_crosscheck.py, which the matrix cites rather than repeats.  Every check goes
both ways: the peer's output accepted by hybridkex, and hybridkex's by the peer.

The last tests check the peers' limitations that make some cells "not supported", so
those cells stay true: a peer that gains the feature fails its check.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from interop_matrix import LIMITATIONS, MLDSA_ALGS, MLKEM_ALGS, Cell, Run, all_cells, cells
from interop_node import NodePeer, unb64
from interop_peers import PQCRYPTO_KEM, PQCRYPTO_SIG, MLDSAPeer, MLKEMPeer, OpenSSLKEM

from hybridkex import primitives

KEM_SEEDS = [bytes(range(64)), hashlib.shake_256(b"hybridkex interop kem").digest(64)]
SIG_SEEDS = [bytes(range(32)), hashlib.sha256(b"hybridkex interop sig").digest()]

# FIPS 203 / FIPS 204 expanded private key sizes, the form liboqs and pqcrypto hand out.
EXPANDED = {"ML-KEM-768": 2400, "ML-KEM-1024": 3168,
            "ML-DSA-44": 2560, "ML-DSA-65": 4032, "ML-DSA-87": 4896}


def _flip(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1:]


# --- ML-KEM ------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", cells("test_mlkem_public_key_from_seed"), ids=str)
def test_mlkem_public_key_from_seed(cell: Cell, kem_peer: MLKEMPeer) -> None:
    alg = cell.row.alg
    for seed in [*KEM_SEEDS, os.urandom(64)]:
        ours, _ = primitives.kem(alg).derive_keypair(seed)
        assert kem_peer.public_from_seed(alg, seed) == ours


@pytest.mark.parametrize("cell", cells("test_mlkem_peer_encapsulates"), ids=str)
def test_mlkem_peer_encapsulates(cell: Cell, kem_peer: MLKEMPeer) -> None:
    alg = cell.row.alg
    kem = primitives.kem(alg)
    public, private = kem.generate_keypair()
    secrets = set()
    for _ in range(3):
        secret, ciphertext = kem_peer.encapsulate(alg, public)
        assert (len(secret), len(ciphertext)) == (32, kem.ciphertext_size)
        assert kem.decapsulate(ciphertext, private) == secret
        secrets.add(secret)
    assert len(secrets) == 3


@pytest.mark.parametrize("cell", cells("test_mlkem_peer_decapsulates"), ids=str)
def test_mlkem_peer_decapsulates(cell: Cell, kem_peer: MLKEMPeer) -> None:
    alg = cell.row.alg
    kem = primitives.kem(alg)
    public, private = kem_peer.keygen(alg)
    assert len(public) == kem.public_key_size
    for _ in range(3):
        secret, ciphertext = kem.encapsulate(public)
        assert kem_peer.decapsulate(alg, private, ciphertext) == secret


@pytest.mark.parametrize("cell", cells("test_mlkem_implicit_rejection"), ids=str)
def test_mlkem_implicit_rejection(cell: Cell, kem_peer: MLKEMPeer) -> None:
    """FIPS 203 implicit rejection: a forged ciphertext yields J(z || c), the same in both."""
    alg = cell.row.alg
    kem = primitives.kem(alg)
    seed = os.urandom(64)
    public, private = kem.derive_keypair(seed)
    theirs = kem_peer.private_from_seed(alg, seed)
    secret, ciphertext = kem.encapsulate(public)
    assert kem_peer.decapsulate(alg, theirs, ciphertext) == secret  # the same key
    for position in (0, len(ciphertext) // 2, len(ciphertext) - 1):
        forged = _flip(ciphertext, position)
        rejected = kem.decapsulate(forged, private)
        assert rejected != secret
        assert kem_peer.decapsulate(alg, theirs, forged) == rejected


# --- ML-DSA ------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", cells("test_mldsa_public_key_from_seed"), ids=str)
def test_mldsa_public_key_from_seed(cell: Cell, sig_peer: MLDSAPeer) -> None:
    alg = cell.row.alg
    for seed in [*SIG_SEEDS, os.urandom(32)]:
        ours, _ = primitives.signature(alg).derive_keypair(seed)
        assert sig_peer.public_from_seed(alg, seed) == ours


@pytest.mark.parametrize("cell", cells("test_mldsa_peer_signs"), ids=str)
def test_mldsa_peer_signs(cell: Cell, sig_peer: MLDSAPeer) -> None:
    alg, context = cell.row.alg, cell.row.context
    scheme = primitives.signature(alg)
    public, private = sig_peer.keygen(alg)
    assert len(public) == scheme.public_key_size
    message = f"signed by {cell.peer}".encode()
    signature = sig_peer.sign(alg, private, message, context)
    assert len(signature) == scheme.signature_size
    assert scheme.verify(public, message, signature, context)
    assert not scheme.verify(public, message + b"!", signature, context)
    assert not scheme.verify(public, message, _flip(signature, 100), context)
    if context:
        assert not scheme.verify(public, message, signature, b"")
        assert not scheme.verify(public, message, signature, context + b"!")
    else:
        assert not scheme.verify(public, message, signature, b"x")


@pytest.mark.parametrize("cell", cells("test_mldsa_peer_verifies"), ids=str)
def test_mldsa_peer_verifies(cell: Cell, sig_peer: MLDSAPeer) -> None:
    alg, context = cell.row.alg, cell.row.context
    scheme = primitives.signature(alg)
    public, private = scheme.generate_keypair()
    message = f"signed by hybridkex for {cell.peer}".encode()
    signature = scheme.sign(private, message, context)
    assert sig_peer.verify(alg, public, message, signature, context)
    assert not sig_peer.verify(alg, public, message + b"!", signature, context)
    assert not sig_peer.verify(alg, public, message, _flip(signature, 100), context)
    if context:
        assert not sig_peer.verify(alg, public, message, signature, b"")
        assert not sig_peer.verify(alg, public, message, signature, context + b"!")


# --- X25519 and X25519MLKEM768 ---------------------------------------------------------

# RFC 7748 section 6.1
ALICE_SCALAR = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_SCALAR = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
RFC7748_SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


@pytest.mark.parametrize("cell", cells("test_x25519"), ids=str)
def test_x25519(cell: Cell, openssl: OpenSSLKEM) -> None:
    x25519 = primitives.kem("X25519")
    # the published example, in both
    assert openssl.x25519_keygen(ALICE_SCALAR) == (ALICE_PUBLIC, ALICE_SCALAR)
    assert x25519.derive_keypair(BOB_SCALAR)[0] == BOB_PUBLIC
    assert openssl.x25519(ALICE_SCALAR, BOB_PUBLIC) == RFC7748_SHARED
    assert x25519.decapsulate(ALICE_PUBLIC, BOB_SCALAR) == RFC7748_SHARED
    # fresh keys: the same public key from the same scalar, the same secret both ways
    scalar = os.urandom(32)
    public, _ = x25519.derive_keypair(scalar)
    assert openssl.x25519_keygen(scalar)[0] == public
    secret, ephemeral = openssl.x25519_encapsulate(public)
    assert x25519.decapsulate(ephemeral, scalar) == secret
    their_public, their_scalar = openssl.x25519_keygen()
    secret, ephemeral = x25519.encapsulate(their_public)
    assert openssl.x25519(their_scalar, ephemeral) == secret


@pytest.mark.parametrize("cell", cells("test_hybrid_client_share_from_private_key"), ids=str)
def test_hybrid_client_share_from_private_key(cell: Cell, openssl: OpenSSLKEM) -> None:
    hybrid = primitives.kem("X25519MLKEM768")
    for private in (bytes(range(96)), os.urandom(96)):
        share, _ = hybrid.derive_keypair(private)
        assert openssl.hybrid_keygen(private) == (share, private)


@pytest.mark.parametrize("cell", cells("test_hybrid_peer_is_client"), ids=str)
def test_hybrid_peer_is_client(cell: Cell, openssl: OpenSSLKEM) -> None:
    hybrid = primitives.kem("X25519MLKEM768")
    client_share, client_private = openssl.hybrid_keygen()
    assert len(client_share) == 1216
    for _ in range(2):
        secret, server_share = hybrid.encapsulate(client_share)
        assert (len(secret), len(server_share)) == (64, 1120)
        assert openssl.hybrid_decapsulate(client_private, server_share) == secret


@pytest.mark.parametrize("cell", cells("test_hybrid_peer_is_server"), ids=str)
def test_hybrid_peer_is_server(cell: Cell, openssl: OpenSSLKEM) -> None:
    hybrid = primitives.kem("X25519MLKEM768")
    client_share, client_private = hybrid.generate_keypair()
    for _ in range(2):
        secret, server_share = openssl.hybrid_encapsulate(client_share)
        assert (len(secret), len(server_share)) == (64, 1120)
        assert hybrid.decapsulate(server_share, client_private) == secret
        # ML-KEM's secret first, then X25519's, each from its own half of the share
        ss_m = primitives.kem("ML-KEM-768").decapsulate(server_share[:1088],
                                                         client_private[:64])
        ss_x = X25519PrivateKey.from_private_bytes(bytes(client_private[64:])).exchange(
            X25519PublicKey.from_public_bytes(server_share[1088:]))
        assert secret == ss_m + ss_x


# --- the peers' limitations behind "not supported" ----------------------------------------


def _liboqs_keygen(node: NodePeer) -> None:
    for alg in (*MLKEM_ALGS, *MLDSA_ALGS):
        kind = "SIG" if alg.startswith("ML-DSA") else "KEM"
        exports = node.call("liboqs.exports", alg=alg)["functions"]
        assert [f for f in exports if "keypair" in f or "seed" in f.lower()] == [
            f"_OQS_{kind}_keypair"], exports
        methods = node.call("liboqs.methods", alg=alg)["methods"]
        assert methods["generateKeyPair"] == 0
        assert not [m for m in methods if any(w in m.lower() for w in ("seed", "derive", "derand"))]
        result = node.call(f"liboqs.{kind.lower()}.keygen", alg=alg)
        assert len(unb64(result["secret"])) == EXPANDED[alg]


def _liboqs_context(node: NodePeer) -> None:
    for alg in MLDSA_ALGS:
        exports = node.call("liboqs.exports", alg=alg)["functions"]
        assert [f for f in exports if "_sign" in f or "_verify" in f or "ctx" in f] == [
            "_OQS_SIG_sign", "_OQS_SIG_verify"], exports
        methods = node.call("liboqs.methods", alg=alg)["methods"]
        assert (methods["sign"], methods["verify"]) == (2, 3)  # (msg, sk), (msg, sig, pk)


def _pqcrypto_keygen() -> None:
    modules: list[tuple[str, Any, set[str]]] = [
        *((alg, m, {"keygen", "encaps", "decaps"}) for alg, m in PQCRYPTO_KEM.items()),
        *((alg, m, {"keygen", "sign", "verify"}) for alg, m in PQCRYPTO_SIG.items()),
    ]
    for alg, module, functions in modules:
        public = {n for n in dir(module) if not n.startswith("_")
                  and callable(getattr(module, n)) and not isinstance(getattr(module, n), type)}
        assert public == functions, public
        with pytest.raises(TypeError):
            module.keygen(bytes(64))
        _, private = module.keygen()
        assert len(private) == EXPANDED[alg]


@pytest.mark.parametrize("limitation", sorted(LIMITATIONS))
def test_limitation_still_holds(limitation: str, request: pytest.FixtureRequest) -> None:
    """What makes the matrix's "not supported" cells true; fails once a peer changes."""
    if limitation == "pqcrypto-keygen":
        _pqcrypto_keygen()
        return
    node = request.getfixturevalue("node")
    assert isinstance(node, NodePeer)
    if limitation == "liboqs-keygen":
        _liboqs_keygen(node)
    elif limitation == "liboqs-context":
        _liboqs_context(node)
    else:
        raise AssertionError(f"no check for limitation {limitation!r}")


# --- the matrix and the tests agree ----------------------------------------------------


def test_every_run_cell_has_its_test() -> None:
    modules = [importlib.import_module(name)
               for name in ("test_interop_primitives", "test_interop_hkx", "test_interop_tls")]
    for cell, how in all_cells():
        if isinstance(how, Run):
            assert any(callable(getattr(m, cell.row.test, None)) for m in modules), cell
