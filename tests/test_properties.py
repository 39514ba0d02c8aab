"""Property tests (hypothesis): combiners, composite signatures, and hostile input.

The contract under test: every combiner binds each secret, each name, the parts'
order and the context; bad combiner input is a CombinerError.  KEMs, signatures and
AEADs answer malformed input only with hybridkex's own typed errors (never a bare
ValueError or TypeError from cryptography), ML-KEM answers a well-formed forged
ciphertext with the FIPS 203 implicit-rejection secret, and ``verify`` returns False
for any bad signature instead of raising.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hybridkex import combiner, primitives
from hybridkex.errors import (
    AuthenticationFailed,
    CombinerError,
    InvalidCiphertext,
    InvalidKey,
    InvalidParameter,
)
from hybridkex.primitives.kem import xwing_combine

SETTINGS = settings(max_examples=50, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=20, deadline=None, database=None,
               suppress_health_check=[HealthCheck.too_slow])

_T = TypeVar("_T")


def _attempt(call: Callable[[], _T]) -> _T | Exception:
    """The call's result, or the exception it raised (so its exact type can be checked)."""
    try:
        return call()
    except Exception as exc:
        return exc


GENERIC_COMBINERS = ["hkdf-concat", "etsi-catkdf", "etsi-caskdf"]

# --- strategies ----------------------------------------------------------------------------

names = st.text(min_size=1, max_size=12)
secrets = st.binary(min_size=1, max_size=64)
contexts = st.binary(max_size=80)
lengths = st.integers(min_value=16, max_value=96)  # shorter outputs collide by chance


@st.composite
def part_lists(draw: st.DrawFn, min_size: int = 2, max_size: int = 4) -> list[tuple[str, bytes]]:
    chosen = draw(st.lists(names, min_size=min_size, max_size=max_size,
                           unique_by=lambda n: n.encode("utf-8")))
    return [(n, draw(secrets)) for n in chosen]


def _combine(parts: list[tuple[str, bytes]], ctx: bytes, length: int, name: str) -> bytes:
    return combiner.combine(parts, ctx, length, combiner=name)


# --- combiners: binding ---------------------------------------------------------------------


@pytest.mark.parametrize("name", GENERIC_COMBINERS)
@SETTINGS
@given(parts=part_lists(), ctx=contexts, length=lengths)
def test_combiner_deterministic_and_length(
    name: str, parts: list[tuple[str, bytes]], ctx: bytes, length: int
) -> None:
    out = _combine(parts, ctx, length, name)
    assert len(out) == length
    assert _combine(list(parts), bytes(ctx), length, name) == out
    # bytearray / memoryview inputs are the same input
    alt = [(n, bytearray(s)) for n, s in parts]
    assert combiner.combine(alt, memoryview(ctx), length, combiner=name) == out


@pytest.mark.parametrize("name", GENERIC_COMBINERS)
@SETTINGS
@given(parts=part_lists(), ctx=contexts, length=lengths, data=st.data())
def test_combiner_binds_every_secret(
    name: str, parts: list[tuple[str, bytes]], ctx: bytes, length: int, data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(parts) - 1))
    new_secret = data.draw(secrets.filter(lambda s: s != parts[index][1]))
    changed = list(parts)
    changed[index] = (parts[index][0], new_secret)
    assert _combine(changed, ctx, length, name) != _combine(parts, ctx, length, name)


@pytest.mark.parametrize("name", GENERIC_COMBINERS)
@SETTINGS
@given(parts=part_lists(), ctx=contexts, length=lengths, data=st.data())
def test_combiner_binds_every_name(
    name: str, parts: list[tuple[str, bytes]], ctx: bytes, length: int, data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(parts) - 1))
    taken = {n.encode("utf-8") for n, _ in parts}
    new_name = data.draw(names.filter(lambda n: n.encode("utf-8") not in taken))
    changed = list(parts)
    changed[index] = (new_name, parts[index][1])
    assert _combine(changed, ctx, length, name) != _combine(parts, ctx, length, name)


@pytest.mark.parametrize("name", GENERIC_COMBINERS)
@SETTINGS
@given(parts=part_lists(), ctx=contexts, length=lengths, data=st.data())
def test_combiner_binds_order(
    name: str, parts: list[tuple[str, bytes]], ctx: bytes, length: int, data: st.DataObject
) -> None:
    reordered = data.draw(st.permutations(parts))
    assume(reordered != parts)
    assert _combine(reordered, ctx, length, name) != _combine(parts, ctx, length, name)


