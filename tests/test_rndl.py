"""``hybridkex rndl-demo``: the matrix, the JSON contract, and that the adversary is real.

The demonstration runs once per module (about a second: a short round of the simulated QKD
link, three loopback sessions, six attacks).  The tests below then attack its recordings
again with corrupted disclosures and tampered bytes.  The attacks must fail the way a real
attacker's would: at an AEAD tag, or because a combiner input is missing.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys
from collections.abc import Callable

import pytest

from hybridkex import cli
from hybridkex.demos import rndl
from hybridkex.primitives import kem
from hybridkex.protocol import ClientConnection, ServerConnection
from hybridkex.protocol.record import HEADER_SIZE
from hybridkex.protocol.suites import ContentType
from tests.hkx1 import SERVER, drain, make_sites


@pytest.fixture(scope="module")
def demo() -> rndl.DemoResult:
    return rndl.run_demo()


def _falls(demo: rndl.DemoResult, result: rndl.AttackResult) -> bool:
    return result.client_data == demo.message


def _record_offsets(stream: bytes) -> list[tuple[int, int, int]]:
    """(offset, content type, payload length) of every record in a recorded stream."""
    out, pos = [], 0
    while pos + HEADER_SIZE <= len(stream):
        length = int.from_bytes(stream[pos + 1:pos + 3], "big")
        out.append((pos, stream[pos], length))
        pos += HEADER_SIZE + length
    assert pos == len(stream)
    return out


def _flip(stream: bytes, index: int) -> bytes:
    return stream[:index] + bytes([stream[index] ^ 0x01]) + stream[index + 1:]


# -- the matrix ---------------------------------------------------------------------------


def test_the_matrix_is_exactly_as_expected(demo: rndl.DemoResult) -> None:
    assert demo.matrix == {
        "classical": {"quantum-computer": True, "quantum-computer+lattice-break": True},
        "pq-hybrid": {"quantum-computer": False, "quantum-computer+lattice-break": True},
        "pq+qkd": {"quantum-computer": False, "quantum-computer+lattice-break": False},
    }
    assert demo.matrix == rndl.EXPECTED_MATRIX and demo.as_expected


def test_every_cell_is_a_complete_decryption_or_a_stated_failure(demo: rndl.DemoResult) -> None:
    for scenario, row in demo.results.items():
        for adversary, result in row.items():
            if demo.matrix[scenario][adversary]:
                assert result.decrypted and result.failure is None and result.stage == "done"
                assert any("server Finished verifies" in s for s in result.steps)
                assert any("client Finished verifies" in s for s in result.steps)
            else:
                assert not result.decrypted and result.client_data == b""
                assert result.stage == "combiner input"
                assert result.failure is not None
                assert result.failure.startswith("cannot form the combiner input")
                assert any("failed its AEAD tag" in s for s in result.steps)
    pq_qc = demo.results["pq-hybrid"]["quantum-computer"].failure
    assert pq_qc is not None and "ML-KEM-768" in pq_qc and "QKD" not in pq_qc
    both = demo.results["pq+qkd"]["quantum-computer+lattice-break"].failure
    assert both is not None and "QKD" in both and "ML-KEM" not in both.split("QKD")[0]
    # The adversary found the key ID of the ClientHello in the QKD link's public discussion.
    steps = demo.results["pq+qkd"]["quantum-computer+lattice-break"].steps
    assert any("appears in frame(s) [" in s for s in steps)


def test_the_control_with_the_qkd_key_decrypts_pq_qkd(demo: rndl.DemoResult) -> None:
    """Same adversary code, plus the QKD key: pq+qkd lacked only that key."""
    assert demo.control.decrypted and _falls(demo, demo.control)
    assert any(s.startswith("HS = Combine(X25519, ML-KEM-768, QKD;") for s in demo.control.steps)


def test_the_sessions_are_what_they_claim(demo: rndl.DemoResult) -> None:
    classical, hybrid, qkd = (demo.sessions[s] for s in rndl.SCENARIOS)
    assert classical.suite == "HKX1_X25519_AES_256_GCM_SHA384" and classical.kems == ("X25519",)
    assert classical.security_policy == "allow-classical" and classical.auth_mode == "signature"
    assert classical.fallback is not None and "X25519 only" in classical.fallback
    assert hybrid.suite == "HKX1_X25519_MLKEM768_AES_256_GCM_SHA384" and not hybrid.qkd_key_ids
    assert hybrid.security_policy == "at-least-pq"
    assert qkd.kems == ("X25519", "ML-KEM-768") and len(qkd.qkd_key_ids) == 1
    assert qkd.security_policy == "qkd-and-pq" and qkd.auth_mode == "psk"
    assert qkd.fallback is None
    assert all(run.receipt_ok for run in demo.sessions.values())
    assert demo.link_reports and not demo.link_reports[-1].aborted
    assert qkd.recording.qkd_public_discussion
    assert not classical.recording.qkd_public_discussion


def test_the_recordings_do_not_contain_the_message(demo: rndl.DemoResult) -> None:
    for run in demo.sessions.values():
        assert demo.message not in run.recording.client_to_server
        assert demo.message not in run.recording.server_to_client
        assert len(run.recording.client_to_server) > len(demo.message)


# -- the adversary's inputs -----------------------------------------------------------------


def test_the_adversary_takes_only_the_recording_and_the_disclosure(
        demo: rndl.DemoResult) -> None:
    assert list(inspect.signature(rndl.attack).parameters) == ["recording", "disclosure"]
    assert [f.name for f in dataclasses.fields(rndl.Recording)] == [
        "client_to_server", "server_to_client", "qkd_public_discussion"]
    assert [f.name for f in dataclasses.fields(rndl.Disclosure)] == [
        "x25519_private_keys", "mlkem_decapsulation_keys", "qkd_keys"]
    public_x25519 = {share for run in demo.sessions.values()
                     for share in (run.recording.client_to_server, run.recording.server_to_client)}
    for adversary, disclosure in demo.disclosures.items():
        assert not disclosure.qkd_keys  # no break in the matrix yields a QKD key
        assert all(len(k) == 32 and len(v) == 32
                   for k, v in disclosure.x25519_private_keys.items())
        # Every disclosed X25519 key is indexed by a public key that is in a recording.
        assert all(any(k in stream for stream in public_x25519)
                   for k in disclosure.x25519_private_keys)
        assert all(len(v) == 64 for v in disclosure.mlkem_decapsulation_keys.values())
        assert bool(disclosure.mlkem_decapsulation_keys) == (adversary != "quantum-computer")
    # Plain copies of the bytes give the same outcome: nothing rides along with the objects.
    run = demo.sessions["classical"]
    copy = rndl.Recording(bytes(bytearray(run.recording.client_to_server)),
                          bytes(bytearray(run.recording.server_to_client)))
    disclosure = demo.disclosures["quantum-computer"]
    plain = rndl.Disclosure({bytes(k): bytes(v) for k, v in
                             disclosure.x25519_private_keys.items()})
    assert _falls(demo, rndl.attack(copy, plain))


def test_without_any_disclosure_nothing_falls(demo: rndl.DemoResult) -> None:
    for run in demo.sessions.values():
        result = rndl.attack(run.recording, rndl.Disclosure())
        assert not result.decrypted and result.stage == "combiner input"
        assert result.failure is not None and "X25519" in result.failure


# -- the adversary fails the way a real one would ----------------------------------------------


def test_a_corrupted_disclosed_key_makes_the_classical_attack_fail(
        demo: rndl.DemoResult) -> None:
    disclosure = demo.disclosures["quantum-computer"]
    # Byte 10 is not touched by X25519's clamping, so the scalar really changes.
    corrupted = rndl.Disclosure({k: v[:10] + bytes([v[10] ^ 0x40]) + v[11:]
                                 for k, v in disclosure.x25519_private_keys.items()})
    result = rndl.attack(demo.sessions["classical"].recording, corrupted)
    assert not result.decrypted and not _falls(demo, result)
    assert result.stage == "server handshake flight"
    assert result.failure is not None
    assert "RecordAuthenticationFailed" in result.failure and "bad_record_mac" in result.failure


@pytest.mark.parametrize("scenario", ["classical", "pq-hybrid"])
@pytest.mark.parametrize("where", ["server hello random", "server flight",
                                   "client application data"])
def test_a_tampered_recording_byte_fails_authentication(demo: rndl.DemoResult, scenario: str,
                                                        where: str) -> None:
    recording = demo.sessions[scenario].recording
    disclosure = demo.disclosures["quantum-computer+lattice-break"]
    assert _falls(demo, rndl.attack(recording, disclosure))  # untampered, it falls
    c2s, s2c = recording.client_to_server, recording.server_to_client
    if where == "server hello random":
        # record header, message header, u16 version, then the 32-byte random
        s2c, stage = _flip(s2c, HEADER_SIZE + 4 + 2 + 5), "server handshake flight"
    elif where == "server flight":
        offset, _, length = _record_offsets(s2c)[1]
        s2c, stage = _flip(s2c, offset + HEADER_SIZE + length // 2), "server handshake flight"
    else:
        offset, _, length = next(r for r in _record_offsets(c2s)
                                 if r[1] == ContentType.APPLICATION_DATA)
        c2s, stage = _flip(c2s, offset + HEADER_SIZE + length // 2), "client application data"
    result = rndl.attack(rndl.Recording(c2s, s2c), disclosure)
    assert not result.decrypted and not _falls(demo, result)
    assert result.stage == stage
    assert result.failure is not None and "bad_record_mac" in result.failure


def test_a_malformed_or_truncated_recording_is_a_stated_failure(demo: rndl.DemoResult) -> None:
    recording = demo.sessions["classical"].recording
    disclosure = demo.disclosures["quantum-computer"]
    first = _record_offsets(recording.server_to_client)[1][0]  # the server's flight starts here
    cases = {
        "hello": rndl.Recording(b"", b""),
        "framing": rndl.Recording(b"\xff" * 64, recording.server_to_client),
        "server handshake flight": rndl.Recording(recording.client_to_server,
                                                  recording.server_to_client[:first]),
    }
    for stage, broken in cases.items():
        result = rndl.attack(broken, disclosure)
        assert not result.decrypted and result.stage == stage and result.failure


def _recorded_session(qkd: bool, script: Callable[[ClientConnection, ServerConnection], None],
                      ) -> tuple[rndl.Recording, rndl.CapturingRandomness,
                                 rndl.CapturingKeySource | None]:
    """A sans-IO session between two test sites whose every byte is recorded; ``script``
    runs after the handshake, and the wire is pumped after it."""
    capture = rndl.CapturingRandomness()
    sites = make_sites(scheme="Ed25519", qkd=qkd)
    keys = None
    client_config = dataclasses.replace(sites.client, randomness=capture)
    if qkd:
        assert sites.client.key_source is not None
        keys = rndl.CapturingKeySource(sites.client.key_source)
        client_config = dataclasses.replace(client_config, key_source=keys)
    client = ClientConnection(client_config, SERVER)
    server = ServerConnection(dataclasses.replace(sites.server, randomness=capture))
    c2s, s2c = bytearray(), bytearray()

    def pump() -> None:
        for _ in range(16):
            drain(client)
            drain(server)
            moved = False
            for sender, receiver, tape in ((client, server, c2s), (server, client, s2c)):
                if data := sender.data_to_send():
                    tape += data
                    receiver.receive_data(data)
                    moved = True
            if not moved:
                return
        raise AssertionError("the connections kept talking")

    client.start_handshake()
    pump()
    assert client.handshake_complete and server.handshake_complete
    script(client, server)
    pump()
    return rndl.Recording(bytes(c2s), bytes(s2c)), capture, keys


def test_the_adversary_follows_key_updates() -> None:
    def script(client: ClientConnection, server: ServerConnection) -> None:
        client.send(b"before the key update, ")
        client.key_update(request_peer=True)
        client.send(b"after it")
        server.send(b"server data")
        client.close()

    recording, capture, _ = _recorded_session(False, script)
    result = rndl.attack(recording, rndl.disclose("quantum-computer+lattice-break", capture))
    assert result.decrypted, result.failure
    assert result.client_data == b"before the key update, after it"
    assert result.server_data == b"server data"
    # Without the lattice break the same recording stays closed.
    assert not rndl.attack(recording, rndl.disclose("quantum-computer", capture)).decrypted


def test_the_adversary_stops_at_a_qkd_rekey_even_with_the_handshake_qkd_key() -> None:
    def script(client: ClientConnection, server: ServerConnection) -> None:
        client.send(b"before the re-key")
        client.rekey_qkd()
        client.send(b"after the re-key")

    recording, capture, keys = _recorded_session(True, script)
    assert keys is not None
    result = rndl.attack(recording, rndl.disclose(rndl.CONTROL, capture, keys))
    assert not result.decrypted and result.stage == "client application data"
    assert result.failure is not None and "fresh QKD key" in result.failure
    assert result.client_data == b"before the re-key"  # what came before it, and no more


def test_capturing_randomness_keeps_both_x25519_private_keys() -> None:
    capture = rndl.CapturingRandomness()
    public, private = capture.kem_keypair("X25519")
    secret, ciphertext = capture.encapsulate("X25519", public)
    assert kem("X25519").decapsulate(ciphertext, private) == secret
    pairs = {k.public: k.private for k in capture.keypairs}
    assert set(pairs) == {public, ciphertext}  # the server's ephemeral is kept too
    assert kem("X25519").decapsulate(public, pairs[ciphertext]) == secret
    (encapsulation,) = capture.encapsulations
    assert encapsulation.shared_secret == secret and encapsulation.ciphertext == ciphertext
    public_m, private_m = capture.kem_keypair("ML-KEM-768")
    secret_m, ciphertext_m = capture.encapsulate("ML-KEM-768", public_m)
    assert kem("ML-KEM-768").decapsulate(ciphertext_m, private_m) == secret_m


def test_both_sites_pools_hold_exactly_the_units_the_link_distilled() -> None:
    pools, reports, discussion = rndl.fill_pools()
    distilled = [key_id for report in reports if not report.aborted
                 for key_id in report.key_ids]
    assert distilled and [u.key_id for u in pools.units] == distilled
    assert discussion  # the wiretap saw the round's public discussion
    a_takes = len(pools.taken_by(rndl.CLIENT))
    assert a_takes >= rndl.PSK_UNITS
    assert pools.store_a.status(rndl.SERVER).available_to_take == a_takes
    assert pools.store_b.status(rndl.CLIENT).available_to_fetch == a_takes
    # what site-a takes, site-b fetches by ID: the same key at both ends
    (taken,) = pools.store_a.take(rndl.SERVER)
    (fetched,) = pools.store_b.fetch(rndl.CLIENT, [taken.key_id])
    assert fetched.key == taken.key == pools.material()[taken.key_id]


def test_an_unknown_adversary_is_refused() -> None:
    from hybridkex.errors import InvalidParameter

    with pytest.raises(InvalidParameter):
        rndl.disclose("oracle", rndl.CapturingRandomness())


# -- the command -------------------------------------------------------------------------------


def test_rndl_demo_json_keeps_its_contract() -> None:
    result = subprocess.run([sys.executable, "-m", "hybridkex", "rndl-demo", "--json"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert set(report["matrix"]) == {"classical", "pq-hybrid", "pq+qkd"}
    for row in report["matrix"].values():
        assert set(row) == {"quantum-computer", "quantum-computer+lattice-break"}
        assert all(isinstance(v, bool) for v in row.values())
    assert report["matrix"] == rndl.EXPECTED_MATRIX and report["as_expected"] is True
    assert report["labels"]["summary"] == rndl.LABEL
    assert report["qkd_link"]["simulation"].startswith("SIMULATION")
    assert report["control"]["falls"] is True
    assert set(report["details"]) == set(report["bytes_recorded"]) == set(rndl.SCENARIOS)


def test_rndl_demo_text_says_what_is_simulated(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["rndl-demo"]) == 0
    out = capsys.readouterr().out
    assert rndl.LABEL in out and "SIMULATION" in out
    rows = {words[0]: words[1:] for words in map(str.split, out.splitlines())
            if len(words) == 3 and words[0] in rndl.SCENARIOS
            and set(words[1:]) <= {"FALLS", "secret"}}
    assert rows == {"classical": ["FALLS", "FALLS"], "pq-hybrid": ["secret", "FALLS"],
                    "pq+qkd": ["secret", "secret"]}
