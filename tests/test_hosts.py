"""The test hosts themselves: two namespaces that reach each other only over the veth
pair, and the relay that delays and cuts (tests/netns.py, tests/relay.py)."""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest

from tests.netns import namespaces_available, two_hosts
from tests.relay import relay

ECHO_SERVER = """
import socket, sys
s = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
c, _ = s.accept()
c.sendall(c.recv(100).upper())
c.close()
"""

CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    c.sendall(b"hello")
    print(c.recv(100).decode())
except OSError as exc:
    print("unreachable", type(exc).__name__)
"""


def test_two_hosts_reach_each_other_only_over_the_veth_pair() -> None:
    ok, why = namespaces_available()
    if os.environ.get("CI") and not ok:
        pytest.fail(f"CI runs as root, yet namespaces are unavailable: {why}")
    with two_hosts("h") as (a, b):
        assert a.isolated == b.isolated == ok
        server = b.popen([sys.executable, "-c", ECHO_SERVER, b.address, "7000"],
                         stdout=__import__("subprocess").PIPE)
        try:
            assert server.stdout is not None
            assert server.stdout.readline().strip() == b"ready"
            if a.isolated:
                # B's listener is not on A's loopback: the hosts are really apart.
                alone = a.run([sys.executable, "-c", CLIENT, "127.0.0.1", "7000"],
                              capture_output=True, timeout=20)
                assert alone.stdout.decode().startswith("unreachable")
            out = a.run([sys.executable, "-c", CLIENT, b.address, "7000"],
                        capture_output=True, timeout=20)
            assert out.stdout.decode().strip() == "HELLO"
        finally:
            server.kill()
            server.wait()


def test_relay_delays_each_direction_and_cuts() -> None:
    upstream = socket.create_server(("127.0.0.1", 0))
    with relay(upstream.getsockname()[:2], delay_s=0.05) as r:
        client = socket.create_connection(r.address, timeout=5)
        server, _ = upstream.accept()
        start = time.monotonic()
        client.sendall(b"ping")
        assert server.recv(10) == b"ping"
        server.sendall(b"pong")
        assert client.recv(10) == b"pong"
        assert time.monotonic() - start >= 0.1  # two one-way delays
        r.cut()
        client.settimeout(5)
        with pytest.raises((ConnectionResetError, ConnectionAbortedError)):
            _exchange_after_cut(client)
        client.close()
        server.close()
    upstream.close()


def _exchange_after_cut(client: socket.socket) -> None:
    """Send and read once; a cut connection answers with a reset (or at least an EOF)."""
    client.sendall(b"x" * 100)
    if client.recv(10) == b"":
        raise ConnectionResetError("end of file after the cut")
