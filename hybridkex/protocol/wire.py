"""HKX/1 wire format: every handshake message, its encoding and its strict decoding.

All integers are big-endian.  A variable-length field is written ``<a..b>`` in
docs/protocol.md and carries a length prefix of the smallest width that holds ``b``.
Decoding checks every length before use, refuses trailing bytes, duplicates and
out-of-range values, and raises :class:`~hybridkex.errors.DecodeError` (alert
decode_error) or, for a well-formed but forbidden value, the same class with alert
illegal_parameter.  Nothing here knows about state or keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hybridkex.errors import DecodeError
from hybridkex.protocol.suites import PROTOCOL_VERSION, AlertDescription, AuthMode, HandshakeType

__all__ = [
    "BINDER_SIZE",
    "KEY_ID_SIZE",
    "MAC_SIZE",
    "MAX_HANDSHAKE_MESSAGE",
    "AuthMac",
    "ClientHello",
    "Finished",
    "Identity",
    "IdentityKind",
    "IdentityVerify",
    "KeyShare",
    "KeyUpdate",
    "QkdRekey",
    "QkdRekeyAck",
    "Reader",
    "ServerHello",
    "Writer",
    "binder_prefix",
    "decode_handshake",
    "frame_handshake",
]

RANDOM_SIZE = 32
KEY_ID_SIZE = 16  # a UUID's 16 bytes
MAC_SIZE = 16  # Poly1305
BINDER_SIZE = MAC_SIZE
PSK_AUTH_UNITS = 3  # binder, server AuthMac, client AuthMac
MAX_KEY_IDS = 64
MAX_CHAIN = 8
MAX_HANDSHAKE_MESSAGE = 1 << 17  # room for an ML-DSA-87 chain of MAX_CHAIN certificates
_ILLEGAL = AlertDescription.ILLEGAL_PARAMETER
_AUTH_MODES = {int(m): m for m in AuthMode}


class Reader:
    """Reads fields from a message body; every overrun, leftover or bad value is a DecodeError."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    def fail(self, reason: str, alert: int = AlertDescription.DECODE_ERROR) -> DecodeError:
        return DecodeError(f"{self._what}: {reason}", alert)

    # Each method reads its field itself (no call into take or uint): a handshake
    # decodes a few hundred fields, and the calls were most of the cost.

    def take(self, n: int) -> bytes:
        pos = self._pos
        end = pos + n
        if end > len(self._data):
            raise self.fail("truncated")
        self._pos = end
        return self._data[pos:end]

    def uint(self, width: int) -> int:
        pos = self._pos
        end = pos + width
        if end > len(self._data):
            raise self.fail("truncated")
        self._pos = end
        return int.from_bytes(self._data[pos:end], "big")

    def u8(self) -> int:
        pos = self._pos
        if pos >= len(self._data):
            raise self.fail("truncated")
        self._pos = pos + 1
        return self._data[pos]

    def u16(self) -> int:
        data, pos = self._data, self._pos
        if pos + 2 > len(data):
            raise self.fail("truncated")
        self._pos = pos + 2
        return data[pos] << 8 | data[pos + 1]

    def vector(self, width: int, minimum: int, maximum: int, what: str) -> bytes:
        data, pos = self._data, self._pos
        start = pos + width
        if start > len(data):
            raise self.fail("truncated")
        n = int.from_bytes(data[pos:start], "big")
        if not minimum <= n <= maximum:
            raise self.fail(f"{what} length {n} outside {minimum}..{maximum}")
        end = start + n
        if end > len(data):
            raise self.fail("truncated")
        self._pos = end
        return data[start:end]

    def flag(self, what: str) -> bool:
        value = self.u8()
        if value > 1:
            raise self.fail(f"{what} must be 0 or 1", _ILLEGAL)
        return value == 1

    def text(self, what: str) -> str:
        raw = self.vector(1, 1, 255, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8", _ILLEGAL) from None

    def key_ids(self, what: str, minimum: int = 0) -> tuple[bytes, ...]:
        count = self.u8()
        if not minimum <= count <= MAX_KEY_IDS:
            raise self.fail(f"{what}: {count} key IDs, allowed {minimum}..{MAX_KEY_IDS}",
                            _ILLEGAL)
        blob = self.take(count * KEY_ID_SIZE)
        ids = tuple(blob[i:i + KEY_ID_SIZE] for i in range(0, len(blob), KEY_ID_SIZE))
        if len(set(ids)) != count:
            raise self.fail(f"{what}: a key ID appears twice", _ILLEGAL)
        return ids

    def at_end(self) -> bool:
        return self._pos == len(self._data)

    def end(self) -> None:
        if self._pos != len(self._data):
            raise self.fail("trailing bytes")


class Writer:
    """Builds a message body field by field, checking each length against its bound."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def raw(self, data: bytes) -> Writer:
        self._parts.append(data)
        return self

    def uint(self, width: int, value: int) -> Writer:
        self._parts.append(value.to_bytes(width, "big"))
        return self

    def vector(self, width: int, data: bytes, maximum: int) -> Writer:
        if len(data) > maximum:
            raise ValueError(f"field of {len(data)} bytes exceeds {maximum}")
        self._parts += (len(data).to_bytes(width, "big"), data)
        return self

    def text(self, value: str) -> Writer:
        return self.vector(1, value.encode("utf-8"), 255)

    def key_ids(self, ids: tuple[bytes, ...]) -> Writer:
        if len(ids) > MAX_KEY_IDS:
            raise ValueError("key IDs must be at most 64 values of 16 bytes")
        for key_id in ids:
            if len(key_id) != KEY_ID_SIZE:
                raise ValueError("key IDs must be at most 64 values of 16 bytes")
        self._parts += (bytes((len(ids),)), *ids)
        return self

    def build(self) -> bytes:
        return b"".join(self._parts)


def frame_handshake(msg_type: int, body: bytes) -> bytes:
    """``msg_type(1) | length(3) | body``: the unit the transcript hash is taken over."""
    if len(body) > MAX_HANDSHAKE_MESSAGE:
        raise ValueError("handshake message too long")
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def binder_prefix(framed: bytes) -> bytes:
    """What the binder of a psk ClientHello MACs, cut from the framed message as it
    arrived: every byte before the binder field, its length byte and tag (the binder is
    the hello's last field and, in psk mode, of fixed size).  As RFC 8446 section
    4.2.11.2 computes a PSK binder over the truncated ClientHello: the server checks the
    bytes it received, with no second encoding of a message it has just decoded."""
    return framed[:len(framed) - 1 - BINDER_SIZE]


# -- messages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyShare:
    kem: int
    data: bytes = field(repr=False)


def _write_shares(w: Writer, shares: tuple[KeyShare, ...]) -> None:
    inner = Writer()
    for share in shares:
        inner.uint(2, share.kem).vector(2, share.data, 0xFFFF)
    w.vector(2, inner.build(), 0xFFFF)


def _read_shares(r: Reader, what: str) -> tuple[KeyShare, ...]:
    inner = Reader(r.vector(2, 1, 0xFFFF, f"{what} key shares"), what)
    shares: list[KeyShare] = []
    while not inner.at_end():
        kem = inner.u16()
        shares.append(KeyShare(kem, inner.vector(2, 1, 0xFFFF, "key share")))
    if len({s.kem for s in shares}) != len(shares):
        raise r.fail("a KEM appears twice in the key shares", _ILLEGAL)
    return tuple(shares)


@dataclass(frozen=True)
class ClientHello:
    """The client's offer.  In psk mode the binder, a one-time MAC over this message up to
    the binder itself, lets the server refuse a forged hello before anything else."""

    random: bytes = field(repr=False)
    client_site: str
    server_site: str
    suites: tuple[int, ...]
    key_shares: tuple[KeyShare, ...]
    auth_mode: AuthMode
    qkd_key_ids: tuple[bytes, ...]
    auth_key_ids: tuple[bytes, ...] = ()
    binder: bytes = b""
    version: int = PROTOCOL_VERSION

    msg_type = HandshakeType.CLIENT_HELLO

    def _body_before_binder(self) -> Writer:
        w = Writer().uint(2, self.version).raw(self.random)
        w.text(self.client_site).text(self.server_site)
        w.vector(1, b"".join(s.to_bytes(2, "big") for s in self.suites), 254)
        _write_shares(w, self.key_shares)
        w.uint(1, self.auth_mode).key_ids(self.qkd_key_ids).key_ids(self.auth_key_ids)
        return w

    def encode(self) -> bytes:
        body = self._body_before_binder().vector(1, self.binder, BINDER_SIZE).build()
        return frame_handshake(self.msg_type, body)

    def _prefix(self) -> bytes:
        body = self._body_before_binder().build()
        full_length = len(body) + 1 + (BINDER_SIZE if self.auth_mode == AuthMode.PSK else 0)
        if full_length > MAX_HANDSHAKE_MESSAGE:
            raise ValueError("handshake message too long")
        return bytes([self.msg_type]) + full_length.to_bytes(3, "big") + body

    def binder_input(self) -> bytes:
        """The framed message without its binder field (length byte and tag): what the binder
        MACs.  The frame's length is the full message's, as if the binder were present."""
        return self._prefix()

    def encode_bound(self, binder_for: Callable[[bytes], bytes]) -> bytes:
        """The framed psk hello, encoded once: ``binder_for`` tags its prefix (everything
        before the binder field, :meth:`binder_input`), and the tag is appended as the
        binder.  The same bytes as ``replace(self, binder=tag).encode()``, without a
        second encoding; the binder this object holds is not used."""
        if self.auth_mode != AuthMode.PSK:
            raise ValueError("only a psk ClientHello carries a binder")
        prefix = self._prefix()
        binder = binder_for(prefix)
        if len(binder) != BINDER_SIZE:
            raise ValueError(f"a binder is {BINDER_SIZE} bytes, not {len(binder)}")
        return prefix + bytes((BINDER_SIZE,)) + binder

    @classmethod
    def decode(cls, body: bytes) -> ClientHello:
        r = Reader(body, "ClientHello")
        version = r.u16()
        random = r.take(RANDOM_SIZE)
        client_site = r.text("client site")
        server_site = r.text("server site")
        raw_suites = r.vector(1, 2, 254, "suites")
        if len(raw_suites) % 2:
            raise r.fail("suites list has an odd length")
        suites = tuple(int.from_bytes(raw_suites[i:i + 2], "big")
                       for i in range(0, len(raw_suites), 2))
        if len(set(suites)) != len(suites):
            raise r.fail("a suite appears twice", _ILLEGAL)
        shares = _read_shares(r, "ClientHello")
        mode = r.u8()
        auth_mode = _AUTH_MODES.get(mode)
        if auth_mode is None:
            raise r.fail(f"unknown authentication mode {mode}", _ILLEGAL)
        qkd_ids = r.key_ids("QKD key IDs")
        auth_ids = r.key_ids("authentication key IDs")
        binder = r.vector(1, 0, BINDER_SIZE, "binder")
        r.end()
        if auth_mode == AuthMode.PSK:
            if len(auth_ids) != PSK_AUTH_UNITS or len(binder) != BINDER_SIZE:
                raise r.fail(f"psk mode needs {PSK_AUTH_UNITS} authentication key IDs and a "
                             f"{BINDER_SIZE}-byte binder", _ILLEGAL)
            if set(auth_ids) & set(qkd_ids):
                raise r.fail("a key ID is both a QKD and an authentication key", _ILLEGAL)
        elif auth_ids or binder:
            raise r.fail("signature mode carries no authentication keys or binder", _ILLEGAL)
        return cls(random, client_site, server_site, suites, shares, auth_mode, qkd_ids,
                   auth_ids, binder, version)


@dataclass(frozen=True)
class ServerHello:
    random: bytes = field(repr=False)
    suite: int
    key_shares: tuple[KeyShare, ...]
    qkd_accepted: bool
    client_auth_requested: bool
    version: int = PROTOCOL_VERSION

    msg_type = HandshakeType.SERVER_HELLO

    def encode(self) -> bytes:
        w = Writer().uint(2, self.version).raw(self.random).uint(2, self.suite)
        _write_shares(w, self.key_shares)
        w.uint(1, int(self.qkd_accepted)).uint(1, int(self.client_auth_requested))
        return frame_handshake(self.msg_type, w.build())

    @classmethod
    def decode(cls, body: bytes) -> ServerHello:
        r = Reader(body, "ServerHello")
        version = r.u16()
        random = r.take(RANDOM_SIZE)
        suite = r.u16()
        shares = _read_shares(r, "ServerHello")
        qkd = r.flag("QKD accepted")
        client_auth = r.flag("client authentication requested")
        r.end()
        return cls(random, suite, shares, qkd, client_auth, version)


class IdentityKind:
    RAW_PUBLIC_KEY = 1
    X509_CHAIN = 2


@dataclass(frozen=True)
class Identity:
    """Who a site claims to be: a raw public key (pinned by the peer) or an X.509 chain,
    leaf first, for the peer to verify against its trust anchors."""

    kind: int
    scheme: int
    public_key: bytes = field(default=b"", repr=False)
    certificates: tuple[bytes, ...] = field(default=(), repr=False)

    msg_type = HandshakeType.IDENTITY

    def encode(self) -> bytes:
        w = Writer().uint(1, self.kind).uint(2, self.scheme)
        if self.kind == IdentityKind.RAW_PUBLIC_KEY:
            w.vector(2, self.public_key, 0xFFFF)
        else:
            chain = Writer()
            for der in self.certificates:
                chain.vector(3, der, MAX_HANDSHAKE_MESSAGE)
            w.vector(3, chain.build(), MAX_HANDSHAKE_MESSAGE)
        return frame_handshake(self.msg_type, w.build())

    @classmethod
    def decode(cls, body: bytes) -> Identity:
        r = Reader(body, "Identity")
        kind = r.u8()
        scheme = r.u16()
        if kind == IdentityKind.RAW_PUBLIC_KEY:
            public_key = r.vector(2, 1, 0xFFFF, "public key")
            r.end()
            return cls(kind, scheme, public_key=public_key)
        if kind != IdentityKind.X509_CHAIN:
            raise r.fail(f"unknown identity kind {kind}", _ILLEGAL)
        chain = Reader(r.vector(3, 1, MAX_HANDSHAKE_MESSAGE, "certificate chain"), "Identity")
        r.end()
        certificates: list[bytes] = []
        while not chain.at_end():
            certificates.append(chain.vector(3, 1, MAX_HANDSHAKE_MESSAGE, "certificate"))
        if not 1 <= len(certificates) <= MAX_CHAIN:
            raise r.fail(f"certificate chain of {len(certificates)}, allowed 1..{MAX_CHAIN}")
        return cls(kind, scheme, certificates=tuple(certificates))


@dataclass(frozen=True)
class IdentityVerify:
    signature: bytes = field(repr=False)

    msg_type = HandshakeType.IDENTITY_VERIFY

    def encode(self) -> bytes:
        return frame_handshake(self.msg_type, Writer().vector(2, self.signature, 0xFFFF).build())

    @classmethod
    def decode(cls, body: bytes) -> IdentityVerify:
        r = Reader(body, "IdentityVerify")
        signature = r.vector(2, 1, 0xFFFF, "signature")
        r.end()
        return cls(signature)


@dataclass(frozen=True)
class AuthMac:
    tag: bytes = field(repr=False)

    msg_type = HandshakeType.AUTH_MAC

    def encode(self) -> bytes:
        return frame_handshake(self.msg_type, Writer().vector(1, self.tag, MAC_SIZE).build())

    @classmethod
    def decode(cls, body: bytes) -> AuthMac:
        r = Reader(body, "AuthMac")
        tag = r.vector(1, MAC_SIZE, MAC_SIZE, "MAC")
        r.end()
        return cls(tag)


@dataclass(frozen=True)
class Finished:
    verify_data: bytes = field(repr=False)

    msg_type = HandshakeType.FINISHED

    def encode(self) -> bytes:
        return frame_handshake(self.msg_type, self.verify_data)

    @classmethod
    def decode(cls, body: bytes) -> Finished:
        if len(body) not in (32, 48):
            raise DecodeError(f"Finished: {len(body)} bytes of verify data")
        return cls(body)


@dataclass(frozen=True)
class KeyUpdate:
    update_requested: bool

    msg_type = HandshakeType.KEY_UPDATE

    def encode(self) -> bytes:
        return frame_handshake(self.msg_type, bytes([int(self.update_requested)]))

    @classmethod
    def decode(cls, body: bytes) -> KeyUpdate:
        r = Reader(body, "KeyUpdate")
        requested = r.flag("update requested")
        r.end()
        return cls(requested)


@dataclass(frozen=True)
class QkdRekey:
    key_ids: tuple[bytes, ...]

    msg_type = HandshakeType.QKD_REKEY

    def encode(self) -> bytes:
        return frame_handshake(self.msg_type, Writer().key_ids(self.key_ids).build())

    @classmethod
    def decode(cls, body: bytes) -> QkdRekey:
        r = Reader(body, "QkdRekey")
        ids = r.key_ids("QKD key IDs", minimum=1)
        r.end()
        return cls(ids)


@dataclass(frozen=True)
class QkdRekeyAck:
    msg_type = HandshakeType.QKD_REKEY_ACK

    def encode(self) -> bytes:
        return frame_handshake(self.msg_type, b"")

    @classmethod
    def decode(cls, body: bytes) -> QkdRekeyAck:
        Reader(body, "QkdRekeyAck").end()
        return cls()


Message = (ClientHello | ServerHello | Identity | IdentityVerify | AuthMac | Finished
           | KeyUpdate | QkdRekey | QkdRekeyAck)

_DECODERS: dict[int, type[Message]] = {
    m.msg_type: m
    for m in (ClientHello, ServerHello, Identity, IdentityVerify, AuthMac, Finished, KeyUpdate,
              QkdRekey, QkdRekeyAck)
}


def decode_handshake(msg_type: int, body: bytes) -> Message:
    """Decode one handshake message body of the given type."""
    try:
        decoder = _DECODERS[msg_type]
    except KeyError:
        raise DecodeError(f"unknown handshake message type {msg_type}",
                          AlertDescription.UNEXPECTED_MESSAGE) from None
    if len(body) > MAX_HANDSHAKE_MESSAGE:
        raise DecodeError(f"handshake message of {len(body)} bytes is too long")
    return decoder.decode(body)


