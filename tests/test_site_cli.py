"""Sites and the command line: ``site init``, ``site pair``, ``serve``, ``connect``, ``demo``.

serve and connect run as real processes (``python -m hybridkex``) on loopback; a
proxy written here (threads) sits between them to alter bytes and to record a
client's stream for replay.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import NameOID

from hybridkex import cli, errors
from hybridkex.errors import InvalidParameter
from hybridkex.protocol import SessionInfo
from hybridkex.site import COMPOSITE, Site, SiteSettings, load_pin, pair
from hybridkex.transport import Context
from tests.support import Process, self_signed

TIMEOUT = 60
ID_ML_DSA_65 = bytes.fromhex("0609608648016503040312")  # OID 2.16.840.1.101.3.4.3.18, DER


def hybridkex(*args: str, input: bytes = b"", timeout: float = TIMEOUT
              ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "hybridkex", *args], input=input,
                          capture_output=True, timeout=timeout, check=False)


# -- what a site loads ----------------------------------------------------------------------

_REPORT_LOADED = ("\nimport sys\nsys.stderr.write(repr(sorted(m for m in sys.modules "
                  "if m == 'numpy' or m.startswith(('numpy.', 'hybridkex.qkd', "
                  "'hybridkex.demos')))))\n")
_RUN_CLI = "import contextlib\nfrom hybridkex.cli import main\n" \
           "with contextlib.suppress(SystemExit):\n    main({argv!r})"


@pytest.mark.parametrize("code", [
    "import hybridkex.site",
    "from hybridkex.site import Site, pair, PairReport, SIGNATURE_SCHEMES",
    *(_RUN_CLI.format(argv=argv) for argv in (["serve", "--help"], ["connect", "--help"],
                                              ["site", "pair", "--help"], ["--help"])),
])
def test_sites_serve_and_connect_load_no_qkd_link(code: str) -> None:
    """The simulated link (numpy) loads when a site pairs, not for every serve/connect."""
    result = subprocess.run([sys.executable, "-c", code + _REPORT_LOADED],
                            capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "[]"


def test_the_qkd_commands_still_get_their_options() -> None:
    result = hybridkex("qkd", "sweep", "--help")
    assert result.returncode == 0 and b"--model {infinite-decoy," in result.stdout
    result = hybridkex("qkd", "sweep", "--from-km", "0", "--to-km", "1", "--step-km", "1",
                       "--model", "bogus")
    assert result.returncode == 2 and b"invalid choice: 'bogus'" in result.stderr


# -- site init ------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["ML-DSA-65", "Ed25519", "ECDSA-P256", COMPOSITE])
def test_site_init_writes_the_files_with_safe_permissions(tmp_path: Path, scheme: str) -> None:
    directory = tmp_path / "site"
    assert cli.main(["site", "init", str(directory), "--name", "alpha", "--sig", scheme]) == 0
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "identity.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / "keys.db").stat().st_mode) == 0o600
    assert (directory / "trust").is_dir() and not list((directory / "trust").iterdir())
    settings = SiteSettings.from_toml((directory / "site.toml").read_text(), "site.toml")
    assert (settings.name, settings.signature) == ("alpha", scheme)
    site = Site.load(directory)
    try:
        if scheme == COMPOSITE:
            assert not (directory / "identity.crt").exists()
            assert load_pin(directory / "identity.pin") == ("alpha", scheme,
                                                             site.identity.public_key)
            assert site.identity.certificates == ()
        else:
            assert not (directory / "identity.pin").exists()
            cert = x509.load_pem_x509_certificate((directory / "identity.crt").read_bytes())
            assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alpha"
            assert cert.issuer == cert.subject  # self-signed
            assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
            assert site.identity.certificates == (cert.public_bytes(Encoding.DER),)
    finally:
        site.close()


def test_ml_dsa_identity_key_is_pkcs8_in_seed_form(tmp_path: Path) -> None:
    directory = tmp_path / "site"
    Site.init(directory, "alpha", "ML-DSA-65").close()
    pem = (directory / "identity.key").read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    key = load_pem_private_key(pem, password=None)
    assert isinstance(key, mldsa.MLDSA65PrivateKey)
    seed = key.private_bytes_raw()
    der = key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
    # PrivateKeyInfo { version 0, AlgorithmIdentifier { id-ml-dsa-65 }, OCTET STRING {
    # [0] IMPLICIT OCTET STRING seed } }: RFC 9881's seed-only form, 54 bytes.
    assert len(der) == 54 and ID_ML_DSA_65 in der
    assert der[-36:-32] == bytes([0x04, 0x22, 0x80, 0x20]) and der[-32:] == seed
    # the round trip: the file is exactly that encoding, and gives the certificate's key
    assert key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()) == pem
    with Site.load(directory) as site:
        assert site.identity.private_key == seed
        cert = x509.load_pem_x509_certificate((directory / "identity.crt").read_bytes())
        assert cert.public_key() == key.public_key()
        assert site.identity.public_key == key.public_key().public_bytes_raw()


def test_composite_identity_key_holds_both_seeds(tmp_path: Path) -> None:
    directory = tmp_path / "site"
    Site.init(directory, "alpha", COMPOSITE).close()
    blocks = re.findall(rb"-----BEGIN PRIVATE KEY-----.*?-----END PRIVATE KEY-----\n",
                        (directory / "identity.key").read_bytes(), re.S)
    first, second = (load_pem_private_key(b, password=None) for b in blocks)
    assert isinstance(first, mldsa.MLDSA65PrivateKey)
    assert isinstance(second, ed25519.Ed25519PrivateKey)
    with Site.load(directory) as site:
        assert site.identity.private_key == first.private_bytes_raw() + \
            second.private_bytes_raw()


def test_site_init_refuses_what_it_must(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    assert cli.main(["site", "init", str(tmp_path / "busy"), "--name", "alpha"]) == 1
    assert cli.main(["site", "init", str(tmp_path / "x"), "--name", "../evil"]) == 1
    assert not (tmp_path / "x").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("hybridkex: ") for line in err)
    assert "not an empty directory" in err[0] and "invalid site name" in err[1]


def test_site_load_refuses_a_key_readable_by_others(tmp_path: Path) -> None:
    Site.init(tmp_path / "site", "alpha").close()
    os.chmod(tmp_path / "site" / "identity.key", 0o644)
    with pytest.raises(InvalidParameter, match="chmod 600"):
        Site.load(tmp_path / "site")


def test_site_toml_round_trips_awkward_strings(tmp_path: Path) -> None:
    settings = SiteSettings("alpha", "Ed25519", "x509-self-signed", auth="psk",
                            links={"peer.b": {"note": 'quote " back\\slash \x7f del é \n',
                                              "distance_km": 12.5, "simulated": True}})
    again = SiteSettings.from_toml(settings.to_toml(), "test")
    assert again == settings
    with pytest.raises(InvalidParameter, match="unknown setting"):
        SiteSettings.from_toml("sutes = []\n" + settings.to_toml(), "test")


def test_ca_issued_sites_trust_the_ca(tmp_path: Path) -> None:
    ca = self_signed("Ed25519", "test network CA")
    ca.write(tmp_path, "ca")
    for site_name in ("alpha", "beta"):
        assert cli.main(["site", "init", str(tmp_path / site_name), "--name", site_name,
                         "--ca-cert", str(tmp_path / "ca.pem"),
                         "--ca-key", str(tmp_path / "ca.key")]) == 0
        assert cli.main(["site", "trust", str(tmp_path / site_name),
                         str(tmp_path / "ca.pem")]) == 0
    with Site.load(tmp_path / "alpha") as a, Site.load(tmp_path / "beta") as b:
        assert a.peers() == [] and len(a.trust_store().anchors) == 1
        leaf = x509.load_pem_x509_certificate((tmp_path / "alpha" / "identity.crt").read_bytes())
        assert leaf.issuer == ca.certificate.subject
        # No QKD keys: a policy that accepts ML-KEM alone lets the CA chain be tested.
        client, server = _session_pair(a.context(security="at-least-pq", auth="signature"),
                                       b.context(security="at-least-pq"), "beta")
        assert client.peer.kind == "x509" and client.peer.subject == "CN=beta"
        assert server.peer.kind == "x509" and server.peer.subject == "CN=alpha"
        assert client.fallback is not None and not client.qkd


def _session_pair(client_ctx: Context, server_ctx: Context, peer: str
                  ) -> tuple[SessionInfo, SessionInfo]:
    """One handshake over a socketpair; both sides' session_info."""
    left, right = socket.socketpair()
    result: dict[str, SessionInfo] = {}

    def serve() -> None:
        with server_ctx.wrap_socket(right, server_side=True) as s:
            result["server"] = s.session_info()
            assert s.recv(10) == b"ping"
            s.sendall(b"pong")

    thread = threading.Thread(target=serve)
    thread.start()
    with client_ctx.wrap_socket(left, peer=peer) as c:
        info = c.session_info()
        c.sendall(b"ping")
        assert c.recv(10) == b"pong"
    thread.join(TIMEOUT)
    return info, result["server"]


