"""``hybridkex serve --tls`` and ``hybridkex connect --tls``: the same site directories,
the same channel loop, exit codes and one-line failures as HKX/1, over real TLS 1.3.

serve and connect run as processes (``python -m hybridkex``) on loopback, with the
helpers of tests/test_site_cli.py (the server wrapper and the byte-flipping proxy).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

# --tls needs pyOpenSSL (the tls extra, also in '.[test]'): missing, this import fails.
from hybridkex import cli, errors, tls
from hybridkex.site import COMPOSITE, Site
from tests.test_site_cli import Proxy, Server, connect, hybridkex

ONE_LINE_FAILURE = re.compile(r"hybridkex connect: (handshake|session) with site-b failed: "
                              r"(\w+): .+\n")


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """site-a and site-b (ML-DSA-65, self-signed), paired over the simulated link."""
    base = tmp_path_factory.mktemp("tls-sites")
    a, b = base / "site-a", base / "site-b"
    for directory, name in ((a, "site-a"), (b, "site-b")):
        result = hybridkex("site", "init", str(directory), "--name", name)
        assert result.returncode == 0, result.stderr
    result = hybridkex("site", "pair", str(a), str(b), "--keys", "20")
    assert result.returncode == 0, result.stderr
    return a, b


@pytest.fixture(scope="module")
def tls_server(sites: tuple[Path, Path]) -> Iterator[Server]:
    """site-b: serve --tls --echo, certificate mode, the default group."""
    server = Server("--tls", "--site", str(sites[1]), "--listen", "127.0.0.1:0", "--echo")
    assert "TLS 1.3 certificate mode, groups X25519MLKEM768" in server.lines[0]
    yield server
    assert server.stop() == 0
    assert "site site-b stopped" in server.lines[-1]


def _pools(site_a: Path, site_b: Path) -> tuple[int, int, int, int]:
    """(a may take, a may fetch, b may take, b may fetch) of the site-a/site-b pool."""
    with Site.load(site_a) as a, Site.load(site_b) as b:
        pa, pb = a.pool_status("site-b"), b.pool_status("site-a")
        return (pa.available_to_take, pa.available_to_fetch,
                pb.available_to_take, pb.available_to_fetch)


def _one_line(stderr: bytes) -> re.Match[str]:
    err = stderr.decode()
    match = ONE_LINE_FAILURE.fullmatch(err)
    assert match, err
    # a typed error: hybridkex.tls's, or the hybridkex.errors class it derives from
    assert match.group(2) in (*tls.__all__, *errors.__all__), err
    return match


# -- certificate mode ------------------------------------------------------------------------


def test_certificate_mode_echo_round_trip(sites: tuple[Path, Path], tls_server: Server) -> None:
    start = len(tls_server.lines)
    data = os.urandom(200_000)
    before = _pools(*sites)
    result = connect(tls_server.port, sites[0], "--tls", data=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data and result.stderr == b""
    line = tls_server.wait_for("session with site-a:", start)
    assert ("certificate authentication (mldsa65), TLSv1.3, TLS_AES_256_GCM_SHA384, "
            "group X25519MLKEM768, QKD key none") in line
    assert "200000 bytes in, 200000 out, 0 pool keys spent" in tls_server.wait_for(
        "closed cleanly", start)
    assert _pools(*sites) == before  # certificate mode takes no QKD key


def test_verbose_shows_the_tls_session(sites: tuple[Path, Path], tls_server: Server) -> None:
    result = connect(tls_server.port, sites[0], "--tls", "--verbose", data=b"hello, site-b\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello, site-b\n"
    err = result.stderr.decode()
    assert "connected to site-b at 127.0.0.1:" in err
    assert re.search(r"protocol\s+TLSv1\.3 \(OpenSSL\), certificate mode", err)
    assert re.search(r"group\s+X25519MLKEM768\n", err)
    assert re.search(r"key exchange\s+ML-KEM-768 \+ X25519 -> TLS 1\.3 key schedule", err)
    assert re.search(r"QKD key IDs\s+none", err)
    assert re.search(r"peer signature\s+mldsa65", err)
    assert re.search(r"peer certificate\s+CN=site-b, sha256 [0-9a-f]{64}", err)
    assert err.endswith("closed cleanly: 14 bytes sent, 14 received, 0 pool keys spent\n")


def test_groups_are_chosen_with_group(sites: tuple[Path, Path]) -> None:
    server = Server("--tls", "--group", "SecP384r1MLKEM1024", "--group", "MLKEM1024",
                    "--site", str(sites[1]), "--listen", "127.0.0.1:0", "--echo", "--once")
    result = connect(server.port, sites[0], "--tls", "--group", "secp384r1mlkem1024", "-v",
                     data=b"x")
    assert result.returncode == 0 and result.stdout == b"x", result.stderr
    assert server.wait() == 0
    err = result.stderr.decode()
    assert re.search(r"group\s+SecP384r1MLKEM1024\n", err)
    assert "ECDH P-384 + ML-KEM-1024 -> TLS 1.3 key schedule" in err
    # No group in common: the handshake fails, status 4, one line.
    server = Server("--tls", "--group", "MLKEM1024", "--site", str(sites[1]),
                    "--listen", "127.0.0.1:0", "--echo", "--once")
    result = connect(server.port, sites[0], "--tls", data=b"x")
    assert result.returncode == 4 and result.stdout == b""
    assert _one_line(result.stderr).group(1) == "handshake"
    assert server.wait() == 4
    assert "handshake_failure" in server.wait_for("handshake failed")


# -- qkd-psk mode ----------------------------------------------------------------------------


def test_qkd_psk_mode_echo_round_trip_spends_one_pool_key_per_side(
        sites: tuple[Path, Path]) -> None:
    take_a, fetch_a, take_b, fetch_b = _pools(*sites)
    server = Server("--tls", "--tls-mode", "qkd-psk", "--site", str(sites[1]),
                    "--listen", "127.0.0.1:0", "--echo", "--once")
    assert "QKD pool with site-a" in server.wait_for("SIMULATED")
    data = os.urandom(100_000)
    result = connect(server.port, sites[0], "--tls", "--tls-mode", "qkd-psk", "-v", data=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data
    assert server.wait() == 0
    err = result.stderr.decode()
    assert re.search(r"protocol\s+TLSv1\.3 \(OpenSSL\), qkd-psk mode", err)
    assert re.search(r"group\s+X25519MLKEM768\n", err)
    assert "ML-KEM-768 + X25519 + QKD key (external PSK) -> TLS 1.3 key schedule" in err
    assert re.search(r"QKD keys from\s+keys\.db, filled by a SIMULATED QKD link", err)
    assert re.search(r"authentication\s+qkd-psk: the peer is authenticated by the QKD key "
                     "alone", err)
    key_id = re.search(r"QKD key IDs\s+([0-9a-f-]{36})\n", err)
    assert key_id
    assert err.endswith("1 pool keys spent\n")
    line = server.wait_for("session with site-a:")
    assert f"qkd-psk authentication, TLSv1.3, TLS_AES_256_GCM_SHA384, group X25519MLKEM768, " \
           f"QKD key {key_id.group(1)}" in line
    assert "1 pool keys spent" in server.wait_for("closed cleanly")
    # One key from each side: site-a took it, site-b fetched the same key ID.
    assert _pools(*sites) == (take_a - 1, fetch_a, take_b, fetch_b - 1)


# -- failures ---------------------------------------------------------------------------------


def test_tls_and_hkx_do_not_talk_to_each_other(sites: tuple[Path, Path],
                                               tls_server: Server) -> None:
    hkx = Server("--site", str(sites[1]), "--listen", "127.0.0.1:0", "--echo", "--once")
    result = connect(hkx.port, sites[0], "--tls", data=b"secret")
    assert result.returncode == 4 and result.stdout == b""
    assert _one_line(result.stderr).group(1) == "handshake"
    assert hkx.wait() == 4
    assert "handshake failed" in hkx.wait_for("handshake failed")
    # and the other way round: an HKX/1 client against the TLS server
    start = len(tls_server.lines)
    result = connect(tls_server.port, sites[0], data=b"secret")
    assert result.returncode == 4 and result.stdout == b""
    assert _one_line(result.stderr).group(1) == "handshake"
    # the TLS server recognises an HKX/1 hello, and answers it with an HKX/1 alert
    assert "the client speaks HKX/1, not TLS" in tls_server.wait_for("handshake failed", start)
    assert "connect with --tls" in result.stderr.decode()


@pytest.mark.parametrize(("direction", "offset"), [("c2s", 150_000), ("s2c", 150_000),
                                                   ("c2s", 100), ("s2c", 100)])
def test_an_altered_byte_ends_the_tls_session(sites: tuple[Path, Path], tls_server: Server,
                                              direction: str, offset: int) -> None:
    data = os.urandom(300_000)
    proxy = Proxy(tls_server.port, (direction, offset))
    try:
        result = connect(proxy.port, sites[0], "--tls", data=data)
    finally:
        proxy.close()
    assert result.returncode == (4 if offset < 1000 else 5), result.stderr
    _one_line(result.stderr)
    # Only authenticated data reached stdout: a proper prefix of what was sent.
    assert len(result.stdout) < len(data) and data.startswith(result.stdout)


def test_a_composite_site_cannot_use_tls(sites: tuple[Path, Path], tmp_path: Path) -> None:
    with Site.init(tmp_path / "c", "site-c", COMPOSITE) as c:
        c.trust(sites[1] / "identity.crt")
    expected = (b"hybridkex: site site-c signs with ML-DSA-65+Ed25519, which has no X.509 "
                b"certificate, so it cannot authenticate in TLS; ")
    for result in (hybridkex("serve", "--tls", "--site", str(tmp_path / "c"),
                             "--listen", "127.0.0.1:0"),
                   hybridkex("connect", "--tls", "127.0.0.1:9", "--site", str(tmp_path / "c"))):
        assert result.returncode == 1
        assert result.stderr.startswith(expected) and result.stderr.count(b"\n") == 1


def test_a_peer_trusted_by_pin_cannot_be_reached_with_tls(sites: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    with Site.init(tmp_path / "c", "site-c", COMPOSITE) as c, \
            Site.init(tmp_path / "d", "site-d", "Ed25519") as d:
        d.trust(c.public_identity_file)
    result = hybridkex("connect", "--tls", "127.0.0.1:9", "--site", str(tmp_path / "d"))
    assert result.returncode == 1 and result.stderr.count(b"\n") == 1
    assert b"trusts site-c through a pinned raw key (site-c.pin)" in result.stderr


@pytest.mark.parametrize(("argv", "message"), [
    (["connect", "127.0.0.1:9", "--site", "x", "--tls", "--auth", "psk"],
     "--auth selects HKX/1's authentication and does not apply to --tls"),
    (["serve", "--site", "x", "--listen", "127.0.0.1:0", "--tls", "--auth", "signature"],
     "--auth selects HKX/1's authentication and does not apply to --tls"),
    (["connect", "127.0.0.1:9", "--site", "x", "--group", "MLKEM768"],
     "--tls-mode and --group apply to TLS only; add --tls"),
    (["serve", "--site", "x", "--listen", "127.0.0.1:0", "--tls-mode", "qkd-psk"],
     "--tls-mode and --group apply to TLS only; add --tls"),
])
def test_options_that_do_not_go_together_are_usage_errors(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"hybridkex {argv[0]}: error: {message}"), last


def test_an_unknown_group_is_refused(sites: tuple[Path, Path],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["connect", "127.0.0.1:9", "--site", str(sites[0]), "--tls",
                     "--group", "X25519"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hybridkex: unknown or unsupported TLS group 'X25519'")
    assert err.count("\n") == 1
