"""A site's settings for TLS 1.3 connections through pyOpenSSL, shaped like
:class:`hybridkex.transport.Context`."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from OpenSSL import SSL, crypto

from hybridkex.errors import BackendUnavailable
from hybridkex.keydelivery.source import KeySource
from hybridkex.primitives.signature import private_key_pem
from hybridkex.protocol.config import Config
from hybridkex.protocol.identity import SigningIdentity, TrustStore
from hybridkex.tls import _openssl
from hybridkex.tls.errors import TLSConfigurationError, UnknownGroup
from hybridkex.tls.session import GROUPS, MODES, PSK_CIPHERSUITES
from hybridkex.transport.context import DEFAULT_HANDSHAKE_TIMEOUT

if TYPE_CHECKING:
    from hybridkex.tls.connection import TLSConnection
    from hybridkex.tls.socket import TLSSocket

__all__ = [
    "CERTIFICATE_CIPHERSUITES",
    "DEFAULT_GROUPS",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_PSK_CIPHERSUITE",
    "SIGNATURE_ALGORITHMS",
    "TLSContext",
    "certificate_names",
]


DEFAULT_GROUPS = ("X25519MLKEM768",)
DEFAULT_PSK_CIPHERSUITE = "TLS_AES_256_GCM_SHA384"
# OpenSSL's TLS 1.3 default list, in its order (certificate mode).
CERTIFICATE_CIPHERSUITES = ("TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
                            "TLS_AES_128_GCM_SHA256")
# hybridkex signature scheme -> TLS 1.3 signature scheme: the keys a site may present
# in a certificate and the only schemes offered and accepted in CertificateVerify.
SIGNATURE_ALGORITHMS: dict[str, str] = {
    "ML-DSA-65": "mldsa65",
    "ML-DSA-87": "mldsa87",
    "ML-DSA-44": "mldsa44",
    "Ed25519": "ed25519",
    "ECDSA-P256": "ecdsa_secp256r1_sha256",
}
PSK_BITS = 256  # one QKD pool key is the PSK


def canonical_group(name: str) -> str:
    """The OpenSSL spelling of a group hybridkex.tls offers, or UnknownGroup."""
    if isinstance(name, str):
        for known in GROUPS:
            if known.lower() == name.lower():
                return known
    raise UnknownGroup(f"unknown or unsupported TLS group {name!r}: hybridkex.tls offers "
                       f"{', '.join(GROUPS)} (classical-only groups are not offered)")


def certificate_names(certificate: x509.Certificate) -> list[str]:
    """The names a certificate is accepted for: its common names, then its DNS
    subjectAltNames (the rule HKX/1 applies too)."""
    names = [str(a.value) for a in certificate.subject.get_attributes_for_oid(
        x509.oid.NameOID.COMMON_NAME)]
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return names
    return names + [n for n in san.value.get_values_for_type(x509.DNSName) if n not in names]


@dataclass(frozen=True)
class _Role:
    """One role's OpenSSL context, configured once, and what its callbacks need."""

    ssl_context: SSL.Context
    callbacks: _openssl.ContextCallbacks  # referenced for as long as the context lives


