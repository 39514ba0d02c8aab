"""Wrapper overhead of ``hybridkex.primitives`` against pyca/cryptography used directly.

Every primitive in ``hybridkex.primitives`` is a thin layer over pyca/cryptography:
the wrapper takes and returns ``bytes``, checks types and lengths, rebuilds the
backend key object from its byte encoding on every call and maps exceptions to
hybridkex's errors.  None of that is cryptography, so the only question worth
benchmarking is what the layer costs on top of the backend.  This script therefore
times each operation twice in the same process:

* **ours**: the call through the public API, e.g.
  ``primitives.kem("ML-KEM-768").decapsulate(ct, seed)`` (the algorithm object is
  looked up once, as callers do; the cost of the lookup itself is reported apart);
* **direct**: the *same work* written against pyca/cryptography, bytes in and bytes
  out, e.g. ``MLKEM768PrivateKey.from_seed_bytes(seed).decapsulate(ct)``.  Where the
  wrapper has no single backend call (X-Wing, X25519MLKEM768, ML-DSA-65+Ed25519),
  the direct statement strings together the component calls the construction needs
  (see ``_kem_ops`` and ``_signature_ops``).  Before timing, the results of both
  statements are checked against each other, so the two sides provably do the same
  job.

Both statements are timed with :mod:`timeit`, compiled inline into its timing loop
(no extra Python call on either side) with the garbage collector off, in batches of
about ``--batch`` seconds.  The machines this runs on are shared and noisy, so the
batches of the two sides are interleaved A B B A A B ... (each ours/direct pair runs
back to back, and the order flips every repeat so that linear drift cancels), each
side's ops/s is the median over the repeats, and the overhead ratio is the ratio of
those medians, ``direct ops/s / ours ops/s`` (1.00 means no overhead).  Two
cross-checks are printed beside it: the median of the per-pair ratios ("paired") and
the ratio of the fastest batches ("best", timeit's best-of), with the range of the
per-pair ratios as a noise gauge.  The goal is a ratio of at most 1.10 for every
operation; the ones above it are listed at the end, split into those where every
estimate agrees (real overhead) and those where only the median ratio is over (the
cross-checks say noise).

    python bench/primitives.py            # 11 repeats of 0.12 s batches, about 2 minutes
    python bench/primitives.py --quick    # 5 repeats of 0.03 s batches, under 30 seconds
    python bench/primitives.py --json     # either of the above, as JSON on stdout
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cryptography
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.backends.openssl import backend as openssl_backend
from cryptography.hazmat.primitives import hashes, hmac, poly1305
from cryptography.hazmat.primitives.asymmetric import ec, mldsa, mlkem
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from hybridkex import primitives

THRESHOLD = 1.10

# Constants of the hybrid constructions, spelled out here rather than imported from
# hybridkex so that the direct baselines depend on nothing but cryptography.
XWING_LABEL = b"\\.//^\\"
COMPOSITE_PREFIX = b"CompositeAlgorithmSignatures2025"
COMPOSITE_LABEL = b"COMPSIG-MLDSA65-Ed25519-SHA512"

MESSAGE = bytes(range(64))  # what the signature benchmarks sign: a transcript-hash-sized input
ML_DSA_CONTEXT = b"hybridkex bench"

# Names every timed statement can use, besides the per-operation inputs.
BASE_NAMESPACE: dict[str, Any] = {
    "os": os,
    "primitives": primitives,
    "hashes": hashes,
    "hmac": hmac,
    "poly1305": poly1305,
    "ec": ec,
    "InvalidSignature": InvalidSignature,
    "X25519PrivateKey": X25519PrivateKey,
    "X25519PublicKey": X25519PublicKey,
    "Ed25519PrivateKey": Ed25519PrivateKey,
    "Ed25519PublicKey": Ed25519PublicKey,
    "MLKEM768PrivateKey": mlkem.MLKEM768PrivateKey,
    "MLKEM768PublicKey": mlkem.MLKEM768PublicKey,
    "MLDSA65PrivateKey": mldsa.MLDSA65PrivateKey,
    "MLDSA65PublicKey": mldsa.MLDSA65PublicKey,
    "HKDF": HKDF,
    "HKDFExpand": HKDFExpand,
    "XWING_LABEL": XWING_LABEL,
    "COMPOSITE_PREFIX": COMPOSITE_PREFIX,
    "COMPOSITE_LABEL": COMPOSITE_LABEL,
    "ZERO32": bytes(32),
}

Check = Callable[[Any, Any], bool]
Clock = Callable[[], float]
CLOCKS: dict[str, Clock] = {"cpu": time.process_time, "wall": time.perf_counter}


@dataclass(frozen=True)
class Operation:
    """One benchmarked operation: two statements that do the same work, and their inputs.

    Both statements leave their result in ``_r``; ``check(ours_result, direct_result)``
    confirms before timing that the two really compute the same thing.  ``batch_scale``
    lengthens the batches of operations whose own running time varies from call to call.
    """

    name: str
    ours: str
    direct: str
    inputs: dict[str, Any]
    check: Check
    batch_scale: float = 1.0

    def namespace(self) -> dict[str, Any]:
        return {**BASE_NAMESPACE, **self.inputs}


@dataclass(frozen=True)
class Result:
    """The measurements of one operation."""

    name: str
    number: int  # calls per batch
    ours: list[float]  # ops/s of each ours batch
    direct: list[float]  # ops/s of each direct batch

    @property
    def ours_median(self) -> float:
        return statistics.median(self.ours)

    @property
    def direct_median(self) -> float:
        return statistics.median(self.direct)

    @property
    def ratio(self) -> float:
        """direct ops/s over ours ops/s, from the medians; 1.00 means no overhead."""
        return self.direct_median / self.ours_median

    @property
    def pair_ratios(self) -> list[float]:
        """direct/ours of each back-to-back pair of batches."""
        return [d / o for o, d in zip(self.ours, self.direct, strict=True)]

    @property
    def paired_ratio(self) -> float:
        """The median of the per-pair ratios: a cross-check of ``ratio`` that drift
        between repeats cannot move."""
        return statistics.median(self.pair_ratios)

    @property
    def best_ratio(self) -> float:
        """The ratio of the fastest batches (timeit's best-of): noise only slows a batch
        down, so this is the other cross-check."""
        return max(self.direct) / max(self.ours)

    @property
    def consistently_over(self) -> bool:
        """Over the threshold on every estimate, not just the ratio of medians."""
        return min(self.ratio, self.paired_ratio, self.best_ratio) > THRESHOLD

    def as_dict(self) -> dict[str, Any]:
        return {
            "operation": self.name,
            "ours_ops_per_s": round(self.ours_median, 1),
            "direct_ops_per_s": round(self.direct_median, 1),
            "ratio": round(self.ratio, 4),
            "over_threshold": self.ratio > THRESHOLD,
            "consistently_over_threshold": self.consistently_over,
            "paired_ratio_median": round(self.paired_ratio, 4),
            "best_ratio": round(self.best_ratio, 4),
            "pair_ratio_min": round(min(self.pair_ratios), 4),
            "pair_ratio_max": round(max(self.pair_ratios), 4),
            "calls_per_batch": self.number,
            "ours_samples": [round(x, 1) for x in self.ours],
            "direct_samples": [round(x, 1) for x in self.direct],
        }


@dataclass(frozen=True)
class Lookup:
    """The cost of resolving an algorithm by name (no direct counterpart)."""

    name: str
    ops_per_s: float

    def as_dict(self) -> dict[str, Any]:
        return {"lookup": self.name, "ops_per_s": round(self.ops_per_s, 1),
                "microseconds": round(1e6 / self.ops_per_s, 3)}


# --- checks ----------------------------------------------------------------------------


def _equal(ours: Any, direct: Any) -> bool:
    return bool(ours == direct)


def _kem_keypair_check(kem: primitives.KEM) -> Check:
    """Both sides return a (public, private) pair in hybridkex's encoding."""

    def check(ours: Any, direct: Any) -> bool:
        return all(kem.derive_keypair(pair[1]) == tuple(pair) for pair in (ours, direct))

    return check


def _kem_encapsulate_check(kem: primitives.KEM, private: bytes) -> Check:
    """Both sides return (secret, ciphertext) that decapsulates to that secret."""

    def check(ours: Any, direct: Any) -> bool:
        return all(kem.decapsulate(ct, private) == ss for ss, ct in (ours, direct))

    return check


def _signature_check(scheme: primitives.SignatureScheme, public: bytes, context: bytes) -> Check:
    """Both sides return a signature the scheme accepts."""

    def check(ours: Any, direct: Any) -> bool:
        return all(scheme.verify(public, MESSAGE, sig, context) for sig in (ours, direct))

    return check


def _both_true(ours: Any, direct: Any) -> bool:
    return ours is True and direct is True


# --- the operations --------------------------------------------------------------------


def _kem_ops() -> list[Operation]:
    """KEM key generation, encapsulation and decapsulation, bytes in and bytes out.

    Direct baselines: X25519 and ML-KEM use the backend's own ``generate``; the
    hybrids are assembled from their component calls exactly as the drafts define them:

    * X-Wing private key = 32-byte seed, expanded by SHAKE256 to the ML-KEM seed and
      the X25519 scalar; secret = SHA3-256(ss_M || ss_X || ct_X || pk_X || label).
    * X25519MLKEM768: public/ciphertext/secret are the ML-KEM and X25519 parts
      concatenated; private key = ML-KEM seed || X25519 scalar.
    """
    ops: list[Operation] = []
    direct_keygen = {
        "X25519": (
            "_k = X25519PrivateKey.generate()\n"
            "_r = (_k.public_key().public_bytes_raw(), _k.private_bytes_raw())"
        ),
        "ML-KEM": (
            "_k = Priv.generate()\n"
            "_r = (_k.public_key().public_bytes_raw(), _k.private_bytes_raw())"
        ),
        "X-Wing": (
            "_sk = os.urandom(32)\n"
            "_h = hashes.Hash(hashes.SHAKE256(96))\n"
            "_h.update(_sk)\n"
            "_e = _h.finalize()\n"
            "_r = (MLKEM768PrivateKey.from_seed_bytes(_e[:64]).public_key().public_bytes_raw()\n"
            "      + X25519PrivateKey.from_private_bytes(_e[64:]).public_key()"
            ".public_bytes_raw(), _sk)"
        ),
        "X25519MLKEM768": (
            "_m = MLKEM768PrivateKey.generate()\n"
            "_x = X25519PrivateKey.generate()\n"
            "_r = (_m.public_key().public_bytes_raw() + _x.public_key().public_bytes_raw(),\n"
            "      _m.private_bytes_raw() + _x.private_bytes_raw())"
        ),
    }
    direct_encapsulate = {
        "X25519": (
            "_e = X25519PrivateKey.generate()\n"
            "_r = (_e.exchange(X25519PublicKey.from_public_bytes(pk)),\n"
            "      _e.public_key().public_bytes_raw())"
        ),
        "ML-KEM": "_r = Pub.from_public_bytes(pk).encapsulate()",
        "X-Wing": (
            "_ss_m, _ct_m = MLKEM768PublicKey.from_public_bytes(pk[:1184]).encapsulate()\n"
            "_pk_x = pk[1184:]\n"
            "_e = X25519PrivateKey.generate()\n"
            "_ct_x = _e.public_key().public_bytes_raw()\n"
            "try:\n"
            "    _ss_x = _e.exchange(X25519PublicKey.from_public_bytes(_pk_x))\n"
            "except ValueError:\n"
            "    _ss_x = ZERO32\n"
            "_h = hashes.Hash(hashes.SHA3_256())\n"
            "_h.update(_ss_m + _ss_x + _ct_x + _pk_x + XWING_LABEL)\n"
            "_r = (_h.finalize(), _ct_m + _ct_x)"
        ),
        "X25519MLKEM768": (
            "_ss_m, _ct_m = MLKEM768PublicKey.from_public_bytes(pk[:1184]).encapsulate()\n"
            "_e = X25519PrivateKey.generate()\n"
            "_r = (_ss_m + _e.exchange(X25519PublicKey.from_public_bytes(pk[1184:])),\n"
            "      _ct_m + _e.public_key().public_bytes_raw())"
        ),
    }
    direct_decapsulate = {
        "X25519": (
            "_r = X25519PrivateKey.from_private_bytes(sk).exchange("
            "X25519PublicKey.from_public_bytes(ct))"
        ),
        "ML-KEM": "_r = Priv.from_seed_bytes(sk).decapsulate(ct)",
        "X-Wing": (
            "_h = hashes.Hash(hashes.SHAKE256(96))\n"
            "_h.update(sk)\n"
            "_e = _h.finalize()\n"
            "_ss_m = MLKEM768PrivateKey.from_seed_bytes(_e[:64]).decapsulate(ct[:1088])\n"
            "_sk_x = X25519PrivateKey.from_private_bytes(_e[64:])\n"
            "_pk_x = _sk_x.public_key().public_bytes_raw()\n"
            "_ct_x = ct[1088:]\n"
            "try:\n"
            "    _ss_x = _sk_x.exchange(X25519PublicKey.from_public_bytes(_ct_x))\n"
            "except ValueError:\n"
            "    _ss_x = ZERO32\n"
            "_h = hashes.Hash(hashes.SHA3_256())\n"
            "_h.update(_ss_m + _ss_x + _ct_x + _pk_x + XWING_LABEL)\n"
            "_r = _h.finalize()"
        ),
        "X25519MLKEM768": (
            "_r = (MLKEM768PrivateKey.from_seed_bytes(sk[:64]).decapsulate(ct[:1088])\n"
            "      + X25519PrivateKey.from_private_bytes(sk[64:]).exchange(\n"
            "            X25519PublicKey.from_public_bytes(ct[1088:])))"
        ),
    }
    classes = {
        "ML-KEM-768": (mlkem.MLKEM768PrivateKey, mlkem.MLKEM768PublicKey),
        "ML-KEM-1024": (mlkem.MLKEM1024PrivateKey, mlkem.MLKEM1024PublicKey),
    }
    for name in ("X25519", "ML-KEM-768", "ML-KEM-1024", "X-Wing", "X25519MLKEM768"):
        kem = primitives.kem(name)
        family = "ML-KEM" if name in classes else name
        pk, sk = kem.generate_keypair()
        sk = bytes(sk)  # plain bytes, decoded on every call as the direct side does (no HeldKey)
        _, ct = kem.encapsulate(pk)
        inputs: dict[str, Any] = {"kem": kem, "pk": pk, "sk": sk, "ct": ct}
        if name in classes:
            inputs["Priv"], inputs["Pub"] = classes[name]
        ops += [
            Operation(f"{name} generate_keypair", "_r = kem.generate_keypair()",
                      direct_keygen[family], inputs, _kem_keypair_check(kem)),
            Operation(f"{name} encapsulate", "_r = kem.encapsulate(pk)",
                      direct_encapsulate[family], inputs, _kem_encapsulate_check(kem, sk)),
            Operation(f"{name} decapsulate", "_r = kem.decapsulate(ct, sk)",
                      direct_decapsulate[family], inputs, _equal),
        ]
    return ops


def _verify_statement(call: str) -> str:
    """A direct verify that, like ours, answers True or False."""
    return f"try:\n    {call}\n    _r = True\nexcept InvalidSignature:\n    _r = False"


def _signature_ops() -> list[Operation]:
    """Signing and verification of a 64-byte message, keys as bytes.

    The ML-DSA-65+Ed25519 direct baseline builds the composite message representative
    M' = Prefix || Label || len(ctx) || ctx || SHA-512(M), signs M' with ML-DSA-65
    (context = Label) and Ed25519, and on verification checks both halves always.
    """
    ops: list[Operation] = []
    mldsa_classes = {
        "ML-DSA-44": (mldsa.MLDSA44PrivateKey, mldsa.MLDSA44PublicKey),
        "ML-DSA-65": (mldsa.MLDSA65PrivateKey, mldsa.MLDSA65PublicKey),
        "ML-DSA-87": (mldsa.MLDSA87PrivateKey, mldsa.MLDSA87PublicKey),
    }
    message_representative = (
        "_h = hashes.Hash(hashes.SHA512())\n"
        "_h.update(msg)\n"
        "_mp = COMPOSITE_PREFIX + COMPOSITE_LABEL + bytes([len(ctx)]) + ctx + _h.finalize()\n"
    )
    direct: dict[str, tuple[str, str]] = {
        "ML-DSA": ("_r = Priv.from_seed_bytes(sk).sign(msg, ctx)",
                   _verify_statement("Pub.from_public_bytes(pk).verify(sig, msg, ctx)")),
        "Ed25519": ("_r = Ed25519PrivateKey.from_private_bytes(sk).sign(msg)",
                    _verify_statement("Ed25519PublicKey.from_public_bytes(pk).verify(sig, msg)")),
        "ECDSA-P256": (
            "_r = ec.derive_private_key(int.from_bytes(sk, 'big'), ec.SECP256R1()).sign(\n"
            "    msg, ec.ECDSA(hashes.SHA256()))",
            _verify_statement(
                "ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), pk).verify("
                "sig, msg, ec.ECDSA(hashes.SHA256()))"),
        ),
        "ML-DSA-65+Ed25519": (
            message_representative
            + "_r = (MLDSA65PrivateKey.from_seed_bytes(sk[:32]).sign(_mp, COMPOSITE_LABEL)\n"
              "      + Ed25519PrivateKey.from_private_bytes(sk[32:]).sign(_mp))",
            message_representative
            + "if len(sig) != 3309 + 64:\n"
              "    _r = False\n"
              "else:\n"
              "    try:\n"
              "        MLDSA65PublicKey.from_public_bytes(pk[:1952]).verify(\n"
              "            sig[:3309], _mp, COMPOSITE_LABEL)\n"
              "        _ok_m = True\n"
              "    except InvalidSignature:\n"
              "        _ok_m = False\n"
              "    try:\n"
              "        Ed25519PublicKey.from_public_bytes(pk[1952:]).verify(sig[3309:], _mp)\n"
              "        _ok_e = True\n"
              "    except InvalidSignature:\n"
              "        _ok_e = False\n"
              "    _r = _ok_m and _ok_e",
        ),
    }
    for name in ("ML-DSA-44", "ML-DSA-65", "ML-DSA-87", "Ed25519", "ECDSA-P256",
                 "ML-DSA-65+Ed25519"):
        scheme = primitives.signature(name)
        family = "ML-DSA" if name in mldsa_classes else name
        context = ML_DSA_CONTEXT if scheme.max_context else b""
        pk, sk = scheme.generate_keypair()
        sk = bytes(sk)  # plain bytes, decoded on every call as the direct side does (no HeldKey)
        sig = scheme.sign(sk, MESSAGE, context)
        inputs: dict[str, Any] = {"scheme": scheme, "pk": pk, "sk": sk, "sig": sig,
                                  "msg": MESSAGE, "ctx": context}
        if name in mldsa_classes:
            inputs["Priv"], inputs["Pub"] = mldsa_classes[name]
        sign_direct, verify_direct = direct[family]
        # Ed25519 and ECDSA take no context: ours is called as a caller would, without one.
        ctx_arg = ", ctx" if context else ""
        # ML-DSA signing is hedged and loops a random number of times (rejection
        # sampling), so one signature's cost varies widely: batches three times as long
        # keep that variance out of the comparison.
        sign_scale = 3.0 if "ML-DSA" in name else 1.0
        ops += [
            Operation(f"{name} sign", f"_r = scheme.sign(sk, msg{ctx_arg})", sign_direct,
                      inputs, _signature_check(scheme, pk, context), sign_scale),
            Operation(f"{name} verify", f"_r = scheme.verify(pk, msg, sig{ctx_arg})",
                      verify_direct, inputs, _both_true),
        ]
    return ops


def _symmetric_ops() -> list[Operation]:
    """AEAD encrypt/decrypt (64 B and 16 KiB, 16 B of associated data), MACs on 1 KiB, HKDF."""
    ops: list[Operation] = []
    key, nonce, aad = bytes(range(32)), bytes(range(12)), b"associated data!"
    for name, cipher in (("AES-256-GCM", AESGCM), ("ChaCha20-Poly1305", ChaCha20Poly1305)):
        aead = primitives.aead(name)
        for size, label in ((64, "64 B"), (16384, "16 KiB")):
            pt = os.urandom(size)
            inputs: dict[str, Any] = {"aead": aead, "Cipher": cipher, "key": key,
                                      "nonce": nonce, "aad": aad, "pt": pt,
                                      "ct": aead.encrypt(key, nonce, pt, aad)}
            ops += [
                Operation(f"{name} encrypt {label}", "_r = aead.encrypt(key, nonce, pt, aad)",
                          "_r = Cipher(key).encrypt(nonce, pt, aad)", inputs, _equal),
                Operation(f"{name} decrypt {label}", "_r = aead.decrypt(key, nonce, ct, aad)",
                          "_r = Cipher(key).decrypt(nonce, ct, aad)", inputs, _equal),
            ]
    data = os.urandom(1024)
    ops += [
        Operation("HMAC-SHA256 compute 1 KiB", "_r = mac.compute(key, data)",
                  "_h = hmac.HMAC(key, hashes.SHA256())\n_h.update(data)\n_r = _h.finalize()",
                  {"mac": primitives.mac("HMAC-SHA256"), "key": key, "data": data}, _equal),
        Operation("Poly1305 compute 1 KiB", "_r = mac.compute(key, data)",
                  "_r = poly1305.Poly1305.generate_tag(key, data)",
                  {"mac": primitives.mac("Poly1305"), "key": key, "data": data}, _equal),
    ]
    hkdf_inputs: dict[str, Any] = {"salt": bytes(32), "ikm": os.urandom(64),
                                   "prk": os.urandom(32), "info": b"hybridkex bench info"}
    ops += [
        Operation("HKDF-SHA256 extract", "_r = primitives.hkdf_extract('SHA-256', salt, ikm)",
                  "_r = HKDF.extract(hashes.SHA256(), salt, ikm)", hkdf_inputs, _equal),
        Operation("HKDF-SHA256 expand 32 B",
                  "_r = primitives.hkdf_expand('SHA-256', prk, info, 32)",
                  "_r = HKDFExpand(hashes.SHA256(), 32, info).derive(prk)", hkdf_inputs, _equal),
    ]
    return ops


def all_operations() -> list[Operation]:
    return [*_kem_ops(), *_signature_ops(), *_symmetric_ops()]


LOOKUPS = (
    'primitives.kem("ML-KEM-768")',
    'primitives.signature("ML-DSA-65")',
    'primitives.aead("AES-256-GCM")',
    'primitives.mac("HMAC-SHA256")',
)


# --- measuring -------------------------------------------------------------------------


def _run_once(statement: str, namespace: dict[str, Any]) -> Any:
    scope = dict(namespace)
    exec(compile(statement, "<bench statement>", "exec"), scope)
    return scope["_r"]


def verify_operation(op: Operation) -> None:
    """Refuse to time two statements that do not compute the same thing."""
    ours = _run_once(op.ours, op.namespace())
    direct = _run_once(op.direct, op.namespace())
    if not op.check(ours, direct):
        raise SystemExit(f"{op.name}: ours and direct results disagree; fix the baseline")


def calls_per_batch(timers: Sequence[timeit.Timer], batch: float) -> int:
    """How many calls make a batch of about ``batch`` seconds on the slower timer."""
    per_call = 0.0
    for timer in timers:
        number = 1
        while True:
            elapsed = timer.timeit(number)
            if elapsed >= batch / 5:
                break
            number *= 2
        per_call = max(per_call, elapsed / number)
    return max(1, math.ceil(batch / per_call))


def measure(op: Operation, repeats: int, batch: float, clock: Clock) -> Result:
    ours = timeit.Timer(op.ours, clock, globals=op.namespace())
    direct = timeit.Timer(op.direct, clock, globals=op.namespace())
    number = calls_per_batch((ours, direct), batch)
    ours_rates: list[float] = []
    direct_rates: list[float] = []
    for repeat in range(repeats):
        # A B, then B A: every pair runs back to back and linear drift cancels.
        order = ((ours, ours_rates), (direct, direct_rates))
        for timer, rates in order if repeat % 2 == 0 else order[::-1]:
            rates.append(number / timer.timeit(number))
    return Result(op.name, number, ours_rates, direct_rates)


def measure_lookup(statement: str, repeats: int, batch: float, clock: Clock) -> Lookup:
    timer = timeit.Timer(statement, clock, globals=BASE_NAMESPACE)
    number = calls_per_batch((timer,), batch)
    rates = [number / timer.timeit(number) for _ in range(repeats)]
    return Lookup(statement, statistics.median(rates))


# --- reporting -------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cryptography": cryptography.__version__,
        "openssl": openssl_backend.openssl_version_text(),
        "nproc": usable,
        "machine": platform.machine(),
        "platform": platform.platform(),
    }


