"""``hybridkex demo``: two sites, a simulated QKD link, and real HKX/1 sessions on loopback.

In one process, in a temporary directory deleted afterwards: create two sites, pair
them (trust exchange, then the **simulated** QKD link fills both key stores), serve
one of them (echo) on a loopback TCP port, and open from the other one bootstrap
(signature) session and several psk sessions, each of which sends data and mixes a
fresh QKD key into its traffic keys halfway (``SecureSocket.rekey_qkd``).  The summary
says what protected each session.  ``--json`` prints it as one object (docs/sites.md
lists the keys).

``--kme`` puts an ETSI GS QKD 014 KME in front of each site's key store, as a deployment
does (:mod:`hybridkex.demos.kmes`): the two KMEs run in this process, each the other's
peer, and both sites draw their keys through them (``[key_source] kind = "kme"``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hybridkex.cli.channel import HKXChannel, listen
from hybridkex.cli.serving import BackgroundServer
from hybridkex.errors import BackendUnavailable, HybridKexError
from hybridkex.keydelivery.errors import KeyNotAvailable
from hybridkex.protocol import SessionInfo
from hybridkex.site import Site, pair
from hybridkex.transport import SecureSocket
from hybridkex.transport.forward import Echo, Stream, format_address

DISTANCE_KM = 25.0
# Two rounds of 5e8 pulses at 25 km (about 370 keys each, 1 s each on one core): the
# second shows the link's authentication moving from signatures to Wegman-Carter MACs.
DEMO_KEYS = 500
PSK_SESSIONS = 3
PAYLOAD_BYTES = 64 * 1024
PSK_AUTH_KEYS = 3  # binder, server MAC, client MAC (docs/protocol.md)


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="two sites, a SIMULATED QKD link and HKX/1 sessions on "
                       "loopback, explained")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--psk-sessions", type=int, default=PSK_SESSIONS,
                   help=f"psk sessions after the bootstrap session (default {PSK_SESSIONS})")
    p.add_argument("--kme", action="store_true",
                   help="deliver the keys through two ETSI GS QKD 014 KMEs (in this process, "
                   "syncing with each other) as the sites' [key_source] kind = \"kme\"; "
                   "needs aiohttp (the kme extra)")
    p.add_argument("--keep", metavar="DIR",
                   help="create the sites in DIR (must not exist) and keep them, instead of "
                   "a temporary directory")
    p.set_defaults(func=cmd_demo)


def _recv_exactly(sock: SecureSocket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise HybridKexError("the server closed the channel early")
        data += chunk
    return bytes(data)


def _peer_json(info: SessionInfo) -> dict[str, Any]:
    p = info.peer
    return {"site": p.site, "kind": p.kind, "scheme": p.scheme,
            "public_key_sha256": p.public_key_sha256, "subject": p.subject}


def _session(site: Site, number: int, auth: str, address: tuple[str, int],
             served: queue.Queue[Stream], payload: bytes) -> dict[str, Any]:
    context = site.context(auth=auth)
    started = time.perf_counter()
    raw = socket.create_connection(address, timeout=10)
    raw.settimeout(30)
    with context.wrap_socket(raw, peer="site-b") as s:
        handshake_s = time.perf_counter() - started
        at_handshake = s.session_info()
        half = len(payload) // 2
        s.sendall(payload[:half])
        echoed = _recv_exactly(s, half)
        rekey_ids = s.rekey_qkd()  # a fresh QKD key into both traffic secrets
        s.sendall(payload[half:])
        echoed += _recv_exactly(s, len(payload) - half)
        s.shutdown(socket.SHUT_WR)  # close_notify
        tail = s.recv(1)
        info = s.session_info()
    elapsed_s = time.perf_counter() - started
    stream = served.get(timeout=30)
    if stream.outcome != "closed":
        raise HybridKexError(f"the server's side of session {number} failed: {stream.error}")
    server = stream.session_info()
    auth_keys = PSK_AUTH_KEYS if at_handshake.auth_mode == "psk" else 0
    return {
        "number": number,
        "auth_mode": info.auth_mode,
        "suite": info.suite,
        "kems": list(info.kems),
        "aead": info.aead,
        "qkd": info.qkd,
        "qkd_key_ids": list(info.qkd_key_ids),
        "rekey_qkd_key_ids": list(rekey_ids),
        "security_policy": info.security_policy,
        "fallback": info.fallback,
        "peer": _peer_json(info),
        "server_saw": _peer_json(server),
        "pool_keys": {
            "handshake": at_handshake.pool_keys_spent,
            "authentication": auth_keys,
            "key_schedule": at_handshake.pool_keys_spent - auth_keys,
            "rekeys": info.pool_keys_spent - at_handshake.pool_keys_spent,
            "total": info.pool_keys_spent,
        },
        "both_sides_agree": (server.transcript_hash == info.transcript_hash
                             and server.qkd_key_ids == info.qkd_key_ids
                             and server.pool_keys_spent == info.pool_keys_spent
                             and server.qkd_rekeys == info.qkd_rekeys == 1),
        "transcript_hash": info.transcript_hash,
        "bytes": len(payload),
        "echo_ok": echoed == payload and tail == b"",
        "handshake_ms": round(1000 * handshake_s, 2),
        "session_ms": round(1000 * elapsed_s, 2),
    }


def _pools(a: Site, b: Site) -> dict[str, dict[str, int | None]]:
    """What each site may take and fetch: keys.db's counts, or with KMEs each KME's Get
    status for the site's SAE (``stored_key_count``; the status has no fetch count)."""
    if a.kme is not None and b.kme is not None:
        la, lb = a.pool_level(b.name), b.pool_level(a.name)
        return {a.name: {"to_take": la.to_take, "to_fetch": None},
                b.name: {"to_take": lb.to_take, "to_fetch": None}}
    sa, sb = a.pool_status(b.name), b.pool_status(a.name)
    return {a.name: {"to_take": sa.available_to_take, "to_fetch": sa.available_to_fetch},
            b.name: {"to_take": sb.available_to_take, "to_fetch": sb.available_to_fetch}}


