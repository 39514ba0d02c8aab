"""``hybridkex serve`` and ``hybridkex connect``: a channel between two sites, over HKX/1
or (``--tls``) over real TLS 1.3.

    hybridkex serve --site site-b --listen 127.0.0.1:4433 --echo
    echo hello | hybridkex connect 127.0.0.1:4433 --site site-a --verbose
    hybridkex serve --tls --tls-mode qkd-psk --site site-b --listen 127.0.0.1:4433 --echo

``connect`` sends its standard input through the channel and writes what comes back
to its standard output, like ``openssl s_client``.  ``serve`` answers many clients at
once (one thread each): with ``--echo`` it sends back what it receives, without it
writes what it receives to its standard output.  Both log to standard error, one
line per event, never key material.

One channel loop serves both transports: a :class:`Transport` wraps a connected socket
into a :class:`ChannelSocket` (:class:`~hybridkex.transport.SecureSocket` for HKX/1,
:class:`~hybridkex.tls.TLSSocket` for TLS) and tells the loop how to describe its
sessions.  ``hybridkex.tls`` (the ``tls`` extra, pyOpenSSL) is imported only for
``--tls``.  Exit status (docs/sites.md), the same for both transports:

    0  the channel closed cleanly (close_notify both ways)
    1  a local problem: the site directory, an argument's value, the key store
    2  command-line usage
    3  network: could not connect (refused, unreachable, timed out), or a socket
       error during the handshake
    4  the handshake failed (authentication, policy, QKD key refused, timeout)
    5  the session failed after the handshake (a record that does not authenticate,
       an alert, a connection cut without close_notify); nothing unauthenticated
       was written
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Generic, Protocol, TypeVar

from hybridkex.errors import (
    HandshakeTimeout,
    HybridKexError,
    InvalidParameter,
    LocalProtocolError,
    ProtocolError,
)
from hybridkex.protocol import SessionInfo
from hybridkex.protocol.identity import PeerIdentity
from hybridkex.protocol.suites import AlertDescription
from hybridkex.site import SIGNATURE_SCHEMES, Site
from hybridkex.transport import Context, SecureSocket

if TYPE_CHECKING:
    from hybridkex.tls import TLSContext, TLSSessionInfo, TLSSocket

EXIT_OK, EXIT_LOCAL, EXIT_USAGE, EXIT_NETWORK, EXIT_HANDSHAKE, EXIT_SESSION = 0, 1, 2, 3, 4, 5
_CHUNK = 1 << 16
TLS_MODES = ("certificate", "qkd-psk")
DEFAULT_TLS_GROUP = "X25519MLKEM768"  # hybridkex.tls.DEFAULT_GROUPS, without importing it


def register(sub: Any) -> None:
    s = sub.add_parser("serve", help="accept channels for a site (HKX/1, or TLS 1.3 with "
                       "--tls): echo, or data to stdout")
    s.add_argument("--site", required=True, metavar="DIR", help="the site directory")
    s.add_argument("--listen", required=True, metavar="HOST:PORT",
                   help="address to listen on ([::1]:PORT for IPv6; port 0 picks a free "
                   "one, printed on stderr as 'listening on HOST:PORT')")
    s.add_argument("--echo", action="store_true",
                   help="send every client's data back to it (default: write it to stdout)")
    s.add_argument("--once", action="store_true",
                   help="handle one connection, then exit with its status")
    s.add_argument("--auth", choices=["auto", "signature", "psk"],
                   help="HKX/1 only: authentication modes accepted (default: site.toml's "
                   "auth; auto accepts both)")
    s.add_argument("--timeout", type=float, metavar="S",
                   help="handshake time limit in seconds (default: site.toml's)")
    _add_tls_options(s)
    s.set_defaults(func=cmd_serve, usage_error=s.error)

    c = sub.add_parser("connect", help="open a channel (HKX/1, or TLS 1.3 with --tls): "
                       "stdin to the peer, the peer's answer to stdout")
    c.add_argument("address", metavar="HOST:PORT")
    c.add_argument("--site", required=True, metavar="DIR", help="the site directory")
    c.add_argument("--auth", choices=["auto", "signature", "psk"], default=None,
                   help="HKX/1 only: auto: psk when the pool can pay for it, else "
                   "signature (default: site.toml's auth)")
    c.add_argument("--peer", metavar="NAME",
                   help="the site to connect to (default: the only peer in trust/)")
    c.add_argument("--timeout", type=float, metavar="S",
                   help="connect and handshake time limit in seconds (default: site.toml's)")
    c.add_argument("--verbose", "-v", action="store_true",
                   help="print what the session is made of (session_info) on stderr")
    _add_tls_options(c)
    c.set_defaults(func=cmd_connect, usage_error=c.error)


def _add_tls_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls", action="store_true",
                        help="real TLS 1.3 (OpenSSL, the 'tls' extra) instead of HKX/1; "
                        "both ends must use it")
    parser.add_argument("--tls-mode", choices=TLS_MODES, default=None,
                        help="with --tls: certificate (X.509 from identity.crt, verified "
                        "against trust/; no QKD key) or qkd-psk (a QKD pool key as the "
                        "external PSK, which alone authenticates); default certificate")
    parser.add_argument("--group", action="append", default=None, metavar="NAME",
                        help="with --tls: a key-exchange group to offer and accept, in "
                        "preference order; repeatable (default X25519MLKEM768; also "
                        "SecP256r1MLKEM768, SecP384r1MLKEM1024, MLKEM768, MLKEM1024)")


def _check_options(args: argparse.Namespace) -> None:
    """Combinations argparse cannot express; a usage error (status 2) for each."""
    if args.tls and args.auth is not None:
        args.usage_error("--auth selects HKX/1's authentication and does not apply to "
                         "--tls; use --tls-mode certificate|qkd-psk")
    if not args.tls and (args.tls_mode is not None or args.group is not None):
        args.usage_error("--tls-mode and --group apply to TLS only; add --tls")


# -- shared helpers -------------------------------------------------------------------------


def parse_address(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidParameter(f"{what} must be HOST:PORT with a port from 0 to 65535, "
                               f"got {text!r}")
    return host, int(port_text)


def format_address(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def hkx_alert_name(code: int) -> str:
    try:
        return AlertDescription(code).name.lower()
    except ValueError:
        return "unknown"


def reason(exc: BaseException, alert_name: Callable[[int], str] = hkx_alert_name) -> str:
    """One line naming what failed: the error type, its message, and the alert (named by
    ``alert_name``: HKX/1's names by default)."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError) and not isinstance(exc, HybridKexError):
        text = f"{type(exc).__name__}: {exc.strerror or exc}"
    if isinstance(exc, ProtocolError) and exc.alert:
        text += f" (alert {exc.alert} {alert_name(exc.alert)})"
    return " ".join(text.split())


def describe_session(info: SessionInfo, qkd_source: str | None = None) -> list[tuple[str, str]]:
    """What a session is made of, as (label, value) lines for people."""
    secrets = [*info.kems, "QKD key" if info.qkd else "no QKD key"]
    peer = info.peer
    if info.auth_mode == "psk":
        auth = ("psk: one-time Poly1305 MACs keyed from 3 QKD pool keys "
                f"(binder, server MAC, client MAC); peer {peer.site}")
    else:
        auth = f"signature: peer {peer.site}, {peer.kind}"
        if peer.scheme:
            auth += f" {peer.scheme}"
        if peer.subject:
            auth += f", subject {peer.subject}"
        if peer.public_key_sha256:
            auth += f", key sha256 {peer.public_key_sha256[:16]}..."
    lines = [
        ("suite", info.suite),
        ("key exchange", " + ".join(secrets) + " -> one KDF combiner"),
        ("QKD key IDs", ", ".join(info.qkd_key_ids) or "none"),
    ]
    if info.qkd and qkd_source:
        lines.append(("QKD keys from", qkd_source))
    lines += [
        ("authentication", auth),
        ("policy", f"{info.security_policy}; fallback: {info.fallback or 'none'}"),
        ("pool keys spent", f"{info.pool_keys_spent} x 256 bits (this side, so far)"),
        ("re-keys", f"{info.key_updates} key updates, {info.qkd_rekeys} QKD re-keys"),
        ("transcript hash", info.transcript_hash),
    ]
    return lines


def _print_lines(lines: list[tuple[str, str]], out: Any) -> None:
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        print(f"  {label:<{width}}  {value}", file=out)


# -- the two transports ------------------------------------------------------------------------


class SessionSnapshot(Protocol):
    """What the channel loop reads of any session_info(): SessionInfo and TLSSessionInfo."""

    @property
    def peer(self) -> PeerIdentity: ...

    @property
    def qkd_key_ids(self) -> tuple[str, ...]: ...


_InfoT = TypeVar("_InfoT", bound=SessionSnapshot)
_InfoT_co = TypeVar("_InfoT_co", bound=SessionSnapshot, covariant=True)


class ChannelSocket(Protocol[_InfoT_co]):
    """What the channel loop uses of a secure socket: :class:`SecureSocket` (HKX/1,
    ``session_info()`` a :class:`SessionInfo`) and :class:`~hybridkex.tls.TLSSocket`
    (TLS 1.3, a :class:`~hybridkex.tls.TLSSessionInfo`) both are one."""

    def recv(self, bufsize: int, /) -> bytes: ...

    def sendall(self, data: bytes, /) -> None: ...

    def shutdown(self, how: int, /) -> None: ...  # SHUT_WR sends close_notify

    def close(self) -> None: ...

    def session_info(self) -> _InfoT_co: ...


class Transport(Protocol[_InfoT]):
    """A site's channel protocol, as the channel loop needs it: a handshake over a
    connected socket, and words for the sessions it makes."""

    @property
    def label(self) -> str:
        """ "HKX/1", or "TLS 1.3 <mode> mode, groups ..."."""

    @property
    def handshake_timeout(self) -> float | None: ...

    @property
    def uses_qkd(self) -> bool:
        """Whether its handshakes take keys from the site's QKD pools."""

    def wrap(self, raw: socket.socket, *, server_side: bool,
             peer: str | None) -> ChannelSocket[_InfoT]:
        """Run the handshake over ``raw`` (owned from now on) or raise a typed error."""

    def summary(self, info: _InfoT) -> str:
        """One line after the handshake, for the server's log (without the peer)."""

    def describe(self, info: _InfoT, qkd_source: str) -> list[tuple[str, str]]:
        """(label, value) lines for ``connect --verbose``."""

    def counters(self, info: _InfoT) -> str:
        """What the session spent, for the closing line."""

    def alert_name(self, code: int) -> str: ...


class HKXChannel:
    """HKX/1 (docs/protocol.md) through a :class:`hybridkex.Context`."""

    label = "HKX/1"
    uses_qkd = True

    def __init__(self, context: Context) -> None:
        self.context = context

    @property
    def handshake_timeout(self) -> float | None:
        return self.context.handshake_timeout

    def wrap(self, raw: socket.socket, *, server_side: bool, peer: str | None) -> SecureSocket:
        return self.context.wrap_socket(raw, server_side=server_side, peer=peer)

    def summary(self, info: SessionInfo) -> str:
        qkd = ", ".join(info.qkd_key_ids) or "none"
        return (f"{info.auth_mode} authentication, {info.suite}, QKD key {qkd}"
                + (f" (fallback: {info.fallback})" if info.fallback else ""))

    def describe(self, info: SessionInfo, qkd_source: str) -> list[tuple[str, str]]:
        return describe_session(info, qkd_source)

    def counters(self, info: SessionInfo) -> str:
        return f"{info.qkd_rekeys} QKD re-keys, {info.pool_keys_spent} pool keys spent"

    def alert_name(self, code: int) -> str:
        return hkx_alert_name(code)


class TLSChannel:
    """TLS 1.3 (docs/tls.md) through a :class:`hybridkex.tls.TLSContext`."""

    def __init__(self, context: TLSContext) -> None:
        self.context = context

    @property
    def label(self) -> str:
        return f"TLS 1.3 {self.context.mode} mode, groups {':'.join(self.context.groups)}"

    @property
    def handshake_timeout(self) -> float | None:
        return self.context.handshake_timeout

    @property
    def uses_qkd(self) -> bool:
        return self.context.mode == "qkd-psk"

    def wrap(self, raw: socket.socket, *, server_side: bool, peer: str | None) -> TLSSocket:
        return self.context.wrap_socket(raw, server_side=server_side, peer=peer)

    def summary(self, info: TLSSessionInfo) -> str:
        if info.psk_used:
            auth = "qkd-psk authentication"
        else:
            auth = f"certificate authentication ({info.peer_signature_scheme or 'none'})"
        return (f"{auth}, {info.version}, {info.cipher}, group {info.group}, "
                f"QKD key {info.psk_key_id or 'none'}")

    def describe(self, info: TLSSessionInfo, qkd_source: str) -> list[tuple[str, str]]:
        lines = info.describe()
        if info.qkd:  # right after the key IDs, as for HKX/1
            at = next((i + 1 for i, (label, _) in enumerate(lines) if label == "QKD key IDs"),
                      len(lines))
            lines.insert(at, ("QKD keys from", qkd_source))
        lines.append(("pool keys spent", f"{len(info.qkd_key_ids)} x 256 bits (this side)"))
        return lines

    def counters(self, info: TLSSessionInfo) -> str:
        return f"{len(info.qkd_key_ids)} pool keys spent"

    def alert_name(self, code: int) -> str:
        from hybridkex.tls.connection import ALERT_NAMES

        return ALERT_NAMES.get(code, "unknown")


def hkx_channel(site: Site, args: argparse.Namespace) -> HKXChannel:
    """The site's HKX/1 Context, with --auth and --timeout applied."""
    overrides: dict[str, Any] = {}
    if args.auth is not None:
        overrides["auth"] = args.auth
    if args.timeout is not None:
        overrides["handshake_timeout"] = args.timeout
    return HKXChannel(site.context(**overrides))


def tls_channel(site: Site, *, mode: str = "certificate", groups: Sequence[str] = (),
                timeout: float | None = None, server_side: bool,
                peer: str | None = None) -> TLSChannel:
    """The site's TLS 1.3 context: identity.crt and identity.key, trust/'s certificates as
    anchors, keys.db as the QKD key source.  A certificate-mode server accepts any
    certificate trust/ admits (as HKX/1 does); a qkd-psk server fetches keys from the
    pools of all the site's peers.  Refuses, with a one-line reason, what cannot work."""
    from hybridkex.tls import TLSConfigurationError, TLSContext
    from hybridkex.tls.context import SIGNATURE_ALGORITHMS

    schemes = ", ".join(s for s in SIGNATURE_SCHEMES if s in SIGNATURE_ALGORITHMS)
    if mode == "certificate" and site.scheme not in SIGNATURE_ALGORITHMS:
        raise TLSConfigurationError(
            f"site {site.name} signs with {site.scheme}, which has no X.509 certificate, "
            f"so it cannot authenticate in TLS; --tls needs a site made with --sig "
            f"{schemes} (or --tls-mode qkd-psk, where the QKD key alone authenticates)")
    if mode == "certificate" and peer is not None:
        entries = [t for t in site.trusted() if t.name == peer or t.kind == "x509-ca"]
        if entries and all(t.kind == "pin" for t in entries):
            raise TLSConfigurationError(
                f"site {site.name} trusts {peer} through a pinned raw key "
                f"({entries[0].path.name}), which TLS cannot verify; --tls needs {peer}'s "
                "X.509 certificate (or a CA's) in trust/")
    peers: tuple[str, ...] = ()
    if mode == "qkd-psk" and server_side:
        peers = tuple(site.peers())
        if not peers:
            raise TLSConfigurationError(
                f"site {site.name} trusts no peer, so a qkd-psk server has no QKD pool to "
                "fetch keys from")
    if timeout is None:
        timeout = site.settings.handshake_timeout_s
    context = TLSContext.from_config(site.config(), mode=mode,
                                     groups=tuple(groups) or (DEFAULT_TLS_GROUP,),
                                     peers=peers, handshake_timeout=timeout)
    return TLSChannel(context)


def _tls_channel(site: Site, args: argparse.Namespace, *, server_side: bool,
                 peer: str | None = None) -> TLSChannel:
    return tls_channel(site, mode=args.tls_mode or "certificate", groups=args.group or (),
                       timeout=args.timeout, server_side=server_side, peer=peer)


# -- the server ---------------------------------------------------------------------------------


@dataclass
class ServedSession(Generic[_InfoT]):
    """What the server saw of one connection (for logs, --once, and the demo)."""

    address: str
    status: int
    info: _InfoT | None = None  # at the end of the session (None if no handshake)
    handshake_info: _InfoT | None = None  # right after the handshake
    received: int = 0
    sent: int = 0
    error: str = ""


class ChannelServer(Generic[_InfoT]):
    """Accepts connections on ``listener`` over ``transport`` (HKX/1 or TLS 1.3), one
    thread per client, until stopped."""

    def __init__(self, transport: Transport[_InfoT], listener: socket.socket, *, echo: bool,
                 output: BinaryIO | None = None, log: Callable[[str], None] | None = None,
                 on_session: Callable[[ServedSession[_InfoT]], None] | None = None) -> None:
        self.transport = transport
        self.listener = listener
        self.echo = echo
        self.output = output
        self.log = log or (lambda line: None)
        self.on_session = on_session
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._active: dict[int, tuple[socket.socket, ChannelSocket[_InfoT] | None]] = {}
        self._threads: list[threading.Thread] = []

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def serve(self, once: bool = False) -> int:
        """Accept until :meth:`stop` (or, with ``once``, one connection); then close every
        session still open (close_notify first).  Returns the status of the last session."""
        last: list[ServedSession[_InfoT]] = []
        self.listener.settimeout(0.2)
        try:
            while not self._stop.is_set():
                try:
                    raw, address = self.listener.accept()
                except TimeoutError:
                    continue
                raw.settimeout(None)
                thread = threading.Thread(target=lambda r=raw, a=address: last.append(
                    self.handle(r, a)), name="channel-session", daemon=True)
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
                thread.start()
                if once:
                    self.listener.close()
                    while thread.is_alive() and not self._stop.is_set():
                        thread.join(0.2)
                    break
        finally:
            with contextlib.suppress(OSError):
                self.listener.close()
            self._close_all()
        if once and not last:
            return EXIT_NETWORK if not self._stop.is_set() else EXIT_OK
        return last[-1].status if once else EXIT_OK

    def _close_all(self) -> None:
        with self._lock:
            active = list(self._active.values())

        def notify(secure: ChannelSocket[_InfoT]) -> None:
            with contextlib.suppress(OSError, HybridKexError):
                secure.shutdown(socket.SHUT_WR)  # close_notify

        # close_notify from helper threads: a session blocked sending to a peer that does
        # not read holds the socket's write lock, and must not hold up the shutdown.
        notifiers = [threading.Thread(target=notify, args=(secure,), daemon=True)
                     for _, secure in active if secure is not None]
        for thread in notifiers:
            thread.start()
        for thread in notifiers:
            thread.join(1.0)
        for raw, _ in active:
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_RDWR)  # wakes every session's reader
        deadline = time.monotonic() + 5.0
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def handle(self, raw: socket.socket, address: Any) -> ServedSession[_InfoT]:
        """One connection: handshake, then echo or copy to output until the peer closes."""
        session: ServedSession[_InfoT] = ServedSession(format_address(address), EXIT_OK)
        key = id(raw)
        with self._lock:
            self._active[key] = (raw, None)
        try:
            self._run(raw, session, key)
        finally:
            with self._lock:
                self._active.pop(key, None)
            if self.on_session is not None:
                self.on_session(session)
        return session

    def _run(self, raw: socket.socket, session: ServedSession[_InfoT], key: int) -> None:
        where, transport = session.address, self.transport
        try:
            secure = transport.wrap(raw, server_side=True, peer=None)
        except (ProtocolError, HandshakeTimeout) as exc:
            session.status, session.error = EXIT_HANDSHAKE, reason(exc, transport.alert_name)
            self.log(f"{where}: handshake failed: {session.error}")
            return
        except (OSError, HybridKexError) as exc:
            session.status, session.error = EXIT_NETWORK, reason(exc, transport.alert_name)
            self.log(f"{where}: handshake failed: {session.error}")
            return
        with self._lock:
            self._active[key] = (raw, secure)
        info = session.handshake_info = secure.session_info()
        peer = info.peer.site
        self.log(f"{where}: session with {peer}: {transport.summary(info)}")
        try:
            while True:
                data = secure.recv(_CHUNK)
                if not data:
                    break
                session.received += len(data)
                if self.echo:
                    secure.sendall(data)
                    session.sent += len(data)
                elif self.output is not None:
                    with self._lock:
                        self.output.write(data)
                        self.output.flush()
            session.info = end = secure.session_info()
            secure.close()
        except (OSError, HybridKexError) as exc:
            with contextlib.suppress(HybridKexError):
                session.info = secure.session_info()
            _linger(raw)
            secure.close()
            if self._stop.is_set():
                session.error = "closed by server shutdown"
                self.log(f"{where}: session with {peer} closed by server shutdown")
                return
            session.status, session.error = EXIT_SESSION, reason(exc, transport.alert_name)
            self.log(f"{where}: session with {peer} failed: {session.error}")
            return
        self.log(f"{where}: session with {peer} closed cleanly: {session.received} bytes in, "
                 f"{session.sent} out, {transport.counters(end)}")


