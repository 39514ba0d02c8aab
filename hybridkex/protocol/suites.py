"""HKX/1 codepoints: record and message types, alerts, KEMs, signature schemes, suites.

The protocol's codepoints live here (the Identity kinds, in wire.py, and the alert
levels, in connection.py, are the exceptions); docs/protocol.md lists the same tables.
Where TLS 1.3 has a codepoint for the same thing (content types, alert descriptions,
named groups, signature schemes) HKX/1 reuses it, so a reader who knows TLS reads a
trace without a table.  HKX/1 is not TLS and never shares a connection with it, so
its own handshake types (16, 25, 26) may coincide with numbers TLS uses elsewhere;
its own alerts (200-202) and signature scheme (0xFE01) sit in unassigned or private
ranges.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hybridkex.errors import UnknownAlgorithm

__all__ = [
    "DEFAULT_SUITES",
    "POST_QUANTUM_KEMS",
    "PROTOCOL_VERSION",
    "SUITES",
    "AlertDescription",
    "AuthMode",
    "ContentType",
    "HandshakeType",
    "KemId",
    "SignatureSchemeId",
    "Suite",
    "suite_by_name",
]

PROTOCOL_VERSION = 0x0001  # HKX/1


class ContentType(enum.IntEnum):
    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23


class HandshakeType(enum.IntEnum):
    CLIENT_HELLO = 1
    SERVER_HELLO = 2
    IDENTITY = 11
    IDENTITY_VERIFY = 15
    AUTH_MAC = 16
    FINISHED = 20
    KEY_UPDATE = 24
    QKD_REKEY = 25
    QKD_REKEY_ACK = 26


class AlertDescription(enum.IntEnum):
    CLOSE_NOTIFY = 0
    UNEXPECTED_MESSAGE = 10
    BAD_RECORD_MAC = 20
    RECORD_OVERFLOW = 22
    HANDSHAKE_FAILURE = 40
    BAD_CERTIFICATE = 42
    ILLEGAL_PARAMETER = 47
    UNKNOWN_CA = 48
    ACCESS_DENIED = 49
    DECODE_ERROR = 50
    DECRYPT_ERROR = 51
    PROTOCOL_VERSION = 70
    INSUFFICIENT_SECURITY = 71
    INTERNAL_ERROR = 80
    UNRECOGNIZED_NAME = 112
    CERTIFICATE_REQUIRED = 116
    QKD_KEY_UNAVAILABLE = 200
    QKD_REQUIRED = 201
    REPLAY_DETECTED = 202
    SERVER_BUSY = 203


class AuthMode(enum.IntEnum):
    """How the two sites prove who they are in a handshake."""

    SIGNATURE = 1  # bootstrap: signatures over the transcript
    PSK = 2  # one-time MACs keyed from the QKD pool


class KemId(enum.IntEnum):
    """Key shares, numbered as TLS named groups (RFC 8446, draft-ietf-tls-mlkem)."""

    X25519 = 0x001D
    ML_KEM_768 = 0x0201
    ML_KEM_1024 = 0x0202

    @property
    def algorithm(self) -> str:
        return _KEM_ALGORITHMS[self]


_KEM_ALGORITHMS = {KemId.X25519: "X25519", KemId.ML_KEM_768: "ML-KEM-768",
                   KemId.ML_KEM_1024: "ML-KEM-1024"}


class SignatureSchemeId(enum.IntEnum):
    """TLS SignatureScheme codepoints; the composite has none in TLS and uses a private one."""

    ECDSA_P256_SHA256 = 0x0403
    ED25519 = 0x0807
    ML_DSA_44 = 0x0904
    ML_DSA_65 = 0x0905
    ML_DSA_87 = 0x0906
    ML_DSA_65_ED25519 = 0xFE01

    @property
    def algorithm(self) -> str:
        return _SCHEME_NAMES[self]

    @classmethod
    def for_algorithm(cls, name: str) -> SignatureSchemeId:
        for scheme, algorithm in _SCHEME_NAMES.items():
            if algorithm == name:
                return scheme
        raise UnknownAlgorithm(
            f"no HKX/1 signature scheme for {name!r}; "
            f"known: {', '.join(_SCHEME_NAMES.values())}")


_SCHEME_NAMES = {
    SignatureSchemeId.ECDSA_P256_SHA256: "ECDSA-P256",
    SignatureSchemeId.ED25519: "Ed25519",
    SignatureSchemeId.ML_DSA_44: "ML-DSA-44",
    SignatureSchemeId.ML_DSA_65: "ML-DSA-65",
    SignatureSchemeId.ML_DSA_87: "ML-DSA-87",
    SignatureSchemeId.ML_DSA_65_ED25519: "ML-DSA-65+Ed25519",
}


POST_QUANTUM_KEMS = frozenset({KemId.ML_KEM_768, KemId.ML_KEM_1024})


@dataclass(frozen=True)
class Suite:
    """What a session's keys are made of: the KEMs whose secrets enter the combiner (the
    QKD key joins them when there is one), the record AEAD and the schedule's hash."""

    code: int
    name: str
    kems: tuple[KemId, ...]
    aead: str
    hash: str

    @property
    def post_quantum(self) -> bool:
        return any(k in POST_QUANTUM_KEMS for k in self.kems)

    @property
    def hash_len(self) -> int:
        return 48 if self.hash == "SHA-384" else 32

    def __str__(self) -> str:
        return self.name


SUITES: dict[int, Suite] = {
    s.code: s
    for s in (
        Suite(0x0101, "HKX1_X25519_MLKEM768_AES_256_GCM_SHA384",
              (KemId.X25519, KemId.ML_KEM_768), "AES-256-GCM", "SHA-384"),
        Suite(0x0102, "HKX1_X25519_MLKEM768_CHACHA20_POLY1305_SHA384",
              (KemId.X25519, KemId.ML_KEM_768), "ChaCha20-Poly1305", "SHA-384"),
        Suite(0x0103, "HKX1_X25519_MLKEM1024_AES_256_GCM_SHA384",
              (KemId.X25519, KemId.ML_KEM_1024), "AES-256-GCM", "SHA-384"),
        Suite(0x0104, "HKX1_X25519_MLKEM1024_CHACHA20_POLY1305_SHA384",
              (KemId.X25519, KemId.ML_KEM_1024), "ChaCha20-Poly1305", "SHA-384"),
        # Classical key exchange only: its keys rest on X25519 and the QKD key.  Never
        # offered by default; a policy that does not require post-quantum KEMs may add it.
        Suite(0x0001, "HKX1_X25519_AES_256_GCM_SHA384",
              (KemId.X25519,), "AES-256-GCM", "SHA-384"),
    )
}

# ML-KEM-768 by default: the client sends a key share for every KEM it offers (HKX/1 has
# no retry round trip), so offering ML-KEM-1024 too would cost a key pair per handshake.
DEFAULT_SUITES: tuple[Suite, ...] = (SUITES[0x0101], SUITES[0x0102])


def suite_by_name(name: str) -> Suite:
    """The suite called ``name`` (its full name, e.g. HKX1_X25519_MLKEM768_AES_256_GCM_SHA384)."""
    for suite in SUITES.values():
        if suite.name == name:
            return suite
    raise UnknownAlgorithm(f"unknown HKX/1 suite {name!r}; known: "
                           + ", ".join(s.name for s in SUITES.values()))