@pytest.mark.parametrize("name", GENERIC_COMBINERS)
@SETTINGS
@given(parts=part_lists(), ctx=contexts, other=contexts, length=lengths)
def test_combiner_binds_context(
    name: str, parts: list[tuple[str, bytes]], ctx: bytes, other: bytes, length: int
) -> None:
    assume(ctx != other)
    assert _combine(parts, ctx, length, name) != _combine(parts, other, length, name)


@pytest.mark.parametrize("name", GENERIC_COMBINERS)
@pytest.mark.parametrize(("hash_name", "block"), [("SHA-256", 64), ("SHA-384", 128)])
def test_combiner_context_not_ambiguous_as_hmac_key(name: str, hash_name: str, block: int) -> None:
    """HMAC pads short keys with zeros and hashes long ones; the context must not inherit
    either ambiguity (hkdf-concat uses it as the HKDF salt, an HMAC key)."""
    parts = [("X25519", b"\x01" * 32), ("ML-KEM-768", b"\x02" * 32)]

    def run(ctx: bytes) -> bytes:
        return combiner.combine(parts, ctx, 32, combiner=name, hash_name=hash_name)

    assert run(b"ab") != run(b"ab\x00")
    assert run(b"") != run(b"\x00")
    long_ctx = bytes(range(block + 36))
    digest = hashlib.new(hash_name.replace("-", "").lower(), long_ctx).digest()
    # RFC 5869: an empty salt is HashLen zero bytes
    assert run(b"") != run(bytes(len(digest)))
    assert run(long_ctx) != run(digest)


@pytest.mark.parametrize("name", GENERIC_COMBINERS)
def test_combiner_output_lengths(name: str) -> None:
    """hkdf-concat binds the length in info (documented): outputs of different lengths
    are unrelated.  ETSI CatKDF/CasKDF take no length input (TS 103 744 clauses 8.2/8.3),
    so there a shorter output is a prefix of a longer one; that is the standard's."""
    parts = [("X25519", b"\x01" * 32), ("QKD", b"\x03" * 32)]
    short = combiner.combine(parts, b"ctx", 32, combiner=name)
    long = combiner.combine(parts, b"ctx", 64, combiner=name)
    assert len(short) == 32
    assert len(long) == 64
    if name == "hkdf-concat":
        assert long[:32] != short
    else:
        assert long[:32] == short


@pytest.mark.parametrize("name", GENERIC_COMBINERS)
@pytest.mark.parametrize(("hash_name", "hash_len"), [("SHA-256", 32), ("SHA-384", 48)])
def test_combiner_maximum_length_is_usable(name: str, hash_name: str, hash_len: int) -> None:
    """Every length the combiner admits must work (255*HashLen; CasKDF 254*HashLen, as
    each round also expands a HashLen chain secret); beyond it, InvalidParameter."""
    parts = [("X25519", b"\x01" * 32), ("QKD", b"\x03" * 32)]
    maximum = (254 if name == "etsi-caskdf" else 255) * hash_len
    assert len(combiner.combine(parts, b"", maximum, combiner=name,
                                hash_name=hash_name)) == maximum
    with pytest.raises(InvalidParameter):
        combiner.combine(parts, b"", maximum + 1, combiner=name, hash_name=hash_name)


# --- combiners: refusals ---------------------------------------------------------------------

BAD_PARTS: list[tuple[str, Any]] = [
    ("missing-secret", [("X25519", b"\x01" * 32), ("QKD", None)]),
    ("empty-secret", [("X25519", b"\x01" * 32), ("QKD", b"")]),
    ("duplicate-name", [("X25519", b"\x01" * 32), ("X25519", b"\x02" * 32)]),
    ("one-part", [("X25519", b"\x01" * 32)]),
    ("no-parts", []),
    ("empty-name", [("", b"\x01" * 32), ("QKD", b"\x02" * 32)]),
    ("non-str-name", [(b"X25519", b"\x01" * 32), ("QKD", b"\x02" * 32)]),
    ("str-secret", [("X25519", "secret"), ("QKD", b"\x02" * 32)]),
    ("not-a-pair", [("X25519", b"\x01" * 32, b"x"), ("QKD", b"\x02" * 32)]),
    ("non-sequence-dict", {"X25519": b"\x01" * 32, "QKD": b"\x02" * 32}),
    ("non-sequence-set", {("X25519", b"\x01" * 32), ("QKD", b"\x02" * 32)}),
    ("non-sequence-iter", iter([("X25519", b"\x01" * 32), ("QKD", b"\x02" * 32)])),
    ("non-sequence-none", None),
    ("non-sequence-bytes", b"X25519"),
    ("non-sequence-str", "X25519"),
]


