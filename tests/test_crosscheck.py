"""hybridkex against independent pure-Python FIPS 203 / FIPS 204 implementations.

kyber-py (ML-KEM) and dilithium-py (ML-DSA) share no code with OpenSSL, which is
what hybridkex runs on.  Every check goes both ways: same key from the same seed,
their ciphertexts/signatures accepted by us and ours by them.  The selftest's
PUBLIC_KEY_DIGESTS are recomputed here from those implementations, which is what
makes the constants trustworthy, and the composite ML-DSA-65+Ed25519 construction is
rebuilt from its documented definition with hashlib, dilithium-py and cryptography.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from dilithium_py.ml_dsa import ML_DSA_44, ML_DSA_65, ML_DSA_87
from kyber_py.ml_kem import ML_KEM_768, ML_KEM_1024

from hybridkex import primitives
from hybridkex.selftest import PUBLIC_KEY_DIGESTS

KYBER: dict[str, Any] = {"ML-KEM-768": ML_KEM_768, "ML-KEM-1024": ML_KEM_1024}
DILITHIUM: dict[str, Any] = {"ML-DSA-44": ML_DSA_44, "ML-DSA-65": ML_DSA_65, "ML-DSA-87": ML_DSA_87}

KEM_SEEDS = [bytes(range(64)), hashlib.shake_256(b"hybridkex crosscheck kem").digest(64)]
SIG_SEED = hashlib.sha256(b"hybridkex crosscheck sig").digest()


# --- ML-KEM <-> kyber-py ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(KYBER))
@pytest.mark.parametrize("seed", KEM_SEEDS, ids=["range", "shake"])
def test_mlkem_same_public_key_from_seed(name: str, seed: bytes) -> None:
    ek, _ = KYBER[name].key_derive(seed)
    public, private = primitives.kem(name).derive_keypair(seed)
    assert public == bytes(ek)
    assert private == seed


@pytest.mark.parametrize("name", sorted(KYBER))
def test_mlkem_their_ciphertext_decapsulated_by_us(name: str) -> None:
    oracle = KYBER[name]
    ek, _ = oracle.key_derive(KEM_SEEDS[1])
    for _ in range(2):
        key, c = oracle.encaps(ek)
        assert primitives.kem(name).decapsulate(bytes(c), KEM_SEEDS[1]) == bytes(key)


@pytest.mark.parametrize("name", sorted(KYBER))
def test_mlkem_our_ciphertext_decapsulated_by_them(name: str) -> None:
    oracle = KYBER[name]
    kem = primitives.kem(name)
    public, _ = kem.derive_keypair(KEM_SEEDS[1])
    _, dk = oracle.key_derive(KEM_SEEDS[1])
    for _ in range(2):
        secret, ciphertext = kem.encapsulate(public)
        assert len(ciphertext) == kem.ciphertext_size
        assert bytes(oracle.decaps(dk, ciphertext)) == secret


@pytest.mark.parametrize("name", sorted(KYBER))
def test_mlkem_implicit_rejection_agrees(name: str) -> None:
    """A forged ciphertext gives the same implicit-rejection secret in both."""
    oracle = KYBER[name]
    kem = primitives.kem(name)
    public, private = kem.derive_keypair(KEM_SEEDS[0])
    _, dk = oracle.key_derive(KEM_SEEDS[0])
    _, ciphertext = kem.encapsulate(public)
    forged = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    ours = kem.decapsulate(forged, private)
    assert ours == bytes(oracle.decaps(dk, forged))
    assert ours == hashlib.shake_256(private[32:] + forged).digest(32)


# --- ML-DSA <-> dilithium-py --------------------------------------------------------------

CONTEXTS = [b"", b"hybridkex crosscheck context"]


@pytest.mark.parametrize("name", sorted(DILITHIUM))
def test_mldsa_same_public_key_from_seed(name: str) -> None:
    pk, _ = DILITHIUM[name].key_derive(SIG_SEED)
    public, private = primitives.signature(name).derive_keypair(SIG_SEED)
    assert public == bytes(pk)
    assert private == SIG_SEED


@pytest.mark.parametrize("name", sorted(DILITHIUM))
@pytest.mark.parametrize("ctx", CONTEXTS, ids=["empty-ctx", "ctx"])
def test_mldsa_their_signature_verified_by_us(name: str, ctx: bytes) -> None:
    oracle = DILITHIUM[name]
    scheme = primitives.signature(name)
    pk, sk = oracle.key_derive(SIG_SEED)
    message = b"signed by dilithium-py"
    sig = bytes(oracle.sign(sk, message, ctx=ctx))
    assert len(sig) == scheme.signature_size
    assert scheme.verify(bytes(pk), message, sig, ctx)
    assert not scheme.verify(bytes(pk), message, sig, ctx + b"x")
    assert not scheme.verify(bytes(pk), message + b"x", sig, ctx)


@pytest.mark.parametrize("name", sorted(DILITHIUM))
@pytest.mark.parametrize("ctx", CONTEXTS, ids=["empty-ctx", "ctx"])
def test_mldsa_our_signature_verified_by_them(name: str, ctx: bytes) -> None:
    oracle = DILITHIUM[name]
    scheme = primitives.signature(name)
    public, private = scheme.derive_keypair(SIG_SEED)
    message = b"signed by hybridkex"
    sig = scheme.sign(private, message, ctx)
    assert oracle.verify(public, message, sig, ctx=ctx) is True
    assert oracle.verify(public, message, sig, ctx=ctx + b"x") is False
    assert oracle.verify(public, message + b"x", sig, ctx=ctx) is False


@pytest.mark.parametrize("name", sorted(DILITHIUM))
def test_mldsa_wrong_context_fails_both_ways(name: str) -> None:
    oracle = DILITHIUM[name]
    scheme = primitives.signature(name)
    public, private = scheme.derive_keypair(SIG_SEED)
    ours = scheme.sign(private, b"m", b"context-A")
    _, sk = oracle.key_derive(SIG_SEED)
    theirs = bytes(oracle.sign(sk, b"m", ctx=b"context-A"))
    assert oracle.verify(public, b"m", ours, ctx=b"context-B") is False
    assert oracle.verify(public, b"m", ours, ctx=b"") is False
    assert not scheme.verify(public, b"m", theirs, b"context-B")
    assert not scheme.verify(public, b"m", theirs, b"")
    # and the right context does verify both ways
    assert oracle.verify(public, b"m", ours, ctx=b"context-A") is True
    assert scheme.verify(public, b"m", theirs, b"context-A")


# --- selftest constants ------------------------------------------------------------------


def _independent_public(name: str) -> bytes:
    if name in KYBER:
        ek, _ = KYBER[name].key_derive(bytes(range(64)))
        return bytes(ek)
    if name in DILITHIUM:
        pk, _ = DILITHIUM[name].key_derive(bytes(range(32)))
        return bytes(pk)
    assert name == "X-Wing"
    expanded = hashlib.shake_256(bytes(range(32))).digest(96)
    ek, _ = ML_KEM_768.key_derive(expanded[:64])
    pk_x = X25519PrivateKey.from_private_bytes(expanded[64:]).public_key().public_bytes_raw()
    return bytes(ek) + pk_x


def test_selftest_digests_cover_the_expected_algorithms() -> None:
    assert set(PUBLIC_KEY_DIGESTS) == {"ML-KEM-768", "ML-KEM-1024", "X-Wing",
                                       "ML-DSA-44", "ML-DSA-65", "ML-DSA-87"}


@pytest.mark.parametrize("name", sorted(PUBLIC_KEY_DIGESTS))
def test_selftest_public_key_digest_recomputed_independently(name: str) -> None:
    public = _independent_public(name)
    assert hashlib.sha256(public).hexdigest() == PUBLIC_KEY_DIGESTS[name]
    # the seed size used by the selftest is the scheme's own
    algorithm: Any = (primitives.signature(name) if name.startswith("ML-DSA")
                      else primitives.kem(name))
    ours, _ = algorithm.derive_keypair(bytes(range(algorithm.seed_size)))
    assert ours == public


# --- composite ML-DSA-65+Ed25519 ------------------------------------------------------------

PREFIX = b"CompositeAlgorithmSignatures2025"
LABEL = b"COMPSIG-MLDSA65-Ed25519-SHA512"
COMPOSITE_SEED = hashlib.sha512(b"hybridkex composite").digest()


def _m_prime(message: bytes, ctx: bytes) -> bytes:
    return PREFIX + LABEL + bytes([len(ctx)]) + ctx + hashlib.sha512(message).digest()


@pytest.mark.parametrize("ctx", CONTEXTS, ids=["empty-ctx", "ctx"])
def test_composite_signature_matches_documented_construction(ctx: bytes) -> None:
    scheme = primitives.signature("ML-DSA-65+Ed25519")
    public, private = scheme.derive_keypair(COMPOSITE_SEED)
    assert len(public) == 1952 + 32
    message = b"composite message"
    sig = scheme.sign(private, message, ctx)
    assert len(sig) == 3309 + 64
    m_prime = _m_prime(message, ctx)
    assert ML_DSA_65.verify(public[:1952], m_prime, sig[:3309], ctx=LABEL) is True
    Ed25519PublicKey.from_public_bytes(public[1952:]).verify(sig[3309:], m_prime)
    # neither half is a stand-alone signature on M
    assert ML_DSA_65.verify(public[:1952], message, sig[:3309], ctx=ctx) is False
    with pytest.raises(InvalidSignature):
        Ed25519PublicKey.from_public_bytes(public[1952:]).verify(sig[3309:], message)


def test_composite_key_halves_are_independent_keys() -> None:
    scheme = primitives.signature("ML-DSA-65+Ed25519")
    public, _ = scheme.derive_keypair(COMPOSITE_SEED)
    pk_m, _ = ML_DSA_65.key_derive(COMPOSITE_SEED[:32])
    ed = Ed25519PrivateKey.from_private_bytes(COMPOSITE_SEED[32:])
    assert public == bytes(pk_m) + ed.public_key().public_bytes_raw()


@pytest.mark.parametrize("ctx", CONTEXTS, ids=["empty-ctx", "ctx"])
def test_composite_independently_assembled_signature_verifies(ctx: bytes) -> None:
    scheme = primitives.signature("ML-DSA-65+Ed25519")
    pk_m, sk_m = ML_DSA_65.key_derive(COMPOSITE_SEED[:32])
    ed = Ed25519PrivateKey.from_private_bytes(COMPOSITE_SEED[32:])
    public = bytes(pk_m) + ed.public_key().public_bytes_raw()
    message = b"assembled outside hybridkex"
    m_prime = _m_prime(message, ctx)
    sig = bytes(ML_DSA_65.sign(sk_m, m_prime, ctx=LABEL)) + ed.sign(m_prime)
    assert scheme.verify(public, message, sig, ctx)
    assert not scheme.verify(public, message, sig, ctx + b"x")
    assert not scheme.verify(public, message + b"x", sig, ctx)
    # Signing M' under the wrong ML-DSA context (the caller's ctx instead of Label) fails.
    wrong = bytes(ML_DSA_65.sign(sk_m, m_prime, ctx=ctx)) + ed.sign(m_prime)
    assert not scheme.verify(public, message, wrong, ctx)