def test_pairing_sites_with_different_schemes(tmp_path: Path) -> None:
    with Site.init(tmp_path / "a", "alpha", COMPOSITE) as a, \
            Site.init(tmp_path / "b", "beta", "ECDSA-P256") as b:
        report = pair(a, b, 25.0, keys=1)
        assert report.rounds[0].auth_mode == f"signature ({COMPOSITE} / ECDSA-P256)"
        assert a.peers() == ["beta"] and b.peers() == ["alpha"]
        assert (tmp_path / "a" / "trust" / "beta.crt").is_file()
        assert (tmp_path / "b" / "trust" / "alpha.pin").is_file()
        client, server = _session_pair(a.context(auth="signature"), b.context(), "beta")
        assert client.peer.scheme == "ECDSA-P256" and client.peer.kind == "x509"
        assert server.peer.scheme == COMPOSITE and server.peer.kind == "raw-public-key"
        assert client.qkd_key_ids == server.qkd_key_ids and client.qkd
        # Trust never changes silently: a different key under a trusted name is refused.
        with Site.init(tmp_path / "c", "beta") as impostor, \
                pytest.raises(InvalidParameter, match="different identity for beta"):
            a.trust(impostor.public_identity_file)


# -- a paired pair of sites, a server, and a proxy -----------------------------------------------


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("sites")
    a, b = base / "site-a", base / "site-b"
    for directory, name in ((a, "site-a"), (b, "site-b")):
        result = hybridkex("site", "init", str(directory), "--name", name)
        assert result.returncode == 0, result.stderr
    result = hybridkex("site", "pair", str(a), str(b), "--distance-km", "25", "--keys", "200")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "paired site-a and site-b" in out and "SIMULATION" in out
    assert "SIMULATION" in result.stderr.decode()  # the progress display says so too
    return a, b


