"""TLS 1.3 between hybridkex.tls and other TLS 1.3 stacks, both directions, on loopback.

The peers (interop_tls.py): Node.js 26's tls module, i.e. OpenSSL 3.5 (the session's
Node.js process, interop/node/tls.mjs), and tlslite-ng 0.8.2, pure Python, in a thread.
Every cell is a real connection: the handshake completes, both ends report what was
negotiated (hybridkex.tls from its session_info(), read from OpenSSL; the peer from its
own API), RFC 8446 exporters are equal on both ends, and application data is echoed.
The refusal rows check that a wrong certificate or a wrong QKD key fails on both ends.

The last tests check the tlslite-ng and Node.js limitations behind the matrix's "not
supported" TLS cells, and the tlslite-ng client setting the rows depend on.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import mldsa
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from interop_matrix import (
    HKX_CONTEXT,
    TLS_EXPORTER_LABEL,
    TLS_GROUP_NAMES,
    TLS_GROUP_ROW_SCHEME,
    TLS_LIMITATIONS,
    TLS_SCHEMES,
    Cell,
    cells,
)
from interop_node import NodePeer
from interop_tls import (
    HOST,
    TIMEOUT,
    Exporter,
    NodeTLS,
    OurSaw,
    PeerConnection,
    PeerEnd,
    PeerSaw,
    PeerTLSFailed,
    TlsliteTLS,
    TLSPeer,
    chain_pem,
    leaf_der,
    our_client,
    our_server,
    private_key_pem,
    with_peer_client,
    with_peer_server,
)
from tlslite import TLSConnection
from tlslite import constants as tlslite_constants
from tlslite import handshakesettings as tlslite_settings
from tlslite.x509 import X509

from hybridkex.errors import HybridKexError
from hybridkex.keydelivery import KeyStore, StoredKey, StoreKeySource, random_units
from hybridkex.protocol import SigningIdentity
from hybridkex.tls import (
    GROUPS,
    TLSAlertReceived,
    TLSConnectionTruncated,
    TLSContext,
    TLSError,
    TLSPeerAuthenticationFailed,
    TLSProtocolError,
)
from hybridkex.tls.context import SIGNATURE_ALGORITHMS
from tests.support import CLIENT, PKI, SERVER, one_end

MESSAGE = hashlib.shake_256(b"hybridkex interop tls").digest(40000)  # a few records
PSK_HASH = {"TLS_AES_128_GCM_SHA256": "sha256", "TLS_CHACHA20_POLY1305_SHA256": "sha256",
            "TLS_AES_256_GCM_SHA384": "sha384"}
DEFAULT_GROUP = "X25519MLKEM768"


@cache
def pki(scheme: str) -> PKI:
    """A root, an intermediate and leaves for both sites, one per scheme."""
    return PKI.create(scheme)


@cache
def untrusted_pki(scheme: str) -> PKI:
    """Another CA (other names, other keys) with leaves for both sites."""
    return PKI.create(scheme, root_name="interop untrusted root",
                      intermediate_name="interop untrusted intermediate")


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def exporters(peer: str, *, context: bool = True,
              lengths: tuple[int, ...] = (32,)) -> tuple[Exporter, ...]:
    """No context, the empty context, and (where the peer has contexts) a 25-byte one."""
    out = [Exporter(TLS_EXPORTER_LABEL, ctx, n) for n in lengths for ctx in (None, b"")]
    if context and peer == "openssl":
        out += [Exporter(TLS_EXPORTER_LABEL, HKX_CONTEXT, n) for n in lengths]
    return tuple(out)


def client_context(p: PKI, *, group: str = DEFAULT_GROUP,
                   identity: bool = False) -> TLSContext:
    """hybridkex.tls's client: trusts ``p``'s root; presents its leaf if ``identity``."""
    return TLSContext(CLIENT, identity=p.identities[CLIENT] if identity else None,
                      trust=p.trust(), groups=[group], handshake_timeout=TIMEOUT)


def server_context(p: PKI, *, group: str = DEFAULT_GROUP, mutual_auth: bool = True,
                   peers: tuple[str, ...] = ()) -> TLSContext:
    """hybridkex.tls's server: presents ``p``'s leaf; with ``mutual_auth`` it demands a
    client certificate from ``p``'s root (of one of ``peers``, if given)."""
    return TLSContext(SERVER, identity=p.identities[SERVER],
                      trust=p.trust() if mutual_auth else None, groups=[group],
                      mutual_auth=mutual_auth, peers=peers, handshake_timeout=TIMEOUT)


