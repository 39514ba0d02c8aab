"""Secure sockets over HKX/1: blocking (:class:`SecureSocket`) here, asyncio streams in
:mod:`hybridkex.asyncio`.  Both drive the sans-IO :mod:`hybridkex.protocol`.
:mod:`hybridkex.transport.forward` carries TCP applications over channels (HKX/1 or
TLS 1.3), stunnel-style: the server and local forwarder behind ``hybridkex serve
--forward`` and ``hybridkex connect --listen-local``."""

from hybridkex.transport.context import DEFAULT_HANDSHAKE_TIMEOUT, Context
from hybridkex.transport.socket import SecureSocket

__all__ = ["DEFAULT_HANDSHAKE_TIMEOUT", "Context", "SecureSocket"]
