"""Real TLS 1.3 through pyOpenSSL, with the surface of :mod:`hybridkex.transport`.

Two modes (docs/tls.md):

* ``"certificate"``: a hybrid key-exchange group (X25519MLKEM768 by default) and X.509
  certificates (ML-DSA, Ed25519, ECDSA-P256) checked against the site's trust anchors;
* ``"qkd-psk"``: a QKD pool key as the TLS 1.3 external PSK, mixed with the hybrid key
  share (psk_dhe_ke); the PSK alone authenticates the two sites.

>>> ctx = TLSContext("site-a", identity=identity, trust=trust)
>>> with ctx.wrap_socket(socket.create_connection(addr), peer="site-b") as s: ...

Blocking sockets: :meth:`TLSContext.wrap_socket` -> :class:`TLSSocket`.  Streams:
:func:`hybridkex.tls.asyncio.open_connection` and ``start_server``.  Needs the ``tls``
extra (``pip install 'hybridkex[tls]'``: pyOpenSSL >= 26 on cryptography >= 50).
"""

from hybridkex.errors import BackendUnavailable

try:
    import OpenSSL.SSL as _SSL
except ImportError:  # pragma: no cover - the tls extra is missing
    raise BackendUnavailable(
        "hybridkex.tls needs pyOpenSSL >= 26: pip install 'hybridkex[tls]'") from None

if not hasattr(_SSL.Connection, "get_group_name"):  # pragma: no cover
    raise BackendUnavailable("hybridkex.tls needs pyOpenSSL >= 26: pip install 'hybridkex[tls]'")

from hybridkex.tls.connection import TLSConnection, TLSState
from hybridkex.tls.context import (
    DEFAULT_GROUPS,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_PSK_CIPHERSUITE,
    TLSContext,
)
from hybridkex.tls.errors import (
    PSKNotUsed,
    QKDKeyUnavailable,
    TLSAlertReceived,
    TLSConfigurationError,
    TLSConnectionTruncated,
    TLSError,
    TLSHandshakeTimeout,
    TLSNegotiationFailed,
    TLSPeerAuthenticationFailed,
    TLSProtocolError,
    TLSQKDKeyRefused,
    TLSRecordAuthenticationFailed,
    UnknownGroup,
)
from hybridkex.tls.session import GROUPS, MODES, PSK_CIPHERSUITES, TLSSessionInfo
from hybridkex.tls.socket import TLSSocket

__all__ = [
    "DEFAULT_GROUPS",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_PSK_CIPHERSUITE",
    "GROUPS",
    "MODES",
    "PSK_CIPHERSUITES",
    "PSKNotUsed",
    "QKDKeyUnavailable",
    "TLSAlertReceived",
    "TLSConfigurationError",
    "TLSConnection",
    "TLSConnectionTruncated",
    "TLSContext",
    "TLSError",
    "TLSHandshakeTimeout",
    "TLSNegotiationFailed",
    "TLSPeerAuthenticationFailed",
    "TLSProtocolError",
    "TLSQKDKeyRefused",
    "TLSRecordAuthenticationFailed",
    "TLSSessionInfo",
    "TLSSocket",
    "TLSState",
    "UnknownGroup",
]
