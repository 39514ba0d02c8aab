"""``hybridkex serve`` and ``hybridkex connect``: a channel between two sites, over HKX/1
or (``--tls``) over real TLS 1.3.

    hybridkex serve   --site site-b --listen 127.0.0.1:4433 --forward 127.0.0.1:8080
    hybridkex connect --site site-a --listen-local 127.0.0.1:8081 127.0.0.1:4433
    hybridkex serve   --site site-b --listen 127.0.0.1:4433 --echo
    echo hello | hybridkex connect 127.0.0.1:4433 --site site-a --verbose

``serve`` accepts channels on the asyncio layer (:mod:`hybridkex.cli.serving`) and
relays each to a local TCP service (``--forward``), echoes it (``--echo``) or writes
it to standard output.  ``connect`` either carries its standard input and output over
one channel (like ``openssl s_client``), or with ``--listen-local`` gives every local
TCP client a channel of its own (like stunnel's client side).  Both log to standard
error, one line per event, never key material.

One set of words serves both protocols: a :class:`Transport` makes the protocol's
sockets and driving protocols and tells how to describe its sessions (HKX/1:
:class:`HKXChannel`, TLS 1.3: :class:`TLSChannel`).  ``hybridkex.tls`` (the ``tls``
extra, pyOpenSSL) is imported only for ``--tls``.  Exit status: :data:`EXIT_CODES`
(also in ``hybridkex --help`` and docs/sites.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from hybridkex.cli.args import connection_count, grace_seconds, parse_address, seconds
from hybridkex.errors import (
    AlertReceived,
    ConnectionTruncated,
    DecodeError,
    HandshakeTimeout,
    HybridKexError,
    InvalidParameter,
    LocalProtocolError,
    ProtocolError,
)
from hybridkex.protocol import SessionInfo
from hybridkex.protocol.identity import PeerIdentity
from hybridkex.protocol.record import frame_record
from hybridkex.protocol.suites import AlertDescription, ContentType
from hybridkex.site import SIGNATURE_SCHEMES, PoolLevel, Site, SiteError
from hybridkex.transport import Context, SecureSocket
from hybridkex.transport.aio import DrivingProtocol
from hybridkex.transport.forward import (
    DEFAULT_GRACE,
    DEFAULT_MAX_CONNECTIONS,
    format_address,
)

if TYPE_CHECKING:
    from hybridkex.tls import TLSContext, TLSSessionInfo, TLSSocket

EXIT_OK, EXIT_LOCAL, EXIT_USAGE, EXIT_NETWORK, EXIT_HANDSHAKE, EXIT_SESSION = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130
EXIT_CODES = (
    (EXIT_OK, "success; for serve --once and connect: the channel closed cleanly"),
    (EXIT_LOCAL, "a local problem: a file or directory, an argument's value, the site, "
                 "the key store"),
    (EXIT_USAGE, "command-line usage: an unknown option, a missing argument, a value "
                 "out of range (a negative or infinite time, a port above 65535)"),
    (EXIT_NETWORK, "network: could not connect, or a socket error in the handshake; "
                   "for qkd simulate: the round aborted (no key)"),
    (EXIT_HANDSHAKE, "the handshake failed: authentication, policy, a QKD key refused, "
                     "replay, timeout, an alert"),
    (EXIT_SESSION, "the session failed after the handshake: a record that does not "
                   "authenticate, an alert, a connection cut without close_notify"),
    (EXIT_INTERRUPTED, "interrupted (SIGINT) where no clean stop is defined; for qkd "
                       "link --site: a second SIGINT or SIGTERM discarded the rounds under "
                       "way"),
)
_CHUNK = 1 << 16
TLS_MODES = ("certificate", "qkd-psk")
DEFAULT_TLS_GROUP = "X25519MLKEM768"  # hybridkex.tls.DEFAULT_GROUPS, without importing it
PSK_HANDSHAKE_KEYS = 4  # 3 authentication units and 1 QKD key (docs/protocol.md)
# What a refused HKX/1 client reads: a plaintext fatal alert (docs/protocol.md, 11).
HKX_BUSY = frame_record(ContentType.ALERT, bytes([2, AlertDescription.SERVER_BUSY]))


# -- values checked when the command line is parsed (a usage error, status 2) ---------------


def address(what: str, *, any_port: bool = True) -> Callable[[str], tuple[str, int]]:
    """An argparse type for ``HOST:PORT`` (port 0 only where ``any_port``: to listen)."""

    def parse(text: str) -> tuple[str, int]:
        try:
            host, port = parse_address(text, what)
        except InvalidParameter as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if port == 0 and not any_port:
            raise argparse.ArgumentTypeError(f"{what} needs a port from 1 to 65535, "
                                             f"got {text!r}")
        return host, port

    parse.__name__ = what  # argparse names the type in its messages
    return parse


def register(sub: Any) -> None:
    s = sub.add_parser("serve", help="accept channels for a site (HKX/1, or TLS 1.3 with "
                       "--tls): forward each to a TCP service, echo, or data to stdout")
    s.add_argument("--site", required=True, metavar="DIR", help="the site directory")
    s.add_argument("--listen", required=True, metavar="HOST:PORT",
                   type=address("--listen"),
                   help="address to listen on ([::1]:PORT for IPv6; port 0 picks a free "
                   "one, printed on stderr as 'listening on HOST:PORT')")
    what = s.add_mutually_exclusive_group()
    what.add_argument("--forward", metavar="HOST:PORT",
                      type=address("--forward", any_port=False),
                      help="relay each channel to this TCP service (stunnel-style), "
                      "connected once the channel's handshake has completed")
    what.add_argument("--echo", action="store_true",
                      help="send every client's data back to it (default: write it to "
                      "stdout)")
    s.add_argument("--once", action="store_true",
                   help="handle one connection, then exit with its status")
    s.add_argument("--auth", choices=["auto", "signature", "psk"],
                   help="HKX/1 only: authentication modes accepted (default: site.toml's "
                   "auth; auto accepts both)")
    s.add_argument("--timeout", type=seconds, metavar="S",
                   help="handshake time limit per connection in seconds (default: "
                   "site.toml's handshake_timeout_s)")
    _add_stream_options(s)
    _add_tls_options(s)
    s.set_defaults(func=cmd_serve, usage_error=s.error)

    c = sub.add_parser("connect", help="open a channel (HKX/1, or TLS 1.3 with --tls): "
                       "stdin to the peer and its answer to stdout, or with --listen-local "
                       "one channel per local TCP client")
    c.add_argument("address", metavar="HOST:PORT", type=address("HOST:PORT", any_port=False),
                   help="the peer's serve address")
    c.add_argument("--site", required=True, metavar="DIR", help="the site directory")
    c.add_argument("--listen-local", metavar="HOST:PORT", type=address("--listen-local"),
                   help="listen on this local address; every TCP client that connects gets "
                   "its own channel to the peer (stunnel-style; default: stdin/stdout)")
    c.add_argument("--auth", choices=["auto", "signature", "psk"], default=None,
                   help="HKX/1 only: auto: psk when the pool can pay for it, else "
                   "signature (default: site.toml's auth)")
    c.add_argument("--peer", metavar="NAME",
                   help="the site to connect to (default: the only peer in trust/)")
    c.add_argument("--timeout", type=seconds, metavar="S",
                   help="connect and handshake time limit in seconds (default: site.toml's "
                   "handshake_timeout_s)")
    c.add_argument("--verbose", "-v", action="store_true",
                   help="print what the session is made of (session_info) on stderr")
    _add_stream_options(c)
    _add_tls_options(c)
    c.set_defaults(func=cmd_connect, usage_error=c.error)


def _add_stream_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-connections", type=connection_count, metavar="N",
                        default=DEFAULT_MAX_CONNECTIONS,
                        help="at most N channels at once; one more is refused at once, "
                        f"never queued (default {DEFAULT_MAX_CONNECTIONS}; connect: with "
                        "--listen-local)")
    parser.add_argument("--grace", type=grace_seconds, metavar="S", default=DEFAULT_GRACE,
                        help="after SIGINT or SIGTERM, let open channels finish for up to "
                        f"S seconds, then close them (default {DEFAULT_GRACE:g}; connect: "
                        "with --listen-local)")


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
    if getattr(args, "listen_local", None) is not None and args.verbose:
        args.usage_error("--verbose applies to a stdin/stdout channel; with --listen-local "
                         "every session is described in the log")


# -- words for people -------------------------------------------------------------------------


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


SPENT_WHY = ("a key that has entered a handshake is never used again, since whoever "
             "chose the other secrets could test guesses of it offline (docs/protocol.md, "
             "section 7)")


def spent_note(spent: int, in_flight: int = 0) -> str:
    """How many pool keys a failed attempt consumed, and why they are gone."""
    if not spent and not in_flight:
        return "no pool keys consumed"
    text = f"{spent} pool key{'' if spent == 1 else 's'} consumed"
    if in_flight:
        text += f" and {in_flight} more on their way from the key source (consumed too)"
    return f"{text}, not returned: {SPENT_WHY}"


def hint(exc: BaseException, tls: bool, auth: str | None) -> str:
    """What a user can do about a failed client handshake, when the error says enough."""
    if isinstance(exc, AlertReceived) and exc.alert == AlertDescription.INSUFFICIENT_SECURITY \
            and not tls and auth != "psk":
        return (f"; if the server accepts psk authentication only, connect with --auth psk "
                f"(it needs {PSK_HANDSHAKE_KEYS} pool keys)")
    if isinstance(exc, DecodeError) and "speaks TLS" in str(exc):
        return "; it is a TLS port: connect with --tls"
    if not tls and (
            (isinstance(exc, AlertReceived) and exc.alert == AlertDescription.PROTOCOL_VERSION)
            or (isinstance(exc, ConnectionTruncated) and "a word of HKX/1" in str(exc))):
        return "; if it is a TLS port, connect with --tls"
    if tls and "is it an HKX/1 server" in str(exc):
        return "; connect without --tls"
    if tls and isinstance(exc, ConnectionTruncated) and "handshake" in str(exc):
        return ("; the server closed the connection without answering (at its "
                "--max-connections limit, or not a TLS server?)")
    return ""


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


def pool_level(site: Site, peer: str) -> str:
    """The pool with ``peer``, and a warning below site.toml's [pool] warn_below (for a
    KME key source this asks the KME: not from an event loop, see serving.py)."""
    try:
        level = site.pool_level(peer)
    except HybridKexError as exc:
        return f"pool with {peer}: not readable ({exc})"
    return level_text(site, level)


def level_text(site: Site, level: PoolLevel) -> str:
    """A :class:`PoolLevel` in words: keys.db's counts, or the KME's status; a level
    that was not measured says why, never a number."""
    peer = level.peer
    if level.to_take is None:
        return f"pool with {peer}: not measured ({level.reason})"
    if site.kme is None:
        text = f"pool with {peer}: {level.to_take} keys to take, {level.to_fetch} to fetch"
        refill = "hybridkex site pair, or the QKD link"
    else:
        text = f"pool with {peer}: {level.to_take} keys to take (the KME's stored_key_count)"
        refill = "the QKD link behind the KME"
    below = site.settings.pool_warn_below
    if level.below(below):
        text += (f" (WARNING: below {below}, site.toml's [pool] warn_below; refill it: "
                 f"{refill})")
    return text


def _print_lines(lines: list[tuple[str, str]], out: Any) -> None:
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        print(f"  {label:<{width}}  {value}", file=out)


# -- the two protocols ------------------------------------------------------------------------


class SessionSnapshot(Protocol):
    """What the channel code reads of any session_info(): SessionInfo and TLSSessionInfo."""

    @property
    def peer(self) -> PeerIdentity: ...

    @property
    def qkd_key_ids(self) -> tuple[str, ...]: ...


_InfoT = TypeVar("_InfoT", bound=SessionSnapshot)
_InfoT_co = TypeVar("_InfoT_co", bound=SessionSnapshot, covariant=True)


class ChannelSocket(Protocol[_InfoT_co]):
    """What the stdin/stdout channel uses of a blocking secure socket:
    :class:`SecureSocket` (HKX/1) and :class:`~hybridkex.tls.TLSSocket` (TLS 1.3)."""

    def do_handshake(self) -> None: ...

    @property
    def pool_keys_spent(self) -> int: ...

    def recv(self, bufsize: int, /) -> bytes: ...

    def sendall(self, data: bytes, /) -> None: ...

    def shutdown(self, how: int, /) -> None: ...  # SHUT_WR sends close_notify

    def close(self) -> None: ...

    def session_info(self) -> _InfoT_co: ...


class Transport(Protocol[_InfoT]):
    """A site's channel protocol, as the commands need it: its handshakes (blocking
    sockets, asyncio driving protocols), and words for the sessions it makes."""

    @property
    def label(self) -> str:
        """ "HKX/1", or "TLS 1.3 <mode> mode, groups ..."."""

    @property
    def handshake_timeout(self) -> float | None: ...

    @property
    def uses_qkd(self) -> bool:
        """Whether its handshakes take keys from the site's QKD pools."""

    @property
    def refusal(self) -> bytes:
        """What a client refused at the connection limit reads (an alert, or nothing)."""

    def wrap(self, raw: socket.socket, *, server_side: bool,
             peer: str | None) -> ChannelSocket[_InfoT]:
        """A blocking secure socket over ``raw`` (owned from now on), handshake not run."""

    def driving_protocol(self, app: asyncio.Protocol, *, server_side: bool,
                         peer: str | None) -> DrivingProtocol:
        """An asyncio driving protocol for one connection (keys fetched off the loop)."""

    def summary(self, info: _InfoT) -> str:
        """One line after the handshake, for the log (without the peer)."""

    def describe(self, info: _InfoT, qkd_source: str) -> list[tuple[str, str]]:
        """(label, value) lines for ``connect --verbose``."""

    def counters(self, info: _InfoT) -> str:
        """What the session spent, for the closing line."""

    def alert_name(self, code: int) -> str: ...


