"""Who a site is in a bootstrap (signature) handshake, and how its peer checks that.

A site proves itself with a signing key, presented as either

* a raw public key, which the peer must have pinned for that site name beforehand, or
* an X.509 chain (leaf first), which the peer checks against its trust anchors.

Chain checking is deliberately small and explicit, not a general-purpose path
builder: each certificate must be directly issued by the next (signature and names,
by cryptography's ``verify_directly_issued_by``), every issuer must be a CA by its
basicConstraints, every certificate must be valid at the configured time, the last
must be a trust anchor or issued by one, and the leaf must name the expected site
(its common name or a DNS subjectAltName).  cryptography's ``PolicyBuilder``
verifier is not used because it refuses Ed25519 and raw ML-DSA leaves are not
web-PKI certificates anyway; docs/protocol.md states the rules.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from hybridkex.errors import InvalidParameter, PeerAuthenticationFailed
from hybridkex.primitives import signature
from hybridkex.protocol.suites import AlertDescription, SignatureSchemeId
from hybridkex.protocol.wire import MAX_CHAIN, Identity, IdentityKind

__all__ = ["PeerIdentity", "SigningIdentity", "TrustStore"]

_MALFORMED_CERTIFICATE = (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension,
                          x509.UnsupportedGeneralNameType, x509.InvalidVersion)


@dataclass(frozen=True)
class SigningIdentity:
    """This site's signing key and how it is presented (raw key, or certificate chain)."""

    scheme: str
    private_key: bytes = field(repr=False)
    public_key: bytes = field(repr=False)
    certificates: tuple[bytes, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        SignatureSchemeId.for_algorithm(self.scheme)  # an HKX/1 scheme, or UnknownAlgorithm
        # Checked and decoded once here, not on every signature (an ML-DSA key would
        # otherwise be re-derived from its seed each time); still equal to the bytes given.
        object.__setattr__(self, "private_key",
                           signature(self.scheme).prepare_private_key(self.private_key))
        if len(self.certificates) > MAX_CHAIN:
            raise InvalidParameter(f"a certificate chain holds at most {MAX_CHAIN} certificates")
        if self.certificates:
            leaf = x509.load_der_x509_certificate(self.certificates[0])
            if public_key_bytes(leaf, self.scheme) != self.public_key:
                raise InvalidParameter("the leaf certificate does not hold this public key")
            try:
                self.to_message().encode()
            except ValueError:
                raise InvalidParameter("the certificate chain does not fit one Identity "
                                       "message") from None

    @classmethod
    def generate(cls, scheme: str = "ML-DSA-65") -> SigningIdentity:
        """A fresh key presented as a raw public key (the peer pins ``public_key``)."""
        public, private = signature(scheme).generate_keypair()
        return cls(scheme, private, public)

    @classmethod
    def from_chain(cls, scheme: str, private_key: bytes,
                   chain: Sequence[x509.Certificate]) -> SigningIdentity:
        """A key presented with its certificate chain, leaf first (anchor may be left out)."""
        if not chain:
            raise InvalidParameter("a certificate chain needs at least the leaf")
        public = public_key_bytes(chain[0], scheme)
        return cls(scheme, private_key, public,
                   tuple(c.public_bytes(Encoding.DER) for c in chain))

    @property
    def scheme_id(self) -> SignatureSchemeId:
        return SignatureSchemeId.for_algorithm(self.scheme)

    def to_message(self) -> Identity:
        if self.certificates:
            return Identity(IdentityKind.X509_CHAIN, self.scheme_id,
                            certificates=self.certificates)
        return Identity(IdentityKind.RAW_PUBLIC_KEY, self.scheme_id, public_key=self.public_key)


@dataclass(frozen=True)
class PeerIdentity:
    """What the handshake proved about the peer; reported in ``session_info()``."""

    site: str
    scheme: str | None  # None in psk mode: the pool, not a signature key, proved it
    kind: str  # "raw-public-key", "x509" or "psk"
    public_key_sha256: str | None = None  # hex fingerprint, not the key
    subject: str | None = None  # the leaf's subject, for X.509


def public_key_bytes(certificate: x509.Certificate, scheme: str) -> bytes:
    """The certificate's key in the encoding hybridkex's ``scheme`` takes, or an error
    if the certificate holds a key of another kind."""
    return _public_key(certificate, scheme)[0]


def _public_key(certificate: x509.Certificate, scheme: str) -> tuple[bytes, object]:
    """:func:`public_key_bytes`, and the key object it was read from."""
    key = certificate.public_key()
    expected: dict[str, type] = {
        "ML-DSA-44": mldsa.MLDSA44PublicKey,
        "ML-DSA-65": mldsa.MLDSA65PublicKey,
        "ML-DSA-87": mldsa.MLDSA87PublicKey,
        "Ed25519": ed25519.Ed25519PublicKey,
        "ECDSA-P256": ec.EllipticCurvePublicKey,
    }
    wanted = expected.get(scheme)
    if wanted is None:
        raise PeerAuthenticationFailed(f"{scheme} keys cannot be carried in X.509 certificates "
                                       "here; use a raw public key",
                                       AlertDescription.BAD_CERTIFICATE)
    if not isinstance(key, wanted):
        raise PeerAuthenticationFailed(f"the leaf certificate does not hold a {scheme} key",
                                       AlertDescription.BAD_CERTIFICATE)
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise PeerAuthenticationFailed("the leaf certificate's key is not on P-256",
                                           AlertDescription.BAD_CERTIFICATE)
        return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint), key
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw), key