def test_pair_fills_both_stores_with_the_same_key_ids(sites: tuple[Path, Path]) -> None:
    a, b = sites
    rows = {}
    for directory in (a, b):
        with contextlib.closing(sqlite3.connect(directory / "keys.db")) as db:
            rows[directory] = dict(db.execute("SELECT key_id, initiator FROM qkd_keys"))
    assert len(rows[a]) >= 200
    assert rows[a].keys() == rows[b].keys()
    # each key is the initiator's to take at exactly one site
    assert all(rows[a][k] != rows[b][k] for k in rows[a])
    assert (b / "trust" / "site-a.crt").is_file() and (a / "trust" / "site-b.crt").is_file()
    with Site.load(a) as site:
        assert site.link_info("site-b")["simulated"] is True
        assert "SIMULATED" in site.qkd_source_label("site-b")


def test_a_seed_never_makes_the_keys_pairing_deposits(tmp_path: Path) -> None:
    """Two unrelated pairings with the same --seed: different key IDs, different keys."""
    deposited = []
    for run in ("one", "two"):
        a, b = tmp_path / run / "a", tmp_path / run / "b"
        for directory, name in ((a, "site-a"), (b, "site-b")):
            assert hybridkex("site", "init", str(directory), "--name", name).returncode == 0
        result = hybridkex("site", "pair", str(a), str(b), "--keys", "1",
                           "--pulses-per-round", "3e8", "--seed", "1234", "--json")
        assert result.returncode == 0, result.stderr
        notes = [line for line in result.stderr.decode().splitlines() if "--seed" in line]
        assert len(notes) == 1 and "ignored" in notes[0] and "OS randomness" in notes[0]
        with contextlib.closing(sqlite3.connect(a / "keys.db")) as db:
            deposited.append(dict(db.execute("SELECT key_id, material FROM qkd_keys")))
    first, second = deposited
    assert first and second
    assert not first.keys() & second.keys()
    assert not set(first.values()) & set(second.values())


