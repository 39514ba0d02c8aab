"""The classical channel as the networked link uses it: authenticated frames, plus what
the link must see as messages go by.

:class:`LinkChannel` is an :class:`~hybridkex.qkd.distillation.channel.AuthenticatedChannel`
that counts round trips (a message received after one sent), remembers the type of the
error that ended a round (``failure``), and lets the link look at
each message once it has been authenticated and decoded (``on_receive``), before the
distillation step that asked for it goes on: Alice's end fills her record at the slots
Bob's sifting message names, Bob's end checks that the hello names the pulse train he
was told about.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hybridkex.qkd.distillation.channel import AuthenticatedChannel
from hybridkex.qkd.distillation.messages import Message
from hybridkex.qkd.errors import LinkAborted

__all__ = ["LinkChannel"]


@dataclass
class LinkChannel(AuthenticatedChannel):
    on_receive: Callable[[Message], None] | None = None
    round_trips: int = 0
    failure: str = ""  # the type of the first LinkAborted this end raised or received
    _sent_last: bool = False

    def send(self, message: Message, *, deferred: bool = False) -> None:
        super().send(message, deferred=deferred)
        self._sent_last = True

    def recv_any(self, kinds: Mapping[type[Message], bool]) -> Message:
        try:
            message = super().recv_any(kinds)
            if self._sent_last:
                self.round_trips += 1
                self._sent_last = False
            if self.on_receive is not None:
                self.on_receive(message)
        except LinkAborted as exc:
            self.failure = self.failure or type(exc).__name__
            raise
        return message
