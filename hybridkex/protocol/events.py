"""What a connection reports to its application, one event at a time (as h11 does)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from hybridkex.keydelivery.request import KeyRequest
    from hybridkex.protocol.session import SessionInfo

__all__ = [
    "NEED_DATA",
    "ConnectionClosed",
    "DataReceived",
    "Event",
    "HandshakeComplete",
    "KeyUpdated",
    "NeedData",
    "QKDKeysNeeded",
]


class NeedData:
    """Nothing more can happen until more bytes arrive from the peer."""

    _instance: NeedData | None = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


@dataclass(frozen=True)
class HandshakeComplete:
    """Both sides are authenticated and application data may flow."""

    session: SessionInfo


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Application data, authenticated and in order."""

    data: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"DataReceived(<{len(self.data)} bytes>)"


_new_event = object.__new__
_set_data = DataReceived.__dict__["data"].__set__  # the slot, under the frozen __setattr__


def data_received(data: bytes) -> DataReceived:
    """``DataReceived(data)`` without the frozen dataclass's ``__init__`` (a Python
    frame and a guarded ``object.__setattr__``, 0.24 µs): the record layer makes one
    event per record.  Equal to the dataclass-built event in every respect (same
    class, same slot)."""
    event = _new_event(DataReceived)
    _set_data(event, data)
    return event


def data_received_events(plaintexts: Iterable[bytes]) -> list[DataReceived]:
    """:func:`data_received` of each, in one loop (a run of records opened at once)."""
    events = []
    for data in plaintexts:
        event = _new_event(DataReceived)
        _set_data(event, data)
        events.append(event)
    return events


@dataclass(frozen=True)
class KeyUpdated:
    """Traffic keys changed.  ``kind`` "key-update": the peer's KeyUpdate moved the
    receiving key on (``direction`` "receive"; if it asked, this side's sending key moved
    too).  ``kind`` "qkd-rekey": a fresh QKD key was mixed into both directions
    (``direction`` "both"), started by the peer (``by_peer``) or by this side, in which
    case the event marks the peer's acknowledgement."""

    kind: str
    direction: str
    by_peer: bool
    qkd_key_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class QKDKeysNeeded:
    """The connection waits for QKD keys (only with ``key_events=True``): make
    ``request`` on the key source, then answer ``supply_keys(keys)`` or, if the source
    failed, ``refuse_keys(error)``.  Until then ``next_event()`` returns this event
    again, and nothing more is processed (as h11 pauses)."""

    request: KeyRequest


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer sent close_notify: everything it sent has arrived."""


Event = HandshakeComplete | DataReceived | KeyUpdated | QKDKeysNeeded | ConnectionClosed
