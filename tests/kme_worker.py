"""KME processes to kill: a zygote that forks a fresh KME process on demand.

``python -m tests.kme_worker PKI_DIR SAE_MAP STORE_A STORE_B`` imports everything a
KME needs once, then reads commands on stdin, one a line::

    <site> <port> <peer port> [<reserve ahead>]

and forks a child that serves site A or B (``STORE_A`` / ``STORE_B``, any store URL)
on ``127.0.0.1:<port>``, with the other site's KME at ``<peer port>`` as its peer.
The child prints ``ready <site> <port> <pid>`` once it listens.  SIGKILL a child
and ask for another: a fork costs milliseconds where a new interpreter costs a
second, which is what lets tests/test_kme_crash.py kill KMEs hundreds of times.
The zygote starts no thread and no event loop before it forks.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

from hybridkex.keydelivery.kme.peers import peer_tls
from hybridkex.keydelivery.kme.server import KMEServer, run_until_signalled, server_ssl_context
from hybridkex.keydelivery.store import open_store


def serve(pki: Path, sae_map: dict[str, str], store_url: str, site: str, port: int,
          peer_port: int, reserve_ahead: int) -> None:
    peer = "B" if site == "A" else "A"
    cert, key = pki / f"kme-{site}.pem", pki / f"kme-{site}.key"
    store = open_store(store_url, site)
    server = KMEServer(store, site, sae_map, server_ssl_context(cert, key, pki / "ca.pem"),
                       peers={peer: f"https://127.0.0.1:{peer_port}"},
                       peer_tls=peer_tls(cert, key, pki / "ca.pem"),
                       reserve_ahead=reserve_ahead, sync_timeout_s=2.0)

    def ready(host: str, bound: int) -> None:
        print(f"ready {site} {bound} {os.getpid()}", flush=True)

    for _ in range(100):  # a client connection may hold the port as its local port
        try:
            asyncio.run(run_until_signalled(server, "127.0.0.1", port, ready))
            return
        except OSError:
            time.sleep(0.1)


def main() -> None:
    pki, sae_map_file, store_a, store_b = sys.argv[1:5]
    sae_map = json.loads(Path(sae_map_file).read_text())
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    for line in sys.stdin:
        fields = line.split()
        if not fields:
            continue
        site, port, peer_port = fields[0], int(fields[1]), int(fields[2])
        ahead = int(fields[3]) if len(fields) > 3 else 4
        if os.fork() == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                serve(Path(pki), sae_map, store_a if site == "A" else store_b, site, port,
                      peer_port, ahead)
            finally:
                os._exit(0)


if __name__ == "__main__":
    main()