def check_session(peer: str, ours: OurSaw, theirs: PeerSaw, *, group: str,
                  peer_is_server: bool) -> None:
    """What every completed connection must show on both ends."""
    assert ours.info.version == theirs.protocol == "TLSv1.3"
    assert ours.info.group == group
    # Node.js names the group on a client socket only; tlslite-ng on both.
    if not (peer == "openssl" and peer_is_server):
        assert theirs.group == group
    assert ours.info.cipher == theirs.cipher
    assert ours.exporters == theirs.exporters, "RFC 8446 exporters differ"
    assert ours.received == theirs.received == MESSAGE
    assert theirs.psk_used in (ours.info.psk_used, None)  # None: tlslite-ng cannot tell


# -- key exchange groups ------------------------------------------------------------------


@pytest.mark.parametrize("cell", cells("test_tls_group"), ids=str)
def test_tls_group(cell: Cell, tls_peer: TLSPeer) -> None:
    row = cell.row
    p = pki(TLS_GROUP_ROW_SCHEME[cell.peer])
    server_leaf = leaf_der(p.identities[SERVER])
    if row.peer_role == "server":
        end = PeerEnd(groups=(row.group,), identity=p.identities[SERVER],
                      exporters=exporters(cell.peer))
        ours, theirs = with_peer_server(tls_peer, end, client_context(p, group=row.group),
                                        SERVER, MESSAGE)
        assert ours.info.peer_certificate_sha256 == fingerprint(server_leaf)
        assert ours.info.peer_signature_scheme == TLS_SCHEMES[p.scheme]
        assert theirs.peer_certificate is None  # it asked for none, and got none
    else:
        end = PeerEnd(groups=(row.group,), anchor=p.root, servername=SERVER,
                      exporters=exporters(cell.peer), message=MESSAGE)
        ours, theirs = with_peer_client(
            tls_peer, end, server_context(p, group=row.group, mutual_auth=False))
        assert theirs.peer_certificate == server_leaf
        assert theirs.authorized in (True, None)  # None: tlslite-ng verifies no chain
        assert ours.info.peer.kind == "unauthenticated"
    check_session(cell.peer, ours, theirs, group=row.group,
                  peer_is_server=row.peer_role == "server")
    assert ours.info.post_quantum and not ours.info.psk_used


# -- certificates and mutual authentication --------------------------------------------------


@pytest.mark.parametrize("cell", cells("test_tls_mutual_authentication"), ids=str)
def test_tls_mutual_authentication(cell: Cell, tls_peer: TLSPeer) -> None:
    row = cell.row
    p = pki(row.scheme)
    # tlslite-ng's exporter is wrong after a client certificate (its own row says so).
    exported = exporters(cell.peer) if cell.peer == "openssl" else ()
    if row.peer_role == "server":
        mine, theirs_site = CLIENT, SERVER
        end = PeerEnd(identity=p.identities[SERVER], anchor=p.root, request_cert=True,
                      exporters=exported)
        ours, theirs = with_peer_server(tls_peer, end, client_context(p, identity=True),
                                        SERVER, MESSAGE)
    else:
        mine, theirs_site = SERVER, CLIENT
        end = PeerEnd(identity=p.identities[CLIENT], anchor=p.root, servername=SERVER,
                      exporters=exported, message=MESSAGE)
        ours, theirs = with_peer_client(tls_peer, end, server_context(p, peers=(CLIENT,)))
    check_session(cell.peer, ours, theirs, group=DEFAULT_GROUP,
                  peer_is_server=row.peer_role == "server")
    info = ours.info
    assert (info.peer.site, info.peer.scheme, info.peer.kind) == (theirs_site, row.scheme,
                                                                  "x509")
    assert info.peer_certificate_sha256 == fingerprint(leaf_der(p.identities[theirs_site]))
    assert info.peer_signature_scheme == info.local_signature_scheme == TLS_SCHEMES[row.scheme]
    assert theirs.peer_certificate == leaf_der(p.identities[mine])
    if cell.peer == "openssl":
        assert theirs.authorized is True


