"""A site: one end of a hybridkex channel, kept in a directory.

::

    site-a/                 (mode 0700)
      site.toml             name, signature scheme, security policy, suites, auth mode, links
      identity.key          the signing key: PKCS#8 PEM, unencrypted, mode 0600
      identity.crt          its X.509 certificate (self-signed, or issued by the operator's CA)
      identity.pin          instead of identity.crt for ML-DSA-65+Ed25519
      trust/                the peers this site accepts: <name>.crt and <name>.pin files
      keys.db               the QKD key store (SQLite, mode 0600)

The encodings of identity.key, identity.crt and identity.pin live in
:mod:`hybridkex.site.credentials`.  This module reads and writes the directory:
:class:`SiteSettings` (site.toml), :class:`TrustedPeer` (one file of trust/), and
:class:`Site`, the directory loaded.

Trust: every certificate in ``trust/*.crt`` is a trust anchor (a self-signed peer
certificate is its own anchor; a CA certificate there admits whatever it issues, for
the name the connection expects).  Every ``trust/*.pin`` pins one peer's raw key.
A site's *peers* are the names of its non-CA certificates and of its pins.
docs/sites.md describes the layout and the command line.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from hybridkex import primitives
from hybridkex.errors import HybridKexError, UnknownAlgorithm
from hybridkex.keydelivery.source import KeySource, StoreKeySource
from hybridkex.keydelivery.sqlite import SQLiteKeyStore
from hybridkex.keydelivery.store import StoreStatus
from hybridkex.protocol import Config, SecurityPolicy, SigningIdentity, TrustStore
from hybridkex.protocol.config import AUTH_MODES
from hybridkex.protocol.identity import is_ca, public_key_bytes
from hybridkex.protocol.suites import DEFAULT_SUITES, suite_by_name
from hybridkex.site._toml import toml_key, toml_value
from hybridkex.site.credentials import (
    COMPOSITE,
    SIGNATURE_SCHEMES,
    common_name,
    load_ca,
    load_pin,
    load_private_key_pem,
    make_certificate,
    pin_text,
    private_key_pem,
    scheme_of,
)
from hybridkex.site.errors import SiteError
from hybridkex.site.keysource import KME, KeySourceSettings, PoolLevel, open_kme_source
from hybridkex.site.layout import (
    IDENTITY_CRT,
    IDENTITY_KEY,
    IDENTITY_PIN,
    KEYS_DB,
    KME_CA,
    KME_CLIENT_CRT,
    KME_CLIENT_KEY,
    SITE_TOML,
    TRUST_DIR,
    check_name,
    check_private_mode,
)
from hybridkex.transport import DEFAULT_HANDSHAKE_TIMEOUT, Context

if TYPE_CHECKING:
    from hybridkex.keydelivery.kme.dual import DualKMEKeySource

__all__ = ["Site", "SiteSettings", "TrustedPeer"]


def _kme_problem(exc: HybridKexError) -> str:
    """Why the KME's status could not be read, in one line."""
    return " ".join(str(exc).split()) or type(exc).__name__

_SETTINGS = ("name", "signature", "identity", "security", "auth", "suites",
             "qkd_keys_per_handshake", "handshake_timeout_s", "pool", "key_source", "links")
#: [pool] warn_below: `site show`, `serve` and `connect` warn when fewer keys than this
#: are left to take for a peer.
DEFAULT_POOL_WARN_BELOW = 64


# -- site.toml -----------------------------------------------------------------------------


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
    #: [key_source] as read (None: no table, keys.db); written back as it was read.
    key_source_table: KeySourceSettings | None = None
    links: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def key_source(self) -> KeySourceSettings:
        """Where the site's QKD keys come from (keys.db unless [key_source] says)."""
        return self.key_source_table or KeySourceSettings()

    def to_toml(self) -> str:
        lines = [
            "# hybridkex site (docs/sites.md).  Written by `hybridkex site init`, rewritten",
            "# by `site pair` and `site kme-source`; the settings above [links] may be edited",
            "# by hand.",
            f"name = {toml_value(self.name)}",
            f"signature = {toml_value(self.signature)}",
            f"identity = {toml_value(self.identity)}",
            f"security = {toml_value(self.security)}    "
            "# qkd-and-pq | at-least-qkd | at-least-pq | either",
            f"auth = {toml_value(self.auth)}    # auto | signature | psk",
            f"suites = {toml_value(list(self.suites))}",
            f"qkd_keys_per_handshake = {toml_value(self.qkd_keys_per_handshake)}",
            f"handshake_timeout_s = {toml_value(float(self.handshake_timeout_s))}",
            "",
            "[pool]",
            f"warn_below = {toml_value(self.pool_warn_below)}    "
            "# warn when fewer keys than this are left to take for a peer",
        ]
        if self.key_source_table is not None:
            lines += ["", *self.key_source_table.to_toml()]
        for peer, link in sorted(self.links.items()):
            lines += ["", f"[links.{toml_key(peer)}]"]
            lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in link.items()]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, text: str, where: str) -> SiteSettings:
        try:
            data = tomllib.loads(text)
        except ValueError as exc:  # TOMLDecodeError, or an integer of over 4300 digits
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
        key_source = None
        if "key_source" in data:
            key_source = KeySourceSettings.from_table(data["key_source"], where)
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
                pool_warn_below=warn_below, key_source_table=key_source,
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
        if not math.isfinite(self.handshake_timeout_s) or self.handshake_timeout_s <= 0:
            raise SiteError(f"{where}: handshake_timeout_s must be a positive number")
        if not all(isinstance(link, dict) for link in self.links.values()):
            raise SiteError(f"{where}: each entry of [links] must be a table")
        if self.name in self.key_source.peers:
            raise SiteError(f"{where}: [key_source.peers] names this site itself "
                            f"({self.name}); it maps peer sites to their SAE IDs")


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
            scheme = scheme_of(cert)
            public = public_key_bytes(cert, scheme)
        name = common_name(cert) or cert.subject.rfc4514_string()
        out.append(TrustedPeer(name, "x509-ca" if ca else "x509", scheme,
                               hashlib.sha256(public).hexdigest(), path))
    return out