def _delivered_once(b: Site, master: str, sessions: list[dict[str, Any]]) -> bool:
    """Whether site-b's KME refuses every QKD key the sessions used when site-b asks
    again: it delivered each of them once already, to site-b's sessions."""
    assert b.kme is not None
    for key_id in (k for s in sessions for k in (*s["qkd_key_ids"], *s["rekey_qkd_key_ids"])):
        try:
            b.kme.client.get_keys_with_ids(master, [key_id])
        except KeyNotAvailable:
            continue
        return False
    return True


def run_demo(directory: Path, psk_sessions: int = PSK_SESSIONS, *,
             progress: bool = False, kme: bool = False) -> dict[str, Any]:
    """Everything the demo does, as the JSON object ``--json`` prints; ``kme``: the
    keys go through two KMEs (``--kme``)."""
    from hybridkex.qkd.labels import SIMULATION_LABEL  # not at import: serve/connect skip it

    started = time.perf_counter()

    def say(text: str) -> None:
        if progress:
            print(text, file=sys.stderr, flush=True)

    say(f"*** QKD link: {SIMULATION_LABEL} ***")
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(Site.init(directory / "site-a", "site-a"))
        b = stack.enter_context(Site.init(directory / "site-b", "site-b"))
        t_sites = time.perf_counter()
        say(f"demo: sites created; pairing them over a simulated {DISTANCE_KM:g} km link ...")
        report = pair(a, b, DISTANCE_KM, DEMO_KEYS)
        t_pair = time.perf_counter()
        kme_info: dict[str, Any] | None = None
        if kme:
            try:
                from hybridkex.demos.kmes import sae_id, start_kmes  # aiohttp: only with --kme
            except ImportError:
                raise BackendUnavailable("hybridkex demo --kme runs two KMEs, which need "
                                         "aiohttp: pip install 'hybridkex[kme]'") from None

            kmes = start_kmes(directory / "kmes", a, b)
            stack.callback(kmes.close)
            # loaded again, the sites draw their keys through their KMEs
            a = stack.enter_context(Site.load(a.path))
            b = stack.enter_context(Site.load(b.path))
            kme_info = {"kmes": {site.name: {"url": kmes.url(site.name), "kme_id": site.name,
                                             "sae_id": sae_id(site.name)} for site in (a, b)},
                        "delivered_once": None}
            say(f"demo: KMEs of site-a ({kmes.url('site-a')}) and site-b "
                f"({kmes.url('site-b')}) serve the sites' keys")
        before = _pools(a, b)

        served: queue.Queue[Stream] = queue.Queue()
        listener = listen("127.0.0.1", 0)
        address = listener.getsockname()[:2]
        server = BackgroundServer(HKXChannel(b.context()), listener, Echo(), served.put,
                                  b.aclose)
        server.start()
        payload = os.urandom(PAYLOAD_BYTES)
        sessions = []
        try:
            for number, auth in enumerate(["signature"] + ["psk"] * psk_sessions, start=1):
                say(f"demo: session {number} ({auth}) to site-b at {format_address(address)}")
                sessions.append(_session(a, number, auth, address, served, payload))
        finally:
            server.stop()
            listener.close()
        t_sessions = time.perf_counter()
        after = _pools(a, b)
        if kme_info is not None:
            kme_info["delivered_once"] = _delivered_once(
                b, kme_info["kmes"]["site-a"]["sae_id"], sessions)

    taken_before, taken_after = before["site-a"]["to_take"], after["site-a"]["to_take"]
    used = (None if taken_before is None or taken_after is None
            else taken_before - taken_after)
    spent_auth = sum(s["pool_keys"]["authentication"] for s in sessions)
    result = {
        "simulation": SIMULATION_LABEL,
        "qkd_link_simulated": True,
        "sites": {site.name: {"signature": site.scheme, "identity": site.settings.identity,
                              "public_key_sha256": site.fingerprint} for site in (a, b)},
        "qkd_link": report.to_json(),
        "kme": kme_info,
        "sessions": sessions,
        "pool": {
            "before": before,
            "after": after,
            "keys_used": used,
            "spent_on_authentication": spent_auth,
            "mixed_into_handshakes": sum(s["pool_keys"]["key_schedule"] for s in sessions),
            "mixed_in_by_rekeys": sum(s["pool_keys"]["rekeys"] for s in sessions),
        },
        "timings_s": {
            "sites": round(t_sites - started, 3),
            "pairing": round(t_pair - t_sites, 3),
            "sessions": round(t_sessions - t_pair, 3),
            "total": round(time.perf_counter() - started, 3),
        },
    }
    result["ok"] = (all(s["echo_ok"] and s["both_sides_agree"] and s["qkd"]
                        and s["fallback"] is None for s in sessions)
                    and used == sum(s["pool_keys"]["total"] for s in sessions)
                    and (kme_info is None or kme_info["delivered_once"] is True))
    return result


