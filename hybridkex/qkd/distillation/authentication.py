"""Authentication of the QKD classical channel.

QKD is secure only over an authenticated classical channel: an attacker who can
forge messages can sit in the middle and read every key.  Two authenticators:

- :class:`SignatureAuthenticator` for the first distillation round of a link
  (bootstrap): every tagged frame is signed with the sender's identity key (ML-DSA-65
  by default) and verified against the peer's pinned public key.  It spends no key,
  and it is the one part of the channel that rests on computational assumptions: the
  signature scheme's unforgeability and, for the deferred frames a signature covers,
  the collision resistance of SHA-256 (see :class:`SignatureAuthenticator`).
- :class:`WegmanCarterAuthenticator` for every later round: a Wegman-Carter MAC
  with Poly1305 as the universal hash.  Per round and direction one 128-bit hash key
  ``r`` is drawn from the authentication pool; every tagged frame gets a fresh 128-bit
  one-time pad ``s``, so the Poly1305 key is ``r || s_i``.  This is the
  Poly1305-AES construction with the AES output replaced by pad bits drawn from
  distilled QKD key, which makes the forgery bound information-theoretic: about
  8 ceil(L/16) / 2^106 for an L-byte input.  The input is the frame itself, preceded
  by every deferred frame it covers, byte for byte (no hash of them): the universal
  hash sees everything it authenticates.  Every bit drawn is counted.

A tag is built by a :class:`RunningTag`: the deferred frames since the last tagged
frame in that direction are fed to it as they pass (:meth:`RunningTag.cover`), and the
tagged frame ends it (:meth:`RunningTag.seal` to send, :meth:`RunningTag.check` to
receive).  Each direction has at most one running tag at a time.

Both parties draw from the pool in the same order.  The pool is split in two halves,
one per direction, so the order of messages in the two directions does not matter.
"""

from __future__ import annotations

import abc

from cryptography.hazmat.primitives import hashes

from hybridkex import primitives
from hybridkex.errors import InvalidParameter
from hybridkex.primitives.symmetric import Poly1305, Poly1305Stream
from hybridkex.qkd.ends import Role
from hybridkex.qkd.errors import AuthKeysExhausted

__all__ = [
    "AuthKeyPool",
    "MessageAuthenticator",
    "RunningTag",
    "SignatureAuthenticator",
    "WegmanCarterAuthenticator",
]

SIGNATURE_CONTEXT = b"hybridkex qkd classical channel v1"


class AuthKeyPool:
    """Key bits reserved for authentication; each byte is handed out once."""

    def __init__(self, material: bytes = b"") -> None:
        self._buffer = bytearray(material)
        self._position = 0
        self.consumed_bits = 0

    @property
    def remaining_bits(self) -> int:
        return 8 * (len(self._buffer) - self._position)

    def extend(self, material: bytes) -> None:
        self._buffer += material

    def draw(self, n_bytes: int) -> bytes:
        if len(self._buffer) - self._position < n_bytes:
            raise AuthKeysExhausted("the authentication key pool is exhausted")
        start, self._position = self._position, self._position + n_bytes
        out = bytes(self._buffer[start:self._position])
        self._buffer[start:self._position] = bytes(n_bytes)
        self.consumed_bits += 8 * n_bytes
        return out

    def take_remaining(self) -> bytes:
        """Move the undrawn bits out (they are not spent, so not counted)."""
        out = bytes(self._buffer[self._position:])
        self._buffer[self._position:] = bytes(len(out))
        self._position = len(self._buffer)
        return out

    def split(self) -> tuple[AuthKeyPool, AuthKeyPool]:
        """Two disjoint pools (first half, second half); this pool is emptied."""
        material = self.take_remaining()
        half = len(material) // 2
        return AuthKeyPool(material[:half]), AuthKeyPool(material[half:])

    def __repr__(self) -> str:
        return f"<AuthKeyPool {self.remaining_bits} bits left>"


class RunningTag(abc.ABC):
    """The tag of one tagged frame, over the deferred frames before it and the frame itself.

    Frames are self-delimiting (each header states its payload length), so the run of
    frames a tag covers parses one way only.
    """

    @abc.abstractmethod
    def cover(self, frame: bytes) -> None:
        """A deferred frame this tag will cover, in the order sent or received."""

    @abc.abstractmethod
    def seal(self, frame: bytes) -> bytes:
        """The tag of everything covered, then ``frame`` (the sender's side)."""

    @abc.abstractmethod
    def check(self, frame: bytes, tag: bytes) -> bool:
        """Whether ``tag`` is the tag of everything covered, then ``frame`` (the receiver's
        side; constant time)."""


class MessageAuthenticator(abc.ABC):
    """Starts the running tags of what this party sends and of what the peer sends."""

    kind: str

    @abc.abstractmethod
    def outgoing(self) -> RunningTag:
        """The running tag of the next tagged frame this party sends."""

    @abc.abstractmethod
    def incoming(self) -> RunningTag:
        """The running tag of the next tagged frame the peer sends."""

    def tag(self, data: bytes) -> bytes:
        """The tag of a frame that covers no deferred frame."""
        return self.outgoing().seal(data)

    def verify(self, data: bytes, tag: bytes) -> bool:
        """Whether ``tag`` is valid for a frame that covers no deferred frame."""
        return self.incoming().check(data, tag)

    @property
    @abc.abstractmethod
    def bits_consumed(self) -> int:
        """Key bits this party has spent on authentication so far."""


