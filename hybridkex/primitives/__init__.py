"""Typed wrappers over pyca/cryptography, looked up by standard algorithm name.

Nothing here implements a primitive: ML-KEM, ML-DSA, X25519, Ed25519, ECDSA,
AES-GCM, ChaCha20-Poly1305, Poly1305, HMAC and HKDF all come from ``cryptography``
(OpenSSL 4).  The wrappers fix encodings, check every length, and turn the
library's exceptions into hybridkex's typed errors.

>>> from hybridkex import primitives
>>> kem = primitives.kem("ML-KEM-768")
>>> public, private = kem.generate_keypair()
>>> secret, ciphertext = kem.encapsulate(public)
>>> kem.decapsulate(ciphertext, private) == secret
True
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import __version__ as _cryptography_version
from cryptography.hazmat.backends.openssl import backend as _openssl

from hybridkex.errors import BackendUnavailable, UnknownAlgorithm
from hybridkex.primitives import oqs_backend
from hybridkex.primitives.kdf import digest, hash_algorithm, hkdf, hkdf_expand, hkdf_extract
from hybridkex.primitives.kem import KEM, KEMS
from hybridkex.primitives.signature import SIGNATURES, SignatureScheme
from hybridkex.primitives.symmetric import AEAD, AEADS, MAC, MACS, KeyedAEAD

__all__ = [
    "AEAD",
    "KEM",
    "MAC",
    "AlgorithmInfo",
    "KeyedAEAD",
    "SignatureScheme",
    "aead",
    "available",
    "backend_version",
    "digest",
    "hkdf",
    "hkdf_expand",
    "hkdf_extract",
    "kem",
    "mac",
    "signature",
]


def backend_version() -> str:
    """The versions of the backend every built-in algorithm runs on."""
    return f"cryptography {_cryptography_version}, {_openssl.openssl_version_text()}"


def _lookup(kind: str, name: str, builtin: dict[str, object], extra: dict[str, object],
            oqs_names: object) -> object:
    if not isinstance(name, str):
        raise UnknownAlgorithm(f"{kind} name must be a str, not {type(name).__name__}")
    if name in builtin:
        return builtin[name]
    if name in extra:
        return extra[name]
    if name in oqs_names:  # type: ignore[operator]
        raise BackendUnavailable(f"{kind} {name!r} is not available: {oqs_backend.INSTALL_HINT}")
    known = ", ".join([*builtin, *extra])
    raise UnknownAlgorithm(f"unknown {kind} {name!r}; available: {known}")


def kem(name: str) -> KEM:
    """The KEM called ``name`` ("X25519", "ML-KEM-768", "ML-KEM-1024", "X-Wing",
    "X25519MLKEM768", or a liboqs name when the ``oqs`` extra is usable)."""
    found = _lookup("KEM", name, dict(KEMS), dict(oqs_backend.oqs_kems()),
                    oqs_backend.OQS_KEM_NAMES)
    assert isinstance(found, KEM)
    return found


def signature(name: str) -> SignatureScheme:
    """The signature scheme called ``name`` ("ML-DSA-44", "ML-DSA-65", "ML-DSA-87",
    "Ed25519", "ECDSA-P256", "ML-DSA-65+Ed25519", or a liboqs name)."""
    found = _lookup("signature scheme", name, dict(SIGNATURES),
                    dict(oqs_backend.oqs_signatures()), oqs_backend.OQS_SIGNATURE_NAMES)
    assert isinstance(found, SignatureScheme)
    return found


def aead(name: str) -> AEAD:
    """The AEAD called ``name`` ("AES-256-GCM" or "ChaCha20-Poly1305")."""
    found = _lookup("AEAD", name, dict(AEADS), {}, ())
    assert isinstance(found, AEAD)
    return found


def mac(name: str) -> MAC:
    """The MAC called ``name`` ("HMAC-SHA256", "HMAC-SHA384", or one-time "Poly1305")."""
    found = _lookup("MAC", name, dict(MACS), {}, ())
    assert isinstance(found, MAC)
    return found


@dataclass(frozen=True)
class AlgorithmInfo:
    """One usable algorithm: what kind it is, who provides it, and its sizes in bytes."""

    kind: str
    name: str
    backend: str
    sizes: dict[str, int] = field(default_factory=dict)


def available() -> list[AlgorithmInfo]:
    """Every algorithm usable on this installation, with its backend and sizes."""
    infos: list[AlgorithmInfo] = []
    for k in [*KEMS.values(), *oqs_backend.oqs_kems().values()]:
        infos.append(AlgorithmInfo("kem", k.name, k.backend, k.sizes()))
    for s in [*SIGNATURES.values(), *oqs_backend.oqs_signatures().values()]:
        infos.append(AlgorithmInfo("signature", s.name, s.backend, s.sizes()))
    for a in AEADS.values():
        infos.append(AlgorithmInfo("aead", a.name, "cryptography", {
            "key": a.key_size, "nonce": a.nonce_size, "tag": a.tag_size}))
    for m in MACS.values():
        infos.append(AlgorithmInfo("one-time-mac" if m.one_time else "mac", m.name,
                                   "cryptography", {"key": m.key_size, "tag": m.tag_size}))
    for h in ("SHA-256", "SHA-384"):
        infos.append(AlgorithmInfo("kdf", f"HKDF-{h}", "cryptography",
                                   {"output": hash_algorithm(h).digest_size}))
    return infos
