"""Known-answer checks run by ``hybridkex selftest``.

The answers come from outside this code base: RFC test vectors (7748, 8032, 4231,
5869, 8439, 6979, the GCM specification), the FIPS 203 implicit-rejection rule
recomputed with hashlib, and public keys derived from fixed seeds by the
independent pure-Python implementations kyber-py and dilithium-py (the test suite
recomputes those digests with them, so a wrong constant here fails CI).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from hybridkex import combiner, primitives

__all__ = ["PUBLIC_KEY_DIGESTS", "CheckResult", "run"]

# SHA-256 of the public key derived from seed bytes(range(n)) (n = the scheme's seed size),
# computed with kyber-py / dilithium-py (X-Wing: kyber-py on SHAKE256(seed, 96)[:64]
# plus X25519 of the rest, per draft-connolly-cfrg-xwing-kem).
PUBLIC_KEY_DIGESTS = {
    "ML-KEM-768": "0b7934c83125c788995e2ba6bd761e33046b3e40571be53e023309a29f398cc9",
    "ML-KEM-1024": "c7b8fa0aa471d5ae18922d6ccad5b31e1d84f92ae723abfd13747018740a8530",
    "X-Wing": "c9a3565ffde4f72b51661be391ee13e46378d7f06dd5c8bf5af9d2cfb5b8336b",
    "ML-DSA-44": "9f107644c1084526af3bc8098680b05499a2325a644e388fb4f970e058d19d46",
    "ML-DSA-65": "d666806e11cee19a7c989f7445f90dd419cf4d2d51db8c0fdb4c0f0a542238c9",
    "ML-DSA-87": "91dc389cfaa01470b7f66eee45a4ae9026d154817c754dfe22298b3fa241ffcd",
}

_h = bytes.fromhex


class SelfTestFailure(AssertionError):
    """A known answer did not come out."""


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise SelfTestFailure(what)


def _seed(n: int) -> bytes:
    return bytes(range(n))


def _check_x25519() -> None:  # RFC 7748 section 6.1
    kem = primitives.kem("X25519")
    alice_sk = _h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob_pk = _h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    alice_pk, _ = kem.derive_keypair(alice_sk)
    _expect(alice_pk == _h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"),
            "public key")
    _expect(kem.decapsulate(bob_pk, alice_sk)
            == _h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"),
            "shared secret")


def _check_mlkem(name: str) -> None:
    kem = primitives.kem(name)
    seed = _seed(64)
    public, private = kem.derive_keypair(seed)
    _expect(hashlib.sha256(public).hexdigest() == PUBLIC_KEY_DIGESTS[name], "derived public key")
    # FIPS 203 implicit rejection: a ciphertext that does not re-encrypt yields J(z || c).
    forged = bytes(kem.ciphertext_size)
    _expect(kem.decapsulate(forged, private)
            == hashlib.shake_256(seed[32:] + forged).digest(32), "implicit rejection")
    secret, ciphertext = kem.encapsulate(public)
    _expect(kem.decapsulate(ciphertext, private) == secret, "round trip")


def _check_xwing() -> None:
    kem = primitives.kem("X-Wing")
    seed = _seed(32)
    public, private = kem.derive_keypair(seed)
    _expect(hashlib.sha256(public).hexdigest() == PUBLIC_KEY_DIGESTS["X-Wing"],
            "derived public key")
    # All-zero ciphertext: ML-KEM rejects implicitly, X25519 of u=0 is zero.
    z = hashlib.shake_256(seed).digest(96)[32:64]
    forged = bytes(1120)
    expected = hashlib.sha3_256(hashlib.shake_256(z + forged[:1088]).digest(32) + bytes(32)
                                + bytes(32) + public[1184:] + b"\\.//^\\").digest()
    _expect(kem.decapsulate(forged, private) == expected, "decapsulation of forged ciphertext")
    secret, ciphertext = kem.encapsulate(public)
    _expect(kem.decapsulate(ciphertext, private) == secret, "round trip")


def _check_x25519mlkem768() -> None:
    kem = primitives.kem("X25519MLKEM768")
    seed = _seed(96)
    public, private = kem.derive_keypair(seed)
    mlkem_public, _ = primitives.kem("ML-KEM-768").derive_keypair(seed[:64])
    x_public, _ = primitives.kem("X25519").derive_keypair(seed[64:])
    _expect(public == mlkem_public + x_public, "public key = ek || x25519")
    secret, ciphertext = kem.encapsulate(public)
    _expect(kem.decapsulate(ciphertext, private) == secret and len(secret) == 64, "round trip")


def _check_mldsa(name: str) -> None:
    scheme = primitives.signature(name)
    public, private = scheme.derive_keypair(_seed(32))
    _expect(hashlib.sha256(public).hexdigest() == PUBLIC_KEY_DIGESTS[name], "derived public key")
    sig = scheme.sign(private, b"hybridkex selftest", b"ctx")
    _expect(scheme.verify(public, b"hybridkex selftest", sig, b"ctx"), "verify")
    _expect(not scheme.verify(public, b"hybridkex selftest", sig, b"other"), "context binding")


def _check_ed25519() -> None:  # RFC 8032 section 7.1, test 1
    scheme = primitives.signature("Ed25519")
    sk = _h("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    pk = _h("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    sig = _h("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bac"
             "c61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
    _expect(scheme.derive_keypair(sk)[0] == pk, "public key")
    _expect(scheme.sign(sk, b"") == sig, "signature")
    _expect(scheme.verify(pk, b"", sig) and not scheme.verify(pk, b"x", sig), "verify")


def _check_ecdsa() -> None:  # RFC 6979 appendix A.2.5, SHA-256, message "sample"
    scheme = primitives.signature("ECDSA-P256")
    x = _h("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721")
    ux = "60fed4ba255a9d31c961eb74c6356d68c049b8923b61fa6ce669622e60f29fb6"
    uy = "7903fe1008b8bc99a41ae9e95628bc64f2f1b20c2d7e9f5177a3c294d4462299"
    pk, _ = scheme.derive_keypair(x)
    _expect(pk == _h("04" + ux + uy), "public key")
    sig = encode_dss_signature(
        0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716,
        0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8)
    _expect(scheme.verify(pk, b"sample", sig) and not scheme.verify(pk, b"Sample", sig),
            "verify")


def _check_composite() -> None:
    scheme = primitives.signature("ML-DSA-65+Ed25519")
    public, private = scheme.derive_keypair(_seed(64))
    _expect(public[:1952] == primitives.signature("ML-DSA-65").derive_keypair(_seed(32))[0],
            "ML-DSA half of the public key")
    sig = scheme.sign(private, b"m", b"ctx")
    _expect(scheme.verify(public, b"m", sig, b"ctx"), "verify")
    broken = sig[:-1] + bytes([sig[-1] ^ 1])
    _expect(not scheme.verify(public, b"m", broken, b"ctx"), "Ed25519 half is checked")


def _check_aes_gcm() -> None:  # GCM specification, test cases 13 and 14
    aead = primitives.aead("AES-256-GCM")
    key, nonce = bytes(32), bytes(12)
    _expect(aead.encrypt(key, nonce, b"") == _h("530f8afbc74536b9a963b4f1c4cb738b"), "case 13")
    _expect(aead.encrypt(key, nonce, bytes(16))
            == _h("cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"), "case 14")


def _check_chacha20_poly1305() -> None:  # RFC 8439 section 2.8.2
    aead = primitives.aead("ChaCha20-Poly1305")
    key = bytes(range(0x80, 0xA0))
    nonce = _h("070000004041424344454647")
    aad = _h("50515253c0c1c2c3c4c5c6c7")
    plaintext = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip "
                 b"for the future, sunscreen would be it.")
    sealed = aead.encrypt(key, nonce, plaintext, aad)
    _expect(sealed[-16:] == _h("1ae10b594f09e26a7e902ecbd0600691"), "tag")
    _expect(sealed[:16] == _h("d31a8d34648e60db7b86afbc53ef7ec2"), "ciphertext")
    _expect(aead.decrypt(key, nonce, sealed, aad) == plaintext, "round trip")


def _check_hmac() -> None:  # RFC 4231 test case 2
    data = b"what do ya want for nothing?"
    _expect(primitives.mac("HMAC-SHA256").compute(b"Jefe", data)
            == _h("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"), "SHA-256")
    _expect(primitives.mac("HMAC-SHA384").compute(b"Jefe", data)
            == _h("af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e"
                  "8e2240ca5e69e2c78b3239ecfab21649"), "SHA-384")


def _check_poly1305() -> None:  # RFC 8439 section 2.5.2
    key = _h("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b")
    tag = _h("a8061dc1305136c6c22b8baf0c0127a9")
    mac = primitives.mac("Poly1305")
    _expect(mac.compute(key, b"Cryptographic Forum Research Group") == tag, "tag")
    _expect(not mac.verify(key, b"Cryptographic Forum Research Grouq", tag), "verify")


def _check_hkdf() -> None:  # RFC 5869 test case 1
    prk = primitives.hkdf_extract("SHA-256", bytes(range(13)), b"\x0b" * 22)
    _expect(prk == _h("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"), "PRK")
    okm = primitives.hkdf_expand("SHA-256", prk, bytes(range(0xF0, 0xFA)), 42)
    _expect(okm == _h("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                      "34007208d5b887185865"), "OKM")


def _check_combiners() -> None:
    parts = [("X25519", b"\x01" * 32), ("ML-KEM-768", b"\x02" * 32), ("QKD", b"\x03" * 32)]
    for name in ("hkdf-concat", "etsi-catkdf", "etsi-caskdf"):
        out = combiner.combine(parts, b"context", 32, name)
        changed = combiner.combine([*parts[:2], ("QKD", b"\x04" * 32)], b"context", 32, name)
        _expect(len(out) == 32 and out != changed, f"{name} depends on every part")


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str = ""


CHECKS: list[tuple[str, Callable[[], None]]] = [
    ("X25519 (RFC 7748)", _check_x25519),
    ("ML-KEM-768 (FIPS 203)", lambda: _check_mlkem("ML-KEM-768")),
    ("ML-KEM-1024 (FIPS 203)", lambda: _check_mlkem("ML-KEM-1024")),
    ("X-Wing", _check_xwing),
    ("X25519MLKEM768", _check_x25519mlkem768),
    ("ML-DSA-44 (FIPS 204)", lambda: _check_mldsa("ML-DSA-44")),
    ("ML-DSA-65 (FIPS 204)", lambda: _check_mldsa("ML-DSA-65")),
    ("ML-DSA-87 (FIPS 204)", lambda: _check_mldsa("ML-DSA-87")),
    ("Ed25519 (RFC 8032)", _check_ed25519),
    ("ECDSA-P256 (RFC 6979)", _check_ecdsa),
    ("ML-DSA-65+Ed25519", _check_composite),
    ("AES-256-GCM", _check_aes_gcm),
    ("ChaCha20-Poly1305 (RFC 8439)", _check_chacha20_poly1305),
    ("HMAC-SHA256/384 (RFC 4231)", _check_hmac),
    ("Poly1305 (RFC 8439)", _check_poly1305),
    ("HKDF-SHA256 (RFC 5869)", _check_hkdf),
    ("combiners", _check_combiners),
]


def run() -> list[CheckResult]:
    """Run every check; a failure is reported, never raised, so all checks run."""
    results = []
    for name, check in CHECKS:
        try:
            check()
        except Exception as exc:
            results.append(CheckResult(name, False, f"{type(exc).__name__}: {exc}"))
        else:
            results.append(CheckResult(name, True))
    return results
