"""A site: one end of a hybridkex channel, kept in a directory.

::

    site-a/                 (mode 0700)
      site.toml             name, signature scheme, security policy, suites, auth mode, links
      identity.key          the signing key: PKCS#8 PEM, unencrypted, mode 0600
      identity.crt          its X.509 certificate (self-signed, or issued by the operator's CA)
      identity.pin          instead of identity.crt for ML-DSA-65+Ed25519 (see below)
      trust/                the peers this site accepts: <name>.crt and <name>.pin files
      keys.db               the QKD key store (SQLite, mode 0600)

``identity.key`` holds ML-DSA keys in the seed-only PKCS#8 form of RFC 9881
(``privateKey`` = ``[0] seed``, 32 bytes), Ed25519 as RFC 8410 and ECDSA-P256 as
RFC 5915 inside PKCS#8.  The composite ML-DSA-65+Ed25519 has no standard key or
certificate encoding that cryptography reads, so its key file holds two PKCS#8 blocks
(the ML-DSA-65 seed, then the Ed25519 seed) and the site is presented as a raw public
key, pinned by peers through ``identity.pin`` (a small TOML file: site, scheme,
base64 public key, SHA-256 fingerprint) instead of a certificate.

Trust: every certificate in ``trust/*.crt`` is a trust anchor (a self-signed peer
certificate is its own anchor; a CA certificate there admits whatever it issues, for
the name the connection expects).  Every ``trust/*.pin`` pins one peer's raw key.
A site's *peers* are the names of its non-CA certificates and of its pins.

:func:`pair` makes two sites trust each other (copying each one's certificate or pin
into the other's ``trust/``) and fills both key stores from the **simulated** QKD link
(:mod:`hybridkex.qkd.link`).  Everything a site shows about that link says it is a
simulation.  docs/sites.md describes the layout and the command line.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import math
import os
import re
import shutil
import stat
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import NameOID

from hybridkex import primitives
from hybridkex.errors import HybridKexError, InvalidParameter, UnknownAlgorithm
from hybridkex.keydelivery.source import StoreKeySource
from hybridkex.keydelivery.sqlite import SQLiteKeyStore
from hybridkex.keydelivery.store import StoreStatus
from hybridkex.primitives.signature import backend_private_key
from hybridkex.primitives.signature import private_key_pem as signature_private_key_pem
from hybridkex.protocol import Config, SecurityPolicy, SigningIdentity, TrustStore
from hybridkex.protocol.config import AUTH_MODES
from hybridkex.protocol.identity import is_ca, public_key_bytes
from hybridkex.protocol.suites import DEFAULT_SUITES, suite_by_name
from hybridkex.qkd.link import SIMULATION_LABEL, LinkReport, QKDLink, SiteIdentity
from hybridkex.qkd.parameters import finite_key_parameters
from hybridkex.transport import DEFAULT_HANDSHAKE_TIMEOUT, Context

__all__ = [
    "COMPOSITE",
    "DEFAULT_PULSES_PER_ROUND",
    "SIGNATURE_SCHEMES",
    "PairReport",
    "PairingFailed",
    "Site",
    "SiteError",
    "TrustedPeer",
    "pair",
]

COMPOSITE = "ML-DSA-65+Ed25519"
#: Schemes a site can sign with.  All but the composite are carried in X.509.
SIGNATURE_SCHEMES = ("ML-DSA-65", "ML-DSA-44", "ML-DSA-87", "Ed25519", "ECDSA-P256", COMPOSITE)
#: Pulses per simulated link round: at 25 km about 370 keys of 256 bits, about 1 s on one core.
DEFAULT_PULSES_PER_ROUND = 500_000_000

SITE_TOML, IDENTITY_KEY, IDENTITY_CRT, IDENTITY_PIN = (
    "site.toml", "identity.key", "identity.crt", "identity.pin")
TRUST_DIR, KEYS_DB = "trust", "keys.db"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_PEM_KEY = re.compile(rb"-----BEGIN PRIVATE KEY-----\r?\n.*?-----END PRIVATE KEY-----\r?\n?",
                      re.S)
_SETTINGS = ("name", "signature", "identity", "security", "auth", "suites",
             "qkd_keys_per_handshake", "handshake_timeout_s", "pool", "links")
#: [pool] warn_below: `site show`, `serve` and `connect` warn when fewer keys than this
#: are left to take for a peer.
DEFAULT_POOL_WARN_BELOW = 64
_MLDSA_PRIVATE: dict[str, Any] = {
    "ML-DSA-44": mldsa.MLDSA44PrivateKey,
    "ML-DSA-65": mldsa.MLDSA65PrivateKey,
    "ML-DSA-87": mldsa.MLDSA87PrivateKey,
}


class SiteError(InvalidParameter):
    """A site directory is missing, incomplete, malformed, or would be overwritten."""


class PairingFailed(HybridKexError):
    """The simulated QKD link could not fill the key stores (every round aborted)."""


def check_name(name: str) -> str:
    """A site name: 1-63 characters from A-Z a-z 0-9 . _ -, starting with a letter or
    digit (it names files in trust/, key pools and certificates)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SiteError(f"invalid site name {name!r}: use 1 to 63 characters from "
                        "A-Z a-z 0-9 . _ - starting with a letter or a digit")
    return name


