"""HKX/1 sessions that succeed: every mode, suite and identity, and what comes after.

Each handshake runs a real ClientConnection against a real ServerConnection over
tests/hkx1's in-memory wire, with pools whose keys the test knows (``linked_pools``,
kept by tests/hkx1_harness.World), then checks what each side reports against what the
test set up: the suite's parts, the peer's key fingerprint computed from the key itself,
the pool keys gone from both stores.  Expected values are written out here, not read
back from hybridkex.protocol.
"""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from hybridkex.errors import (
    ConnectionTruncated,
    HybridKexError,
    LocalProtocolError,
    ProtocolError,
    QKDKeyRefused,
)
from hybridkex.keydelivery import KeyNotAvailable, LinkedPools
from hybridkex.protocol import (
    SUITES,
    ClientConnection,
    Config,
    Connection,
    ConnectionClosed,
    DataReceived,
    Event,
    HandshakeComplete,
    KeyUpdated,
    ServerConnection,
    SessionInfo,
    State,
)
from hybridkex.protocol.wire import ClientHello, ServerHello
from tests.hkx1 import CLIENT, SCHEMES, SERVER, X509_SCHEMES, drain, handshake, pump
from tests.hkx1_harness import (
    APPLICATION_DATA,
    HANDSHAKE,
    TAG_SIZE,
    World,
    assert_refused,
    build,
    exchange,
    key_ids,
    split_records,
)

# What each suite is made of (docs: the HKX/1 suite table), written out independently.
SUITE_TABLE: dict[int, tuple[str, tuple[str, ...], str]] = {
    0x0101: ("HKX1_X25519_MLKEM768_AES_256_GCM_SHA384", ("X25519", "ML-KEM-768"),
             "AES-256-GCM"),
    0x0102: ("HKX1_X25519_MLKEM768_CHACHA20_POLY1305_SHA384", ("X25519", "ML-KEM-768"),
             "ChaCha20-Poly1305"),
    0x0103: ("HKX1_X25519_MLKEM1024_AES_256_GCM_SHA384", ("X25519", "ML-KEM-1024"),
             "AES-256-GCM"),
    0x0104: ("HKX1_X25519_MLKEM1024_CHACHA20_POLY1305_SHA384", ("X25519", "ML-KEM-1024"),
             "ChaCha20-Poly1305"),
    0x0001: ("HKX1_X25519_AES_256_GCM_SHA384", ("X25519",), "AES-256-GCM"),
}
# KEM: (TLS NamedGroup codepoint, public key / key share size, ciphertext size)
KEM_SIZES = {"X25519": (0x001D, 32, 32), "ML-KEM-768": (0x0201, 1184, 1088),
             "ML-KEM-1024": (0x0202, 1568, 1568)}
SHA384_HEX = 96
PSK_UNITS = 4  # three one-time authentication keys (binder, two MACs) and the QKD key
SIGNATURE_UNITS = 1  # the QKD key
MAX_RECORD = 1 << 14


def test_suite_table_is_complete() -> None:
    assert set(SUITES) == set(SUITE_TABLE)


# -- helpers --------------------------------------------------------------------------


def completed(events: list[Event]) -> SessionInfo:
    done = [e for e in events if isinstance(e, HandshakeComplete)]
    assert len(done) == 1, events
    return done[0].session


def connect(world: World) -> tuple[ClientConnection, ServerConnection]:
    client, server, events = handshake(world.sites)
    assert client.handshake_complete and server.handshake_complete
    assert client.state is State.CONNECTED and server.state is State.CONNECTED
    assert completed(events["client"]) == client.session_info()
    assert completed(events["server"]) == server.session_info()
    return client, server


def transfer(sender: Connection, receiver: Connection, data: bytes) -> list[Event]:
    """Send ``data`` and check it arrives whole, in order, as the only data."""
    sender.send(data)
    events = pump(sender, receiver)
    received = [e for e in events[receiver.role] if isinstance(e, DataReceived)]
    assert b"".join(e.data for e in received) == data
    assert not any(isinstance(e, DataReceived) for e in events[sender.role])
    return events[receiver.role]


