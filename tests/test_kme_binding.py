"""Keys bound to SAEs: two KMEs that synchronise, refuse every SAE a key is not bound to,
deliver every size by key ID alone, speak SKIP, and answer independent clients.

The KMEs, certificates and SAE map are tests/test_kme.py's; the clients here are the
project's own only where it says so: ``etsi-qkd-014-client`` and ``qkdsec`` (two ETSI
GS QKD 014 clients) and ``skip-qkd`` (a SKIP client) come from PyPI.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from etsi_qkd_014_client import QKD014Client
from qkdsec.client import ETSI014Client
from qkdsec.doctor import run_all
from skip_qkd import MTLSConfig, SkipQKDClient

from hybridkex.errors import QKDKeyRefused
from hybridkex.keydelivery.binding import Binding
from hybridkex.keydelivery.errors import KeySourceError
from hybridkex.keydelivery.keys import DeliveredKey, KeyRef
from hybridkex.keydelivery.kme import BackgroundKME
from hybridkex.keydelivery.kme.client import KMEAuthenticationError, KMEKeySource
from hybridkex.keydelivery.kme.sync import RESERVATIONS_PATH
from hybridkex.keydelivery.sqlite import SQLiteKeyStore
from hybridkex.keydelivery.store import KeyStore, MemoryKeyStore
from tests.hkx1 import CLIENT, SERVER
from tests.hkx1_harness import build, start
from tests.test_kme import PKI, SAE_MAP, _fill, _post, raw, two_kmes
from tests.test_kme import pki as pki  # the module-scoped certificates fixture

# sae-a (site A) takes SKIP keys for sae-b (site B); sae-c2 is a third SAE at site B
SKIP_MAP: dict[str, Any] = {**SAE_MAP, "sae-a": {"site": "A", "skip_peer": "sae-b"},
                            "sae-b": {"site": "B", "skip_peer": "sae-a"}}


@pytest.fixture
def kmes(pki: PKI) -> Iterator[tuple[BackgroundKME, BackgroundKME, KeyStore, KeyStore]]:
    a, b = MemoryKeyStore("A"), MemoryKeyStore("B")
    _fill(a, b, 3000)
    with two_kmes(pki, a, b, sae_map=SKIP_MAP, reserve_ahead=4) as (kme_a, kme_b):
        yield kme_a, kme_b, a, b


def _dec(pki: PKI, url: str, sae: str, master: str, key_ids: Sequence[str]) -> tuple[int, Any]:
    return _post(pki, url, sae, f"/api/v1/keys/{master}/dec_keys",
                 {"key_IDs": [{"key_ID": k} for k in key_ids]})


# -- the binding -------------------------------------------------------------------------------


def test_a_third_sae_or_a_wrong_master_is_refused_and_the_key_stays_deliverable(
        kmes: Any, pki: PKI) -> None:
    kme_a, kme_b, _, _ = kmes
    status, body = _post(pki, kme_a.url, "sae-a", "/api/v1/keys/sae-b/enc_keys", {"number": 2})
    assert status == 200
    ids = [k["key_ID"] for k in body["keys"]]
    # the demonstration: sae-c2 at the slave's site asks for sae-a's key
    assert _dec(pki, kme_b.url, "sae-c2", "sae-a", ids[:1]) == (
        401, {"message": "a requested key is not bound to this SAE"})
    # the right slave naming the wrong master (an SAE of site A that did not take it)
    status, body = _dec(pki, kme_b.url, "sae-b", "sae-c", ids[:1])
    assert status == 401 and set(body) == {"message"}
    # one refused key refuses the whole request: nothing is delivered
    status, _ = _dec(pki, kme_b.url, "sae-c2", "sae-a", ids)
    assert status == 401
    status, body = _dec(pki, kme_b.url, "sae-b", "sae-a", ids)
    assert status == 200 and [k["key_ID"] for k in body["keys"]] == ids
    assert _dec(pki, kme_b.url, "sae-b", "sae-a", ids[:1])[0] == 400  # exactly once
    assert _dec(pki, kme_b.url, "sae-c2", "sae-a", ids[:1])[0] == 401  # still not its key


def test_key_multicast_delivers_once_to_each_named_slave(kmes: Any, pki: PKI) -> None:
    kme_a, kme_b, _, _ = kmes
    status, body = _post(pki, kme_a.url, "sae-a", "/api/v1/keys/sae-b/enc_keys",
                         {"number": 1, "size": 512, "additional_slave_SAE_IDs": ["sae-c2"]})
    assert status == 200
    (entry,) = body["keys"]
    for slave in ("sae-b", "sae-c2"):
        status, got = _dec(pki, kme_b.url, slave, "sae-a", [entry["key_ID"]])
        assert status == 200 and got["keys"][0]["key"] == entry["key"]
        assert _dec(pki, kme_b.url, slave, "sae-a", [entry["key_ID"]])[0] == 400
    status, _ = _post(pki, kme_a.url, "sae-a", "/api/v1/keys/sae-b/enc_keys",
                      {"additional_slave_SAE_IDs": ["sae-c"]})  # at the master's own site
    assert status == 400


def test_status_counts_the_keys_this_pair_can_have(kmes: Any, pki: PKI) -> None:
    kme_a, _, a, _ = kmes
    client = pki.client(kme_a.url, "sae-a")
    before = client.status("sae-b").stored_key_count
    assert before == a.status("B").available_to_take == 1500
    client.get_keys("sae-b", 1)  # reserves 1 + 4 ahead, hands out 1, holds 4
    assert a.status("B").available_to_take == before - 5
    assert client.status("sae-b").stored_key_count == before - 1
    # keys reserved for sae-a -> sae-b are not sae-a -> sae-c2's to take
    assert client.status("sae-c2").stored_key_count == before - 5


def test_every_size_round_trips_with_a_client_that_knows_only_the_key_id(pki: PKI) -> None:
    """etsi-qkd-014-client (PyPI) sends key_ID alone; every multiple of 8 from 64 to 2048."""
    a, b = MemoryKeyStore("A"), MemoryKeyStore("B")
    _fill(a, b, 2400)  # 1 200 units for A to take; the 249 sizes need 1 148
    with two_kmes(pki, a, b, reserve_ahead=0) as (kme_a, kme_b):
        _every_size(pki, kme_a, kme_b)


def _every_size(pki: PKI, kme_a: BackgroundKME, kme_b: BackgroundKME) -> None:
    cert_a, key_a = pki.pair("sae-a")
    cert_b, key_b = pki.pair("sae-b")
    master = QKD014Client(kme_a.url.removeprefix("https://"), str(cert_a), str(key_a), str(pki.ca))
    slave = QKD014Client(kme_b.url.removeprefix("https://"), str(cert_b), str(key_b), str(pki.ca))
    code, status = master.get_status("sae-b")
    assert code == 200 and status.max_sae_id_count > 0
    sizes = range(64, 2049, 8)
    taken: list[tuple[str, bytes, int]] = []
    for size in sizes:
        code, container = master.get_key("sae-b", number=1, size=size)
        assert code == 200, size
        (key,) = container.keys
        taken.append((key.key_id, base64.b64decode(key.key), size))
    for start_at in range(0, len(taken), 64):  # dec_keys in batches, by key_ID alone
        part = taken[start_at:start_at + 64]
        code, container = slave.get_key_with_key_IDs("sae-a", [k for k, _, _ in part])
        assert code == 200
        got = {k.key_id: base64.b64decode(k.key) for k in container.keys}
        for key_id, material, size in part:
            assert len(material) * 8 == size and got[key_id] == material, size
    assert len(taken) == 249


# -- the KME-to-KME sync -----------------------------------------------------------------------


def _sync(pki: PKI, url: str, who: str, body: Any) -> tuple[int, Any]:
    """POST a reservation batch with ``who``'s certificate (a KME or an SAE)."""
    return _post(pki, url, who, RESERVATIONS_PATH, body)