# -- the site ----------------------------------------------------------------------------------


class Site:
    """A site directory, loaded: settings, signing identity, trust, its key store and
    its key source (open until :meth:`close`).  Make one with :meth:`init` or :meth:`load`.

    ``key_source`` is what sessions draw QKD keys from: keys.db, or with site.toml's
    ``[key_source] kind = "kme"`` the site's KME (a
    :class:`~hybridkex.keydelivery.kme.dual.DualKMEKeySource`: blocking for sockets,
    awaited on an event loop).  keys.db stays open as ``store`` either way.
    """

    def __init__(self, path: Path, settings: SiteSettings, identity: SigningIdentity,
                 store: SQLiteKeyStore, kme: DualKMEKeySource | None = None) -> None:
        self.path = path
        self.settings = settings
        self.identity = identity
        self.store = store
        self.kme = kme
        self.key_source: KeySource = kme if kme is not None else StoreKeySource(store)

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
            issuer = load_ca(Path(ca_certificate), Path(ca_key))

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
    def load(cls, path: str | os.PathLike[str], *, open_kme: bool = True) -> Site:
        """Open a site directory, checking every file (and identity.key's permissions).

        ``open_kme=False`` leaves a ``[key_source] kind = "kme"`` unopened, its files
        unchecked, and draws keys from keys.db: for replacing a broken KME set-up
        (``hybridkex site kme-source``), never for sessions."""
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
                check_private_mode(key_path, os.fstat(key_file.fileno()).st_mode)
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
        try:
            kme = (open_kme_source(directory, settings.key_source)
                   if settings.key_source.is_kme and open_kme else None)
            site = cls(directory, settings, identity, store, kme)
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
        if common_name(chain[0]) != settings.name:
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

    def peer_key(self, peer: str) -> tuple[str, bytes]:
        """The signature scheme and public key this site trusts for ``peer`` (from its
        pin or its certificate): what a QKD link's first round verifies the peer with."""
        for entry in self.trusted():
            if entry.name != peer or not entry.is_peer or entry.scheme is None:
                continue
            if entry.kind == "pin":
                return entry.scheme, load_pin(entry.path)[2]
            cert = x509.load_pem_x509_certificates(entry.path.read_bytes())[0]
            return entry.scheme, public_key_bytes(cert, entry.scheme)
        raise SiteError(f"site {self.name} does not trust {peer}")

    def pool_status(self, peer: str) -> StoreStatus:
        """keys.db's pool with ``peer`` (whatever the key source: see :meth:`pool_level`)."""
        return self.store.status(peer)

    # -- the key source ----------------------------------------------------------------------

    def qkd_peers(self) -> list[str]:
        """The peers the key source has keys with: trust/'s peers for keys.db, the names
        in [key_source.peers] for a KME."""
        if self.kme is not None:
            return list(self.settings.key_source.peers)
        return self.peers()

    def require_qkd_peer(self, peer: str) -> None:
        """Refuse, in one line, a peer the KME key source has no SAE ID for (before a
        handshake would fail on it as a missing QKD key)."""
        if self.kme is not None:
            self.settings.key_source.sae_of(peer)

    def pool_level(self, peer: str) -> PoolLevel:
        """What this site can say about its QKD keys with ``peer``: keys.db's counts, or
        the KME's Get status (``None`` and a reason when the KME cannot tell)."""
        if self.kme is None:
            status = self.pool_status(peer)
            return PoolLevel(peer, status.available_to_take, status.available_to_fetch,
                             status.delivered)
        try:
            sae = self.settings.key_source.sae_of(peer)
        except SiteError as exc:
            return PoolLevel(peer, None, reason=str(exc))
        try:
            count = self.kme.status(peer).stored_key_count
        except HybridKexError as exc:
            return PoolLevel(peer, None, sae_id=sae, reason=_kme_problem(exc))
        return PoolLevel(peer, count, sae_id=sae)

    async def pool_level_async(self, peer: str) -> PoolLevel:
        """:meth:`pool_level` for an event loop: the KME's status is awaited."""
        if self.kme is None:
            return self.pool_level(peer)
        try:
            sae = self.settings.key_source.sae_of(peer)
        except SiteError as exc:
            return PoolLevel(peer, None, reason=str(exc))
        try:
            count = (await self.kme.status_async(peer)).stored_key_count
        except HybridKexError as exc:
            return PoolLevel(peer, None, sae_id=sae, reason=_kme_problem(exc))
        return PoolLevel(peer, count, sae_id=sae)

    def link_info(self, peer: str) -> dict[str, Any]:
        """What site.toml records about the QKD link to ``peer`` (empty if nothing)."""
        return dict(self.settings.links.get(peer, {}))

    def qkd_source_label(self, peer: str) -> str:
        """Where this site's QKD keys for ``peer`` came from, as told to a user.

        A KME does not say what filled its store; when this site's own link to ``peer``
        is a simulation (site.toml's ``[links.<peer>]``, written by ``site pair`` and
        ``qkd link --site``, also when it deposits into the KME's store), the label says
        so for the KME too."""
        link = self.link_info(peer)
        simulated = ""
        if link.get("simulated"):
            distance = link.get("distance_km")
            length = f"{distance:g} km " if isinstance(distance, int | float) else ""
            simulated = (f"a SIMULATED QKD link ({length}decoy-state BB84 Monte Carlo, not a "
                         "physical QKD device)")
        if self.kme is not None:
            ks = self.settings.key_source
            their = ks.peers.get(peer, "not configured")
            label = (f"the KME at {ks.url} (ETSI GS QKD 014; this site's SAE {ks.sae_id}, "
                     f"{peer}'s SAE {their})")
            return f"{label}; this site's link to {peer} is {simulated}" if simulated else label
        return f"keys.db, filled by {simulated}" if simulated else "keys.db"

    def record_link(self, peer: str, link: dict[str, Any]) -> None:
        self.settings.links[peer] = link
        _replace(self.path / SITE_TOML, self.settings.to_toml().encode(), 0o644)

    def use_kme(self, url: str, sae_id: str, cert: str | os.PathLike[str],
                key: str | os.PathLike[str], ca: str | os.PathLike[str],
                peers: dict[str, str], *, replace: bool = False) -> KeySourceSettings:
        """Make the site an SAE of a KME: copy its SAE certificate and key and the KME's
        CA into the directory (kme-client.crt, kme-client.key mode 0600, kme-ca.crt)
        and write ``[key_source] kind = "kme"`` to site.toml.  Everything is checked
        before anything is written; a different file already there is kept unless
        ``replace``.  Takes effect when the site is next loaded."""
        settings = KeySourceSettings.from_table(
            {"kind": KME, "url": url, "sae_id": sae_id, "cert": KME_CLIENT_CRT,
             "key": KME_CLIENT_KEY, "ca": KME_CA, "peers": peers}, "the KME key source")
        if self.name in settings.peers:
            raise SiteError(f"--peer {self.name} is this site itself")
        sources = {"cert": Path(cert), "key": Path(key), "ca": Path(ca)}
        data: dict[str, bytes] = {}
        for name, source in sources.items():
            try:
                data[name] = source.read_bytes()
            except OSError as exc:
                raise SiteError(f"cannot read {source}: {exc.strerror or exc}") from None
        # the certificate, key and CA load together, as the KME client will load them
        check = KeySourceSettings(KME, url, sae_id, str(sources["cert"].absolute()),
                                  str(sources["key"].absolute()),
                                  str(sources["ca"].absolute()), settings.peers)
        open_kme_source(self.path, check, private_key_checked=False).close()
        targets = {name: settings.path(self.path, name) for name in sources}
        for name, target in targets.items():
            if target.exists() and target.read_bytes() != data[name] and not replace:
                raise SiteError(f"{target} already holds a different file; remove it first, "
                                "or replace it deliberately (--replace)")
        for name, target in targets.items():
            _replace(target, data[name], 0o600 if name == "key" else 0o644)
        self.settings.key_source_table = settings
        _replace(self.path / SITE_TOML, self.settings.to_toml().encode(), 0o644)
        return settings

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
        chain), trust/ as its TrustStore, its QKD key source (keys.db, or the KME of
        [key_source]), site.toml's policy, suites and authentication mode.  ``overrides``
        are Config fields, or ``handshake_timeout`` (seconds)."""
        timeout = overrides.pop("handshake_timeout", self.settings.handshake_timeout_s)
        return Context.from_config(self.config(**overrides), timeout)

    def close(self) -> None:
        """Close keys.db and the KME client's idle connections."""
        if self.kme is not None:
            self.kme.close()
        self.store.close()

    async def aclose(self) -> None:
        """Close the KME connections the running event loop opened (none for keys.db):
        call it before the loop ends, as ``serve`` does."""
        if self.kme is not None:
            await self.kme.aclose()

    def __enter__(self) -> Site:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<hybridkex.Site {self.name} ({self.scheme}) at {self.path}>"
