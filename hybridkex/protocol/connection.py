"""HKX/1 connections, sans-IO: bytes in, events and bytes out (in the manner of h11).

A connection never touches a socket, a thread or a clock of its own.  The
application feeds it what arrived (``receive_data``), asks for events
(``next_event``), and sends what ``data_to_send`` returns.

QKD keys: by default the key source is called synchronously from inside
``start_handshake`` and ``next_event`` (``take`` on the initiating side, ``fetch`` on
the responding one), so a source that blocks (a KME over the network) blocks there.
A connection made with ``key_events=True`` never calls it: where it needs keys it
pauses, and ``next_event`` returns :class:`~hybridkex.protocol.events.QKDKeysNeeded`
with the :class:`~hybridkex.keydelivery.request.KeyRequest` to make; the driver makes
it wherever waiting does no harm (an executor thread, an async KME client) and
answers ``supply_keys(keys)`` or ``refuse_keys(error)``.  Both ways run the same
code: each step that needs keys is a generator that yields its request, answered
inline by the source or later by the driver.

Every state and every message a state accepts are in :data:`TRANSITIONS`; a message
that is not listed for the current state is an ``unexpected_message``.  A connection
that raised a :class:`~hybridkex.errors.ProtocolError` is in state ERROR for good,
and the alert it queued for the peer is in ``data_to_send()``.
"""

from __future__ import annotations

import contextlib
import enum
import hmac
from collections import deque
from collections.abc import Callable, Generator, Sequence
from typing import Any, Final, TypeAlias, TypeVar

from cryptography.hazmat.primitives import hashes

from hybridkex.errors import (
    AlertReceived,
    ConnectionTruncated,
    DecodeError,
    HybridKexError,
    LocalProtocolError,
    PeerAuthenticationFailed,
    PolicyViolation,
    ProtocolError,
    QKDKeyRefused,
    ReplayDetected,
    UnexpectedMessage,
)
from hybridkex.keydelivery.errors import KeySourceError
from hybridkex.keydelivery.keys import UNIT_BITS, DeliveredKey, key_id_bytes, key_id_text
from hybridkex.keydelivery.request import KeyRequest
from hybridkex.primitives import kem, mac, signature
from hybridkex.primitives.kdf import running_hash
from hybridkex.protocol import keyschedule as ks
from hybridkex.protocol.config import Config
from hybridkex.protocol.events import (
    NEED_DATA,
    ConnectionClosed,
    DataReceived,
    Event,
    HandshakeComplete,
    KeyUpdated,
    NeedData,
    QKDKeysNeeded,
    data_received,
    data_received_events,
)
from hybridkex.protocol.identity import PeerIdentity
from hybridkex.protocol.record import (
    MAX_PLAINTEXT,
    Record,
    RecordBuffer,
    RecordProtection,
    frame_record,
    sealed_size,
)
from hybridkex.protocol.session import SessionInfo
from hybridkex.protocol.suites import (
    PROTOCOL_VERSION,
    AlertDescription,
    AuthMode,
    ContentType,
    HandshakeType,
    KemId,
    Suite,
)
from hybridkex.protocol.wire import (
    MAX_HANDSHAKE_MESSAGE,
    PSK_AUTH_UNITS,
    RANDOM_SIZE,
    AuthMac,
    ClientHello,
    Finished,
    Identity,
    IdentityVerify,
    KeyShare,
    KeyUpdate,
    Message,
    QkdRekey,
    QkdRekeyAck,
    ServerHello,
    binder_prefix,
    decode_handshake,
)

__all__ = ["TRANSITIONS", "ClientConnection", "Connection", "KeySteps", "ServerConnection",
           "State"]

_T = TypeVar("_T")
#: A step that may need QKD keys: it yields each KeyRequest and is sent the keys (or
#: thrown the key source's error), and returns its result.
KeySteps: TypeAlias = Generator[KeyRequest, list[DeliveredKey], _T]


class State(enum.Enum):
    START = "start"
    WAIT_CLIENT_HELLO = "wait-client-hello"
    WAIT_SERVER_HELLO = "wait-server-hello"
    WAIT_IDENTITY = "wait-identity"
    WAIT_IDENTITY_VERIFY = "wait-identity-verify"
    WAIT_AUTH_MAC = "wait-auth-mac"
    WAIT_FINISHED = "wait-finished"
    CONNECTED = "connected"
    ERROR = "error"


_H = HandshakeType
_POST_HANDSHAKE: Final = {
    _H.KEY_UPDATE: frozenset({State.CONNECTED}),
    _H.QKD_REKEY: frozenset({State.CONNECTED}),
    _H.QKD_REKEY_ACK: frozenset({State.CONNECTED}),
}
_PEER_AUTHENTICATION: Final = {
    State.WAIT_IDENTITY: {_H.IDENTITY: frozenset({State.WAIT_IDENTITY_VERIFY})},
    State.WAIT_IDENTITY_VERIFY: {_H.IDENTITY_VERIFY: frozenset({State.WAIT_FINISHED})},
    State.WAIT_AUTH_MAC: {_H.AUTH_MAC: frozenset({State.WAIT_FINISHED})},
    State.WAIT_FINISHED: {_H.FINISHED: frozenset({State.CONNECTED})},
    State.CONNECTED: _POST_HANDSHAKE,
}

#: role -> state -> handshake message accepted -> states it may lead to.
TRANSITIONS: Final[dict[str, dict[State, dict[HandshakeType, frozenset[State]]]]] = {
    "client": {
        State.WAIT_SERVER_HELLO: {
            _H.SERVER_HELLO: frozenset({State.WAIT_IDENTITY, State.WAIT_AUTH_MAC}),
        },
        **_PEER_AUTHENTICATION,
    },
    "server": {
        State.WAIT_CLIENT_HELLO: {
            _H.CLIENT_HELLO: frozenset(
                {State.WAIT_IDENTITY, State.WAIT_AUTH_MAC, State.WAIT_FINISHED}),
        },
        **_PEER_AUTHENTICATION,
    },
}

_SIGNED_CONTENT_PREFIX = b"\x20" * 64
_SIGNED_CONTEXT = {"server": b"HKX/1, server IdentityVerify",
                   "client": b"HKX/1, client IdentityVerify"}