def _reservation(units: Sequence[str], size: int = 256, master: str = "sae-a",
                 slaves: Sequence[str] = ("sae-b",)) -> dict[str, Any]:
    return {"key_ID": units[0], "size": size, "units": list(units), "master_SAE_ID": master,
            "slave_SAE_IDs": list(slaves)}


def test_sync_refuses_unknown_kmes_forged_and_replayed_reservations(pki: PKI) -> None:
    a, b = MemoryKeyStore("A"), MemoryKeyStore("B")
    units = _fill(a, b, 40)
    from_a = [u.key_id for u in units if u.initiator == "A"]
    from_b = [u.key_id for u in units if u.initiator == "B"]
    with two_kmes(pki, a, b, reserve_ahead=0) as (_, kme_b):
        batch = {"source_KME_ID": "A", "target_KME_ID": "B",
                 "reservations": [_reservation(from_a[:1])]}
        before = b.status("A")
        # a KME of the same CA that is not B's peer, and an SAE, cannot sync
        assert _sync(pki, kme_b.url, "kme-C", {**batch, "source_KME_ID": "C"})[0] == 401
        assert _sync(pki, kme_b.url, "sae-a", batch)[0] == 401
        # forged: another KME ID than the certificate's, a master not at A, a slave not
        # at B, units B takes (the other direction), a unit count that does not fit
        forged = [
            (401, {**batch, "source_KME_ID": "C"}),
            (400, {**batch, "reservations": [_reservation(from_a[:1], master="sae-b")]}),
            (400, {**batch, "reservations": [_reservation(from_a[:1], slaves=["sae-c"])]}),
            (409, {**batch, "reservations": [_reservation(from_b[:1])]}),
            (400, {**batch, "reservations": [_reservation(from_a[:1], size=512)]}),
            (409, {**batch, "reservations": [_reservation([str(uuid.uuid4())])]}),
        ]
        for expected, body in forged:
            status, answer = _sync(pki, kme_b.url, "kme-A", body)
            assert status == expected and set(answer) <= {"message", "details"}, answer
        assert b.status("A") == before  # nothing was recorded
        assert _sync(pki, kme_b.url, "kme-A", batch) == (200, {"recorded": 1})
        status, answer = _sync(pki, kme_b.url, "kme-A", batch)  # replayed
        assert status == 409 and "already bound" in answer["message"]
        # a batch with one replayed reservation records none of the others
        mixed = {**batch, "reservations": [_reservation(from_a[1:2]), _reservation(from_a[:1])]}
        assert _sync(pki, kme_b.url, "kme-A", mixed)[0] == 409
        assert b.status("A").available_to_fetch == before.available_to_fetch - 1


