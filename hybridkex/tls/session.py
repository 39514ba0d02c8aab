"""What a TLS session is made of (:class:`TLSSessionInfo`), and the names it is told in."""

from __future__ import annotations

from dataclasses import dataclass

from hybridkex.protocol.identity import PeerIdentity

__all__ = [
    "GROUPS",
    "MODES",
    "PSK_AUTHENTICATION",
    "PSK_CIPHERSUITES",
    "SIGNATURE_SCHEME_NAMES",
    "TLSSessionInfo",
]

MODES = ("certificate", "qkd-psk")

# The key-exchange groups hybridkex.tls offers (OpenSSL names), and the secrets each
# mixes into the TLS 1.3 handshake secret.  No classical-only group is offered.
GROUPS: dict[str, tuple[str, ...]] = {
    "X25519MLKEM768": ("ML-KEM-768", "X25519"),
    "SecP256r1MLKEM768": ("ECDH P-256", "ML-KEM-768"),
    "SecP384r1MLKEM1024": ("ECDH P-384", "ML-KEM-1024"),
    "MLKEM768": ("ML-KEM-768",),
    "MLKEM1024": ("ML-KEM-1024",),
}

# A TLS 1.3 external PSK is bound to one hash; it is usable only with a ciphersuite of
# that hash.  qkd-psk mode offers exactly one suite, so the PSK cannot be passed over
# for a suite it does not fit.  Value: the suite's two-byte code.
PSK_CIPHERSUITES: dict[str, bytes] = {
    "TLS_AES_256_GCM_SHA384": b"\x13\x02",
    "TLS_AES_128_GCM_SHA256": b"\x13\x01",
    "TLS_CHACHA20_POLY1305_SHA256": b"\x13\x03",
}

# TLS SignatureScheme code points (IANA), as reported for CertificateVerify.
SIGNATURE_SCHEME_NAMES: dict[int, str] = {
    0x0403: "ecdsa_secp256r1_sha256",
    0x0503: "ecdsa_secp384r1_sha384",
    0x0603: "ecdsa_secp521r1_sha512",
    0x0804: "rsa_pss_rsae_sha256",
    0x0805: "rsa_pss_rsae_sha384",
    0x0806: "rsa_pss_rsae_sha512",
    0x0807: "ed25519",
    0x0808: "ed448",
    0x0809: "rsa_pss_pss_sha256",
    0x080A: "rsa_pss_pss_sha384",
    0x080B: "rsa_pss_pss_sha512",
    0x0904: "mldsa44",
    0x0905: "mldsa65",
    0x0906: "mldsa87",
}

PSK_AUTHENTICATION = (
    "qkd-psk: the peer is authenticated by the QKD key alone (a TLS 1.3 external PSK "
    "that only the two sites' key pools hold); no certificate or signature is involved, "
    "since OpenSSL has no certificate-plus-external-PSK mode (RFC 8773)")


def signature_scheme_name(code: int) -> str:
    return SIGNATURE_SCHEME_NAMES.get(code, f"0x{code:04x}")


@dataclass(frozen=True)
class TLSSessionInfo:
    """A snapshot of a TLS session, read from the connection after the handshake: what
    was negotiated, never what was asked for.

    ``peer`` is what the handshake proved about the peer (``kind`` "x509" or "psk").
    ``peer_signature_scheme`` is the scheme of the peer's CertificateVerify (TLS names:
    "mldsa65", "ed25519", "ecdsa_secp256r1_sha256"), None in qkd-psk mode, where no
    signature is made.  ``psk_used`` is OpenSSL's own answer (``SSL_session_reused``);
    ``psk_key_id`` the QKD key ID that was the PSK identity.
    """

    role: str  # "client" or "server"
    local_site: str
    mode: str  # "certificate" or "qkd-psk"
    version: str  # "TLSv1.3"
    cipher: str
    group: str
    peer: PeerIdentity
    peer_signature_scheme: str | None
    local_signature_scheme: str | None
    psk_used: bool
    psk_key_id: str | None
    peer_certificate_subject: str | None
    peer_certificate_sha256: str | None  # hex SHA-256 of the leaf certificate's DER
    authentication: str

    @property
    def key_exchange(self) -> tuple[str, ...]:
        """Every secret the TLS 1.3 key schedule mixed: the group's, then the QKD key."""
        parts = GROUPS.get(self.group, (self.group,))
        return (*parts, "QKD key (external PSK)") if self.psk_used else parts

    @property
    def qkd(self) -> bool:
        return self.psk_used

    @property
    def post_quantum(self) -> bool:
        return any(part.startswith("ML-KEM") for part in GROUPS.get(self.group, ()))

    @property
    def qkd_key_ids(self) -> tuple[str, ...]:
        return (self.psk_key_id,) if self.psk_key_id is not None else ()

    def describe(self) -> list[tuple[str, str]]:
        """What the session is made of, as (label, value) lines for people."""
        lines = [
            ("protocol", f"{self.version} (OpenSSL), {self.mode} mode"),
            ("cipher", self.cipher),
            ("group", self.group),
            ("key exchange", " + ".join(self.key_exchange) + " -> TLS 1.3 key schedule"),
            ("QKD key IDs", self.psk_key_id or "none"),
            ("authentication", self.authentication),
        ]
        if self.peer_signature_scheme is not None:
            lines.append(("peer signature", self.peer_signature_scheme))
        if self.peer_certificate_subject is not None:
            lines.append(("peer certificate", f"{self.peer_certificate_subject}, sha256 "
                                              f"{self.peer_certificate_sha256}"))
        return lines
