"""The errors :mod:`hybridkex.tls` raises.

Each derives from :class:`TLSError` and from the :mod:`hybridkex.errors` class with the
same meaning for HKX/1, so code that handles HKX/1 failures (``except ProtocolError``,
``except PeerAuthenticationFailed``, ``except HandshakeTimeout``) handles TLS failures
the same way.  ``alert`` is the TLS alert that ended the connection, sent or received,
when there was one (TLS and HKX/1 share the alert numbers they both define).
Messages never carry key material.
"""

from __future__ import annotations

from hybridkex.errors import (
    AlertReceived,
    ConnectionTruncated,
    HandshakeTimeout,
    HybridKexError,
    InvalidParameter,
    PeerAuthenticationFailed,
    PolicyViolation,
    ProtocolError,
    QKDKeyRefused,
    RecordAuthenticationFailed,
    UnknownAlgorithm,
)

__all__ = [
    "PSKNotUsed",
    "QKDKeyUnavailable",
    "TLSAlertReceived",
    "TLSConfigurationError",
    "TLSConnectionTruncated",
    "TLSError",
    "TLSHandshakeTimeout",
    "TLSNegotiationFailed",
    "TLSPeerAuthenticationFailed",
    "TLSProtocolError",
    "TLSQKDKeyRefused",
    "TLSRecordAuthenticationFailed",
    "UnknownGroup",
]


class TLSError(HybridKexError):
    """Base class of every error raised by :mod:`hybridkex.tls`."""


class UnknownGroup(TLSError, UnknownAlgorithm):
    """A key-exchange group that hybridkex.tls does not offer (only the hybrid and pure
    ML-KEM groups are; a classical group is refused, not silently accepted)."""


class TLSConfigurationError(TLSError, InvalidParameter):
    """A TLS context cannot be built as asked: a missing identity, trust anchor or key
    source, an identity TLS cannot present, or a role the context was not made for."""


class TLSProtocolError(TLSError, ProtocolError):
    """The TLS connection failed: OpenSSL ended the handshake or the session, or a check
    hybridkex makes after the handshake refused it.  The connection is closed."""


class TLSPeerAuthenticationFailed(TLSProtocolError, PeerAuthenticationFailed):
    """The peer's certificate did not verify against the trust anchors, does not name the
    expected site, holds a key hybridkex does not accept, or was missing; or its
    signature or Finished (in PSK mode: the PSK binder) did not verify."""


class TLSNegotiationFailed(TLSProtocolError, PolicyViolation):
    """The session would be weaker than configured: no group or ciphersuite in common,
    or (a check after the handshake) a group that is not one of the configured ones."""


class PSKNotUsed(TLSNegotiationFailed):
    """qkd-psk mode, but the handshake did not use the QKD key as its PSK
    (``SSL_session_reused`` was not 1).  Never accepted as a certificate handshake."""


class QKDKeyUnavailable(TLSProtocolError, PolicyViolation):
    """qkd-psk mode, and this side could not take a QKD key for the PSK from its key
    source (the source's error is the ``__cause__``).  Nothing was sent."""


class TLSQKDKeyRefused(TLSProtocolError, QKDKeyRefused):
    """The QKD key the client named as its PSK identity could not be fetched: unknown,
    already delivered (a replay), not shared with an accepted peer, or malformed."""


class TLSRecordAuthenticationFailed(TLSProtocolError, RecordAuthenticationFailed):
    """A protected record did not decrypt (tampered, reordered, replayed or cut)."""


class TLSAlertReceived(TLSProtocolError, AlertReceived):
    """The peer ended the connection with a fatal TLS alert (``alert``)."""


class TLSConnectionTruncated(TLSProtocolError, ConnectionTruncated):
    """The transport ended without a TLS close_notify: data may have been cut off."""


class TLSHandshakeTimeout(TLSError, HandshakeTimeout):
    """The TLS handshake did not complete within its time limit; the connection is
    closed."""