def _linger(raw: socket.socket, seconds: float = 1.0) -> None:
    """After a failed session: stop sending, then read and drop what the peer still sends
    for a moment, so closing does not reset the connection (a TCP reset can destroy the
    alert just sent before the peer reads it)."""
    with contextlib.suppress(OSError):
        raw.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            raw.settimeout(remaining)
            if not raw.recv(_CHUNK):
                break


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=128)


def cmd_serve(args: argparse.Namespace) -> int:
    _check_options(args)
    host, port = parse_address(args.listen, "--listen")
    with Site.load(args.site) as site:
        if args.tls:
            return _serve(args, site, host, port, _tls_channel(site, args, server_side=True))
        return _serve(args, site, host, port, hkx_channel(site, args))


def _serve(args: argparse.Namespace, site: Site, host: str, port: int,
           transport: Transport[_InfoT]) -> int:
    try:
        listener = listen(host, port)
    except OSError as exc:
        raise InvalidParameter(f"cannot listen on {args.listen}: "
                               f"{exc.strerror or exc}") from None

    def log(line: str) -> None:
        print(f"hybridkex serve: {line}", file=sys.stderr, flush=True)

    server = ChannelServer(transport, listener, echo=args.echo,
                           output=None if args.echo else sys.stdout.buffer, log=log)
    previous = {sig: signal.signal(sig, lambda *_: server.stop())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        peers = ", ".join(site.peers()) or (
            "none in trust/ (psk only)" if isinstance(transport, HKXChannel)
            else "none in trust/ (any certificate trust/ admits)")
        mode = "echo" if args.echo else "data to stdout"
        log(f"site {site.name} ({transport.label}; {mode}; peers: {peers}) "
            f"listening on {format_address(listener.getsockname())}")
        if transport.uses_qkd:
            for peer in site.peers():
                pool = site.pool_status(peer)
                log(f"QKD pool with {peer}: {pool.available_to_fetch} keys to fetch, "
                    f"{pool.available_to_take} to take; from {site.qkd_source_label(peer)}")
        status = server.serve(once=args.once)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log(f"site {site.name} stopped")
    return status


# -- the client ------------------------------------------------------------------------------


def _fail(status: int, message: str) -> int:
    print(f"hybridkex connect: {message}", file=sys.stderr, flush=True)
    return status


def cmd_connect(args: argparse.Namespace) -> int:
    _check_options(args)
    host, port = parse_address(args.address, "the address")
    with Site.load(args.site) as site:
        peer = args.peer or site.default_peer()
        if args.tls:
            transport = _tls_channel(site, args, server_side=False, peer=peer)
            return _connect(args, site, peer, (host, port), transport)
        return _connect(args, site, peer, (host, port), hkx_channel(site, args))


def _connect(args: argparse.Namespace, site: Site, peer: str, address: tuple[str, int],
             transport: Transport[_InfoT]) -> int:
    try:
        raw = socket.create_connection(address, timeout=transport.handshake_timeout)
    except OSError as exc:
        return _fail(EXIT_NETWORK, f"cannot connect to {args.address}: {reason(exc)}")
    raw.settimeout(None)
    try:
        secure = transport.wrap(raw, server_side=False, peer=peer)
    except (ProtocolError, HandshakeTimeout) as exc:
        return _fail(EXIT_HANDSHAKE, f"handshake with {peer} failed: "
                     f"{reason(exc, transport.alert_name)}")
    except OSError as exc:
        raw.close()
        return _fail(EXIT_NETWORK, f"handshake with {peer} failed: {reason(exc)}")
    except HybridKexError:
        raw.close()
        raise
    try:
        if args.verbose:
            print(f"hybridkex connect: connected to {peer} at {args.address} "
                  f"({transport.label})", file=sys.stderr)
            _print_lines(transport.describe(secure.session_info(),
                                            site.qkd_source_label(peer)), sys.stderr)
            sys.stderr.flush()
        return _exchange(secure, raw, peer, transport, args.verbose)
    finally:
        secure.close()


def _exchange(secure: ChannelSocket[_InfoT], raw: socket.socket, peer: str,
              transport: Transport[_InfoT], verbose: bool) -> int:
    """stdin -> channel (a thread), channel -> stdout (here), until the peer closes."""
    sent = [0]
    send_error: list[BaseException] = []

    def pump() -> None:
        try:
            while True:
                chunk = os.read(sys.stdin.fileno(), _CHUNK)
                if not chunk:
                    secure.shutdown(socket.SHUT_WR)  # close_notify: nothing more from us
                    return
                secure.sendall(chunk)
                sent[0] += len(chunk)
        except (OSError, HybridKexError) as exc:
            send_error.append(exc)

    thread = threading.Thread(target=pump, name="channel-stdin", daemon=True)
    thread.start()
    received = 0
    out = sys.stdout.buffer
    try:
        while True:
            data = secure.recv(_CHUNK)
            if not data:
                break
            received += len(data)
            out.write(data)
            out.flush()
    except (ProtocolError, LocalProtocolError, OSError) as exc:
        _linger(raw, 0.5)  # let our alert reach the peer rather than a reset
        return _fail(EXIT_SESSION, f"session with {peer} failed: "
                     f"{reason(exc, transport.alert_name)}")
    if send_error and not isinstance(send_error[0], OSError):
        return _fail(EXIT_SESSION, f"session with {peer} failed: "
                     f"{reason(send_error[0], transport.alert_name)}")
    if verbose:
        print(f"hybridkex connect: closed cleanly: {sent[0]} bytes sent, {received} received, "
              f"{transport.counters(secure.session_info())}", file=sys.stderr, flush=True)
    return EXIT_OK
