"""The link deposits into the stores two KMEs serve, and sessions then run through the KMEs.

docs/deployment.md, steps 4 to 6 with KMEs: ``qkd link --site ... --store URL`` at each
end fills the store its site's KME serves; the two ``kme serve`` processes, synchronised
with ``--peer``, give the keys to the sites' SAEs; the sites, configured with
``site kme-source`` (``[key_source] kind = "kme"``), run an HKX/1 psk session over keys
that came from the link through the KMEs, and their own keys.db stays empty.  Also: a
KME-sourced site refuses a link without ``--store`` (its keys would land where no session
looks for them).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from hybridkex.keydelivery.kme.client import KMEClient
from hybridkex.keydelivery.sqlite import SQLiteKeyStore
from hybridkex.site import Site
from tests.netns import Host
from tests.qkd_ends import make_sites
from tests.support import KMEFiles, stop_processes
from tests.test_cli_channel import Process, port_in
from tests.test_kme import _serve, _stderr_lines, _wait_for, free_ports
from tests.test_qkd_twohost import SMALL, Proc, hkx, processes
from tests.test_site_cli import hybridkex

pytestmark = pytest.mark.time_limit(240)

HOST = "127.0.0.1"
LOCAL = Host("local", HOST, None)
SAE_MAP = {"sae-a": "site-a", "sae-b": "site-b"}


def _link(a_dir: Path, b_dir: Path, a_store: Path, b_store: Path, tmp: Path) -> int:
    """Two rounds of the link, each end depositing into ``--store``; the keys deposited."""
    port = free_ports(1)[0]
    with processes() as running:
        bob = Proc(LOCAL, hkx("qkd", "link", "--site", str(b_dir), "--listen",
                              f"{HOST}:{port}", "--store", f"sqlite:///{b_store}",
                              "--asymptotic", "--json"), tmp / "bob.log")
        running.append(bob)
        alice = Proc(LOCAL, hkx("qkd", "link", "--site", str(a_dir), "--connect",
                                f"{HOST}:{port}", "--store", f"sqlite:///{a_store}",
                                "--rounds", "2", "--distance-km", "5", *SMALL, "--json"),
                     tmp / "alice.log")
        running.append(alice)
        assert alice.proc.wait(180) == 0, (tmp / "alice.log").read_text()
        reports = alice.wait_lines(2, 1)
        bob.wait_lines(2, 30)
        assert bob.stop() == 0
    assert all(r["deposit"] == "done" for r in reports), reports
    return sum(int(r["keys_deposited"]) for r in reports)


def test_the_link_fills_the_kmes_stores_and_sessions_run_through_the_kmes(
        tmp_path: Path) -> None:
    a_dir, b_dir = make_sites(tmp_path)
    a_store, b_store = tmp_path / "kme-a.db", tmp_path / "kme-b.db"
    deposited = _link(a_dir, b_dir, a_store, b_store, tmp_path)
    assert deposited > 20
    for path, name, peer in ((a_store, "site-a", "site-b"), (b_store, "site-b", "site-a")):
        with SQLiteKeyStore(name, path) as store:  # both stores hold every key, one copy
            status = store.status(peer)
            assert status.available_to_take + status.available_to_fetch == deposited

    (tmp_path / "pki").mkdir()
    pki = KMEFiles.create(tmp_path / "pki", ("sae-a", "sae-b"), kme_sites=("site-a", "site-b"))
    sae_map = tmp_path / "saes.json"
    sae_map.write_text(json.dumps(SAE_MAP))
    port_a, port_b = free_ports(2)
    kmes = [_serve(pki, "site-a", a_store, sae_map, port_a,  # type: ignore[arg-type]
                   {"site-b": port_b}),
            _serve(pki, "site-b", b_store, sae_map, port_b,  # type: ignore[arg-type]
                   {"site-a": port_a})]
    try:
        urls = [_wait_for(_stderr_lines(p), "listening on https://").rsplit(" ", 1)[1].strip()
                for p in kmes]
        for site, url, sae, peer in ((a_dir, urls[0], "sae-a", "site-b=sae-b"),
                                     (b_dir, urls[1], "sae-b", "site-a=sae-a")):
            cert, key = pki.pair(sae)
            done = hybridkex("site", "kme-source", str(site), "--url", url, "--sae-id", sae,
                             "--cert", str(cert), "--key", str(key), "--ca", str(pki.ca),
                             "--peer", peer)
            assert done.returncode == 0, done.stderr

        def level() -> int:
            with KMEClient(urls[0], *pki.pair("sae-a"), pki.ca) as client:
                return client.status("sae-b").stored_key_count

        before = level()
        assert 0 < before <= deposited
        server = Process([sys.executable, "-m", "hybridkex", "serve", "--site", str(b_dir),
                          "--listen", f"{HOST}:0", "--echo", "--auth", "psk"], "listening on ")
        try:
            port = port_in(server.first, "listening on ")
            done = hybridkex("connect", f"{HOST}:{port}", "--site", str(a_dir), "--auth",
                             "psk", "--verbose", input=b"keys from the link, via two KMEs")
            assert done.returncode == 0, done.stderr.decode()
            assert done.stdout == b"keys from the link, via two KMEs"
            err = done.stderr.decode()
            assert f"the KME at {urls[0]}" in err, err
            assert "this site's link to site-b is a SIMULATED QKD link" in err, err
            key_id = re.search(r"QKD key IDs\s+([0-9a-f-]{36})", err)
            assert key_id, err
            assert "psk authentication" in server.wait_for(f"QKD key {key_id.group(1)}")
        finally:
            assert server.stop() == 0, server.lines
        assert level() == before - 4  # 3 psk authentication units and 1 QKD key, from KME A
    finally:
        stop_processes(kmes)
    for directory, peer in ((a_dir, "site-b"), (b_dir, "site-a")):
        with Site.load(directory) as s:  # the sites' own keys.db was never filled nor touched
            status = s.pool_status(peer)
            assert status.available_to_take == status.available_to_fetch == 0

    # A KME-sourced site's link must say where its KME's store is.
    refused = hybridkex("qkd", "link", "--site", str(a_dir), "--connect", f"{HOST}:{port}")
    assert refused.returncode == 1
    assert "draws its keys from its KME" in refused.stderr.decode()
    assert "--store" in refused.stderr.decode()
    assert "Traceback" not in refused.stderr.decode()
