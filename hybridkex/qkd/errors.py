"""The QKD link's errors, all in one place.

A distillation round ends early in one way only: it raises :class:`LinkAborted`, neither
end keeps a key from the round, and the authentication key it spent stays spent.  The
subclasses say what kind of failure it was, so a caller (or a test) can tell a forged or
malformed message from a link that simply produced no key.

``reason`` is shown to users and sent to the peer in the ABORT message, so it names
what went wrong (a field, a count, a threshold) and never carries key material.
"""

from __future__ import annotations

from hybridkex.errors import HybridKexError

__all__ = [
    "AuthKeysExhausted",
    "CascadeError",
    "ChannelClosed",
    "FrameTooLarge",
    "JournalError",
    "LinkAborted",
    "MalformedMessage",
    "QuantumChannelError",
]


class LinkAborted(HybridKexError):
    """The distillation round was aborted; ``reason`` says why (never with key material)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MalformedMessage(LinkAborted):
    """A classical message does not decode: a length, a count or a value is out of range,
    or bytes are missing or left over."""


class ChannelClosed(LinkAborted):
    """The classical channel failed: the peer went away, a frame was too large, or no
    frame arrived in time."""


class FrameTooLarge(ChannelClosed):
    """The peer announced a frame larger than this end accepts from it (the channel's
    maximum, or less from a peer not yet authenticated)."""


class AuthKeysExhausted(LinkAborted):
    """The authentication pool has too few bits left to authenticate another message."""


class CascadeError(LinkAborted):
    """A Cascade message is malformed, out of order, out of range or inconsistent."""


class QuantumChannelError(LinkAborted):
    """The emulated quantum channel failed or carried something no light carries: a
    malformed, truncated or repeated pulse frame, a pulse train that never arrived
    whole, or a train whose length disagrees with what Alice announces."""


class JournalError(HybridKexError):
    """The link's deposit journal cannot be read or written (a damaged file, a full disk).
    Not a round's abort: without its journal an end cannot promise that a key is
    deposited at both ends or at neither, so the link stops."""