@pytest.mark.parametrize("name", GENERIC_COMBINERS)
@pytest.mark.parametrize("parts", [p for _, p in BAD_PARTS], ids=[i for i, _ in BAD_PARTS])
def test_combiner_refuses_bad_parts(name: str, parts: Any) -> None:
    with pytest.raises(CombinerError):
        combiner.combine(parts, b"ctx", 32, combiner=name)


@pytest.mark.parametrize("name", GENERIC_COMBINERS)
@FEW
@given(parts=part_lists(min_size=2, max_size=3), data=st.data())
def test_combiner_duplicate_name_anywhere_refused(
    name: str, parts: list[tuple[str, bytes]], data: st.DataObject
) -> None:
    dup = data.draw(st.sampled_from(parts))
    position = data.draw(st.integers(0, len(parts)))
    bad = [*parts[:position], (dup[0], b"\x09"), *parts[position:]]
    with pytest.raises(CombinerError):
        combiner.combine(bad, b"ctx", 32, combiner=name)


@pytest.mark.parametrize("name", GENERIC_COMBINERS)
@pytest.mark.parametrize("count", [255, 256, 300])
def test_combiner_many_parts_combined_or_refused(name: str, count: int) -> None:
    """hkdf-concat encodes the part count as u8 and CasKDF the round index as u8: a part
    list they cannot encode must be a CombinerError, never a bare ValueError."""
    parts = [(f"part-{i}", bytes([i % 256 or 1])) for i in range(count)]
    out = _attempt(lambda: combiner.combine(parts, b"ctx", 32, combiner=name))
    if isinstance(out, Exception):
        assert type(out) is CombinerError, f"{type(out).__module__}.{type(out).__name__}: {out}"
        assert count > 255
    else:
        assert len(out) == 32


# --- the X-Wing combiner -----------------------------------------------------------------------

b32 = st.binary(min_size=32, max_size=32)


@SETTINGS
@given(ss_m=b32, ss_x=b32, ct_x=b32, pk_x=b32)
def test_xwing_combiner_is_the_xwing_kem_combiner(
    ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes
) -> None:
    out = combiner.combine([("ML-KEM-768", ss_m), ("X25519", ss_x)], ct_x + pk_x, 32,
                           combiner="xwing")
    assert out == xwing_combine(ss_m, ss_x, ct_x, pk_x)
    assert out == hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + b"\\.//^\\").digest()
    assert combiner.combine([("ML-KEM-768", ss_m), ("X25519", ss_x)], ct_x + pk_x, 32,
                            combiner="xwing", hash_name="SHA3-256") == out


def test_xwing_combiner_matches_xwing_decapsulation() -> None:
    kem = primitives.kem("X-Wing")
    sk = bytes(range(32))
    public, _ = kem.derive_keypair(sk)
    secret, ciphertext = kem.encapsulate(public)
    expanded = hashlib.shake_256(sk).digest(96)
    ss_m = primitives.kem("ML-KEM-768").decapsulate(ciphertext[:1088], expanded[:64])
    ss_x = X25519PrivateKey.from_private_bytes(expanded[64:]).exchange(
        X25519PublicKey.from_public_bytes(ciphertext[1088:]))
    assert combiner.combine([("ML-KEM-768", ss_m), ("X25519", ss_x)],
                            ciphertext[1088:] + public[1184:], 32, combiner="xwing") == secret


