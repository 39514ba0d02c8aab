"""Full TLS 1.3 handshake rates of OpenSSL (through pyOpenSSL), as a baseline.

A hybrid key exchange is only worth its cost if that cost is small next to what a
real deployment already pays for a handshake.  This module measures that reference
point: complete TLS 1.3 handshakes with a hybrid group and post-quantum (or
classical) certificates, client and server in one thread over memory BIOs, so the
figure is pure CPU and can be compared with in-process benchmarks of hybridkex.

Every handshake is a full one: the client never offers a session, the server keeps
no session cache and issues no stateless tickets, and the client checks the
server's certificate chain (and the server the client's, with ``mutual=True``), so
the signature verifications a real handshake does are all in the figure.  The
certificates (a CA, a server and a client) come from tests/support.tls_files.

    python bench/tls_baseline.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from OpenSSL import SSL

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import tls_files

__all__ = ["SIGNATURES", "tls13_handshake_once", "tls13_handshake_rate"]

SIGNATURES = ("ML-DSA-65", "Ed25519")

# bio_read chunk: larger than any single flight of these handshakes (an ML-DSA-65
# chain is about 12 KB), so one flight usually moves in one call.
_CHUNK = 1 << 16


def _openssl_lib() -> Any:
    # pyOpenSSL exposes no typed call for setting groups; its cffi ``lib`` is untyped,
    # so it is confined to this one accessor.
    from OpenSSL._util import lib

    return lib


def _set_groups(ctx: SSL.Context, group: str) -> None:
    # SSL_CTX_set1_curves_list is the same control as set1_groups_list in OpenSSL 3+.
    if _openssl_lib().SSL_CTX_set1_curves_list(ctx._context, group.encode("ascii")) != 1:
        raise RuntimeError(f"OpenSSL rejected the group list {group!r}")


def _write_pki(directory: Path, signature: str) -> dict[str, Path]:
    # pyOpenSSL cannot take ML-DSA keys as objects, only as PEM, so files it is.
    if signature not in SIGNATURES:
        raise ValueError(f"signature must be one of {SIGNATURES}, not {signature!r}")
    tls_files(directory, scheme=signature, ca_name="hybridkex baseline CA", server="server",
              clients=["client"])
    return {"ca": directory / "ca.pem",
            **{f"{role}_{kind}": directory / f"{role}.{suffix}"
               for role in ("server", "client")
               for kind, suffix in (("cert", "pem"), ("key", "key"))}}


def _context(
    method: int, group: str, ca: Path, verify: int, identity: tuple[Path, Path] | None
) -> SSL.Context:
    ctx = SSL.Context(method)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    # With no cache and no stateless tickets nothing can be resumed.  OpenSSL still
    # sends two stateful tickets (about 160 bytes, no encryption) after each
    # handshake, since pyOpenSSL offers no SSL_CTX_set_num_tickets; nobody redeems them.
    ctx.set_options(SSL.OP_NO_TICKET)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    _set_groups(ctx, group)
    ctx.load_verify_locations(str(ca))
    ctx.set_verify(verify)
    if identity is not None:
        cert, key = identity
        ctx.use_certificate_file(str(cert))
        ctx.use_privatekey_file(str(key))
        ctx.check_privatekey()
    return ctx


def _contexts(group: str, signature: str, mutual: bool) -> tuple[SSL.Context, SSL.Context]:
    """Both ends, configured once so the rate counts handshakes, not file loading."""
    with tempfile.TemporaryDirectory(prefix="tls-baseline-") as tmp:
        paths = _write_pki(Path(tmp), signature)
        server = _context(
            SSL.TLS_SERVER_METHOD,
            group,
            paths["ca"],
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT if mutual else SSL.VERIFY_NONE,
            (paths["server_cert"], paths["server_key"]),
        )
        client = _context(
            SSL.TLS_CLIENT_METHOD,
            group,
            paths["ca"],
            SSL.VERIFY_PEER,
            (paths["client_cert"], paths["client_key"]) if mutual else None,
        )
    # The contexts hold the keys and the CA store in memory by now.
    return client, server


def _step(conn: SSL.Connection) -> bool:
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        return False
    return True


def _drain(source: SSL.Connection, sink: SSL.Connection) -> bool:
    moved = False
    while True:
        try:
            data = source.bio_read(_CHUNK)
        except SSL.WantReadError:
            return moved
        sink.bio_write(data)
        moved = True


def _handshake(
    client_ctx: SSL.Context, server_ctx: SSL.Context
) -> tuple[SSL.Connection, SSL.Connection]:
    client = SSL.Connection(client_ctx, None)
    server = SSL.Connection(server_ctx, None)
    client.set_connect_state()
    server.set_accept_state()
    client_done = server_done = False
    while not (client_done and server_done):
        if not client_done:
            client_done = _step(client)
        moved = _drain(client, server)
        if not server_done:
            server_done = _step(server)
        moved = _drain(server, client) or moved
        if not moved and not (client_done and server_done):
            # Neither side produced anything yet both still wait: that is a deadlock,
            # not a slow peer, since there is no network in between.
            raise RuntimeError("TLS handshake stalled")
    return client, server


def tls13_handshake_once(
    *, group: str = "X25519MLKEM768", signature: str = "ML-DSA-65", mutual: bool = False
) -> dict[str, str]:
    """One handshake, reporting what was negotiated rather than what was asked for.

    A benchmark figure is only meaningful if the handshake used the configured group;
    OpenSSL could otherwise fall back silently, so the group comes from the
    connections themselves, and both ends must agree on it.
    """
    client_ctx, server_ctx = _contexts(group, signature, mutual)
    client, server = _handshake(client_ctx, server_ctx)
    if mutual and server.get_peer_certificate() is None:
        raise RuntimeError("mutual TLS requested but the client sent no certificate")
    if _openssl_lib().SSL_session_reused(client._ssl) != 0:
        raise RuntimeError("the handshake resumed a session instead of a full handshake")
    result: dict[str, str] = {}
    for key, read in (
        ("version", SSL.Connection.get_protocol_version_name),
        ("group", SSL.Connection.get_group_name),
        ("cipher", SSL.Connection.get_cipher_name),
    ):
        seen_by_client, seen_by_server = read(client), read(server)
        if seen_by_client is None or seen_by_client != seen_by_server:
            raise RuntimeError(
                f"{key}: client reports {seen_by_client!r}, server {seen_by_server!r}"
            )
        result[key] = seen_by_client
    return result


def tls13_handshake_rate(
    *,
    group: str = "X25519MLKEM768",
    signature: str = "ML-DSA-65",
    mutual: bool = False,
    seconds: float = 2.0,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Full handshakes per second, as a yardstick for hybridkex's own overhead.

    Contexts, keys and certificates are made once; each timed handshake builds a
    fresh connection pair, which a real server also has to do per client.
    """
    if seconds <= 0:
        raise ValueError("seconds must be positive")
    client_ctx, server_ctx = _contexts(group, signature, mutual)
    # The first handshake pays for lazy initialisation (algorithm fetches, caches).
    _handshake(client_ctx, server_ctx)
    count = 0
    start = clock()
    deadline = start + seconds
    while True:
        _handshake(client_ctx, server_ctx)
        count += 1
        now = clock()
        if now >= deadline:
            return count / (now - start)


def main() -> None:
    for group, signature, mutual in (
        ("X25519MLKEM768", "ML-DSA-65", False),
        ("X25519MLKEM768", "ML-DSA-65", True),
        ("X25519MLKEM768", "Ed25519", False),
    ):
        seen = tls13_handshake_once(group=group, signature=signature, mutual=mutual)
        rate = tls13_handshake_rate(group=group, signature=signature, mutual=mutual)
        auth = "mutual" if mutual else "server-only"
        print(
            f"{group:<16} {signature:<10} {auth:<12} {rate:8.0f} handshakes/s"
            f"  ({seen['version']}, group {seen['group']}, {seen['cipher']})"
        )


if __name__ == "__main__":
    main()
