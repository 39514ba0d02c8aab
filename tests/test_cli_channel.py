"""The command line as a user meets it: ``serve --forward`` and ``connect --listen-local``
carrying real applications between two sites (HKX/1 and ``--tls``), the connection
limit and the shutdown grace period, the spent-key report of failed handshakes, and
every CLI error the issue lists, each one line that says what happened.

Processes are real (``python -m hybridkex``, ``python -m http.server``) on loopback.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hybridkex import cli
from hybridkex.protocol import ClientConnection
from hybridkex.qkd import analytic
from hybridkex.site import Site
from tests.loopback import half_close, read_to_the_end
from tests.support import Process as Process  # also imported from here by other tests
from tests.test_site_cli import Server, hybridkex, open_session

TIMEOUT = 30
HOST = "127.0.0.1"
SPENT = re.compile(r"(\d+) pool keys? consumed, not returned: a key that has entered a "
                   r"handshake is never used again")


def one_line(stderr: bytes) -> str:
    """The whole of stderr, which must be exactly one line."""
    text = stderr.decode()
    assert text.endswith("\n") and text.count("\n") == 1, text
    return text


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """site-a and site-b, paired over the simulated link; site-c, trusted by nobody."""
    base = tmp_path_factory.mktemp("channel-sites")
    a, b, c = base / "site-a", base / "site-b", base / "site-c"
    for directory, name in ((a, "site-a"), (b, "site-b"), (c, "site-c")):
        result = hybridkex("site", "init", str(directory), "--name", name)
        assert result.returncode == 0, result.stderr
    result = hybridkex("site", "pair", str(a), str(b), "--keys", "300")
    assert result.returncode == 0, result.stderr
    return a, b, c


def pool(site: Path, peer: str) -> tuple[int, int]:
    with Site.load(site) as s:
        status = s.pool_status(peer)
        return status.available_to_take, status.available_to_fetch


def port_in(line: str, after: str) -> int:
    match = re.search(re.escape(after) + r"127\.0\.0\.1:(\d+)", line)
    assert match, line
    return int(match.group(1))


@contextlib.contextmanager
def forwarding(sites: tuple[Path, Path, Path], target: int, *extra: str
               ) -> Iterator[tuple[int, Process, Process]]:
    """serve --forward to ``target`` (site-b), connect --listen-local (site-a)."""
    a, b, _ = sites
    server = Process([sys.executable, "-m", "hybridkex", "serve", "--site", str(b),
                      "--listen", f"{HOST}:0", "--forward", f"{HOST}:{target}", *extra],
                     "listening on ", timeout=TIMEOUT)
    port = port_in(server.first, "listening on ")
    client = Process([sys.executable, "-m", "hybridkex", "connect", "--site", str(a),
                      "--listen-local", f"{HOST}:0", *extra, f"{HOST}:{port}"], "forwarding ",
                     timeout=TIMEOUT)
    try:
        yield port_in(client.first, "forwarding "), server, client
    finally:
        assert client.stop() == 0, client.lines
        assert server.stop() == 0, server.lines
        assert "site site-b stopped" in server.lines[-1]
        assert "site site-a stopped" in client.lines[-1]


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[int]:
    """``python -m http.server``: an application that knows nothing of hybridkex."""
    process = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "--bind", HOST,
                                "0"], cwd=directory, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        match = re.search(r"port (\d+)", line)
        assert match, line
        yield int(match.group(1))
    finally:
        process.terminate()
        process.wait(TIMEOUT)


@contextlib.contextmanager
def answer_after_eof() -> Iterator[int]:
    """A raw socket service: reads to its client's end of file, answers, closes."""
    listener = socket.create_server((HOST, 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with conn:
                    data = bytearray()
                    while chunk := conn.recv(1 << 16):
                        data += chunk
                    conn.sendall(b"got %d bytes: " % len(data) + bytes(data[:16]))

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


# -- forwarding real applications -------------------------------------------------------------


@pytest.mark.parametrize("protocol", [(), ("--tls",), ("--tls", "--tls-mode", "qkd-psk")],
                         ids=["hkx", "tls", "tls-qkd-psk"])
def test_an_http_server_and_client_through_two_sites(sites: tuple[Path, Path, Path],
                                                     tmp_path: Path,
                                                     protocol: tuple[str, ...]) -> None:
    (tmp_path / "index.html").write_text("<h1>site-b's intranet</h1>\n")
    body = bytes(range(256)) * 2000
    (tmp_path / "data.bin").write_bytes(body)
    with http_server(tmp_path) as http_port, \
            forwarding(sites, http_port, *protocol) as (local, server, client):
        for path, expected in (("/index.html", b"<h1>site-b's intranet</h1>\n"),
                               ("/data.bin", body)):
            with urllib.request.urlopen(f"http://{HOST}:{local}{path}",
                                        timeout=TIMEOUT) as response:
                assert response.status == 200 and response.read() == expected
        opened = server.wait_for("session with site-a:")
        closed = server.wait_for("session with site-a closed cleanly")
        mine = client.wait_for("session with site-b:")
        client.wait_for("session with site-b closed cleanly")
        if protocol == ("--tls",):
            assert "certificate authentication (mldsa65)" in opened and "QKD key none" in opened
            assert "0 pool keys spent" in closed
        else:  # what protected it, where its key came from, and what is left
            assert re.search(r"QKD key [0-9a-f-]{36}", opened)
            assert "SIMULATED QKD link" in opened and "SIMULATED QKD link" in mine
            assert re.search(r"pool with site-a: \d+ keys to take, \d+ to fetch", opened)
            assert re.search(r"pool with site-b: \d+ keys to take", mine)
        assert ("ML-KEM-768" in opened and "X25519" in opened)


@pytest.mark.parametrize("protocol", [(), ("--tls",)], ids=["hkx", "tls"])
def test_half_close_through_the_cli(sites: tuple[Path, Path, Path],
                                    protocol: tuple[str, ...]) -> None:
    data = b"0123456789abcdef" * 100_000
    with answer_after_eof() as target, forwarding(sites, target, *protocol) as (local, _, _):
        assert half_close(local, data, timeout=TIMEOUT) == b"got 1600000 bytes: 0123456789abcdef"


def test_max_connections_refuses_the_one_too_many(sites: tuple[Path, Path, Path]) -> None:
    a, b, _ = sites
    server = Server("--site", str(b), "--listen", f"{HOST}:0", "--echo",
                    "--max-connections", "1")
    try:
        holder = open_session(server.port, a, b"held\n")  # one channel is open
        try:
            assert holder.stdin is not None
            started = time.monotonic()
            refused = hybridkex("connect", f"{HOST}:{server.port}", "--site", str(a),
                                input=b"more\n")
            assert time.monotonic() - started < 10  # refused at once, not queued
            assert refused.returncode == 4
            line = one_line(refused.stderr)
            assert "server_busy" in line and "connection limit" in line, line
            assert "refused: 1 channel open, the limit (--max-connections 1)" in \
                server.wait_for("refused")
            holder.stdin.close()
            assert holder.wait(TIMEOUT) == 0
            again = hybridkex("connect", f"{HOST}:{server.port}", "--site", str(a),
                              input=b"again\n")
            assert again.returncode == 0 and again.stdout == b"again\n", again.stderr
        finally:
            holder.kill()
    finally:
        assert server.stop() == 0


def test_sigterm_lets_open_streams_finish_within_the_grace_period(
        sites: tuple[Path, Path, Path]) -> None:
    with answer_after_eof() as target, \
            forwarding(sites, target, "--grace", "20") as (local, server, _):
        with socket.create_connection((HOST, local), timeout=TIMEOUT) as s:
            s.sendall(b"before the signal")
            server.wait_for("session with site-a:")
            server.process.send_signal(signal.SIGTERM)
            assert "1 channel open get up to 20 s to finish" in server.wait_for("stopping")
            s.sendall(b", and after it")
            s.shutdown(socket.SHUT_WR)
            assert s.recv(100) == b"got 31 bytes: before the signa"
        assert server.process.wait(TIMEOUT) == 0
        server.wait_for("closed cleanly")


def test_the_grace_period_ends_with_the_stream_cut(sites: tuple[Path, Path, Path]) -> None:
    with answer_after_eof() as target, \
            forwarding(sites, target, "--grace", "0.5") as (local, server, client):
        with socket.create_connection((HOST, local), timeout=TIMEOUT) as s:
            s.sendall(b"never finished")
            server.wait_for("session with site-a:")
            started = time.monotonic()
            assert server.stop() == 0
            assert time.monotonic() - started < 10
            assert "closed by server shutdown" in server.wait_for("site-a closed by")
            assert "1 channel closed at the end of the grace period" in server.lines[-1]
            with pytest.raises(ConnectionResetError):  # the application sees the cut
                read_to_the_end(s)
        assert "session with site-b failed" in client.wait_for("site-b failed")


# -- spent keys ---------------------------------------------------------------------------------


def test_a_failed_handshake_says_what_it_spent(sites: tuple[Path, Path, Path]) -> None:
    a = sites[0]
    with socket.create_server((HOST, 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]
        before = pool(a, "site-b")
        result = hybridkex("connect", f"{HOST}:{port}", "--site", str(a), "--timeout", "1")
        after = pool(a, "site-b")
    assert result.returncode == 4
    line = one_line(result.stderr)
    assert "HandshakeTimeout" in line
    match = SPENT.search(line)
    assert match and int(match.group(1)) == 4, line  # psk: 3 authentication keys + 1
    assert before[0] - after[0] == 4  # and the pool really lost 4


def test_the_server_logs_what_a_failed_handshake_spent(sites: tuple[Path, Path, Path]) -> None:
    a, b, _ = sites
    server = Server("--site", str(b), "--listen", f"{HOST}:0", "--echo", "--timeout", "1")
    try:
        with Site.load(a) as site_a:  # a real hello, then silence
            hello = ClientConnection(site_a.config(auth="psk"), "site-b")
            hello.start_handshake()
            data = hello.data_to_send()
        with socket.create_connection((HOST, server.port), timeout=TIMEOUT) as s:
            s.sendall(data)
            line = server.wait_for("handshake failed")
        assert "HandshakeTimeout" in line
        match = SPENT.search(line)
        assert match and int(match.group(1)) == 4, line  # the server fetched all four
    finally:
        assert server.stop() == 0


def test_site_show_warns_below_the_pool_threshold(sites: tuple[Path, Path, Path],
                                                   tmp_path: Path) -> None:
    a = sites[0]
    result = hybridkex("site", "show", str(a))
    assert result.returncode == 0 and b"WARNING" not in result.stdout
    assert b"warning below 64 to take" in result.stdout
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    toml = copy / "site.toml"
    toml.write_text(re.sub(r"warn_below = \d+", "warn_below = 100000", toml.read_text()))
    shown = hybridkex("site", "show", str(copy))
    assert shown.returncode == 0
    assert re.search(rb"WARNING: site-b's pool is below 100000 keys to take", shown.stdout)
    data = json.loads(hybridkex("site", "show", str(copy), "--json").stdout)
    assert data["pool_warn_below"] == 100000
    assert data["pools"]["site-b"]["below_warning_level"] is True
    toml.write_text(toml.read_text().replace("warn_below = 100000", "warn_below = -1"))
    bad = hybridkex("site", "show", str(copy))
    assert bad.returncode == 1 and b"warn_below" in one_line(bad.stderr).encode()


# -- every CLI error: one line, what happened -------------------------------------------------


def test_site_init_where_no_directory_can_be(tmp_path: Path) -> None:
    result = hybridkex("site", "init", "/proc/foo", "--name", "alpha")
    assert result.returncode == 1
    assert "cannot create site directory /proc/foo" in one_line(result.stderr)
    (tmp_path / "big.bin").write_bytes(b"\x00" * 1024)
    result = hybridkex("site", "init", str(tmp_path / "big.bin" / "x"), "--name", "alpha")
    assert result.returncode == 1
    assert "big.bin is a file, not a directory" in one_line(result.stderr)


@pytest.mark.parametrize(("command", "option"), [
    (("connect", "127.0.0.1:9", "--timeout", "-3"), "--timeout"),
    (("connect", "127.0.0.1:9", "--timeout", "nan"), "--timeout"),
    (("connect", "127.0.0.1:9", "--timeout", "inf"), "--timeout"),
    (("connect", "127.0.0.1:9", "--timeout", "0"), "--timeout"),
    (("serve", "--listen", "127.0.0.1:0", "--timeout", "-1"), "--timeout"),
    (("serve", "--listen", "127.0.0.1:0", "--max-connections", "0"), "--max-connections"),
    (("serve", "--listen", "127.0.0.1:0", "--grace", "-1"), "--grace"),
    (("serve", "--listen", "127.0.0.1:70000"), "--listen"),
    (("serve", "--listen", "127.0.0.1:0", "--forward", "127.0.0.1:0"), "--forward"),
    (("connect", "127.0.0.1:9", "--listen-local", "nowhere"), "--listen-local"),
])
def test_nonsensical_numbers_are_refused_when_parsed(tmp_path: Path, command: tuple[str, ...],
                                                     option: str) -> None:
    # The site does not exist: the command line is refused before anything is opened.
    result = hybridkex(*command, "--site", str(tmp_path / "absent"))
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert f"argument {option}" in line and "(see hybridkex" in line, line


def no_computation(*args: object, **kwargs: object) -> None:
    raise AssertionError("the sweep was computed before --plot was checked")


@pytest.mark.parametrize(("plot", "says"), [
    ("/nonexistent/x.png", ("/nonexistent", "does not exist")),
    ("out.txt", ("matplotlib cannot write .txt files",)),
])
def test_qkd_sweep_checks_plot_before_computing(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str],
                                                plot: str, says: tuple[str, ...]) -> None:
    monkeypatch.setattr(analytic, "sweep", no_computation)
    status: int | str | None
    try:
        status = cli.main(["qkd", "sweep", "--from-km", "0", "--to-km", "100",
                           "--step-km", "10", "--plot", plot])
    except SystemExit as exc:  # refused while parsing the command line: a usage error
        status = exc.code
    assert status in (1, 2)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(part in err for part in says), err


def test_qkd_link_with_a_store_in_a_missing_directory() -> None:
    result = hybridkex("qkd", "link", "--site-a", "a", "--store-a", "sqlite:///nodir/a.db",
                       "--site-b", "b", "--store-b", "memory:", "--target-keys", "1")
    assert result.returncode == 1
    assert "--store-a sqlite:///nodir/a.db: the directory nodir does not exist" in one_line(
        result.stderr)


def test_site_trust_of_a_missing_file(sites: tuple[Path, Path, Path]) -> None:
    result = hybridkex("site", "trust", str(sites[2]), "missing.crt")
    assert result.returncode == 1
    assert "missing.crt does not exist" in one_line(result.stderr)


def test_connecting_to_the_wrong_site_says_so(sites: tuple[Path, Path, Path]) -> None:
    a, _, c = sites
    wrong = Server("--site", str(c), "--listen", f"{HOST}:0", "--echo")
    try:
        result = hybridkex("connect", f"{HOST}:{wrong.port}", "--site", str(a),
                           "--peer", "site-b")
        assert result.returncode == 4
        line = one_line(result.stderr)
        assert "unrecognized_name" in line and "the server is not site 'site-b'" in line, line
        assert "addressed to another site ('site-b'; this is 'site-c')" in wrong.wait_for(
            "handshake failed")
    finally:
        assert wrong.stop() == 0


def test_an_unknown_peer_is_not_a_policy_failure(sites: tuple[Path, Path, Path]) -> None:
    result = hybridkex("connect", f"{HOST}:9", "--site", str(sites[0]), "--peer", "nosuch")
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "does not trust a site named 'nosuch'" in line and "policy" not in line


def test_an_hkx_client_at_a_tls_port_is_told(sites: tuple[Path, Path, Path]) -> None:
    a, b, _ = sites
    server = Server("--tls", "--site", str(b), "--listen", f"{HOST}:0", "--echo")
    try:
        result = hybridkex("connect", f"{HOST}:{server.port}", "--site", str(a))
        assert result.returncode == 4
        assert "connect with --tls" in one_line(result.stderr)
        assert "the client speaks HKX/1, not TLS" in server.wait_for("handshake failed")
        result = hybridkex("connect", "--tls", f"{HOST}:{server.port}", "--site", str(a),
                           input=b"tls\n")
        assert result.returncode == 0 and result.stdout == b"tls\n"
    finally:
        assert server.stop() == 0


def test_a_psk_only_server_hints_at_auth_psk(sites: tuple[Path, Path, Path]) -> None:
    a, b, _ = sites
    server = Server("--site", str(b), "--listen", f"{HOST}:0", "--echo", "--auth", "psk")
    try:
        result = hybridkex("connect", f"{HOST}:{server.port}", "--site", str(a),
                           "--auth", "signature")
        assert result.returncode == 4
        line = one_line(result.stderr)
        assert "insufficient_security" in line and "connect with --auth psk" in line, line
        assert "1 pool key consumed" in line
    finally:
        assert server.stop() == 0


def test_help_lists_the_exit_statuses() -> None:
    result = hybridkex("--help")
    assert result.returncode == 0
    out = result.stdout.decode()
    assert "exit status" in out
    for code in ("0", "1", "2", "3", "4", "5"):
        assert re.search(rf"^  {code}\s+\S", out, re.M), code

