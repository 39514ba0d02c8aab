"""hybridkex: session keys from X25519, ML-KEM and QKD, secret while any one of them holds."""

from __future__ import annotations

from hybridkex.errors import (
    AuthenticationFailed,
    BackendUnavailable,
    CombinerError,
    HybridKexError,
    InvalidCiphertext,
    InvalidKey,
    InvalidParameter,
    UnknownAlgorithm,
)

__version__ = "0.1.0"

__all__ = [
    "AuthenticationFailed",
    "BackendUnavailable",
    "CombinerError",
    "HybridKexError",
    "InvalidCiphertext",
    "InvalidKey",
    "InvalidParameter",
    "UnknownAlgorithm",
    "__version__",
]
