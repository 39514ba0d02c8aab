"""Two KMEs for ``hybridkex demo --kme``: the sites' keys delivered through ETSI GS QKD 014.

A deployment puts a KME in front of each site's key store and makes every site an SAE
of its KME (docs/kme.md).  The demo does the same in one process: :func:`start_kmes`
issues a throw-away PKI (one CA, each KME's certificate with its KME ID, the site name,
as CN, and each site's SAE certificate), starts the two KMEs over the sites' keys.db
(:class:`~hybridkex.keydelivery.kme.server.KMEServer` in a
:class:`~hybridkex.keydelivery.kme.server.BackgroundKME`, each the other's peer, so
every key is bound to the SAE pair and recorded at the slave's KME before the master
gets it), and writes ``[key_source] kind = "kme"`` into both sites' site.toml
(:meth:`~hybridkex.site.Site.use_kme`).  Sites loaded afterwards draw every QKD key
through the KMEs.

The private keys are written 0600 in the demo's directory, which the demo deletes
unless ``--keep`` keeps it; the CA's key is not written at all.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hybridkex.keydelivery.kme.peers import peer_tls
from hybridkex.keydelivery.kme.server import BackgroundKME, KMEServer, server_ssl_context
from hybridkex.keydelivery.sqlite import SQLiteKeyStore
from hybridkex.site import Site
from hybridkex.site.layout import KEYS_DB

__all__ = ["DemoKMEs", "sae_id", "start_kmes"]

_DAYS = 1  # the PKI lives as long as the demo


def sae_id(site: str) -> str:
    """The SAE ID a demo site has at its KME."""
    return f"sae-{site}"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey,
                 issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, *,
                 usage: Iterable[x509.ObjectIdentifier] = (),
                 san: Iterable[x509.GeneralName] = ()) -> x509.Certificate:
    """A certificate with the extensions strict TLS verifiers require: a CA when
    ``issuer`` is None (self-signed), else an end entity for ``usage``."""
    now = datetime.datetime.now(datetime.UTC)
    ca = issuer is None
    issuer_name, signer = (_name(subject), key) if issuer is None else (issuer[0].subject,
                                                                       issuer[1])
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=_DAYS))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature=not ca, content_commitment=False, key_encipherment=False,
                   data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                   crl_sign=ca, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   signer.public_key()), critical=False))
    purposes = list(usage)
    if purposes:
        builder = builder.add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
    names = list(san)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _write(directory: Path, name: str, certificate: x509.Certificate,
           key: ec.EllipticCurvePrivateKey | None) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        with os.fdopen(os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600),
                       "wb") as out:
            out.write(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class DemoKMEs:
    """The two running KMEs, by site name, and what each site is at its KME."""

    kmes: dict[str, BackgroundKME] = field(default_factory=dict)
    stores: list[SQLiteKeyStore] = field(default_factory=list)

    def url(self, site: str) -> str:
        return self.kmes[site].url

    def close(self) -> None:
        for kme in self.kmes.values():
            kme.close()
        for store in self.stores:
            store.close()


def start_kmes(directory: Path, a: Site, b: Site) -> DemoKMEs:
    """Issue the PKI in ``directory`` (created, mode 0700), start a KME over each site's
    keys.db, each the other's peer, and make each site an SAE of its KME
    (site.toml's ``[key_source]``: it takes effect when the site is next loaded)."""
    directory.mkdir(mode=0o700)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("hybridkex demo KME CA", ca_key, None)
    ca_path, _ = _write(directory, "ca", ca_cert, None)
    loopback = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    sites = (a, b)
    sae_map = {sae_id(s.name): s.name for s in sites}
    demo = DemoKMEs()
    try:
        for site in sites:
            # the KME's certificate: CN = its KME ID (the site), for serving its SAEs and
            # for the KME-to-KME sync, where it is a client
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _certificate(site.name, key, (ca_cert, ca_key), san=loopback,
                                usage=(ExtendedKeyUsageOID.SERVER_AUTH,
                                       ExtendedKeyUsageOID.CLIENT_AUTH))
            cert_path, key_path = _write(directory, f"kme-{site.name}", cert, key)
            store = SQLiteKeyStore(site.name, site.path / KEYS_DB)
            demo.stores.append(store)
            server = KMEServer(store, site.name, sae_map,
                               server_ssl_context(cert_path, key_path, ca_path),
                               peer_tls=peer_tls(cert_path, key_path, ca_path))
            demo.kmes[site.name] = BackgroundKME(server).start()
        for site, other in ((a, b), (b, a)):
            demo.kmes[site.name].server.set_peer(other.name, demo.url(other.name))
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _certificate(sae_id(site.name), key, (ca_cert, ca_key),
                                usage=(ExtendedKeyUsageOID.CLIENT_AUTH,))
            cert_path, key_path = _write(directory, sae_id(site.name), cert, key)
            site.use_kme(demo.url(site.name), sae_id(site.name), cert_path, key_path, ca_path,
                         {other.name: sae_id(other.name)})
    except BaseException:
        demo.close()
        raise
    return demo
