"""ETSI GS QKD 014 V1.1.1 data formats (clause 6) and this KME's request rules, without I/O.

Everything here turns JSON values and query strings into checked Python values, or
Python values into the JSON the spec defines; nothing touches a socket, a store or a
clock, so the server (:mod:`hybridkex.keydelivery.kme.server`) is a thin layer over it.

Member names are the spec's own (``key_ID``, ``stored_key_count``, ...).  Sizes are bits.

Keys other than the default 256 bits
------------------------------------
The key store keeps 256-bit units (:mod:`hybridkex.keydelivery.keys`).  A key of another
size is the first ``size`` bits of one unit (``size`` < 256) or of several consecutive
units (``size`` > 256).  Its ``key_ID`` is the first unit's ID, and its
``key_ID_extension`` (an object the spec reserves "for future use") says the rest::

    "key_ID_extension": {"size": 512, "unit_key_IDs": ["<UUID of the 2nd unit>"]}

``size`` is the key's size in bits and ``unit_key_IDs`` the IDs of the further units in
order (``units - 1`` of them, so an empty list for sizes below 256).  A 256-bit key has
no ``key_ID_extension``, so a plain ETSI client sees plain ETSI keys.  The extension is
an optional extra: the slave's KME knows every key's size and units from its
reservation (:mod:`hybridkex.keydelivery.binding`), so ``dec_keys`` by ``key_ID`` alone
returns the whole key.  A slave SAE that sends the extension back has it checked
against the reservation.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hybridkex.errors import HybridKexError, InvalidParameter
from hybridkex.keydelivery.keys import (
    MAX_KEY_BITS,
    MAX_KEYS_PER_REQUEST,
    UNIT_BITS,
    DeliveredKey,
    units_for,
)

__all__ = [
    "DEFAULT_KEY_SIZE",
    "EXT_SIZE",
    "EXT_UNITS",
    "KEYS_NOT_FOUND",
    "KEY_ID_ERROR",
    "MAX_UNITS_PER_REQUEST",
    "BadRequest",
    "KMEError",
    "KMELimits",
    "KeyIDRef",
    "KeyRequest",
    "ServerError",
    "Unauthorized",
    "decode_json",
    "error_body",
    "key_container",
    "key_id_extension",
    "parse_key_ids",
    "parse_key_ids_query",
    "parse_key_request",
    "parse_key_request_query",
    "status_body",
]

DEFAULT_KEY_SIZE = UNIT_BITS
"""``key_size`` of the Status: a key without ``key_ID_extension`` is this many bits."""

MAX_UNITS_PER_REQUEST = MAX_KEYS_PER_REQUEST
"""The most 256-bit store units one request may involve (the store's per-call limit)."""

EXT_SIZE = "size"
EXT_UNITS = "unit_key_IDs"

KEYS_NOT_FOUND = "one or more keys specified are not found on KME"
"""The spec's message for unknown (or already delivered) key IDs."""

KEY_ID_ERROR = "key_ID_error"
"""Name of the ``details`` member that marks every 400 about the key IDs themselves."""

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DIGITS = re.compile(r"[0-9]{1,9}")


class KMEError(HybridKexError):
    """A request the KME answers with an Error body (clause 6.5) and an HTTP status."""

    status = 503

    def __init__(self, message: str, details: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = [dict(d) for d in details]

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.details)


class BadRequest(KMEError):
    """400 "Bad request format": the request, or its parameters, break the rules."""

    status = 400


class Unauthorized(KMEError):
    """401 "Unauthorized": the caller, or the SAE it names, is not served here."""

    status = 401


class ServerError(KMEError):
    """503 "Error of server side": a well-formed request the KME cannot serve now."""

    status = 503


def error_body(message: str, details: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The Error data format (clause 6.5): ``message``, and ``details`` when there are any."""
    body: dict[str, Any] = {"message": message}
    if details:
        body["details"] = [dict(d) for d in details]
    return body


def _key_id_error(message: str, code: str) -> BadRequest:
    return BadRequest(message, [{KEY_ID_ERROR: code}])


@dataclass(frozen=True)
class KMELimits:
    """What this KME delivers; reported in the Status and enforced on every request."""

    min_key_size: int = 64
    max_key_size: int = 2048
    max_key_per_request: int = 128
    max_key_count: int = 1_000_000
    max_sae_id_count: int = 8

    def __post_init__(self) -> None:
        for name in ("min_key_size", "max_key_size", "max_key_per_request", "max_key_count",
                     "max_sae_id_count"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (
                    0 if name == "max_sae_id_count" else 1):
                raise InvalidParameter(f"{name} must be a positive int")
        if self.min_key_size % 8 or self.max_key_size % 8:
            raise InvalidParameter("key sizes must be multiples of 8 bits")
        if not self.min_key_size <= DEFAULT_KEY_SIZE <= self.max_key_size <= MAX_KEY_BITS:
            raise InvalidParameter(f"need min_key_size <= {DEFAULT_KEY_SIZE} <= max_key_size <= "
                             f"{MAX_KEY_BITS}")
        if self.max_key_per_request * units_for(self.max_key_size) > MAX_UNITS_PER_REQUEST:
            raise InvalidParameter(f"max_key_per_request x max_key_size may span at most "
                             f"{MAX_UNITS_PER_REQUEST} units of {UNIT_BITS} bits")

    @property
    def max_SAE_ID_count(self) -> int:  # the spec's name
        return self.max_sae_id_count

    def check_size(self, size: int, *, key_id: bool = False) -> int:
        """``size`` if this KME delivers keys of that many bits; else 400."""
        make = (lambda m: _key_id_error(m, "size")) if key_id else BadRequest
        if size % 8:
            raise make("size shall be a multiple of 8")
        if not self.min_key_size <= size <= self.max_key_size:
            raise make(f"size must be between min_key_size ({self.min_key_size}) and "
                       f"max_key_size ({self.max_key_size})")
        return size

    def check_number(self, number: int) -> int:
        if not 1 <= number <= self.max_key_per_request:
            raise BadRequest(f"number must be between 1 and max_key_per_request "
                             f"({self.max_key_per_request})")
        return number


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_STRICT_JSON = json.JSONDecoder(parse_constant=_no_constants)  # made once, not per request


def decode_json(raw: bytes) -> Any:
    """Parse a request body as strict JSON (RFC 8259: no NaN or Infinity); 400 otherwise."""
    try:
        return _STRICT_JSON.decode(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequest("the request body is not valid JSON") from None


def _integer(value: Any) -> int | None:
    """A JSON integer (JSON Schema counts 3.0 as one too), or ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _int_member(obj: Mapping[str, Any], name: str) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    number = _integer(value)
    if number is None:
        raise BadRequest(f"{name} must be an integer")
    return number


def _object_list(obj: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    value = obj.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise BadRequest(f"{name} must be an array of objects")
    return value


@dataclass(frozen=True)
class KeyRequest:
    """A checked Get key request (clause 6.2): ``number`` keys of ``size`` bits each."""

    number: int = 1
    size: int = DEFAULT_KEY_SIZE
    additional_slaves: tuple[str, ...] = ()


def parse_key_request(body: Any, limits: KMELimits) -> KeyRequest:
    """The Key request data format (clause 6.2); ``None`` (no body) means all defaults.

    ``additional_slave_SAE_IDs`` (key multicast) may name up to ``max_SAE_ID_count``
    further slave SAEs, each once; any ``extension_mandatory`` parameter is refused, as
    the spec requires of parameters a KME does not support; ``extension_optional`` is
    ignored.
    """
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise BadRequest("the key request must be a JSON object")
    number = _int_member(body, "number")
    size = _int_member(body, "size")
    extra = body.get("additional_slave_SAE_IDs")
    if extra is not None:
        if not isinstance(extra, list) or not all(isinstance(s, str) for s in extra):
            raise BadRequest("additional_slave_SAE_IDs must be an array of strings")
        if len(extra) > limits.max_SAE_ID_count:
            raise BadRequest(f"additional_slave_SAE_IDs may name at most max_SAE_ID_count "
                             f"({limits.max_SAE_ID_count}) SAEs",
                             [{"max_SAE_ID_count": limits.max_SAE_ID_count}])
        if len(set(extra)) != len(extra) or not all(extra):
            raise BadRequest("additional_slave_SAE_IDs must name distinct, non-empty SAE IDs")
    mandatory = _object_list(body, "extension_mandatory")
    _object_list(body, "extension_optional")
    unsupported = [name for ext in mandatory for name in ext]
    if unsupported:
        raise BadRequest("not all extension_mandatory parameters are supported",
                         [{"extension_mandatory_unsupported": f"{name} is not supported"}
                          for name in unsupported])
    return KeyRequest(limits.check_number(1 if number is None else number),
                      limits.check_size(DEFAULT_KEY_SIZE if size is None else size),
                      tuple(extra or ()))


def _query_value(query: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = query.get(name, ())
    if len(values) > 1:
        raise BadRequest(f"{name} is given more than once")
    return values[0] if values else None


def _query_int(query: Mapping[str, Sequence[str]], name: str) -> int | None:
    text = _query_value(query, name)
    if text is None:
        return None
    if not _DIGITS.fullmatch(text):
        raise BadRequest(f"{name} must be a positive integer")
    return int(text)


def parse_key_request_query(query: Mapping[str, Sequence[str]], limits: KMELimits) -> KeyRequest:
    """The GET form of Get key: ``?number=&size=`` (both optional)."""
    number = _query_int(query, "number")
    size = _query_int(query, "size")
    return KeyRequest(limits.check_number(1 if number is None else number),
                      limits.check_size(DEFAULT_KEY_SIZE if size is None else size))


@dataclass(frozen=True)
class KeyIDRef:
    """One key named in Get key with key IDs: its ``key_ID``, and, when the request
    carries this KME's ``key_ID_extension``, the size and unit IDs it claims (the
    KME checks them against the key's reservation)."""

    key_id: str
    size: int | None = None
    units: tuple[str, ...] | None = None


def _uuid(value: Any) -> str:
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise _key_id_error("key_ID must be a UUID string", "format")
    return value.lower()


def _parse_ref(item: Any, limits: KMELimits) -> KeyIDRef:
    if not isinstance(item, dict):
        raise _key_id_error("each entry of key_IDs must be an object", "format")
    key_id = _uuid(item.get("key_ID"))
    ext = item.get("key_ID_extension")
    if ext is None:
        return KeyIDRef(key_id)
    if not isinstance(ext, dict) or set(ext) != {EXT_SIZE, EXT_UNITS}:
        raise _key_id_error(f"key_ID_extension must be an object with exactly {EXT_SIZE!r} "
                            f"and {EXT_UNITS!r}", "extension")
    size = _integer(ext[EXT_SIZE])
    if size is None:
        raise _key_id_error(f"key_ID_extension {EXT_SIZE} must be an integer", "extension")
    limits.check_size(size, key_id=True)
    units = ext[EXT_UNITS]
    if not isinstance(units, list):
        raise _key_id_error(f"key_ID_extension {EXT_UNITS} must be an array", "extension")
    if len(units) != units_for(size) - 1:
        raise _key_id_error(f"a {size}-bit key has {units_for(size) - 1} further unit IDs, "
                            f"the request names {len(units)}", "extension")
    return KeyIDRef(key_id, size, (key_id, *(_uuid(u) for u in units)))


def _check_refs(refs: list[KeyIDRef], limits: KMELimits) -> list[KeyIDRef]:
    if not refs:
        raise BadRequest("key_IDs must name at least one key")
    if len(refs) > limits.max_key_per_request:
        raise BadRequest(f"at most max_key_per_request ({limits.max_key_per_request}) keys "
                         "per request")
    flat = [u for ref in refs for u in (ref.units or (ref.key_id,))]
    if len(set(flat)) != len(flat):
        raise _key_id_error("a key ID appears twice in the request", "duplicate")
    return refs


def parse_key_ids(body: Any, limits: KMELimits) -> list[KeyIDRef]:
    """The Key IDs data format (clause 6.4), with this KME's ``key_ID_extension``."""
    if not isinstance(body, dict):
        raise BadRequest("the request must be a JSON object with key_IDs")
    items = body.get("key_IDs")
    if not isinstance(items, list):
        raise BadRequest("key_IDs must be an array")
    ext = body.get("key_IDs_extension")
    if ext is not None and not isinstance(ext, dict):
        raise BadRequest("key_IDs_extension must be an object")
    if len(items) > limits.max_key_per_request:
        raise BadRequest(f"at most max_key_per_request ({limits.max_key_per_request}) keys "
                         "per request")
    return _check_refs([_parse_ref(item, limits) for item in items], limits)


def parse_key_ids_query(query: Mapping[str, Sequence[str]], limits: KMELimits) -> list[KeyIDRef]:
    """The GET form of Get key with key IDs: ``?key_ID=`` (one key, of whatever size
    it was reserved with)."""
    key_id = _query_value(query, "key_ID")
    if key_id is None:
        raise BadRequest("key_ID is required")
    return _check_refs([KeyIDRef(_uuid(key_id))], limits)


def key_id_extension(key: DeliveredKey) -> dict[str, Any] | None:
    """This KME's ``key_ID_extension`` for a key, or ``None`` for a default-size key."""
    if key.size_bits == DEFAULT_KEY_SIZE and not key.extension:
        return None
    return {EXT_SIZE: key.size_bits, EXT_UNITS: list(key.extension)}


def key_container(keys: Sequence[DeliveredKey]) -> dict[str, Any]:
    """The Key container data format (clause 6.3), keys in base64 (RFC 4648)."""
    out: list[dict[str, Any]] = []
    for key in keys:
        entry: dict[str, Any] = {"key_ID": key.key_id}
        ext = key_id_extension(key)
        if ext is not None:
            entry["key_ID_extension"] = ext
        entry["key"] = base64.b64encode(key.key).decode("ascii")
        out.append(entry)
    return {"keys": out}


def status_body(*, source_kme: str, target_kme: str, master_sae: str, slave_sae: str,
                available_units: int, limits: KMELimits) -> dict[str, Any]:
    """The Status data format (clause 6.1).

    ``stored_key_count`` counts keys of the default ``key_size`` (one store unit each).
    The store has no fixed capacity, so ``max_key_count`` is the configured nominal
    ceiling, raised to ``stored_key_count`` if the pool holds more.
    """
    return {
        "source_KME_ID": source_kme,
        "target_KME_ID": target_kme,
        "master_SAE_ID": master_sae,
        "slave_SAE_ID": slave_sae,
        "key_size": DEFAULT_KEY_SIZE,
        "stored_key_count": available_units,
        "max_key_count": max(limits.max_key_count, available_units),
        "max_key_per_request": limits.max_key_per_request,
        "max_key_size": limits.max_key_size,
        "min_key_size": limits.min_key_size,
        "max_SAE_ID_count": limits.max_SAE_ID_count,
    }