# Which of the three psk-mode authentication units keys what.
_BINDER_UNIT, _MAC_UNIT = 0, {"server": 1, "client": 2}
_DIRECTION = {"client": "c", "server": "s"}
_POLY1305 = mac("Poly1305")
_ALERT_LEVEL_FATAL = 2
_ALERT_LEVEL_WARNING = 1
_A = AlertDescription
# What an alert in answer to a ClientHello tells the client, beyond its name.
_HELLO_REFUSALS: Final[dict[int, str]] = {
    _A.UNRECOGNIZED_NAME: "the server is not site {peer!r}: it refuses a ClientHello "
                          "addressed to another site",
    _A.INSUFFICIENT_SECURITY: "the server does not accept {mode} authentication, or its "
                              "security policy needs more than this hello offers",
    _A.QKD_REQUIRED: "the server's security policy requires a QKD key and this hello "
                     "offers none it can use",
    _A.QKD_KEY_UNAVAILABLE: "the server cannot fetch the pool keys this hello names (not "
                            "in its pool for this site, or already used)",
    _A.REPLAY_DETECTED: "the server has seen this ClientHello before",
    _A.HANDSHAKE_FAILURE: "no suite in common, or the server cannot authenticate in "
                          "{mode} mode",
    _A.SERVER_BUSY: "the server is at its connection limit; try again later",
    _A.PROTOCOL_VERSION: "the server does not speak this version of HKX/1; a TLS server "
                         "answers an HKX/1 hello so",
}


def _looks_like_tls(first: bytes) -> bool:
    """A TLS record header (alert or handshake, version 3.1 to 3.4).  No HKX/1 peer's
    first record can start so: it would be a 769- to 772-byte alert or hello, and no
    HKX/1 alert or hello has that length."""
    return first[0] in (0x15, 0x16) and first[1] == 0x03 and 0x01 <= first[2] <= 0x04


def _ready(value: _T) -> KeySteps[_T]:
    """A step that needs no keys (the shape the generator steps share)."""
    yield from ()
    return value
_APPLICATION_DATA = int(ContentType.APPLICATION_DATA)
_HANDSHAKE_TYPES = {int(t): t for t in HandshakeType}  # a dict lookup, not an enum call
_CONNECTED = State.CONNECTED  # a module constant: an enum member lookup costs ~70 ns
_KEY_UPDATE_ROOM = 64  # room send_into keeps for a KeyUpdate record (24 bytes)


def signed_content(role: str, transcript_hash: bytes) -> bytes:
    """What a site signs in IdentityVerify (the TLS 1.3 section 4.4.3 layout)."""
    return _SIGNED_CONTENT_PREFIX + _SIGNED_CONTEXT[role] + b"\x00" + transcript_hash


