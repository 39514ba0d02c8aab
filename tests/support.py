"""What the tests and the benchmarks share: two sites' key pools, a test PKI, a hang guard.

Each idea is defined here once, so a test and a benchmark that both need "site A and
site B hold the same keys" or "a CA and a leaf for ML-DSA-65" build them the same way:

* **Pools.**  Two sites holding the same units come from the library's own
  :func:`~hybridkex.keydelivery.linked_pools` (what the README and the RNDL demo use
  too).  The few variants a test of a *broken* link needs (a server holding other
  units, or the same IDs with other material, or only one end of a link) are built
  here from :func:`~hybridkex.keydelivery.random_units` and ``linked_pools``.
* **PKI.**  :func:`certificate` is the one place a test or a benchmark mints an X.509
  certificate, for every signature scheme hybridkex presents in one (ML-DSA-44/65/87,
  Ed25519, ECDSA-P256).  :class:`Issued` (a key and its certificate) issues further
  certificates; :class:`PKI` is two sites' root, intermediate and leaves;
  :func:`tls_files` writes a CA, a server and clients as PEM files for the TLS stacks
  that read only files, and :class:`KMEFiles` does so for KMEs and their SAEs.  The
  library mints its own site certificates (``hybridkex.site``); these are for tests, so
  their keys are made with ``cryptography`` directly, independently of the code under
  test.
* **Hang guard.**  :func:`hang_guard` ends the process with every thread's stack rather
  than let a deadlock hang the run; tests/conftest.py applies it to tests marked
  ``time_limit``.
* **Processes.**  :class:`Process` runs a long-lived command (``hybridkex serve``,
  ``connect --listen-local``) and collects its stderr lines as they come, so a test
  waits for the line that says what happened instead of sleeping.

Nothing here imports pytest: benchmarks import this module as ``tests.support``.
"""

from __future__ import annotations

import contextlib
import datetime
import faulthandler
import ipaddress
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hybridkex.keydelivery import (
    UNIT_BYTES,
    KeyStore,
    StoredKey,
    linked_pools,
    random_units,
)
from hybridkex.protocol import SigningIdentity, TrustStore

if TYPE_CHECKING:
    from hybridkex.keydelivery.kme.client import KMEClient

__all__ = [
    "CLIENT",
    "KEYGEN",
    "PKI",
    "SERVER",
    "CertificateKey",
    "Issued",
    "KMEFiles",
    "OneWayPools",
    "Process",
    "alternating_units",
    "certificate",
    "hang_guard",
    "new_key",
    "one_end",
    "one_way_pools",
    "private_bytes",
    "self_signed",
    "tls_files",
]

# The two sites of every two-site test: site A connects (the client), site B serves.
CLIENT, SERVER = "site-a", "site-b"


# -- pools ----------------------------------------------------------------------------------


def alternating_units(site_a: str, site_b: str, per_site: int) -> list[StoredKey]:
    """``random_units`` for ``per_site`` units each way, dealt A, B, A, B ...: a store's
    take must then step over the units the other site initiates."""
    units = random_units(site_a, site_b, per_site)
    return [unit for pair in zip(units[:per_site], units[per_site:], strict=True)
            for unit in pair]


def one_end(site: str, units: Iterable[StoredKey]) -> KeyStore:
    """The store of ``site`` (:data:`CLIENT` or :data:`SERVER`) after ``linked_pools``
    deposited ``units``; the other end's store is dropped.  For a test whose other end
    is a copy, a stranger or a peer outside hybridkex."""
    pools = linked_pools(CLIENT, SERVER, units)
    return {CLIENT: pools.store_a, SERVER: pools.store_b}[site]


@dataclass(frozen=True, repr=False)
class OneWayPools:
    """A client that initiates every unit and a server that fetches them.  The server
    holds ``server_units``: the client's ``units`` for a working link, other ones for a
    link whose ends disagree."""

    client: KeyStore
    server: KeyStore
    units: tuple[StoredKey, ...]
    server_units: tuple[StoredKey, ...]

    def material(self) -> dict[str, bytes]:
        """Key ID -> material of every unit either end holds (the server's where the two
        share an ID)."""
        return {u.key_id: u.key for u in (*self.units, *self.server_units)}

    def delivered(self) -> tuple[int, int]:
        """Units delivered at (client, server)."""
        return self.client.status(SERVER).delivered, self.server.status(CLIENT).delivered

    def __repr__(self) -> str:  # never the material
        return f"OneWayPools(units={len(self.units)})"