# -- keys and certificates ---------------------------------------------------------------


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


def _scheme_of(certificate: x509.Certificate) -> str:
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


def _common_name(certificate: x509.Certificate) -> str | None:
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


def _load_ca(ca_certificate: Path, ca_key: Path) -> tuple[list[x509.Certificate], Any]:
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


# -- pins ----------------------------------------------------------------------------------


def pin_text(site: str, scheme: str, public_key: bytes) -> str:
    return (
        "# hybridkex pinned public key: a peer that trusts this site copies this file into\n"
        "# its trust/ directory.  Compare the sha256 fingerprint out of band.\n"
        f"site = {_toml_value(site)}\n"
        f"scheme = {_toml_value(scheme)}\n"
        f"public_key = {_toml_value(base64.b64encode(public_key).decode())}\n"
        f"sha256 = {_toml_value(hashlib.sha256(public_key).hexdigest())}\n")


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


# -- site.toml -----------------------------------------------------------------------------


def _toml_value(value: object) -> str:
    """One TOML value, for the few types site.toml holds (no TOML writer in the stdlib)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("site.toml holds finite numbers only")
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a TOML basic string, except that TOML wants DEL escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to site.toml")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


@dataclass
class SiteSettings:
    """What site.toml holds."""

    name: str
    signature: str
    identity: str  # "x509-self-signed", "x509-ca-issued" or "raw-public-key"
    security: str = SecurityPolicy.QKD_AND_PQ.value
    auth: str = "auto"
    suites: tuple[str, ...] = tuple(s.name for s in DEFAULT_SUITES)
    qkd_keys_per_handshake: int = 1
    handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT
    pool_warn_below: int = DEFAULT_POOL_WARN_BELOW
    links: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_toml(self) -> str:
        lines = [
            "# hybridkex site (docs/sites.md).  Written by `hybridkex site init` and rewritten",
            "# by `hybridkex site pair`; the settings above [links] may be edited by hand.",
            f"name = {_toml_value(self.name)}",
            f"signature = {_toml_value(self.signature)}",
            f"identity = {_toml_value(self.identity)}",
            f"security = {_toml_value(self.security)}    "
            "# qkd-and-pq | at-least-qkd | at-least-pq | either",
            f"auth = {_toml_value(self.auth)}    # auto | signature | psk",
            f"suites = {_toml_value(list(self.suites))}",
            f"qkd_keys_per_handshake = {_toml_value(self.qkd_keys_per_handshake)}",
            f"handshake_timeout_s = {_toml_value(float(self.handshake_timeout_s))}",
            "",
            "[pool]",
            f"warn_below = {_toml_value(self.pool_warn_below)}    "
            "# warn when fewer keys than this are left to take for a peer",
        ]
        for peer, link in sorted(self.links.items()):
            lines += ["", f"[links.{_toml_key(peer)}]"]
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in link.items()]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, text: str, where: str) -> SiteSettings:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SiteError(f"{where}: {exc}") from None
        unknown = sorted(set(data) - set(_SETTINGS))
        if unknown:
            raise SiteError(f"{where}: unknown setting(s) {', '.join(unknown)}")
        for required in ("name", "signature", "identity"):
            if required not in data:
                raise SiteError(f"{where}: missing {required!r}")
        pool = data.get("pool", {})
        if not isinstance(pool, dict) or set(pool) - {"warn_below"}:
            raise SiteError(f"{where}: [pool] takes one setting, warn_below")
        warn_below = pool.get("warn_below", DEFAULT_POOL_WARN_BELOW)
        if type(warn_below) is not int or warn_below < 0:
            raise SiteError(f"{where}: [pool] warn_below must be a whole number of keys, 0 "
                            "or more")
        try:
            settings = cls(
                name=check_name(data["name"]), signature=data["signature"],
                identity=data["identity"],
                security=data.get("security", cls.security),
                auth=data.get("auth", cls.auth),
                suites=tuple(data.get("suites", cls.suites)),
                qkd_keys_per_handshake=int(data.get("qkd_keys_per_handshake", 1)),
                handshake_timeout_s=float(data.get("handshake_timeout_s",
                                                   DEFAULT_HANDSHAKE_TIMEOUT)),
                pool_warn_below=warn_below,
                links=dict(data.get("links", {})))
        except (TypeError, ValueError) as exc:
            raise SiteError(f"{where}: {exc}") from None
        settings.check(where)
        return settings

    def check(self, where: str) -> None:
        if self.signature not in SIGNATURE_SCHEMES:
            raise SiteError(f"{where}: signature must be one of {', '.join(SIGNATURE_SCHEMES)}")
        if self.identity not in ("x509-self-signed", "x509-ca-issued", "raw-public-key"):
            raise SiteError(f"{where}: identity must be x509-self-signed, x509-ca-issued or "
                            "raw-public-key")
        if (self.identity == "raw-public-key") != (self.signature == COMPOSITE):
            raise SiteError(f"{where}: {self.signature} sites are presented as "
                            f"{'a raw public key' if self.signature == COMPOSITE else 'X.509'}")
        try:
            SecurityPolicy(self.security)
        except ValueError:
            raise SiteError(f"{where}: security must be one of "
                            f"{', '.join(p.value for p in SecurityPolicy)}") from None
        if self.auth not in AUTH_MODES:
            raise SiteError(f"{where}: auth must be one of {', '.join(AUTH_MODES)}")
        try:
            for suite in self.suites:
                suite_by_name(suite)
        except UnknownAlgorithm as exc:
            raise SiteError(f"{where}: {exc}") from None
        if self.handshake_timeout_s <= 0:
            raise SiteError(f"{where}: handshake_timeout_s must be positive")


# -- files -----------------------------------------------------------------------------------


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` (never widening an existing file) and sync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _replace(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``path`` whole or not at all (temporary file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        _write_new(tmp, data, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _safe_file_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".") or "anchor"


@dataclass(frozen=True)
class TrustedPeer:
    """One file of a site's trust/ directory."""

    name: str  # the site it names (CN of a certificate, site of a pin)
    kind: str  # "x509" (a peer's certificate), "x509-ca" (a CA anchor) or "pin"
    scheme: str | None  # None for a CA anchor
    public_key_sha256: str
    path: Path

    @property
    def is_peer(self) -> bool:
        return self.kind != "x509-ca"

    def describe(self) -> str:
        what = {"x509": "X.509 certificate", "x509-ca": "CA certificate (trust anchor)",
                "pin": "pinned raw public key"}[self.kind]
        scheme = f", {self.scheme}" if self.scheme else ""
        return f"{what}{scheme}, key sha256 {self.public_key_sha256}"