class Connection:
    """What client and server share: records, reassembly, post-handshake messages, close."""

    role: str
    peer_role: str

    def __init__(self, config: Config, state: State, key_events: bool = False) -> None:
        if not isinstance(config, Config):
            raise TypeError("config must be a hybridkex.protocol.Config")
        self.config = config
        self.state = state
        self.key_events = key_events
        # The step waiting for keys (key_events), what to do when it returns, and the
        # request it waits on.
        self._steps: KeySteps[Any] | None = None
        self._steps_done: Callable[[Any], None] | None = None
        self._key_request: KeyRequest | None = None
        self._sniff: bytearray | None = bytearray()  # the stream's first bytes
        self._other_protocol = False
        self.peer_site: str | None = None
        self._records = RecordBuffer()
        self._handshake_buffer = bytearray()
        self._outgoing: list[bytes] = []
        self._events: deque[Event] = deque()
        self._eof = False
        self._sent_close = False
        self._peer_closed = False
        self._send: RecordProtection | None = None
        self._receive: RecordProtection | None = None
        self._transcript = bytearray()
        # created once the suite, and so its hash, is known
        self._transcript_hasher: hashes.Hash | None = None
        self._hashed = 0  # transcript bytes fed to it so far
        self._suite: Suite | None = None
        self._auth_mode: AuthMode | None = None
        self._auth_units: list[DeliveredKey] = []
        self._qkd_ids: tuple[str, ...] = ()
        self._peer_identity: PeerIdentity | None = None
        self._peer_key: tuple[str, bytes] | None = None
        self._client_auth_requested = False
        self._fallback: str | None = None
        self._spent = 0
        self._hs_secrets: dict[str, bytes] = {}
        self._send_secret = b""
        self._receive_secret = b""
        self._exporter_master = b""
        self._session_hash = b""
        self._pending_rekey: tuple[bytes, tuple[bytes, ...]] | None = None
        self._key_updates = 0
        self._qkd_rekeys = 0
        self._no_qkd_reason = ""
        self._generations = {"client": 0, "server": 0}  # traffic secret updates, per direction

    def __repr__(self) -> str:
        suite = self._suite.name if self._suite else None
        return (f"<{type(self).__name__} {self.config.site!r}<->{self.peer_site!r} "
                f"state={self.state.value} suite={suite}>")

    # -- the application's side ---------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the transport; ``b""`` means the transport reached end of file."""
        if data:
            if self._eof:
                raise LocalProtocolError("data after end of file")
            if self._sniff is not None:
                self._sniff += data[:3 - len(self._sniff)]
                if len(self._sniff) == 3:
                    self._other_protocol = _looks_like_tls(bytes(self._sniff))
                    self._sniff = None
            self._records.feed(data if type(data) is bytes else bytes(data))
        else:
            self._eof = True

    def receive_buffer(self, size_hint: int = 1 << 16) -> memoryview:
        """A writable view of the connection's own receive buffer (at least
        ``size_hint`` bytes), for a transport that reads straight into it
        (``sock.recv_into``) instead of handing over bytes; then ``buffer_received``."""
        if self._eof:
            raise LocalProtocolError("data after end of file")
        return self._records.receive_buffer(size_hint)

    def buffer_received(self, nbytes: int) -> None:
        """``nbytes`` were written at the front of the last ``receive_buffer`` view."""
        self._records.buffer_received(nbytes)

    def receive_into(self, out: memoryview) -> int:
        """Application data straight into ``out``: opens the whole application-data
        records at the front of what was received, as many as fit, where they lie.
        Returns the plaintext bytes written; 0 means none could be (an incomplete
        record, another kind of record, one larger than ``out``, an event waiting),
        and ``next_event`` then goes on as ever.  Only authenticated bytes are written."""
        if (self.state is not _CONNECTED or self._events or self._handshake_buffer
                or self._peer_closed or self._steps is not None):
            return 0
        assert self._receive is not None
        try:
            return self._records.open_application_data_into(self._receive, out)
        except ProtocolError as exc:
            self._fail(exc)
            raise

    def next_event(self) -> Event | NeedData:
        """The next event, or NEED_DATA.  Raises a ProtocolError if the peer misbehaved."""
        if self.state is _CONNECTED:
            events = self._events
            if events:  # what an earlier call queued comes first, as in the loop below
                return events.popleft()
            if not (self._handshake_buffer or self._peer_closed or self._steps is not None):
                # application data, the common case: every whole record that arrived is
                # opened where it lies, the first returned and the rest queued
                try:
                    opened = self._records.open_application_records(
                        self._receive)  # type: ignore[arg-type]
                except ProtocolError as exc:
                    self._fail(exc)
                    raise
                if opened:
                    if len(opened) > 1:
                        events.extend(data_received_events(opened[1:]))
                    return data_received(opened[0])
                if not self._eof and not self._records.pending():
                    return NEED_DATA
        if self.state is State.ERROR:
            raise LocalProtocolError("the connection has failed; no further events")
        try:
            while not self._events:
                if self._key_request is not None:
                    return QKDKeysNeeded(self._key_request)
                if self._peer_closed:
                    return ConnectionClosed()
                if self._other_protocol and self.state in (State.WAIT_CLIENT_HELLO,
                                                           State.WAIT_SERVER_HELLO):
                    raise DecodeError(f"the {self.peer_role} speaks TLS, not HKX/1: its "
                                      "first bytes are a TLS record",
                                      AlertDescription.PROTOCOL_VERSION)
                record = self._records.next_record()
                if record is None:
                    if self._eof and self._sniff is not None and not self._sniff and self.state in (
                            State.WAIT_SERVER_HELLO, State.WAIT_CLIENT_HELLO):
                        raise ConnectionTruncated(f"the {self.peer_role} closed the "
                                                  "connection without a word of HKX/1")
                    if self._eof:
                        raise ConnectionTruncated(
                            "the transport closed without close_notify"
                            + (" in the middle of a record" if self._records.pending() else ""))
                    return NEED_DATA
                self._process_record(record)
        except ProtocolError as exc:
            self._fail(exc)
            raise
        except HybridKexError as exc:
            raise self._fail_untranslated(exc) from exc
        return self._events.popleft()

    # -- QKD keys, when the driver delivers them (key_events=True) -------------------------

    @property
    def key_request(self) -> KeyRequest | None:
        """What the connection waits for (see :class:`QKDKeysNeeded`), or None."""
        return self._key_request

    @property
    def pool_keys_spent(self) -> int:
        """Pool keys this connection has consumed so far, also after a failure.  A key
        delivered once is never returned to the pool (docs/protocol.md, section 7): an
        attacker who chose the other two secrets could otherwise test guesses of it."""
        return self._spent

    def supply_keys(self, keys: Sequence[DeliveredKey]) -> None:
        """Answer :class:`QKDKeysNeeded` with the keys its request delivered, and go on.

        Raises what the handshake raises from there (a ProtocolError, with the alert in
        ``data_to_send()``).  Keys that are not what was asked for are refused as a key
        source's failure would be."""
        request = self._waiting_request()
        try:
            checked = request.check(keys)
        except KeySourceError as exc:
            self._resume(None, exc)
            return
        self._resume(checked, None)

    def refuse_keys(self, error: KeySourceError) -> None:
        """Answer :class:`QKDKeysNeeded` with the key source's failure, and go on (the
        handshake decides: a fetch refused is fatal, a take may fall back)."""
        self._waiting_request()
        if not isinstance(error, KeySourceError):
            raise TypeError("refuse_keys takes the key source's KeySourceError")
        self._resume(None, error)

    def _waiting_request(self) -> KeyRequest:
        if self.state is State.ERROR:
            raise LocalProtocolError("the connection has failed; no keys are wanted")
        if self._key_request is None:
            raise LocalProtocolError("the connection is not waiting for QKD keys")
        return self._key_request

    def _resume(self, keys: list[DeliveredKey] | None, error: KeySourceError | None) -> None:
        self._key_request = None
        try:
            self._advance(keys, error)
            if self._steps is None:
                self._drain_handshake_buffer()
        except ProtocolError as exc:
            self._fail(exc)
            raise
        except HybridKexError as exc:
            raise self._fail_untranslated(exc) from exc

    def _begin(self, steps: KeySteps[_T], done: Callable[[_T], None]) -> None:
        """Run ``steps`` until it needs keys the driver must deliver, or to its end."""
        self._steps, self._steps_done = steps, done
        self._advance(None, None)

    def _advance(self, keys: list[DeliveredKey] | None, error: KeySourceError | None) -> None:
        steps = self._steps
        assert steps is not None
        while True:
            try:
                request = steps.throw(error) if error is not None else steps.send(
                    keys)  # type: ignore[arg-type]  # None starts the generator
            except StopIteration as stop:
                done = self._steps_done
                self._steps = self._steps_done = None
                assert done is not None
                done(stop.value)
                return
            except BaseException:
                self._steps = self._steps_done = None
                raise
            keys = error = None
            if self.key_events:
                self._key_request = request
                return
            source = self.config.key_source
            assert source is not None
            try:
                keys = request.perform(source)
            except KeySourceError as exc:
                error = exc

    def data_to_send(self) -> bytes:
        """Bytes for the transport, in order; empty when there is nothing to send."""
        out = b"".join(self._outgoing)
        self._outgoing.clear()
        return out

    def send(self, data: bytes) -> None:
        """Queue application data; records are at most 16 KiB of plaintext each."""
        if self.state is not _CONNECTED or self._sent_close:
            self._require_open_for_sending()
        interval = self.config.key_update_interval
        if type(data) is bytes and 0 < len(data) <= MAX_PLAINTEXT:
            sealer = self._send
            assert sealer is not None
            if sealer.seq + 1 < (interval or sealer.limit):
                # the common case: one record, no key update due; header and ciphertext
                # are queued apart, so data_to_send's join is their only copy
                self._outgoing += sealer.seal_split(_APPLICATION_DATA, data)
            else:
                self._seal(ContentType.APPLICATION_DATA, data)
            return
        # Sealed straight from a read-only view of the caller's bytes: the AEAD reads
        # each slice in place, and the whole call runs before the caller regains control.
        with memoryview(data).cast("B") as view:
            start, total = 0, len(view)
            while start < total:
                sealer = self._send
                assert sealer is not None
                due = (interval or sealer.limit) - 1 - sealer.seq  # records before a KeyUpdate
                if due > 0:
                    start = sealer.seal_run(_APPLICATION_DATA, view, start, due, self._outgoing)
                else:  # a KeyUpdate first
                    self._seal(ContentType.APPLICATION_DATA, view[start:start + MAX_PLAINTEXT])
                    start += MAX_PLAINTEXT

    def send_into(self, data: memoryview, out: memoryview) -> tuple[int, int]:
        """Seal application data straight into ``out``, a transport's buffer, instead
        of queueing it: as many records of ``data`` as fit (with a KeyUpdate where the
        key is due one).  Returns (bytes of ``data`` sealed, bytes written to ``out``).
        What ``data_to_send`` holds must be taken first, so records stay in order."""
        self._require_open_for_sending()
        if self._outgoing:
            raise LocalProtocolError("take data_to_send() before send_into()")
        assert self._send is not None
        if type(data) is not memoryview:
            data = memoryview(data)
        if type(out) is not memoryview:
            out = memoryview(out)
        sealer, total = self._send, len(data)
        interval = self.config.key_update_interval or sealer.limit
        consumed = written = 0
        while consumed < total:
            if sealer.seq + 1 >= interval:  # a KeyUpdate first, as _seal sends one
                if len(out) - written < _KEY_UPDATE_ROOM + sealed_size(1):
                    break
                self._send_key_update(request_peer=False)  # queued: moved into out
                update = self.data_to_send()
                out[written:written + len(update)] = update
                written += len(update)
                sealer = self._send
            used, size = sealer.seal_many_into(_APPLICATION_DATA, data[consumed:],
                                               out[written:], interval - 1 - sealer.seq)
            if not used:
                break
            consumed += used
            written += size
        return consumed, written

    def key_update(self, request_peer: bool = True) -> None:
        """Move this side's sending key to its next generation (and ask the peer to do so)."""
        self._require_open_for_sending()
        self._send_key_update(request_peer)

    def rekey_request(self) -> KeyRequest:
        """The take a QKD re-key needs: make it, then pass the keys to ``rekey_qkd``."""
        if self.config.key_source is None:
            raise LocalProtocolError("QKD re-key needs a key_source")
        assert self.peer_site is not None
        return KeyRequest.take(self.peer_site, 1, UNIT_BITS, purpose="a QKD re-key")

    def rekey_qkd(self, keys: Sequence[DeliveredKey] | None = None) -> tuple[str, ...]:
        """Mix a fresh QKD key, taken from this side's pool, into both traffic secrets.

        Sends QkdRekey and switches the sending key at once; the receiving key switches
        when the peer's QkdRekeyAck arrives (the peer switches its own sending key just
        after sending it).  Returns the key IDs used.  ``keys``: what
        :meth:`rekey_request` delivered (required with ``key_events``; otherwise the key
        source is called here).
        """
        self._require_open_for_sending()
        if self._pending_rekey is not None:
            raise LocalProtocolError("a QKD re-key is already in flight")
        request = self.rekey_request()
        source = self.config.key_source
        assert source is not None
        # A shortage here is local (KeysExhausted or another KeySourceError, raised as
        # is): nothing has been sent and the session goes on under its current keys.
        if keys is None:
            if self.key_events:
                raise LocalProtocolError("this connection does not call its key source "
                                         "(key_events): make rekey_request() and pass keys=")
            delivered = request.perform(source)
        else:
            delivered = request.check(keys)
        self._spent += len(delivered)
        keys = delivered
        qkd_key = b"".join(k.key for k in keys)
        ids = tuple(key_id_bytes(k.key_id) for k in keys)
        self._send_handshake_message(QkdRekey(ids))
        self._update_send(self._mix_qkd(self._send_secret, qkd_key, self.role, ids))
        self._pending_rekey = (qkd_key, ids)
        self._qkd_rekeys += 1
        return tuple(key_id_text(i) for i in ids)

    def close(self) -> None:
        """Send close_notify.  Data may still arrive until the peer's close_notify."""
        if self.state is State.ERROR or self._sent_close:
            return
        self._send_alert(AlertDescription.CLOSE_NOTIFY, _ALERT_LEVEL_WARNING)
        self._sent_close = True

    @property
    def handshake_complete(self) -> bool:
        return self.state is State.CONNECTED

    def session_info(self) -> SessionInfo:
        """What this session is made of; only after the handshake has completed."""
        if not self._session_hash or self._suite is None or self._peer_identity is None:
            raise LocalProtocolError("the handshake has not completed")
        assert self._auth_mode is not None
        return SessionInfo(
            role=self.role,
            local_site=self.config.site,
            peer=self._peer_identity,
            suite=self._suite.name,
            kems=tuple(k.algorithm for k in self._suite.kems),
            aead=self._suite.aead,
            qkd_key_ids=self._qkd_ids,
            auth_mode=self._auth_mode.name.lower(),
            security_policy=self.config.policy.value,
            transcript_hash=self._session_hash.hex(),
            pool_keys_spent=self._spent,
            fallback=self._fallback,
            key_updates=self._key_updates,
            qkd_rekeys=self._qkd_rekeys,
        )

    def export_keying_material(self, label: str, context: bytes, length: int) -> bytes:
        """Keys for the application bound to this session (RFC 8446 section 7.5 style)."""
        if not self._exporter_master or self._suite is None or self.state is not State.CONNECTED:
            raise LocalProtocolError("the handshake has not completed")
        return ks.exporter(self._suite, self._exporter_master, label, context, length)

    # -- records ------------------------------------------------------------------------

    def _require_open_for_sending(self) -> None:
        if self.state is not State.CONNECTED:
            raise LocalProtocolError(f"cannot send in state {self.state.value}")
        if self._sent_close:
            raise LocalProtocolError("close() was called; nothing more can be sent")

    def _seal(self, content_type: int, plaintext: bytes | memoryview) -> None:
        if self._send is None:
            self._outgoing.append(frame_record(content_type, bytes(plaintext)))
            return
        interval = self.config.key_update_interval or self._send.limit
        if (self.state is State.CONNECTED and content_type == ContentType.APPLICATION_DATA
                and self._send.seq + 1 >= interval):
            self._send_key_update(request_peer=False)
        self._outgoing.append(self._send.seal(content_type, plaintext))

    def _send_handshake_message(self, message: Message, transcript: bool = False) -> bytes:
        return self._send_handshake_raw(message.encode(), transcript)

    def _send_handshake_raw(self, raw: bytes, transcript: bool = False) -> bytes:
        """A framed handshake message, already encoded, into records (and the transcript)."""
        if transcript:
            self._transcript += raw
        for start in range(0, len(raw), MAX_PLAINTEXT):
            self._seal(ContentType.HANDSHAKE, raw[start:start + MAX_PLAINTEXT])
        return raw

    def _send_alert(self, description: int, level: int = _ALERT_LEVEL_FATAL) -> None:
        self._seal(ContentType.ALERT, bytes([level, description]))

    def _fail(self, exc: ProtocolError) -> None:
        previous, self.state = self.state, State.ERROR
        if isinstance(exc, AlertReceived | ConnectionTruncated) or previous is State.START:
            return
        if not self._sent_close:
            # If even the alert cannot be sealed (the key's usage limit), the peer learns
            # of the failure from the silence.
            with contextlib.suppress(HybridKexError):
                self._send_alert(exc.alert)

    def _fail_untranslated(self, exc: HybridKexError) -> ProtocolError:
        """Anything typed that a handler did not translate is still fatal and typed: the
        connection fails with internal_error, and this is the error to raise."""
        error = ProtocolError(f"handshake failed: {exc}", AlertDescription.INTERNAL_ERROR)
        self._fail(error)
        return error

    def _process_record(self, record: Record) -> None:
        content_type, payload = record.content_type, record.payload
        if self._handshake_buffer and content_type != ContentType.HANDSHAKE:
            raise UnexpectedMessage("a record of another type interrupts a handshake message")
        if self._receive is None:
            if content_type == ContentType.APPLICATION_DATA:
                raise UnexpectedMessage("application data before the handshake keys")
            if len(payload) > MAX_PLAINTEXT:
                raise DecodeError("plaintext record exceeds 2^14 bytes",
                                  AlertDescription.RECORD_OVERFLOW)
            plaintext = payload
        elif (content_type == ContentType.ALERT and len(payload) == 2
              and self._receive.seq == 0 and self.state is not State.CONNECTED):
            # A peer that failed on our hello before it could derive the handshake keys
            # alerts in clear (TLS 1.3 allows the same).  Two bytes cannot be a sealed
            # record, and all an unauthenticated alert can do is end the handshake,
            # which anyone on the path can do anyway.
            plaintext = payload
        else:
            plaintext = self._receive.open(record)
        if content_type == ContentType.ALERT:
            self._on_alert(plaintext)
        elif content_type == ContentType.HANDSHAKE:
            if not plaintext:
                raise DecodeError("empty handshake record")
            self._handshake_buffer += plaintext
            self._drain_handshake_buffer()
        else:
            if self.state is not State.CONNECTED:
                raise UnexpectedMessage("application data before the handshake completed")
            self._events.append(DataReceived(plaintext))

    def _on_alert(self, plaintext: bytes) -> None:
        if len(plaintext) != 2 or plaintext[0] not in (_ALERT_LEVEL_WARNING, _ALERT_LEVEL_FATAL):
            raise DecodeError("malformed alert")
        description = plaintext[1]
        if description == AlertDescription.CLOSE_NOTIFY and self.state is State.CONNECTED:
            self._peer_closed = True
            return
        try:
            name = AlertDescription(description).name.lower()
        except ValueError:
            name = f"alert {description}"
        text = f"the peer ended the connection: {name}"
        why = _HELLO_REFUSALS.get(description) if self.state is State.WAIT_SERVER_HELLO else None
        if why is not None:
            mode = self._auth_mode.name.lower() if self._auth_mode else "this"
            text += f" ({why.format(peer=self.peer_site, mode=mode)})"
        raise AlertReceived(text, description)

    def _drain_handshake_buffer(self) -> None:
        """Process every whole handshake message buffered, unless one waits for keys."""
        buffer = self._handshake_buffer
        while len(buffer) >= 4 and self._steps is None:
            length = int.from_bytes(buffer[1:4], "big")
            if length > MAX_HANDSHAKE_MESSAGE:
                raise DecodeError(f"handshake message of {length} bytes is too long")
            if len(buffer) < 4 + length:
                return
            raw = bytes(buffer[:4 + length])
            del buffer[:4 + length]
            self._process_message(raw[0], raw[4:], raw)

    def _process_message(self, msg_type: int, body: bytes, raw: bytes) -> None:
        allowed = TRANSITIONS[self.role].get(self.state, {})
        kind = _HANDSHAKE_TYPES.get(msg_type)
        if kind is None:
            raise UnexpectedMessage(f"unknown handshake message type {msg_type}")
        if kind not in allowed:
            raise UnexpectedMessage(f"{kind.name} is not allowed in state {self.state.value}")
        message = decode_handshake(msg_type, body)
        receive_key = self._receive

        def done(next_state: State) -> None:
            if next_state not in allowed[kind]:  # a handler that breaks the table is a bug
                raise AssertionError(f"{kind.name} led to {next_state} outside TRANSITIONS")
            self.state = next_state
            if self._receive is not receive_key and self._handshake_buffer:
                raise UnexpectedMessage("a handshake message straddles a key change")

        self._begin(self._handle(message, raw), done)

    def _handle(self, message: Message, raw: bytes) -> KeySteps[State]:
        if isinstance(message, Identity):
            return self._on_identity(message, raw)
        if isinstance(message, IdentityVerify):
            return self._on_identity_verify(message, raw)
        if isinstance(message, AuthMac):
            return self._on_auth_mac(message, raw)
        if isinstance(message, Finished):
            return self._on_finished(message, raw)
        if isinstance(message, KeyUpdate):
            return self._on_key_update(message)
        if isinstance(message, QkdRekey):
            return (yield from self._on_qkd_rekey(message))
        if isinstance(message, QkdRekeyAck):
            return self._on_qkd_rekey_ack()
        return (yield from self._on_hello(message, raw))

    def _on_hello(self, message: Message, raw: bytes) -> KeySteps[State]:
        raise UnexpectedMessage(f"{type(message).__name__} is not expected")

    # -- key schedule glue --------------------------------------------------------------

    @property
    def suite(self) -> Suite:
        assert self._suite is not None
        return self._suite

    def _log(self, name: str, secret: bytes) -> None:
        if self.config.secret_log is not None:
            self.config.secret_log(name, secret)

    def _transcript_hash(self) -> bytes:
        if self._transcript_hasher is None:
            self._transcript_hasher = running_hash(self.suite.hash)
        self._transcript_hasher.update(self._transcript[self._hashed:])
        self._hashed = len(self._transcript)
        return self._transcript_hasher.copy().finalize()

    def _install_handshake_keys(self, shared: Sequence[tuple[str, bytes]],
                                qkd_key: bytes | None) -> None:
        hello_hash = self._transcript_hash()
        hs, c_hs, s_hs = ks.handshake_secrets(self.suite, shared, qkd_key, hello_hash)
        self._hs_secrets = {"handshake": hs, "client": c_hs, "server": s_hs}
        self._log("handshake_secret", hs)
        self._log("client_handshake_traffic_secret", c_hs)
        self._log("server_handshake_traffic_secret", s_hs)
        self._send = RecordProtection(self.suite, self._hs_secrets[self.role])
        self._receive = RecordProtection(self.suite, self._hs_secrets[self.peer_role])

    def _derive_application_secrets(self) -> None:
        master = ks.master_secret(self.suite, self._hs_secrets["handshake"])
        c_ap, s_ap, exp = ks.application_secrets(self.suite, master, self._transcript_hash())
        self._log("master_secret", master)
        self._log("client_application_traffic_secret_0", c_ap)
        self._log("server_application_traffic_secret_0", s_ap)
        self._log("exporter_master_secret", exp)
        self._exporter_master = exp
        secrets = {"client": c_ap, "server": s_ap}
        self._send_secret, self._receive_secret = secrets[self.role], secrets[self.peer_role]

    def _update_send(self, secret: bytes) -> None:
        self._send_secret = secret
        self._send = RecordProtection(self.suite, secret)
        self._log_generation(self.role, secret)

    def _update_receive(self, secret: bytes) -> None:
        self._receive_secret = secret
        self._receive = RecordProtection(self.suite, secret)
        self._log_generation(self.peer_role, secret)

    def _log_generation(self, role: str, secret: bytes) -> None:
        self._generations[role] += 1
        self._log(f"{role}_application_traffic_secret_{self._generations[role]}", secret)

    def _finished(self, role: str) -> bytes:
        return ks.finished_verify_data(self.suite, self._hs_secrets[role], self._transcript_hash())

    def _complete(self) -> State:
        self._session_hash = self._transcript_hash()
        self._log("session_transcript_hash", self._session_hash)
        self._hs_secrets = {}
        self._auth_units = []
        self._events.append(HandshakeComplete(self.session_info()))
        return State.CONNECTED

    # -- authentication, both directions ------------------------------------------------

    def _send_own_authentication(self) -> None:
        """This side's Identity + IdentityVerify (signature mode, when asked) or AuthMac."""
        if self._auth_mode is AuthMode.PSK:
            tag = _POLY1305.compute(self._auth_units[_MAC_UNIT[self.role]].key,
                                    bytes(self._transcript))
            self._send_handshake_message(AuthMac(tag), transcript=True)
            return
        identity = self.config.identity
        if identity is None:
            raise PolicyViolation("the peer requires this site to authenticate and no signing "
                                  "identity is configured", AlertDescription.CERTIFICATE_REQUIRED)
        self._send_handshake_message(identity.to_message(), transcript=True)
        content = signed_content(self.role, self._transcript_hash())
        sig = self.config.randomness.sign(identity.scheme, identity.private_key, content)
        self._send_handshake_message(IdentityVerify(sig), transcript=True)

    def _on_identity(self, message: Identity, raw: bytes) -> State:
        assert self.peer_site is not None
        scheme, public, peer = self.config.trust.check(
            message, self.peer_site, self.config.signature_schemes, self.config.clock())
        self._peer_key = (scheme, public)
        self._peer_identity = peer
        self._transcript += raw
        return State.WAIT_IDENTITY_VERIFY

    def _on_identity_verify(self, message: IdentityVerify, raw: bytes) -> State:
        assert self._peer_key is not None
        scheme, public = self._peer_key
        content = signed_content(self.peer_role, self._transcript_hash())
        try:
            valid = signature(scheme).verify(public, content, message.signature)
        except HybridKexError:
            valid = False
        if not valid:
            raise PeerAuthenticationFailed("the peer's IdentityVerify signature does not verify")
        self._transcript += raw
        return State.WAIT_FINISHED

    def _on_auth_mac(self, message: AuthMac, raw: bytes) -> State:
        key = self._auth_units[_MAC_UNIT[self.peer_role]].key
        if not _POLY1305.verify(key, bytes(self._transcript), message.tag):
            raise PeerAuthenticationFailed("the peer's one-time MAC over the transcript "
                                           "does not verify")
        assert self.peer_site is not None
        self._peer_identity = PeerIdentity(self.peer_site, None, "psk")
        self._transcript += raw
        return State.WAIT_FINISHED

    def _on_finished(self, message: Finished, raw: bytes) -> State:
        if len(message.verify_data) != self.suite.hash_len:
            raise DecodeError(f"Finished carries {len(message.verify_data)} bytes, the suite's "
                              f"hash {self.suite.hash_len}")
        if not hmac.compare_digest(message.verify_data, self._finished(self.peer_role)):
            raise PeerAuthenticationFailed("the peer's Finished does not verify")
        self._transcript += raw
        return self._after_peer_finished()

    def _after_peer_finished(self) -> State:
        raise NotImplementedError

    # -- post-handshake -----------------------------------------------------------------

    def _send_key_update(self, request_peer: bool) -> None:
        self._send_handshake_message(KeyUpdate(request_peer))
        self._update_send(ks.next_traffic_secret(self.suite, self._send_secret))
        self._key_updates += 1

    def _on_key_update(self, message: KeyUpdate) -> State:
        self._update_receive(ks.next_traffic_secret(self.suite, self._receive_secret))
        self._events.append(KeyUpdated("key-update", "receive", by_peer=True))
        if message.update_requested and not self._sent_close:
            self._send_key_update(request_peer=False)
        return State.CONNECTED

    def _mix_qkd(self, secret: bytes, qkd_key: bytes, role: str, ids: tuple[bytes, ...]) -> bytes:
        return ks.qkd_rekey_secret(self.suite, secret, qkd_key, _DIRECTION[role], ids)

    def _on_qkd_rekey(self, message: QkdRekey) -> KeySteps[State]:
        if self.config.key_source is None:
            raise QKDKeyRefused("the peer asked for a QKD re-key and this site has no key source")
        keys = yield from self._fetch(message.key_ids, "the re-key's QKD keys")
        qkd_key = b"".join(k.key for k in keys)
        self._update_receive(self._mix_qkd(self._receive_secret, qkd_key, self.peer_role,
                                           message.key_ids))
        if not self._sent_close:
            self._send_handshake_message(QkdRekeyAck())
            self._update_send(self._mix_qkd(self._send_secret, qkd_key, self.role,
                                            message.key_ids))
        self._qkd_rekeys += 1
        ids = tuple(key_id_text(i) for i in message.key_ids)
        self._events.append(KeyUpdated("qkd-rekey", "both", by_peer=True, qkd_key_ids=ids))
        return State.CONNECTED

    def _on_qkd_rekey_ack(self) -> State:
        if self._pending_rekey is None:
            raise UnexpectedMessage("QkdRekeyAck without a QKD re-key in flight")
        qkd_key, ids = self._pending_rekey
        self._pending_rekey = None
        self._update_receive(self._mix_qkd(self._receive_secret, qkd_key, self.peer_role, ids))
        self._events.append(KeyUpdated("qkd-rekey", "both", by_peer=False,
                                       qkd_key_ids=tuple(key_id_text(i) for i in ids)))
        return State.CONNECTED

    # -- QKD keys -------------------------------------------------------------------------

    def _fetch(self, key_ids: Sequence[bytes], what: str) -> KeySteps[list[DeliveredKey]]:
        """The keys the peer took, by ID, counted as spent; all or nothing."""
        assert self.config.key_source is not None and self.peer_site is not None
        try:
            keys = yield KeyRequest.fetch(self.peer_site, [key_id_text(i) for i in key_ids],
                                          UNIT_BITS, purpose=what)
        except KeySourceError as exc:
            raise QKDKeyRefused(f"{what} cannot be fetched: {exc}") from exc
        self._spent += len(keys)
        return keys

    def _policy_check(self, qkd: bool, suite: Suite) -> None:
        policy = self.config.policy
        if not policy.allows(qkd, suite.post_quantum):
            missing = [name for name, have, needed in (
                ("a QKD key", qkd, policy.requires_qkd),
                ("a post-quantum KEM", suite.post_quantum, policy.requires_pq))
                if needed and not have]
            alert = (AlertDescription.QKD_REQUIRED if missing == ["a QKD key"]
                     else AlertDescription.INSUFFICIENT_SECURITY)
            raise PolicyViolation(f"security policy {policy.value!r} requires "
                                  f"{' and '.join(missing) or 'a QKD key or a post-quantum KEM'}",
                                  alert)
        if not (qkd or suite.post_quantum):
            self._fallback = ("X25519 only: recorded traffic falls to a quantum computer; "
                              f"allowed by security policy {policy.value!r}")
        elif not (qkd and suite.post_quantum):
            self._fallback = (f"{'no QKD key' if not qkd else 'no post-quantum KEM'}; "
                              f"allowed by security policy {policy.value!r}")
        if self._fallback is not None and self._no_qkd_reason:
            self._fallback = f"{self._fallback} ({self._no_qkd_reason})"


