"""Private keys that hold their decoded key object, and AEADs bound to one key.

Both exist for speed only (bench/handshake.py), so what is tested is that they change
nothing else: a held key is its bytes, gives the results its bytes give, and is plain
bytes once copied; a keyed AEAD gives the stateless AEAD's results and refuses what it
refuses.
"""

from __future__ import annotations

import copy
import os
import pickle

import pytest

from hybridkex import primitives
from hybridkex.errors import AuthenticationFailed, InvalidKey, InvalidParameter
from hybridkex.primitives._held import HeldKey, held_key

KEMS = ("X25519", "ML-KEM-768", "ML-KEM-1024")
SIGNERS = ("ML-DSA-44", "ML-DSA-65", "ML-DSA-87", "Ed25519", "ECDSA-P256")


@pytest.mark.parametrize("name", KEMS)
def test_a_generated_kem_key_is_held_and_decapsulates_like_its_bytes(name: str) -> None:
    kem = primitives.kem(name)
    public, private = kem.generate_keypair()
    assert type(private) is HeldKey
    plain = bytes(private)
    assert type(plain) is bytes and plain == private and len(plain) == kem.private_key_size
    secret, ciphertext = kem.encapsulate(public)
    assert kem.decapsulate(ciphertext, private) == secret
    assert kem.decapsulate(ciphertext, plain) == secret


def test_a_held_key_of_another_kem_is_used_as_its_bytes() -> None:
    # ML-KEM-768 and ML-KEM-1024 seeds are both 64 bytes: the held 1024 key must not be
    # used as a 768 key object, only as the seed it is.
    _, held_1024 = primitives.kem("ML-KEM-1024").generate_keypair()
    mlkem768 = primitives.kem("ML-KEM-768")
    public, _ = mlkem768.derive_keypair(bytes(held_1024))
    secret, ciphertext = mlkem768.encapsulate(public)
    assert mlkem768.decapsulate(ciphertext, held_1024) == secret


@pytest.mark.parametrize("name", SIGNERS)
def test_prepared_and_generated_signing_keys_sign_like_their_bytes(name: str) -> None:
    scheme = primitives.signature(name)
    public, private = scheme.generate_keypair()
    assert type(private) is HeldKey
    plain = bytes(private)
    prepared = scheme.prepare_private_key(plain)
    assert type(prepared) is HeldKey and prepared == plain
    for key in (private, plain, prepared):
        assert scheme.verify(public, b"message", scheme.sign(key, b"message"))


@pytest.mark.parametrize("name", SIGNERS)
def test_prepare_refuses_what_sign_refuses(name: str) -> None:
    scheme = primitives.signature(name)
    bad = bytes(scheme.private_key_size + 1)
    with pytest.raises(InvalidKey):
        scheme.sign(bad, b"message")
    with pytest.raises(InvalidKey):
        scheme.prepare_private_key(bad)


def test_schemes_without_a_held_form_prepare_to_plain_bytes() -> None:
    scheme = primitives.signature("ML-DSA-65+Ed25519")
    public, private = scheme.generate_keypair()
    prepared = scheme.prepare_private_key(bytearray(private))
    assert type(prepared) is bytes and prepared == private
    assert scheme.verify(public, b"m", scheme.sign(prepared, b"m"))


@pytest.mark.parametrize("name", ["ML-DSA-44", "ML-DSA-65", "ML-DSA-87"])
def test_a_prepared_public_key_verifies_like_its_bytes(name: str) -> None:
    scheme = primitives.signature(name)
    public, private = scheme.generate_keypair()
    signature = scheme.sign(private, b"message")
    prepared = scheme.prepare_public_key(bytearray(public))
    assert type(prepared) is HeldKey and prepared == public
    assert scheme.verify(prepared, b"message", signature)
    assert not scheme.verify(prepared, b"another message", signature)
    with pytest.raises(InvalidKey):
        scheme.prepare_public_key(public[:-1])
    with pytest.raises(InvalidKey):
        scheme.prepare_public_key(bytes(scheme.public_key_size + 1))


def test_a_decoded_key_is_held_only_if_it_is_the_schemes_and_encodes_to_the_bytes() -> None:
    scheme = primitives.signature("ML-DSA-65")
    public, private = scheme.generate_keypair()
    other_public, _ = scheme.generate_keypair()
    signature = scheme.sign(private, b"message")
    # a key object that is not the one the bytes encode is not used: the bytes decide
    wrong = scheme.prepare_public_key(public, held_key(scheme.prepare_public_key(other_public)))
    assert wrong == public and scheme.verify(wrong, b"message", signature)
    # an ML-DSA-44 key object offered for ML-DSA-65 bytes is not used either
    small = primitives.signature("ML-DSA-44").prepare_public_key(
        primitives.signature("ML-DSA-44").generate_keypair()[0])
    assert scheme.verify(scheme.prepare_public_key(public, held_key(small)), b"message",
                         signature)
    assert not scheme.verify(scheme.prepare_public_key(other_public), b"message", signature)


def test_copies_of_a_held_key_are_plain_bytes() -> None:
    _, private = primitives.signature("ML-DSA-65").generate_keypair()
    for clone in (pickle.loads(pickle.dumps(private)), copy.copy(private),
                  copy.deepcopy(private)):
        assert type(clone) is bytes and clone == private
    assert repr(private) == repr(bytes(private))
    assert hash(private) == hash(bytes(private))


@pytest.mark.parametrize("name", ["AES-256-GCM", "ChaCha20-Poly1305"])
def test_a_keyed_aead_matches_the_stateless_one(name: str) -> None:
    aead = primitives.aead(name)
    key, nonce = os.urandom(32), os.urandom(12)
    keyed = aead.keyed(key)
    assert repr(keyed) == f"<KeyedAEAD {name}>"
    for plaintext, aad in ((b"", b""), (os.urandom(100), b"\x17\x00\x74"),
                           (os.urandom(1 << 14), b"")):
        sealed = keyed.encrypt(nonce, plaintext, aad)
        assert sealed == aead.encrypt(key, nonce, plaintext, aad)
        assert keyed.decrypt(nonce, sealed, aad) == plaintext
        assert keyed.decrypt(bytearray(nonce), bytearray(sealed), memoryview(aad)) == plaintext
        tampered = bytes([sealed[0] ^ 1]) + sealed[1:]
        with pytest.raises(AuthenticationFailed):
            keyed.decrypt(nonce, tampered, aad)
        with pytest.raises(AuthenticationFailed):
            keyed.decrypt(nonce, sealed, aad + b"x")
    with pytest.raises(AuthenticationFailed):
        keyed.decrypt(nonce, bytes(15))
    with pytest.raises(InvalidParameter):
        keyed.encrypt(bytes(11), b"x")
    with pytest.raises(InvalidParameter):
        keyed.decrypt(bytes(13), bytes(16))
    with pytest.raises(InvalidParameter):
        keyed.encrypt(nonce, "text")  # type: ignore[arg-type]
    with pytest.raises(InvalidKey):
        aead.keyed(bytes(16))
