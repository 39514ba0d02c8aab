"""The TLS 1.3 peers behind one interface, and hybridkex.tls's end of each connection.

Two peers: Node.js's tls module (OpenSSL 3.5), driven through interop/node/tls.mjs in
the session's Node.js process, and tlslite-ng, run in a thread of this process.  Each
can listen for one connection (:meth:`TLSPeer.listen`) or connect
(:meth:`TLSPeer.connect`); both return at once, with a :class:`PeerConnection` whose
:meth:`~PeerConnection.result` waits for that connection to end and says what the peer
saw (:class:`PeerSaw`), or raises :class:`PeerTLSFailed` with the peer's own error.
In between, the test drives hybridkex.tls's end on loopback (:func:`with_peer_server`,
:func:`with_peer_client`).

The peer's server echoes what it receives and closes when the client does; its client
sends a message once the handshake is done, reads the echo, and closes.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from interop_node import NodePeer, PeerError, unb64

from hybridkex.primitives.signature import private_key_pem as signature_private_key_pem
from hybridkex.protocol import SigningIdentity
from hybridkex.tls import TLSContext, TLSSessionInfo, TLSSocket

with warnings.catch_warnings():
    # tlslite-ng's package __init__ imports its asyncore integration, deprecated.
    warnings.simplefilter("ignore", DeprecationWarning)
    from tlslite import HandshakeSettings, TLSConnection, X509CertChain, parsePEMKey
    from tlslite.constants import CipherSuite, GroupName

HOST = "127.0.0.1"
TIMEOUT = 10.0  # seconds, for every socket operation of either end

# hybridkex.tls's group names (OpenSSL's) -> tlslite-ng's, for the groups it has.
TLSLITE_GROUPS = {"X25519MLKEM768": "x25519mlkem768", "SecP256r1MLKEM768": "secp256r1mlkem768",
                  "SecP384r1MLKEM1024": "secp384r1mlkem1024"}


class PeerTLSFailed(Exception):
    """The peer's end of the connection failed; the message is the peer's error."""


class NotSupportedByPeer(Exception):
    """Asked of a peer that cannot do it (the matrix never asks)."""


@dataclass(frozen=True)
class Exporter:
    """One RFC 8446 exporter request; ``context`` None passes no context at all."""

    label: str
    context: bytes | None
    length: int


@dataclass(frozen=True)
class PeerEnd:
    """How the peer's end is set up."""

    groups: tuple[str, ...] = ("X25519MLKEM768",)
    identity: SigningIdentity | None = None  # the chain and key it presents
    anchor: x509.Certificate | None = None  # the CA it verifies the other end with
    request_cert: bool = False  # a server: demand and verify a client certificate
    servername: str | None = None  # a client: the name the server's certificate carries
    psk: tuple[str, bytes] | None = None  # (identity, key): the TLS 1.3 external PSK
    psk_hash: str = "sha256"  # tlslite-ng only; Node.js's PSKs are always SHA-256
    exporters: tuple[Exporter, ...] = ()
    message: bytes = b""  # a client: sent after the handshake, then the echo is read
    compress_certificates: bool = False  # tlslite-ng client: its default (see README)


@dataclass(frozen=True)
class PeerSaw:
    """What the peer's end reported about its connection."""

    protocol: str
    cipher: str  # the IANA name
    group: str | None  # OpenSSL's name; None where the peer cannot tell
    peer_certificate: bytes | None  # the other end's leaf certificate, DER
    exporters: list[bytes]  # in request order
    received: bytes  # a server: every byte that arrived; a client: the echo
    psk_identity: str | None  # the identity the server's callback saw, the client sent
    psk_used: bool | None  # the handshake used a PSK; None: the peer cannot tell
    authorized: bool | None  # the other end's chain verified; None: the peer does not verify


class PeerConnection(Protocol):
    def result(self) -> PeerSaw:
        """What the peer saw, once the connection has ended; PeerTLSFailed if it failed."""


