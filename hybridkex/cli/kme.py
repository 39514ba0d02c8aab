"""``hybridkex kme serve``: one site's ETSI GS QKD 014 Key Management Entity.

    hybridkex kme serve --site-id A --store sqlite:///a.db --listen 0.0.0.0:8443 \\
        --cert kme-a.pem --key kme-a.key --ca ca.pem --sae-map saes.json \\
        --peer B=https://kme-b.example:8443

The server itself (aiohttp) is imported only when the command runs, so the rest of
the command line works without the ``kme`` extra.  SIGTERM and SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from hybridkex.cli.args import parse_address
from hybridkex.errors import BackendUnavailable, HybridKexError, InvalidParameter
from hybridkex.keydelivery.store import KeyStore, open_store


def register(sub: Any) -> None:
    kme = sub.add_parser("kme", help="ETSI GS QKD 014 key management entity (KME)")
    ksub = kme.add_subparsers(dest="kme_command", required=True)
    s = ksub.add_parser("serve", help="serve one site's QKD keys to its SAEs over HTTPS "
                        "with mutual TLS (ETSI GS QKD 014)")
    s.add_argument("--site-id", required=True, help="the site this KME serves (its KME ID)")
    s.add_argument("--store", required=True, metavar="URL",
                   help="key store: memory:, sqlite:///path or postgresql://...")
    s.add_argument("--listen", required=True, metavar="HOST:PORT",
                   help="address to listen on ([::1]:PORT for IPv6; port 0 picks a free one)")
    s.add_argument("--cert", required=True, metavar="PEM", help="the KME's TLS certificate")
    s.add_argument("--key", required=True, metavar="PEM", help="its private key")
    s.add_argument("--ca", required=True, metavar="PEM",
                   help="CA that issues the SAE client certificates and the peer KMEs' "
                   "certificates")
    s.add_argument("--sae-map", required=True, metavar="FILE",
                   help='JSON object mapping SAE IDs to site IDs: {"sae-a": "A", ...}; an '
                   'entry may be {"site": "A", "skip_peer": "sae-b"}')
    s.add_argument("--peer", action="append", default=[], metavar="SITE_ID=https://HOST:PORT",
                   help="a peer KME (repeatable): keys for SAEs at SITE_ID are reserved "
                   "there, and sync is accepted only from these KMEs")
    s.add_argument("--reserve-ahead", type=int, default=None, metavar="N",
                   help="keys reserved ahead at both KMEs per SAE pair and size "
                   "(default 128; 0: one sync round per enc_keys)")
    s.add_argument("--retention", type=float, default=None, metavar="SECONDS",
                   help="how long delivered keys' rows stay in the store before they are "
                   "purged (default 86400)")
    s.set_defaults(func=cmd_serve)


def parse_peers(values: list[str]) -> dict[str, str]:
    """``SITE_ID=https://HOST:PORT`` entries -> {site: url}; each site once."""
    peers: dict[str, str] = {}
    for value in values:
        site, sep, url = value.partition("=")
        if not sep or not site or not url:
            raise InvalidParameter(f"--peer must be SITE_ID=https://HOST:PORT, got {value!r}")
        if site in peers:
            raise InvalidParameter(f"--peer names site {site!r} twice")
        peers[site] = url
    return peers


def _redacted(url: str) -> str:
    """A store URL fit for a message: any password replaced."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "the --store URL"


def _open_store(url: str, site_id: str) -> KeyStore:
    try:
        return open_store(url, site_id)
    except HybridKexError as exc:
        raise InvalidParameter(f"--store {_redacted(url)}: {exc}") from None
    except Exception as exc:  # sqlite3, OSError, a database driver: one line, no traceback
        raise InvalidParameter(f"cannot open key store {_redacted(url)}: "
                               f"{type(exc).__name__}: {exc}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from hybridkex.keydelivery.kme.server import (
            DEFAULT_RESERVE_AHEAD,
            DEFAULT_RETENTION_S,
            KMEServer,
            load_sae_map,
            peer_tls,
            run_until_signalled,
            server_ssl_context,
        )
    except ImportError:
        raise BackendUnavailable(
            "hybridkex kme serve needs aiohttp: pip install 'hybridkex[kme]'") from None

    host, port = parse_address(args.listen, "--listen")
    sae_map = load_sae_map(args.sae_map)
    ssl_context = server_ssl_context(args.cert, args.key, args.ca)
    peers = parse_peers(args.peer)
    reserve_ahead = DEFAULT_RESERVE_AHEAD if args.reserve_ahead is None else args.reserve_ahead
    retention = DEFAULT_RETENTION_S if args.retention is None else args.retention
    if reserve_ahead < 0:
        raise InvalidParameter("--reserve-ahead must not be negative")
    if not retention >= 0:
        raise InvalidParameter("--retention must be a non-negative number of seconds")
    if args.site_id not in sae_map.values():
        print(f"kme: warning: no SAE in {args.sae_map} is attached to site {args.site_id!r}",
              file=sys.stderr)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    store = _open_store(args.store, args.site_id)
    try:
        server = KMEServer(store, args.site_id, sae_map, ssl_context, peers=peers,
                           peer_tls=peer_tls(args.cert, args.key, args.ca),
                           reserve_ahead=reserve_ahead, retention_s=retention)

        def ready(bound_host: str, bound_port: int) -> None:
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            print(f"kme: site {args.site_id} listening on https://{shown}:{bound_port}",
                  file=sys.stderr, flush=True)

        try:
            asyncio.run(run_until_signalled(server, host, port, ready))
        except OSError as exc:
            raise InvalidParameter(f"cannot listen on {args.listen}: "
                                   f"{exc.strerror or exc}") from None
    finally:
        store.close()
    print(f"kme: site {args.site_id} stopped", file=sys.stderr)
    return 0