class Server(Process):
    """``hybridkex serve`` in a subprocess; its stderr lines collected as they come."""

    def __init__(self, *args: str) -> None:
        super().__init__([sys.executable, "-m", "hybridkex", "serve", *args], "listening on ",
                         timeout=TIMEOUT)
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.first)
        assert match, self.first
        self.port = int(match.group(1))


@pytest.fixture(scope="module")
def echo_server(sites: tuple[Path, Path]) -> Iterator[Server]:
    server = Server("--site", str(sites[1]), "--listen", "127.0.0.1:0", "--echo")
    yield server
    assert server.stop() == 0
    assert "site site-b stopped" in server.lines[-1]


class Proxy:
    """A TCP proxy that records the client's bytes and may flip one bit in one direction."""

    def __init__(self, upstream_port: int, tamper: tuple[str, int] | None = None) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.tamper = tamper  # ("c2s" | "s2c", byte offset)
        self.client_bytes = bytearray()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            client, _ = self.listener.accept()
            server = socket.create_connection(self.upstream)
            for direction, src, dst in (("c2s", client, server), ("s2c", server, client)):
                t = threading.Thread(target=self._pump, args=(direction, src, dst), daemon=True)
                t.start()
                self.threads.append(t)

    def _pump(self, direction: str, src: socket.socket, dst: socket.socket) -> None:
        seen = 0
        try:
            while chunk := src.recv(65536):
                data = bytearray(chunk)
                if self.tamper and self.tamper[0] == direction:
                    offset = self.tamper[1] - seen
                    if 0 <= offset < len(data):
                        data[offset] ^= 0x01
                seen += len(data)
                if direction == "c2s":
                    self.client_bytes += chunk
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for t in self.threads:
            t.join(TIMEOUT)
        self.listener.close()


def connect(port: int, site: Path, *args: str, data: bytes = b""
            ) -> subprocess.CompletedProcess[bytes]:
    return hybridkex("connect", f"127.0.0.1:{port}", "--site", str(site), *args, input=data)