class TLSPeer(Protocol):
    name: str

    def listen(self, end: PeerEnd) -> tuple[tuple[str, int], PeerConnection]:
        """A server for one connection, listening on loopback: its address."""

    def connect(self, address: tuple[str, int], end: PeerEnd) -> PeerConnection:
        """A client connecting to ``address`` in the background."""


# -- keys and certificates as the peers read them ----------------------------------------


def private_key_pem(identity: SigningIdentity) -> str:
    """The identity's private key as PKCS#8 PEM (ML-DSA in the seed form)."""
    return signature_private_key_pem(identity.scheme, identity.private_key).decode()


def certificate_pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(Encoding.PEM).decode()


def chain_pem(identity: SigningIdentity) -> str:
    """The identity's chain, leaf first, as PEM."""
    return "".join(certificate_pem(x509.load_der_x509_certificate(der))
                   for der in identity.certificates)


def leaf_der(identity: SigningIdentity) -> bytes:
    return bytes(identity.certificates[0])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- Node.js (OpenSSL 3.5) -----------------------------------------------------------------


class _NodeConnection:
    def __init__(self, node: NodePeer, handle: int) -> None:
        self._node = node
        self._handle = handle

    def result(self) -> PeerSaw:
        try:
            r = self._node.call("tls.result", handle=self._handle)
        except PeerError as exc:
            raise PeerTLSFailed(str(exc)) from exc
        certificate = r["peerCertificate"]
        return PeerSaw(
            protocol=str(r["protocol"]),
            cipher=str(r["cipher"]["standardName"]),
            group=None if r["group"] is None else str(r["group"]),
            peer_certificate=None if certificate is None else unb64(certificate),
            exporters=[unb64(e) for e in r["exporters"]],
            received=unb64(r["received"]),
            psk_identity=r["pskIdentity"],
            psk_used=bool(r["sessionReused"]),  # SSL_session_reused: 1 for a TLS 1.3 PSK
            authorized=bool(r["authorized"]),
        )


class NodeTLS:
    """Node.js 26's tls module, OpenSSL 3.5 (interop/node/tls.mjs)."""

    name = "openssl"

    def __init__(self, node: NodePeer) -> None:
        self.node = node

    @staticmethod
    def _args(end: PeerEnd) -> dict[str, Any]:
        args: dict[str, Any] = {
            "groups": ":".join(end.groups),
            "exporters": [{"label": e.label, "length": e.length,
                           **({} if e.context is None else {"context": _b64(e.context)})}
                          for e in end.exporters],
        }
        if end.identity is not None:
            args["key"] = private_key_pem(end.identity)
            args["cert"] = chain_pem(end.identity)
        if end.anchor is not None:
            args["ca"] = certificate_pem(end.anchor)
        if end.psk is not None and end.psk_hash != "sha256":
            raise NotSupportedByPeer("Node.js's PSKs are SHA-256 PSKs")
        return args

    def listen(self, end: PeerEnd) -> tuple[tuple[str, int], PeerConnection]:
        args = self._args(end)
        args["requestCert"] = end.request_cert
        if end.psk is not None:
            args["pskKeys"] = {end.psk[0]: _b64(end.psk[1])}
        r = self.node.call("tls.listen", **args)
        return (HOST, int(r["port"])), _NodeConnection(self.node, int(r["handle"]))

    def connect(self, address: tuple[str, int], end: PeerEnd) -> PeerConnection:
        args = self._args(end)
        args["port"] = address[1]
        args["message"] = end.message
        if end.servername is not None:
            args["servername"] = end.servername
        if end.psk is not None:
            args["psk"] = {"identity": end.psk[0], "key": _b64(end.psk[1])}
        r = self.node.call("tls.connect", **args)
        return _NodeConnection(self.node, int(r["handle"]))


# -- tlslite-ng (pure Python), in a thread -----------------------------------------------------