def _peer_error(connection: PeerConnection) -> PeerTLSFailed:
    try:
        saw = connection.result()
    except PeerTLSFailed as exc:
        return exc
    raise AssertionError(f"the peer's end completed: {saw}")


def failing_with_peer_server(peer: TLSPeer, end: PeerEnd,
                             context: TLSContext) -> tuple[HybridKexError, PeerTLSFailed]:
    """hybridkex.tls's client against the peer's server, both ends failing: their errors."""
    address, connection = peer.listen(end)
    try:
        with pytest.raises(HybridKexError) as ours:
            our_client(context, address, SERVER, MESSAGE)
    finally:
        theirs = _peer_error(connection)
    return ours.value, theirs


def failing_with_peer_client(peer: TLSPeer, end: PeerEnd,
                             context: TLSContext) -> tuple[HybridKexError, PeerTLSFailed]:
    """The peer's client against hybridkex.tls's server, both ends failing."""
    with socket.create_server((HOST, 0)) as listener:
        listener.settimeout(TIMEOUT)
        connection = peer.connect(listener.getsockname()[:2], end)
        try:
            sock, _ = listener.accept()
            with pytest.raises(HybridKexError) as ours:
                our_server(context, sock)
        finally:
            theirs = _peer_error(connection)
    return ours.value, theirs


@pytest.mark.parametrize("cell", cells("test_tls_untrusted_peer_is_refused"), ids=str)
def test_tls_untrusted_peer_is_refused(cell: Cell, tls_peer: TLSPeer) -> None:
    """The peer's certificates come from another CA than the one hybridkex.tls trusts."""
    p, other = pki(cell.row.scheme), untrusted_pki(cell.row.scheme)
    # The peer as server, with a certificate hybridkex.tls's client does not trust.
    ours, _ = failing_with_peer_server(
        tls_peer, PeerEnd(identity=other.identities[SERVER]), client_context(p))
    assert isinstance(ours, TLSPeerAuthenticationFailed), ours
    assert "does not verify against the trust anchors" in str(ours)
    # The peer as client, presenting such a certificate to a server demanding one.
    end = PeerEnd(identity=other.identities[CLIENT], anchor=p.root, servername=SERVER,
                  message=MESSAGE)
    ours, _ = failing_with_peer_client(tls_peer, end, server_context(p))
    assert isinstance(ours, TLSPeerAuthenticationFailed), ours


@pytest.mark.parametrize("cell", cells("test_tls_peer_refuses_untrusted"), ids=str)
def test_tls_peer_refuses_untrusted(cell: Cell, tls_peer: TLSPeer) -> None:
    """hybridkex.tls's certificates come from a CA the peer was not given."""
    p, other = pki(cell.row.scheme), untrusted_pki(cell.row.scheme)
    # Node.js verifies the other end's chain itself, after OpenSSL's handshake, and on
    # failure closes the socket without an alert: hybridkex.tls sees the connection end
    # without close_notify, Node.js reports the verification error.
    # The peer's server demands a client certificate from ``other``'s CA.
    end = PeerEnd(identity=p.identities[SERVER], anchor=other.root, request_cert=True)
    ours, theirs = failing_with_peer_server(tls_peer, end, client_context(p, identity=True))
    assert isinstance(ours, TLSConnectionTruncated), ours
    assert "UNABLE_TO_GET_ISSUER_CERT_LOCALLY" in str(theirs), theirs
    # The peer's client trusts only ``other``'s CA.
    end = PeerEnd(anchor=other.root, servername=SERVER, message=MESSAGE)
    ours, theirs = failing_with_peer_client(tls_peer, end, server_context(p, mutual_auth=False))
    assert isinstance(ours, TLSConnectionTruncated), ours
    assert "UNABLE_TO_GET_ISSUER_CERT_LOCALLY" in str(theirs), theirs