ServerHolds = Literal["same", "other IDs", "other keys"]


def one_way_pools(count: int = 8, *, server: ServerHolds = "same") -> OneWayPools:
    """``count`` units initiated by the client.  ``server`` says what the server holds:
    ``"same"`` (a working link), ``"other IDs"`` (other units altogether) or
    ``"other keys"`` (the same IDs with other material)."""
    units = random_units(CLIENT, SERVER, count, 0)
    if server == "same":
        pools = linked_pools(CLIENT, SERVER, units)
        return OneWayPools(pools.store_a, pools.store_b, pools.units, pools.units)
    if server == "other IDs":
        theirs = random_units(CLIENT, SERVER, count, 0)
    else:
        theirs = [StoredKey(u.key_id, os.urandom(UNIT_BYTES), u.initiator) for u in units]
    return OneWayPools(one_end(CLIENT, units), one_end(SERVER, theirs), tuple(units),
                       tuple(theirs))


# -- PKI ------------------------------------------------------------------------------------

CertificateKey = (mldsa.MLDSA44PrivateKey | mldsa.MLDSA65PrivateKey | mldsa.MLDSA87PrivateKey
                  | ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey)

# Every signature scheme hybridkex presents in an X.509 certificate (the composite
# ML-DSA-65+Ed25519 has no single key to certify).
KEYGEN: dict[str, Callable[[], CertificateKey]] = {
    "ML-DSA-44": mldsa.MLDSA44PrivateKey.generate,
    "ML-DSA-65": mldsa.MLDSA65PrivateKey.generate,
    "ML-DSA-87": mldsa.MLDSA87PrivateKey.generate,
    "Ed25519": ed25519.Ed25519PrivateKey.generate,
    "ECDSA-P256": lambda: ec.generate_private_key(ec.SECP256R1()),
}


def new_key(scheme: str) -> CertificateKey:
    return KEYGEN[scheme]()


