"""HKDF (RFC 5869) and the hkdf-concat combiner written out from their definitions with
the standard library only: an oracle independent of hybridkex and of cryptography."""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from typing import Any

HASHES: dict[str, Callable[..., Any]] = {"SHA-256": hashlib.sha256, "SHA-384": hashlib.sha384}


def extract(hash_name: str, salt: bytes, ikm: bytes) -> bytes:
    h = HASHES[hash_name]
    return hmac.new(salt or bytes(h().digest_size), ikm, h).digest()


def expand(hash_name: str, prk: bytes, info: bytes, length: int) -> bytes:
    h = HASHES[hash_name]
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), h).digest()
        okm += block
        counter += 1
    return okm[:length]


def hkdf_concat(parts: list[tuple[str, bytes]], context: bytes, length: int,
                hash_name: str) -> bytes:
    """docs/combiners.md: labelled, length-prefixed secrets; context as salt and in info."""
    ikm = bytes([len(parts)])
    for name, secret in parts:
        encoded = name.encode()
        ikm += bytes([len(encoded)]) + encoded + struct.pack(">H", len(secret)) + secret
    info = (b"hybridkex hkdf-concat v1" + struct.pack(">H", len(context)) + context
            + struct.pack(">H", length))
    return expand(hash_name, extract(hash_name, context, ikm), info, length)
