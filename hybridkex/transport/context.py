"""A site's settings for secure sockets, in the shape of ``ssl.SSLContext``."""

from __future__ import annotations

import socket
from typing import Any

from hybridkex.errors import InvalidParameter
from hybridkex.protocol import ClientConnection, Config, Connection, ServerConnection
from hybridkex.transport.socket import SecureSocket

__all__ = ["DEFAULT_HANDSHAKE_TIMEOUT", "Context"]

DEFAULT_HANDSHAKE_TIMEOUT = 30.0


class Context:
    """Everything a site's connections share: its name, signing identity, trust, QKD key
    source, security policy and suites (a :class:`hybridkex.protocol.Config`), plus the
    handshake time limit.  Keyword arguments are :class:`~hybridkex.protocol.Config`'s.

    >>> ctx = Context("site-a", key_source=source, identity=identity, trust=trust)
    >>> with ctx.wrap_socket(socket.create_connection(addr), peer="site-b") as s: ...
    """

    def __init__(self, site: str, *, handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
                 **config: Any) -> None:
        self.config = Config(site, **config)
        self.handshake_timeout = handshake_timeout

    @classmethod
    def from_config(cls, config: Config,
                    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT) -> Context:
        ctx = cls.__new__(cls)
        ctx.config = config
        ctx.handshake_timeout = handshake_timeout
        return ctx

    @property
    def site(self) -> str:
        return self.config.site

    def __repr__(self) -> str:
        return f"<hybridkex.Context site={self.site!r} policy={self.config.policy.value}>"

    def new_connection(self, server_side: bool, peer: str | None, *,
                       key_events: bool = False) -> Connection:
        """The sans-IO connection a wrapped socket or stream drives (``key_events``: it
        asks its driver for QKD keys instead of calling the key source)."""
        if server_side:
            if peer is not None:
                raise InvalidParameter(
                    "a server learns its peer from the ClientHello; pass no peer")
            return ServerConnection(self.config, key_events=key_events)
        if peer is None:
            raise InvalidParameter("a client must name the peer site it connects to (peer=...)")
        return ClientConnection(self.config, peer, key_events=key_events)

    def wrap_socket(self, sock: socket.socket, server_side: bool = False,
                    peer: str | None = None, *, handshake_timeout: float | None = None,
                    do_handshake_on_connect: bool = True) -> SecureSocket:
        """A :class:`~hybridkex.transport.socket.SecureSocket` over ``sock`` (which it owns
        from now on).  The handshake runs now unless ``do_handshake_on_connect`` is False."""
        timeout = self.handshake_timeout if handshake_timeout is None else handshake_timeout
        wrapped = SecureSocket(self, sock, server_side=server_side, peer=peer,
                               handshake_timeout=timeout)
        if do_handshake_on_connect:
            wrapped.do_handshake()
        return wrapped