class _SignedRun(RunningTag):
    """The frame is signed together with the SHA-256 hash of the deferred frames before it.

    A signature is computational anyway, and its schemes take the message whole; hashing
    the deferred frames adds one assumption, the collision resistance of SHA-256, which
    the Wegman-Carter rounds do not need."""

    def __init__(self, authenticator: SignatureAuthenticator) -> None:
        self._authenticator = authenticator
        self._deferred = hashes.Hash(hashes.SHA256())

    def cover(self, frame: bytes) -> None:
        self._deferred.update(frame)

    def seal(self, frame: bytes) -> bytes:
        return self._authenticator.sign(frame + self._deferred.finalize())

    def check(self, frame: bytes, tag: bytes) -> bool:
        return self._authenticator.check(frame + self._deferred.finalize(), tag)


class SignatureAuthenticator(MessageAuthenticator):
    """Every tagged frame signed by its sender; no key bits spent.

    ``peer_scheme`` is the scheme of the peer's key when it differs from this side's
    (two sites need not sign with the same scheme); by default the same as ``scheme``.
    """

    kind = "signature"

    def __init__(self, scheme: str, own_private: bytes, peer_public: bytes,
                 peer_scheme: str | None = None) -> None:
        self._scheme = primitives.signature(scheme)
        self._peer_scheme = primitives.signature(peer_scheme or scheme)
        self._private = own_private
        self._peer_public = peer_public

    def outgoing(self) -> RunningTag:
        return _SignedRun(self)

    def incoming(self) -> RunningTag:
        return _SignedRun(self)

    def sign(self, data: bytes) -> bytes:
        """This site's signature over ``data``."""
        return self._scheme.sign(self._private, data, _context(self._scheme))

    def check(self, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is the peer's over ``data``."""
        return self._peer_scheme.verify(self._peer_public, data, signature,
                                        _context(self._peer_scheme))

    @property
    def bits_consumed(self) -> int:
        return 0


def _context(scheme: primitives.SignatureScheme) -> bytes:
    return SIGNATURE_CONTEXT if scheme.max_context else b""


class _PolyRun(RunningTag):
    """Poly1305 under ``r || s`` over the deferred frames and the frame, streamed."""

    def __init__(self, stream: Poly1305Stream) -> None:
        self._stream = stream

    def cover(self, frame: bytes) -> None:
        self._stream.update(frame)

    def seal(self, frame: bytes) -> bytes:
        self._stream.update(frame)
        return self._stream.finalize()

    def check(self, frame: bytes, tag: bytes) -> bool:
        self._stream.update(frame)
        return self._stream.verify(tag)


class WegmanCarterAuthenticator(MessageAuthenticator):
    """Poly1305 with a per-round hash key and a one-time pad per tag, from QKD key."""

    kind = "wegman-carter-poly1305"
    HASH_KEY_BYTES = 16
    PAD_BYTES = 16

    def __init__(self, pool: AuthKeyPool, role: Role) -> None:
        if not isinstance(role, Role):
            raise InvalidParameter("role must be Role.ALICE or Role.BOB")
        alice_to_bob, bob_to_alice = pool.split()
        self._send, self._receive = ((alice_to_bob, bob_to_alice) if role is Role.ALICE
                                     else (bob_to_alice, alice_to_bob))
        self._role = role
        self._send_r: bytes | None = None
        self._receive_r: bytes | None = None
        mac = primitives.mac("Poly1305")
        assert isinstance(mac, Poly1305)
        self._mac = mac

    def _key(self, pool: AuthKeyPool, r: bytes | None) -> tuple[bytes, bytes]:
        if r is None:
            r = pool.draw(self.HASH_KEY_BYTES)
        return r, r + pool.draw(self.PAD_BYTES)

    def outgoing(self) -> RunningTag:
        self._send_r, key = self._key(self._send, self._send_r)
        return _PolyRun(self._mac.stream(key))

    def incoming(self) -> RunningTag:
        self._receive_r, key = self._key(self._receive, self._receive_r)
        return _PolyRun(self._mac.stream(key))

    @property
    def bits_consumed(self) -> int:
        return self._send.consumed_bits + self._receive.consumed_bits

    @property
    def remaining_bits(self) -> int:
        return self._send.remaining_bits + self._receive.remaining_bits

    def leftover(self) -> bytes:
        """The undrawn bits, in the same order on both sides (A->B half, then B->A half),
        to carry into the next round's pool.  Only valid after a round both sides
        completed: after an abort the two sides may have drawn different amounts."""
        alice_to_bob, bob_to_alice = ((self._send, self._receive) if self._role is Role.ALICE
                                      else (self._receive, self._send))
        return alice_to_bob.take_remaining() + bob_to_alice.take_remaining()