# -- exporters -----------------------------------------------------------------------------


@pytest.mark.parametrize("cell", cells("test_tls_exporter"), ids=str)
def test_tls_exporter(cell: Cell, tls_peer: TLSPeer) -> None:
    row = cell.row
    lengths = (16, 32, 100)
    exported = exporters(cell.peer, context=False, lengths=lengths)
    if row.kind == "exporter-context":
        exported = (*(Exporter(TLS_EXPORTER_LABEL, row.context, n) for n in lengths),
                    *exported)
    mutual = row.kind == "exporter-mutual"
    p = pki(row.scheme or TLS_GROUP_ROW_SCHEME[cell.peer])
    results = [
        with_peer_server(tls_peer, PeerEnd(identity=p.identities[SERVER], anchor=p.root,
                                           request_cert=mutual, exporters=exported),
                         client_context(p, identity=mutual), SERVER, MESSAGE),
        with_peer_client(tls_peer, PeerEnd(identity=p.identities[CLIENT] if mutual else None,
                                           anchor=p.root, servername=SERVER,
                                           exporters=exported, message=MESSAGE),
                         server_context(p, mutual_auth=mutual)),
    ]
    for (ours, theirs), peer_is_server in zip(results, (True, False), strict=True):
        check_session(cell.peer, ours, theirs, group=DEFAULT_GROUP,
                      peer_is_server=peer_is_server)
        assert [len(e) for e in ours.exporters] == [e.length for e in exported]
        assert (ours.info.peer.kind == "x509") is (mutual or peer_is_server)
        by_request = dict(zip(exported, ours.exporters, strict=True))
        for n in lengths:  # no context and the empty context are the same in TLS 1.3
            assert (by_request[Exporter(TLS_EXPORTER_LABEL, None, n)]
                    == by_request[Exporter(TLS_EXPORTER_LABEL, b"", n)])
            if row.kind == "exporter-context":  # and a context value changes the output
                assert (by_request[Exporter(TLS_EXPORTER_LABEL, row.context, n)]
                        != by_request[Exporter(TLS_EXPORTER_LABEL, b"", n)])
    # Each connection exports its own values.
    assert results[0][0].exporters != results[1][0].exporters


# -- the QKD key as external PSK -------------------------------------------------------------


def qkd_key() -> StoredKey:
    """One unit the client initiates."""
    return random_units(CLIENT, SERVER, 1, 0)[0]


def our_psk_context(server: bool, key: StoredKey, cipher: str) -> tuple[TLSContext, KeyStore]:
    """A qkd-psk context whose pool holds ``key`` (and nothing else)."""
    site, peer = (SERVER, CLIENT) if server else (CLIENT, SERVER)
    store = one_end(site, [key])
    context = TLSContext(site, mode="qkd-psk", key_source=StoreKeySource(store),
                         peers=[peer] if server else [], psk_cipher=cipher,
                         groups=[DEFAULT_GROUP], handshake_timeout=TIMEOUT)
    return context, store