def both_ways(client: Connection, server: Connection, tag: bytes = b"") -> None:
    transfer(client, server, b"client to server " + tag)
    transfer(server, client, b"server to client " + tag)


def check_agreement(client: ClientConnection, server: ServerConnection) -> tuple[
        SessionInfo, SessionInfo]:
    c, s = client.session_info(), server.session_info()
    assert (c.role, s.role) == ("client", "server")
    assert (c.local_site, s.local_site) == (CLIENT, SERVER)
    assert (c.peer.site, s.peer.site) == (SERVER, CLIENT)
    for name in ("suite", "kems", "aead", "qkd_key_ids", "transcript_hash", "auth_mode"):
        assert getattr(c, name) == getattr(s, name), name
    assert len(c.transcript_hash) == SHA384_HEX
    int(c.transcript_hash, 16)
    return c, s


def check_pools(pools: LinkedPools, units: int, info: SessionInfo) -> None:
    """Exactly ``units`` of the client's keys are gone, from both stores, and they are the
    first ``units`` the client could take (take() hands keys out in deposit order)."""
    first = key_ids(pools, CLIENT)[:units]
    assert set(info.qkd_key_ids) <= set(first)
    client_status = pools.store_a.status(SERVER)
    server_status = pools.store_b.status(CLIENT)
    n = len(pools.taken_by(CLIENT))
    assert (client_status.available_to_take, client_status.available_to_fetch,
            client_status.delivered) == (n - units, n, units)
    assert (server_status.available_to_take, server_status.available_to_fetch,
            server_status.delivered) == (n, n - units, units)
    for key_id in first:  # delivered already: the responder cannot have them again
        with pytest.raises(KeyNotAvailable):
            pools.store_b.fetch(CLIENT, [key_id])


def expand_label(secret: bytes, label: str, length: int) -> bytes:
    """HKDF-Expand-Label with SHA-384 and the "hkx1 " prefix, empty context (RFC 8446 7.1)."""
    full = b"hkx1 " + label.encode()
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return HKDFExpand(hashes.SHA384(), length, info).derive(secret)


def open_first_record(aead: str, secret: bytes, wire: bytes) -> bytes:
    """Decrypt the first record sealed under ``secret`` (sequence number 0)."""
    [(content_type, payload)] = split_records(wire)
    assert content_type == APPLICATION_DATA
    key, iv = expand_label(secret, "key", 32), expand_label(secret, "iv", 12)
    cipher = AESGCM(key) if aead == "AES-256-GCM" else ChaCha20Poly1305(key)
    return cipher.decrypt(iv, payload, wire[:3])  # nonce = iv XOR 0


def spki_raw(identity_der: bytes) -> bytes:
    """The leaf's public key as the signature scheme takes it, read with cryptography."""
    key = x509.load_der_x509_certificate(identity_der).public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


# -- 1. handshakes ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["psk", "signature"])
def test_handshake_both_modes(mode: str) -> None:
    world = build(client={"auth": mode})
    client, server = connect(world)
    both_ways(client, server)
    c, s = check_agreement(client, server)
    units = PSK_UNITS if mode == "psk" else SIGNATURE_UNITS
    assert c.auth_mode == s.auth_mode == mode
    assert c.pool_keys_spent == s.pool_keys_spent == units
    assert len(c.qkd_key_ids) == 1
    assert c.fallback is None and s.fallback is None
    assert c.qkd and c.post_quantum
    assert c.security_policy == s.security_policy == "qkd-and-pq"
    check_pools(world.known_pools, units, c)
    if mode == "psk":
        for info, site in ((c, SERVER), (s, CLIENT)):
            assert (info.peer.kind, info.peer.site, info.peer.scheme) == ("psk", site, None)
            assert info.peer.public_key_sha256 is None
    else:
        for info, peer_config in ((c, world.sites.server), (s, world.sites.client)):
            assert peer_config.identity is not None
            assert info.peer.kind == "raw-public-key"
            assert info.peer.scheme == "ML-DSA-65"
            assert info.peer.public_key_sha256 == hashlib.sha256(
                peer_config.identity.public_key).hexdigest()
    world.secrets.assert_clean(client, server, c, s)


