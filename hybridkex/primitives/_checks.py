"""Input checks shared by every wrapper: one place that turns bad input into typed errors."""

from __future__ import annotations

from typing import TypeVar

from hybridkex.errors import InvalidParameter

_E = TypeVar("_E", bound=InvalidParameter)

Bytes = bytes | bytearray | memoryview
_BYTES_LIKE = (bytes, bytearray, memoryview)


def as_bytes(
    value: object,
    what: str,
    size: int | None = None,
    *,
    error: type[_E] | type[InvalidParameter] = InvalidParameter,
) -> bytes:
    """Return ``value`` as ``bytes``, or raise ``error`` naming ``what`` and the expected size.

    Only lengths appear in the message, never content, so a key can pass through here.
    """
    if type(value) is bytes:  # the common case, without a copy
        data = value
    elif isinstance(value, _BYTES_LIKE):
        data = bytes(value)
    else:
        raise error(f"{what} must be bytes, not {type(value).__name__}")
    if size is not None and len(data) != size:
        raise error(f"{what} must be {size} bytes, got {len(data)}")
    return data


def check_length(length: object, what: str, maximum: int) -> int:
    """Validate an output length request (a positive int no larger than ``maximum``)."""
    if not isinstance(length, int) or isinstance(length, bool):
        raise InvalidParameter(f"{what} must be an int, not {type(length).__name__}")
    if not 1 <= length <= maximum:
        raise InvalidParameter(f"{what} must be between 1 and {maximum}, got {length}")
    return length