@pytest.mark.parametrize("cell", cells("test_tls_qkd_psk"), ids=str)
def test_tls_qkd_psk(cell: Cell, tls_peer: TLSPeer) -> None:
    row = cell.row
    key = qkd_key()
    end = PeerEnd(psk=(key.key_id, key.key), psk_hash=PSK_HASH[row.cipher],
                  exporters=exporters(cell.peer), message=MESSAGE)
    peer_is_server = row.peer_role == "server"
    context, store = our_psk_context(not peer_is_server, key, row.cipher)
    if peer_is_server:
        ours, theirs = with_peer_server(tls_peer, end, context, SERVER, MESSAGE)
    else:
        ours, theirs = with_peer_client(tls_peer, end, context)
    check_session(cell.peer, ours, theirs, group=DEFAULT_GROUP, peer_is_server=peer_is_server)
    info = ours.info
    assert info.mode == "qkd-psk" and info.psk_used and info.psk_key_id == key.key_id
    assert info.cipher == row.cipher
    assert info.key_exchange == ("ML-KEM-768", "X25519", "QKD key (external PSK)")
    assert info.peer.kind == "psk" and info.peer_certificate_sha256 is None
    assert info.peer_signature_scheme is None and theirs.peer_certificate is None
    assert store.status(CLIENT if not peer_is_server else SERVER).delivered == 1
    if cell.peer == "openssl" or not peer_is_server:
        # Node.js's server reports what its pskCallback saw; a client what it sent.
        assert theirs.psk_identity == key.key_id


@pytest.mark.parametrize("cell", cells("test_tls_qkd_psk_wrong_key"), ids=str)
def test_tls_qkd_psk_wrong_key(cell: Cell, tls_peer: TLSPeer) -> None:
    cipher = cell.row.cipher
    key = qkd_key()
    wrong = bytes(b ^ 0x5A for b in key.key)
    end = PeerEnd(psk=(key.key_id, wrong), psk_hash=PSK_HASH[cipher], message=MESSAGE)
    # The peer's server holds another key under the ID the client names.
    context, store = our_psk_context(False, key, cipher)
    ours, _ = failing_with_peer_server(tls_peer, end, context)
    assert isinstance(ours, TLSAlertReceived), ours
    assert store.status(SERVER).delivered == 1  # the key entered a handshake: spent
    # The peer's client offers another key under the ID our server holds.
    context, store = our_psk_context(True, key, cipher)
    ours, _ = failing_with_peer_client(tls_peer, end, context)
    assert isinstance(ours, TLSPeerAuthenticationFailed), ours
    assert "binder" in str(ours)


# -- the command line ----------------------------------------------------------------------


REPO = Path(__file__).resolve().parents[2]


def _hybridkex(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "hybridkex", *args], cwd=REPO, check=True,
                   capture_output=True, timeout=60)


def _site_identity(site_dir: Path) -> SigningIdentity:
    """A site's identity.key and identity.crt (ML-DSA-65) as a SigningIdentity."""
    key = load_pem_private_key((site_dir / "identity.key").read_bytes(), None)
    assert isinstance(key, mldsa.MLDSA65PrivateKey)
    crt = x509.load_pem_x509_certificate((site_dir / "identity.crt").read_bytes())
    return SigningIdentity.from_chain("ML-DSA-65", key.private_bytes_raw(), [crt])


@contextlib.contextmanager
def _serving(site_dir: Path, log: list[str]) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``hybridkex serve --tls --once --echo`` on a free port: (port, process); its
    standard error goes to ``log`` (complete once the process has ended)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "hybridkex", "serve", "--tls", "--site", str(site_dir),
         "--listen", f"{HOST}:0", "--once", "--echo"],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while b"listening on " not in seen or not seen.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([process.stderr], [], [], max(remaining, 0))
            chunk = os.read(process.stderr.fileno(), 4096) if ready else b""
            assert chunk, f"hybridkex serve did not start listening: {seen.decode()}"
            seen += chunk
        line = next(x for x in seen.decode().splitlines() if "listening on " in x)
        yield int(line.rsplit(":", 1)[1]), process
    finally:
        if process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(TIMEOUT)
        if process.poll() is None:
            process.kill()
            process.wait()
        seen += process.stderr.read()
        process.stderr.close()
        log.extend(seen.decode(errors="replace").splitlines())