XWING_BAD: list[tuple[str, list[tuple[str, bytes]], bytes, int, str]] = [
    ("reversed", [("X25519", b"\x02" * 32), ("ML-KEM-768", b"\x01" * 32)], bytes(64), 32,
     "SHA-256"),
    ("wrong-name", [("ML-KEM-1024", b"\x01" * 32), ("X25519", b"\x02" * 32)], bytes(64), 32,
     "SHA-256"),
    ("extra-part", [("ML-KEM-768", b"\x01" * 32), ("X25519", b"\x02" * 32),
                    ("QKD", b"\x03" * 32)], bytes(64), 32, "SHA-256"),
    ("one-part", [("ML-KEM-768", b"\x01" * 32)], bytes(64), 32, "SHA-256"),
    ("short-ss-m", [("ML-KEM-768", b"\x01" * 31), ("X25519", b"\x02" * 32)], bytes(64), 32,
     "SHA-256"),
    ("long-ss-x", [("ML-KEM-768", b"\x01" * 32), ("X25519", b"\x02" * 33)], bytes(64), 32,
     "SHA-256"),
    ("short-context", [("ML-KEM-768", b"\x01" * 32), ("X25519", b"\x02" * 32)], bytes(63), 32,
     "SHA-256"),
    ("long-context", [("ML-KEM-768", b"\x01" * 32), ("X25519", b"\x02" * 32)], bytes(65), 32,
     "SHA-256"),
    ("length-31", [("ML-KEM-768", b"\x01" * 32), ("X25519", b"\x02" * 32)], bytes(64), 31,
     "SHA-256"),
    ("length-64", [("ML-KEM-768", b"\x01" * 32), ("X25519", b"\x02" * 32)], bytes(64), 64,
     "SHA-256"),
    ("hash-sha384", [("ML-KEM-768", b"\x01" * 32), ("X25519", b"\x02" * 32)], bytes(64), 32,
     "SHA-384"),
]


@pytest.mark.parametrize(("parts", "ctx", "length", "hash_name"),
                         [b[1:] for b in XWING_BAD], ids=[b[0] for b in XWING_BAD])
def test_xwing_combiner_refuses(parts: list[tuple[str, bytes]], ctx: bytes, length: int,
                                hash_name: str) -> None:
    with pytest.raises(CombinerError):
        combiner.combine(parts, ctx, length, combiner="xwing", hash_name=hash_name)


# --- composite signature ------------------------------------------------------------------------

COMPOSITE = primitives.signature("ML-DSA-65+Ed25519")
C_PUBLIC, C_PRIVATE = COMPOSITE.derive_keypair(bytes(range(64)))
C_OTHER_PUBLIC, C_OTHER_PRIVATE = COMPOSITE.derive_keypair(bytes(range(1, 65)))
C_MESSAGE, C_CTX = b"composite property message", b"ctx"
C_SIG = COMPOSITE.sign(C_PRIVATE, C_MESSAGE, C_CTX)
C_OTHER_SIG = COMPOSITE.sign(C_OTHER_PRIVATE, C_MESSAGE, C_CTX)


def test_composite_baseline_verifies() -> None:
    assert COMPOSITE.verify(C_PUBLIC, C_MESSAGE, C_SIG, C_CTX)
    assert COMPOSITE.verify(C_OTHER_PUBLIC, C_MESSAGE, C_OTHER_SIG, C_CTX)


@SETTINGS
@given(index=st.integers(0, 3308), mask=st.integers(1, 255))
def test_composite_fails_when_mldsa_half_is_wrong(index: int, mask: int) -> None:
    sig = bytearray(C_SIG)
    sig[index] ^= mask
    assert COMPOSITE.verify(C_PUBLIC, C_MESSAGE, bytes(sig), C_CTX) is False


@SETTINGS
@given(index=st.integers(3309, 3309 + 63), mask=st.integers(1, 255))
def test_composite_fails_when_ed25519_half_is_wrong(index: int, mask: int) -> None:
    sig = bytearray(C_SIG)
    sig[index] ^= mask
    assert COMPOSITE.verify(C_PUBLIC, C_MESSAGE, bytes(sig), C_CTX) is False


def test_composite_fails_with_a_half_from_another_key() -> None:
    mixed_1 = C_SIG[:3309] + C_OTHER_SIG[3309:]
    mixed_2 = C_OTHER_SIG[:3309] + C_SIG[3309:]
    for sig in (mixed_1, mixed_2):
        assert COMPOSITE.verify(C_PUBLIC, C_MESSAGE, sig, C_CTX) is False
        assert COMPOSITE.verify(C_OTHER_PUBLIC, C_MESSAGE, sig, C_CTX) is False
    # A key assembled from two different keys accepts only the matching mixed signature:
    # M' does not bind the public key (as in the composite draft), so the halves are
    # independent signatures over the same M' and each must match its own key half.
    mixed_pk = C_PUBLIC[:1952] + C_OTHER_PUBLIC[1952:]
    assert COMPOSITE.verify(mixed_pk, C_MESSAGE, C_SIG, C_CTX) is False
    assert COMPOSITE.verify(mixed_pk, C_MESSAGE, mixed_1, C_CTX) is True


