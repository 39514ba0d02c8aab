"""Private keys that keep the backend key object they were decoded into.

The primitives take and return keys as ``bytes``, and cryptography can only use a
key object, so a private key used twice (an ephemeral ML-KEM key generated, then
used to decapsulate; a signing key used for every handshake) would otherwise be
decoded again every time: for ML-KEM and ML-DSA that re-runs key generation from the
seed, which costs more than an ML-KEM decapsulation itself.  The measured costs are
in docs/performance.md (Primitives).
"""

from __future__ import annotations

__all__ = ["HeldKey", "held_key"]


class HeldKey(bytes):
    """A private key's standard encoding that also holds its decoded backend key object.

    It *is* those bytes: equal to them, hashed, compared, stored and encoded as them,
    usable wherever bytes are.  The key object lives exactly as long as the bytes do
    and is released with them, so holding it changes nothing about how long the key
    exists.  Copies (``bytes(k)``, pickling, :mod:`copy`) are plain bytes, which the
    primitives simply decode again.  Only the primitives make these, from a key object
    and that object's own encoding, so the two always agree.
    """

    backend_key: object

    def __new__(cls, encoding: bytes, backend_key: object) -> HeldKey:
        held = super().__new__(cls, encoding)
        held.backend_key = backend_key
        return held

    def __reduce__(self) -> tuple[type[bytes], tuple[bytes]]:
        return bytes, (bytes(self),)


def held_key(value: object) -> object:
    """The key object ``value`` holds if it is a :class:`HeldKey`, else None; the caller
    checks that it is a key of the kind it needs."""
    return value.backend_key if type(value) is HeldKey else None