@pytest.mark.parametrize("mode", ["psk", "signature"])
@pytest.mark.parametrize("code", sorted(SUITE_TABLE))
def test_every_suite(code: int, mode: str) -> None:
    classical = code == 0x0001
    options = {"suites": (SUITES[code],), "auth": mode}
    if classical:
        options["security"] = "at-least-qkd"
    world = build(client=dict(options), server={k: v for k, v in options.items() if k != "auth"})
    name, kems, aead = SUITE_TABLE[code]
    client, server = world.pair()
    client.start_handshake()
    hello_wire = client.data_to_send()
    [(content_type, payload)] = split_records(hello_wire)
    hello = ClientHello.decode(payload[4:])
    assert (content_type, payload[0], hello.suites) == (HANDSHAKE, 1, (code,))
    # one key share per KEM of the suite, of the size FIPS 203 / RFC 7748 give it
    assert [(s.kem, len(s.data)) for s in hello.key_shares] == [
        KEM_SIZES[k][:2] for k in kems]
    server.receive_data(hello_wire)
    assert drain(server) == []
    flight = server.data_to_send()
    first_type, first = split_records(flight)[0]
    server_hello = ServerHello.decode(first[4:])
    assert (first_type, first[0], server_hello.suite) == (HANDSHAKE, 2, code)
    assert [(s.kem, len(s.data)) for s in server_hello.key_shares] == [
        (KEM_SIZES[k][0], KEM_SIZES[k][2]) for k in kems]
    client.receive_data(flight)
    assert isinstance(drain(client)[0], HandshakeComplete)
    pump(client, server)
    assert client.handshake_complete and server.handshake_complete
    # the first application record opens, with the named AEAD, under the key the
    # schedule derives from the logged traffic secret (HKDF-Expand-Label written out here)
    client.send(b"suite check")
    record = client.data_to_send()
    secret = world.secrets.get("client_application_traffic_secret_0")
    assert open_first_record(aead, secret, record) == b"suite check"
    server.receive_data(record)
    assert [e.data for e in drain(server) if isinstance(e, DataReceived)] == [b"suite check"]
    both_ways(client, server)
    c, s = check_agreement(client, server)
    assert (c.suite, c.kems, c.aead) == (name, kems, aead)
    assert c.auth_mode == mode
    assert len(c.qkd_key_ids) == 1
    assert c.post_quantum is not classical
    if classical:  # no ML-KEM: the session rests on X25519 and the QKD key, and says so
        assert c.fallback and s.fallback
    else:
        assert c.fallback is None and s.fallback is None
    check_pools(world.known_pools, PSK_UNITS if mode == "psk" else SIGNATURE_UNITS, c)


def test_classical_suite_under_either_policy_with_qkd() -> None:
    options = {"suites": (SUITES[0x0001],), "security": "either"}
    world = build(client={**options, "auth": "signature"}, server=options)
    client, server = connect(world)
    c, s = check_agreement(client, server)
    assert c.kems == ("X25519",) and len(c.qkd_key_ids) == 1
    assert c.fallback and s.fallback
    both_ways(client, server)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_raw_key_identities(scheme: str) -> None:
    world = build(scheme=scheme, client={"auth": "signature"})
    client, server = connect(world)
    both_ways(client, server)
    c, s = check_agreement(client, server)
    for info, peer_config in ((c, world.sites.server), (s, world.sites.client)):
        assert peer_config.identity is not None
        assert (info.peer.kind, info.peer.scheme) == ("raw-public-key", scheme)
        assert info.peer.public_key_sha256 == hashlib.sha256(
            peer_config.identity.public_key).hexdigest()
        assert info.peer.subject is None
    assert c.pool_keys_spent == s.pool_keys_spent == SIGNATURE_UNITS
    check_pools(world.known_pools, SIGNATURE_UNITS, c)