def private_bytes(key: CertificateKey) -> bytes:
    """The raw private key hybridkex's signature schemes take: the 32-byte scalar for
    ECDSA-P256, the seed for ML-DSA, the 32 bytes of RFC 8032 for Ed25519."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return int(key.private_numbers().private_value).to_bytes(32, "big")
    return bytes(key.private_bytes_raw())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


# One ExtendedKeyUsage purpose, or several (a KME's certificate serves and syncs).
Usage = x509.ObjectIdentifier | Sequence[x509.ObjectIdentifier]


def certificate(subject: str, key: CertificateKey, issuer: x509.Certificate | None,
                issuer_key: CertificateKey, *, ca: bool, serial: int | None = None,
                not_before: datetime.datetime | None = None, days: float = 1,
                tls: bool = False, usage: Usage | None = None,
                san: Sequence[x509.GeneralName] = ()) -> x509.Certificate:
    """A certificate for ``key``, CN = ``subject``, signed by ``issuer_key`` (self-signed
    when ``issuer`` is None), with BasicConstraints and nothing else unless asked:

    * ``tls``: also KeyUsage, SubjectKeyIdentifier and AuthorityKeyIdentifier, which
      strict X.509 verifiers (OpenSSL's X509_STRICT, Python's ssl from 3.13) require;
    * ``usage``: ExtendedKeyUsage purposes (server and/or client authentication);
    * ``san``: a SubjectAlternativeName (what a TLS client checks the host name against).

    Valid from ``not_before`` (default five minutes ago) for ``days``.  With a fixed key,
    ``serial`` and ``not_before`` the certificate is the same byte for byte (Ed25519 and
    deterministic ML-DSA sign deterministically), as tests/hkx1_vectors.py needs.
    """
    start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject))
               .issuer_name(_name(subject) if issuer is None else issuer.subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number() if serial is None else serial)
               .not_valid_before(start)
               .not_valid_after(start + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if tls:
        builder = (builder
                   .add_extension(x509.KeyUsage(
                       digital_signature=not ca, content_commitment=False,
                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                       key_cert_sign=ca, crl_sign=ca, encipher_only=False,
                       decipher_only=False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                  critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       issuer_key.public_key()), critical=False))
    if usage is not None:
        purposes = [usage] if isinstance(usage, x509.ObjectIdentifier) else list(usage)
        builder = builder.add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    # ECDSA signs a SHA-256 digest; Ed25519 and ML-DSA sign the whole TBSCertificate.
    digest = hashes.SHA256() if isinstance(issuer_key, ec.EllipticCurvePrivateKey) else None
    return builder.sign(issuer_key, digest)


@dataclass(frozen=True, repr=False)
class Issued:
    """A private key and its certificate; it can issue certificates of its own (which a
    test of a leaf used as an issuer needs, so nothing stops a non-CA from doing so)."""

    scheme: str
    key: CertificateKey
    certificate: x509.Certificate

    def issue(self, subject: str, *, ca: bool = False, key: CertificateKey | None = None,
              serial: int | None = None, not_before: datetime.datetime | None = None,
              days: float = 1, tls: bool = False, usage: Usage | None = None,
              san: Sequence[x509.GeneralName] = ()) -> Issued:
        """A certificate for ``key`` (default: a new key of this issuer's scheme)."""
        key = new_key(self.scheme) if key is None else key
        return Issued(self.scheme, key, certificate(
            subject, key, self.certificate, self.key, ca=ca, serial=serial,
            not_before=not_before, days=days, tls=tls, usage=usage, san=san))

    def identity(self, *chain: x509.Certificate) -> SigningIdentity:
        """This key presented with this certificate, then ``chain`` (leaf first)."""
        return SigningIdentity.from_chain(self.scheme, private_bytes(self.key),
                                          [self.certificate, *chain])

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """``name.pem`` (the certificate) and ``name.key`` (unencrypted PKCS#8, mode
        0600) in ``directory``, for what reads only files (OpenSSL, ssl, the CLI)."""
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        cert_path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        with os.fdopen(os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                       "wb") as f:
            f.write(self.key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return cert_path, key_path

    def __repr__(self) -> str:  # never the key
        return f"Issued({self.scheme!r}, {self.certificate.subject.rfc4514_string()!r})"


def self_signed(scheme: str, subject: str, *, ca: bool = True,
                key: CertificateKey | None = None, serial: int | None = None,
                not_before: datetime.datetime | None = None, days: float = 1,
                tls: bool = False, san: Sequence[x509.GeneralName] = ()) -> Issued:
    """A self-signed certificate: a root CA, or (``ca=False``) a certificate trusted as
    itself."""
    key = new_key(scheme) if key is None else key
    return Issued(scheme, key, certificate(subject, key, None, key, ca=ca, serial=serial,
                                           not_before=not_before, days=days, tls=tls,
                                           san=san))


@dataclass(frozen=True, repr=False)
class PKI:
    """A root CA, an intermediate and a leaf for each site, all of one scheme.  A site's
    identity presents its leaf and the intermediate; the root is the anchor."""

    scheme: str
    root_ca: Issued
    intermediate_ca: Issued
    identities: dict[str, SigningIdentity] = field(default_factory=dict)

    @classmethod
    def create(cls, scheme: str, *, root_name: str = "hkx test root",
               intermediate_name: str = "hkx test intermediate",
               intermediate_is_ca: bool = True,
               sites: Sequence[str] = (CLIENT, SERVER)) -> PKI:
        root = self_signed(scheme, root_name)
        intermediate = root.issue(intermediate_name, ca=intermediate_is_ca)
        pki = cls(scheme, root, intermediate)
        for site in sites:
            pki.identities[site] = pki.new_identity(site)
        return pki

    @property
    def root(self) -> x509.Certificate:
        return self.root_ca.certificate

    @property
    def intermediate(self) -> x509.Certificate:
        return self.intermediate_ca.certificate

    def new_identity(self, name: str, *, not_before: datetime.datetime | None = None,
                     days: float = 1, with_root: bool = False) -> SigningIdentity:
        """A fresh leaf for ``name``, presented with the intermediate (and the root)."""
        leaf = self.intermediate_ca.issue(name, not_before=not_before, days=days)
        return leaf.identity(self.intermediate, *([self.root] if with_root else []))

    def trust(self) -> TrustStore:
        return TrustStore(anchors=[self.root])

    def __repr__(self) -> str:
        return f"PKI({self.scheme!r}, sites={sorted(self.identities)})"


LOCALHOST: tuple[x509.GeneralName, ...] = (
    x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")))


def tls_files(directory: Path, *, scheme: str = "ECDSA-P256",
              ca_name: str = "hybridkex test CA", server: str | None = None,
              clients: Iterable[str] = ()) -> Issued:
    """A CA (``ca.pem``, ``ca.key``), a server certificate for localhost and 127.0.0.1
    (``<server>.pem`` / ``.key``) and client certificates (``<client>.pem`` / ``.key``,
    CN = the client's name) in ``directory``, with the extensions strict TLS verifiers
    want.  Returns the CA, which can issue more."""
    ca = self_signed(scheme, ca_name, tls=True)
    ca.write(directory, "ca")
    if server is not None:
        ca.issue(server, tls=True, usage=ExtendedKeyUsageOID.SERVER_AUTH,
                 san=LOCALHOST).write(directory, server)
    for client in clients:
        ca.issue(client, tls=True, usage=ExtendedKeyUsageOID.CLIENT_AUTH).write(
            directory, client)
    return ca


@dataclass(frozen=True)
class KMEFiles:
    """:func:`tls_files` for KMEs and their SAEs, in ``dir``: the KMEs' certificate
    (``kme``, for localhost and 127.0.0.1) and one client certificate per SAE (CN = SAE
    ID), all from one CA (``ca.pem``)."""

    dir: Path

    @classmethod
    def create(cls, directory: Path, saes: Iterable[str], *,
               ca_name: str = "hybridkex test CA", kme_sites: Iterable[str] = ()) -> KMEFiles:
        """``kme_sites``: also a certificate per site, ``kme-<site>`` (CN = the site ID,
        which is the KME ID), for server and client use, as KMEs that sync present."""
        ca = tls_files(directory, ca_name=ca_name, server="kme", clients=saes)
        for site in kme_sites:
            ca.issue(site, tls=True, san=LOCALHOST,
                     usage=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                     ).write(directory, f"kme-{site}")
        return cls(directory)

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    def pair(self, name: str) -> tuple[Path, Path]:
        """(certificate, key) files of ``kme`` or an SAE."""
        return self.dir / f"{name}.pem", self.dir / f"{name}.key"

    def server_context(self) -> ssl.SSLContext:
        """A KME's server context, as ``hybridkex kme serve`` makes it."""
        from hybridkex.keydelivery.kme import server_ssl_context  # aiohttp: only when used

        return server_ssl_context(*self.pair("kme"), self.ca)

    def client(self, url: str, sae: str, timeout: float = 10.0) -> KMEClient:
        from hybridkex.keydelivery.kme.client import KMEClient

        return KMEClient(url, *self.pair(sae), self.ca, timeout=timeout)

    def ssl_context(self, sae: str | None) -> ssl.SSLContext:
        """A plain client context trusting the CA, presenting ``sae``'s certificate
        (none for ``None``): for requests KMEClient would not make."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if sae is not None:
            cert, key = self.pair(sae)
            ctx.load_cert_chain(str(cert), str(key))
        return ctx


# -- hangs ----------------------------------------------------------------------------------


@contextlib.contextmanager
def hang_guard(seconds: float) -> Iterator[None]:
    """Dump every thread's stack to stderr and exit if the body runs for ``seconds``: a
    deadlocked socket test then fails with the stacks instead of hanging the run."""
    faulthandler.dump_traceback_later(seconds, exit=True, file=sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


# -- processes ------------------------------------------------------------------------------


def stop_processes(processes: Iterable[subprocess.Popen[Any]], timeout: float = 20.0) -> None:
    """SIGTERM to each, then wait; one that does not stop within ``timeout`` is killed."""
    running = list(processes)
    for p in running:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in running:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class Process:
    """A long-running command; its stderr lines collected as they come.

    The constructor returns once a line containing ``ready`` has appeared (it is kept as
    ``first``).  ``timeout`` (seconds) bounds every wait: for a line, for the exit."""

    def __init__(self, args: Sequence[str], ready: str, *, timeout: float = 30.0,
                 cwd: str | os.PathLike[str] | None = None,
                 env: dict[str, str] | None = None, stdout: int = subprocess.PIPE) -> None:
        self.timeout = timeout
        self.process = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=stdout,
                                        stderr=subprocess.PIPE, cwd=cwd, env=env)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.first = self.wait_for(ready)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:  # the end: a waiter sees it at once
            self._changed.notify_all()

    def wait_for(self, text: str, start: int = 0) -> str:
        """The first line from ``start`` on that contains ``text``, waiting for it."""
        deadline = time.monotonic() + self.timeout
        with self._changed:
            while True:
                for line in self.lines[start:]:
                    if text in line:
                        return line
                if self.process.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"exited before {text!r}: {self.lines}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {text!r} in {self.lines}")
                self._changed.wait(remaining)

    def stop(self) -> int:
        """SIGTERM, then its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self) -> int:
        """The exit status (a command that ends by itself)."""
        code = self.process.wait(self.timeout)
        self._reader.join(self.timeout)
        return code
