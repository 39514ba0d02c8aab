"""HKX/1 identity checks in signature mode: every way a peer's key or chain is refused.

Refusals the client makes (of the server's Identity) happen before either side has
finished: neither reports HandshakeComplete, and the server ends with the client's
alert.  Refusals the server makes (of the client's Identity) come after the client
has sent its Finished, so the client has already reported HandshakeComplete, as a
TLS 1.3 client does; what is checked there is that the server never completes,
never releases the client's application data, and that the client ends with the
server's alert.  Chains are Ed25519 (fast), from tests/support.PKI.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from hybridkex.errors import (
    AlertReceived,
    LocalProtocolError,
    PeerAuthenticationFailed,
    PolicyViolation,
)
from hybridkex.protocol import (
    HandshakeComplete,
    SigningIdentity,
    State,
    TrustStore,
)
from tests.hkx1 import CLIENT, SERVER, drain
from tests.hkx1_harness import World, assert_refused, build, start
from tests.support import PKI

# Alert numbers, as TLS 1.3 numbers them.
HANDSHAKE_FAILURE, BAD_CERTIFICATE, UNKNOWN_CA, DECRYPT_ERROR = 40, 42, 48, 51
CERTIFICATE_REQUIRED = 116


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def authority(root_name: str = "hkx test root", *, mid_is_ca: bool = True) -> PKI:
    """An Ed25519 root and intermediate (tests/support.PKI) that issue leaves on demand."""
    return PKI.create("Ed25519", root_name=root_name, intermediate_is_ca=mid_is_ca, sites=())


def x509_world(server_identity: SigningIdentity, trusted: PKI,
               client: dict[str, Any] | None = None) -> World:
    """The client trusts ``trusted``; the server presents ``server_identity``; the
    client's own chain is good (issued by ``trusted``, which the server trusts)."""
    return build(scheme="Ed25519",
                 client={"auth": "signature", "trust": trusted.trust(),
                         "identity": trusted.new_identity(CLIENT), **(client or {})},
                 server={"trust": trusted.trust(), "identity": server_identity})


# -- refused by the client ------------------------------------------------------------


def refused_by_client(world: World, error: type[PeerAuthenticationFailed | PolicyViolation]
                      = PeerAuthenticationFailed, alert: int | None = None) -> None:
    client, server, outcome = start(world)
    assert_refused(world, client, server, outcome, detector="client", error=error, alert=alert)


def test_control_good_chain_is_accepted() -> None:
    """The worlds below differ from this one in one thing each."""
    ca = authority()
    world = x509_world(ca.new_identity(SERVER), ca)
    client, _, outcome = start(world)
    assert outcome.errors == {}
    assert outcome.completed("client") and outcome.completed("server")
    assert client.session_info().peer.kind == "x509"


def test_raw_key_that_is_not_pinned() -> None:
    refused_by_client(build(scheme="Ed25519", client={"auth": "signature",
                                                      "trust": TrustStore()}),
                      alert=BAD_CERTIFICATE)


def test_raw_key_pinned_for_another_site() -> None:
    world = build(scheme="Ed25519", client={"auth": "signature"})
    server_identity = world.sites.server.identity
    assert server_identity is not None
    other = SigningIdentity.generate("Ed25519")
    trust = TrustStore(pinned={SERVER: ("Ed25519", other.public_key),
                               "site-c": ("Ed25519", server_identity.public_key)})
    world = build(scheme="Ed25519", client={"auth": "signature", "trust": trust},
                  server={"identity": server_identity})
    refused_by_client(world, alert=BAD_CERTIFICATE)


def test_raw_key_pinned_under_another_scheme() -> None:
    world = build(scheme="Ed25519", client={"auth": "signature"})
    server_identity = world.sites.server.identity
    assert server_identity is not None
    trust = TrustStore(pinned={SERVER: ("ML-DSA-44", server_identity.public_key)})
    refused_by_client(build(scheme="Ed25519", client={"auth": "signature", "trust": trust},
                            server={"identity": server_identity}), alert=BAD_CERTIFICATE)


def test_stolen_public_key_without_its_private_key() -> None:
    """The server presents site-b's pinned key but signs with another: IdentityVerify fails."""
    world = build(scheme="Ed25519", client={"auth": "signature"})
    real = world.sites.server.identity
    assert real is not None
    impostor = SigningIdentity("Ed25519", SigningIdentity.generate("Ed25519").private_key,
                               real.public_key)
    forged = build(scheme="Ed25519",
                   client={"auth": "signature", "trust": world.sites.client.trust},
                   server={"identity": impostor})
    refused_by_client(forged, alert=DECRYPT_ERROR)


@pytest.mark.parametrize("variant", ["another root name", "same root name, other key",
                                     "rogue root sent along"])
def test_chain_from_another_root(variant: str) -> None:
    trusted = authority()
    rogue = authority("rogue root" if variant == "another root name" else "hkx test root")
    identity = rogue.new_identity(SERVER, with_root=variant == "rogue root sent along")
    refused_by_client(x509_world(identity, trusted), alert=UNKNOWN_CA)


def test_chain_when_only_raw_keys_are_trusted() -> None:
    ca = authority()
    world = x509_world(ca.new_identity(SERVER), ca, client={"trust": TrustStore()})
    refused_by_client(world, alert=UNKNOWN_CA)


def test_leaf_naming_another_site() -> None:
    ca = authority()
    refused_by_client(x509_world(ca.new_identity("site-c"), ca), alert=BAD_CERTIFICATE)