def test_an_unreachable_peer_is_503_and_no_key_is_handed_out(pki: PKI) -> None:
    a = MemoryKeyStore("A")
    b = MemoryKeyStore("B")
    _fill(a, b, 40)
    with BackgroundKME(pki.server(a, "A", peers={"B": "https://127.0.0.1:9"})) as kme_a:
        status, body, _ = raw(pki, kme_a.url, "sae-a", "POST", "/api/v1/keys/sae-b/enc_keys")
    assert status == 503 and "unreachable" in body["message"]
    # the units were set aside, never handed out, and are not counted as takeable
    assert a.status("B").available_to_take < 20
    assert a.ready_count("B", Binding("sae-a", ("sae-b",)), 256) == 0


def test_a_peer_presenting_another_kme_id_gets_no_reservation(pki: PKI) -> None:
    """KME A is told B is at an address where KME C answers (same CA): A refuses."""
    a, b, c = MemoryKeyStore("A"), MemoryKeyStore("B"), MemoryKeyStore("C")
    _fill(a, b, 40)
    with (BackgroundKME(pki.server(c, "C", sae_map={**SAE_MAP, "sae-x": "C"})) as kme_c,
          BackgroundKME(pki.server(a, "A", peers={"B": kme_c.url})) as kme_a):
        status, body, _ = raw(pki, kme_a.url, "sae-a", "POST", "/api/v1/keys/sae-b/enc_keys")
    assert status == 503 and "unreachable" in body["message"]


# -- the psk impersonation of the issue, end to end --------------------------------------------


class Recording:
    """A key source that remembers the IDs it took (what an on-path SAE reads in the
    ClientHello)."""

    def __init__(self, inner: KMEKeySource) -> None:
        self.inner = inner
        self.taken: list[str] = []

    def take(self, peer: str, count: int = 1, size_bits: int = 256) -> list[DeliveredKey]:
        keys = self.inner.take(peer, count, size_bits)
        self.taken += [k.key_id for k in keys]
        return keys

    def fetch(self, peer: str, key_ids: Sequence[KeyRef],
              size_bits: int = 256) -> list[DeliveredKey]:
        return self.inner.fetch(peer, key_ids, size_bits)


