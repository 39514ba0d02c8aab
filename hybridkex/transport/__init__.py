"""Secure sockets over HKX/1: blocking (:class:`SecureSocket`) here, asyncio streams in
:mod:`hybridkex.asyncio`.  Both drive the sans-IO :mod:`hybridkex.protocol`."""

from hybridkex.transport.context import DEFAULT_HANDSHAKE_TIMEOUT, Context
from hybridkex.transport.socket import SecureSocket

__all__ = ["DEFAULT_HANDSHAKE_TIMEOUT", "Context", "SecureSocket"]
