"""SKIP (Secure Key Integration Protocol, draft-cisco-skip) data formats, without I/O.

SKIP is the key-provider API routers and encryptors speak: ``GET /capabilities``,
``GET /key?remoteSystemID=...[&size=...]`` (a new key shared with that remote
system), ``GET /key/{keyId}?remoteSystemID=...`` (the peer's copy) and ``GET
/entropy``.  Keys and key IDs travel as hex strings; a SKIP ``keyId`` is the 16 bytes
of this KME's UUID key ID in hex, so the ETSI and SKIP faces name one key alike.

A system ID here is a site ID (the KME ID).  SKIP names no peer SAE: the SAE map's
``skip_peer`` says which SAE a SKIP key taken by an SAE is bound to
(``"sae-a": {"site": "A", "skip_peer": "sae-b"}``), and the server applies the same
binding rules as for ETSI GS QKD 014.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from hybridkex.keydelivery.keys import DeliveredKey
from hybridkex.keydelivery.kme.formats import BadRequest, KMELimits

__all__ = ["SKIP_VERSION", "capabilities_body", "entropy_bits", "key_body", "parse_key_id",
           "parse_remote", "parse_size"]

SKIP_VERSION = "1.0"
MAX_ENTROPY_BITS = 8192
_HEX_ID = re.compile(r"[0-9a-fA-F]{32}")
_DIGITS = re.compile(r"[0-9]{1,9}")


def _one(query: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = query.get(name, ())
    if len(values) > 1:
        raise BadRequest(f"{name} is given more than once")
    return values[0] if values else None


def parse_remote(query: Mapping[str, Sequence[str]]) -> str:
    """``remoteSystemID``, required by ``/key`` and ``/key/{keyId}``."""
    remote = _one(query, "remoteSystemID")
    if not remote:
        raise BadRequest("remoteSystemID is required")
    return remote


def _bits(query: Mapping[str, Sequence[str]], name: str, default: int) -> int:
    text = _one(query, name)
    if text is None:
        return default
    if not _DIGITS.fullmatch(text):
        raise BadRequest(f"{name} must be a positive integer number of bits")
    return int(text)


def parse_size(query: Mapping[str, Sequence[str]], limits: KMELimits) -> int:
    """``size`` in bits (default 256), within this KME's limits, a multiple of 8."""
    return limits.check_size(_bits(query, "size", 256))


def entropy_bits(query: Mapping[str, Sequence[str]]) -> int:
    """``minentropy`` in bits (default 256): a multiple of 8 up to 8192."""
    bits = _bits(query, "minentropy", 256)
    if bits < 8 or bits % 8 or bits > MAX_ENTROPY_BITS:
        raise BadRequest(f"minentropy must be a multiple of 8 from 8 to {MAX_ENTROPY_BITS}")
    return bits


def parse_key_id(text: str) -> str:
    """A SKIP ``keyId`` (32 hex digits) as this KME's UUID key ID."""
    if not _HEX_ID.fullmatch(text):
        raise BadRequest("keyId must be 32 hexadecimal digits")
    return str(uuid.UUID(hex=text))


def key_body(key: DeliveredKey) -> dict[str, Any]:
    """A SKIP key: ``{"keyId": hex, "key": hex}``."""
    return {"keyId": uuid.UUID(key.key_id).hex, "key": key.key.hex()}


def capabilities_body(local: str, remotes: Sequence[str]) -> dict[str, Any]:
    """What ``GET /capabilities`` answers: this key provider and the systems it
    shares keys with (the peer KMEs it was given)."""
    return {"entity": "KP", "version": SKIP_VERSION, "localSystemID": local,
            "remoteSystemID": sorted(remotes)}