@pytest.mark.parametrize("cell", cells("test_tls_cli_serve"), ids=str)
def test_tls_cli_serve(cell: Cell, tls_peer: TLSPeer, tmp_path: Path) -> None:
    """Two sites made by the command line; the server site trusts the client's
    identity.crt (it demands a client certificate, mutual_auth being the default) and
    runs ``serve --tls``; the peer's client presents the client site's identity and
    trusts the server site's identity.crt."""
    server_dir, client_dir = tmp_path / SERVER, tmp_path / CLIENT
    _hybridkex("site", "init", str(server_dir), "--name", SERVER)
    _hybridkex("site", "init", str(client_dir), "--name", CLIENT)
    _hybridkex("site", "trust", str(server_dir), str(client_dir / "identity.crt"))
    server_certificate = x509.load_pem_x509_certificate(
        (server_dir / "identity.crt").read_bytes())
    assert isinstance(server_certificate.public_key(), mldsa.MLDSA65PublicKey)
    client = _site_identity(client_dir)
    # The peer is handed the site's own files, byte for byte.
    assert private_key_pem(client) == (client_dir / "identity.key").read_text()
    assert chain_pem(client) == (client_dir / "identity.crt").read_text()
    end = PeerEnd(groups=(cell.row.group,), identity=client,
                  anchor=server_certificate, servername=SERVER, message=MESSAGE)
    log: list[str] = []
    with _serving(server_dir, log) as (port, process):
        theirs = tls_peer.connect((HOST, port), end).result()
        process.wait(TIMEOUT)
    assert process.returncode == 0, log
    # The server's own account: the client's ML-DSA-65 signature, the group, a clean close.
    session = [line for line in log if f"session with {CLIENT}:" in line]
    assert session and "mldsa65" in session[0] and f"group {cell.row.group}" in session[0], log
    assert any(f"session with {CLIENT} closed cleanly" in line for line in log), log
    assert theirs.protocol == "TLSv1.3" and theirs.group == cell.row.group
    assert theirs.received == MESSAGE
    assert theirs.peer_certificate == server_certificate.public_bytes(Encoding.DER)
    assert theirs.authorized is True


# -- what the matrix relies on ----------------------------------------------------------------


def test_tls_matrix_names_match_hybridkex() -> None:
    assert tuple(GROUPS) == TLS_GROUP_NAMES
    assert TLS_SCHEMES == SIGNATURE_ALGORITHMS


def _tlslite_pure_mlkem() -> None:
    pure = {"mlkem512": 0x0200, "mlkem768": 0x0201, "mlkem1024": 0x0202}
    for name, code in pure.items():
        assert tlslite_constants.GroupName.toRepr(code) is None, name
        assert name not in tlslite_settings.ALL_CURVE_NAMES
        settings = tlslite_settings.HandshakeSettings()
        settings.eccCurves = [name]
        with pytest.raises(ValueError, match=r"(?i)curve"):
            settings.validate()
    assert set(tlslite_settings.CURVE_NAMES) >= {"x25519mlkem768", "secp256r1mlkem768",
                                                 "secp384r1mlkem1024"}


def _tlslite_mldsa() -> None:
    for code in (0x0904, 0x0905, 0x0906):
        assert tlslite_constants.SignatureScheme.toRepr((code >> 8, code & 0xFF)) is None
    names = [n.lower() for n in vars(tlslite_constants.SignatureScheme)]
    assert not [n for n in names if "mldsa" in n or "ml_dsa" in n or "dilithium" in n]
    leaf = x509.load_der_x509_certificate(leaf_der(pki("ML-DSA-65").identities[SERVER]))
    with pytest.raises((SyntaxError, KeyError, ValueError)):
        X509().parse(leaf.public_bytes(Encoding.PEM).decode())


def _tlslite_exporter_context() -> None:
    parameters = list(inspect.signature(TLSConnection.keyingMaterialExporter).parameters)
    assert parameters == ["self", "label", "length"], parameters


