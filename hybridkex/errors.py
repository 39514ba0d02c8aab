"""The exception hierarchy.

Every error hybridkex raises derives from :class:`HybridKexError`, so a caller can
catch the library's failures without catching programming errors.  Messages name
what was wrong (an algorithm, a length, a field) and never carry key material.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "BackendUnavailable",
    "CombinerError",
    "HybridKexError",
    "InvalidCiphertext",
    "InvalidKey",
    "InvalidParameter",
    "UnknownAlgorithm",
]


class HybridKexError(Exception):
    """Base class of every error raised by hybridkex."""


class UnknownAlgorithm(HybridKexError, LookupError):
    """No algorithm of that kind is known under that name."""


class BackendUnavailable(HybridKexError):
    """The algorithm exists, but the backend that provides it is not installed.

    The message names what to install; nothing is downloaded or built on the fly.
    """


class InvalidParameter(HybridKexError, ValueError):
    """An argument has the wrong type, length or range (seed, context, nonce, length)."""


class InvalidKey(InvalidParameter):
    """Key bytes that do not decode as a key of the requested algorithm."""


class InvalidCiphertext(InvalidParameter):
    """A KEM ciphertext that fails the standard's input check (for example its length).

    A well-formed but wrong ciphertext does not raise this: ML-KEM answers it with
    an implicit-rejection secret, as FIPS 203 requires.
    """


class AuthenticationFailed(HybridKexError):
    """An AEAD tag or a MAC did not verify.  Nothing of the message is released."""


class CombinerError(InvalidParameter):
    """The inputs to a KDF combiner are missing, empty, duplicated or malformed."""