def _names(certificate: x509.Certificate, subject: x509.Name) -> set[str]:
    names = {str(a.value) for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return names
    return names | set(san.value.get_values_for_type(x509.DNSName))


def is_ca(certificate: x509.Certificate) -> bool:
    """Whether basicConstraints marks ``certificate`` as a CA."""
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return constraints.value.ca


class TrustStore:
    """The peers this site accepts in signature mode: pinned raw keys per site name, and
    X.509 trust anchors.  The time certificates are checked at is passed in by the
    connection, which takes it from its configuration's clock."""

    def __init__(self, *, pinned: Mapping[str, tuple[str, bytes]] | None = None,
                 anchors: Iterable[x509.Certificate] = ()) -> None:
        self.pinned = dict(pinned or {})
        self.anchors = tuple(anchors)
        self._anchor_der = {a.public_bytes(Encoding.DER) for a in self.anchors}
        # What every handshake would otherwise work out again: each anchor's subject
        # and CA flag, and each pinned key decoded (keyed by the pin, so a changed pin
        # is decoded anew).
        self._anchor_facts = [(a, a.subject, is_ca(a)) for a in self.anchors]
        self._prepared: dict[tuple[str, bytes], bytes] = {}

    def __repr__(self) -> str:
        return f"<TrustStore pinned={sorted(self.pinned)} anchors={len(self.anchors)}>"

    def pin(self, site: str, scheme: str, public_key: bytes) -> None:
        SignatureSchemeId.for_algorithm(scheme)
        self.pinned[site] = (scheme, bytes(public_key))

    def check(self, message: Identity, expected_site: str, accepted: Sequence[str],
              now: datetime.datetime) -> tuple[str, bytes, PeerIdentity]:
        """(scheme, public key, identity) of a peer's Identity message, or a typed error."""
        try:
            scheme = SignatureSchemeId(message.scheme).algorithm
        except ValueError:
            raise PeerAuthenticationFailed(f"unknown signature scheme {message.scheme:#06x}",
                                           AlertDescription.ILLEGAL_PARAMETER) from None
        if scheme not in accepted:
            raise PeerAuthenticationFailed(f"signature scheme {scheme} is not accepted",
                                           AlertDescription.HANDSHAKE_FAILURE)
        if message.kind == IdentityKind.RAW_PUBLIC_KEY:
            public = self._check_pinned(message, scheme, expected_site)
            return scheme, public, PeerIdentity(
                expected_site, scheme, "raw-public-key", hashlib.sha256(public).hexdigest())
        try:
            leaf, leaf_subject = self._check_chain(message.certificates, expected_site, now)
            public, key = _public_key(leaf, scheme)
            public = signature(scheme).prepare_public_key(public, key)  # decoded once
            subject = leaf_subject.rfc4514_string()
        except _MALFORMED_CERTIFICATE:
            # A certificate that parsed at the top level can still hold an extension,
            # name or key that cryptography refuses when it is read.
            raise PeerAuthenticationFailed("a certificate holds a malformed field",
                                           AlertDescription.BAD_CERTIFICATE) from None
        return scheme, public, PeerIdentity(
            expected_site, scheme, "x509", hashlib.sha256(public).hexdigest(), subject)

    def _check_pinned(self, message: Identity, scheme: str, site: str) -> bytes:
        pinned = self.pinned.get(site)
        if pinned is None:
            raise PeerAuthenticationFailed(f"no public key is pinned for site {site!r}",
                                           AlertDescription.BAD_CERTIFICATE)
        pinned_scheme, pinned_key = pinned
        if pinned_scheme != scheme or not hmac.compare_digest(pinned_key, message.public_key):
            raise PeerAuthenticationFailed(f"site {site!r} presented a key that is not pinned",
                                           AlertDescription.BAD_CERTIFICATE)
        prepared = self._prepared.get(pinned)
        if prepared is None:
            try:
                prepared = signature(scheme).prepare_public_key(pinned_key)
            except InvalidParameter:  # a malformed pin fails at verification, as ever
                return pinned_key
            self._prepared[pinned] = prepared
        return prepared

    def _check_chain(self, chain_der: Sequence[bytes], site: str,
                     now: datetime.datetime) -> tuple[x509.Certificate, x509.Name]:
        """The leaf and its subject, once the chain leads to an anchor and names ``site``."""
        if not self.anchors:
            raise PeerAuthenticationFailed("no X.509 trust anchors are configured",
                                           AlertDescription.UNKNOWN_CA)
        try:
            chain = [x509.load_der_x509_certificate(der) for der in chain_der]
        except _MALFORMED_CERTIFICATE:
            raise PeerAuthenticationFailed("a certificate does not parse",
                                           AlertDescription.BAD_CERTIFICATE) from None
        for cert in chain:
            if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                raise PeerAuthenticationFailed("a certificate is outside its validity period",
                                               AlertDescription.BAD_CERTIFICATE)
        for child, parent in itertools.pairwise(chain):
            self._check_issued(child, parent, is_ca(parent))
        last = chain[-1]
        if chain_der[-1] not in self._anchor_der:  # the DER it was parsed from
            issuer = last.issuer
            for anchor, subject, anchor_is_ca in self._anchor_facts:
                if subject == issuer:
                    if not anchor.not_valid_before_utc <= now <= anchor.not_valid_after_utc:
                        continue
                    try:
                        self._check_issued(last, anchor, anchor_is_ca)
                    except PeerAuthenticationFailed:
                        continue
                    break
            else:
                raise PeerAuthenticationFailed("the chain does not lead to a trust anchor",
                                               AlertDescription.UNKNOWN_CA)
        leaf = chain[0]
        subject = leaf.subject
        if site not in _names(leaf, subject):
            raise PeerAuthenticationFailed(f"the certificate does not name site {site!r}",
                                           AlertDescription.BAD_CERTIFICATE)
        return leaf, subject

    @staticmethod
    def _check_issued(child: x509.Certificate, issuer: x509.Certificate,
                      issuer_is_ca: bool) -> None:
        if not issuer_is_ca:
            raise PeerAuthenticationFailed("an issuing certificate is not a CA",
                                           AlertDescription.BAD_CERTIFICATE)
        try:
            child.verify_directly_issued_by(issuer)
        except (*_MALFORMED_CERTIFICATE, InvalidSignature):
            raise PeerAuthenticationFailed("a certificate is not signed by its issuer",
                                           AlertDescription.BAD_CERTIFICATE) from None