@pytest.mark.parametrize("scheme", X509_SCHEMES)
def test_x509_identities(scheme: str) -> None:
    world = build(scheme=scheme, x509_chain=True, client={"auth": "signature"})
    client, server = connect(world)
    both_ways(client, server)
    c, s = check_agreement(client, server)
    for info, peer_config, site in ((c, world.sites.server, SERVER),
                                    (s, world.sites.client, CLIENT)):
        identity = peer_config.identity
        assert identity is not None and len(identity.certificates) == 2
        leaf_key = spki_raw(identity.certificates[0])
        assert leaf_key == identity.public_key
        assert (info.peer.kind, info.peer.scheme, info.peer.site) == ("x509", scheme, site)
        assert info.peer.public_key_sha256 == hashlib.sha256(leaf_key).hexdigest()
        assert info.peer.subject == f"CN={site}"
    check_pools(world.known_pools, SIGNATURE_UNITS, c)


@pytest.mark.parametrize("client_identity", [True, False])
def test_server_without_client_authentication(client_identity: bool) -> None:
    client_options: dict[str, object] = {"auth": "signature"}
    if not client_identity:
        client_options["identity"] = None
    world = build(client=client_options, server={"mutual_auth": False})
    client, server = connect(world)
    both_ways(client, server)
    c, s = check_agreement(client, server)
    assert (s.peer.kind, s.peer.site, s.peer.scheme) == ("unauthenticated", CLIENT, None)
    assert s.peer.public_key_sha256 is None
    assert world.sites.server.identity is not None
    assert c.peer.kind == "raw-public-key"
    assert c.peer.public_key_sha256 == hashlib.sha256(
        world.sites.server.identity.public_key).hexdigest()
    check_pools(world.known_pools, SIGNATURE_UNITS, c)


def test_auto_mode_uses_psk_when_the_pool_can_pay_and_signatures_otherwise() -> None:
    rich = build(keys=PSK_UNITS)
    client, _ = connect(rich)
    assert client.session_info().auth_mode == "psk"
    check_pools(rich.known_pools, PSK_UNITS, client.session_info())
    poor = build(keys=PSK_UNITS - 1)  # enough for a QKD key, not for psk authentication
    client, _ = connect(poor)
    info = client.session_info()
    assert info.auth_mode == "signature" and len(info.qkd_key_ids) == 1
    check_pools(poor.known_pools, SIGNATURE_UNITS, info)


def test_exported_keys_agree_within_a_session_and_differ_between_sessions() -> None:
    world = build(client={"auth": "signature"})
    first_client, first_server = connect(world)
    second_client, second_server = connect(world)
    exported = []
    for client, server in ((first_client, first_server), (second_client, second_server)):
        ours = client.export_keying_material("EXPORTER-test", b"ctx", 32)
        theirs = server.export_keying_material("EXPORTER-test", b"ctx", 32)
        assert ours == theirs and len(ours) == 32
        assert client.export_keying_material("EXPORTER-test", b"ctx", 64) == \
            server.export_keying_material("EXPORTER-test", b"ctx", 64)
        assert client.export_keying_material("EXPORTER-other", b"ctx", 32) != ours
        assert client.export_keying_material("EXPORTER-test", b"ctx2", 32) != ours
        exported.append(ours)
        world.secrets.add("exported", ours)
    assert exported[0] != exported[1]
    assert first_client.session_info().transcript_hash != \
        second_client.session_info().transcript_hash
    world.secrets.assert_clean(first_client, first_server, first_client.session_info())


