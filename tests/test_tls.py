"""hybridkex.tls: real TLS 1.3 (pyOpenSSL) between two hybridkex.tls ends on loopback.

Certificate mode with every offered group and every certificate key type, mutual
authentication, and the refusals (wrong anchor, wrong site name, no client
certificate, no common group); qkd-psk mode with the QKD key as the external PSK, its
pool accounting, and the refusals that must never fall back to a certificate handshake
(unknown key ID, a different key under the same ID, a peer that ignores the PSK); the
checks made after the handshake (group, SSL_session_reused), forced to fail; the
exporter; the blocking socket surface; asyncio streams.  Every socket operation has a
time limit and every test runs under a guard that dumps all stacks rather than hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import os
import queue
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from hybridkex.errors import (
    AlertReceived,
    ConnectionTruncated,
    HandshakeTimeout,
    HybridKexError,
    PeerAuthenticationFailed,
    PolicyViolation,
    ProtocolError,
    QKDKeyRefused,
)
from hybridkex.keydelivery.source import StoreKeySource
from hybridkex.protocol import SigningIdentity, TrustStore
from hybridkex.tls import (
    GROUPS,
    PSKNotUsed,
    QKDKeyUnavailable,
    TLSAlertReceived,
    TLSConfigurationError,
    TLSConnectionTruncated,
    TLSContext,
    TLSHandshakeTimeout,
    TLSNegotiationFailed,
    TLSPeerAuthenticationFailed,
    TLSQKDKeyRefused,
    TLSSessionInfo,
    TLSSocket,
    UnknownGroup,
    _openssl,
)
from hybridkex.tls import asyncio as tls_asyncio
from tests.support import CLIENT, PKI, SERVER, OneWayPools, one_end, one_way_pools

TIMEOUT = 10.0  # seconds, for every socket operation
TEST_LIMIT = 60.0  # seconds, for a whole test
pytestmark = pytest.mark.time_limit(TEST_LIMIT)
HOST = "127.0.0.1"
SIGNATURES = {"ML-DSA-65": "mldsa65", "Ed25519": "ed25519",
              "ECDSA-P256": "ecdsa_secp256r1_sha256"}


# -- sites ----------------------------------------------------------------------------


@cache
def _pki(scheme: str) -> PKI:
    return PKI.create(scheme)


def pki(scheme: str = "ML-DSA-65") -> PKI:
    """A root, an intermediate and leaves for both sites (chains sent leaf + intermediate),
    one per scheme for the whole module."""
    return _pki(scheme)


def cert_contexts(scheme: str = "ML-DSA-65", *, client: dict[str, Any] | None = None,
                  server: dict[str, Any] | None = None) -> tuple[TLSContext, TLSContext]:
    p = pki(scheme)
    c: dict[str, Any] = {"identity": p.identities[CLIENT], "trust": p.trust(),
                         "handshake_timeout": 5.0}
    s: dict[str, Any] = {"identity": p.identities[SERVER], "trust": p.trust(),
                         "handshake_timeout": 5.0}
    c.update(client or {})
    s.update(server or {})
    return TLSContext(CLIENT, **c), TLSContext(SERVER, **s)


def psk_contexts(p: OneWayPools, *, client: dict[str, Any] | None = None,
                 server: dict[str, Any] | None = None) -> tuple[TLSContext, TLSContext]:
    c: dict[str, Any] = {"mode": "qkd-psk", "key_source": StoreKeySource(p.client),
                         "handshake_timeout": 5.0}
    s: dict[str, Any] = {"mode": "qkd-psk", "key_source": StoreKeySource(p.server),
                         "peers": [CLIENT], "handshake_timeout": 5.0}
    c.update(client or {})
    s.update(server or {})
    return TLSContext(CLIENT, **c), TLSContext(SERVER, **s)


# -- a threaded server on loopback ------------------------------------------------------


@dataclass
class Outcome:
    error: BaseException | None = None
    session: TLSSessionInfo | None = None
    exporter: bytes | None = None
    result: Any = None


Handler = Callable[[TLSSocket], Any]


def echo(sock: TLSSocket) -> int:
    total = 0
    while data := sock.recv(1 << 16):
        sock.sendall(data)
        total += len(data)
    return total


class Server:
    """Accepts connections on loopback; each one's handshake and ``handler`` run in a
    thread of their own, and its :class:`Outcome` goes to ``outcomes``."""

    def __init__(self, context: TLSContext, handler: Handler | None = echo, *,
                 peer: str | None = None) -> None:
        self.context = context
        self.handler = handler
        self.peer = peer
        self.outcomes: queue.Queue[Outcome] = queue.Queue()
        self._listener = socket.create_server((HOST, 0), backlog=64)
        self._listener.settimeout(TIMEOUT)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._acceptor.join(TIMEOUT)
        for thread in self._threads:
            thread.join(TIMEOUT)
        assert not any(t.is_alive() for t in [self._acceptor, *self._threads])

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        outcome = Outcome()
        conn.settimeout(TIMEOUT)
        try:
            with self.context.wrap_socket(conn, server_side=True, peer=self.peer) as secure:
                outcome.session = secure.session_info()
                outcome.exporter = secure.export_keying_material("test", b"ctx", 32)
                if self.handler is not None:
                    outcome.result = self.handler(secure)
        except BaseException as exc:
            outcome.error = exc
            conn.close()
        self.outcomes.put(outcome)

    def outcome(self) -> Outcome:
        return self.outcomes.get(timeout=TIMEOUT)


def connect(context: TLSContext, server: Server | tuple[str, int], peer: str = SERVER,
            **kwargs: Any) -> TLSSocket:
    address = server.address if isinstance(server, Server) else server
    sock = socket.create_connection(address, timeout=TIMEOUT)
    return context.wrap_socket(sock, peer=peer, **kwargs)


def exchange(client_ctx: TLSContext, server_ctx: TLSContext, *, peer: str = SERVER,
             server_peer: str | None = None) -> tuple[TLSSessionInfo, Outcome, bytes]:
    """One connection that echoes a message; (client's session, server's outcome,
    client's exporter value)."""
    with Server(server_ctx, peer=server_peer) as server:
        with connect(client_ctx, server, peer) as sock:
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
            info = sock.session_info()
            exported = sock.export_keying_material("test", b"ctx", 32)
        outcome = server.outcome()
    assert outcome.error is None, outcome.error
    return info, outcome, exported


def failed_exchange(client_ctx: TLSContext, server_ctx: TLSContext, *, peer: str = SERVER,
                    server_peer: str | None = None) -> tuple[BaseException, BaseException]:
    """A connection that must fail: (client's error, server's error).  In TLS 1.3 a
    client's handshake can complete before the server refuses it; the refusal then
    comes with the client's first read."""
    with Server(server_ctx, handler=None, peer=server_peer) as server:
        try:
            with connect(client_ctx, server, peer) as sock:
                sock.recv(1)
        except HybridKexError as exc:
            client_error: BaseException = exc
        else:
            raise AssertionError("the client's connection did not fail")
        outcome = server.outcome()
    assert outcome.error is not None, "the server's connection did not fail"
    assert outcome.session is None
    return client_error, outcome.error


# -- certificate mode -------------------------------------------------------------------


@pytest.mark.parametrize("group", list(GROUPS))
def test_every_group(group: str) -> None:
    client, server = cert_contexts(client={"groups": [group]}, server={"groups": [group]})
    info, outcome, exported = exchange(client, server)
    assert outcome.session is not None
    assert info.group == outcome.session.group == group
    assert info.key_exchange == GROUPS[group]
    assert info.post_quantum and not info.qkd
    assert info.version == "TLSv1.3"
    assert exported == outcome.exporter


def test_default_group_is_x25519mlkem768() -> None:
    info = exchange(*cert_contexts())[0]
    assert info.group == "X25519MLKEM768"
    assert info.key_exchange == ("ML-KEM-768", "X25519")


def test_hello_retry_request_reaches_the_servers_group() -> None:
    client, server = cert_contexts(client={"groups": ["X25519MLKEM768", "SecP384r1MLKEM1024"]},
                                   server={"groups": ["SecP384r1MLKEM1024"]})
    info = exchange(client, server)[0]
    assert info.group == "SecP384r1MLKEM1024"


@pytest.mark.parametrize("scheme", list(SIGNATURES))
def test_certificates_of_each_scheme_with_mutual_auth(scheme: str) -> None:
    info, outcome, exported = exchange(*cert_contexts(scheme))
    server_info = outcome.session
    assert server_info is not None
    assert info.mode == server_info.mode == "certificate"
    assert info.peer_signature_scheme == SIGNATURES[scheme]
    assert info.local_signature_scheme == SIGNATURES[scheme]
    assert server_info.peer_signature_scheme == SIGNATURES[scheme]
    assert not info.psk_used and info.psk_key_id is None
    for seen, site in ((info, SERVER), (server_info, CLIENT)):
        leaf = x509.load_der_x509_certificate(pki(scheme).identities[site].certificates[0])
        assert seen.peer.site == site
        assert seen.peer.kind == "x509"
        assert seen.peer.scheme == scheme
        assert seen.peer.subject == f"CN={site}" == seen.peer_certificate_subject
        assert seen.peer_certificate_sha256 == hashlib.sha256(
            leaf.public_bytes(Encoding.DER)).hexdigest()
        assert seen.peer.public_key_sha256 == hashlib.sha256(
            pki(scheme).identities[site].public_key).hexdigest()
    assert exported == outcome.exporter


def test_self_signed_site_certificates_trusted_directly() -> None:
    """The layout hybridkex sites use: each trusts the other's self-signed certificate."""
    from hybridkex.site import make_certificate

    identities, certs = {}, {}
    for site in (CLIENT, SERVER):
        key = pki().identities[site]  # reuse a key; a fresh self-signed certificate
        seed = bytes(key.private_key)
        cert = make_certificate(site, "ML-DSA-65", seed, 1)
        certs[site] = cert
        identities[site] = SigningIdentity.from_chain("ML-DSA-65", seed, [cert])
    client = TLSContext(CLIENT, identity=identities[CLIENT],
                        trust=TrustStore(anchors=[certs[SERVER]]))
    server = TLSContext(SERVER, identity=identities[SERVER],
                        trust=TrustStore(anchors=[certs[CLIENT]]))
    info, outcome, _ = exchange(client, server)
    assert info.peer.site == SERVER
    assert outcome.session is not None and outcome.session.peer.site == CLIENT


def test_wrong_anchor_is_refused_by_the_client() -> None:
    other = PKI.create("Ed25519")
    client, server = cert_contexts(client={"trust": other.trust()})
    client_error, server_error = failed_exchange(client, server)
    assert isinstance(client_error, TLSPeerAuthenticationFailed)
    assert isinstance(client_error, PeerAuthenticationFailed)
    assert "trust anchors" in str(client_error)
    assert isinstance(server_error, TLSAlertReceived)


def test_wrong_anchor_is_refused_by_the_server() -> None:
    other = PKI.create("Ed25519")
    client, server = cert_contexts(server={"trust": other.trust()})
    client_error, server_error = failed_exchange(client, server)
    assert isinstance(server_error, TLSPeerAuthenticationFailed)
    assert isinstance(client_error, TLSAlertReceived)
    assert isinstance(client_error, AlertReceived)


def test_wrong_site_name_is_refused() -> None:
    client, server = cert_contexts()
    client_error, server_error = failed_exchange(client, server, peer="site-c")
    assert isinstance(client_error, TLSPeerAuthenticationFailed)
    assert "does not name site 'site-c'" in str(client_error)
    assert client_error.alert == 42  # bad_certificate
    assert isinstance(server_error, TLSAlertReceived) and server_error.alert == 42


def test_server_restricted_to_one_peer_refuses_another() -> None:
    client, server = cert_contexts()
    client_error, server_error = failed_exchange(client, server, server_peer="site-x")
    assert isinstance(server_error, TLSPeerAuthenticationFailed)
    assert "site-x" in str(server_error)
    assert isinstance(client_error, TLSAlertReceived)


def test_server_accepts_a_listed_peer() -> None:
    client, server = cert_contexts(server={"peers": ["site-x", CLIENT]})
    _, outcome, _ = exchange(client, server)
    assert outcome.session is not None and outcome.session.peer.site == CLIENT


def test_mutual_auth_requires_a_client_certificate() -> None:
    client = TLSContext(CLIENT, trust=pki().trust())
    _, server = cert_contexts()
    client_error, server_error = failed_exchange(client, server)
    assert isinstance(server_error, TLSPeerAuthenticationFailed)
    assert server_error.alert == 116  # certificate_required
    assert isinstance(client_error, TLSAlertReceived) and client_error.alert == 116


def test_without_mutual_auth_the_client_is_unauthenticated() -> None:
    client = TLSContext(CLIENT, trust=pki().trust())
    server = TLSContext(SERVER, identity=pki().identities[SERVER], mutual_auth=False)
    info, outcome, _ = exchange(client, server)
    assert info.peer.kind == "x509"
    assert outcome.session is not None
    assert outcome.session.peer.kind == "unauthenticated"
    assert outcome.session.peer_signature_scheme is None


def test_no_common_group_fails_on_both_sides() -> None:
    client, server = cert_contexts(client={"groups": "MLKEM768"},
                                   server={"groups": "MLKEM1024"})
    client_error, server_error = failed_exchange(client, server)
    assert isinstance(server_error, TLSNegotiationFailed)
    assert isinstance(server_error, PolicyViolation)
    assert isinstance(client_error, TLSAlertReceived)


def test_negotiated_group_outside_the_configuration_is_refused() -> None:
    """The check after the handshake: OpenSSL was set up for X25519MLKEM768, but the
    context now says only MLKEM1024 is acceptable."""
    client, server = cert_contexts()
    client.groups = ("MLKEM1024",)
    with Server(server, handler=None) as srv:
        with pytest.raises(TLSNegotiationFailed, match="not one of the configured"):
            connect(client, srv)
        outcome = srv.outcome()
    # The client dropped its Finished: the server never completed its handshake.
    assert isinstance(outcome.error, (TLSConnectionTruncated, TLSAlertReceived))


def test_a_resumed_session_is_refused_in_certificate_mode(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_openssl, "session_reused", lambda conn: True)
    client_error = failed_exchange(*cert_contexts())[0]
    assert isinstance(client_error, TLSNegotiationFailed)


# -- configuration ----------------------------------------------------------------------


def test_group_names() -> None:
    ctx, _ = cert_contexts(client={"groups": ["x25519mlkem768", "SECP384R1MLKEM1024"]})
    assert ctx.groups == ("X25519MLKEM768", "SecP384r1MLKEM1024")
    for bad in ("X25519", "secp256r1", "MLKEM512", "nonsense", ""):
        with pytest.raises(UnknownGroup):
            cert_contexts(client={"groups": [bad]})
    with pytest.raises(TLSConfigurationError):
        cert_contexts(client={"groups": ["MLKEM768", "mlkem768"]})
    with pytest.raises(TLSConfigurationError):
        cert_contexts(client={"groups": []})


def test_configuration_errors() -> None:
    p = pki()
    with pytest.raises(TLSConfigurationError, match="key_source"):
        TLSContext(CLIENT, mode="qkd-psk")
    with pytest.raises(TLSConfigurationError, match="mode"):
        TLSContext(CLIENT, mode="psk", trust=p.trust())
    with pytest.raises(TLSConfigurationError, match="psk_cipher"):
        TLSContext(CLIENT, mode="qkd-psk", key_source=StoreKeySource(one_way_pools().client),
                   psk_cipher="TLS_AES_128_CCM_SHA256")
    with pytest.raises(TLSConfigurationError, match="certificate chain"):
        TLSContext(CLIENT, identity=SigningIdentity.generate("Ed25519"), trust=p.trust())
    with pytest.raises(TLSConfigurationError, match="cannot be presented"):
        TLSContext(CLIENT, identity=SigningIdentity.generate("ML-DSA-65+Ed25519"),
                   trust=p.trust())
    with pytest.raises(TLSConfigurationError, match="does not name this site"):
        TLSContext("site-c", identity=p.identities[CLIENT], trust=p.trust())
    with pytest.raises(TLSConfigurationError, match="neither as a client"):
        TLSContext(CLIENT)
    # A client-only context (no identity) and a server-only one (no anchors).
    client_only = TLSContext(CLIENT, trust=p.trust())
    with pytest.raises(TLSConfigurationError, match="needs an identity"):
        client_only.new_connection(True, None)
    server_only = TLSContext(SERVER, identity=p.identities[SERVER], mutual_auth=False)
    with pytest.raises(TLSConfigurationError, match="anchors"):
        server_only.new_connection(False, CLIENT)
    with pytest.raises(TLSConfigurationError, match="peer="):
        client_only.new_connection(False, None)
    psk_server = TLSContext(SERVER, mode="qkd-psk",
                            key_source=StoreKeySource(one_way_pools().server))
    with pytest.raises(TLSConfigurationError, match="peers="):
        psk_server.new_connection(True, None)


def test_error_classes_match_hkx_ones() -> None:
    assert issubclass(TLSPeerAuthenticationFailed, PeerAuthenticationFailed)
    assert issubclass(TLSQKDKeyRefused, QKDKeyRefused)
    assert issubclass(TLSConnectionTruncated, ConnectionTruncated)
    assert issubclass(TLSHandshakeTimeout, HandshakeTimeout)
    assert issubclass(PSKNotUsed, PolicyViolation)
    assert issubclass(QKDKeyUnavailable, ProtocolError)
    assert issubclass(UnknownGroup, HybridKexError) and issubclass(UnknownGroup, LookupError)


# -- qkd-psk mode -----------------------------------------------------------------------


def test_psk_mode_uses_the_qkd_key_and_spends_one_per_side() -> None:
    p = one_way_pools(8)
    before = (p.client.status(SERVER), p.server.status(CLIENT))
    info, outcome, exported = exchange(*psk_contexts(p))
    server_info = outcome.session
    assert server_info is not None
    for seen, site in ((info, SERVER), (server_info, CLIENT)):
        assert seen.mode == "qkd-psk"
        assert seen.psk_used and seen.qkd
        assert seen.peer.site == site and seen.peer.kind == "psk" and seen.peer.scheme is None
        assert seen.peer_signature_scheme is None and seen.peer_certificate_subject is None
        assert seen.cipher == "TLS_AES_256_GCM_SHA384"
        assert seen.group == "X25519MLKEM768"
        assert seen.key_exchange == ("ML-KEM-768", "X25519", "QKD key (external PSK)")
        assert "QKD key alone" in seen.authentication and "RFC 8773" in seen.authentication
    assert info.psk_key_id is not None and info.psk_key_id == server_info.psk_key_id
    assert info.psk_key_id in p.material()
    assert exported == outcome.exporter
    after = (p.client.status(SERVER), p.server.status(CLIENT))
    assert after[0].available_to_take == before[0].available_to_take - 1
    assert after[1].available_to_fetch == before[1].available_to_fetch - 1
    assert p.delivered() == (1, 1)


@pytest.mark.parametrize("cipher", ["TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"])
def test_psk_mode_with_a_sha256_suite(cipher: str) -> None:
    p = one_way_pools()
    info, outcome, exported = exchange(*psk_contexts(p, client={"psk_cipher": cipher},
                                                     server={"psk_cipher": cipher}))
    assert info.cipher == cipher and info.psk_used
    assert exported == outcome.exporter


@pytest.mark.parametrize("group", list(GROUPS))
def test_psk_mode_with_every_group(group: str) -> None:
    p = one_way_pools()
    info = exchange(*psk_contexts(p, client={"groups": group}, server={"groups": group}))[0]
    assert info.group == group and info.psk_used
    assert p.delivered() == (1, 1)


def test_psk_survives_a_hello_retry_request_with_one_key_per_side() -> None:
    """After a HelloRetryRequest OpenSSL asks both callbacks again; the same key is
    offered and found, not a second one taken or fetched (which would fail)."""
    p = one_way_pools()
    info = exchange(*psk_contexts(
        p, client={"groups": ["X25519MLKEM768", "SecP384r1MLKEM1024"]},
        server={"groups": ["SecP384r1MLKEM1024"]}))[0]
    assert info.group == "SecP384r1MLKEM1024" and info.psk_used
    assert p.delivered() == (1, 1)


def test_consecutive_psk_sessions_use_fresh_keys() -> None:
    p = one_way_pools(4)
    client, server = psk_contexts(p)
    ids = {exchange(client, server)[0].psk_key_id for _ in range(3)}
    assert len(ids) == 3
    assert p.delivered() == (3, 3)


def test_concurrent_psk_sessions_each_get_their_own_key() -> None:
    """The callbacks are per OpenSSL context; each connection must see its own key."""
    p = one_way_pools(16)
    client, server = psk_contexts(p)
    seen: list[tuple[str | None, bytes]] = []
    errors: list[BaseException] = []
    with Server(server) as srv:
        def one() -> None:
            try:
                with connect(client, srv) as sock:
                    sock.sendall(b"x")
                    assert sock.recv(1) == b"x"
                    seen.append((sock.session_info().psk_key_id,
                                 sock.export_keying_material("test", b"ctx", 32)))
            except BaseException as exc:
                errors.append(exc)
        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        outcomes = [srv.outcome() for _ in threads]
    assert not errors, errors
    assert all(o.error is None for o in outcomes)
    assert len({key_id for key_id, _ in seen}) == 8
    server_side = {(o.session.psk_key_id if o.session else None, o.exporter) for o in outcomes}
    assert server_side == set(seen)
    assert p.delivered() == (8, 8)


def test_unknown_key_id_fails_without_certificate_fallback() -> None:
    p = one_way_pools(4, server="other IDs")
    client_error, server_error = failed_exchange(*psk_contexts(p))
    assert isinstance(server_error, TLSQKDKeyRefused)
    assert isinstance(server_error, QKDKeyRefused)
    assert isinstance(client_error, TLSAlertReceived)
    # The client's key is spent (it entered the handshake); the server fetched nothing.
    assert p.delivered() == (1, 0)


def test_a_replayed_key_id_is_refused() -> None:
    """A key is delivered once: a second client holding the same pool key (a copy, or a
    replayed ClientHello's identity) cannot get a session with it."""
    p = one_way_pools(1)
    copy = one_end(CLIENT, p.units)
    client, server = psk_contexts(p)
    exchange(client, server)
    replay = TLSContext(CLIENT, mode="qkd-psk", key_source=StoreKeySource(copy))
    client_error, server_error = failed_exchange(replay, server)
    assert isinstance(server_error, TLSQKDKeyRefused)
    assert "already delivered" in str(server_error)
    assert isinstance(client_error, TLSAlertReceived)


def test_different_key_under_the_same_id_fails_on_the_binder() -> None:
    p = one_way_pools(4, server="other keys")
    client_error, server_error = failed_exchange(*psk_contexts(p))
    assert isinstance(server_error, TLSPeerAuthenticationFailed)
    assert "binder" in str(server_error)
    assert isinstance(client_error, TLSAlertReceived) and client_error.alert == 51
    assert p.delivered() == (1, 1)  # fetched means consumed


def test_server_accepts_only_pools_of_its_peers() -> None:
    p = one_way_pools(4)
    client, server = psk_contexts(p, server={"peers": ["site-x"]})
    server_error = failed_exchange(client, server)[1]
    assert isinstance(server_error, TLSQKDKeyRefused)
    assert p.delivered() == (1, 0)


def test_psk_client_refuses_a_server_that_ignores_the_psk() -> None:
    """A certificate-mode server has no PSK callback, so OpenSSL ignores the offered PSK
    and runs a certificate handshake.  The qkd-psk client trusts no certificate, and
    would refuse a session without the PSK anyway (SSL_session_reused)."""
    p = one_way_pools(4)
    client, _ = psk_contexts(p)
    _, server = cert_contexts()
    client_error, server_error = failed_exchange(client, server)
    assert isinstance(client_error, TLSPeerAuthenticationFailed)
    assert "qkd-psk" in str(client_error)
    assert isinstance(server_error, TLSAlertReceived)


def test_psk_server_refuses_a_client_without_the_psk() -> None:
    """A qkd-psk server holds no certificate: a client that offers no PSK cannot get a
    certificate handshake from it."""
    p = one_way_pools(4)
    _, server = psk_contexts(p)
    client, _ = cert_contexts()
    client_error, server_error = failed_exchange(client, server)
    assert isinstance(server_error, TLSNegotiationFailed)
    assert isinstance(client_error, TLSAlertReceived)
    assert p.delivered() == (0, 0)


def test_psk_not_used_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check after the handshake, forced: SSL_session_reused != 1 is a typed error."""
    monkeypatch.setattr(_openssl, "session_reused", lambda conn: False)
    p = one_way_pools(4)
    client_ctx, server_ctx = psk_contexts(p)
    with Server(server_ctx, handler=None) as srv:
        with pytest.raises(PSKNotUsed, match="SSL_session_reused"):
            connect(client_ctx, srv)
        outcome = srv.outcome()
    assert isinstance(outcome.error, (PSKNotUsed, TLSConnectionTruncated))


def test_empty_pool_is_a_typed_error_and_nothing_is_sent() -> None:
    p = one_way_pools(1)
    client, server = psk_contexts(p)
    exchange(client, server)
    with Server(server, handler=None) as srv:
        with pytest.raises(QKDKeyUnavailable, match="QKD key"):
            connect(client, srv)
        outcome = srv.outcome()
    assert isinstance(outcome.error, TLSConnectionTruncated)


def test_connections_release_their_callback_state() -> None:
    p = one_way_pools(4)
    exchange(*psk_contexts(p))
    failed_exchange(*psk_contexts(one_way_pools(2, server="other IDs")))
    exchange(*cert_contexts())
    gc.collect()
    assert len(_openssl._HOOKS) == 0


def test_the_key_is_never_shown() -> None:
    p = one_way_pools(2)
    client, server = psk_contexts(p)
    info, outcome, _ = exchange(client, server)
    key = p.material()[info.psk_key_id or ""]
    texts = [repr(client), repr(server), repr(info), str(info.describe()),
             repr(outcome.session), repr(p.client), repr(StoreKeySource(p.client))]
    bad = one_way_pools(2, server="other keys")
    errors = failed_exchange(*psk_contexts(bad))
    texts += [repr(e) for e in errors] + [str(e) for e in errors]
    for text in texts:
        for secret in (key, *bad.material().values()):
            assert secret.hex() not in text and repr(secret) not in text


# -- the socket surface -----------------------------------------------------------------


def test_exporter_matches_and_depends_on_label_and_context() -> None:
    def handler(sock: TLSSocket) -> list[bytes]:
        return [sock.export_keying_material("a", b"", 32),
                sock.export_keying_material("a", b"x", 32),
                sock.export_keying_material(b"b", b"", 64)]
    client_ctx, server_ctx = cert_contexts()
    with Server(server_ctx, handler) as srv:
        with connect(client_ctx, srv) as sock:
            mine = [sock.export_keying_material("a", b"", 32),
                    sock.export_keying_material("a", b"x", 32),
                    sock.export_keying_material(b"b", b"", 64)]
        outcome = srv.outcome()
    assert outcome.result == mine
    assert len(set(mine)) == 3 and len(mine[2]) == 64


def test_bulk_data_makefile_and_shutdown() -> None:
    payload = os.urandom(3 << 20)
    client_ctx, server_ctx = cert_contexts("Ed25519")
    with Server(server_ctx) as srv:
        sock = connect(client_ctx, srv)
        received = bytearray()
        reader_error: list[BaseException] = []

        def read() -> None:
            try:
                buffer = bytearray(1 << 15)
                while n := sock.recv_into(buffer):
                    received.extend(buffer[:n])
            except BaseException as exc:
                reader_error.append(exc)

        thread = threading.Thread(target=read)
        thread.start()
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # close_notify: the server's echo loop ends
        thread.join(TIMEOUT)
        assert not reader_error and bytes(received) == payload
        assert sock.recv(10) == b""
        sock.close()
        assert sock.closed
        assert srv.outcome().result == len(payload)


def test_makefile_lines() -> None:
    def handler(sock: TLSSocket) -> str:
        with sock.makefile("rw", encoding="utf-8", newline="\n") as f:
            line = f.readline()
            f.write(line.upper())
            f.flush()
        return str(line)
    client_ctx, server_ctx = cert_contexts()
    with Server(server_ctx, handler) as srv:
        with connect(client_ctx, srv) as sock:
            assert sock.fileno() >= 0 and sock.gettimeout() == TIMEOUT
            sock.settimeout(TIMEOUT / 2)
            with sock.makefile("rwb") as f:
                f.write(b"hello tls\n")
                f.flush()
                assert f.readline() == b"HELLO TLS\n"
        assert srv.outcome().result == "hello tls\n"


def test_transport_ending_without_close_notify_is_truncation() -> None:
    listener = socket.create_server((HOST, 0))
    listener.settimeout(TIMEOUT)
    client_ctx, server_ctx = cert_contexts()
    done = threading.Event()

    def serve() -> None:
        raw, _ = listener.accept()
        raw.settimeout(TIMEOUT)
        secure = server_ctx.wrap_socket(raw, server_side=True)
        done.wait(TIMEOUT)
        secure._sock.close()  # the transport ends; no close_notify

    thread = threading.Thread(target=serve)
    thread.start()
    with connect(client_ctx, listener.getsockname()[:2]) as sock:
        done.set()
        with pytest.raises(TLSConnectionTruncated):
            sock.recv(10)
    thread.join(TIMEOUT)
    listener.close()


def test_handshake_timeout() -> None:
    listener = socket.create_server((HOST, 0))
    client_ctx, _ = cert_contexts()
    with pytest.raises(TLSHandshakeTimeout):
        connect(client_ctx, listener.getsockname()[:2], handshake_timeout=0.3)
    listener.close()


# -- asyncio ------------------------------------------------------------------------------


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT * 2))


@pytest.mark.parametrize("mode", ["certificate", "qkd-psk"])
def test_asyncio_streams(mode: str) -> None:
    p = one_way_pools(4)
    client_ctx, server_ctx = cert_contexts() if mode == "certificate" else psk_contexts(p)
    served: list[TLSSessionInfo] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(writer.get_extra_info("session_info"))
        line = await reader.readline()
        writer.write(line[::-1])
        await writer.drain()
        writer.close()

    async def main() -> tuple[TLSSessionInfo, bytes, bytes]:
        server = await tls_asyncio.start_server(handle, HOST, 0, context=server_ctx)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await tls_asyncio.open_connection(
                HOST, port, context=client_ctx, peer=SERVER)
            writer.write(b"abc\n")
            await writer.drain()
            answer = await reader.read()
            connection = writer.get_extra_info("tls_connection")
            exported = connection.export_keying_material("x", b"", 16)
            writer.close()
            await writer.wait_closed()
            info = writer.get_extra_info("session_info")
            assert writer.get_extra_info("peer_identity") == info.peer
            return info, answer, exported

    info, answer, exported = run(main())
    assert answer == b"\ncba"
    assert info.mode == mode and served and served[0].mode == mode
    if mode == "qkd-psk":
        assert info.psk_used and info.psk_key_id == served[0].psk_key_id
        assert p.delivered() == (1, 1)
    else:
        assert info.peer_signature_scheme == "mldsa65"
    assert len(exported) == 16


def test_asyncio_failed_handshake_is_typed_and_never_reaches_the_callback() -> None:
    client_ctx, server_ctx = cert_contexts()
    called: list[bool] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        called.append(True)

    async def main() -> None:
        server = await tls_asyncio.start_server(handle, HOST, 0, context=server_ctx)
        port = server.sockets[0].getsockname()[1]
        async with server:
            with pytest.raises(TLSPeerAuthenticationFailed, match="site-c"):
                await tls_asyncio.open_connection(HOST, port, context=client_ctx,
                                                  peer="site-c")
            p = one_way_pools(2, server="other IDs")
            psk_client, psk_server = psk_contexts(p)
            psk = await tls_asyncio.start_server(handle, HOST, 0, context=psk_server)
            async with psk:
                with pytest.raises(TLSAlertReceived):
                    await tls_asyncio.open_connection(
                        HOST, psk.sockets[0].getsockname()[1], context=psk_client,
                        peer=SERVER)

    run(main())
    assert not called


def test_asyncio_handshake_timeout() -> None:
    client_ctx, _ = cert_contexts()

    async def main() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # says nothing; ends when the client gives up
            writer.close()

        server = await asyncio.start_server(silent, HOST, 0)
        async with server:
            with pytest.raises(TLSHandshakeTimeout):
                await tls_asyncio.open_connection(
                    HOST, server.sockets[0].getsockname()[1], context=client_ctx,
                    peer=SERVER, handshake_timeout=0.3)
            server.close()

    run(main())
