"""``hybridkex serve`` and ``hybridkex connect``: an HKX/1 channel between two sites.

    hybridkex serve --site site-b --listen 127.0.0.1:4433 --echo
    echo hello | hybridkex connect 127.0.0.1:4433 --site site-a --verbose

``connect`` sends its standard input through the channel and writes what comes back
to its standard output, like ``openssl s_client``.  ``serve`` answers many clients at
once (one thread each): with ``--echo`` it sends back what it receives, without it
writes what it receives to its standard output.  Both log to standard error, one
line per event, never key material.  Exit status (docs/sites.md):

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from hybridkex.errors import (
    HandshakeTimeout,
    HybridKexError,
    InvalidParameter,
    LocalProtocolError,
    ProtocolError,
)
from hybridkex.protocol import SessionInfo
from hybridkex.protocol.suites import AlertDescription
from hybridkex.site import Site
from hybridkex.transport import Context, SecureSocket

EXIT_OK, EXIT_LOCAL, EXIT_USAGE, EXIT_NETWORK, EXIT_HANDSHAKE, EXIT_SESSION = 0, 1, 2, 3, 4, 5
_CHUNK = 1 << 16


def register(sub: Any) -> None:
    s = sub.add_parser("serve", help="accept HKX/1 channels for a site (echo, or data to stdout)")
    s.add_argument("--site", required=True, metavar="DIR", help="the site directory")
    s.add_argument("--listen", required=True, metavar="HOST:PORT",
                   help="address to listen on ([::1]:PORT for IPv6; port 0 picks a free "
                   "one, printed on stderr as 'listening on HOST:PORT')")
    s.add_argument("--echo", action="store_true",
                   help="send every client's data back to it (default: write it to stdout)")
    s.add_argument("--once", action="store_true",
                   help="handle one connection, then exit with its status")
    s.add_argument("--auth", choices=["auto", "signature", "psk"],
                   help="authentication modes accepted (default: site.toml's auth; auto "
                   "accepts both)")
    s.add_argument("--timeout", type=float, metavar="S",
                   help="handshake time limit in seconds (default: site.toml's)")
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("connect", help="open an HKX/1 channel: stdin to the peer, the "
                       "peer's answer to stdout")
    c.add_argument("address", metavar="HOST:PORT")
    c.add_argument("--site", required=True, metavar="DIR", help="the site directory")
    c.add_argument("--auth", choices=["auto", "signature", "psk"], default=None,
                   help="auto: psk when the pool can pay for it, else signature "
                   "(default: site.toml's auth)")
    c.add_argument("--peer", metavar="NAME",
                   help="the site to connect to (default: the only peer in trust/)")
    c.add_argument("--timeout", type=float, metavar="S",
                   help="connect and handshake time limit in seconds (default: site.toml's)")
    c.add_argument("--verbose", "-v", action="store_true",
                   help="print what the session is made of (session_info) on stderr")
    c.set_defaults(func=cmd_connect)


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


def reason(exc: BaseException) -> str:
    """One line naming what failed: the error type, its message, and the HKX/1 alert."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError) and not isinstance(exc, HybridKexError):
        text = f"{type(exc).__name__}: {exc.strerror or exc}"
    if isinstance(exc, ProtocolError) and exc.alert:
        try:
            name = AlertDescription(exc.alert).name.lower()
        except ValueError:
            name = "unknown"
        text += f" (alert {exc.alert} {name})"
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


# -- the server ---------------------------------------------------------------------------------


@dataclass
class ServedSession:
    """What the server saw of one connection (for logs, --once, and the demo)."""

    address: str
    status: int
    info: SessionInfo | None = None  # at the end of the session (None if no handshake)
    handshake_info: SessionInfo | None = None  # right after the handshake
    received: int = 0
    sent: int = 0
    error: str = ""