class TLSContext:
    """Everything a site's TLS connections share, in the shape of
    :class:`hybridkex.transport.Context`.

    ``mode="certificate"``: TLS 1.3 with a hybrid key-exchange group and X.509
    certificates: ``identity`` (a :class:`SigningIdentity` with a certificate chain:
    ML-DSA-44/65/87, Ed25519 or ECDSA-P256) is presented, peers are verified against
    ``trust``'s X.509 anchors (pinned raw keys cannot be used in TLS), and a client
    checks that the server's certificate names the site it asked for (common name or
    DNS subjectAltName).  ``mutual_auth`` (default True, as HKX/1's) makes a server
    demand a client certificate.

    ``mode="qkd-psk"``: a QKD key from ``key_source`` is the TLS 1.3 external PSK, in
    psk_dhe_ke mode, so TLS mixes it with the group's key shares.  The PSK identity is
    the key's ID; the client takes a key for its peer, the server fetches it by ID from
    the pool of ``peer`` (``wrap_socket``) or of one of ``peers``.  The PSK alone
    authenticates both sides; no certificate is sent or accepted.  ``psk_cipher`` is
    the one TLS 1.3 suite offered, so the PSK's hash always fits.

    ``groups``: the key-exchange groups offered and accepted, in preference order
    (OpenSSL names; only hybrid and pure ML-KEM groups).  After every handshake the
    negotiated group is checked to be one of them.

    >>> ctx = TLSContext("site-a", identity=identity, trust=trust)
    >>> with ctx.wrap_socket(socket.create_connection(addr), peer="site-b") as s: ...
    """

    def __init__(self, site: str, *, mode: str = "certificate",
                 identity: SigningIdentity | None = None, trust: TrustStore | None = None,
                 key_source: KeySource | None = None,
                 groups: Sequence[str] | str = DEFAULT_GROUPS, mutual_auth: bool = True,
                 peers: Sequence[str] = (), psk_cipher: str = DEFAULT_PSK_CIPHERSUITE,
                 handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT) -> None:
        if not isinstance(site, str) or not site:
            raise TLSConfigurationError("site must be a non-empty name")
        if mode not in MODES:
            raise TLSConfigurationError(f"mode must be one of {MODES}, not {mode!r}")
        if isinstance(groups, str):
            groups = (groups,)
        chosen = tuple(canonical_group(g) for g in groups)
        if not chosen:
            raise TLSConfigurationError("groups must name at least one group")
        if len(set(chosen)) != len(chosen):
            raise TLSConfigurationError("a group appears twice in groups")
        if psk_cipher not in PSK_CIPHERSUITES:
            raise TLSConfigurationError(f"psk_cipher must be one of {tuple(PSK_CIPHERSUITES)}")
        if isinstance(peers, str):
            peers = (peers,)
        self.site = site
        self.mode = mode
        self.identity = identity
        self.trust = trust if trust is not None else TrustStore()
        self.key_source = key_source
        self.groups = chosen
        self.mutual_auth = bool(mutual_auth)
        self.peers = tuple(peers)
        self.psk_cipher = psk_cipher
        self.handshake_timeout = handshake_timeout
        self._roles: dict[bool, _Role | str] = {}
        if mode == "qkd-psk":
            if key_source is None:
                raise TLSConfigurationError("qkd-psk mode needs a key_source")
        elif identity is not None:
            self._check_identity(identity)
        for server_side in (False, True):
            problem = self._role_problem(server_side)
            self._roles[server_side] = (problem if problem is not None
                                        else self._build_role(server_side))
        if all(isinstance(r, str) for r in self._roles.values()):
            raise TLSConfigurationError(
                f"this context can act neither as a client ({self._roles[False]}) "
                f"nor as a server ({self._roles[True]})")

    @classmethod
    def from_config(cls, config: Config, *, mode: str = "certificate",
                    groups: Sequence[str] | str = DEFAULT_GROUPS, peers: Sequence[str] = (),
                    psk_cipher: str = DEFAULT_PSK_CIPHERSUITE,
                    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT) -> TLSContext:
        """A TLS context from an HKX/1 :class:`~hybridkex.protocol.Config`: its site name,
        identity, trust store, key source and ``mutual_auth``.  The rest of the Config
        (suites, security policy, auth mode, clock) is HKX/1's and is not used: TLS's
        own key schedule, suites and system clock apply."""
        return cls(config.site, mode=mode, identity=config.identity, trust=config.trust,
                   key_source=config.key_source, groups=groups, mutual_auth=config.mutual_auth,
                   peers=peers, psk_cipher=psk_cipher, handshake_timeout=handshake_timeout)

    def __repr__(self) -> str:
        return (f"<hybridkex.tls.TLSContext site={self.site!r} mode={self.mode} "
                f"groups={':'.join(self.groups)}>")

    # -- building the OpenSSL contexts -------------------------------------------------

    def _check_identity(self, identity: SigningIdentity) -> None:
        if identity.scheme not in SIGNATURE_ALGORITHMS:
            raise TLSConfigurationError(
                f"a {identity.scheme} identity cannot be presented in TLS (no certificate "
                f"or TLS signature scheme for it); use one of {tuple(SIGNATURE_ALGORITHMS)}")
        if not identity.certificates:
            raise TLSConfigurationError(
                "TLS needs the identity's X.509 certificate chain; a raw public key "
                "(SigningIdentity.generate) cannot be presented (SigningIdentity.from_chain)")
        leaf = x509.load_der_x509_certificate(identity.certificates[0])
        if self.site not in certificate_names(leaf):
            raise TLSConfigurationError(
                f"the identity's certificate does not name this site {self.site!r} "
                "(common name or DNS subjectAltName), so no peer would accept it")

    def _role_problem(self, server_side: bool) -> str | None:
        """Why this context cannot act in that role, or None."""
        if self.mode == "qkd-psk":
            return None
        if server_side:
            if self.identity is None:
                return "a certificate-mode server needs an identity"
            if self.mutual_auth and not self.trust.anchors:
                return "mutual_auth needs X.509 trust anchors to verify clients with"
            return None
        if not self.trust.anchors:
            return "a certificate-mode client needs X.509 trust anchors"
        return None

    def _build_role(self, server_side: bool) -> _Role:
        psk = self.mode == "qkd-psk"
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD if server_side else SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
        # Every handshake is a full one (or uses the QKD PSK): no session cache, no
        # stateless tickets.  OpenSSL still sends stateful tickets that nothing redeems.
        ctx.set_options(SSL.OP_NO_TICKET)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        if not _openssl.set_groups(ctx, list(self.groups)):
            raise BackendUnavailable(
                f"the OpenSSL under pyOpenSSL does not support {':'.join(self.groups)}; "
                "hybridkex.tls needs pyOpenSSL >= 26 with cryptography >= 50 (OpenSSL >= 3.5)")
        suites = [self.psk_cipher] if psk else list(CERTIFICATE_CIPHERSUITES)
        if not _openssl.set_ciphersuites(ctx, suites):
            raise BackendUnavailable(f"OpenSSL refused the ciphersuites {suites}")
        if not _openssl.set_signature_algorithms(ctx, list(SIGNATURE_ALGORITHMS.values())):
            raise BackendUnavailable("the OpenSSL under pyOpenSSL lacks ML-DSA signatures; "
                                     "hybridkex.tls needs cryptography >= 50")
        if psk:
            # No certificate is loaded and none is trusted: a handshake that does not
            # use the PSK cannot complete in either direction.
            verify = SSL.VERIFY_NONE if server_side else SSL.VERIFY_PEER
        else:
            if self.identity is not None:
                self._load_identity(ctx, self.identity)
            store = ctx.get_cert_store()
            assert store is not None
            for anchor in self.trust.anchors:
                store.add_cert(crypto.X509.from_cryptography(anchor))
            # An anchor need not be self-signed (a site's trust/ may hold a peer's own
            # certificate or an intermediate), as for HKX/1's TrustStore.
            store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
            if not server_side:
                verify = SSL.VERIFY_PEER
            elif self.mutual_auth:
                verify = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT
            else:
                verify = SSL.VERIFY_NONE
        callbacks = _openssl.install_callbacks(
            ctx, psk_cipher_id=PSK_CIPHERSUITES[self.psk_cipher] if psk else None,
            client=not server_side, verify_mode=verify)
        return _Role(ctx, callbacks)

    @staticmethod
    def _load_identity(ctx: SSL.Context, identity: SigningIdentity) -> None:
        chain = [x509.load_der_x509_certificate(der) for der in identity.certificates]
        ctx.use_certificate(chain[0])
        for intermediate in chain[1:]:
            ctx.add_extra_chain_cert(intermediate)
        # From memory: pyOpenSSL's own loaders refuse ML-DSA keys except from a file.
        try:
            pem = private_key_pem(identity.scheme, identity.private_key)
            _openssl.use_private_key_pem(ctx, pem)
            ctx.check_privatekey()
        except (ValueError, SSL.Error) as exc:
            raise TLSConfigurationError(
                f"OpenSSL refused the identity's {identity.scheme} key: {exc}") from None

    # -- connections -------------------------------------------------------------------

    def role(self, server_side: bool) -> _Role:
        role = self._roles[server_side]
        if isinstance(role, str):
            raise TLSConfigurationError(role)
        return role

    def new_connection(self, server_side: bool, peer: str | None, *,
                       key_events: bool = False) -> TLSConnection:
        """The sans-IO TLS connection a wrapped socket or stream drives.

        A client names the peer site it connects to.  A server may name one (then only
        that site is accepted); otherwise it accepts the sites in ``peers`` (in qkd-psk
        mode, the pools it fetches the client's key from), and in certificate mode, with
        no ``peers``, any certificate its anchors accept.  ``key_events``: the
        connection asks its driver for QKD keys instead of calling the key source.
        """
        from hybridkex.tls.connection import TLSConnection

        if not server_side and not peer:
            raise TLSConfigurationError("a client must name the peer site it connects to "
                                        "(peer=...)")
        candidates = (peer,) if peer else self.peers
        if server_side and self.mode == "qkd-psk" and not candidates:
            raise TLSConfigurationError(
                "a qkd-psk server needs peer=... or the context's peers=... (the sites "
                "whose QKD pools it fetches PSKs from)")
        return TLSConnection(self, self.role(server_side), server_side=server_side,
                             peer=peer, candidates=candidates, key_events=key_events)

    def wrap_socket(self, sock: socket.socket, server_side: bool = False,
                    peer: str | None = None, *, handshake_timeout: float | None = None,
                    do_handshake_on_connect: bool = True) -> TLSSocket:
        """A :class:`~hybridkex.tls.socket.TLSSocket` over ``sock`` (which it owns from now
        on).  The handshake runs now unless ``do_handshake_on_connect`` is False."""
        from hybridkex.tls.socket import TLSSocket

        timeout = self.handshake_timeout if handshake_timeout is None else handshake_timeout
        wrapped = TLSSocket(self, sock, server_side=server_side, peer=peer,
                            handshake_timeout=timeout)
        if do_handshake_on_connect:
            wrapped.do_handshake()
        return wrapped