def environment_line(env: dict[str, Any]) -> str:
    return (f"Python {env['python']} ({env['implementation']}), cryptography "
            f"{env['cryptography']}, {env['openssl']}, nproc {env['nproc']}, "
            f"{env['machine']}")


def table(results: Sequence[Result]) -> str:
    header = ("operation", "ours ops/s", "direct ops/s", "ratio", "paired", "best",
              "pair range")
    rows = [header] + [
        (r.name, f"{r.ours_median:,.0f}", f"{r.direct_median:,.0f}",
         f"{r.ratio:.2f}" + (" *" if r.ratio > THRESHOLD else ""), f"{r.paired_ratio:.2f}",
         f"{r.best_ratio:.2f}",
         f"{min(r.pair_ratios):.2f}-{max(r.pair_ratios):.2f}")
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                         strict=True)]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true",
                        help="5 repeats of 0.03 s batches (under ~30 s) instead of 11 of 0.12 s")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--repeats", type=int, help="batches per side (default 11, quick 5)")
    parser.add_argument("--batch", type=float,
                        help="seconds per batch (default 0.12, quick 0.03)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: time.perf_counter (default, as timeit); cpu: this process's "
                             "CPU time, which leaves out time spent descheduled")
    parser.add_argument("--only", metavar="TEXT",
                        help="run only operations whose name contains TEXT (case-insensitive)")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 5 if args.quick else 11
    if args.batch is None:
        args.batch = 0.03 if args.quick else 0.12
    if args.repeats < 1 or args.batch <= 0:
        parser.error("--repeats must be at least 1 and --batch positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    env = environment()
    if not args.json:
        print(environment_line(env), flush=True)
        print(f"{args.repeats} interleaved repeats of ~{args.batch:g} s batches per side "
              f"({args.clock} clock); medians; ratio = direct ops/s / ours ops/s "
              f"(1.00 = no overhead)", flush=True)
    operations = all_operations()
    if args.only:
        operations = [op for op in operations if args.only.lower() in op.name.lower()]
    started = time.perf_counter()
    results: list[Result] = []
    for index, op in enumerate(operations, 1):
        print(f"[{index}/{len(operations)}] {op.name}", file=sys.stderr, flush=True)
        verify_operation(op)
        results.append(measure(op, args.repeats, args.batch * op.batch_scale,
                               CLOCKS[args.clock]))
    lookups = [measure_lookup(s, args.repeats, args.batch / 4, CLOCKS[args.clock])
               for s in LOOKUPS]
    elapsed = time.perf_counter() - started
    over = [r for r in results if r.ratio > THRESHOLD]
    consistent = [r for r in over if r.consistently_over]

    if args.json:
        print(json.dumps({
            "environment": env,
            "settings": {"repeats": args.repeats, "batch_seconds": args.batch,
                         "clock": args.clock,
                         "threshold": THRESHOLD, "elapsed_seconds": round(elapsed, 1)},
            "results": [r.as_dict() for r in results],
            "lookups": [lookup.as_dict() for lookup in lookups],
            "over_threshold": [r.name for r in over],
            "consistently_over_threshold": [r.name for r in consistent],
        }, indent=2))
        return 0

    print()
    print(table(results))
    print()
    print("Name lookup per call (not in the ratios; resolve an algorithm once and reuse it):")
    for lookup in lookups:
        print(f"  {lookup.name:<36} {1e6 / lookup.ops_per_s:7.2f} us")
    print()
    if over:
        print(f"Over {THRESHOLD:.2f}x on the ratio of medians (marked *):")
        for r in over:
            verdict = ("every estimate agrees" if r.consistently_over
                       else "paired/best say noise")
            print(f"  {r.name}: {r.ratio:.2f}x, "
                  f"+{1e6 / r.ours_median - 1e6 / r.direct_median:.2f} us per call "
                  f"({verdict})")
    else:
        print(f"Every operation is within {THRESHOLD:.2f}x.")
    print(f"({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