@SETTINGS
@given(ctx=st.binary(max_size=255))
def test_composite_fails_under_a_different_context(ctx: bytes) -> None:
    assume(ctx != C_CTX)
    assert COMPOSITE.verify(C_PUBLIC, C_MESSAGE, C_SIG, ctx) is False


def test_composite_halves_are_not_standalone_signatures() -> None:
    mldsa = primitives.signature("ML-DSA-65")
    ed = primitives.signature("Ed25519")
    assert not mldsa.verify(C_PUBLIC[:1952], C_MESSAGE, C_SIG[:3309], C_CTX)
    assert not mldsa.verify(C_PUBLIC[:1952], C_MESSAGE, C_SIG[:3309])
    assert not ed.verify(C_PUBLIC[1952:], C_MESSAGE, C_SIG[3309:])


# --- KEMs: hostile input -------------------------------------------------------------------------

KEM_NAMES = [info.name for info in primitives.available() if info.kind == "kem"]
KEM_KEYS = {name: primitives.kem(name).derive_keypair(
    hashlib.shake_256(name.encode()).digest(primitives.kem(name).seed_size))
    for name in KEM_NAMES}
WITH_X25519 = {"X25519", "X-Wing", "X25519MLKEM768"}
NOT_BYTES = st.one_of(st.text(max_size=8), st.integers(), st.none(),
                      st.lists(st.integers(0, 255), max_size=8), st.floats())


def test_builtin_kems_are_listed() -> None:
    assert {"X25519", "ML-KEM-768", "ML-KEM-1024", "X-Wing", "X25519MLKEM768"} <= set(KEM_NAMES)


def _expected_forged_secret(name: str, ct: bytes, private: bytes) -> bytes | None:
    """The secret a well-formed random ciphertext must give, where the standard fixes it."""
    if name in ("ML-KEM-768", "ML-KEM-1024"):
        return hashlib.shake_256(private[32:64] + ct).digest(32)
    if name == "X25519MLKEM768":
        ss_x = X25519PrivateKey.from_private_bytes(private[64:]).exchange(
            X25519PublicKey.from_public_bytes(ct[1088:]))
        return hashlib.shake_256(private[32:64] + ct[:1088]).digest(32) + ss_x
    if name == "X-Wing":
        expanded = hashlib.shake_256(private).digest(96)
        sk_x = X25519PrivateKey.from_private_bytes(expanded[64:])
        try:
            ss_x = sk_x.exchange(X25519PublicKey.from_public_bytes(ct[1088:]))
        except ValueError:
            ss_x = bytes(32)
        pk_x = sk_x.public_key().public_bytes_raw()
        ss_m = hashlib.shake_256(expanded[32:64] + ct[:1088]).digest(32)
        return hashlib.sha3_256(ss_m + ss_x + ct[1088:] + pk_x + b"\\.//^\\").digest()
    return None


@pytest.mark.parametrize("name", KEM_NAMES)
@SETTINGS
@given(data=st.data())
def test_kem_decapsulate_random_ciphertext(name: str, data: st.DataObject) -> None:
    kem = primitives.kem(name)
    _, private = KEM_KEYS[name]
    ct = data.draw(st.binary(min_size=kem.ciphertext_size, max_size=kem.ciphertext_size))
    try:
        secret = kem.decapsulate(ct, private)
    except InvalidCiphertext:
        assert name in WITH_X25519 and name != "X-Wing", "only X25519 low order may be refused"
        return
    assert len(secret) == kem.shared_secret_size
    assert kem.shared_secret_size in (32, 64)
    expected = _expected_forged_secret(name, ct, private)
    if expected is not None:
        assert secret == expected