class HKXChannel:
    """HKX/1 (docs/protocol.md) through a :class:`hybridkex.Context`."""

    label = "HKX/1"
    uses_qkd = True
    refusal = HKX_BUSY

    def __init__(self, context: Context) -> None:
        self.context = context

    @property
    def handshake_timeout(self) -> float | None:
        return self.context.handshake_timeout

    def wrap(self, raw: socket.socket, *, server_side: bool, peer: str | None) -> SecureSocket:
        return self.context.wrap_socket(raw, server_side=server_side, peer=peer,
                                        do_handshake_on_connect=False)

    def driving_protocol(self, app: asyncio.Protocol, *, server_side: bool,
                         peer: str | None) -> DrivingProtocol:
        from hybridkex.asyncio import SecureProtocol

        connection = self.context.new_connection(server_side, peer, key_events=True)
        return SecureProtocol(connection, app, self.context.handshake_timeout)

    def summary(self, info: SessionInfo) -> str:
        qkd = ", ".join(info.qkd_key_ids) or "none"
        secrets = " + ".join([*info.kems, "QKD key" if info.qkd else "no QKD key"])
        return (f"{info.auth_mode} authentication, {info.suite}, QKD key {qkd}"
                + (f" (fallback: {info.fallback})" if info.fallback else "")
                + f"; secrets {secrets}")

    def describe(self, info: SessionInfo, qkd_source: str) -> list[tuple[str, str]]:
        return describe_session(info, qkd_source)

    def counters(self, info: SessionInfo) -> str:
        return f"{info.qkd_rekeys} QKD re-keys, {info.pool_keys_spent} pool keys spent"

    def alert_name(self, code: int) -> str:
        return hkx_alert_name(code)


