"""HKX/1: the hybrid handshake, key schedule and record layer, sans-IO.

>>> from hybridkex.protocol import ClientConnection, ServerConnection, Config
>>> # client = ClientConnection(Config(site="site-a", ...), peer="site-b")
>>> # client.start_handshake(); transport.send(client.data_to_send()); ...

docs/protocol.md is the specification; this package is one implementation of it.
"""

from hybridkex.protocol.config import Config, ReplayCache, SecurityPolicy
from hybridkex.protocol.connection import ClientConnection, Connection, ServerConnection, State
from hybridkex.protocol.events import (
    NEED_DATA,
    ConnectionClosed,
    DataReceived,
    Event,
    HandshakeComplete,
    KeyUpdated,
    NeedData,
    QKDKeysNeeded,
)
from hybridkex.protocol.identity import PeerIdentity, SigningIdentity, TrustStore
from hybridkex.protocol.randomness import Randomness, SystemRandomness
from hybridkex.protocol.session import SessionInfo
from hybridkex.protocol.suites import DEFAULT_SUITES, SUITES, Suite, suite_by_name

__all__ = [
    "DEFAULT_SUITES",
    "NEED_DATA",
    "SUITES",
    "ClientConnection",
    "Config",
    "Connection",
    "ConnectionClosed",
    "DataReceived",
    "Event",
    "HandshakeComplete",
    "KeyUpdated",
    "NeedData",
    "PeerIdentity",
    "QKDKeysNeeded",
    "Randomness",
    "ReplayCache",
    "SecurityPolicy",
    "ServerConnection",
    "SessionInfo",
    "SigningIdentity",
    "State",
    "Suite",
    "SystemRandomness",
    "TrustStore",
    "suite_by_name",
]
