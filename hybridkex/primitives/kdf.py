"""Hashes and HKDF (RFC 5869), by name, over pyca/cryptography.

Extract and Expand are exposed separately because the combiners and the key schedule
are written as NIST SP 800-56C two-step derivations: one Extract over all secrets,
then labelled Expands.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from hybridkex.errors import UnknownAlgorithm
from hybridkex.primitives._checks import Bytes, as_bytes, check_length

__all__ = ["HASHES", "digest", "hash_algorithm", "hkdf", "hkdf_expand", "hkdf_extract",
           "running_hash"]

HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "SHA-256": hashes.SHA256,
    "SHA-384": hashes.SHA384,
    "SHA-512": hashes.SHA512,
    "SHA3-256": hashes.SHA3_256,
    "SHA3-384": hashes.SHA3_384,
    "SHA3-512": hashes.SHA3_512,
}


_INSTANCES: dict[str, hashes.HashAlgorithm] = {name: cls() for name, cls in HASHES.items()}


def hash_algorithm(name: str) -> hashes.HashAlgorithm:
    """The cryptography hash object for a standard hash name ("SHA-256", "SHA-384", ...).

    Hash algorithm objects carry no state, so one instance per name is shared.
    """
    try:
        return _INSTANCES[name]
    except (KeyError, TypeError):
        raise UnknownAlgorithm(
            f"unknown hash {name!r}; known: {', '.join(HASHES)}"
        ) from None


def running_hash(name: str) -> hashes.Hash:
    """An incremental hash (``update``, ``copy``, ``finalize``), for a transcript hashed
    at several points as it grows."""
    return hashes.Hash(hash_algorithm(name))


def digest(name: str, data: Bytes) -> bytes:
    """One-shot hash of ``data``."""
    h = hashes.Hash(hash_algorithm(name))
    h.update(data if type(data) is bytes else as_bytes(data, "data"))
    return h.finalize()


def hkdf_extract(hash_name: str, salt: Bytes, ikm: Bytes) -> bytes:
    """HKDF-Extract(salt, IKM) = HMAC-Hash(salt, IKM); an empty salt means HashLen zeros."""
    algorithm = hash_algorithm(hash_name)
    salt_bytes = as_bytes(salt, "salt")
    return HKDF.extract(algorithm, salt_bytes or None, as_bytes(ikm, "input keying material"))


def hkdf_expand(hash_name: str, prk: Bytes, info: Bytes, length: int) -> bytes:
    """HKDF-Expand(PRK, info, L); L is at most 255 * HashLen, as RFC 5869 allows."""
    algorithm = hash_algorithm(hash_name)
    # the checks of check_length and as_bytes, written out for the common case (a key
    # schedule makes dozens of these calls per handshake); anything else takes the calls
    if type(length) is not int or not 0 < length <= 255 * algorithm.digest_size:
        length = check_length(length, "HKDF output length", 255 * algorithm.digest_size)
    if type(prk) is not bytes:
        prk = as_bytes(prk, "pseudorandom key")
    if type(info) is not bytes:
        info = as_bytes(info, "info")
    return HKDFExpand(algorithm, length, info).derive(prk)


def hkdf(hash_name: str, ikm: Bytes, salt: Bytes, info: Bytes, length: int) -> bytes:
    """Extract then Expand (RFC 5869 section 2)."""
    return hkdf_expand(hash_name, hkdf_extract(hash_name, salt, ikm), info, length)