class TLSChannel:
    """TLS 1.3 (docs/tls.md) through a :class:`hybridkex.tls.TLSContext`."""

    refusal = b""  # TLS has no alert for it: the refused client reads a closed connection

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
        return self.context.wrap_socket(raw, server_side=server_side, peer=peer,
                                        do_handshake_on_connect=False)

    def driving_protocol(self, app: asyncio.Protocol, *, server_side: bool,
                         peer: str | None) -> DrivingProtocol:
        from hybridkex.tls.asyncio import TLSProtocol

        connection = self.context.new_connection(server_side, peer, key_events=True)
        return TLSProtocol(connection, app, self.context.handshake_timeout)

    def summary(self, info: TLSSessionInfo) -> str:
        if info.psk_used:
            auth = "qkd-psk authentication"
        else:
            auth = f"certificate authentication ({info.peer_signature_scheme or 'none'})"
        return (f"{auth}, {info.version}, {info.cipher}, group {info.group}, "
                f"QKD key {info.psk_key_id or 'none'}; secrets {' + '.join(info.key_exchange)}")

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
    anchors, the site's QKD key source (keys.db or its KME).  A certificate-mode server
    accepts any certificate trust/ admits (as HKX/1 does); a qkd-psk server fetches keys
    from the pools of all the site's peers (trust/'s, or those [key_source.peers] names).
    Refuses, with a one-line reason, what cannot work."""
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
        peers = tuple(site.qkd_peers())
        if not peers and site.kme is not None:
            raise TLSConfigurationError(
                f"site {site.name}'s [key_source.peers] names no peer, so a qkd-psk server "
                "has no SAE to fetch keys from")
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


def channel_for(site: Site, args: argparse.Namespace, *, server_side: bool,
                peer: str | None = None) -> HKXChannel | TLSChannel:
    if args.tls:
        return _tls_channel(site, args, server_side=server_side, peer=peer)
    return hkx_channel(site, args)


def choose_peer(site: Site, named: str | None) -> str:
    """``--peer``, or the only peer in trust/.  A name the site does not trust is refused
    here, with that reason, rather than later as a missing QKD key (a site trusting a
    CA may connect to any name the CA certifies, so it is let through then)."""
    if named is None:
        return site.default_peer()
    trusted = site.trusted()
    if named == site.name:
        raise SiteError(f"--peer {named} is this site itself")
    if named not in site.peers() and not any(t.kind == "x509-ca" for t in trusted):
        listed = ", ".join(site.peers()) or "none"
        raise SiteError(f"site {site.name} does not trust a site named {named!r} (it trusts: "
                        f"{listed}); add its identity with `hybridkex site trust`")
    return named


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=1024)


def raise_fd_limit(connections: int) -> None:
    """Enough file descriptors for ``connections`` streams of two sockets each, or a
    one-line reason why not."""
    try:
        import resource
    except ImportError:  # not POSIX: nothing to check
        return
    needed = 2 * connections + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        raise InvalidParameter(f"--max-connections {connections} needs about {needed} open "
                               f"files, and this process may have {hard} (ulimit -n)")


# -- serve ------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from hybridkex.cli.serving import serve

    _check_options(args)
    raise_fd_limit(args.max_connections)
    with Site.load(args.site) as site:
        return serve(args, site, channel_for(site, args, server_side=True))


# -- connect ----------------------------------------------------------------------------------


def _fail(status: int, message: str) -> int:
    print(f"hybridkex connect: {message}", file=sys.stderr, flush=True)
    return status


def cmd_connect(args: argparse.Namespace) -> int:
    _check_options(args)
    with Site.load(args.site) as site:
        peer = choose_peer(site, args.peer)
        if args.tls:
            tls = _tls_channel(site, args, server_side=False, peer=peer)
            if tls.uses_qkd:
                site.require_qkd_peer(peer)  # a missing SAE ID, not a failed QKD policy
            return _open(args, site, peer, tls)
        hkx = hkx_channel(site, args)
        config = hkx.context.config
        if config.policy.requires_qkd or config.auth == "psk":
            site.require_qkd_peer(peer)  # (a fallback policy may go on without QKD)
        return _open(args, site, peer, hkx)


def _open(args: argparse.Namespace, site: Site, peer: str,
          transport: Transport[_InfoT]) -> int:
    if args.listen_local is not None:
        from hybridkex.cli.serving import forward_local

        raise_fd_limit(args.max_connections)
        return forward_local(args, site, peer, transport)
    return _connect(args, site, peer, transport)


def handshake_failure(peer: str, exc: BaseException, transport: Transport[Any], spent: int,
                      in_flight: int, args: argparse.Namespace) -> str:
    """The one line for a client's failed handshake: what, what to do, what it cost."""
    return (f"handshake with {peer} failed: {reason(exc, transport.alert_name)}"
            f"{hint(exc, bool(args.tls), args.auth)}; {spent_note(spent, in_flight)}")


