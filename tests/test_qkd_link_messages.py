"""The networked link's own classical messages (hybridkex.qkd.network.control): each
round-trips, and truncation, trailing bytes and out-of-range values are refused with
MalformedMessage."""

from __future__ import annotations

from typing import Any

import pytest

from hybridkex.qkd.errors import MalformedMessage
from hybridkex.qkd.network.control import (
    Bye,
    Commit,
    Done,
    JournalEntry,
    LinkHello,
    LinkState,
    Prepared,
    Ready,
    Release,
    RoundStart,
)

ID = bytes(range(16))
LINK_MESSAGES: list[Any] = [
    LinkHello(ID, "site-a", "site-b"),
    LinkState(ID, (JournalEntry(ID, 1, bytes(32)), JournalEntry(bytes(16), 3, b"\x01" * 32))),
    RoundStart(ID, 500_000_000, 25.0, 7),
    Bye("Alice stops"),
    Prepared(ID, bytes(32)),
    Commit((ID, bytes(16)), True),
    Ready((ID,)),
    Release(()),
    Done((ID, b"\xff" * 16)),
]


@pytest.mark.parametrize("message", LINK_MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip_and_strictness(message: Any) -> None:
    raw = message.encode()
    assert type(message).decode(raw) == message
    with pytest.raises(MalformedMessage):
        type(message).decode(raw + b"\x00")
    for cut in range(len(raw)):
        try:
            decoded = type(message).decode(raw[:cut])
        except MalformedMessage:
            continue
        assert decoded != message  # a shorter encoding never decodes to the same message


@pytest.mark.parametrize("raw_and_kind", [
    (LinkHello(ID[:15], "a", "b").encode(), LinkHello),
    (LinkHello(ID, "", "b").encode(), LinkHello),
    (LinkHello(ID, "a" * 64, "b").encode(), LinkHello),
    (RoundStart(ID, 0, 25.0, 1).encode(), RoundStart),
    (RoundStart(ID, 10, -1.0, 1).encode(), RoundStart),
    (RoundStart(ID, 10, float("nan"), 1).encode(), RoundStart),
    (Prepared(ID, bytes(31)).encode(), Prepared),
    (Commit((ID, ID), False).encode(), Commit),
    (b"\x02" + Commit((), False).encode()[1:], Commit),
    (Ready((ID[:8],)).encode(), Ready),
    (LinkState(ID, (JournalEntry(ID, 1, bytes(32)), JournalEntry(ID, 2, bytes(32)))).encode(),
     LinkState),
])
def test_bad_values_are_refused(raw_and_kind: tuple[bytes, Any]) -> None:
    raw, kind = raw_and_kind
    with pytest.raises(MalformedMessage):
        kind.decode(raw)