def _read_trusted(path: Path) -> list[TrustedPeer]:
    if path.suffix == ".pin":
        site, pin_scheme, pinned = load_pin(path)
        return [TrustedPeer(site, "pin", pin_scheme, hashlib.sha256(pinned).hexdigest(), path)]
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise SiteError(f"{path}: not a PEM certificate file ({exc})") from None
    out = []
    for cert in certificates:
        ca = is_ca(cert)
        scheme: str | None = None
        if ca:
            public = cert.public_key().public_bytes(Encoding.DER,
                                                    PublicFormat.SubjectPublicKeyInfo)
        else:
            scheme = _scheme_of(cert)
            public = public_key_bytes(cert, scheme)
        name = _common_name(cert) or cert.subject.rfc4514_string()
        out.append(TrustedPeer(name, "x509-ca" if ca else "x509", scheme,
                               hashlib.sha256(public).hexdigest(), path))
    return out


# -- the site ----------------------------------------------------------------------------------


class Site:
    """A site directory, loaded: settings, signing identity, trust, and its key store
    (open until :meth:`close`).  Make one with :meth:`init` or :meth:`load`."""

    def __init__(self, path: Path, settings: SiteSettings, identity: SigningIdentity,
                 store: SQLiteKeyStore) -> None:
        self.path = path
        self.settings = settings
        self.identity = identity
        self.store = store
        self.key_source = StoreKeySource(store)

    # -- creating and opening --------------------------------------------------------------

    @classmethod
    def init(cls, path: str | os.PathLike[str], name: str, sig: str = "ML-DSA-65", *,
             ca_certificate: str | os.PathLike[str] | None = None,
             ca_key: str | os.PathLike[str] | None = None, days: int = 3650,
             security: str | None = None, auth: str | None = None,
             suites: tuple[str, ...] | None = None) -> Site:
        """Create a site in ``path`` (absent or empty): a fresh signing key, its certificate
        (self-signed, or issued by ``ca_certificate``/``ca_key``), an empty trust/ and key
        store, and site.toml."""
        directory = Path(path)
        check_name(name)
        if sig not in SIGNATURE_SCHEMES:
            raise SiteError(f"unknown signature scheme {sig!r}; one of "
                            f"{', '.join(SIGNATURE_SCHEMES)}")
        if (ca_certificate is None) != (ca_key is None):
            raise SiteError("a CA-issued certificate needs both the CA certificate and its key")
        if ca_certificate is not None and sig == COMPOSITE:
            raise SiteError(f"{COMPOSITE} keys cannot be carried in X.509 certificates here; "
                            "the site is presented as a raw public key (identity.pin)")
        if days < 1:
            raise SiteError("certificate validity must be at least one day")
        settings = SiteSettings(
            name=name, signature=sig,
            identity=("raw-public-key" if sig == COMPOSITE else
                      "x509-self-signed" if ca_certificate is None else "x509-ca-issued"))
        if security is not None:
            settings.security = security
        if auth is not None:
            settings.auth = auth
        if suites is not None:
            settings.suites = tuple(suites)
        settings.check("site settings")
        issuer = None
        if ca_certificate is not None and ca_key is not None:
            issuer = _load_ca(Path(ca_certificate), Path(ca_key))

        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise SiteError(f"{directory} exists and is not an empty directory")
        created = not directory.exists()
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            os.chmod(directory, 0o700)
            public, private = primitives.signature(sig).generate_keypair()
            private = bytes(private)
            _write_new(directory / IDENTITY_KEY, private_key_pem(sig, private), 0o600)
            if sig == COMPOSITE:
                _write_new(directory / IDENTITY_PIN, pin_text(name, sig, public).encode(), 0o644)
            else:
                chain: list[x509.Certificate] = []
                if issuer is not None:
                    ca_chain, ca_private = issuer
                    leaf = make_certificate(name, sig, private, days, (ca_chain[0], ca_private))
                    # the leaf, then the CA chain without its self-signed root (the anchor)
                    chain = [leaf] + [c for c in ca_chain if c.issuer != c.subject]
                else:
                    chain = [make_certificate(name, sig, private, days)]
                _write_new(directory / IDENTITY_CRT,
                           b"".join(c.public_bytes(Encoding.PEM) for c in chain), 0o644)
            (directory / TRUST_DIR).mkdir(mode=0o755)
            _write_new(directory / KEYS_DB, b"", 0o600)  # SQLite's -wal/-shm files inherit it
            SQLiteKeyStore(name, directory / KEYS_DB).close()
            _write_new(directory / SITE_TOML, settings.to_toml().encode(), 0o644)
        except BaseException:
            if created:
                shutil.rmtree(directory, ignore_errors=True)
            else:
                for child in directory.iterdir():
                    if child.is_dir():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
            raise
        return cls.load(directory)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Site:
        """Open a site directory, checking every file (and identity.key's permissions)."""
        directory = Path(path)
        toml_path = directory / SITE_TOML
        if not toml_path.is_file():
            raise SiteError(f"{directory} is not a site directory (no {SITE_TOML}); "
                            "create one with `hybridkex site init`")
        try:
            settings = SiteSettings.from_toml(toml_path.read_text(encoding="utf-8"),
                                              str(toml_path))
        except (OSError, UnicodeDecodeError) as exc:
            raise SiteError(f"cannot read {toml_path}: {exc}") from None
        key_path = directory / IDENTITY_KEY
        try:
            # One open file, not a symlink, checked and read: no window between the two.
            fd = os.open(key_path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as key_file:
                mode = os.fstat(key_file.fileno()).st_mode
                if os.name == "posix" and mode & 0o077:
                    raise SiteError(f"{key_path} is accessible by group or others (mode "
                                    f"{stat.S_IMODE(mode):04o}); run: chmod 600 {key_path}")
                pem = key_file.read()
            private = load_private_key_pem(settings.signature, pem)
        except OSError as exc:
            raise SiteError(f"cannot read {key_path}: {exc.strerror or exc}") from None
        scheme = settings.signature
        # hybridkex's raw private key is the seed derive_keypair takes, for every scheme here
        public, _ = primitives.signature(scheme).derive_keypair(private)
        identity = cls._load_identity(directory, settings, private, public)
        if not (directory / TRUST_DIR).is_dir():
            raise SiteError(f"{directory / TRUST_DIR} is missing")
        db = directory / KEYS_DB
        if not db.is_file():
            raise SiteError(f"{db} is missing")
        try:
            store = SQLiteKeyStore(settings.name, db)
        except HybridKexError as exc:
            raise SiteError(f"{db}: {exc}") from None
        except Exception as exc:  # sqlite3.Error: a damaged or locked file
            raise SiteError(f"cannot open {db}: {type(exc).__name__}: {exc}") from None
        site = cls(directory, settings, identity, store)
        try:
            site.peers()  # every trust file parses
        except BaseException:
            store.close()
            raise
        return site

    @staticmethod
    def _load_identity(directory: Path, settings: SiteSettings, private: bytes,
                       public: bytes) -> SigningIdentity:
        scheme = settings.signature
        if scheme == COMPOSITE:
            pin_path = directory / IDENTITY_PIN
            site, pin_scheme, pinned = load_pin(pin_path)
            if (site, pin_scheme, pinned) != (settings.name, scheme, public):
                raise SiteError(f"{pin_path} does not match {IDENTITY_KEY} and {SITE_TOML}")
            return SigningIdentity(scheme, private, public)
        crt_path = directory / IDENTITY_CRT
        try:
            chain = x509.load_pem_x509_certificates(crt_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise SiteError(f"cannot load {crt_path}: {exc}") from None
        try:
            if public_key_bytes(chain[0], scheme) != public:
                raise SiteError(f"{crt_path} does not hold the key in {IDENTITY_KEY}")
        except HybridKexError as exc:
            raise SiteError(f"{crt_path}: {exc}") from None
        if _common_name(chain[0]) != settings.name:
            raise SiteError(f"{crt_path} does not name site {settings.name!r}")
        return SigningIdentity.from_chain(scheme, private, chain)

    # -- what the site is ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def scheme(self) -> str:
        return self.settings.signature

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the public key (hex): compare it out of band when exchanging trust."""
        return hashlib.sha256(self.identity.public_key).hexdigest()

    @property
    def public_identity_file(self) -> Path:
        """What a peer needs to trust this site: identity.crt, or identity.pin."""
        return self.path / (IDENTITY_PIN if self.scheme == COMPOSITE else IDENTITY_CRT)

    def trusted(self) -> list[TrustedPeer]:
        """Every entry of trust/ (certificates and pins), in file-name order."""
        out: list[TrustedPeer] = []
        for path in sorted((self.path / TRUST_DIR).iterdir()):
            if path.suffix in (".crt", ".pem", ".pin") and path.is_file():
                out += _read_trusted(path)
        return out

    def peers(self) -> list[str]:
        """The names of the sites this site trusts (certificates that are not CAs, pins)."""
        return sorted({t.name for t in self.trusted() if t.is_peer})

    def default_peer(self) -> str:
        peers = self.peers()
        if len(peers) != 1:
            listed = ", ".join(peers) if peers else "none"
            raise SiteError(f"site {self.name} trusts {len(peers)} peers ({listed}); "
                            "name the one to connect to with --peer")
        return peers[0]

    def trust_store(self) -> TrustStore:
        """Certificates in trust/ become anchors; pins become pinned keys."""
        anchors: list[x509.Certificate] = []
        pinned: dict[str, tuple[str, bytes]] = {}
        for path in sorted((self.path / TRUST_DIR).iterdir()):
            if path.suffix == ".pin":
                site, scheme, public = load_pin(path)
                pinned[site] = (scheme, public)
            elif path.suffix in (".crt", ".pem"):
                anchors += x509.load_pem_x509_certificates(path.read_bytes())
        return TrustStore(pinned=pinned, anchors=anchors)

    def trust(self, source: str | os.PathLike[str], replace: bool = False) -> TrustedPeer:
        """Add a peer's identity.crt / identity.pin (or a CA certificate) to trust/.

        A certificate file contributes its first certificate only (a peer's leaf, or the
        CA to trust).  An existing different entry for the same name is kept unless
        ``replace``: changing whom a site trusts is never silent.
        """
        path = Path(source)
        entries = _read_trusted(path)
        entry = entries[0]
        if entry.name == self.name and entry.is_peer:
            raise SiteError(f"{path} is this site's own identity")
        if entry.kind == "pin":
            data = path.read_bytes()
            target = self.path / TRUST_DIR / f"{entry.name}.pin"
        else:
            cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
            data = cert.public_bytes(Encoding.PEM)
            if entry.is_peer:
                check_name(entry.name)
            target = self.path / TRUST_DIR / f"{_safe_file_name(entry.name)}.crt"
        if entry.is_peer:
            others = [t for t in self.trusted() if t.name == entry.name and t.is_peer
                      and t.path != target]
            if others and not replace:
                raise SiteError(f"site {self.name} already trusts {entry.name} through "
                                f"{others[0].path}; remove it first, or replace it "
                                "deliberately (--replace)")
            for other in others:
                if len(_read_trusted(other.path)) > 1:
                    raise SiteError(f"{other.path} holds several certificates; edit it by hand")
        if target.exists() and target.read_bytes() == data:
            return _read_trusted(target)[0]
        if target.exists() and not replace:
            raise SiteError(f"{target} already holds a different identity for "
                            f"{entry.name}; remove it first, or replace it deliberately "
                            "(--replace)")
        _replace(target, data, 0o644)
        if entry.is_peer:
            for other in others:
                other.path.unlink(missing_ok=True)
        return _read_trusted(target)[0]

    def pool_status(self, peer: str) -> StoreStatus:
        return self.store.status(peer)

    def link_info(self, peer: str) -> dict[str, Any]:
        """What site.toml records about the QKD link to ``peer`` (empty if nothing)."""
        return dict(self.settings.links.get(peer, {}))

    def qkd_source_label(self, peer: str) -> str:
        """Where this site's QKD keys for ``peer`` came from, as told to a user."""
        link = self.link_info(peer)
        if link.get("simulated"):
            distance = link.get("distance_km")
            length = f"{distance:g} km " if isinstance(distance, int | float) else ""
            return (f"keys.db, filled by a SIMULATED QKD link ({length}decoy-state BB84 "
                    "Monte Carlo, not a physical QKD device)")
        return "keys.db"

    def record_link(self, peer: str, link: dict[str, Any]) -> None:
        self.settings.links[peer] = link
        _replace(self.path / SITE_TOML, self.settings.to_toml().encode(), 0o644)

    # -- connections ------------------------------------------------------------------------

    def config(self, **overrides: Any) -> Config:
        """The HKX/1 Config of this site, with any Config field overridden."""
        s = self.settings
        kwargs: dict[str, Any] = {
            "key_source": self.key_source,
            "identity": self.identity,
            "trust": self.trust_store(),
            "security": s.security,
            "suites": tuple(suite_by_name(n) for n in s.suites),
            "auth": s.auth,
            "qkd_keys_per_handshake": s.qkd_keys_per_handshake,
        }
        kwargs.update(overrides)
        return Config(self.name, **kwargs)

    def context(self, **overrides: Any) -> Context:
        """A :class:`hybridkex.Context` for this site: its identity (key and certificate
        chain), trust/ as its TrustStore, keys.db as its QKD key source, site.toml's policy,
        suites and authentication mode.  ``overrides`` are Config fields, or
        ``handshake_timeout`` (seconds)."""
        timeout = overrides.pop("handshake_timeout", self.settings.handshake_timeout_s)
        return Context.from_config(self.config(**overrides), timeout)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Site:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<hybridkex.Site {self.name} ({self.scheme}) at {self.path}>"


# -- pairing -------------------------------------------------------------------------------------


@dataclass
class PairReport:
    """What :func:`pair` did: the trust exchanged and the simulated link's rounds."""

    site_a: str
    site_b: str
    distance_km: float
    pulses_per_round: int
    trust: list[str]
    rounds: list[LinkReport] = field(default_factory=list)
    keys_deposited: int = 0
    available: dict[str, int] = field(default_factory=dict)  # site -> keys it can take
    elapsed_s: float = 0.0
    simulation: str = SIMULATION_LABEL

    @property
    def aborted_rounds(self) -> int:
        return sum(r.aborted for r in self.rounds)

    @property
    def auth_bits_consumed(self) -> int:
        return sum(r.auth_bits_consumed for r in self.rounds)

    def to_json(self) -> dict[str, Any]:
        return {
            "simulated": True,
            "simulation": self.simulation,
            "site_a": self.site_a,
            "site_b": self.site_b,
            "distance_km": self.distance_km,
            "pulses_per_round": self.pulses_per_round,
            "trust": self.trust,
            "rounds": len(self.rounds),
            "aborted_rounds": self.aborted_rounds,
            "keys_deposited": self.keys_deposited,
            "available": self.available,
            "round_auth": [r.auth_mode for r in self.rounds],
            "auth_bits_consumed": self.auth_bits_consumed,
            "secret_bits": sum(r.secret_bits for r in self.rounds if not r.aborted),
            "elapsed_s": round(self.elapsed_s, 3),
        }


def pair(site_a: Site, site_b: Site, distance_km: float = 25.0, keys: int = 500, *,
         pulses_per_round: int = DEFAULT_PULSES_PER_ROUND, max_failed_rounds: int = 5,
         seed: int | None = None, replace_trust: bool = False,
         on_pulses: Callable[[int, int], None] | None = None,
         on_round: Callable[[LinkReport, int], None] | None = None) -> PairReport:
    """Make two sites trust each other, then fill both key stores from a **simulated**
    QKD link until at least ``keys`` 256-bit keys were deposited (both directions
    together; each site may initiate sessions with about half of them).

    The link's first round authenticates its classical channel with the two sites'
    signing keys, each verified against the key the *other* site now trusts; later
    rounds use Wegman-Carter MACs keyed from the previous round's key.  Both site
    objects are in this process: this is a laboratory set-up, where the simulated link
    stands in for a real QKD device pair.  ``on_pulses(done, total)`` reports the
    optical simulation, ``on_round(report, deposited_so_far)`` every round.
    """
    if site_a.name == site_b.name:
        raise SiteError("a site cannot be paired with itself (both are named "
                        f"{site_a.name!r})")
    if keys < 1 or pulses_per_round < 1:
        raise SiteError("keys and pulses per round must be positive")
    if not 0 <= distance_km <= 1000:
        raise SiteError("distance must be between 0 and 1000 km")
    started = time.perf_counter()
    trust = [f"{site_a.name} trusts {site_b.name}: "
             + site_a.trust(site_b.public_identity_file, replace_trust).describe(),
             f"{site_b.name} trusts {site_a.name}: "
             + site_b.trust(site_a.public_identity_file, replace_trust).describe()]
    # Each side verifies the other with the key it now trusts, not the other's own file.
    public_a = _trusted_key(site_b, site_a.name)
    public_b = _trusted_key(site_a, site_b.name)
    link = QKDLink(site_a.name, site_b.name, finite_key_parameters(distance_km=distance_km),
                   store_a=site_a.store, store_b=site_b.store,
                   identity_a=SiteIdentity(site_a.scheme, site_a.identity.private_key, public_a),
                   identity_b=SiteIdentity(site_b.scheme, site_b.identity.private_key, public_b))
    report = PairReport(site_a.name, site_b.name, distance_km, pulses_per_round, trust)
    failed = 0
    while report.keys_deposited < keys:
        round_seed = None if seed is None else seed + len(report.rounds)
        result = link.run_round(pulses_per_round, round_seed, on_pulses)
        report.rounds.append(result)
        report.keys_deposited += result.keys_deposited
        if on_round is not None:
            on_round(result, report.keys_deposited)
        failed = failed + 1 if result.aborted or not result.keys_deposited else 0
        if failed >= max_failed_rounds:
            raise PairingFailed(
                f"the simulated QKD link produced no key in {failed} consecutive rounds at "
                f"{distance_km:g} km (last: {result.abort_reason or 'no key'}); use more "
                "pulses per round or a shorter distance")
    report.available = {site_a.name: site_a.pool_status(site_b.name).available_to_take,
                        site_b.name: site_b.pool_status(site_a.name).available_to_take}
    report.elapsed_s = time.perf_counter() - started
    paired_at = datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
    for site, peer in ((site_a, site_b.name), (site_b, site_a.name)):
        previous = site.link_info(peer)
        site.record_link(peer, {
            "qkd": "SIMULATED decoy-state BB84 (Monte Carlo), not a physical QKD device",
            "simulated": True,
            "distance_km": float(distance_km),
            "keys_deposited": int(previous.get("keys_deposited", 0)) + report.keys_deposited,
            "last_paired": paired_at,
        })
    return report


def _trusted_key(site: Site, peer: str) -> bytes:
    """The public key ``site`` trusts for ``peer`` (from its pin or certificate)."""
    for entry in site.trusted():
        if entry.name != peer or not entry.is_peer:
            continue
        if entry.kind == "pin":
            return load_pin(entry.path)[2]
        cert = x509.load_pem_x509_certificates(entry.path.read_bytes())[0]
        assert entry.scheme is not None
        return public_key_bytes(cert, entry.scheme)
    raise SiteError(f"site {site.name} does not trust {peer}")
