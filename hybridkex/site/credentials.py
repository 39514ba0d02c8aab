"""A site's credentials: its private key as PEM, its X.509 certificate, its pin.

``identity.key`` holds ML-DSA keys in the seed-only PKCS#8 form of RFC 9881
(``privateKey`` = ``[0] seed``, 32 bytes), Ed25519 as RFC 8410 and ECDSA-P256 as
RFC 5915 inside PKCS#8.  The composite ML-DSA-65+Ed25519 has no standard key or
certificate encoding that cryptography reads, so its key file holds two PKCS#8 blocks
(the ML-DSA-65 seed, then the Ed25519 seed) and the site is presented as a raw public
key, pinned by peers through ``identity.pin`` (a small TOML file: site, scheme,
base64 public key, SHA-256 fingerprint) instead of a certificate.

:func:`make_certificate` is the library's one place that mints an X.509 certificate.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import re
import tomllib
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID

from hybridkex import primitives
from hybridkex.errors import HybridKexError
from hybridkex.primitives.signature import backend_private_key
from hybridkex.primitives.signature import private_key_pem as signature_private_key_pem
from hybridkex.protocol.identity import is_ca, public_key_bytes
from hybridkex.site._toml import toml_value
from hybridkex.site.errors import SiteError
from hybridkex.site.layout import IDENTITY_KEY, check_name

__all__ = [
    "COMPOSITE",
    "SIGNATURE_SCHEMES",
    "common_name",
    "load_ca",
    "load_pin",
    "load_private_key_pem",
    "make_certificate",
    "pin_text",
    "private_key_pem",
    "scheme_of",
]

COMPOSITE = "ML-DSA-65+Ed25519"
#: Schemes a site can sign with.  All but the composite are carried in X.509.
SIGNATURE_SCHEMES = ("ML-DSA-65", "ML-DSA-44", "ML-DSA-87", "Ed25519", "ECDSA-P256", COMPOSITE)

_PEM_KEY = re.compile(rb"-----BEGIN PRIVATE KEY-----\r?\n.*?-----END PRIVATE KEY-----\r?\n?",
                      re.S)
_MLDSA_PRIVATE: dict[str, Any] = {
    "ML-DSA-44": mldsa.MLDSA44PrivateKey,
    "ML-DSA-65": mldsa.MLDSA65PrivateKey,
    "ML-DSA-87": mldsa.MLDSA87PrivateKey,
}


# -- private keys as PEM ------------------------------------------------------------------


def _raw_private(scheme: str, key: Any) -> bytes:
    """The raw private key hybridkex's primitives take, from a loaded key object."""
    if scheme in _MLDSA_PRIVATE and isinstance(key, _MLDSA_PRIVATE[scheme]):
        try:
            return bytes(key.private_bytes_raw())
        except ValueError:
            raise SiteError(f"{IDENTITY_KEY} holds an {scheme} key without its seed; "
                            "hybridkex needs the seed form (RFC 9881)") from None
    if scheme == "Ed25519" and isinstance(key, ed25519.Ed25519PrivateKey):
        return key.private_bytes_raw()
    if (scheme == "ECDSA-P256" and isinstance(key, ec.EllipticCurvePrivateKey)
            and isinstance(key.curve, ec.SECP256R1)):
        return int(key.private_numbers().private_value).to_bytes(32, "big")
    raise SiteError(f"{IDENTITY_KEY} does not hold an {scheme} key")


def private_key_pem(scheme: str, private: bytes) -> bytes:
    """``private`` (hybridkex's raw encoding) as unencrypted PKCS#8 PEM; the composite as
    two blocks, ML-DSA-65 then Ed25519."""
    if scheme == COMPOSITE:
        return private_key_pem("ML-DSA-65", private[:32]) + private_key_pem("Ed25519",
                                                                            private[32:])
    return signature_private_key_pem(scheme, private)


def load_private_key_pem(scheme: str, data: bytes) -> bytes:
    """The raw private key from ``identity.key``'s PEM, checked against ``scheme``."""
    if b"ENCRYPTED PRIVATE KEY" in data:
        raise SiteError(f"{IDENTITY_KEY} is encrypted; a site key must be unencrypted "
                        "PKCS#8 (protect it with file permissions or an encrypted volume)")
    blocks = _PEM_KEY.findall(data)
    parts = ("ML-DSA-65", "Ed25519") if scheme == COMPOSITE else (scheme,)
    if len(blocks) != len(parts):
        raise SiteError(f"{IDENTITY_KEY} must hold {len(parts)} PKCS#8 PEM block(s) "
                        f"('BEGIN PRIVATE KEY') for {scheme}, found {len(blocks)}")
    raw = b""
    for part, block in zip(parts, blocks, strict=True):
        try:
            key = load_pem_private_key(block, password=None)
        except (ValueError, TypeError) as exc:
            raise SiteError(f"{IDENTITY_KEY} does not parse: {exc}") from None
        raw += _raw_private(part, key)
    return raw