def test_another_sae_at_the_servers_site_cannot_answer_a_psk_hello(kmes: Any, pki: PKI) -> None:
    """The client (sae-a via KME A) opens a psk-mode HKX/1 session to site B; sae-c2, an
    SAE of site B that is not the server, answers as site B and fetches the units the
    ClientHello names from KME B.  KME B refuses, the handshake fails, and the genuine
    server sae-b can still fetch every one of those units."""
    kme_a, kme_b, _, _ = kmes
    client_keys = Recording(KMEKeySource(pki.client(kme_a.url, "sae-a"), {SERVER: "sae-b"}))
    world = build(qkd=False,
                  client={"key_source": client_keys, "auth": "psk"},
                  server={"key_source": KMEKeySource(pki.client(kme_b.url, "sae-c2"),
                                                     {CLIENT: "sae-a"}), "auth": "psk"})
    _, _, outcome = start(world)
    assert not outcome.completed("client") and not outcome.completed("server")
    assert isinstance(outcome.errors["server"], QKDKeyRefused)
    assert client_keys.taken
    genuine = pki.client(kme_b.url, "sae-b").get_keys_with_ids("sae-a", client_keys.taken)
    assert len(genuine) == len(client_keys.taken)
    # the same set-up with the genuine server completes: the refusal above is the binding
    client_keys.taken.clear()
    world = build(qkd=False,
                  client={"key_source": client_keys, "auth": "psk"},
                  server={"key_source": KMEKeySource(pki.client(kme_b.url, "sae-b"),
                                                     {CLIENT: "sae-a"}), "auth": "psk"})
    _, _, outcome = start(world)
    assert outcome.completed("client") and outcome.completed("server")
    with pytest.raises(KMEAuthenticationError):
        pki.client(kme_b.url, "sae-c2").get_keys_with_ids("sae-a", client_keys.taken[:1])


# -- SKIP, with the skip-qkd client from PyPI --------------------------------------------------


def _skip(pki: PKI, url: str, sae: str) -> SkipQKDClient:
    """A fresh skip-qkd client: it closes its socket after each request but keeps the
    closed socket for the next one, so one client serves one request."""
    cert, key = pki.pair(sae)
    return SkipQKDClient(url.removeprefix("https://"), "kme",
                         mtls_config=MTLSConfig(str(pki.ca), str(cert), str(key)))


def test_skip_keys_are_bound_to_the_skip_peer(kmes: Any, pki: PKI) -> None:
    kme_a, kme_b, _, _ = kmes
    caps = _skip(pki, kme_a.url, "sae-a").capabilities()
    assert caps == {"entity": "KP", "version": "1.0", "localSystemID": "A",
                    "remoteSystemID": ["B"]}
    new = _skip(pki, kme_a.url, "sae-a").request_key("B")
    assert len(bytes.fromhex(new["key"])) == 32 and len(new["keyId"]) == 32
    wide = _skip(pki, kme_a.url, "sae-a").request_key("B", 1024)
    assert len(bytes.fromhex(wide["key"])) == 128
    # a third SAE at site B is refused, and the key stays the skip peer's
    with pytest.raises(RuntimeError, match="401"):
        _skip(pki, kme_b.url, "sae-c2").fetch_key_by_id(new["keyId"], "A")
    for taken in (new, wide):
        assert _skip(pki, kme_b.url, "sae-b").fetch_key_by_id(taken["keyId"], "A") == taken
    with pytest.raises(RuntimeError, match="400"):  # exactly once
        _skip(pki, kme_b.url, "sae-b").fetch_key_by_id(new["keyId"], "A")
    # the same binding over ETSI 014: sae-c2 cannot have a SKIP key either
    other = _skip(pki, kme_a.url, "sae-a").request_key("B")
    key_id = str(uuid.UUID(hex=other["keyId"]))
    assert _dec(pki, kme_b.url, "sae-c2", "sae-a", [key_id])[0] == 401
    entropy = _skip(pki, kme_a.url, "sae-a").entropy(512)
    assert entropy["minentropy"] == 512 and len(bytes.fromhex(entropy["randomStr"])) == 64
    with pytest.raises(RuntimeError, match="400"):  # sae-c has no skip_peer
        _skip(pki, kme_a.url, "sae-c").request_key("B")
    with pytest.raises(RuntimeError, match="400"):  # B is not the skip peer's site
        _skip(pki, kme_a.url, "sae-a").request_key("C")


# -- qkdsec's conformance probe (PyPI) -----------------------------------------------------------