def test_leaf_naming_the_client_instead_of_the_server() -> None:
    """A chain the client's own CA issued to the client is not the server's."""
    ca = authority()
    refused_by_client(x509_world(ca.new_identity(CLIENT), ca), alert=BAD_CERTIFICATE)


@pytest.mark.parametrize("when", ["expired", "not yet valid"])
def test_leaf_outside_its_validity(when: str) -> None:
    ca = authority()
    start_time = _now() - datetime.timedelta(days=10) if when == "expired" else \
        _now() + datetime.timedelta(days=2)
    identity = ca.new_identity(SERVER, days=1, not_before=start_time)
    refused_by_client(x509_world(identity, ca), alert=BAD_CERTIFICATE)


def test_validity_is_checked_at_the_configured_clock() -> None:
    ca = authority()
    late = _now() + datetime.timedelta(days=30)
    refused_by_client(x509_world(ca.new_identity(SERVER), ca, client={"clock": lambda: late}),
                      alert=BAD_CERTIFICATE)


def test_intermediate_that_is_not_a_ca() -> None:
    trusted = authority(mid_is_ca=False)
    refused_by_client(x509_world(trusted.new_identity(SERVER), trusted), alert=BAD_CERTIFICATE)


def test_leaf_used_as_an_issuer() -> None:
    """A leaf (ca=False) of the trusted CA signing a "site-b" certificate."""
    ca = authority()
    leaf = ca.intermediate_ca.issue("site-c", ca=False)
    identity = leaf.issue(SERVER).identity(leaf.certificate, ca.intermediate)
    refused_by_client(x509_world(identity, ca), alert=BAD_CERTIFICATE)


@pytest.mark.parametrize("kind", ["raw", "x509"])
def test_signature_scheme_the_client_does_not_accept(kind: str) -> None:
    if kind == "raw":
        world = build(scheme="Ed25519", client={"auth": "signature",
                                                "signature_schemes": ("ML-DSA-65",)})
    else:
        ca = authority()
        world = x509_world(ca.new_identity(SERVER), ca,
                           client={"signature_schemes": ("ML-DSA-65", "ECDSA-P256")})
    refused_by_client(world, alert=HANDSHAKE_FAILURE)


def test_client_without_identity_when_the_server_requires_one() -> None:
    world = build(client={"auth": "signature", "identity": None})
    assert world.sites.server.mutual_auth
    refused_by_client(world, error=PolicyViolation, alert=CERTIFICATE_REQUIRED)


# -- refused by the server ------------------------------------------------------------


def refused_by_server(world: World, alert: int | None = None) -> None:
    client, server = world.pair()
    client.start_handshake()
    server.receive_data(client.data_to_send())
    assert drain(server) == []
    client.receive_data(server.data_to_send())
    client_events = drain(client)
    assert [type(e) for e in client_events] == [HandshakeComplete]
    client.send(b"application data the server must never release")
    server.receive_data(client.data_to_send())
    with pytest.raises(PeerAuthenticationFailed) as info:
        drain(server)
    if alert is not None:
        assert info.value.alert == alert
    assert server.state is State.ERROR and not server.handshake_complete
    client.receive_data(server.data_to_send())
    with pytest.raises(AlertReceived) as received:
        drain(client)
    assert received.value.alert == info.value.alert
    assert client.state is State.ERROR
    with pytest.raises(LocalProtocolError):  # the server is done
        server.next_event()
    world.secrets.assert_clean(info.value, received.value, client, server, *client_events)


def test_server_refuses_an_unpinned_client_key() -> None:
    refused_by_server(build(scheme="Ed25519", client={"auth": "signature"},
                            server={"trust": TrustStore()}), alert=BAD_CERTIFICATE)


def test_server_refuses_a_client_chain_from_another_root() -> None:
    trusted, rogue = authority(), authority()
    world = build(scheme="Ed25519",
                  client={"auth": "signature", "trust": trusted.trust(),
                          "identity": rogue.new_identity(CLIENT)},
                  server={"trust": trusted.trust(), "identity": trusted.new_identity(SERVER)})
    refused_by_server(world, alert=UNKNOWN_CA)


def test_server_refuses_a_client_scheme_it_does_not_accept() -> None:
    refused_by_server(build(scheme="Ed25519", client={"auth": "signature"},
                            server={"signature_schemes": ("ML-DSA-87",)}),
                      alert=HANDSHAKE_FAILURE)


def test_server_refuses_a_client_leaf_naming_another_site() -> None:
    ca = authority()
    world = build(scheme="Ed25519",
                  client={"auth": "signature", "trust": ca.trust(),
                          "identity": ca.new_identity("site-c")},
                  server={"trust": ca.trust(), "identity": ca.new_identity(SERVER)})
    refused_by_server(world, alert=BAD_CERTIFICATE)


def test_server_never_releases_data_from_a_refused_client() -> None:
    """Same as above, checked through the events: no DataReceived before the refusal."""
    world = build(scheme="Ed25519", client={"auth": "signature"},
                  server={"trust": TrustStore()})
    client, server = world.pair()
    client.start_handshake()
    server.receive_data(client.data_to_send())
    drain(server)
    client.receive_data(server.data_to_send())
    drain(client)
    client.send(b"x")
    server.receive_data(client.data_to_send())
    with pytest.raises(PeerAuthenticationFailed):  # its very first event is the refusal
        server.next_event()
    with pytest.raises(LocalProtocolError):  # and the data behind it never comes out
        server.next_event()