def _tlslite_exporter_client_auth() -> None:
    p = pki("Ed25519")
    peer = TlsliteTLS()
    label = (Exporter(TLS_EXPORTER_LABEL, None, 32),)
    for mutual in (False, True):
        results = [
            with_peer_server(peer, PeerEnd(identity=p.identities[SERVER], request_cert=mutual,
                                           exporters=label),
                             client_context(p, identity=mutual), SERVER, MESSAGE),
            with_peer_client(peer, PeerEnd(identity=p.identities[CLIENT] if mutual else None,
                                           exporters=label, message=MESSAGE),
                             server_context(p, mutual_auth=mutual)),
        ]
        for ours, theirs in results:
            assert (ours.exporters == theirs.exporters) is not mutual, mutual


def _tlslite_no_chain_validation() -> None:
    parameters = set(inspect.signature(TLSConnection.handshakeClientCert).parameters)
    assert not [p for p in parameters if any(w in p.lower() for w in ("ca", "trust", "anchor"))
                and p != "async_"], parameters
    # A client given no CA at all completes the handshake with a chain of unknown origin.
    p = untrusted_pki("Ed25519")
    _, theirs = with_peer_client(TlsliteTLS(), PeerEnd(servername=SERVER, message=MESSAGE),
                                    server_context(p, mutual_auth=False))
    assert theirs.peer_certificate == leaf_der(p.identities[SERVER])


def _node_psk_sha256(node: NodePeer) -> None:
    peer = NodeTLS(node)
    cipher = "TLS_AES_256_GCM_SHA384"
    key = qkd_key()
    # The PSK as Node.js holds it is SHA-256 whatever we call it (NodeTLS refuses to
    # pretend otherwise), so give it the key as a SHA-256 PSK against a SHA-384 peer.
    end = PeerEnd(psk=(key.key_id, key.key), message=MESSAGE)
    context, _ = our_psk_context(False, key, cipher)
    ours, _ = failing_with_peer_server(peer, end, context)
    assert isinstance(ours, TLSError), ours
    context, _ = our_psk_context(True, key, cipher)
    ours, _ = failing_with_peer_client(peer, end, context)
    assert isinstance(ours, TLSError), ours


@pytest.mark.parametrize("limitation", sorted(TLS_LIMITATIONS))
def test_tls_limitation_still_holds(limitation: str, request: pytest.FixtureRequest) -> None:
    """What makes the TLS tables' "not supported" cells true; fails once a peer changes."""
    if limitation == "tlslite-pure-mlkem":
        _tlslite_pure_mlkem()
    elif limitation == "tlslite-mldsa":
        _tlslite_mldsa()
    elif limitation == "tlslite-exporter-context":
        _tlslite_exporter_context()
    elif limitation == "tlslite-exporter-client-auth":
        _tlslite_exporter_client_auth()
    elif limitation == "tlslite-no-chain-validation":
        _tlslite_no_chain_validation()
    elif limitation == "node-psk-sha256":
        node = request.getfixturevalue("node")
        assert isinstance(node, NodePeer)
        _node_psk_sha256(node)
    else:
        raise AssertionError(f"no check for limitation {limitation!r}")


def test_tlslite_client_still_needs_certificate_compression_off() -> None:
    """With its default settings a tlslite-ng client compresses its certificate though
    the server's CertificateRequest offered no compression (it reads its own
    ClientHello's compress_certificate extension), and OpenSSL refuses the message.  The
    rows run it with certificate_compression_send = []; once this fails, drop that."""
    p = pki("Ed25519")
    end = PeerEnd(identity=p.identities[CLIENT], anchor=p.root, servername=SERVER,
                  message=MESSAGE, compress_certificates=True)
    ours, theirs = failing_with_peer_client(TlsliteTLS(), end, server_context(p))
    assert isinstance(ours, TLSProtocolError) and ours.alert == 10, ours  # unexpected_message
    assert "unexpected_message" in str(theirs)