class ClientConnection(Connection):
    """The initiating side: takes the QKD keys and sends their IDs in its ClientHello.

    ``peer`` is the server's site name: the pool the QKD keys come from, the name its
    certificate or pinned key must carry, and the ``server_site`` of the hello.
    """

    role = "client"
    peer_role = "server"

    def __init__(self, config: Config, peer: str, *, key_events: bool = False) -> None:
        super().__init__(config, State.START, key_events)
        if not isinstance(peer, str) or not 0 < len(peer.encode("utf-8")) < 256:
            raise LocalProtocolError("peer must be a site name of 1 to 255 UTF-8 bytes")
        if peer == config.site:
            raise LocalProtocolError("a site cannot connect to itself")
        self.peer_site = peer
        self._offered: dict[int, Suite] = {}
        self._kem_private: dict[int, bytes] = {}
        self._qkd_keys: list[DeliveredKey] = []

    def start_handshake(self) -> None:
        """Draw the pool keys and queue the ClientHello.  Fails closed (PolicyViolation,
        nothing sent) when the policy needs a QKD key and the pool has none.  With
        ``key_events`` the draw waits for the driver (``next_event`` returns
        QKDKeysNeeded); the hello is queued once the keys are supplied."""
        if self.state is not State.START or self._steps is not None:
            raise LocalProtocolError("the handshake has already started")

        def sent(_: None) -> None:
            self.state = State.WAIT_SERVER_HELLO

        try:
            self._begin(self._send_client_hello(), sent)
        except ProtocolError:
            self.state = State.ERROR
            raise

    def _draw_pool_keys(self) -> KeySteps[tuple[AuthMode, list[DeliveredKey],
                                                list[DeliveredKey]]]:
        """(auth mode, psk authentication units, QKD keys), consuming them from the pool."""
        config, source = self.config, self.config.key_source
        assert self.peer_site is not None
        count = config.qkd_keys_per_handshake
        if source is None:
            self._no_qkd_reason = "no key source is configured"
            return AuthMode.SIGNATURE, [], []
        if config.auth in ("psk", "auto"):
            try:
                keys = yield KeyRequest.take(
                    self.peer_site, PSK_AUTH_UNITS + count, UNIT_BITS,
                    purpose="psk authentication and the handshake's QKD key")
            except KeySourceError as exc:
                if config.auth == "psk":
                    raise PolicyViolation(f"psk authentication needs "
                                          f"{PSK_AUTH_UNITS + count} pool keys: "
                                          f"{exc}") from exc
            else:
                self._spent += len(keys)
                return (AuthMode.PSK, keys[:PSK_AUTH_UNITS],
                        keys[PSK_AUTH_UNITS:])
        try:
            keys = yield KeyRequest.take(self.peer_site, count, UNIT_BITS,
                                         purpose="the handshake's QKD key")
        except KeySourceError as exc:
            self._no_qkd_reason = f"the key source had none: {exc}"
            return AuthMode.SIGNATURE, [], []
        self._spent += len(keys)
        return AuthMode.SIGNATURE, [], keys

    def _send_client_hello(self) -> KeySteps[None]:
        config, policy = self.config, self.config.policy
        assert self.peer_site is not None
        mode, auth_units, qkd_keys = yield from self._draw_pool_keys()
        if policy.requires_qkd and not qkd_keys:
            raise PolicyViolation(f"security policy {policy.value!r} requires a QKD key and "
                                  f"there is none for {self.peer_site!r}: {self._no_qkd_reason}",
                                  AlertDescription.QKD_REQUIRED)
        self._auth_mode, self._auth_units, self._qkd_keys = mode, auth_units, qkd_keys
        offered = [s for s in config.suites if s.post_quantum or not policy.requires_pq]
        self._offered = {s.code: s for s in offered}
        kems: list[KemId] = []
        for suite in offered:
            kems += [k for k in suite.kems if k not in kems]
        shares = []
        for k in kems:
            public, self._kem_private[k] = config.randomness.kem_keypair(k.algorithm)
            shares.append(KeyShare(k, public))
        hello = ClientHello(
            random=config.randomness.random_bytes(RANDOM_SIZE),
            client_site=config.site,
            server_site=self.peer_site,
            suites=tuple(s.code for s in offered),
            key_shares=tuple(shares),
            auth_mode=mode,
            qkd_key_ids=tuple(key_id_bytes(k.key_id) for k in qkd_keys),
            auth_key_ids=tuple(key_id_bytes(k.key_id) for k in auth_units),
        )
        if mode is AuthMode.PSK:
            binder_key = auth_units[_BINDER_UNIT].key
            self._send_handshake_raw(hello.encode_bound(
                lambda prefix: _POLY1305.compute(binder_key, prefix)), transcript=True)
        else:
            self._send_handshake_message(hello, transcript=True)

    def _on_hello(self, message: Message, raw: bytes) -> KeySteps[State]:
        return _ready(self._on_server_hello(message, raw))

    def _on_server_hello(self, message: Message, raw: bytes) -> State:
        if not isinstance(message, ServerHello):
            raise UnexpectedMessage("expected a ServerHello")
        if message.version != PROTOCOL_VERSION:
            raise DecodeError(f"ServerHello speaks version {message.version:#06x}",
                              AlertDescription.PROTOCOL_VERSION)
        suite = self._offered.get(message.suite)
        if suite is None:
            raise DecodeError("ServerHello chose a suite that was not offered",
                              AlertDescription.ILLEGAL_PARAMETER)
        if tuple(s.kem for s in message.key_shares) != suite.kems:
            raise DecodeError("ServerHello key shares do not match its suite",
                              AlertDescription.ILLEGAL_PARAMETER)
        if message.qkd_accepted and not self._qkd_keys:
            raise DecodeError("ServerHello accepts QKD keys that were never offered",
                              AlertDescription.ILLEGAL_PARAMETER)
        if message.client_auth_requested and self._auth_mode is AuthMode.PSK:
            raise DecodeError("ServerHello asks for signatures in a psk handshake",
                              AlertDescription.ILLEGAL_PARAMETER)
        qkd_key: bytes | None = None
        if message.qkd_accepted:
            qkd_key = b"".join(k.key for k in self._qkd_keys)
            self._qkd_ids = tuple(k.key_id for k in self._qkd_keys)
        elif self._qkd_keys:
            self._no_qkd_reason = "the server did not accept the QKD keys"
        self._qkd_keys = []
        self._suite = suite
        self._transcript += raw
        shared = []
        for share in message.key_shares:
            try:
                secret = kem(KemId(share.kem).algorithm).decapsulate(
                    share.data, self._kem_private[share.kem])
            except HybridKexError:
                raise DecodeError(f"the server's {KemId(share.kem).algorithm} ciphertext is "
                                  "invalid", AlertDescription.ILLEGAL_PARAMETER) from None
            shared.append((KemId(share.kem).algorithm, secret))
        self._kem_private = {}
        self._install_handshake_keys(shared, qkd_key)
        # Checked with the handshake keys in place, so the alert reaches the server sealed.
        self._policy_check(qkd_key is not None, suite)
        self._client_auth_requested = message.client_auth_requested
        return State.WAIT_AUTH_MAC if self._auth_mode is AuthMode.PSK else State.WAIT_IDENTITY

    def _after_peer_finished(self) -> State:
        self._derive_application_secrets()
        if self._auth_mode is AuthMode.PSK or self._client_auth_requested:
            self._send_own_authentication()
        self._send_handshake_message(Finished(self._finished(self.role)), transcript=True)
        self._send = RecordProtection(self.suite, self._send_secret)
        self._receive = RecordProtection(self.suite, self._receive_secret)
        return self._complete()


