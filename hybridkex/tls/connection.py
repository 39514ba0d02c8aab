"""A sans-IO TLS 1.3 connection: pyOpenSSL over memory BIOs, bytes in and bytes out.

:class:`TLSConnection` holds one ``SSL.Connection`` whose network side is a pair of
memory BIOs.  The blocking :class:`~hybridkex.tls.socket.TLSSocket` and the asyncio
protocol in :mod:`hybridkex.tls.asyncio` move its bytes; it turns OpenSSL's outcomes
into typed errors and makes the checks OpenSSL does not make itself:

* the negotiated group is one of the configured ones (OpenSSL would never pick
  another, but a session that did would be refused rather than used);
* qkd-psk mode: ``SSL_session_reused`` is 1, so the QKD key really was the PSK
  (OpenSSL silently drops a PSK that does not fit the chosen suite); certificate mode:
  it is 0, so nothing was resumed;
* the peer's certificate names the expected site and holds a key hybridkex accepts
  (in the verify callback, so a refusal is a TLS alert during the handshake).

QKD keys (qkd-psk mode): by default the key source is called where OpenSSL needs the
key (a client's take before its hello, a server's fetch in OpenSSL's PSK callback).
With ``key_events=True`` the connection never calls it: a client waits in
:meth:`TLSConnection.do_handshake` until its driver answers :attr:`key_request`
(``supply_keys`` or ``refuse_keys``); a server holds the first bytes back until the
ClientHello is complete, reads its PSK identity (:mod:`hybridkex.tls.hello`), asks
for that key the same way, and only then gives OpenSSL the hello.

Not thread-safe: callers serialise access (the socket wrapper holds a lock).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from hybridkex.errors import (
    HybridKexError,
    InvalidParameter,
    LocalProtocolError,
    PeerAuthenticationFailed,
)
from hybridkex.keydelivery.errors import KeySourceError
from hybridkex.keydelivery.keys import DeliveredKey
from hybridkex.keydelivery.request import KeyRequest
from hybridkex.protocol.identity import PeerIdentity, public_key_bytes
from hybridkex.tls import _openssl
from hybridkex.tls.context import PSK_BITS, SIGNATURE_ALGORITHMS, certificate_names
from hybridkex.tls.errors import (
    PSKNotUsed,
    QKDKeyUnavailable,
    TLSAlertReceived,
    TLSConnectionTruncated,
    TLSNegotiationFailed,
    TLSPeerAuthenticationFailed,
    TLSProtocolError,
    TLSQKDKeyRefused,
    TLSRecordAuthenticationFailed,
)
from hybridkex.tls.hello import MAX_HELLO, NEED_MORE, first_psk_identity
from hybridkex.tls.session import PSK_AUTHENTICATION, TLSSessionInfo, signature_scheme_name
from hybridkex.transport.stream import READ_SIZE

if TYPE_CHECKING:
    from hybridkex.tls.context import TLSContext, _Role

__all__ = ["ALERT_NAMES", "TLSConnection", "TLSState"]


_MALFORMED_CERTIFICATE = (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension,
                          x509.UnsupportedGeneralNameType)
_CERTIFICATE_VERIFY = 15
_MAX_KEY_ID = 255

ALERT_NAMES = {
    0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac", 22: "record_overflow",
    40: "handshake_failure", 42: "bad_certificate", 43: "unsupported_certificate",
    44: "certificate_revoked", 45: "certificate_expired", 46: "certificate_unknown",
    47: "illegal_parameter", 48: "unknown_ca", 49: "access_denied", 50: "decode_error",
    51: "decrypt_error", 70: "protocol_version", 71: "insufficient_security",
    80: "internal_error", 86: "inappropriate_fallback", 90: "user_canceled",
    109: "missing_extension", 110: "unsupported_extension", 112: "unrecognized_name",
    115: "unknown_psk_identity", 116: "certificate_required",
    120: "no_application_protocol",
}
_AUTH_ALERTS = {42, 43, 44, 45, 46, 48, 49, 51, 116}
_HKX_PROTOCOL_VERSION_ALERT = bytes([21, 0, 2, 2, 70])  # record: alert, fatal, 70
_NEGOTIATION_ALERTS = {40, 70, 71}


def alert_name(code: int) -> str:
    return ALERT_NAMES.get(code, f"alert {code}")


def _scheme_of(certificate: x509.Certificate) -> str | None:
    for scheme in SIGNATURE_ALGORITHMS:
        try:
            public_key_bytes(certificate, scheme)
        except PeerAuthenticationFailed:
            continue
        return scheme
    return None


class TLSState(enum.Enum):
    HANDSHAKING = "handshaking"
    OPEN = "open"
    CLOSED = "closed"  # close_notify sent
    ERROR = "error"


class _Hooks:
    """Per-connection answers to OpenSSL's callbacks, and what they observed.  Holds no
    reference to the SSL.Connection (the context's callback table holds this weakly)."""

    def __init__(self, connection: TLSConnection) -> None:
        ctx = connection.context
        self.server_side = connection.server_side
        self.psk_mode = ctx.mode == "qkd-psk"
        self.key_source = ctx.key_source
        self.candidates = connection.candidates
        self.psk: DeliveredKey | None = None
        self.psk_peer: str | None = None
        self.psk_key_id: str | None = None
        self.psk_refused: TLSQKDKeyRefused | None = None  # fetched ahead, and refused
        self.failure: BaseException | None = None
        self.auth_failure: str | None = None
        self.peer: PeerIdentity | None = None
        self.peer_certificate: x509.Certificate | None = None
        self.peer_signature: int | None = None
        self.local_signature: int | None = None
        self.alert_sent: int | None = None
        self.alert_received: int | None = None
        self.kept: list[object] = []

    # -- PSK --------------------------------------------------------------------------

    def client_psk(self) -> tuple[bytes, bytes]:
        if self.psk is None:
            raise LocalProtocolError("no QKD key was taken for this handshake")
        return self.psk.key_id.encode("ascii"), self.psk.key

    def server_psk(self, identity: bytes) -> bytes:
        if self.psk is not None:
            # The second ClientHello after a HelloRetryRequest: same identity, same key
            # (fetching again would fail: a key is delivered once).
            if identity != self.psk.key_id.encode("ascii"):
                raise TLSQKDKeyRefused("the client changed its PSK identity after a "
                                       "HelloRetryRequest", 47)
            return self.psk.key
        if self.psk_refused is not None:
            raise self.psk_refused
        key_id = _key_id(identity)
        if key_id is None:
            raise TLSQKDKeyRefused("the PSK identity is not a QKD key ID "
                                   f"(1 to {_MAX_KEY_ID} printable ASCII characters)", 47)
        assert self.key_source is not None
        problems = []
        for peer in self.candidates:
            try:
                keys = self.key_source.fetch(peer, [key_id], PSK_BITS)
            except KeySourceError as exc:
                problems.append(f"{peer}: {exc}")
                continue
            # Fetched means consumed: whatever happens next, the key is spent.
            self.psk_key_id, self.psk_peer = key_id, peer
            if len(keys) != 1 or len(keys[0].key) * 8 != PSK_BITS:
                raise TLSQKDKeyRefused(f"the key source returned no single {PSK_BITS}-bit "
                                       f"key for QKD key ID {key_id}")
            self.psk = keys[0]
            return self.psk.key
        raise TLSQKDKeyRefused(f"QKD key {key_id} cannot be fetched: {'; '.join(problems)}")

    def callback_failed(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc

    def keep(self, obj: object) -> None:
        self.kept.append(obj)

    # -- observation ------------------------------------------------------------------

    def handshake_message(self, sent: bool, message: bytes) -> None:
        if len(message) >= 6 and message[0] == _CERTIFICATE_VERIFY:
            scheme = int.from_bytes(message[4:6], "big")
            if sent:
                self.local_signature = scheme
            else:
                self.peer_signature = scheme

    def alert(self, sent: bool, level: int, description: int) -> None:
        if description == 0:  # close_notify is not a failure
            return
        if sent and self.alert_sent is None:
            self.alert_sent = description
        elif not sent and self.alert_received is None:
            self.alert_received = description

    # -- certificate verification ----------------------------------------------------

    def verify_certificate(self, der: bytes, depth: int, ok: bool, error: int,
                           error_text: str) -> int | None:
        if self.psk_mode:
            self.auth_failure = ("the peer presented a certificate, but qkd-psk mode "
                                 "authenticates by the QKD key only")
            return error if not ok else _openssl.VERIFY_REFUSED
        if not ok:
            self.auth_failure = (f"the peer's certificate chain does not verify against "
                                 f"the trust anchors: {error_text} (depth {depth})")
            return error
        if depth > 0:
            return None
        try:
            leaf = x509.load_der_x509_certificate(der)
            scheme = _scheme_of(leaf)
            names = certificate_names(leaf)
        except _MALFORMED_CERTIFICATE:
            self.auth_failure = "the peer's certificate holds a malformed field"
            return _openssl.VERIFY_UNSUPPORTED
        if scheme is None:
            self.auth_failure = ("the peer's certificate holds a key hybridkex.tls does not "
                                 f"accept (only {', '.join(SIGNATURE_ALGORITHMS)})")
            return _openssl.VERIFY_UNSUPPORTED
        if self.candidates:
            site = next((c for c in self.candidates if c in names), None)
            if site is None:
                wanted = " or ".join(repr(c) for c in self.candidates)
                self.auth_failure = f"the peer's certificate does not name site {wanted}"
                return _openssl.VERIFY_NAME_MISMATCH
        elif names:
            site = names[0]
        else:
            self.auth_failure = "the peer's certificate names no site (no CN, no DNS name)"
            return _openssl.VERIFY_NAME_MISMATCH
        self.peer_certificate = leaf
        self.peer = PeerIdentity(site, scheme, "x509",
                                 hashlib.sha256(public_key_bytes(leaf, scheme)).hexdigest(),
                                 leaf.subject.rfc4514_string())
        return None


def _key_id(identity: bytes) -> str | None:
    if not 0 < len(identity) <= _MAX_KEY_ID:
        return None
    try:
        text = identity.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def _openssl_reasons(exc: SSL.Error) -> str:
    try:
        return "; ".join(str(entry[2]) for entry in exc.args[0] if entry[2]) or str(exc)
    except (IndexError, TypeError):
        return str(exc) or type(exc).__name__


class TLSConnection:
    """One TLS 1.3 connection over memory BIOs; see the module docstring.

    Feed it what the network delivered (:meth:`receive_data`, ``b""`` at end of file),
    drive the handshake (:meth:`do_handshake` until True), exchange plaintext
    (:meth:`send`, :meth:`read`), and send what :meth:`data_to_send` returns.
    """

    def __init__(self, context: TLSContext, role: _Role, *, server_side: bool,
                 peer: str | None, candidates: tuple[str, ...],
                 key_events: bool = False) -> None:
        self.context = context
        self.server_side = server_side
        self.peer = peer
        self.candidates = candidates
        self.key_events = key_events
        self._key_request: KeyRequest | None = None
        # A qkd-psk server that must not call its key source holds the first bytes
        # back until the ClientHello's PSK key has been fetched (or refused).
        self._held: bytearray | None = (
            bytearray() if key_events and server_side and context.mode == "qkd-psk" else None)
        self._fetch_from: list[str] = []
        self._fetch_problems: list[str] = []
        self._psk_identity = ""
        self._held_eof = False
        self._first: bytearray | None = bytearray()  # a stream's first bytes, to tell HKX/1
        self._hkx_client = False
        self._hkx_answer = b""
        self.state = TLSState.HANDSHAKING
        self._info: TLSSessionInfo | None = None
        self._hooks = _Hooks(self)
        self._ssl = SSL.Connection(role.ssl_context, None)
        _openssl.register(self._ssl, self._hooks)
        if server_side:
            self._ssl.set_accept_state()
        else:
            self._ssl.set_connect_state()
            if context.mode == "certificate" and peer is not None and peer.isascii():
                self._ssl.set_tlsext_host_name(peer.encode("ascii"))
        self._started = False

    def __repr__(self) -> str:
        role = "server" if self.server_side else "client"
        return (f"<hybridkex.tls.TLSConnection {role} {self.context.mode} "
                f"state={self.state.value}>")

    @property
    def handshake_complete(self) -> bool:
        return self.state in (TLSState.OPEN, TLSState.CLOSED)

    # -- bytes in and out --------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the network; ``b""`` marks the end of the stream."""
        if self._first is not None and data:
            self._first += data[:4 - len(self._first)]
            if len(self._first) == 4:
                first, self._first = bytes(self._first), None
                # An HKX/1 record (type, 2-byte length) holding a ClientHello (type 1):
                # no TLS record has a version byte other than 3 where HKX/1 has length.
                self._hkx_client = self.server_side and first[0] == 0x16 and (
                    first[1] != 0x03 and first[3] == 0x01)
        if self._held is not None:
            if not data:
                self._held_eof = True
            else:
                self._held += data
            if self._key_request is None:
                self._read_psk_identity()
            return
        if data:
            self._ssl.bio_write(data)
        else:
            self._ssl.bio_shutdown()

    # -- QKD keys, when the driver delivers them (key_events=True) -----------------------

    @property
    def key_request(self) -> KeyRequest | None:
        """The key source call the connection waits for, or None."""
        return self._key_request

    @property
    def pool_keys_spent(self) -> int:
        """Pool keys this connection consumed (the QKD key that is the PSK), also after
        a failure: a delivered key is never returned to the pool."""
        return 1 if self._hooks.psk_key_id is not None else 0

    def supply_keys(self, keys: Sequence[DeliveredKey]) -> None:
        """Answer :attr:`key_request` with what it delivered; then drive the handshake on."""
        request = self._waiting_request()
        self._key_request = None
        try:
            checked = request.check(keys)
        except KeySourceError as exc:
            self._refused(exc)
            return
        if not self.server_side:
            self._use_taken_psk(checked)
            return
        self._hooks.psk_key_id, self._hooks.psk_peer = checked[0].key_id, request.peer
        self._hooks.psk = checked[0]
        self._release_held()

    def refuse_keys(self, error: KeySourceError) -> None:
        """Answer :attr:`key_request` with the key source's failure."""
        self._waiting_request()
        self._key_request = None
        self._refused(error)

    def _waiting_request(self) -> KeyRequest:
        if self.state is TLSState.ERROR:
            raise LocalProtocolError("the TLS connection has failed; no keys are wanted")
        if self._key_request is None:
            raise LocalProtocolError("the TLS connection is not waiting for QKD keys")
        return self._key_request

    def _refused(self, error: KeySourceError) -> None:
        if not self.server_side:
            raise self._fail(QKDKeyUnavailable(
                f"qkd-psk mode needs a QKD key shared with {self.peer}: {error}"))
        assert self._key_request is None
        self._fetch_problems.append(f"{self._fetch_from.pop(0)}: {error}")
        self._ask_next_pool()

    def _read_psk_identity(self) -> None:
        """Once the ClientHello is complete: ask for the key its PSK identity names."""
        assert self._held is not None
        identity = first_psk_identity(bytes(self._held))
        if identity is NEED_MORE and len(self._held) <= MAX_HELLO + 4096 and not self._held_eof:
            return
        key_id = _key_id(identity) if isinstance(identity, bytes) else None
        if key_id is None:
            self._release_held()  # OpenSSL reads the hello, and refuses what it must
            return
        self._fetch_from = list(self.candidates)
        self._psk_identity = key_id
        self._ask_next_pool()

    def _ask_next_pool(self) -> None:
        if self._fetch_from:
            self._key_request = KeyRequest.fetch(self._fetch_from[0], [self._psk_identity],
                                                 PSK_BITS, purpose="the TLS external PSK")
            return
        self._hooks.psk_refused = TLSQKDKeyRefused(
            f"QKD key {self._psk_identity} cannot be fetched: {'; '.join(self._fetch_problems)}")
        self._release_held()

    def _release_held(self) -> None:
        held, self._held = self._held, None
        if held:
            self._ssl.bio_write(bytes(held))
        if self._held_eof:
            self._ssl.bio_shutdown()

    def data_to_send(self) -> bytes:
        chunks = [self._hkx_answer] if self._hkx_answer else []
        self._hkx_answer = b""
        while True:
            try:
                chunks.append(self._ssl.bio_read(READ_SIZE))
            except SSL.WantReadError:
                return b"".join(chunks)

    # -- the handshake ----------------------------------------------------------------

    def do_handshake(self) -> bool:
        """Advance the handshake with what has been received; True once it is complete
        and checked.  Raises a typed error (the connection is then failed)."""
        if self.state is not TLSState.HANDSHAKING:
            if self.state is TLSState.ERROR:
                raise LocalProtocolError("the TLS connection has failed")
            return True
        if not self._started:
            self._started = True
            if self.context.mode == "qkd-psk" and not self.server_side:
                self._take_psk()
        if self._key_request is not None:
            return False
        if self._hkx_client:
            # Answered in the client's own framing, so an HKX/1 client reads why: a
            # plaintext HKX/1 alert, protocol_version (docs/protocol.md, section 11).
            self._hkx_answer = _HKX_PROTOCOL_VERSION_ALERT
            raise self._fail(TLSNegotiationFailed(
                "the client speaks HKX/1, not TLS (both ends must use TLS, or neither)", 70))
        try:
            self._ssl.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.Error as exc:
            raise self._fail(self._classify(exc, handshake=True)) from None
        try:
            self._info = self._check_session()
        except TLSProtocolError as exc:
            self.data_to_send()  # what OpenSSL queued (a Finished) is dropped, not sent
            raise self._fail(exc) from None
        self._hooks.psk = None  # the key is in OpenSSL's key schedule; drop this copy
        self.state = TLSState.OPEN
        return True

    def _take_psk(self) -> None:
        source = self.context.key_source
        assert source is not None and self.peer is not None
        request = KeyRequest.take(self.peer, 1, PSK_BITS, purpose="the TLS external PSK")
        if self.key_events:
            self._key_request = request
            return
        try:
            keys = request.perform(source)
        except KeySourceError as exc:
            raise self._fail(QKDKeyUnavailable(
                f"qkd-psk mode needs a QKD key shared with {self.peer}: {exc}")) from exc
        self._use_taken_psk(keys)

    def _use_taken_psk(self, keys: list[DeliveredKey]) -> None:
        key_id = keys[0].key_id if len(keys) == 1 else ""
        if (len(keys) != 1 or len(keys[0].key) * 8 != PSK_BITS or not key_id.isascii()
                or _key_id(key_id.encode("ascii")) != key_id):
            raise self._fail(QKDKeyUnavailable(
                f"the key source did not return one {PSK_BITS}-bit key with an ASCII key ID"))
        self._hooks.psk = keys[0]
        self._hooks.psk_key_id, self._hooks.psk_peer = keys[0].key_id, self.peer

    def _fail(self, exc: HybridKexError) -> HybridKexError:
        self.state = TLSState.ERROR
        self._hooks.psk = None
        return exc

    def _classify(self, exc: SSL.Error, *, handshake: bool) -> TLSProtocolError:
        """The typed error for an OpenSSL failure, from what the callbacks saw."""
        hooks = self._hooks
        when = "during the handshake" if handshake else ""
        if hooks.failure is not None:
            failure = hooks.failure
            if isinstance(failure, TLSProtocolError):
                if hooks.alert_sent is not None:
                    failure.alert = hooks.alert_sent
                return failure
            error = TLSProtocolError(f"a TLS callback failed: {failure}")
            error.__cause__ = failure
            return error
        if hooks.auth_failure is not None:
            return TLSPeerAuthenticationFailed(hooks.auth_failure, hooks.alert_sent or 42)
        if hooks.alert_received is not None:
            received = hooks.alert_received
            text = f"the peer ended the connection {when} with alert {alert_name(received)}"
            if self.context.mode == "qkd-psk" and handshake and not self.server_side:
                text += (f" (qkd-psk: does the server hold QKD key {hooks.psk_key_id}, "
                         "accept this site's pool, and use the same psk_cipher "
                         f"({self.context.psk_cipher})?)")
            return TLSAlertReceived(" ".join(text.split()), received)
        if isinstance(exc, SSL.SysCallError):
            return TLSConnectionTruncated(
                " ".join(f"the transport ended {when} without a TLS close_notify".split()))
        reasons = _openssl_reasons(exc)
        if handshake and not self.server_side and ("wrong version number" in reasons
                                                   or "packet length too long" in reasons):
            reasons += " (the server does not answer in TLS: is it an HKX/1 server?)"
        code = hooks.alert_sent
        if code is None:
            return TLSProtocolError(f"TLS failed: {reasons}")
        text = f"TLS failed ({reasons}); sent alert {alert_name(code)}"
        if code == 20:
            return TLSRecordAuthenticationFailed(text, code)
        if code in _AUTH_ALERTS:
            if self.context.mode == "qkd-psk" and code == 51:
                text += " (the PSK binder does not verify: the two sites hold different keys "
                text += "under this key ID)"
            return TLSPeerAuthenticationFailed(text, code)
        if code in _NEGOTIATION_ALERTS:
            return TLSNegotiationFailed(text, code)
        if (self.context.mode == "qkd-psk" and self.server_side and code == 50
                and hooks.psk_key_id is not None):
            # OpenSSL rejects a binder made with another hash as a malformed extension.
            return PSKNotUsed(f"{text} (qkd-psk: the client's PSK binder does not fit "
                              f"{self.context.psk_cipher}'s hash; both ends need the same "
                              "psk_cipher)", code)
        return TLSProtocolError(text, code)

    def _check_session(self) -> TLSSessionInfo:
        """What the handshake really negotiated, refused unless it is what was configured."""
        conn, ctx, hooks = self._ssl, self.context, self._hooks
        version = conn.get_protocol_version_name()
        if version != "TLSv1.3":
            raise TLSNegotiationFailed(f"negotiated {version}, not TLS 1.3", 70)
        group = conn.get_group_name()
        if group not in ctx.groups:
            raise TLSNegotiationFailed(
                f"negotiated key-exchange group {group} is not one of the configured "
                f"{', '.join(ctx.groups)}", 71)
        cipher = conn.get_cipher_name() or "?"
        reused = _openssl.session_reused(conn)
        peer_cert = conn.get_peer_certificate(as_cryptography=True)
        if ctx.mode == "qkd-psk":
            if not reused:
                raise PSKNotUsed("the handshake did not use the QKD key as its PSK "
                                 "(SSL_session_reused != 1); refused", 71)
            if cipher != ctx.psk_cipher:
                raise PSKNotUsed(f"negotiated {cipher}, not the PSK's {ctx.psk_cipher}", 71)
            if peer_cert is not None or hooks.peer_signature is not None:
                raise TLSPeerAuthenticationFailed("a certificate was used in qkd-psk mode", 42)
            assert hooks.psk_peer is not None and hooks.psk_key_id is not None
            peer = PeerIdentity(hooks.psk_peer, None, "psk")
            authentication = PSK_AUTHENTICATION
            subject = fingerprint = None
        else:
            if reused:
                raise TLSNegotiationFailed("a session was resumed; certificate mode makes "
                                           "full handshakes only", 40)
            required = not self.server_side or ctx.mutual_auth
            if peer_cert is None:
                if required:
                    raise TLSPeerAuthenticationFailed("the peer presented no certificate", 116)
                peer = PeerIdentity(self.peer or "", None, "unauthenticated")
                authentication = "certificate: this site only (the client is unauthenticated)"
                subject = fingerprint = None
            else:
                if hooks.peer is None or hooks.peer_certificate != peer_cert:
                    raise TLSPeerAuthenticationFailed(
                        "the peer's certificate was not checked", 42)
                if hooks.peer_signature is None:
                    raise TLSPeerAuthenticationFailed("no CertificateVerify from the peer", 42)
                peer = hooks.peer
                subject = peer_cert.subject.rfc4514_string()
                fingerprint = hashlib.sha256(
                    peer_cert.public_bytes(Encoding.DER)).hexdigest()
                authentication = (f"certificate: peer {peer.site} ({peer.scheme}, "
                                  f"{signature_scheme_name(hooks.peer_signature)}) "
                                  "verified against this site's X.509 anchors")
                if self.server_side and not ctx.mutual_auth:
                    authentication += "; mutual_auth off"
        return TLSSessionInfo(
            role="server" if self.server_side else "client",
            local_site=ctx.site,
            mode=ctx.mode,
            version=version,
            cipher=cipher,
            group=group,
            peer=peer,
            peer_signature_scheme=(None if hooks.peer_signature is None
                                   else signature_scheme_name(hooks.peer_signature)),
            local_signature_scheme=(None if hooks.local_signature is None
                                    else signature_scheme_name(hooks.local_signature)),
            psk_used=reused,
            psk_key_id=hooks.psk_key_id if ctx.mode == "qkd-psk" else None,
            peer_certificate_subject=subject,
            peer_certificate_sha256=fingerprint,
            authentication=authentication,
        )

    # -- the session ------------------------------------------------------------------

    def read(self) -> tuple[bytes, bool]:
        """The plaintext that has arrived, and whether the peer's close_notify came.
        Raises a typed error when the session fails (an alert, a bad record, the
        transport ending without close_notify)."""
        self._require_open()
        chunks = []
        closed = False
        while True:
            try:
                chunks.append(self._ssl.recv(READ_SIZE))
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                closed = True
                break
            except SSL.Error as exc:
                raise self._fail(self._classify(exc, handshake=False)) from None
        return b"".join(chunks), closed

    def send(self, data: bytes) -> None:
        self._require_open()
        if self.state is TLSState.CLOSED:
            raise LocalProtocolError("this side has sent close_notify; it sends nothing more")
        if not data:
            return
        try:
            self._ssl.sendall(data)
        except SSL.Error as exc:
            raise self._fail(self._classify(exc, handshake=False)) from None

    def close(self) -> None:
        """Queue close_notify (once); this side can still read."""
        if self.state is TLSState.OPEN:
            self.state = TLSState.CLOSED
            with contextlib.suppress(SSL.Error):
                self._ssl.shutdown()

    def _require_open(self) -> None:
        if self.state is TLSState.ERROR:
            raise LocalProtocolError("the TLS connection has failed")
        if self.state is TLSState.HANDSHAKING:
            raise LocalProtocolError("the TLS handshake has not completed")

    def session_info(self) -> TLSSessionInfo:
        if self._info is None:
            raise LocalProtocolError("the TLS handshake has not completed")
        return self._info

    def export_keying_material(self, label: str | bytes, context: bytes, length: int) -> bytes:
        """The RFC 8446 exporter (``TLS-Exporter(label, context, length)``)."""
        self._require_open()
        try:
            raw_label = label.encode("ascii") if isinstance(label, str) else bytes(label)
        except UnicodeEncodeError:
            raise InvalidParameter("exporter label must be ASCII") from None
        if not 0 < length <= 255 * 32:
            # HKDF-Expand's bound for the smallest hash a TLS 1.3 suite uses (SHA-256).
            raise InvalidParameter("exporter length must be 1..8160 bytes")
        return bytes(self._ssl.export_keying_material(raw_label, length, bytes(context)))
