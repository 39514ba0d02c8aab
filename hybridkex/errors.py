"""The exception hierarchy.

Every error hybridkex raises derives from :class:`HybridKexError`, so a caller can
catch the library's failures without catching programming errors.  Messages name
what was wrong (an algorithm, a length, a field) and never carry key material.
"""

from __future__ import annotations

__all__ = [
    "AlertReceived",
    "AuthenticationFailed",
    "BackendUnavailable",
    "CombinerError",
    "ConnectionTruncated",
    "DecodeError",
    "HandshakeTimeout",
    "HybridKexError",
    "InvalidCiphertext",
    "InvalidKey",
    "InvalidParameter",
    "LocalProtocolError",
    "PeerAuthenticationFailed",
    "PolicyViolation",
    "ProtocolError",
    "QKDKeyRefused",
    "RecordAuthenticationFailed",
    "RemoteProtocolError",
    "ReplayDetected",
    "UnexpectedMessage",
    "UnknownAlgorithm",
]


class HybridKexError(Exception):
    """Base class of every error raised by hybridkex."""


class UnknownAlgorithm(HybridKexError, LookupError):
    """No algorithm of that kind is known under that name."""


class BackendUnavailable(HybridKexError):
    """The algorithm exists, but the backend that provides it is not installed.

    The message names what to install; nothing is downloaded or built on the fly.
    """


class InvalidParameter(HybridKexError, ValueError):
    """An argument has the wrong type, length or range (seed, context, nonce, length)."""


class InvalidKey(InvalidParameter):
    """Key bytes that do not decode as a key of the requested algorithm."""


class InvalidCiphertext(InvalidParameter):
    """A KEM ciphertext that fails the standard's input check (for example its length).

    A well-formed but wrong ciphertext does not raise this: ML-KEM answers it with
    an implicit-rejection secret, as FIPS 203 requires.
    """


class AuthenticationFailed(HybridKexError):
    """An AEAD tag or a MAC did not verify.  Nothing of the message is released."""


class CombinerError(InvalidParameter):
    """The inputs to a KDF combiner are missing, empty, duplicated or malformed."""


class ProtocolError(HybridKexError):
    """A connection failed: the handshake or the session cannot go on.

    As in h11, two kinds: :class:`LocalProtocolError` (this side used the connection
    wrongly) and :class:`RemoteProtocolError` (the peer sent something it must not, or
    nothing at all).  :class:`PolicyViolation` derives from this base directly: a
    session refused because it would be too weak is refused whichever side is short.

    ``alert`` is the HKX/1 alert code that ends the connection (the one sent to the
    peer, or the one received from it).  A connection that raised this is in its
    ERROR state and never leaves it.
    """

    alert: int = 80  # internal_error, overridden by every subclass

    def __init__(self, message: str, alert: int | None = None) -> None:
        super().__init__(message)
        if alert is not None:
            self.alert = alert


class LocalProtocolError(ProtocolError):
    """This side used a connection wrongly (sent data before the handshake finished, asked
    for a re-key while one is in flight, ...).  Nothing was sent because of it."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol: a malformed, unexpected or unauthenticated message,
    an alert, or the transport ending early."""


class DecodeError(RemoteProtocolError):
    """A message or record is malformed: a length, a field or a value out of range."""

    alert = 50  # decode_error


class UnexpectedMessage(RemoteProtocolError):
    """A message arrived in a state that does not allow it."""

    alert = 10  # unexpected_message


class PeerAuthenticationFailed(RemoteProtocolError):
    """The peer did not prove who it is: an untrusted or wrong identity, or a signature,
    one-time MAC, binder or Finished that does not verify."""

    alert = 51  # decrypt_error


class RecordAuthenticationFailed(RemoteProtocolError):
    """A protected record's tag did not verify: tampered, reordered, replayed or cut."""

    alert = 20  # bad_record_mac


class PolicyViolation(ProtocolError):
    """The session would be weaker than this side's policy allows (no QKD key, no
    post-quantum KEM, no common suite, an unaccepted authentication mode)."""

    alert = 71  # insufficient_security


class QKDKeyRefused(RemoteProtocolError):
    """The QKD keys named by the peer could not be fetched: unknown, already delivered
    (a replay) or not shared with that peer.  They are consumed all the same."""

    alert = 200  # qkd_key_unavailable


class ReplayDetected(RemoteProtocolError):
    """A ClientHello was seen before."""

    alert = 202  # replay_detected


class AlertReceived(RemoteProtocolError):
    """The peer ended the connection with a fatal alert."""


class ConnectionTruncated(RemoteProtocolError):
    """The transport ended without a close_notify: data may have been cut off."""

    alert = 0


class HandshakeTimeout(HybridKexError, TimeoutError):
    """The handshake did not complete within its time limit; the connection is closed."""