# -- 2. after the handshake -------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, MAX_RECORD, MAX_RECORD + 1, 40_000, 3 * MAX_RECORD])
def test_large_sends_are_split_into_16_kib_records(size: int) -> None:
    client, server = connect(build(client={"auth": "signature"}))
    data = bytes(i % 251 for i in range(size))
    for sender, receiver in ((client, server), (server, client)):
        sender.send(data)
        wire = sender.data_to_send()
        if size == 0:  # an empty send sends nothing
            assert wire == b""
            continue
        records = split_records(wire)
        plain = [len(payload) - TAG_SIZE for _, payload in records]
        assert {t for t, _ in records} == {APPLICATION_DATA}
        expected = [MAX_RECORD] * (size // MAX_RECORD) + ([size % MAX_RECORD] if size % MAX_RECORD
                                                          else [])
        assert plain == expected
        if size >= 64:
            assert data[:64] not in wire  # sealed, not in the clear
        receiver.receive_data(wire)
        events = drain(receiver)
        assert all(isinstance(e, DataReceived) for e in events)
        assert [len(e.data) for e in events if isinstance(e, DataReceived)] == expected
        assert b"".join(e.data for e in events if isinstance(e, DataReceived)) == data


def test_records_arriving_byte_by_byte_reassemble() -> None:
    client, server = connect(build(client={"auth": "signature"}))
    data = bytes(range(256)) * 100
    client.send(data)
    received = b""
    for byte in client.data_to_send():
        server.receive_data(bytes([byte]))
        received += b"".join(e.data for e in drain(server) if isinstance(e, DataReceived))
    assert received == data


@pytest.mark.parametrize("request_peer", [True, False])
@pytest.mark.parametrize("initiator", ["client", "server"])
def test_key_update(initiator: str, request_peer: bool) -> None:
    client, server = connect(build(client={"auth": "signature"}))
    conns = {"client": client, "server": server}
    me, peer = conns[initiator], conns["server" if initiator == "client" else "client"]
    both_ways(client, server, b"before")
    me.key_update(request_peer=request_peer)
    events = pump(client, server)
    peer_updates = [e for e in events[peer.role] if isinstance(e, KeyUpdated)]
    my_updates = [e for e in events[me.role] if isinstance(e, KeyUpdated)]
    assert len(peer_updates) == 1
    assert (peer_updates[0].kind, peer_updates[0].direction, peer_updates[0].by_peer) == (
        "key-update", "receive", True)
    assert peer_updates[0].qkd_key_ids == ()
    if request_peer:  # the peer answers by updating its own sending key
        assert len(my_updates) == 1
        assert (my_updates[0].kind, my_updates[0].direction) == ("key-update", "receive")
    else:
        assert my_updates == []
    # key_updates is undocumented beyond its name; what holds whether it counts the updates
    # a side sent or every generation change it saw:
    if request_peer:
        assert me.session_info().key_updates >= 1 and peer.session_info().key_updates >= 1
    else:
        assert me.session_info().key_updates == 1
    for _ in range(3):
        both_ways(client, server, b"after")
    me.key_update(request_peer=False)
    peer.key_update(request_peer=True)  # crossing updates
    pump(client, server)
    both_ways(client, server, b"after crossing")


@pytest.mark.parametrize("initiator", ["client", "server"])
def test_qkd_rekey(initiator: str) -> None:
    world = build(client={"auth": "signature"})
    client, server = connect(world)
    conns = {"client": client, "server": server}
    me, peer = conns[initiator], conns["server" if initiator == "client" else "client"]
    delivered = {r: world.delivered(r) for r in conns}
    ids = me.rekey_qkd()
    assert len(ids) == 1
    site = CLIENT if initiator == "client" else SERVER
    assert ids[0] in key_ids(world.known_pools, site)  # from the initiator's half of the pool
    events = pump(client, server)
    for role, by_peer in ((peer.role, True), (me.role, False)):
        updates = [e for e in events[role] if isinstance(e, KeyUpdated)]
        assert len(updates) == 1, updates
        assert (updates[0].kind, updates[0].by_peer, updates[0].qkd_key_ids) == (
            "qkd-rekey", by_peer, ids)
    for conn in (client, server):
        info = conn.session_info()
        assert info.qkd_rekeys == 1
        assert info.pool_keys_spent == SIGNATURE_UNITS + 1
        assert world.delivered(conn.role) == delivered[conn.role] + 1
    responder_store = world.store(peer.role)
    with pytest.raises(KeyNotAvailable):
        responder_store.fetch(site, [ids[0]])
    both_ways(client, server, b"after re-key")
    second = me.rekey_qkd()  # one at a time, but as many as the pool pays for
    assert second != ids
    pump(client, server)
    both_ways(client, server, b"after second re-key")
    world.secrets.assert_clean(client, server, *events["client"], *events["server"])