@pytest.mark.parametrize("name", KEM_NAMES)
@SETTINGS
@given(data=st.data())
def test_kem_decapsulate_wrong_lengths(name: str, data: st.DataObject) -> None:
    kem = primitives.kem(name)
    public, private = KEM_KEYS[name]
    _, ct = kem.encapsulate(public)
    bad_len = data.draw(st.integers(0, kem.ciphertext_size + 40).filter(
        lambda n: n != kem.ciphertext_size))
    bad_ct = (ct * 2)[:bad_len]
    with pytest.raises(InvalidCiphertext) as ct_error:
        kem.decapsulate(bad_ct, private)
    assert type(ct_error.value) is InvalidCiphertext
    bad_priv_len = data.draw(st.integers(0, kem.private_key_size + 40).filter(
        lambda n: n != kem.private_key_size))
    bad_priv = (private * 2)[:bad_priv_len]
    with pytest.raises(InvalidKey) as key_error:
        kem.decapsulate(ct, bad_priv)
    assert type(key_error.value) is InvalidKey


@pytest.mark.parametrize("name", KEM_NAMES)
@FEW
@given(junk=NOT_BYTES)
def test_kem_non_bytes_input(name: str, junk: object) -> None:
    kem = primitives.kem(name)
    public, private = KEM_KEYS[name]
    _, ct = kem.encapsulate(public)
    with pytest.raises(InvalidParameter):
        kem.decapsulate(junk, private)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter):
        kem.decapsulate(ct, junk)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter):
        kem.encapsulate(junk)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter):
        kem.derive_keypair(junk)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", KEM_NAMES)
def test_kem_accepts_bytearray_and_memoryview(name: str) -> None:
    kem = primitives.kem(name)
    public, private = KEM_KEYS[name]
    secret, ct = kem.encapsulate(bytearray(public))
    assert kem.decapsulate(memoryview(ct), bytearray(private)) == secret


@pytest.mark.parametrize("name", KEM_NAMES)
@SETTINGS
@given(data=st.data())
def test_kem_encapsulate_hostile_public_key(name: str, data: st.DataObject) -> None:
    kem = primitives.kem(name)
    public, _ = KEM_KEYS[name]
    candidate = data.draw(st.one_of(
        st.binary(min_size=kem.public_key_size, max_size=kem.public_key_size),
        st.binary(max_size=kem.public_key_size + 40),
        st.integers(0, kem.public_key_size - 1).map(lambda n: public[:n]),
        st.binary(min_size=1, max_size=8).map(lambda extra: public + extra),
    ))
    outcome = _attempt(lambda: kem.encapsulate(candidate))
    if isinstance(outcome, Exception):
        assert type(outcome) is InvalidKey, f"{type(outcome).__name__}: {outcome}"
        return
    secret, ct = outcome
    assert len(candidate) == kem.public_key_size
    assert len(secret) == kem.shared_secret_size
    assert len(ct) == kem.ciphertext_size


@pytest.mark.parametrize("name", ["ML-KEM-768", "ML-KEM-1024", "X-Wing", "X25519MLKEM768"])
def test_kem_unreduced_encapsulation_key_is_invalid_key(name: str) -> None:
    kem = primitives.kem(name)
    public, _ = KEM_KEYS[name]
    # Every 12-bit coefficient 0xFFF >= q = 3329 fails the FIPS 203 modulus check;
    # rho (the ek's last 32 bytes) and any X25519 half are kept valid.
    ek_size = 1184 if name in ("X-Wing", "X25519MLKEM768") else kem.public_key_size
    candidate = b"\xff" * (ek_size - 32) + public[ek_size - 32:]
    assert len(candidate) == kem.public_key_size
    with pytest.raises(InvalidKey) as error:
        kem.encapsulate(candidate)
    assert type(error.value) is InvalidKey


# --- signatures: hostile input ------------------------------------------------------------------