# -- X.509 ----------------------------------------------------------------------------------


def scheme_of(certificate: x509.Certificate) -> str:
    """The HKX/1 signature scheme of the key ``certificate`` holds."""
    key = certificate.public_key()
    for scheme in ("ML-DSA-44", "ML-DSA-65", "ML-DSA-87", "Ed25519", "ECDSA-P256"):
        try:
            public_key_bytes(certificate, scheme)
        except HybridKexError:
            continue
        return scheme
    raise SiteError(f"certificate {certificate.subject.rfc4514_string()} holds a "
                    f"{type(key).__name__}, which HKX/1 does not sign with")


def _hash_for(key: Any) -> hashes.SHA256 | hashes.SHA384 | None:
    """The digest X.509 signing with ``key`` takes (None for EdDSA and ML-DSA)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return hashes.SHA384() if key.curve.key_size >= 384 else hashes.SHA256()
    if isinstance(key, rsa.RSAPrivateKey):
        return hashes.SHA256()
    return None


def common_name(certificate: x509.Certificate) -> str | None:
    """The subject's one CN, or None (none, or several)."""
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if len(names) == 1 else None


def make_certificate(name: str, scheme: str, private: bytes, days: int,
                     issuer: tuple[x509.Certificate, Any] | None = None) -> x509.Certificate:
    """The site's end-entity certificate: CN and DNS name = the site name, digitalSignature
    only, not a CA.  Self-signed unless ``issuer`` = (CA certificate, CA private key)."""
    key = backend_private_key(scheme, private)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    issuer_name, signer = subject, key
    builder = x509.CertificateBuilder()
    if issuer is not None:
        ca_cert, signer = issuer
        issuer_name = ca_cert.subject
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            signer.public_key()), critical=False)
    builder = (builder.subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               # an hour back, so a peer whose clock is a little behind accepts it at once
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature=True, content_commitment=False, key_encipherment=False,
                   data_encipherment=False, key_agreement=False, key_cert_sign=False,
                   crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False))
    return builder.sign(signer, _hash_for(signer))


def load_ca(ca_certificate: Path, ca_key: Path) -> tuple[list[x509.Certificate], Any]:
    """The operator's CA (its PEM chain, CA first) and its private key, checked to match."""
    try:
        chain = x509.load_pem_x509_certificates(ca_certificate.read_bytes())
    except (OSError, ValueError) as exc:
        raise SiteError(f"cannot load the CA certificate {ca_certificate}: {exc}") from None
    try:
        key = load_pem_private_key(ca_key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SiteError(f"cannot load the CA key {ca_key} (PEM, unencrypted): {exc}") from None
    if not is_ca(chain[0]):
        raise SiteError(f"{ca_certificate}: the first certificate is not a CA "
                        "(basicConstraints CA:TRUE)")
    if chain[0].public_key() != key.public_key():
        raise SiteError(f"{ca_key} is not the key of the CA in {ca_certificate}")
    return chain, key


# -- pins ------------------------------------------------------------------------------------


def pin_text(site: str, scheme: str, public_key: bytes) -> str:
    """A pin file: what a peer copies into trust/ to pin this site's raw public key."""
    return (
        "# hybridkex pinned public key: a peer that trusts this site copies this file into\n"
        "# its trust/ directory.  Compare the sha256 fingerprint out of band.\n"
        f"site = {toml_value(site)}\n"
        f"scheme = {toml_value(scheme)}\n"
        f"public_key = {toml_value(base64.b64encode(public_key).decode())}\n"
        f"sha256 = {toml_value(hashlib.sha256(public_key).hexdigest())}\n")


def load_pin(path: Path) -> tuple[str, str, bytes]:
    """(site, scheme, public key) from a pin file, checked."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        site, scheme = check_name(data["site"]), data["scheme"]
        public = base64.b64decode(data["public_key"], validate=True)
        fingerprint = data["sha256"]
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError,
            ValueError) as exc:
        raise SiteError(f"{path}: not a valid pin file ({type(exc).__name__}: {exc})") from None
    if scheme not in SIGNATURE_SCHEMES:
        raise SiteError(f"{path}: unknown signature scheme {scheme!r}")
    if len(public) != primitives.signature(scheme).public_key_size:
        raise SiteError(f"{path}: the public key has the wrong length for {scheme}")
    if hashlib.sha256(public).hexdigest() != fingerprint:
        raise SiteError(f"{path}: the sha256 fingerprint does not match the key")
    return site, scheme, public