def _connect(args: argparse.Namespace, site: Site, peer: str,
             transport: Transport[_InfoT]) -> int:
    where = format_address(args.address)
    try:
        raw = socket.create_connection(args.address, timeout=transport.handshake_timeout)
    except OSError as exc:
        return _fail(EXIT_NETWORK, f"cannot connect to {where}: {reason(exc)}; "
                                   f"{spent_note(0)}")
    raw.settimeout(None)
    secure = transport.wrap(raw, server_side=False, peer=peer)
    try:
        secure.do_handshake()
    except (ProtocolError, HandshakeTimeout) as exc:
        return _fail(EXIT_HANDSHAKE, handshake_failure(peer, exc, transport,
                                                       secure.pool_keys_spent, 0, args))
    except OSError as exc:
        secure.close()
        return _fail(EXIT_NETWORK, handshake_failure(peer, exc, transport,
                                                     secure.pool_keys_spent, 0, args))
    except HybridKexError as exc:
        secure.close()
        raise HybridKexError(handshake_failure(peer, exc, transport, secure.pool_keys_spent,
                                               0, args)) from exc
    try:
        if args.verbose:
            print(f"hybridkex connect: connected to {peer} at {where} ({transport.label})",
                  file=sys.stderr)
            _print_lines(transport.describe(secure.session_info(),
                                            site.qkd_source_label(peer)), sys.stderr)
            if transport.uses_qkd:
                print(f"  {pool_level(site, peer)}", file=sys.stderr)
            sys.stderr.flush()
        return _exchange(secure, raw, peer, transport, args.verbose)
    finally:
        secure.close()


def linger(raw: socket.socket, seconds: float = 1.0) -> None:
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
        linger(raw, 0.5)  # let our alert reach the peer rather than a reset
        return _fail(EXIT_SESSION, f"session with {peer} failed: "
                     f"{reason(exc, transport.alert_name)}")
    if send_error and not isinstance(send_error[0], OSError):
        return _fail(EXIT_SESSION, f"session with {peer} failed: "
                     f"{reason(send_error[0], transport.alert_name)}")
    if verbose:
        print(f"hybridkex connect: closed cleanly: {sent[0]} bytes sent, {received} received, "
              f"{transport.counters(secure.session_info())}", file=sys.stderr, flush=True)
    return EXIT_OK