def test_qkd_rekeys_crossing() -> None:
    world = build(client={"auth": "psk"})
    pools = world.known_pools
    client, server = connect(world)
    delivered = {r: world.delivered(r) for r in ("client", "server")}
    client_ids = client.rekey_qkd()
    server_ids = server.rekey_qkd()
    assert client_ids[0] in key_ids(pools, CLIENT) and server_ids[0] in key_ids(pools, SERVER)
    events = pump(client, server)
    for role in ("client", "server"):
        updates = [e for e in events[role] if isinstance(e, KeyUpdated)]
        assert sorted((e.kind, e.by_peer, e.qkd_key_ids) for e in updates) == sorted([
            ("qkd-rekey", False, client_ids if role == "client" else server_ids),
            ("qkd-rekey", True, server_ids if role == "client" else client_ids)])
        assert world.delivered(role) == delivered[role] + 2
    for conn in (client, server):
        assert conn.session_info().qkd_rekeys == 2
        assert conn.session_info().pool_keys_spent == PSK_UNITS + 2
    for _ in range(2):
        both_ways(client, server, b"after crossing re-keys")


def test_second_qkd_rekey_in_flight_is_refused() -> None:
    world = build(client={"auth": "signature"})
    client, server = connect(world)
    client.rekey_qkd()
    queued = client.data_to_send()
    delivered = world.delivered("client")
    with pytest.raises(LocalProtocolError):
        client.rekey_qkd()
    assert client.data_to_send() == b""  # nothing sent
    assert world.delivered("client") == delivered  # and no key spent
    server.receive_data(queued)
    pump(client, server)
    both_ways(client, server)
    client.rekey_qkd()  # the first one was acknowledged: a new one may start
    pump(client, server)
    assert client.session_info().qkd_rekeys == 2


def test_qkd_rekey_without_a_key_source() -> None:
    client, server = connect(build(qkd=False))
    with pytest.raises(LocalProtocolError):
        client.rekey_qkd()
    assert client.data_to_send() == b""
    both_ways(client, server)


def test_qkd_rekey_with_an_empty_pool_leaves_the_session_usable() -> None:
    world = build(keys=1, client={"auth": "signature"})
    client, server = connect(world)  # spends the client's only key
    with pytest.raises(HybridKexError) as info:
        client.rekey_qkd()
    # a local shortage, not the peer's fault: not a ProtocolError, which would mean ERROR
    assert not isinstance(info.value, ProtocolError)
    assert client.data_to_send() == b""
    assert client.state is State.CONNECTED
    both_ways(client, server)


def test_qkd_rekey_the_peer_cannot_fetch_fails_closed() -> None:
    world = build(keys=4, client={"auth": "signature"})
    pools = world.known_pools
    client, server = connect(world)
    for key_id in key_ids(pools, CLIENT):  # the server loses every key the client may take
        with contextlib.suppress(KeyNotAvailable):
            pools.store_b.fetch(CLIENT, [key_id])
    client.rekey_qkd()
    outcome = exchange(client, server)
    assert_refused(world, client, server, outcome, detector="server", error=QKDKeyRefused,
                   alert=200, detector_only=True)


@pytest.mark.parametrize("interval", [2, 5])
def test_forced_key_update(interval: int) -> None:
    client, server = connect(build(client={"auth": "signature",
                                           "key_update_interval": interval}))
    messages = [f"message {i}".encode() for i in range(4 * interval + 3)]
    for m in messages:
        client.send(m)
    records = split_records(client.data_to_send())
    received: list[bytes] = []
    generation_sizes = [0]  # records protected by each sending key, as the server sees it
    updates = 0
    for content_type, payload in records:
        server.receive_data(bytes([content_type]) + len(payload).to_bytes(2, "big") + payload)
        generation_sizes[-1] += 1
        for event in drain(server):
            if isinstance(event, KeyUpdated):
                assert (event.kind, event.by_peer) == ("key-update", True)
                updates += 1
                generation_sizes.append(0)
            elif isinstance(event, DataReceived):
                received.append(event.data)
    assert received == messages
    assert updates >= 1
    assert max(generation_sizes) <= interval, generation_sizes
    assert client.session_info().key_updates == updates  # the client only sent updates
    assert len(records) == len(messages) + updates
    assert sum(1 for t, _ in records if t == HANDSHAKE) == updates
    both_ways(client, server)