class _Thread:
    """One end run by tlslite-ng in a thread of its own."""

    def __init__(self, target: Callable[[], PeerSaw]) -> None:
        self._target = target
        self._saw: PeerSaw | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._saw = self._target()
        except BaseException as exc:  # reported by result()
            self._error = exc

    def result(self) -> PeerSaw:
        self._thread.join(3 * TIMEOUT)
        if self._thread.is_alive():
            raise PeerTLSFailed(f"tlslite-ng's end did not finish within {3 * TIMEOUT} s")
        if self._error is not None:
            raise PeerTLSFailed(f"{type(self._error).__name__}: {self._error}") from self._error
        assert self._saw is not None
        return self._saw


class TlsliteTLS:
    """tlslite-ng 0.8.2: TLS 1.3 in pure Python, ML-KEM through kyber-py."""

    name = "tlslite-ng"

    @staticmethod
    def settings(end: PeerEnd, *, client: bool) -> Any:
        settings = HandshakeSettings()
        settings.minVersion = settings.maxVersion = (3, 4)
        try:
            groups = [TLSLITE_GROUPS[g] for g in end.groups]
        except KeyError as exc:
            raise NotSupportedByPeer(f"tlslite-ng has no group {exc}") from None
        settings.eccCurves = groups
        settings.keyShares = groups[:1]
        settings.dhGroups = []
        if client and not end.compress_certificates:
            settings.certificate_compression_send = []
        if end.psk is not None:
            settings.pskConfigs = [(bytearray(end.psk[0].encode()), bytearray(end.psk[1]),
                                    end.psk_hash)]
            settings.psk_modes = ["psk_dhe_ke"]
        return settings

    @staticmethod
    def _credentials(end: PeerEnd) -> tuple[Any, Any]:
        if end.identity is None:
            return None, None
        chain = X509CertChain()
        chain.parsePemList(chain_pem(end.identity))
        return chain, parsePEMKey(private_key_pem(end.identity), private=True)

    @staticmethod
    def _exporters(conn: Any, end: PeerEnd) -> list[bytes]:
        out = []
        for e in end.exporters:
            if e.context:
                raise NotSupportedByPeer("tlslite-ng's exporter takes no context value")
            out.append(bytes(conn.keyingMaterialExporter(e.label.encode(), e.length)))
        return out

    @classmethod
    def _saw(cls, conn: Any, end: PeerEnd, *, server: bool) -> PeerSaw:
        """What the connection negotiated, read right after its handshake (tlslite-ng
        forgets the version at close); ``received`` is filled in later."""
        chain = conn.session.clientCertChain if server else conn.session.serverCertChain
        certificate = (bytes(chain.x509List[0].bytes)
                       if chain is not None and chain.getNumCerts() else None)
        group = GroupName.toRepr(conn.ecdhCurve)
        return PeerSaw(
            protocol="TLSv1.3" if conn.version == (3, 4) else str(conn.version),
            cipher=CipherSuite.ietfNames[conn.session.cipherSuite],
            group=next((ours for ours, theirs in TLSLITE_GROUPS.items() if theirs == group),
                       group),
            peer_certificate=certificate,
            exporters=cls._exporters(conn, end),
            received=b"",
            # a server cannot say which PSK identity it accepted (it holds only one)
            psk_identity=end.psk[0] if end.psk is not None and not server else None,
            psk_used=None,  # its `resumed` stays False for an external PSK
            authorized=None,
        )

    def listen(self, end: PeerEnd) -> tuple[tuple[str, int], PeerConnection]:
        listener = socket.create_server((HOST, 0))
        listener.settimeout(TIMEOUT)
        address = listener.getsockname()[:2]
        settings = self.settings(end, client=False)
        chain, key = self._credentials(end)

        def serve() -> PeerSaw:
            with listener:
                sock, _ = listener.accept()
            with sock:
                sock.settimeout(TIMEOUT)
                conn = TLSConnection(sock)
                conn.handshakeServer(certChain=chain, privateKey=key, settings=settings,
                                     reqCert=end.request_cert)
                saw = self._saw(conn, end, server=True)
                received = bytearray()
                while data := conn.read():
                    received += data
                    conn.write(data)
                with contextlib.suppress(OSError):
                    conn.close()
                return dataclasses.replace(saw, received=bytes(received))

        return (str(address[0]), int(address[1])), _Thread(serve)

    def connect(self, address: tuple[str, int], end: PeerEnd) -> PeerConnection:
        settings = self.settings(end, client=True)
        chain, key = self._credentials(end)
        sock = socket.create_connection(address, timeout=TIMEOUT)

        def run() -> PeerSaw:
            with sock:
                conn = TLSConnection(sock)
                conn.handshakeClientCert(chain, key, settings=settings,
                                         serverName=end.servername)
                saw = self._saw(conn, end, server=False)
                conn.write(end.message)
                received = bytearray()
                while len(received) < len(end.message) and (data := conn.read()):
                    received += data
                with contextlib.suppress(OSError):
                    conn.close()
                return dataclasses.replace(saw, received=bytes(received))

        return _Thread(run)