def cmd_demo(args: argparse.Namespace) -> int:
    if args.psk_sessions < 0:
        raise HybridKexError("--psk-sessions must be 0 or more")
    if args.keep:
        result = run_demo(Path(args.keep), args.psk_sessions, progress=not args.json,
                          kme=args.kme)
    else:
        with tempfile.TemporaryDirectory(prefix="hybridkex-demo-") as tmp:
            result = run_demo(Path(tmp), args.psk_sessions, progress=not args.json,
                              kme=args.kme)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_summary(result, args.keep)
    return 0 if result["ok"] else 1


def _print_summary(r: dict[str, Any], kept: str | None) -> None:
    link = r["qkd_link"]
    print("hybridkex demo: two sites on this machine, HKX/1 channels between them over "
          "loopback TCP")
    print()
    print(f"*** QKD link: {r['simulation']} ***")
    print()
    where = f"in {kept}" if kept else "in a temporary directory, deleted now"
    print(f"1. Two sites ({where}):")
    print("   each a directory with a signing key, a certificate, trust/ and a QKD key store")
    for name, site in r["sites"].items():
        print(f"     {name}  {site['signature']}, {site['identity']}, public key sha256 "
              f"{site['public_key_sha256'][:16]}...")
    print()
    print("2. Pairing: each site now trusts the other's certificate (the out-of-band exchange);")
    print(f"   then the SIMULATED QKD link ({link['distance_km']:g} km of fibre) filled both "
          "key stores:")
    pulses = f"{link['pulses_per_round']:.3g}".replace("e+0", "e").replace("e+", "e")
    print(f"     {link['rounds']} round(s) of {pulses} pulses, "
          f"{link['keys_deposited']} keys of 256 bits, the same IDs at both sites, in "
          f"{link['elapsed_s']:.1f} s")
    available = ", ".join(f"{k} {v}" for k, v in link["available"].items())
    print(f"     keys each site may initiate with: {available}")
    print("     the link's classical channel (sifting, error correction, privacy "
          "amplification)")
    for number, auth in enumerate(link["round_auth"], start=1):
        how = ("Wegman-Carter MACs keyed from the previous round's key"
               if auth.startswith("wegman-carter") else auth)
        print(f"       round {number}: authenticated by {how}")
    print(f"     key bits spent on the link's authentication: {link['auth_bits_consumed']} "
          "(signatures spend none)")
    kmes = r["kme"]
    if kmes is not None:
        print("   Key delivery: an ETSI GS QKD 014 KME in front of each site's key store, as "
              "deployed")
        print("   (both in this process, mutual TLS); each site is an SAE of its KME "
              "([key_source] kind = \"kme\"):")
        for name, k in kmes["kmes"].items():
            print(f"     {name}: KME {k['kme_id']} at {k['url']}, SAE {k['sae_id']}")
        print("   The KMEs are each other's peers: a key site-a takes is bound to the two "
              "SAEs and")
        print("   recorded at site-b's KME before site-a gets it; site-b's KME hands it to "
              "site-b once.")
    print()
    sessions = r["sessions"]
    print(f"3. {len(sessions)} sessions site-a -> site-b; site-b echoes "
          f"{sessions[0]['bytes'] // 1024} KiB each, and halfway each session")
    print("   mixes a fresh QKD key into its traffic keys (re-key)")
    print()
    print(f"   {'#':>2}  {'auth':<9}  {'suite':<40}  {'QKD key':<8}  {'re-key':<8}  "
          f"{'pool keys':<10}  handshake")
    for s in sessions:
        keys = s["pool_keys"]
        spent = f"{keys['total']} ({keys['authentication']} auth)"
        qkd = s["qkd_key_ids"][0][:8] if s["qkd_key_ids"] else "none"
        rekey = s["rekey_qkd_key_ids"][0][:8] if s["rekey_qkd_key_ids"] else "-"
        print(f"   {s['number']:>2}  {s['auth_mode']:<9}  {s['suite']:<40}  {qkd:<8}  "
              f"{rekey:<8}  {spent:<10}  {s['handshake_ms']:.1f} ms")
    print("   (key IDs: the first 8 hex digits of the UUIDs both sites hold; --json has them "
          "whole)")
    print()
    kems = " + ".join(sessions[0]["kems"])
    print(f"   Every session key comes from one KDF combiner over {kems} + the QKD key")
    print("   (and the transcript hash): it stays secret while any one of the three holds.")
    first = sessions[0]
    print(f"   Session 1 (bootstrap): both sites proved who they are with "
          f"{first['peer']['scheme']} signatures")
    print("   over the handshake transcript, checked against the certificates in trust/.")
    psk = [s for s in sessions if s["auth_mode"] == "psk"]
    if psk:
        numbers = f"{psk[0]['number']}-{psk[-1]['number']}" if len(psk) > 1 else str(
            psk[0]["number"])
        print(f"   Sessions {numbers} (psk): no signatures; each handshake spent "
              f"{PSK_AUTH_KEYS} one-time pool keys on")
        print("   authentication (ClientHello binder, server MAC, client MAC) and 1 QKD key")
        print("   in its key schedule.")
    fallbacks = sorted({str(s["fallback"]) for s in sessions if s["fallback"]})
    complete = all(s["qkd"] and any(k.startswith("ML-KEM") for k in s["kems"])
                   for s in sessions)
    print(f"   Fallback: {'; '.join(fallbacks) or 'none'} (policy {first['security_policy']}; "
          f"{'every' if complete else 'NOT every'} session had both a QKD key and ML-KEM).")
    agree = all(s["both_sides_agree"] for s in sessions)
    intact = all(s["echo_ok"] for s in sessions)
    print(f"   Both sides agree on every transcript hash and QKD key ID: "
          f"{'yes' if agree else 'NO'}; data echoed intact: {'yes' if intact else 'NO'}.")
    print()
    pool = r["pool"]
    if kmes is not None:
        print("4. The key pool, as site-a's KME reports it (Get status: stored_key_count for "
              f"{kmes['kmes']['site-a']['sae_id']} -> {kmes['kmes']['site-b']['sae_id']})")
    else:
        print("4. The key pool (256-bit keys that site-a may take to initiate sessions with "
              "site-b)")
    print(f"     before {pool['before']['site-a']['to_take']}, after "
          f"{pool['after']['site-a']['to_take']}: {pool['keys_used']} used =")
    print(f"     {pool['mixed_into_handshakes']} in handshake key schedules + "
          f"{pool['mixed_in_by_rekeys']} by re-keys + {pool['spent_on_authentication']} "
          "on psk authentication")
    print(f"     site-b's own share ({pool['after']['site-b']['to_take']} keys) is untouched: "
          "the pool is split by direction")
    if kmes is not None:
        once = "yes" if kmes["delivered_once"] else "NO"
        print("     every QKD key came through the KMEs: site-a took it from its KME, site-b "
              "fetched it")
        print(f"     from its own, and site-b's KME refuses each of them a second time: {once}")
    print()
    t = r["timings_s"]
    print(f"5. Time: sites {t['sites']:.2f} s, pairing (simulated link) {t['pairing']:.2f} s, "
          f"sessions {t['sessions']:.2f} s; total {t['total']:.2f} s")
    print()
    print("demo passed" if r["ok"] else "demo FAILED: see above")
