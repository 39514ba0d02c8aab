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


def __getattr__(name: str) -> object:
    # The socket layer pulls in the protocol and the key store; load it on first use so
    # ``import hybridkex`` stays cheap for code that only needs the primitives.
    if name in ("Context", "SecureSocket"):
        from hybridkex import transport

        return getattr(transport, name)
    raise AttributeError(f"module 'hybridkex' has no attribute {name!r}")

__all__ = [
    "AuthenticationFailed",
    "BackendUnavailable",
    "CombinerError",
    "Context",
    "HybridKexError",
    "InvalidCiphertext",
    "InvalidKey",
    "InvalidParameter",
    "SecureSocket",
    "UnknownAlgorithm",
    "__version__",
]