def test_qkdsec_probe(kmes: Any, pki: PKI) -> None:
    """qkdsec's doctor against KME A.  Two of its probes depart from the spec and are
    expected results here:

    * ``dec_keys_roundtrip`` calls dec_keys at the *master's* KME, as the master, with
      the slave's ID in the path.  ETSI GS QKD 014 clause 5.4 (Get key with key IDs)
      is the slave SAE's call to its own KME, naming the master SAE.  This KME keeps
      the key for the slave at KME B, so the probe fails; the key stays deliverable
      to sae-b, which is checked below.
    * ``error_contract_404`` expects 404 for an unknown key ID.  The spec's response
      table for clause 5.4 has 400, 401 and 503 only, and its example 400 message is
      "one or more keys specified are not found on KME": this KME answers 400 (WARN).
    """
    kme_a, kme_b, _, _ = kmes
    cert, key = pki.pair("sae-a")
    client = ETSI014Client(kme_a.url, client_cert=(str(cert), str(key)), verify=str(pki.ca))
    report = run_all(client, "sae-b", latency_samples=3)
    results = {r.name: r for r in report.results}
    outcome = {name: r.status.value for name, r in results.items()}
    assert outcome == {
        "reachability": "pass", "status_fields": "pass", "enc_keys_get": "pass",
        "enc_keys_post": "pass", "enc_keys_caps": "pass", "extensions_accepted": "pass",
        "dec_keys_roundtrip": "fail", "error_contract_404": "warn",
        "error_contract_400": "pass", "latency": "pass"}, {
        n: r.summary for n, r in results.items()}
    assert "400" in results["error_contract_404"].summary
    key_id = results["dec_keys_roundtrip"].details["key_id"]
    fetched = pki.client(kme_b.url, "sae-b").get_keys_with_ids("sae-a", [key_id])
    assert len(fetched) == 1


# -- the stores ---------------------------------------------------------------------------------


def test_status_comes_from_counters_that_match_a_recount(tmp_path: Path) -> None:
    """status() reads counters; after takes, fetches, reservations, deliveries and a
    purge they still equal a count of the rows."""
    a = SQLiteKeyStore("A", tmp_path / "a.db")
    b = SQLiteKeyStore("B", tmp_path / "b.db")
    _fill(a, b, 400)
    binding = Binding("sae-a", ("sae-b",))
    a.take("B", 3)
    taken = b.take("A", 2, 512)
    a.fetch("B", [k.ids for k in taken], 512)
    reserved = a.reserve("B", binding, 768, 5)
    b.record("A", reserved)
    a.confirm("B", [r.key_id for r in reserved], 2)
    b.deliver("A", "sae-b", {"sae-a"}, [reserved[0].key_id])
    before = a.status("B")
    assert a.purge_delivered(0) > 0
    assert a.status("B") == before
    import sqlite3

    with sqlite3.connect(tmp_path / "a.db") as db:
        available = dict(db.execute("SELECT initiator, COUNT(*) FROM qkd_keys WHERE "
                                    "material IS NOT NULL GROUP BY initiator").fetchall())
    assert (before.available_to_take, before.available_to_fetch) == (available[1], available[0])
    assert before.delivered == 400 - available[0] - available[1]
    a.close()
    b.close()


def test_sqlite_stores_are_created_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = SQLiteKeyStore("A", tmp_path / "keys.db")
        _fill(store, MemoryKeyStore("B"), 4)
        store.take("B", 1)
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        store.close()
    finally:
        os.umask(old)
    assert set(modes) >= {"keys.db", "keys.db-wal", "keys.db-shm"}
    assert all(mode == 0o600 for mode in modes.values()), modes
    # a store file another tool left readable is narrowed when its owner opens it
    loose = tmp_path / "loose.db"
    SQLiteKeyStore("A", loose).close()
    loose.chmod(0o644)
    SQLiteKeyStore("A", loose).close()
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600


def test_a_key_source_error_names_no_material(kmes: Any, pki: PKI) -> None:
    kme_a, kme_b, _, _ = kmes
    taken = pki.client(kme_a.url, "sae-a").get_keys("sae-b", 1)
    with pytest.raises(KeySourceError) as caught:
        pki.client(kme_b.url, "sae-c2").get_keys_with_ids("sae-a", [taken[0].key_id])
    assert taken[0].key.hex()[:16] not in str(caught.value)
    assert json.dumps(str(caught.value))  # a plain message