# -- hybridkex.tls's end -------------------------------------------------------------------


@dataclass(frozen=True)
class OurSaw:
    """What hybridkex.tls's end saw."""

    info: TLSSessionInfo
    exporters: list[bytes]
    received: bytes  # the server: every byte that arrived; the client: the echo


def _our_exporters(sock: TLSSocket, exporters: tuple[Exporter, ...]) -> list[bytes]:
    return [sock.export_keying_material(e.label, e.context or b"", e.length) for e in exporters]


def our_client(context: TLSContext, address: tuple[str, int], peer: str, message: bytes,
               exporters: tuple[Exporter, ...] = ()) -> OurSaw:
    """Connect, export, send ``message``, read its echo, close cleanly both ways."""
    with context.wrap_socket(socket.create_connection(address, timeout=TIMEOUT),
                             peer=peer) as sock:
        info = sock.session_info()
        exported = _our_exporters(sock, exporters)
        sock.sendall(message)
        echo = bytearray()
        while len(echo) < len(message) and (data := sock.recv(1 << 16)):
            echo += data
        sock.shutdown(socket.SHUT_WR)  # close_notify; the peer then closes too
        rest = sock.recv(1 << 16)
        assert rest == b"", rest
        return OurSaw(info, exported, bytes(echo))


def our_server(context: TLSContext, sock: socket.socket,
               exporters: tuple[Exporter, ...] = ()) -> OurSaw:
    """Handshake on an accepted socket, export, echo until the client's close_notify."""
    sock.settimeout(TIMEOUT)
    with context.wrap_socket(sock, server_side=True) as tls:
        info = tls.session_info()
        exported = _our_exporters(tls, exporters)
        received = bytearray()
        while data := tls.recv(1 << 16):
            received += data
            tls.sendall(data)
        return OurSaw(info, exported, bytes(received))


def with_peer_server(peer: TLSPeer, end: PeerEnd, context: TLSContext, server_site: str,
                     message: bytes) -> tuple[OurSaw, PeerSaw]:
    """hybridkex.tls's client against the peer's server."""
    address, connection = peer.listen(end)
    with _collect_on_error(connection):
        ours = our_client(context, address, server_site, message, end.exporters)
    return ours, connection.result()


def with_peer_client(peer: TLSPeer, end: PeerEnd, context: TLSContext) -> tuple[OurSaw,
                                                                                 PeerSaw]:
    """The peer's client against hybridkex.tls's server."""
    with socket.create_server((HOST, 0)) as listener:
        listener.settimeout(TIMEOUT)
        connection = peer.connect(listener.getsockname()[:2], end)
        with _collect_on_error(connection):
            sock, _ = listener.accept()
            ours = our_server(context, sock, end.exporters)
    return ours, connection.result()


@contextlib.contextmanager
def _collect_on_error(connection: PeerConnection) -> Iterator[None]:
    """If our end fails, still wait for the peer's (so nothing outlives the test); our
    error is the one raised, with the peer's added as a note."""
    try:
        yield
    except BaseException as exc:
        try:
            connection.result()
        except PeerTLSFailed as peer_error:
            exc.add_note(f"the peer's end: {peer_error}")
        raise
