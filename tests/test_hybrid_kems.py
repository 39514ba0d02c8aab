"""X-Wing and X25519MLKEM768 against published vectors and independent computations.

The independent side never goes through hybridkex: ML-KEM-768 is kyber-py (pure
Python FIPS 203), X25519 is pyca/cryptography used directly, and the hashes are
hashlib.  Definitions followed:

* X-Wing (draft-connolly-cfrg-xwing-kem -05..-10): expand the 32-byte sk with
  SHAKE256(sk, 96) into the ML-KEM-768 seed (64) and the X25519 scalar (32);
  ss = SHA3-256(ss_M || ss_X || ct_X || pk_X || "\\.//^\\").
* X25519MLKEM768 (draft-ietf-tls-ecdhe-mlkem / RFC 9954): client share
  ek || x25519, server share c || x25519, shared secret ss_ML-KEM || ss_X25519.

Vectors come from ../shared/vectors (README sections 3 and 4): the X-Wing draft's
own file, and the draft-irtf-cfrg-concrete-hybrid-kems-02 subset whose
MLKEM768-X25519 entries are X-Wing.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from kyber_py.ml_kem import ML_KEM_768

from hybridkex import primitives
from hybridkex.errors import InvalidCiphertext, InvalidKey
from hybridkex.primitives.kem import XWING_LABEL
from tests.conftest import load_vectors

LABEL = b"\\.//^\\"

# Low-order points of Curve25519 (u-coordinates, little-endian), as listed by libsodium
# and Wycheproof: X25519 of any scalar with these is all-zero.
LOW_ORDER = [
    bytes(32),  # u = 0
    (1).to_bytes(32, "little"),  # u = 1
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    (2**255 - 19 - 1).to_bytes(32, "little"),  # u = p - 1
    (2**255 - 19).to_bytes(32, "little"),  # u = p (non-canonical 0)
    (2**255 - 19 + 1).to_bytes(32, "little"),  # u = p + 1 (non-canonical 1)
]


def _h(value: str) -> bytes:
    return bytes.fromhex(value)


def _kyber_derive(seed: bytes) -> tuple[bytes, bytes]:
    ek, dk = ML_KEM_768.key_derive(seed)
    return bytes(ek), bytes(dk)


def _kyber_encaps(ek: bytes) -> tuple[bytes, bytes]:
    key, c = ML_KEM_768.encaps(ek)
    return bytes(key), bytes(c)


def _kyber_decaps(dk: bytes, c: bytes) -> bytes:
    return bytes(ML_KEM_768.decaps(dk, c))


def _rfc7748_x25519(scalar: X25519PrivateKey, u: bytes) -> bytes:
    """X25519(scalar, u) per RFC 7748, including the all-zero output that cryptography
    refuses (it raises ValueError exactly for that output)."""
    try:
        return scalar.exchange(X25519PublicKey.from_public_bytes(u))
    except ValueError:
        return bytes(32)


# --- independent X-Wing -----------------------------------------------------------------


def _xwing_expand(sk: bytes) -> tuple[bytes, bytes, X25519PrivateKey, bytes]:
    expanded = hashlib.shake_256(sk).digest(96)
    ek_m, dk_m = _kyber_derive(expanded[:64])
    sk_x = X25519PrivateKey.from_private_bytes(expanded[64:96])
    return ek_m, dk_m, sk_x, sk_x.public_key().public_bytes_raw()


def _xwing_public(sk: bytes) -> bytes:
    ek_m, _, _, pk_x = _xwing_expand(sk)
    return ek_m + pk_x


def _xwing_decaps(sk: bytes, ct: bytes) -> bytes:
    _, dk_m, sk_x, pk_x = _xwing_expand(sk)
    ss_m = _kyber_decaps(dk_m, ct[:1088])
    ct_x = ct[1088:]
    ss_x = _rfc7748_x25519(sk_x, ct_x)
    return hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + LABEL).digest()


def _xwing_encaps(pk: bytes) -> tuple[bytes, bytes]:
    pk_m, pk_x = pk[:1184], pk[1184:]
    ss_m, ct_m = _kyber_encaps(pk_m)
    eph = X25519PrivateKey.generate()
    ct_x = eph.public_key().public_bytes_raw()
    ss_x = _rfc7748_x25519(eph, pk_x)
    return hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + LABEL).digest(), ct_m + ct_x


# --- X-Wing draft vectors ---------------------------------------------------------------


def _xwing_vectors() -> list[dict[str, Any]]:
    loaded = load_vectors("xwing/test-vectors.json")
    assert isinstance(loaded, list)
    return loaded


@pytest.fixture(params=[0, 1, 2], ids=lambda i: f"tv{i}")
def xwing_vector(request: pytest.FixtureRequest) -> dict[str, bytes]:
    vectors = _xwing_vectors()
    assert len(vectors) == 3
    raw = vectors[request.param]
    return {k: _h(v) for k, v in raw.items()}


def test_label_is_the_drafts() -> None:
    assert XWING_LABEL == LABEL == _h("5c2e2f2f5e5c")


def test_xwing_vector_keygen(xwing_vector: dict[str, bytes]) -> None:
    kem = primitives.kem("X-Wing")
    public, private = kem.derive_keypair(xwing_vector["seed"])
    assert public == xwing_vector["pk"]
    assert private == xwing_vector["sk"]
    # The independent derivation reproduces the vector too (so the oracle is sound).
    assert _xwing_public(xwing_vector["sk"]) == xwing_vector["pk"]


def test_xwing_vector_decapsulation(xwing_vector: dict[str, bytes]) -> None:
    kem = primitives.kem("X-Wing")
    assert kem.decapsulate(xwing_vector["ct"], xwing_vector["sk"]) == xwing_vector["ss"]


def test_xwing_vector_independent_decapsulation(xwing_vector: dict[str, bytes]) -> None:
    assert _xwing_decaps(xwing_vector["sk"], xwing_vector["ct"]) == xwing_vector["ss"]


def test_xwing_vector_encapsulation_x25519_half(xwing_vector: dict[str, bytes]) -> None:
    # ct_X = X25519(eseed[32:64], 9): the only part of encaps checkable without EncapsDerand.
    eph = X25519PrivateKey.from_private_bytes(xwing_vector["eseed"][32:64])
    assert eph.public_key().public_bytes_raw() == xwing_vector["ct"][1088:]


def test_xwing_our_encapsulation_decapsulated_independently(
    xwing_vector: dict[str, bytes],
) -> None:
    kem = primitives.kem("X-Wing")
    secret, ciphertext = kem.encapsulate(xwing_vector["pk"])
    assert len(secret) == 32
    assert len(ciphertext) == 1120
    assert _xwing_decaps(xwing_vector["sk"], ciphertext) == secret
    assert kem.decapsulate(ciphertext, xwing_vector["sk"]) == secret


def test_xwing_independent_encapsulation_decapsulated_by_us(
    xwing_vector: dict[str, bytes],
) -> None:
    kem = primitives.kem("X-Wing")
    secret, ciphertext = _xwing_encaps(xwing_vector["pk"])
    assert kem.decapsulate(ciphertext, xwing_vector["sk"]) == secret


# --- draft-irtf-cfrg-concrete-hybrid-kems-02 subset ---------------------------------------

CONCRETE = "hybrid-kems/concrete-hybrid-kems-draft02-subset.json"


def _concrete(key: str) -> list[dict[str, bytes]]:
    data = load_vectors(CONCRETE)
    assert isinstance(data, dict)
    return [{k: _h(v) for k, v in vector.items()} for vector in data[key]]


def test_concrete_mlkem768_x25519_is_xwing() -> None:
    vectors = _concrete("mlkem768_x25519")
    assert len(vectors) == 3
    kem = primitives.kem("X-Wing")
    for v in vectors:
        assert v["label_hex"] == XWING_LABEL
        assert v["decapsulation_key"] == v["seed"]
        assert v["decapsulation_key_pq"] == hashlib.shake_256(v["seed"]).digest(96)[:64]
        assert v["decapsulation_key_t"] == hashlib.shake_256(v["seed"]).digest(96)[64:]
        public, private = kem.derive_keypair(v["seed"])
        assert public == v["encapsulation_key"]
        assert private == v["decapsulation_key"]
        assert kem.decapsulate(v["ciphertext"], v["seed"]) == v["shared_secret"]
        assert _xwing_decaps(v["seed"], v["ciphertext"]) == v["shared_secret"]


@pytest.mark.parametrize(
    ("key", "mlkem", "ek_size", "ct_size", "curve"),
    [
        ("mlkem768_p256", "ML-KEM-768", 1184, 1088, ec.SECP256R1()),
        ("mlkem1024_p384", "ML-KEM-1024", 1568, 1568, ec.SECP384R1()),
    ],
)
def test_concrete_nist_curve_entries_mlkem_half(
    key: str, mlkem: str, ek_size: int, ct_size: int, curve: ec.EllipticCurve
) -> None:
    """MLKEM768-P256 and MLKEM1024-P384 are not hybridkex algorithms.

    Only their ML-KEM half is ours: the ek derived from decapsulation_key_pq must be
    the vector's ek prefix.  As an extra check of our ML-KEM decapsulation, the
    draft's combiner SHA3-256(ss_PQ || ss_T || ct_T || ek_T || label) is recomputed
    with ss_PQ from our ML-KEM and ss_T from cryptography's ECDH (x-coordinate).
    """
    vectors = _concrete(key)
    assert vectors
    kem = primitives.kem(mlkem)
    for v in vectors:
        assert v["decapsulation_key_pq"] == hashlib.shake_256(v["seed"]).digest(64)
        public, _ = kem.derive_keypair(v["decapsulation_key_pq"])
        assert public == v["encapsulation_key"][:ek_size]
        assert len(public) == ek_size

        ss_pq = kem.decapsulate(v["ciphertext"][:ct_size], v["decapsulation_key_pq"])
        ek_t, ct_t = v["encapsulation_key"][ek_size:], v["ciphertext"][ct_size:]
        sk_t = ec.derive_private_key(int.from_bytes(v["decapsulation_key_t"], "big"), curve)
        peer = ec.EllipticCurvePublicKey.from_encoded_point(curve, ct_t)
        ss_t = sk_t.exchange(ec.ECDH(), peer)
        combined = hashlib.sha3_256(ss_pq + ss_t + ct_t + ek_t + v["label_hex"]).digest()
        assert combined == v["shared_secret"]


# --- X25519MLKEM768 (draft-ietf-tls-ecdhe-mlkem) -----------------------------------------

SEEDS_96 = [bytes(range(96)), hashlib.shake_256(b"hybridkex x25519mlkem768").digest(96)]


@pytest.fixture(params=range(len(SEEDS_96)), ids=lambda i: f"seed{i}")
def tls_seed(request: pytest.FixtureRequest) -> bytes:
    seed = SEEDS_96[request.param]
    assert isinstance(seed, bytes)
    return seed


def _tls_independent_keys(seed: bytes) -> tuple[bytes, bytes, X25519PrivateKey]:
    """(client share, ML-KEM dk, X25519 private) from d || z || x25519 scalar."""
    ek, dk = _kyber_derive(seed[:64])
    sk_x = X25519PrivateKey.from_private_bytes(seed[64:])
    return ek + sk_x.public_key().public_bytes_raw(), dk, sk_x


def test_x25519mlkem768_public_key_matches_independent(tls_seed: bytes) -> None:
    kem = primitives.kem("X25519MLKEM768")
    public, private = kem.derive_keypair(tls_seed)
    expected, _, _ = _tls_independent_keys(tls_seed)
    assert len(public) == 1216
    assert public == expected
    assert private == tls_seed


def test_x25519mlkem768_our_encapsulation_decapsulated_independently(tls_seed: bytes) -> None:
    kem = primitives.kem("X25519MLKEM768")
    public, _ = kem.derive_keypair(tls_seed)
    secret, ciphertext = kem.encapsulate(public)
    assert len(secret) == 64
    assert len(ciphertext) == 1120
    _, dk, sk_x = _tls_independent_keys(tls_seed)
    ss_m = _kyber_decaps(dk, ciphertext[:1088])
    ss_x = sk_x.exchange(X25519PublicKey.from_public_bytes(ciphertext[1088:]))
    assert secret == ss_m + ss_x  # ML-KEM first, then X25519


def test_x25519mlkem768_independent_encapsulation_decapsulated_by_us(tls_seed: bytes) -> None:
    kem = primitives.kem("X25519MLKEM768")
    public, _, _ = _tls_independent_keys(tls_seed)
    ss_m, c = _kyber_encaps(public[:1184])
    eph = X25519PrivateKey.generate()
    ss_x = eph.exchange(X25519PublicKey.from_public_bytes(public[1184:]))
    ciphertext = c + eph.public_key().public_bytes_raw()
    assert kem.decapsulate(ciphertext, tls_seed) == ss_m + ss_x


def test_low_order_list_is_low_order() -> None:
    """Guard on the oracle: cryptography refuses every listed point (all-zero output)."""
    scalar = X25519PrivateKey.from_private_bytes(bytes(range(32)))
    for u in LOW_ORDER:
        with pytest.raises(ValueError, match=r".*"):
            scalar.exchange(X25519PublicKey.from_public_bytes(u))


@pytest.mark.parametrize("u", LOW_ORDER, ids=lambda u: u.hex()[:8])
def test_x25519mlkem768_low_order_share_rejected(u: bytes) -> None:
    kem = primitives.kem("X25519MLKEM768")
    public, private = kem.derive_keypair(SEEDS_96[0])
    _, ciphertext = kem.encapsulate(public)
    with pytest.raises(InvalidCiphertext):
        kem.decapsulate(ciphertext[:1088] + u, private)
    # And a client share with a low-order X25519 key cannot be encapsulated to.
    with pytest.raises(InvalidKey):
        kem.encapsulate(public[:1184] + u)


@pytest.mark.parametrize("u", LOW_ORDER, ids=lambda u: u.hex()[:8])
def test_x25519_kem_low_order_rejected(u: bytes) -> None:
    kem = primitives.kem("X25519")
    _, private = kem.derive_keypair(bytes(range(32)))
    with pytest.raises(InvalidCiphertext):
        kem.decapsulate(u, private)
    with pytest.raises(InvalidKey):
        kem.encapsulate(u)


@pytest.mark.parametrize("u", LOW_ORDER, ids=lambda u: u.hex()[:8])
def test_xwing_low_order_share_accepted_as_specified(u: bytes) -> None:
    """X-Wing's draft has no all-zero check: ss_X is 32 zero bytes and is hashed as is."""
    kem = primitives.kem("X-Wing")
    sk = bytes(range(32))
    public, _ = kem.derive_keypair(sk)
    _, ciphertext = kem.encapsulate(public)
    forged = ciphertext[:1088] + u
    _, dk_m, _, pk_x = _xwing_expand(sk)
    ss_m = _kyber_decaps(dk_m, forged[:1088])
    expected = hashlib.sha3_256(ss_m + bytes(32) + u + pk_x + LABEL).digest()
    assert kem.decapsulate(forged, sk) == expected
    assert _xwing_decaps(sk, forged) == expected
    # Encapsulating to a public key whose X25519 half is low order also succeeds.
    secret, ct = kem.encapsulate(public[:1184] + u)
    assert len(ct) == 1120
    ss_m = _kyber_decaps(dk_m, ct[:1088])
    assert secret == hashlib.sha3_256(ss_m + bytes(32) + ct[1088:] + u + LABEL).digest()