def test_forced_key_update_inside_one_large_send() -> None:
    client, server = connect(build(client={"auth": "signature", "key_update_interval": 3}))
    data = bytes(i % 253 for i in range(10 * MAX_RECORD))
    events = transfer(client, server, data)
    updates = [e for e in events if isinstance(e, KeyUpdated)]
    assert len(updates) == client.session_info().key_updates >= 3
    both_ways(client, server)


def test_close() -> None:
    client, server = connect(build(client={"auth": "signature"}))
    client.send(b"last words")
    client.close()
    server.receive_data(client.data_to_send())
    first, second = server.next_event(), server.next_event()
    assert isinstance(first, DataReceived) and first.data == b"last words"
    assert isinstance(second, ConnectionClosed)
    assert isinstance(server.next_event(), ConnectionClosed)  # and stays closed
    for action in (lambda: client.send(b"more"), lambda: client.key_update(),
                   client.rekey_qkd):
        with pytest.raises(LocalProtocolError):
            action()
    assert client.data_to_send() == b""
    client.close()  # a second close sends nothing
    assert client.data_to_send() == b""
    transfer(server, client, b"the peer may still answer")  # close is one direction
    server.close()
    client.receive_data(server.data_to_send())
    assert isinstance(client.next_event(), ConnectionClosed)
    server.receive_data(b"")  # end of file after close_notify is a clean end
    assert isinstance(server.next_event(), ConnectionClosed)


def test_after_close_nothing_more_is_sent_but_everything_is_received() -> None:
    """A side that has sent close_notify answers neither a KeyUpdate request nor a QKD
    re-key, yet keeps decrypting what the peer sends under the keys those install."""
    world = build(client={"auth": "signature"})
    client, server = connect(world)
    client.close()
    server.receive_data(client.data_to_send())
    assert isinstance(server.next_event(), ConnectionClosed)
    server.key_update(request_peer=True)
    server.send(b"after the key update")
    ids = server.rekey_qkd()
    server.send(b"after the re-key")
    delivered = world.delivered("client")
    client.receive_data(server.data_to_send())
    events = drain(client)
    assert [type(e) for e in events] == [KeyUpdated, DataReceived, KeyUpdated, DataReceived]
    assert [e.data for e in events if isinstance(e, DataReceived)] == [
        b"after the key update", b"after the re-key"]
    rekey = events[2]
    assert isinstance(rekey, KeyUpdated) and rekey.qkd_key_ids == ids
    assert world.delivered("client") == delivered + 1  # it fetched the key all the same
    assert client.data_to_send() == b""  # no KeyUpdate answer, no QkdRekeyAck


@pytest.mark.parametrize("cut", ["between records", "inside a record"])
def test_end_of_file_without_close_notify_is_truncation(cut: str) -> None:
    world = build(client={"auth": "signature"})
    client, server = connect(world)
    client.send(b"x" * 100)
    wire = client.data_to_send()
    if cut == "inside a record":
        wire = wire[:50]
    server.receive_data(wire)
    events = drain(server)
    server.receive_data(b"")
    with pytest.raises(ConnectionTruncated) as info:
        server.next_event()
    if cut == "between records":
        assert [e.data for e in events if isinstance(e, DataReceived)] == [b"x" * 100]
    else:
        assert events == []
    assert server.state is State.ERROR
    world.secrets.assert_clean(info.value)
    with pytest.raises(LocalProtocolError):
        server.receive_data(b"more")


