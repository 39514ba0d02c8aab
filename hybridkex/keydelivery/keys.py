"""Keys as key delivery hands them out: units, key IDs, and the key-ID codec.

A QKD link deposits its output as 256-bit **units**, each under a UUID key ID that both
sites know.  A **key** handed to a consumer is one unit, a prefix of one, or several
consecutive units cut to length (ETSI GS QKD 014 lets a KME serve any size this way);
its first unit's ID is the key ID, the others travel as its ``extension``.

This module is the one place that defines those shapes and the wire form of a key ID
(16 bytes, the UUID's bytes), so the protocol, TLS, the stores and the KME agree.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from hybridkex.errors import InvalidParameter
from hybridkex.keydelivery.errors import KeyNotAvailable

__all__ = [
    "MAX_KEYS_PER_REQUEST",
    "MAX_KEY_BITS",
    "UNIT_BITS",
    "UNIT_BYTES",
    "DeliveredKey",
    "KeyRef",
    "StoredKey",
    "key_id_bytes",
    "key_id_text",
    "new_key_id",
    "units_for",
]

UNIT_BITS = 256
UNIT_BYTES = UNIT_BITS // 8
MAX_KEY_BITS = 64 * UNIT_BITS
MAX_KEYS_PER_REQUEST = 1024


@dataclass(frozen=True, repr=False)
class StoredKey:
    """One 256-bit unit as deposited by distillation; ``initiator`` is the site that takes it."""

    key_id: str
    key: bytes
    initiator: str

    def __repr__(self) -> str:
        return f"StoredKey(key_id={self.key_id!r}, initiator={self.initiator!r})"


@dataclass(frozen=True, repr=False)
class DeliveredKey:
    """A key handed to a consumer.  ``ids`` names every unit it was assembled from."""

    key_id: str
    key: bytes
    size_bits: int
    extension: tuple[str, ...] = ()

    @property
    def ids(self) -> tuple[str, ...]:
        return (self.key_id, *self.extension)

    def __repr__(self) -> str:  # never the key material
        return f"DeliveredKey(key_id={self.key_id!r}, size_bits={self.size_bits})"


KeyRef = str | Sequence[str]


def units_for(size_bits: int) -> int:
    """How many 256-bit units a key of ``size_bits`` takes (checking the size)."""
    if not isinstance(size_bits, int) or isinstance(size_bits, bool):
        raise InvalidParameter("key size must be an int number of bits")
    if size_bits <= 0 or size_bits % 8 or size_bits > MAX_KEY_BITS:
        raise InvalidParameter(
            f"key size must be a positive multiple of 8 bits up to {MAX_KEY_BITS}, "
            f"got {size_bits}")
    return -(-size_bits // UNIT_BITS)


def check_count(count: int) -> int:
    if not isinstance(count, int) or isinstance(count, bool) or not (
            1 <= count <= MAX_KEYS_PER_REQUEST):
        raise InvalidParameter(f"key count must be between 1 and {MAX_KEYS_PER_REQUEST}")
    return count


# A handshake converts a dozen key IDs between text and bytes, and uuid.UUID takes a few
# microseconds each time; the usual form (8-4-4-4-12 hex digits) is converted directly,
# with exactly uuid.UUID's results, and anything else still goes through uuid.UUID.


def _hyphenated_bytes(key_id: str) -> bytes | None:
    """The 16 bytes of an 8-4-4-4-12 hex UUID string, or None for any other string."""
    if (len(key_id) != 36 or key_id[8] != "-" or key_id[13] != "-" or key_id[18] != "-"
            or key_id[23] != "-"):
        return None
    try:
        raw = bytes.fromhex(key_id[:8] + key_id[9:13] + key_id[14:18] + key_id[19:23]
                            + key_id[24:])
    except ValueError:
        return None
    return raw if len(raw) == 16 else None  # fewer if fromhex skipped whitespace


def _hyphenated_text(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def key_id_bytes(key_id: str) -> bytes:
    """A key ID (a UUID string) as the 16 bytes protocols carry on the wire."""
    raw = _hyphenated_bytes(key_id) if type(key_id) is str else None
    return raw if raw is not None else uuid.UUID(key_id).bytes


def key_id_text(raw: bytes) -> str:
    """The key ID (UUID string) that 16 wire bytes name."""
    if type(raw) is bytes and len(raw) == 16:
        return _hyphenated_text(raw)
    return str(uuid.UUID(bytes=raw))


_CANONICAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def check_key_id(key_id: object) -> str:
    """A key ID in its canonical form (lower-case 8-4-4-4-12), or KeyNotAvailable.

    Already canonical, as every ID a KME mints and syncs is, it is returned as it is
    after one regular-expression match: a KME checks every unit ID of every
    reservation, several times on its way from store to store.
    """
    if type(key_id) is str and _CANONICAL_ID.fullmatch(key_id):
        return key_id
    if not isinstance(key_id, str):
        raise KeyNotAvailable("a key ID must be a UUID string")
    raw = _hyphenated_bytes(key_id)
    if raw is not None:
        return key_id if key_id.islower() or key_id.isdigit() else _hyphenated_text(raw)
    try:
        return str(uuid.UUID(key_id))
    except ValueError:
        raise KeyNotAvailable("a key ID is not a UUID") from None


def normalise_refs(key_ids: Sequence[KeyRef], units: int) -> list[tuple[str, ...]]:
    """Each requested key as its tuple of unit IDs; duplicates anywhere are refused."""
    if isinstance(key_ids, str) or not isinstance(key_ids, Sequence):
        raise InvalidParameter("key_ids must be a sequence of key IDs")
    check_count(len(key_ids))
    refs: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for ref in key_ids:
        ids = (ref,) if isinstance(ref, str) else tuple(ref)
        if len(ids) != units:
            raise KeyNotAvailable(
                f"a key of this size is made of {units} stored keys, the request names {len(ids)}")
        checked = tuple(check_key_id(i) for i in ids)
        if seen.intersection(checked) or len(set(checked)) != len(checked):
            raise KeyNotAvailable("a key ID appears twice in the request")
        seen.update(checked)
        refs.append(checked)
    return refs


def assemble_key(ids: tuple[str, ...], units: Sequence[bytes], size_bits: int) -> DeliveredKey:
    material = b"".join(units)[: size_bits // 8]
    return DeliveredKey(ids[0], material, size_bits, ids[1:])


def new_key_id() -> str:
    """A fresh random key ID (UUID version 4), as ETSI GS QKD 014 uses."""
    return str(uuid.uuid4())