SIG_NAMES = [info.name for info in primitives.available() if info.kind == "signature"]
SIG_KEYS = {name: primitives.signature(name).derive_keypair(
    hashlib.sha256(name.encode()).digest() * (primitives.signature(name).seed_size // 32))
    for name in SIG_NAMES}
SIG_MESSAGE = b"signature property message"
SIGS = {name: primitives.signature(name).sign(SIG_KEYS[name][1], SIG_MESSAGE)
        for name in SIG_NAMES}
CONTEXT_SCHEMES = [n for n in SIG_NAMES if primitives.signature(n).max_context > 0]
NO_CONTEXT_SCHEMES = [n for n in SIG_NAMES if primitives.signature(n).max_context == 0]


def test_signature_schemes_are_listed() -> None:
    assert {"ML-DSA-44", "ML-DSA-65", "ML-DSA-87", "Ed25519", "ECDSA-P256",
            "ML-DSA-65+Ed25519"} <= set(SIG_NAMES)
    assert {"Ed25519", "ECDSA-P256"} <= set(NO_CONTEXT_SCHEMES)
    assert {"ML-DSA-44", "ML-DSA-65", "ML-DSA-87", "ML-DSA-65+Ed25519"} <= set(CONTEXT_SCHEMES)


@pytest.mark.parametrize("name", SIG_NAMES)
def test_signature_baseline(name: str) -> None:
    assert primitives.signature(name).verify(SIG_KEYS[name][0], SIG_MESSAGE, SIGS[name]) is True


@pytest.mark.parametrize("name", SIG_NAMES)
@SETTINGS
@given(data=st.data())
def test_verify_bad_signature_returns_false(name: str, data: st.DataObject) -> None:
    scheme = primitives.signature(name)
    public, _ = SIG_KEYS[name]
    good = SIGS[name]
    sig = data.draw(st.one_of(
        st.binary(max_size=scheme.signature_size + 16),
        st.binary(min_size=scheme.signature_size, max_size=scheme.signature_size),
        st.integers(0, len(good) - 1).map(lambda n: good[:n]),
        st.binary(min_size=1, max_size=16).map(lambda extra: good + extra),
    ))
    assume(sig != good)
    assert scheme.verify(public, SIG_MESSAGE, sig) is False


@pytest.mark.parametrize("name", SIG_NAMES)
@SETTINGS
@given(data=st.data())
def test_verify_malformed_public_key_raises_invalid_key(name: str, data: st.DataObject) -> None:
    scheme = primitives.signature(name)
    public, _ = SIG_KEYS[name]
    valid_sizes = {33, 65} if name == "ECDSA-P256" else {scheme.public_key_size}
    bad = data.draw(st.one_of(
        st.integers(0, len(public) - 1).map(lambda n: public[:n]),
        st.binary(min_size=1, max_size=8).map(lambda extra: public + extra),
        st.binary(max_size=scheme.public_key_size + 8),
    ))
    assume(len(bad) not in valid_sizes)
    with pytest.raises(InvalidKey):
        scheme.verify(bad, SIG_MESSAGE, SIGS[name])


@pytest.mark.parametrize("name", SIG_NAMES)
@FEW
@given(junk=NOT_BYTES)
def test_verify_non_bytes_public_key(name: str, junk: object) -> None:
    with pytest.raises(InvalidKey):
        primitives.signature(name).verify(junk, SIG_MESSAGE, SIGS[name])  # type: ignore[arg-type]


@SETTINGS
@given(x=st.binary(min_size=32, max_size=32), prefix=st.sampled_from([b"\x04", b"\x02", b"\x03"]))
def test_ecdsa_off_curve_public_key_is_invalid_key(x: bytes, prefix: bytes) -> None:
    scheme = primitives.signature("ECDSA-P256")
    public, _ = SIG_KEYS["ECDSA-P256"]
    if prefix == b"\x04":  # uncompressed: random x with the genuine key's y is off the curve
        candidate = prefix + x + public[33:]
        assume(candidate != public)
    else:  # compressed: about half of all x are on the curve
        candidate = prefix + x
    try:
        result = scheme.verify(candidate, SIG_MESSAGE, SIGS["ECDSA-P256"])
    except InvalidKey:
        return
    # a compressed random x can be on the curve; then it is simply the wrong key
    assert prefix != b"\x04"
    assert result is False


P = 2**255 - 19
D = (-121665 * pow(121666, -1, P)) % P


def _ed25519_undecodable_key() -> bytes:
    """The smallest y whose x^2 = (y^2-1)/(d y^2+1) has no square root: no curve point."""
    for y in range(2, 1000):
        u, v = (y * y - 1) % P, (D * y * y + 1) % P
        x2 = u * pow(v, -1, P) % P
        if x2 != 0 and pow(x2, (P - 1) // 2, P) == P - 1:
            return y.to_bytes(32, "little")
    raise AssertionError("unreachable")


def test_ed25519_undecodable_public_key_never_verifies() -> None:
    scheme = primitives.signature("Ed25519")
    bad = _ed25519_undecodable_key()
    for sig in (SIGS["Ed25519"], bytes(64)):
        try:
            result = scheme.verify(bad, SIG_MESSAGE, sig)
        except InvalidKey:
            continue
        assert result is False


@pytest.mark.parametrize("name", CONTEXT_SCHEMES)
def test_context_too_long_raises(name: str) -> None:
    scheme = primitives.signature(name)
    public, private = SIG_KEYS[name]
    ctx_max = bytes(255)
    assert scheme.verify(public, SIG_MESSAGE, scheme.sign(private, SIG_MESSAGE, ctx_max), ctx_max)
    for too_long in (bytes(256), bytes(1000)):
        with pytest.raises(InvalidParameter):
            scheme.sign(private, SIG_MESSAGE, too_long)
        with pytest.raises(InvalidParameter):
            scheme.verify(public, SIG_MESSAGE, SIGS[name], too_long)


@pytest.mark.parametrize("name", NO_CONTEXT_SCHEMES)
@FEW
@given(ctx=st.binary(min_size=1, max_size=64))
def test_context_refused_where_unsupported(name: str, ctx: bytes) -> None:
    scheme = primitives.signature(name)
    public, private = SIG_KEYS[name]
    with pytest.raises(InvalidParameter):
        scheme.sign(private, SIG_MESSAGE, ctx)
    with pytest.raises(InvalidParameter):
        scheme.verify(public, SIG_MESSAGE, SIGS[name], ctx)


# --- AEAD ----------------------------------------------------------------------------------------

AEAD_NAMES = [info.name for info in primitives.available() if info.kind == "aead"]
keys32 = st.binary(min_size=32, max_size=32)
nonces12 = st.binary(min_size=12, max_size=12)


def test_aeads_are_listed() -> None:
    assert {"AES-256-GCM", "ChaCha20-Poly1305"} <= set(AEAD_NAMES)


@pytest.mark.parametrize("name", AEAD_NAMES)
@SETTINGS
@given(key=keys32, nonce=nonces12, plaintext=st.binary(max_size=64),
       aad=st.binary(max_size=32), data=st.data())
def test_aead_tampering_detected(name: str, key: bytes, nonce: bytes, plaintext: bytes,
                                 aad: bytes, data: st.DataObject) -> None:
    aead = primitives.aead(name)
    sealed = aead.encrypt(key, nonce, plaintext, aad)
    assert len(sealed) == len(plaintext) + aead.tag_size
    assert aead.decrypt(key, nonce, sealed, aad) == plaintext
    # a flipped bit anywhere: ciphertext body or tag
    index = data.draw(st.integers(0, len(sealed) - 1))
    mask = data.draw(st.integers(1, 255))
    tampered = bytearray(sealed)
    tampered[index] ^= mask
    with pytest.raises(AuthenticationFailed):
        aead.decrypt(key, nonce, bytes(tampered), aad)
    other_aad = data.draw(st.binary(max_size=32).filter(lambda a: a != aad))
    with pytest.raises(AuthenticationFailed):
        aead.decrypt(key, nonce, sealed, other_aad)
    # truncating or extending the sealed box also fails
    cut = data.draw(st.integers(0, len(sealed) - 1))
    with pytest.raises(AuthenticationFailed):
        aead.decrypt(key, nonce, sealed[:cut], aad)
    with pytest.raises(AuthenticationFailed):
        aead.decrypt(key, nonce, sealed + b"\x00", aad)


@pytest.mark.parametrize("name", AEAD_NAMES)
@SETTINGS
@given(key=st.binary(max_size=40), nonce=st.binary(max_size=16), box=st.binary(max_size=40),
       aad=st.binary(max_size=16))
def test_aead_random_input_only_typed_errors(name: str, key: bytes, nonce: bytes, box: bytes,
                                             aad: bytes) -> None:
    aead = primitives.aead(name)
    outcome = _attempt(lambda: aead.decrypt(key, nonce, box, aad))
    assert isinstance(outcome, Exception), "random input decrypted"
    if len(key) != 32:
        assert type(outcome) is InvalidKey
    elif len(nonce) != 12:
        assert type(outcome) is InvalidParameter
    else:
        assert type(outcome) is AuthenticationFailed


@pytest.mark.parametrize("name", AEAD_NAMES)
@SETTINGS
@given(key=keys32, nonce=nonces12, box=st.binary(max_size=15))
def test_aead_short_input_is_authentication_failure(name: str, key: bytes, nonce: bytes,
                                                    box: bytes) -> None:
    with pytest.raises(AuthenticationFailed):
        primitives.aead(name).decrypt(key, nonce, box)