def open_session(port: int, site: Path, line: bytes) -> subprocess.Popen[bytes]:
    """``hybridkex connect`` to the echo server at ``port``, left running with its session
    open: ``line`` has been there and back.  Its stdin stays open; the caller ends it."""
    client = subprocess.Popen([sys.executable, "-m", "hybridkex", "connect",
                               f"127.0.0.1:{port}", "--site", str(site)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(line)
        client.stdin.flush()
        assert client.stdout.readline() == line  # the session is up
    except BaseException:
        client.kill()
        raise
    return client


# -- serve and connect ---------------------------------------------------------------------------


def test_echo_round_trip(sites: tuple[Path, Path], echo_server: Server) -> None:
    data = os.urandom(200_000)
    result = connect(echo_server.port, sites[0], data=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data
    assert result.stderr == b""


@pytest.mark.parametrize("auth", ["signature", "psk"])
def test_connect_with_each_authentication_mode(sites: tuple[Path, Path], echo_server: Server,
                                               auth: str) -> None:
    start = len(echo_server.lines)
    result = connect(echo_server.port, sites[0], "--auth", auth, "--verbose",
                     data=b"hello, site-b\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello, site-b\n"
    err = result.stderr.decode()
    assert re.search(rf"authentication\s+{auth}", err)
    assert "X25519 + ML-KEM-768 + QKD key" in err and "SIMULATED QKD link" in err
    assert re.search(r"QKD key IDs\s+[0-9a-f-]{36}", err)
    assert re.search(r"pool keys spent\s+" + ("4" if auth == "psk" else "1") + " ", err)
    assert "fallback: none" in err and "closed cleanly" in err
    if auth == "signature":
        assert "x509 ML-DSA-65, subject CN=site-b" in err
    line = echo_server.wait_for("closed cleanly", start)
    assert "14 bytes in, 14 out" in line
    assert f"{auth} authentication" in echo_server.wait_for("session with site-a:", start)


@pytest.mark.parametrize(("direction", "offset"), [("c2s", 150_000), ("s2c", 150_000),
                                                   ("c2s", 100), ("s2c", 100)])
def test_an_altered_byte_ends_the_session(sites: tuple[Path, Path], echo_server: Server,
                                          direction: str, offset: int) -> None:
    data = os.urandom(300_000)
    proxy = Proxy(echo_server.port, (direction, offset))
    try:
        result = connect(proxy.port, sites[0], data=data)
    finally:
        proxy.close()
    assert result.returncode == (4 if offset < 1000 else 5), result.stderr
    err = result.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("hybridkex connect: "), err
    match = re.fullmatch(r"hybridkex connect: (handshake|session) with site-b failed: "
                         r"(\w+): .+\n", err)
    assert match and match.group(2) in errors.__all__, err  # a typed hybridkex error
    # Only authenticated data reached stdout: a proper prefix of what was sent.
    assert len(result.stdout) < len(data) and data.startswith(result.stdout)


def _records(stream: bytes) -> list[int]:
    """The content types of the HKX/1 records in ``stream`` (type(1) | length(2) | body)."""
    types, pos = [], 0
    while pos + 3 <= len(stream):
        types.append(stream[pos])
        pos += 3 + int.from_bytes(stream[pos + 1:pos + 3], "big")
    return types


def _replay(port: int, recorded: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(recorded)
        s.shutdown(socket.SHUT_WR)
        answer = bytearray()
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                answer += chunk
    return bytes(answer)


def test_a_replayed_client_stream_is_refused(sites: tuple[Path, Path],
                                             echo_server: Server) -> None:
    proxy = Proxy(echo_server.port)
    try:
        first = connect(proxy.port, sites[0], data=b"secret message")
    finally:
        proxy.close()
    assert first.returncode == 0 and first.stdout == b"secret message"
    recorded = bytes(proxy.client_bytes)

    # The same server: its replay cache knows the ClientHello.
    start = len(echo_server.lines)
    answer = _replay(echo_server.port, recorded)
    assert set(_records(answer)) <= {21}  # alerts only: no ServerHello, no data
    assert "ReplayDetected" in echo_server.wait_for("handshake failed", start)

    # A restarted server (empty replay cache): the QKD pool has delivered those keys.
    fresh = Server("--site", str(sites[1]), "--listen", "127.0.0.1:0", "--echo", "--once")
    answer = _replay(fresh.port, recorded)
    assert fresh.wait() == 4  # --once: the status of its one connection
    assert set(_records(answer)) <= {21}
    assert "QKDKeyRefused" in fresh.wait_for("handshake failed")


def test_serve_without_echo_writes_what_it_receives(sites: tuple[Path, Path]) -> None:
    server = Server("--site", str(sites[1]), "--listen", "127.0.0.1:0", "--once")
    data = os.urandom(50_000)
    result = connect(server.port, sites[0], data=data)
    assert result.returncode == 0 and result.stdout == b"", result.stderr
    assert server.wait() == 0
    assert server.process.stdout is not None
    assert server.process.stdout.read() == data


def test_sigterm_closes_open_sessions_with_close_notify(sites: tuple[Path, Path]) -> None:
    # --grace 0: the open session is closed at once (test_cli_channel.py waits for one)
    server = Server("--site", str(sites[1]), "--listen", "127.0.0.1:0", "--echo",
                    "--grace", "0")
    client = open_session(server.port, sites[0], b"still typing\n")
    try:
        assert server.stop() == 0
        out, err = client.communicate(timeout=TIMEOUT)  # its stdin is still open
    finally:
        client.kill()
    assert client.returncode == 0 and out == b"" and err == b""
    # the server's close_notify, then the client's answer (or the server's shutdown) ends it
    assert re.search(r"site-a closed (cleanly|by server shutdown)",
                     server.wait_for("site-a closed"))


def test_connect_failures_are_one_line(sites: tuple[Path, Path], tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as unused:
        port = unused.getsockname()[1]
    result = connect(port, sites[0])
    assert result.returncode == 3
    assert result.stderr.decode().startswith("hybridkex connect: cannot connect")
    result = connect(port, tmp_path / "nowhere")
    assert result.returncode == 1 and result.stderr.count(b"\n") == 1
    assert b"not a site directory" in result.stderr


def test_the_peer_must_be_named_when_there_are_several(sites: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    Site.init(tmp_path / "c", "site-c").close()
    Site.init(tmp_path / "d", "site-d").close()
    with Site.load(tmp_path / "c") as c:
        c.trust(sites[0] / "identity.crt")
        c.trust(tmp_path / "d" / "identity.crt")
        assert c.peers() == ["site-a", "site-d"]
        with pytest.raises(InvalidParameter, match="--peer"):
            c.default_peer()


# -- the demo ------------------------------------------------------------------------------------


def test_demo_json() -> None:
    started = time.monotonic()
    result = hybridkex("demo", "--json", timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    r = json.loads(result.stdout)
    assert set(r) == {"simulation", "qkd_link_simulated", "sites", "qkd_link", "kme",
                      "sessions", "pool", "timings_s", "ok"}
    assert r["kme"] is None  # the keys came from keys.db
    assert r["ok"] is True and r["qkd_link_simulated"] is True
    assert "SIMULATION" in r["simulation"] and r["qkd_link"]["simulated"] is True
    assert set(r["sites"]) == {"site-a", "site-b"}
    link = r["qkd_link"]
    assert link["distance_km"] == 25 and link["keys_deposited"] >= 500
    assert link["round_auth"][0].startswith("signature")
    sessions = r["sessions"]
    assert [s["auth_mode"] for s in sessions] == ["signature", "psk", "psk", "psk"]
    ids = set()
    for s in sessions:
        assert len(s["qkd_key_ids"]) == 1 and len(s["rekey_qkd_key_ids"]) == 1
        ids.update(s["qkd_key_ids"] + s["rekey_qkd_key_ids"])
        assert s["kems"] == ["X25519", "ML-KEM-768"] and s["fallback"] is None
        assert s["echo_ok"] and s["both_sides_agree"]
        psk = s["auth_mode"] == "psk"
        assert s["pool_keys"] == {"handshake": 4 if psk else 1, "authentication": 3 if psk else 0,
                                  "key_schedule": 1, "rekeys": 1, "total": 5 if psk else 2}
        assert s["peer"]["site"] == "site-b" and s["server_saw"]["site"] == "site-a"
        assert 0 < s["handshake_ms"] <= s["session_ms"]
    assert len(ids) == 2 * len(sessions)  # no QKD key used twice
    assert sessions[0]["peer"]["kind"] == "x509" and sessions[1]["peer"]["kind"] == "psk"
    pool = r["pool"]
    assert pool["keys_used"] == 17 and pool["spent_on_authentication"] == 9
    assert pool["before"]["site-b"]["to_take"] == pool["after"]["site-b"]["to_take"]
    assert r["timings_s"]["total"] < 60 and elapsed < 60
