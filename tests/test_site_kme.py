"""Sites whose QKD keys come from ETSI GS QKD 014 KMEs: site.toml's ``[key_source]``.

The deployment is real processes on loopback: two ``hybridkex kme serve`` (sites A and
B, each the other's ``--peer``) over SQLite stores that ``linked_pools`` filled with
the same units, and two site directories that trust each other but whose keys.db are
empty, so every QKD key a session gets can only have come through the KMEs.  site-a is
configured with ``hybridkex site kme-source``, site-b by writing the contract's table
into site.toml by hand.  ``serve`` and ``connect`` then run HKX/1 in signature and psk
mode and TLS 1.3 qkd-psk; the KMEs' counts must drop by exactly the keys the sessions
report, and the slave KME must refuse those keys to a third SAE.  Then the checks of
the table, one line each.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hybridkex.keydelivery.errors import KeyNotAvailable
from hybridkex.keydelivery.kme.client import KMEAuthenticationError, KMEClient
from hybridkex.keydelivery.pools import linked_pools
from hybridkex.keydelivery.request import KeyRequest
from hybridkex.keydelivery.sqlite import SQLiteKeyStore
from hybridkex.site import Site, SiteError
from tests.support import KMEFiles, alternating_units, stop_processes
from tests.test_cli_channel import Process, port_in
from tests.test_kme import _serve, _stderr_lines, _wait_for, free_ports
from tests.test_site_cli import hybridkex

HOST = "127.0.0.1"
PER_SITE = 120  # units each KME site may initiate with
SAE_MAP = {"sae-a": "A", "sae-b": "B", "sae-c2": "B"}
CONTRACT_TABLE = """
[key_source]
kind = "kme"                      # "store" (default: keys.db) | "kme"
url = "https://127.0.0.1:{port}"
sae_id = "sae-b"                  # this site's SAE ID at its KME
cert = "kme-client.crt"           # paths relative to the site directory
key = "kme-client.key"
ca = "kme-ca.crt"
[key_source.peers]
site-a = "sae-a"                  # peer site name -> its SAE ID
"""


@dataclass
class Deployment:
    pki: KMEFiles
    url_a: str
    url_b: str
    site_a: Path
    site_b: Path

    def master(self) -> KMEClient:
        """sae-a at KME A, as a plain ETSI client: what KME A counts for sae-a -> sae-b."""
        return KMEClient(self.url_a, *self.pki.pair("sae-a"), self.pki.ca)

    def level(self) -> int:
        with self.master() as client:
            return client.status("sae-b").stored_key_count


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    base = tmp_path_factory.mktemp("site-kme")
    (base / "pki").mkdir()
    pki = KMEFiles.create(base / "pki", ("sae-a", "sae-b", "sae-c2"), kme_sites=("A", "B"))
    a_db, b_db = base / "a.db", base / "b.db"
    pools = linked_pools("A", "B", alternating_units("A", "B", PER_SITE),
                         store_a=SQLiteKeyStore("A", a_db), store_b=SQLiteKeyStore("B", b_db))
    pools.store_a.close()
    pools.store_b.close()
    sae_map = base / "saes.json"
    sae_map.write_text(json.dumps(SAE_MAP))
    port_a, port_b = free_ports(2)
    kmes = [_serve(pki, "A", a_db, sae_map, port_a, {"B": port_b}),  # type: ignore[arg-type]
            _serve(pki, "B", b_db, sae_map, port_b, {"A": port_a})]  # type: ignore[arg-type]
    try:
        urls = [_wait_for(_stderr_lines(p), "listening on https://").rsplit(" ", 1)[1].strip()
                for p in kmes]
        site_a, site_b = base / "site-a", base / "site-b"
        for directory, name in ((site_a, "site-a"), (site_b, "site-b")):
            done = hybridkex("site", "init", str(directory), "--name", name)
            assert done.returncode == 0, done.stderr
        for directory, other in ((site_a, site_b), (site_b, site_a)):  # trust, no pairing
            done = hybridkex("site", "trust", str(directory), str(other / "identity.crt"))
            assert done.returncode == 0, done.stderr
        cert, key = pki.pair("sae-a")
        done = hybridkex("site", "kme-source", str(site_a), "--url", urls[0], "--sae-id",
                         "sae-a", "--cert", str(cert), "--key", str(key), "--ca", str(pki.ca),
                         "--peer", "site-b=sae-b")
        assert done.returncode == 0, done.stderr
        assert (site_a / "kme-client.key").stat().st_mode & 0o777 == 0o600
        cert, key = pki.pair("sae-b")
        shutil.copy(cert, site_b / "kme-client.crt")
        shutil.copy(key, site_b / "kme-client.key")
        os.chmod(site_b / "kme-client.key", 0o600)
        shutil.copy(pki.ca, site_b / "kme-ca.crt")
        with (site_b / "site.toml").open("a") as toml:
            toml.write(CONTRACT_TABLE.format(port=port_b))
        yield Deployment(pki, urls[0], urls[1], site_a, site_b)
    finally:
        stop_processes(kmes)


def connect(site: Path, port: int, *args: str, data: bytes = b"hello through two KMEs\n"
            ) -> tuple[subprocess.CompletedProcess[bytes], list[str]]:
    """``connect -v`` to site-b: the run, and the QKD key IDs it reports."""
    done = hybridkex("connect", f"{HOST}:{port}", "--site", str(site), "--peer", "site-b",
                     "--verbose", *args, input=data)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == data
    match = re.search(r"QKD key IDs\s+(.+)", done.stderr.decode())
    assert match, done.stderr.decode()
    ids = [i.strip() for i in match.group(1).split(",")]
    assert all(re.fullmatch(r"[0-9a-f-]{36}", i) for i in ids), ids
    return done, ids


def assert_delivered_to_sae_b_only(d: Deployment, key_ids: list[str]) -> None:
    """KME B has delivered each key (to sae-b, the server's SAE) and gives it to nobody
    else: a third SAE at site B is refused, and sae-b cannot have it twice."""
    for key_id in key_ids:
        with pytest.raises(KMEAuthenticationError):
            d.pki.client(d.url_b, "sae-c2").get_keys_with_ids("sae-a", [key_id])
        with pytest.raises(KeyNotAvailable):
            d.pki.client(d.url_b, "sae-b").get_keys_with_ids("sae-a", [key_id])


def test_site_show_reports_the_kme_and_the_level_it_sees(deployment: Deployment) -> None:
    d = deployment
    shown = hybridkex("site", "show", str(d.site_a), "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["key_source"] == {"kind": "kme", "url": d.url_a, "sae_id": "sae-a",
                                    "peers": {"site-b": "sae-b"}}
    pool = report["pools"]["site-b"]
    assert pool["sae_id"] == "sae-b"
    assert pool["stored_key_count"] == d.level() > 0
    assert pool["reason"] is None and pool["available_to_fetch"] is None
    text = hybridkex("site", "show", str(d.site_b)).stdout.decode()
    assert f"keys from the KME at {d.url_b} (ETSI GS QKD 014), as SAE sae-b" in text
    with d.pki.client(d.url_b, "sae-b") as b:
        assert f"site-a (SAE sae-a): {b.status('sae-a').stored_key_count} to take" in text
    with Site.load(d.site_a) as a:  # keys.db is not where the keys come from
        assert a.pool_status("site-b").available_to_take == 0


def test_site_show_warns_below_the_level_the_kme_reports(deployment: Deployment,
                                                         tmp_path: Path) -> None:
    copy = tmp_path / "site-a"
    shutil.copytree(deployment.site_a, copy)
    toml = copy / "site.toml"
    toml.write_text(toml.read_text().replace("warn_below = 64", f"warn_below = {PER_SITE + 1}"))
    shown = json.loads(hybridkex("site", "show", str(copy), "--json").stdout)
    assert shown["pools"]["site-b"]["below_warning_level"] is True
    text = hybridkex("site", "show", str(copy)).stdout.decode()
    assert (f"WARNING: site-b's pool is below {PER_SITE + 1} keys to take" in text
            and "refill it (the QKD link behind the KME)" in text), text


def test_serve_and_connect_run_hkx1_in_both_modes_and_tls_through_two_kmes(
        deployment: Deployment) -> None:
    d = deployment
    before = d.level()
    server = Process([sys.executable, "-m", "hybridkex", "serve", "--site", str(d.site_b),
                      "--listen", f"{HOST}:0", "--echo"], "listening on ")
    try:
        port = port_in(server.first, "listening on ")
        with d.pki.client(d.url_b, "sae-b") as b:  # the level KME B's status gives
            count = b.status("sae-a").stored_key_count
        assert (f"QKD pool with site-a: {count} keys to take (the KME's stored_key_count); "
                f"from the KME at {d.url_b}") in server.wait_for("QKD pool")
        done, signature_ids = connect(d.site_a, port, "--auth", "signature")
        err = done.stderr.decode()
        assert "signature: peer site-b" in err
        assert f"the KME at {d.url_a} (ETSI GS QKD 014; this site's SAE sae-a" in err
        assert len(signature_ids) == 1
        done, psk_ids = connect(d.site_a, port, "--auth", "psk")
        assert "psk: one-time Poly1305 MACs" in done.stderr.decode()
        line = server.wait_for(f"QKD key {psk_ids[0]}")
        assert "psk authentication" in line and f"the KME at {d.url_b}" in line
        # connect --listen-local: the client side on an event loop, one channel per client
        local = Process([sys.executable, "-m", "hybridkex", "connect", "--site", str(d.site_a),
                         "--peer", "site-b", "--listen-local", f"{HOST}:0", "--auth", "psk",
                         f"{HOST}:{port}"], "forwarding ")
        try:
            assert f"QKD pool with site-b: {d.level()} keys to take (the KME's" in \
                local.wait_for("QKD pool")
            with socket.create_connection((HOST, port_in(local.first, "forwarding ")),
                                          timeout=30) as app:
                app.sendall(b"from a local application")
                app.shutdown(socket.SHUT_WR)
                echoed = b"".join(iter(lambda: app.recv(1 << 16), b""))
            assert echoed == b"from a local application"
            line = local.wait_for("session with site-b: psk authentication")
            match = re.search(r"QKD key ([0-9a-f-]{36})", line)
            assert match and f"the KME at {d.url_a}" in line, line
            local_ids = [match.group(1)]
        finally:
            assert local.stop() == 0, local.lines
    finally:
        assert server.stop() == 0, server.lines
    for log in (server.lines, local.lines):  # the loops closed their KME clients cleanly
        assert not [line for line in log if "Unclosed" in line or "Traceback" in line], log
    # signature mode: 1 key; psk: 3 authentication units and 1 QKD key, all from KME A
    assert d.level() == before - 1 - 4 - 4
    assert_delivered_to_sae_b_only(d, signature_ids + psk_ids + local_ids)

    before = d.level()
    tls = Process([sys.executable, "-m", "hybridkex", "serve", "--site", str(d.site_b),
                   "--listen", f"{HOST}:0", "--echo", "--tls", "--tls-mode", "qkd-psk"],
                  "listening on ")
    try:
        port = port_in(tls.first, "listening on ")
        done, tls_ids = connect(d.site_a, port, "--tls", "--tls-mode", "qkd-psk")
        assert "QKD key (external PSK)" in done.stderr.decode()
        assert "qkd-psk authentication" in tls.wait_for(f"QKD key {tls_ids[0]}")
    finally:
        assert tls.stop() == 0, tls.lines
    assert len(tls_ids) == 1 and d.level() == before - 1
    assert_delivered_to_sae_b_only(d, tls_ids)
    for site, peer in ((d.site_a, "site-b"), (d.site_b, "site-a")):
        with Site.load(site) as s:  # keys.db was never touched
            assert s.pool_status(peer).delivered == 0


def test_the_event_loop_awaits_the_kme_and_never_the_blocking_client(
        deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    """On an event loop the site's key source goes through the asyncio client, as the
    asyncio drivers ask it (KeyRequest.perform_async): with the blocking client's
    exchange made to fail, a take and a fetch still work."""
    d = deployment
    with Site.load(d.site_a) as a, Site.load(d.site_b) as b:
        kme_a, kme_b = a.kme, b.kme
        assert kme_a is not None and kme_b is not None

        def blocked(*_: Any) -> Any:
            raise AssertionError("the blocking KME client was used on the event loop")

        for kme in (kme_a, kme_b):
            monkeypatch.setattr(kme.client, "_exchange", blocked)

        async def both() -> tuple[bytes, bytes]:
            try:
                (taken,) = await KeyRequest.take("site-b", 1).perform_async(a.key_source)
                (fetched,) = await KeyRequest.fetch("site-a", [taken.key_id]).perform_async(
                    b.key_source)
                level = await a.pool_level_async("site-b")
                assert level.to_take is not None and level.sae_id == "sae-b"
                return taken.key, fetched.key
            finally:
                await a.aclose()
                await b.aclose()

        taken, fetched = asyncio.run(both())
        assert taken == fetched and len(taken) == 32


def test_without_aiohttp_the_event_loop_runs_the_blocking_client_in_a_thread(
        deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    d = deployment
    monkeypatch.setitem(sys.modules, "hybridkex.keydelivery.kme.aio_client", None)
    with Site.load(d.site_a) as a, Site.load(d.site_b) as b:
        kme_a = a.kme
        assert kme_a is not None
        threads: list[str] = []
        exchange = kme_a.client._exchange

        def noted(*args: Any) -> Any:
            threads.append(threading.current_thread().name)
            return exchange(*args)

        monkeypatch.setattr(kme_a.client, "_exchange", noted)

        async def take() -> tuple[str, str]:
            (taken,) = await KeyRequest.take("site-b", 1).perform_async(a.key_source)
            (fetched,) = await KeyRequest.fetch("site-a", [taken.key_id]).perform_async(
                b.key_source)
            assert fetched.key == taken.key
            await a.aclose()
            return taken.key_id, threading.current_thread().name

        _, loop_thread = asyncio.run(take())
        assert threads and loop_thread not in threads
        assert all(name.startswith("hybridkex-keys") for name in threads), threads


def test_an_unknown_peer_is_one_line_before_any_key_is_taken(
        deployment: Deployment, tmp_path: Path) -> None:
    d = deployment
    site_c = tmp_path / "site-c"
    assert hybridkex("site", "init", str(site_c), "--name", "site-c").returncode == 0
    copy = tmp_path / "site-a"
    shutil.copytree(d.site_a, copy)
    assert hybridkex("site", "trust", str(copy), str(site_c / "identity.crt")).returncode == 0
    before = d.level()
    done = hybridkex("connect", f"{HOST}:9", "--site", str(copy), "--peer", "site-c")
    err = done.stderr.decode()
    assert done.returncode == 1 and err.count("\n") == 1, err
    assert "[key_source.peers] names no SAE ID for 'site-c'" in err
    assert "PolicyViolation" not in err
    assert d.level() == before
    shown = json.loads(hybridkex("site", "show", str(copy), "--json").stdout)
    assert shown["pools"]["site-c"]["stored_key_count"] is None
    assert "names no SAE ID" in shown["pools"]["site-c"]["reason"]


def test_an_unreachable_kme_is_reported_as_not_measured(deployment: Deployment,
                                                        tmp_path: Path) -> None:
    copy = tmp_path / "site-a"
    shutil.copytree(deployment.site_a, copy)
    (port,) = free_ports(1)
    toml = copy / "site.toml"
    toml.write_text(toml.read_text().replace(deployment.url_a, f"https://{HOST}:{port}"))
    shown = hybridkex("site", "show", str(copy), "--json")
    assert shown.returncode == 0, shown.stderr
    pool = json.loads(shown.stdout)["pools"]["site-b"]
    assert pool["stored_key_count"] is None and pool["available_to_take"] is None
    assert pool["below_warning_level"] is None
    assert f"cannot reach the KME at https://{HOST}:{port}" in pool["reason"]
    text = hybridkex("site", "show", str(copy)).stdout.decode()
    lines = [line for line in text.splitlines() if "site-b (SAE sae-b)" in line]
    assert len(lines) == 1 and "not measured: cannot reach the KME" in lines[0], text
    assert "WARNING" not in text


# -- the table, checked -----------------------------------------------------------------------


def test_the_table_is_written_back_unchanged(deployment: Deployment, tmp_path: Path) -> None:
    copy = tmp_path / "site-b"
    shutil.copytree(deployment.site_b, copy)
    before = tomllib.loads((copy / "site.toml").read_text())["key_source"]
    with Site.load(copy) as site:  # `site pair` records its link this way
        site.record_link("site-a", {"qkd": "a note", "simulated": True})
    after = tomllib.loads((copy / "site.toml").read_text())
    assert after["key_source"] == before
    assert list(after["key_source"]["peers"]) == ["site-a"]
    assert after["links"]["site-a"]["qkd"] == "a note"
    with Site.load(copy) as site:
        assert site.kme is not None and site.settings.key_source.peers == {"site-a": "sae-a"}


GOOD = {"kind": '"kme"', "url": '"https://127.0.0.1:8443"', "sae_id": '"sae-b"',
        "cert": '"kme-client.crt"', "key": '"kme-client.key"', "ca": '"kme-ca.crt"'}


def _table(settings: dict[str, str], peers: str | None = 'site-a = "sae-a"') -> str:
    text = "\n[key_source]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
    if peers is not None:
        text += "[key_source.peers]\n" + peers + "\n"
    return text


def _without(name: str) -> dict[str, str]:
    return {k: v for k, v in GOOD.items() if k != name}


CASES = [
    (_table({**GOOD, "kind": '"qkd"'}), 'kind must be "store" (keys.db) or "kme", not \'qkd\''),
    (_table({**GOOD, "kind": "1"}), 'kind must be "store" (keys.db) or "kme"'),
    *((_table(_without(name)), f"needs url, sae_id, cert, key and ca; missing: {name}")
      for name in ("url", "sae_id", "cert", "key", "ca")),
    (_table({**GOOD, "url": '"http://127.0.0.1:8443"'}),
     "url 'http://127.0.0.1:8443': the KME URL must be https://host[:port][/prefix]"),
    (_table({**GOOD, "url": '"127.0.0.1:8443"'}), "the KME URL must be https://"),
    (_table({**GOOD, "sae_id": "7"}), "sae_id must be a non-empty string"),
    (_table({**GOOD, "cert": '""'}), "cert must be a non-empty string"),
    (_table({**GOOD, "timeout": "3"}), "has unknown setting(s) timeout"),
    (_table({"kind": '"store"', "url": '"https://127.0.0.1:1"'}, None),
     'kind = "store" draws keys from keys.db and takes no other setting; remove url'),
    (_table(GOOD, None) + 'peers = "sae-a"\n', "[key_source.peers] must be a table"),
    (_table(GOOD, "site-a = 7"), "[key_source.peers] site-a must be a string"),
    (_table(GOOD, "site-a = { id = \"sae-a\" }"), "[key_source.peers] site-a must be a string"),
    (_table(GOOD, '"bad name!" = "sae-a"'), "invalid site name 'bad name!'"),
    (_table(GOOD, 'site-a = ""'), "[key_source.peers] site-a must be a non-empty SAE ID"),
    (_table(GOOD, 'site-a = "sae-b"'), "site-a is this site's own SAE ID 'sae-b'"),
    (_table(GOOD, 'site-b = "sae-x"'), "[key_source.peers] names this site itself"),
    ('key_source = "kme"\n', "[key_source] must be a table"),  # (placed first: top level)
]


@pytest.fixture
def site_b_copy(deployment: Deployment, tmp_path: Path) -> Path:
    """site-b with its KME files, and site.toml without [key_source]."""
    copy = tmp_path / "site-b"
    shutil.copytree(deployment.site_b, copy)
    toml = copy / "site.toml"
    text = toml.read_text()
    toml.write_text(text[:text.index("\n[key_source]")] + "\n")
    with Site.load(copy) as site:
        assert site.kme is None
    return copy


@pytest.mark.parametrize(("table", "expected"), CASES)
def test_a_malformed_table_is_one_line(site_b_copy: Path, table: str, expected: str) -> None:
    toml = site_b_copy / "site.toml"
    toml.write_text(toml.read_text() + table if table.startswith("\n")
                    else table + toml.read_text())
    with pytest.raises(SiteError) as caught:
        Site.load(site_b_copy)
    assert expected in str(caught.value) and "\n" not in str(caught.value)
    done = hybridkex("site", "show", str(site_b_copy))
    err = done.stderr.decode()
    assert done.returncode == 1 and err.count("\n") == 1 and err.startswith("hybridkex: ")
    assert expected in err, err


def test_the_files_are_checked(site_b_copy: Path, deployment: Deployment) -> None:
    def load_with(**files: str) -> str:
        toml = site_b_copy / "site.toml"
        base = toml.read_text().split("\n[key_source]")[0]
        toml.write_text(base + _table({**GOOD, **{k: json.dumps(v) for k, v in files.items()}}))
        with pytest.raises(SiteError) as caught:
            Site.load(site_b_copy)
        return str(caught.value)

    for name in ("cert", "key", "ca"):
        missing = load_with(**{name: "nowhere.pem"})
        assert f"[key_source] {name}: {site_b_copy / 'nowhere.pem'} does not exist" in missing
    key = site_b_copy / "kme-client.key"
    key.chmod(0o644)
    assert f"{key} is accessible by group or others (mode 0644); run: chmod 600 {key}" in \
        load_with()
    key.chmod(0o600)
    other_cert, _ = deployment.pki.pair("sae-a")  # a certificate that is not of this key
    shutil.copy(other_cert, site_b_copy / "other.crt")
    assert "cannot load the SAE certificate" in load_with(cert="other.crt")
    assert "cannot load the CA certificate" in load_with(ca="site.toml")
    # an absolute path works as well as a relative one
    toml = site_b_copy / "site.toml"
    toml.write_text(toml.read_text().replace('ca = "site.toml"',
                                             f"ca = {json.dumps(str(deployment.pki.ca))}"))
    with Site.load(site_b_copy) as site:
        assert site.kme is not None


def test_kme_source_refuses_what_cannot_work(deployment: Deployment, tmp_path: Path) -> None:
    d = deployment
    site = tmp_path / "site-x"
    assert hybridkex("site", "init", str(site), "--name", "site-x").returncode == 0
    cert, key = d.pki.pair("sae-a")
    good = ["site", "kme-source", str(site), "--url", d.url_a, "--sae-id", "sae-a",
            "--cert", str(cert), "--key", str(key), "--ca", str(d.pki.ca)]
    for change, expected in [
        (["--url", "http://127.0.0.1:1"], "the KME URL must be https://"),
        (["--peer", "site-x=sae-b"], "--peer site-x is this site itself"),
        (["--peer", "site-b=sae-a"], "site-b is this site's own SAE ID"),
        (["--peer", "site-b=sae-b", "--peer", "site-b=sae-c"], "names site 'site-b' twice"),
        (["--key", str(d.pki.pair("sae-b")[1])], "cannot load the SAE certificate"),
        (["--ca", str(tmp_path / "none.pem")], "cannot read"),
    ]:
        done = hybridkex(*good, *change)
        err = done.stderr.decode()
        assert done.returncode == 1 and err.count("\n") == 1 and expected in err, err
    assert "key_source" not in (site / "site.toml").read_text()  # nothing was written
    assert not (site / "kme-client.key").exists()
    done = hybridkex(*good, "--peer", "site-b=sae-b")
    assert done.returncode == 0, done.stderr
    (site / "kme-ca.crt").write_text("something else\n")
    done = hybridkex(*good, "--peer", "site-b=sae-b")
    assert done.returncode == 1 and b"already holds a different file" in done.stderr
    assert hybridkex(*good, "--peer", "site-b=sae-b", "--replace").returncode == 0
    assert (site / "kme-ca.crt").read_bytes() == d.pki.ca.read_bytes()


# -- hybridkex demo --kme ----------------------------------------------------------------------


def test_demo_kme_draws_every_key_through_the_two_kmes(tmp_path: Path) -> None:
    kept = tmp_path / "demo"
    done = hybridkex("demo", "--kme", "--json", "--psk-sessions", "1", "--keep", str(kept),
                     timeout=180)
    assert done.returncode == 0, done.stderr.decode()
    r = json.loads(done.stdout)
    assert r["ok"] is True
    kme = r["kme"]
    assert {name: (k["kme_id"], k["sae_id"]) for name, k in kme["kmes"].items()} == {
        "site-a": ("site-a", "sae-site-a"), "site-b": ("site-b", "sae-site-b")}
    assert all(k["url"].startswith("https://127.0.0.1:") for k in kme["kmes"].values())
    assert kme["delivered_once"] is True
    sessions = r["sessions"]
    assert [s["auth_mode"] for s in sessions] == ["signature", "psk"]
    used = [k for s in sessions for k in (*s["qkd_key_ids"], *s["rekey_qkd_key_ids"])]
    assert len(set(used)) == 4
    # site-a's KME counted them out: its Get status dropped by every pool key the sessions
    # report (7: 2 + 5), site-b's direction untouched
    pool = r["pool"]
    assert pool["keys_used"] == sum(s["pool_keys"]["total"] for s in sessions) == 7
    assert pool["before"]["site-b"]["to_take"] == pool["after"]["site-b"]["to_take"]
    assert pool["before"]["site-a"]["to_fetch"] is None  # Get status has no such count
    # Each site's own key store says the same, independently of the demo's report: only
    # a KME binds keys to SAEs, and site-b's KME delivered each used key to sae-site-b
    # (state 2: done), after site-a's KME had reserved it for (sae-site-a, sae-site-b).
    for site, side in (("site-a", 1), ("site-b", 0)):
        with sqlite3.connect(kept / site / "keys.db") as db:
            rows = {key_id: (binding, state) for key_id, binding, state in db.execute(
                "SELECT key_id, binding, state FROM bound_keys WHERE master_side = ?",
                (side,))}
        for key_id in used:
            assert rows[key_id] == ('["sae-site-a","sae-site-b"]', 2), (site, key_id)
        settings = tomllib.loads((kept / site / "site.toml").read_text())
        assert settings["key_source"]["kind"] == "kme"
    assert (kept / "kmes" / "sae-site-a.key").stat().st_mode & 0o777 == 0o600
    # without --kme the summary says so: no KME
    plain = hybridkex("demo", "--json", "--psk-sessions", "0", timeout=180)
    assert plain.returncode == 0 and json.loads(plain.stdout)["kme"] is None
