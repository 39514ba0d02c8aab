"""hkdf-concat against an independent computation of its documented definition.

The reference below uses only the standard library's hmac/hashlib and the text of
docs/combiners.md, so a change to the encoding in hybridkex.combiner that the
documentation does not share fails here.
"""

from __future__ import annotations

import hashlib

import pytest

from hybridkex import combiner
from hybridkex.errors import CombinerError, InvalidParameter, UnknownAlgorithm
from tests import reference_kdf


@pytest.mark.parametrize("hash_name", ["SHA-256", "SHA-384"])
@pytest.mark.parametrize("length", [16, 32, 64, 100])
def test_hkdf_concat_matches_documented_definition(hash_name: str, length: int) -> None:
    parts = [("X25519", bytes(range(32))), ("ML-KEM-768", bytes(range(32, 64))),
             ("QKD", bytes(range(64, 96)))]
    context = hashlib.sha256(b"transcript").digest()
    expected = reference_kdf.hkdf_concat(parts, context, length, hash_name)
    assert combiner.combine(parts, context, length, hash_name=hash_name) == expected


def test_default_combiner_is_hkdf_concat() -> None:
    parts = [("a", b"1"), ("b", b"2")]
    assert combiner.combine(parts, b"c", 32) == combiner.combine(parts, b"c", 32, "hkdf-concat")


def test_unknown_combiner_is_a_typed_error() -> None:
    with pytest.raises(UnknownAlgorithm):
        combiner.combine([("a", b"1"), ("b", b"2")], b"", 32, "xor")


@pytest.mark.parametrize("name", ["hkdf-concat", "etsi-catkdf", "etsi-caskdf"])
@pytest.mark.parametrize("length", [0, -1, 255 * 32 + 1])
def test_output_length_is_checked(name: str, length: int) -> None:
    with pytest.raises(InvalidParameter):
        combiner.combine([("a", b"1"), ("b", b"2")], b"", length, name)


@pytest.mark.parametrize("name", ["hkdf-concat", "etsi-catkdf", "etsi-caskdf"])
def test_oversized_context_is_refused(name: str) -> None:
    with pytest.raises(CombinerError):
        combiner.combine([("a", b"1"), ("b", b"2")], bytes(0x10000), 32, name)