class ServerConnection(Connection):
    """The responding side: fetches the client's QKD keys by ID and answers in one flight."""

    role = "server"
    peer_role = "client"

    def __init__(self, config: Config, *, key_events: bool = False) -> None:
        super().__init__(config, State.WAIT_CLIENT_HELLO, key_events)

    def _on_hello(self, message: Message, raw: bytes) -> KeySteps[State]:
        if not isinstance(message, ClientHello):
            raise UnexpectedMessage("expected a ClientHello")
        config = self.config
        if message.version != PROTOCOL_VERSION:
            raise DecodeError(f"ClientHello speaks version {message.version:#06x}",
                              AlertDescription.PROTOCOL_VERSION)
        if message.server_site != config.site:
            raise DecodeError(f"the ClientHello is addressed to another site "
                              f"({message.server_site!r}; this is {config.site!r})",
                              AlertDescription.UNRECOGNIZED_NAME)
        if message.client_site == config.site:
            raise DecodeError("the ClientHello claims to come from this site",
                              AlertDescription.ILLEGAL_PARAMETER)
        if not config.replay_cache.add(message.random):
            raise ReplayDetected("this ClientHello was seen before")
        self.peer_site = message.client_site
        self._transcript += raw
        self._auth_mode = message.auth_mode
        if message.auth_mode is AuthMode.PSK:
            yield from self._check_binder(message, raw)
        elif config.auth == "psk":
            raise PolicyViolation("this site accepts only psk authentication")
        elif config.identity is None:
            raise PolicyViolation("signature authentication needs a signing identity on this "
                                  "site, and none is configured",
                                  AlertDescription.HANDSHAKE_FAILURE)
        qkd_key = yield from self._fetch_qkd(message)
        suite = self._choose_suite(message, qkd_key is not None)
        self._suite = suite
        client_shares = {s.kem: s.data for s in message.key_shares}
        shared, ciphertexts = [], []
        for k in suite.kems:
            try:
                secret, ciphertext = config.randomness.encapsulate(k.algorithm, client_shares[k])
            except HybridKexError:
                raise DecodeError(f"the client's {k.algorithm} key share is invalid",
                                  AlertDescription.ILLEGAL_PARAMETER) from None
            shared.append((k.algorithm, secret))
            ciphertexts.append(KeyShare(k, ciphertext))
        self._client_auth_requested = (message.auth_mode is AuthMode.SIGNATURE
                                       and config.mutual_auth)
        hello = ServerHello(config.randomness.random_bytes(RANDOM_SIZE), suite.code,
                            tuple(ciphertexts), qkd_key is not None, self._client_auth_requested)
        self._send_handshake_message(hello, transcript=True)
        self._install_handshake_keys(shared, qkd_key)
        self._send_own_authentication()
        self._send_handshake_message(Finished(self._finished(self.role)), transcript=True)
        self._derive_application_secrets()
        self._send = RecordProtection(self.suite, self._send_secret)
        if message.auth_mode is AuthMode.PSK:
            return State.WAIT_AUTH_MAC
        if self._client_auth_requested:
            return State.WAIT_IDENTITY
        self._peer_identity = PeerIdentity(message.client_site, None, "unauthenticated")
        return State.WAIT_FINISHED

    def _check_binder(self, hello: ClientHello, raw: bytes) -> KeySteps[None]:
        """The binder, checked over the hello's bytes as they arrived (``raw``, framed)."""
        if self.config.key_source is None or self.config.auth == "signature":
            raise PolicyViolation("this site does not accept psk authentication")
        units = yield from self._fetch(hello.auth_key_ids, "the psk authentication keys")
        self._auth_units = units
        if not _POLY1305.verify(units[_BINDER_UNIT].key, binder_prefix(raw), hello.binder):
            raise PeerAuthenticationFailed("the ClientHello binder does not verify")

    def _fetch_qkd(self, hello: ClientHello) -> KeySteps[bytes | None]:
        if not hello.qkd_key_ids:
            self._no_qkd_reason = "the client offered no QKD key"
            return None
        if self.config.key_source is None:
            self._no_qkd_reason = "this site has no key source"
            return None
        keys = yield from self._fetch(hello.qkd_key_ids, "the offered QKD keys")
        self._qkd_ids = tuple(k.key_id for k in keys)
        return b"".join(k.key for k in keys)

    def _choose_suite(self, hello: ClientHello, qkd: bool) -> Suite:
        have = {s.kem for s in hello.key_shares}
        candidates = [s for s in self.config.suites
                      if s.code in hello.suites and all(k in have for k in s.kems)]
        for suite in candidates:
            if self.config.policy.allows(qkd, suite.post_quantum):
                self._policy_check(qkd, suite)
                return suite
        if candidates:
            self._policy_check(qkd, candidates[0])  # raises, naming what is missing
        raise PolicyViolation("no suite in common with the client",
                              AlertDescription.HANDSHAKE_FAILURE)

    def _after_peer_finished(self) -> State:
        self._receive = RecordProtection(self.suite, self._receive_secret)
        return self._complete()
