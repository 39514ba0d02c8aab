"""HKX/1 refusals: security policy, configuration, replays, key reuse and downgrades.

Every refusal is checked from both ends: the side that refuses raises a typed
ProtocolError (or, before anything was sent, fails closed with nothing on the wire),
the other side ends with the matching AlertReceived, neither reports
HandshakeComplete, and no error text shows a secret (tests/hkx1_harness.Secrets).
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest

from hybridkex.errors import (
    AlertReceived,
    ConnectionTruncated,
    DecodeError,
    InvalidParameter,
    LocalProtocolError,
    PeerAuthenticationFailed,
    PolicyViolation,
    ProtocolError,
    QKDKeyRefused,
    ReplayDetected,
    UnknownAlgorithm,
)
from hybridkex.keydelivery.errors import KeyNotAvailable
from hybridkex.protocol import (
    SUITES,
    ClientConnection,
    Config,
    ReplayCache,
    ServerConnection,
    State,
    TrustStore,
)
from hybridkex.protocol.wire import ClientHello, ServerHello
from tests.hkx1 import CLIENT, SERVER, drain, handshake, make_sites
from tests.hkx1_harness import (
    ALERT,
    HANDSHAKE,
    Outcome,
    Tamper,
    World,
    assert_refused,
    build,
    join_records,
    key_ids,
    split_records,
    start,
)

# Alert numbers (TLS 1.3's where TLS has one), written out here.
HANDSHAKE_FAILURE, ILLEGAL_PARAMETER, DECRYPT_ERROR = 40, 47, 51
INSUFFICIENT_SECURITY, QKD_REQUIRED, REPLAY = 71, 201, 202
FATAL = 2
CLIENT_HELLO_TYPE, SERVER_HELLO_TYPE = 1, 2


def nothing_changed(world: World, before: dict[str, tuple[int, int, int]]) -> None:
    assert status(world) == before


def status(world: World) -> dict[str, tuple[int, int, int]]:
    out = {}
    for role, peer in (("client", SERVER), ("server", CLIENT)):
        s = world.store(role).status(peer)
        out[role] = (s.available_to_take, s.available_to_fetch, s.delivered)
    return out


def refused_before_sending(world: World, client: ClientConnection,
                           error: type[Exception] = PolicyViolation) -> Exception:
    with pytest.raises(error) as info:
        client.start_handshake()
    assert client.data_to_send() == b""
    assert client.state is State.ERROR
    with pytest.raises(LocalProtocolError):
        client.start_handshake()
    world.secrets.assert_clean(info.value)
    return info.value


# -- 3. policy -------------------------------------------------------------------------


@pytest.mark.parametrize("empty", ["no keys deposited", "pool drained"])
@pytest.mark.parametrize("auth", ["auto", "signature", "psk"])
def test_default_policy_with_an_empty_pool_fails_closed(empty: str, auth: str) -> None:
    world = build(keys=0 if empty == "no keys deposited" else 5, client={"auth": auth})
    if empty == "pool drained":
        world.store("client").take(SERVER, 5)
    before = status(world)
    client, _ = world.pair()
    exc = refused_before_sending(world, client)
    nothing_changed(world, before)
    assert isinstance(exc, PolicyViolation)
    if auth == "psk":  # psk fails first, for its authentication units
        assert exc.alert == INSUFFICIENT_SECURITY and "psk authentication needs" in str(exc)
    else:  # the policy's missing QKD key
        assert exc.alert == QKD_REQUIRED


def test_psk_client_with_too_few_pool_keys_fails_closed_and_spends_nothing() -> None:
    world = build(keys=3, client={"auth": "psk"})  # a QKD key, but not psk's three more
    before = status(world)
    client, _ = world.pair()
    exc = refused_before_sending(world, client)
    assert isinstance(exc, PolicyViolation) and exc.alert == INSUFFICIENT_SECURITY
    assert "psk authentication needs 4 pool keys" in str(exc)
    nothing_changed(world, before)


@pytest.mark.parametrize("setup", ["empty pool", "no key source"])
def test_at_least_pq_completes_without_qkd_and_says_so(setup: str) -> None:
    options = {"security": "at-least-pq"}
    if setup == "empty pool":
        world = build(keys=0, client={**options, "auth": "signature"}, server=options)
    else:
        world = build(qkd=False, client=options, server=options)
    client, server, _ = handshake(world.sites)
    for conn in (client, server):
        info = conn.session_info()
        assert conn.handshake_complete
        assert info.qkd_key_ids == () and not info.qkd
        assert isinstance(info.fallback, str) and info.fallback
        assert info.post_quantum and info.auth_mode == "signature"
        assert info.pool_keys_spent == 0
        assert info.security_policy == "at-least-pq"
    client.send(b"ping")
    server.receive_data(client.data_to_send())
    assert [getattr(e, "data", None) for e in drain(server)] == [b"ping"]


def test_server_requiring_qkd_refuses_a_client_without_a_key_source() -> None:
    world = build(client={"key_source": None})
    assert world.sites.server.policy.requires_qkd
    client, server, outcome = start(world)
    # the only thing missing is the QKD key: qkd_required (docs/protocol.md 8.1)
    assert_refused(world, client, server, outcome, detector="server", error=PolicyViolation,
                   alert=QKD_REQUIRED)


def test_client_requiring_qkd_refuses_a_server_without_a_key_source() -> None:
    world = build(client={"auth": "signature"}, server={"key_source": None})
    before = status(world)
    client, server, outcome = start(world)
    assert_refused(world, client, server, outcome, detector="client", error=PolicyViolation,
                   alert=QKD_REQUIRED)
    assert status(world)["client"][2] == before["client"][2] + 1  # the offered key is spent


def test_psk_only_server_refuses_a_signature_client() -> None:
    world = build(client={"auth": "signature"}, server={"auth": "psk"})
    client, server, outcome = start(world)
    assert_refused(world, client, server, outcome, detector="server", error=PolicyViolation,
                   alert=INSUFFICIENT_SECURITY)


def test_signature_only_server_refuses_a_psk_client() -> None:
    world = build(client={"auth": "psk"}, server={"auth": "signature"})
    client, server, outcome = start(world)
    assert_refused(world, client, server, outcome, detector="server", error=PolicyViolation,
                   alert=INSUFFICIENT_SECURITY)


def test_server_without_a_signing_identity_refuses_signature_mode() -> None:
    world = build(client={"auth": "signature"}, server={"identity": None})
    client, server, outcome = start(world)
    assert_refused(world, client, server, outcome, detector="server", error=PolicyViolation,
                   alert=HANDSHAKE_FAILURE)


@pytest.mark.parametrize("mode", ["psk", "signature"])
def test_no_common_suite(mode: str) -> None:
    world = build(client={"auth": mode, "suites": (SUITES[0x0101],)},
                  server={"suites": (SUITES[0x0103],)})
    client, server, outcome = start(world)
    assert_refused(world, client, server, outcome, detector="server", error=PolicyViolation,
                   alert=HANDSHAKE_FAILURE)


def test_x25519_alone_is_never_enough() -> None:
    """"either" accepts a QKD key or ML-KEM; with neither the server refuses."""
    options = {"security": "either", "suites": (SUITES[0x0001],)}
    world = build(qkd=False, client=options, server=options)
    client, server, outcome = start(world)
    assert_refused(world, client, server, outcome, detector="server", error=PolicyViolation,
                   alert=INSUFFICIENT_SECURITY)


@pytest.mark.parametrize(("policy", "key_source"), [
    ("at-least-pq", True), ("at-least-pq", False), ("qkd-and-pq", True),
    (None, True),  # the default with a key source: qkd-and-pq
    (None, False),  # the default without one: at-least-pq
])
def test_classical_suite_alone_refused_by_a_pq_policy(policy: str | None,
                                                      key_source: bool) -> None:
    source = build(keys=1).sites.client.key_source if key_source else None
    with pytest.raises(InvalidParameter):
        Config(site=CLIENT, key_source=source, security=policy, suites=(SUITES[0x0001],))


def bad_configs() -> list[tuple[str, dict[str, Any], type[Exception]]]:
    source = build(keys=1).sites.client.key_source
    return [
        ("empty site", {"site": ""}, InvalidParameter),
        ("site of 256 bytes", {"site": "s" * 256}, InvalidParameter),
        ("site of 128 two-byte characters", {"site": "é" * 128}, InvalidParameter),
        ("site not a string", {"site": b"site-a"}, InvalidParameter),
        ("unknown auth", {"site": CLIENT, "auth": "password"}, InvalidParameter),
        ("psk without a key source", {"site": CLIENT, "auth": "psk"}, InvalidParameter),
        ("unknown policy", {"site": CLIENT, "security": "paranoid"}, InvalidParameter),
        ("policy in capitals", {"site": CLIENT, "security": "AT-LEAST-PQ"}, InvalidParameter),
        ("qkd-and-pq without a key source", {"site": CLIENT, "security": "qkd-and-pq"},
         InvalidParameter),
        ("at-least-qkd without a key source", {"site": CLIENT, "security": "at-least-qkd"},
         InvalidParameter),
        ("no suites", {"site": CLIENT, "suites": ()}, InvalidParameter),
        ("a suite twice", {"site": CLIENT, "suites": (SUITES[0x0101], SUITES[0x0101])},
         InvalidParameter),
        ("a made-up suite", {"site": CLIENT, "suites": (
            dataclasses.replace(SUITES[0x0101], code=0x0999),)}, InvalidParameter),
        ("unknown signature scheme", {"site": CLIENT, "signature_schemes": ("RSA-2048",)},
         UnknownAlgorithm),
        ("no QKD keys per handshake", {"site": CLIENT, "key_source": source,
                                       "qkd_keys_per_handshake": 0}, InvalidParameter),
        ("17 QKD keys per handshake", {"site": CLIENT, "key_source": source,
                                       "qkd_keys_per_handshake": 17}, InvalidParameter),
        ("key update every record", {"site": CLIENT, "key_update_interval": 1},
         InvalidParameter),
        ("key update beyond the AES-GCM limit", {"site": CLIENT,
                                                 "key_update_interval": (1 << 24) + 1},
         InvalidParameter),
    ]


@pytest.mark.parametrize(("fields", "error"), [pytest.param(f, e, id=n)
                                               for n, f, e in bad_configs()])
def test_config_validation(fields: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        Config(**fields)


def test_config_accepts_the_documented_forms() -> None:
    source = build(keys=1).sites.client.key_source
    for policy in ("qkd-and-pq", "at-least-qkd", "at-least-pq", "either"):
        assert Config(site=CLIENT, key_source=source, security=policy).policy.value == policy
    assert Config(site=CLIENT).policy.value == "at-least-pq"
    assert Config(site=CLIENT, key_source=source).policy.value == "qkd-and-pq"
    assert Config(site="s" * 255).site == "s" * 255
    only_chacha = (SUITES[0x0102],)
    assert Config(site=CLIENT, suites=only_chacha, key_update_interval=(1 << 24) + 1)


@pytest.mark.parametrize("peer", ["", CLIENT, "s" * 256])
def test_client_connection_needs_another_site(peer: str) -> None:
    with pytest.raises(LocalProtocolError):
        ClientConnection(build(qkd=False).sites.client, peer)


# -- 4. replays and key reuse -----------------------------------------------------------


def first_flight(world: World) -> tuple[ClientConnection, bytes]:
    client, _ = world.pair()
    client.start_handshake()
    return client, client.data_to_send()


def replay_into(world: World, config: Config, hello: bytes,
                error: type[ProtocolError]) -> ProtocolError:
    before = status(world)
    replayed = ServerConnection(config)
    replayed.receive_data(hello)
    with pytest.raises(error) as info:
        replayed.next_event()
    assert replayed.state is State.ERROR
    # the refusal goes out as a fatal alert, in the clear (no keys exist yet)
    records = split_records(replayed.data_to_send())
    assert len(records) == 1 and records[0][0] == ALERT
    assert records[0][1] == bytes([FATAL, info.value.alert])
    nothing_changed(world, before)  # a replay spends nothing
    world.secrets.assert_clean(info.value, replayed)
    return info.value


@pytest.mark.parametrize("mode", ["psk", "signature"])
def test_replayed_client_hello_is_detected(mode: str) -> None:
    world = build(client={"auth": mode})
    client, hello = first_flight(world)
    original = ServerConnection(world.sites.server)
    original.receive_data(hello)
    assert drain(original) == []
    exc = replay_into(world, world.sites.server, hello, ReplayDetected)
    assert exc.alert == REPLAY
    client.receive_data(original.data_to_send())  # the original session is unharmed
    drain(client)
    original.receive_data(client.data_to_send())
    drain(original)
    assert client.handshake_complete and original.handshake_complete


@pytest.mark.parametrize("mode", ["psk", "signature"])
def test_replay_to_a_server_that_forgot_it_finds_the_keys_spent(mode: str) -> None:
    world = build(client={"auth": mode})
    _, hello = first_flight(world)
    original = ServerConnection(world.sites.server)
    original.receive_data(hello)
    drain(original)
    forgetful = dataclasses.replace(world.sites.server, replay_cache=ReplayCache())
    replay_into(world, forgetful, hello, QKDKeyRefused)


def named_key_ids(hello: bytes) -> tuple[list[str], list[str]]:
    """The pool keys a ClientHello names: (QKD key IDs, psk authentication key IDs)."""
    [(content_type, payload)] = split_records(hello)
    assert content_type == HANDSHAKE and payload[0] == CLIENT_HELLO_TYPE
    message = ClientHello.decode(payload[4:])
    return ([str(uuid.UUID(bytes=raw)) for raw in message.qkd_key_ids],
            [str(uuid.UUID(bytes=raw)) for raw in message.auth_key_ids])


def drop_suite(index: int) -> Tamper:
    """A man in the middle that removes the ``index``-th offered suite from the hello."""
    def tamper(sender: str, data: bytes) -> bytes:
        records = split_records(data)
        if sender != "client" or records[0][0] != HANDSHAKE or records[0][1][0] != \
                CLIENT_HELLO_TYPE:
            return data
        payload = records[0][1]
        hello = ClientHello.decode(payload[4:])
        assert len(hello.suites) >= 2
        suites = hello.suites[:index] + hello.suites[index + 1:]
        forged = dataclasses.replace(hello, suites=suites).encode()
        assert ClientHello.decode(forged[4:]).suites == suites
        return join_records([(HANDSHAKE, forged), *records[1:]])
    return tamper


# Each failure, and which of the keys its hello names the server has consumed by the time it
# fails (docs/protocol.md 6.2 and 8.4: refusals of the mode come before any fetch; a wrong
# binder consumes the three authentication units and never reaches the QKD keys; from step 6
# on, the QKD keys are fetched, and whatever follows, they stay consumed).
FAILURES: dict[str, tuple[dict[str, Any], dict[str, Any], Tamper | None, str]] = {
    "psk hello altered in transit": ({"auth": "psk"}, {}, drop_suite(0), "auth"),
    "signature hello altered in transit": ({"auth": "signature"}, {}, drop_suite(0), "all"),
    "psk-only server, signature client": ({"auth": "signature"}, {"auth": "psk"}, None,
                                          "none"),
    "signature-only server, psk client": ({"auth": "psk"}, {"auth": "signature"}, None,
                                          "none"),
    "server without identity": ({"auth": "signature"}, {"identity": None}, None, "none"),
    "no common suite, psk": ({"auth": "psk", "suites": (SUITES[0x0101],)},
                             {"suites": (SUITES[0x0103],)}, None, "all"),
    "no common suite, signature": ({"auth": "signature", "suites": (SUITES[0x0101],)},
                                   {"suites": (SUITES[0x0103],)}, None, "all"),
    "server identity not trusted": ({"auth": "signature", "trust": TrustStore()}, {}, None,
                                    "all"),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_keys_a_failed_handshake_used_stay_consumed(case: str) -> None:
    """The client never gets back a key it offered; the server has consumed exactly the
    keys the failure reached, and none of those can be fetched again."""
    client_options, server_options, tamper, reached = FAILURES[case]
    world = build(client=client_options, server=server_options)
    pools = world.known_pools
    hellos: list[bytes] = []

    def watch(sender: str, data: bytes) -> bytes:
        if sender == "client" and not hellos:
            hellos.append(data)
        return tamper(sender, data) if tamper is not None else data

    _, _, outcome = start(world, tamper=watch)
    assert not outcome.completed("client") and not outcome.completed("server")
    assert outcome.errors, "the handshake was expected to fail"
    qkd_ids, auth_ids = named_key_ids(hellos[0])
    named = qkd_ids + auth_ids
    assert len(qkd_ids) == 1 and len(auth_ids) == (3 if client_options["auth"] == "psk" else 0)
    assert set(named) <= set(key_ids(pools, CLIENT))
    total = len(pools.taken_by(CLIENT))
    after = status(world)
    assert after["client"] == (total - len(named), total, len(named))  # all spent at the client
    consumed = {"all": named, "auth": auth_ids, "none": []}[reached]
    assert after["server"] == (total, total - len(consumed), len(consumed))
    for key_id in consumed:
        with pytest.raises(KeyNotAvailable):
            pools.store_b.fetch(CLIENT, [key_id])


# -- 5. downgrades ----------------------------------------------------------------------


def check_downgrade_failed(world: World, client: ClientConnection, server: ServerConnection,
                           outcome: Outcome) -> None:
    assert not outcome.completed("client") and not outcome.completed("server")
    assert not client.handshake_complete and not server.handshake_complete
    detected = [e for e in outcome.errors.values()
                if not isinstance(e, AlertReceived | ConnectionTruncated)]
    assert detected, f"nobody noticed the forgery: {outcome.errors}"
    assert all(isinstance(e, ProtocolError) for e in outcome.errors.values())
    world.secrets.assert_clean(*outcome.errors.values(), client, server)


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("mode", ["psk", "signature"])
def test_mitm_removing_an_offered_suite_is_detected(mode: str, index: int) -> None:
    world = build(client={"auth": mode})
    client, server, outcome = start(world, tamper=drop_suite(index))
    check_downgrade_failed(world, client, server, outcome)
    if mode == "psk":  # the binder covers the suites: the server refuses the hello at once
        refusal = outcome.errors.get("server")
        assert isinstance(refusal, PeerAuthenticationFailed) and refusal.alert == DECRYPT_ERROR
        assert isinstance(outcome.errors.get("client"), AlertReceived)


@pytest.mark.parametrize("mode", ["psk", "signature"])
def test_mitm_hiding_the_strongest_suite_is_detected(mode: str) -> None:
    """The server prefers ML-KEM-1024; a MITM hides it so ML-KEM-768 gets chosen."""
    strong, weak = SUITES[0x0103], SUITES[0x0101]
    world = build(client={"auth": mode, "suites": (weak, strong)},
                  server={"suites": (strong, weak)})
    control_client, _, _ = handshake(world.sites)
    assert control_client.session_info().suite == strong.name  # untouched, the strong one
    client, server, outcome = start(world, tamper=drop_suite(1))
    check_downgrade_failed(world, client, server, outcome)


def change_server_suite(code: int) -> Tamper:
    def tamper(sender: str, data: bytes) -> bytes:
        records = split_records(data)
        if sender != "server" or records[0][0] != HANDSHAKE or records[0][1][0] != \
                SERVER_HELLO_TYPE:
            return data
        hello = ServerHello.decode(records[0][1][4:])
        assert hello.suite != code
        forged = dataclasses.replace(hello, suite=code).encode()
        return join_records([(HANDSHAKE, forged), *records[1:]])
    return tamper


@pytest.mark.parametrize("code", [0x0102, 0x0103])
@pytest.mark.parametrize("mode", ["psk", "signature"])
def test_mitm_changing_the_chosen_suite_is_detected(mode: str, code: int) -> None:
    offered = (SUITES[0x0101], SUITES[0x0102], SUITES[0x0103])
    world = build(client={"auth": mode, "suites": offered}, server={"suites": offered})
    client, server, outcome = start(world, tamper=change_server_suite(code))
    check_downgrade_failed(world, client, server, outcome)
    noticed = outcome.errors.get("client")
    assert isinstance(noticed, ProtocolError) and not isinstance(noticed, AlertReceived)
    if code == 0x0103:  # its key shares are not ML-KEM-1024's: inconsistent with the suite
        assert isinstance(noticed, DecodeError) and noticed.alert == ILLEGAL_PARAMETER
        # no handshake keys yet, so the alert goes in clear, and the server accepts that
        # one kind of clear record (docs/protocol.md 2.1)
        told = outcome.errors.get("server")
        assert isinstance(told, AlertReceived) and told.alert == ILLEGAL_PARAMETER


def test_allow_classical_is_explicit_and_reported() -> None:
    """X25519 alone only under allow-classical, on both sides, and never silently."""
    classical = {"security": "allow-classical", "suites": (SUITES[0x0001],)}
    client, server, _ = handshake(make_sites(scheme="Ed25519", qkd=False,
                                             client=classical, server=classical))
    for side in (client, server):
        info = side.session_info()
        assert info.kems == ("X25519",) and not info.qkd
        assert info.fallback is not None and "X25519 only" in info.fallback
    # The same client against a server with the default policy (at-least-pq), which
    # offers only post-quantum suites, is refused; and so it is by a server that has the
    # classical suite but not the policy.
    world = build(qkd=False, scheme="Ed25519", client=classical)
    client, server, outcome = start(world)
    assert_refused(world, client, server, outcome, detector="server", error=PolicyViolation,
                   alert=HANDSHAKE_FAILURE)
    world = build(qkd=False, scheme="Ed25519", client=classical,
                  server={"security": "either", "suites": (SUITES[0x0001],)})
    client, server, outcome = start(world)
    assert_refused(world, client, server, outcome, detector="server", error=PolicyViolation,
                   alert=INSUFFICIENT_SECURITY)