def test_nothing_can_be_sent_before_the_handshake_completes() -> None:
    world = build(client={"auth": "signature"})
    client, server = world.pair()

    def refused(conn: Connection) -> None:
        for action in (lambda: conn.send(b"early"), lambda: conn.key_update(),
                       conn.rekey_qkd, lambda: conn.export_keying_material("x", b"", 16),
                       conn.session_info):
            with pytest.raises(LocalProtocolError) as info:
                action()
            world.secrets.assert_clean(info.value)

    refused(client)
    refused(server)
    client.start_handshake()
    with pytest.raises(LocalProtocolError):
        client.start_handshake()
    refused(client)
    server.receive_data(client.data_to_send())
    assert drain(server) == []
    refused(server)  # the server has sent its Finished, but not heard the client's
    client.receive_data(server.data_to_send())
    assert isinstance(drain(client)[0], HandshakeComplete)
    server.receive_data(client.data_to_send())
    assert isinstance(drain(server)[0], HandshakeComplete)
    both_ways(client, server)


def test_data_in_the_same_flight_as_the_client_finished() -> None:
    world = build(client={"auth": "signature"})
    client, server = world.pair()
    client.start_handshake()
    server.receive_data(client.data_to_send())
    drain(server)
    client.receive_data(server.data_to_send())
    assert isinstance(drain(client)[0], HandshakeComplete)
    client.send(b"first")
    client.key_update()
    client.send(b"second")
    server.receive_data(client.data_to_send())
    events = drain(server)
    assert [type(e) for e in events] == [HandshakeComplete, DataReceived, KeyUpdated,
                                         DataReceived]
    assert [e.data for e in events if isinstance(e, DataReceived)] == [b"first", b"second"]


# -- 7. no secret in any text -----------------------------------------------------------


@pytest.mark.parametrize("mode", ["psk", "signature"])
def test_no_secret_in_any_repr(mode: str) -> None:
    world = build(scheme="Ed25519", x509_chain=mode == "signature", client={"auth": mode})
    pools = world.known_pools
    client, server = world.pair()
    texts: list[object] = [client, server]
    client.start_handshake()
    texts.append(client)
    events = pump(client, server)
    client.key_update()
    client.rekey_qkd()
    server.rekey_qkd()
    events2 = pump(client, server)
    client.send(b"data")
    server.send(b"data")
    client.close()
    events3 = pump(client, server)
    exported = client.export_keying_material("EXPORTER-test", b"", 32)
    world.secrets.add("exported", exported)
    delivered = pools.store_a.take(SERVER, 2)
    names = world.secrets.names()
    # the check is not vacuous: the schedule's secrets, KEM secrets, signing and QKD keys
    assert len(names) >= 20
    assert any("signing key" in n for n in names) and any("ML-KEM" in n for n in names)
    assert world.secrets.leaks(exported.hex().upper()) == ["exported"]
    texts += [world.sites.client, world.sites.server, world.sites.client.identity,
              world.sites.server.identity, world.sites.client.trust,
              world.sites.client.replay_cache, world.sites.client.key_source,
              client, server, client.session_info(), server.session_info(),
              client.session_info().peer, *delivered,
              *events["client"], *events["server"], *events2["client"], *events2["server"],
              *events3["client"], *events3["server"]]
    assert len(events2["client"]) >= 2 and ConnectionClosed() in events3["server"]
    world.secrets.assert_clean(*texts)


def test_config_repr_hides_the_secret_log() -> None:
    world = build()
    text = repr(world.sites.client)
    assert "secret_log" not in text
    assert "site-a" in text
    assert isinstance(world.sites.client, Config)


def test_truncation_reported_mid_handshake() -> None:
    world = build(client={"auth": "signature"})
    client, server = world.pair()
    client.start_handshake()
    hello = client.data_to_send()
    server.receive_data(hello[: len(hello) // 2])
    assert drain(server) == []
    server.receive_data(b"")
    with pytest.raises(ConnectionTruncated) as info:
        server.next_event()
    world.secrets.assert_clean(info.value)
    assert not server.handshake_complete

