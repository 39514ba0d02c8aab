"""Wycheproof vectors for the classical primitives, run through hybridkex's own wrappers.

Every case goes through ``hybridkex.primitives`` (never straight to ``cryptography``),
so the tests check the wrappers' encodings, length checks and error mapping too.
Each file's cases are all accounted for: run + not runnable == numberOfTests.

Runs (run / not runnable through our API):
- x25519_test.json: KEM("X25519").decapsulate, 518 / 0 (31 low-order cases must raise).
- aes_gcm_test.json: AEAD("AES-256-GCM"), 68 / 248 (only 256-bit key, 12-byte nonce).
- chacha20_poly1305_test.json: AEAD("ChaCha20-Poly1305"), 325 / 0.
- hkdf_sha256_test.json: hkdf("SHA-256"), 86 / 0.
- hkdf_sha384_test.json: hkdf("SHA-384"), 83 / 0.
- hmac_sha256_test.json: MAC("HMAC-SHA256"), tags truncated to tagSize, 174 / 0.
- ed25519_test.json: signature("Ed25519").verify, 151 / 0.
- ecdsa_secp256r1_sha256_test.json: signature("ECDSA-P256").verify, uncompressed SEC1 key, 484 / 0.
- Poly1305: no Wycheproof file; RFC 8439 section 2.5.2 known answer plus key-length checks.

Cannot run through our API:
- aes_gcm_test.json, 128-bit keys: 108 cases (our AEAD takes 32-byte keys only).
- aes_gcm_test.json, 192-bit keys: 103 cases (same reason).
- aes_gcm_test.json, 256-bit key with a nonce other than 12 bytes, valid: 37 cases
  (our AEAD takes exactly 12-byte nonces; these are still checked to be refused).
- hmac_sha3_256_test.json: 174 cases (HMAC-SHA3-256 is not one of our MACs; not loaded).
- kmac256_no_customization_test.json: 261 cases (no KMAC in hybridkex; not loaded).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from hybridkex import primitives
from hybridkex.errors import (
    AuthenticationFailed,
    InvalidCiphertext,
    InvalidKey,
    InvalidParameter,
)
from tests.conftest import load_vectors

Vector = dict[str, Any]


def _load(relative: str) -> list[tuple[Vector, Vector]]:
    """Every (group, test) pair of one Wycheproof file, checked against numberOfTests."""
    doc = load_vectors(relative)
    pairs: list[tuple[Vector, Vector]] = [
        (group, test) for group in doc["testGroups"] for test in group["tests"]
    ]
    assert len(pairs) == doc["numberOfTests"], f"{relative}: numberOfTests disagrees"
    return pairs


def _h(value: str) -> bytes:
    return bytes.fromhex(value)


def _label(test: Vector) -> str:
    return f"tcId {test['tcId']} ({test['result']}, {','.join(test['flags'])})"


def _expect_raise(
    expected: type[Exception],
    call: Callable[..., object],
    *args: object,
    exclude: tuple[type[Exception], ...] = (),
) -> str | None:
    """None if ``call(*args)`` raises ``expected`` (and none of ``exclude``), else why not."""
    try:
        call(*args)
    except expected as exc:
        if isinstance(exc, exclude):
            return f"raised {type(exc).__name__}, expected {expected.__name__}"
        return None
    except Exception as exc:
        return f"raised {type(exc).__name__} ({exc}), expected {expected.__name__}"
    return f"did not raise {expected.__name__}"


def _report(
    relative: str,
    failures: list[str],
    run: int,
    not_runnable: int,
    total: int,
    expected_run: int,
    expected_not_runnable: int,
) -> None:
    assert not failures, f"{relative}: {len(failures)} failing case(s):\n" + "\n".join(failures)
    assert run > 0, f"{relative}: no case ran"
    assert run + not_runnable == total
    assert (run, not_runnable) == (expected_run, expected_not_runnable), (
        f"{relative}: ran {run}, not runnable {not_runnable}; "
        f"expected {expected_run} / {expected_not_runnable}"
    )


# --- X25519 ---------------------------------------------------------------------------
# 518 cases, all runnable: 264 valid + 223 "acceptable" with a non-zero secret (twist
# points, non-canonical u >= p) must give the expected secret; 31 "acceptable" low-order
# peers (ZeroSharedSecret) must raise InvalidCiphertext, the wrapper's RFC 8446 7.4.2
# refusal, which Wycheproof's "acceptable" permits.  Raising on a non-zero case fails.


def test_x25519_wycheproof() -> None:
    relative = "wycheproof/x25519_test.json"
    kem = primitives.kem("X25519")
    failures: list[str] = []
    run = zero_cases = 0
    cases = _load(relative)
    for group, test in cases:
        assert group["curve"] == "curve25519"
        label = _label(test)
        public, private, shared = _h(test["public"]), _h(test["private"]), _h(test["shared"])
        zero = shared == bytes(32)
        if zero != ("ZeroSharedSecret" in test["flags"]) or (zero and test["result"] == "valid"):
            failures.append(f"{label}: vector flags disagree with its shared secret")
            continue
        run += 1
        zero_cases += zero
        try:
            got = kem.decapsulate(ciphertext=public, private=private)
        except InvalidCiphertext as exc:
            if not zero:
                failures.append(f"{label}: raised InvalidCiphertext ({exc}) on a non-zero secret")
            continue
        except Exception as exc:
            failures.append(f"{label}: raised {type(exc).__name__} ({exc})")
            continue
        if zero:
            failures.append(f"{label}: returned the all-zero secret instead of raising")
        elif got != shared:
            failures.append(f"{label}: shared secret {got.hex()} != {shared.hex()}")
    assert zero_cases == 31
    _report(relative, failures, run, 0, len(cases), 518, 0)


@pytest.mark.parametrize("size", [0, 31, 33])
def test_x25519_wrong_lengths_raise(size: int) -> None:
    kem = primitives.kem("X25519")
    good = bytes(range(1, 33))
    with pytest.raises(InvalidCiphertext):
        kem.decapsulate(ciphertext=bytes(size), private=good)
    with pytest.raises(InvalidKey):
        kem.decapsulate(ciphertext=good, private=bytes(size))


# --- AES-256-GCM and ChaCha20-Poly1305 ------------------------------------------------
# Runnable: 256-bit key, 128-bit tag, 12-byte nonce (valid: encrypt reproduces ct||tag,
# decrypt gives msg; invalid: decrypt raises AuthenticationFailed), plus the invalid cases
# whose only fault is the nonce length (256-bit key): both directions raise InvalidParameter.
# AES-GCM not runnable (248): 108 with 128-bit keys, 103 with 192-bit keys, 37 valid ones
# with a 256-bit key and a 1/2/4/6/8/10/15/16/20/32/64/128/257-byte nonce.  Those are still
# checked to be refused (InvalidKey for the key, InvalidParameter for the nonce).
# ChaCha20-Poly1305: all 325 runnable (316 with 12-byte nonces, 9 InvalidNonceSize).


def _aead_case(aead: primitives.AEAD, group: Vector, test: Vector) -> tuple[bool, str | None]:
    """(runnable, failure reason or None) for one AEAD case."""
    key, iv, aad = _h(test["key"]), _h(test["iv"]), _h(test["aad"])
    msg, ct, tag = _h(test["msg"]), _h(test["ct"]), _h(test["tag"])
    result = test["result"]
    if group["keySize"] != 256 or group["tagSize"] != 128:
        # Not runnable; our wrapper must refuse the key rather than do anything with it.
        return False, _expect_raise(InvalidKey, aead.encrypt, key, iv, msg, aad)
    if len(iv) != 12:
        reason = _expect_raise(InvalidParameter, aead.encrypt, key, iv, msg, aad,
                               exclude=(InvalidKey,))
        if result == "valid":
            return False, reason  # valid for AES-GCM in general, not runnable here
        return True, reason or _expect_raise(InvalidParameter, aead.decrypt, key, iv,
                                             ct + tag, aad, exclude=(InvalidKey,))
    if result == "valid":
        try:
            sealed = aead.encrypt(key, iv, msg, aad)
            opened = aead.decrypt(key, iv, ct + tag, aad)
        except Exception as exc:
            return True, f"raised {type(exc).__name__} ({exc})"
        if sealed != ct + tag:
            return True, "encrypt did not reproduce ct||tag"
        if opened != msg:
            return True, "decrypt did not return msg"
        return True, None
    if result == "invalid":
        return True, _expect_raise(AuthenticationFailed, aead.decrypt, key, iv, ct + tag, aad)
    return True, f"unexpected result {result!r}"  # neither file has "acceptable" AEAD cases


@pytest.mark.parametrize(
    ("relative", "name", "expected_run", "expected_not_runnable"),
    [
        pytest.param("wycheproof/aes_gcm_test.json", "AES-256-GCM", 68, 248, id="aes-gcm"),
        pytest.param("wycheproof/chacha20_poly1305_test.json", "ChaCha20-Poly1305", 325, 0,
                     id="chacha20-poly1305"),
    ],
)
def test_aead_wycheproof(
    relative: str, name: str, expected_run: int, expected_not_runnable: int
) -> None:
    aead = primitives.aead(name)
    failures: list[str] = []
    run = not_runnable = 0
    cases = _load(relative)
    for group, test in cases:
        runnable, reason = _aead_case(aead, group, test)
        if runnable:
            run += 1
        else:
            not_runnable += 1
        if reason is not None:
            failures.append(f"{_label(test)}: {reason}")
    _report(relative, failures, run, not_runnable, len(cases), expected_run,
            expected_not_runnable)


# --- HKDF -----------------------------------------------------------------------------
# All runnable: valid → okm reproduced (empty salt included); the 3 invalid cases per
# file ask for 255*HashLen + 1 bytes and must raise InvalidParameter.


@pytest.mark.parametrize(
    ("relative", "hash_name", "expected_run"),
    [
        pytest.param("wycheproof/hkdf_sha256_test.json", "SHA-256", 86, id="hkdf-sha256"),
        pytest.param("wycheproof/hkdf_sha384_test.json", "SHA-384", 83, id="hkdf-sha384"),
    ],
)
def test_hkdf_wycheproof(relative: str, hash_name: str, expected_run: int) -> None:
    failures: list[str] = []
    run = 0
    cases = _load(relative)
    for _group, test in cases:
        label = _label(test)
        ikm, salt, info, size = _h(test["ikm"]), _h(test["salt"]), _h(test["info"]), test["size"]
        run += 1
        if test["result"] == "valid":
            try:
                okm = primitives.hkdf(hash_name, ikm, salt, info, size)
            except Exception as exc:
                failures.append(f"{label}: raised {type(exc).__name__} ({exc})")
                continue
            if okm != _h(test["okm"]):
                failures.append(f"{label}: okm differs")
        else:
            reason = _expect_raise(InvalidParameter, primitives.hkdf, hash_name, ikm, salt,
                                   info, size)
            if reason is not None:
                failures.append(f"{label}: {reason}")
    _report(relative, failures, run, 0, len(cases), expected_run, 0)


# --- HMAC-SHA256 ----------------------------------------------------------------------
# All 174 runnable: compute()[:tagSize/8] equals the tag iff the case is valid; for the
# full-length (256-bit) tags verify() must also return True/False accordingly.


def test_hmac_sha256_wycheproof() -> None:
    relative = "wycheproof/hmac_sha256_test.json"
    mac = primitives.mac("HMAC-SHA256")
    failures: list[str] = []
    run = full_length = 0
    cases = _load(relative)
    for group, test in cases:
        label = _label(test)
        key, msg, tag = _h(test["key"]), _h(test["msg"]), _h(test["tag"])
        tag_len = group["tagSize"] // 8
        valid = test["result"] == "valid"
        assert len(tag) == tag_len, label
        run += 1
        try:
            computed = mac.compute(key, msg)[:tag_len]
            verified = mac.verify(key, msg, tag) if tag_len == mac.tag_size else None
        except Exception as exc:
            failures.append(f"{label}: raised {type(exc).__name__} ({exc})")
            continue
        if (computed == tag) != valid:
            failures.append(f"{label}: truncated compute() {'differs' if valid else 'matches'}")
        if verified is not None:
            full_length += 1
            if verified is not valid:
                failures.append(f"{label}: verify() returned {verified}")
    assert full_length > 0
    _report(relative, failures, run, 0, len(cases), 174, 0)


# --- Ed25519 --------------------------------------------------------------------------
# All 151 runnable: verify(pk, msg, sig) is True iff the case is valid (no "acceptable"
# cases in this file).  Every group key is a well-formed 32-byte key, so any raise fails.


def test_ed25519_wycheproof() -> None:
    relative = "wycheproof/ed25519_test.json"
    scheme = primitives.signature("Ed25519")
    failures: list[str] = []
    run = 0
    cases = _load(relative)
    for group, test in cases:
        label = _label(test)
        public = _h(group["publicKey"]["pk"])
        run += 1
        try:
            ok = scheme.verify(public, _h(test["msg"]), _h(test["sig"]))
        except Exception as exc:
            failures.append(f"{label}: raised {type(exc).__name__} ({exc})")
            continue
        if test["result"] != "acceptable" and ok is not (test["result"] == "valid"):
            failures.append(f"{label}: verify returned {ok}")
    _report(relative, failures, run, 0, len(cases), 151, 0)


# --- ECDSA P-256 / SHA-256 ------------------------------------------------------------
# All 484 runnable with publicKey["uncompressed"] (65-byte SEC1) and the DER signature;
# "acceptable" counts either way (the file currently has none).  Every group key is a
# valid point, so InvalidKey (or any other raise) is a failure.


def test_ecdsa_p256_wycheproof() -> None:
    relative = "wycheproof/ecdsa_secp256r1_sha256_test.json"
    scheme = primitives.signature("ECDSA-P256")
    failures: list[str] = []
    run = 0
    cases = _load(relative)
    for group, test in cases:
        label = _label(test)
        assert group["publicKey"]["curve"] == "secp256r1" and group["sha"] == "SHA-256"
        public = _h(group["publicKey"]["uncompressed"])
        run += 1
        try:
            ok = scheme.verify(public, _h(test["msg"]), _h(test["sig"]))
        except Exception as exc:
            failures.append(f"{label}: raised {type(exc).__name__} ({exc})")
            continue
        if test["result"] != "acceptable" and ok is not (test["result"] == "valid"):
            failures.append(f"{label}: verify returned {ok}")
    _report(relative, failures, run, 0, len(cases), 484, 0)


# --- Poly1305 (RFC 8439 section 2.5.2; no Wycheproof file) ----------------------------

POLY1305_KEY = _h("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b")
POLY1305_MSG = b"Cryptographic Forum Research Group"
POLY1305_TAG = _h("a8061dc1305136c6c22b8baf0c0127a9")


def test_poly1305_rfc8439_known_answer() -> None:
    mac = primitives.mac("Poly1305")
    assert mac.compute(POLY1305_KEY, POLY1305_MSG) == POLY1305_TAG
    assert mac.verify(POLY1305_KEY, POLY1305_MSG, POLY1305_TAG) is True


def test_poly1305_flipped_tag_bit_does_not_verify() -> None:
    mac = primitives.mac("Poly1305")
    wrong = [
        bit
        for bit in range(8 * len(POLY1305_TAG))
        if mac.verify(POLY1305_KEY, POLY1305_MSG,
                      (int.from_bytes(POLY1305_TAG, "big") ^ (1 << bit)).to_bytes(16, "big"))
        is not False
    ]
    assert wrong == []


@pytest.mark.parametrize("size", [31, 33])
def test_poly1305_wrong_key_length_raises(size: int) -> None:
    mac = primitives.mac("Poly1305")
    key = (POLY1305_KEY * 2)[:size]
    with pytest.raises(InvalidKey):
        mac.compute(key, POLY1305_MSG)
    with pytest.raises(InvalidKey):
        mac.verify(key, POLY1305_MSG, POLY1305_TAG)