class ChannelServer:
    """Accepts HKX/1 connections on ``listener``, one thread per client, until stopped."""

    def __init__(self, context: Context, listener: socket.socket, *, echo: bool,
                 output: BinaryIO | None = None, log: Callable[[str], None] | None = None,
                 on_session: Callable[[ServedSession], None] | None = None,
                 qkd_source: Callable[[str], str] | None = None) -> None:
        self.context = context
        self.listener = listener
        self.echo = echo
        self.output = output
        self.log = log or (lambda line: None)
        self.on_session = on_session
        self.qkd_source = qkd_source
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._active: dict[int, tuple[socket.socket, SecureSocket | None]] = {}
        self._threads: list[threading.Thread] = []

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def serve(self, once: bool = False) -> int:
        """Accept until :meth:`stop` (or, with ``once``, one connection); then close every
        session still open (close_notify first).  Returns the status of the last session."""
        last: list[ServedSession] = []
        self.listener.settimeout(0.2)
        try:
            while not self._stop.is_set():
                try:
                    raw, address = self.listener.accept()
                except TimeoutError:
                    continue
                raw.settimeout(None)
                thread = threading.Thread(target=lambda r=raw, a=address: last.append(
                    self.handle(r, a)), name="hkx-session", daemon=True)
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

        def notify(secure: SecureSocket) -> None:
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

    def handle(self, raw: socket.socket, address: Any) -> ServedSession:
        """One connection: handshake, then echo or copy to output until the peer closes."""
        session = ServedSession(format_address(address), EXIT_OK)
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

    def _run(self, raw: socket.socket, session: ServedSession, key: int) -> None:
        where = session.address
        try:
            secure = self.context.wrap_socket(raw, server_side=True)
        except (ProtocolError, HandshakeTimeout) as exc:
            session.status, session.error = EXIT_HANDSHAKE, reason(exc)
            self.log(f"{where}: handshake failed: {session.error}")
            return
        except (OSError, HybridKexError) as exc:
            session.status, session.error = EXIT_NETWORK, reason(exc)
            self.log(f"{where}: handshake failed: {session.error}")
            return
        with self._lock:
            self._active[key] = (raw, secure)
        info = session.handshake_info = secure.session_info()
        peer = info.peer.site
        qkd = ", ".join(info.qkd_key_ids) or "none"
        self.log(f"{where}: session with {peer}: {info.auth_mode} authentication, "
                 f"{info.suite}, QKD key {qkd}"
                 + (f" (fallback: {info.fallback})" if info.fallback else ""))
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
            session.info = secure.session_info()
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
            session.status, session.error = EXIT_SESSION, reason(exc)
            self.log(f"{where}: session with {peer} failed: {session.error}")
            return
        rekeys = session.info.qkd_rekeys if session.info else 0
        self.log(f"{where}: session with {peer} closed cleanly: {session.received} bytes in, "
                 f"{session.sent} out, {rekeys} QKD re-keys")


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
    host, port = parse_address(args.listen, "--listen")
    with Site.load(args.site) as site:
        overrides: dict[str, Any] = {}
        if args.auth is not None:
            overrides["auth"] = args.auth
        if args.timeout is not None:
            overrides["handshake_timeout"] = args.timeout
        context = site.context(**overrides)
        try:
            listener = listen(host, port)
        except OSError as exc:
            raise InvalidParameter(f"cannot listen on {args.listen}: "
                                   f"{exc.strerror or exc}") from None

        def log(line: str) -> None:
            print(f"hybridkex serve: {line}", file=sys.stderr, flush=True)

        server = ChannelServer(context, listener, echo=args.echo,
                               output=None if args.echo else sys.stdout.buffer, log=log)
        previous = {sig: signal.signal(sig, lambda *_: server.stop())
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            peers = ", ".join(site.peers()) or "none in trust/ (psk only)"
            mode = "echo" if args.echo else "data to stdout"
            log(f"site {site.name} ({mode}; peers: {peers}) "
                f"listening on {format_address(listener.getsockname())}")
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
    host, port = parse_address(args.address, "the address")
    with Site.load(args.site) as site:
        peer = args.peer or site.default_peer()
        overrides: dict[str, Any] = {}
        if args.auth is not None:
            overrides["auth"] = args.auth
        if args.timeout is not None:
            overrides["handshake_timeout"] = args.timeout
        context = site.context(**overrides)
        try:
            raw = socket.create_connection((host, port), timeout=context.handshake_timeout)
        except OSError as exc:
            return _fail(EXIT_NETWORK, f"cannot connect to {args.address}: {reason(exc)}")
        raw.settimeout(None)
        try:
            secure = context.wrap_socket(raw, peer=peer)
        except (ProtocolError, HandshakeTimeout) as exc:
            return _fail(EXIT_HANDSHAKE, f"handshake with {peer} failed: {reason(exc)}")
        except OSError as exc:
            raw.close()
            return _fail(EXIT_NETWORK, f"handshake with {peer} failed: {reason(exc)}")
        except HybridKexError:
            raw.close()
            raise
        with secure:
            if args.verbose:
                print(f"hybridkex connect: connected to {peer} at {args.address}",
                      file=sys.stderr)
                _print_lines(describe_session(secure.session_info(),
                                              site.qkd_source_label(peer)), sys.stderr)
                sys.stderr.flush()
            return _exchange(secure, raw, peer, args.verbose)


def _exchange(secure: SecureSocket, raw: socket.socket, peer: str, verbose: bool) -> int:
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

    thread = threading.Thread(target=pump, name="hkx-stdin", daemon=True)
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
        return _fail(EXIT_SESSION, f"session with {peer} failed: {reason(exc)}")
    if send_error and not isinstance(send_error[0], OSError):
        return _fail(EXIT_SESSION, f"session with {peer} failed: {reason(send_error[0])}")
    if verbose:
        info = secure.session_info()
        print(f"hybridkex connect: closed cleanly: {sent[0]} bytes sent, {received} received, "
              f"{info.qkd_rekeys} QKD re-keys, {info.pool_keys_spent} pool keys spent",
              file=sys.stderr, flush=True)
    return EXIT_OK
