"""``hybridkex site init | pair | trust | show``: site directories (docs/sites.md).

    hybridkex site init site-a --name site-a
    hybridkex site init site-b --name site-b --sig ML-DSA-65+Ed25519
    hybridkex site pair site-a site-b --distance-km 25 --keys 500

``pair`` runs the **simulated** QKD link; everything it prints says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybridkex.cli.args import positive_count
from hybridkex.site import DEFAULT_PULSES_PER_ROUND, SIGNATURE_SCHEMES, Site, SiteError, pair
from hybridkex.site.layout import KME_CA, KME_CLIENT_CRT, KME_CLIENT_KEY

if TYPE_CHECKING:
    from hybridkex.qkd.link import LinkReport


def register(sub: Any) -> None:
    site = sub.add_parser("site", help="site directories: identity, trust, QKD key store")
    ssub = site.add_subparsers(dest="site_command", required=True)

    i = ssub.add_parser("init", help="create a site directory with a fresh signing identity")
    i.add_argument("dir", metavar="DIR")
    i.add_argument("--name", required=True,
                   help="the site's name (1-63 of A-Z a-z 0-9 . _ -), as its peers know it")
    i.add_argument("--sig", choices=SIGNATURE_SCHEMES, default="ML-DSA-65",
                   help="signature scheme of the identity key (default ML-DSA-65; "
                   "ML-DSA-65+Ed25519 is presented as a pinned raw key, not X.509)")
    i.add_argument("--ca-cert", metavar="PEM",
                   help="issue identity.crt from this CA certificate (with --ca-key) "
                   "instead of self-signing it")
    i.add_argument("--ca-key", metavar="PEM", help="the CA's private key (unencrypted PEM)")
    i.add_argument("--days", type=int, default=3650,
                   help="certificate validity in days (default 3650)")
    i.add_argument("--security", choices=["qkd-and-pq", "at-least-qkd", "at-least-pq",
                                          "either"],
                   help="security policy written to site.toml (default qkd-and-pq)")
    i.add_argument("--auth", choices=["auto", "signature", "psk"],
                   help="authentication mode written to site.toml (default auto)")
    i.set_defaults(func=cmd_init)

    p = ssub.add_parser("pair", help="make two sites trust each other and fill both key "
                        "stores over a SIMULATED QKD link")
    p.add_argument("dir_a", metavar="DIR_A")
    p.add_argument("dir_b", metavar="DIR_B")
    p.add_argument("--distance-km", type=float, default=25.0,
                   help="fibre length of the simulated link (default 25)")
    p.add_argument("--keys", type=positive_count, default=500,
                   help="run rounds until at least this many 256-bit keys were deposited, "
                   "both directions together (default 500)")
    p.add_argument("--pulses-per-round", type=positive_count, default=DEFAULT_PULSES_PER_ROUND,
                   help="simulated pulses per round (default 5e8: about 370 keys per round "
                   "at 25 km)")
    p.add_argument("--seed", type=int, help="ignored, with a note on stderr: keys deposited "
                   "in key stores always come from OS randomness (seeds are for "
                   "`qkd simulate` reports)")
    p.add_argument("--replace-trust", action="store_true",
                   help="replace a different identity already trusted under a peer's name")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_pair)

    t = ssub.add_parser("trust", help="trust a peer: add its identity.crt or identity.pin "
                        "(or a CA certificate) to DIR/trust/")
    t.add_argument("dir", metavar="DIR")
    t.add_argument("file", metavar="FILE")
    t.add_argument("--replace", action="store_true",
                   help="replace a different identity already trusted under that name")
    t.set_defaults(func=cmd_trust)

    s = ssub.add_parser("show", help="a site's identity, trusted peers, key source and QKD "
                        "pools")
    s.add_argument("dir", metavar="DIR")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_show)

    k = ssub.add_parser("kme-source", help="draw the site's QKD keys from an ETSI GS QKD 014 "
                        "KME: copy its SAE certificate, key and CA in and write site.toml's "
                        "[key_source]")
    k.add_argument("dir", metavar="DIR")
    k.add_argument("--url", required=True, help="the KME's base URL, https://HOST:PORT")
    k.add_argument("--sae-id", required=True, help="this site's SAE ID at its KME (the CN "
                   "of --cert)")
    k.add_argument("--cert", required=True, metavar="PEM",
                   help=f"this SAE's client certificate (copied to {KME_CLIENT_CRT})")
    k.add_argument("--key", required=True, metavar="PEM",
                   help=f"its private key, unencrypted (copied to {KME_CLIENT_KEY}, mode 0600)")
    k.add_argument("--ca", required=True, metavar="PEM",
                   help=f"the CA of the KME's certificate (copied to {KME_CA})")
    k.add_argument("--peer", action="append", default=[], metavar="SITE=SAE_ID",
                   type=_peer_sae, help="a peer site and its SAE ID at its KME (repeatable)")
    k.add_argument("--replace", action="store_true",
                   help="replace different kme-client.crt/.key/kme-ca.crt files already there")
    k.set_defaults(func=cmd_kme_source)


def _creatable(directory: Path) -> None:
    """Refuse, saying why, a site directory that cannot be made where it is asked for."""
    for parent in directory.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise SiteError(f"cannot create site directory {directory}: {parent} is a "
                                "file, not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise SiteError(f"cannot create site directory {directory}: {parent} is "
                                "not writable")
            return


def cmd_init(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    _creatable(directory)
    try:
        site = Site.init(directory, args.name, args.sig, ca_certificate=args.ca_cert,
                         ca_key=args.ca_key, days=args.days, security=args.security,
                         auth=args.auth)
    except OSError as exc:
        raise SiteError(f"cannot create site directory {directory}: "
                        f"{exc.strerror or exc}") from None
    with site:
        print(f"site {site.name} created in {site.path}")
        print(f"  identity    {site.scheme}, {site.settings.identity}")
        print(f"  public key  sha256 {site.fingerprint}")
        print(f"  give peers  {site.public_identity_file} (compare the sha256 out of band)")
    return 0


class _PairProgress:
    """One line on stderr, redrawn: the round, the optical simulation, keys so far."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.round = 1
        self.deposited = 0
        self.last = 0.0
        from hybridkex.qkd.labels import SIMULATION_LABEL

        print(f"*** QKD link: {SIMULATION_LABEL} ***", file=sys.stderr)

    def pulses(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self.last < 0.2 and done < total:
            return
        self.last = now
        width = 20
        filled = int(width * done / total) if total else width
        stage = ("simulating" if done < total else
                 "distilling (sifting, Cascade, privacy amplification)")
        sys.stderr.write(f"\rround {self.round}: [{'#' * filled}{'.' * (width - filled)}] "
                         f"{_pulses(done)}/{_pulses(total)} pulses, {stage}; "
                         f"{self.deposited}/{self.target} keys   ")
        sys.stderr.flush()

    def round_done(self, report: LinkReport, deposited: int) -> None:
        self.deposited = deposited
        outcome = (f"aborted: {report.abort_reason}" if report.aborted else
                   f"+{report.keys_deposited} keys, QBER {report.qber:.3f}, "
                   f"auth {report.auth_mode}")
        sys.stderr.write(f"\rround {self.round}: {outcome}; {deposited}/{self.target} keys"
                         + " " * 10 + "\n")
        sys.stderr.flush()
        self.round += 1


def _pulses(n: float) -> str:
    return f"{n:.2g}".replace("e+0", "e").replace("e+", "e")


#: What ``site pair --seed`` prints: pairing deposits keys, which a seed must not decide.
SEED_IGNORED = ("hybridkex: note: --seed ignored: the keys pairing deposits come from OS "
                "randomness (seeds are for `qkd simulate` reports)")


def cmd_pair(args: argparse.Namespace) -> int:
    if args.seed is not None:
        print(SEED_IGNORED, file=sys.stderr)
    with Site.load(args.dir_a) as site_a, Site.load(args.dir_b) as site_b:
        progress = None if args.json else _PairProgress(args.keys)
        report = pair(site_a, site_b, args.distance_km, args.keys,
                      pulses_per_round=args.pulses_per_round,
                      replace_trust=args.replace_trust,
                      on_pulses=progress.pulses if progress else None,
                      on_round=progress.round_done if progress else None)
        if args.json:
            print(json.dumps(report.to_json(), indent=2))
            return 0
        print(f"paired {report.site_a} and {report.site_b}")
        print("  trust (the out-of-band exchange):")
        for line in report.trust:
            print(f"    {line}")
        print("    (compare the key sha256 with each site's `hybridkex site show` output)")
        print(f"  QKD link: {report.simulation}")
        print(f"    {report.distance_km:g} km, {len(report.rounds)} rounds of "
              f"{_pulses(report.pulses_per_round)} pulses ({report.aborted_rounds} aborted), "
              f"{report.elapsed_s:.1f} s")
        print(f"    {report.keys_deposited} keys x 256 bits deposited in both key stores "
              "under the same IDs")
        for name, count in report.available.items():
            print(f"    {name} can now initiate sessions with {count} keys")
        first = report.rounds[0].auth_mode if report.rounds else "none"
        print(f"    classical channel: round 1 authenticated by {first};")
        print(f"    later rounds by Wegman-Carter MACs from QKD key "
              f"({report.auth_bits_consumed} key bits spent)")
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.exists():
        raise SiteError(f"{path} does not exist (give a peer's identity.crt or "
                        "identity.pin, or a CA certificate)")
    if not path.is_file():
        raise SiteError(f"{path} is not a file (give a peer's identity.crt or "
                        "identity.pin, or a CA certificate)")
    with Site.load(args.dir) as site:
        entry = site.trust(args.file, replace=args.replace)
        print(f"site {site.name} trusts {entry.name}: {entry.describe()}")
        print(f"  stored as {entry.path}")
    return 0


def _peer_sae(text: str) -> tuple[str, str]:
    """``SITE=SAE_ID`` -> (site, SAE ID) for --peer."""
    site, sep, sae = text.partition("=")
    if not sep or not site or not sae:
        raise argparse.ArgumentTypeError(f"--peer must be SITE=SAE_ID, got {text!r}")
    return site, sae


def cmd_kme_source(args: argparse.Namespace) -> int:
    peers: dict[str, str] = {}
    for site_name, sae in args.peer:
        if site_name in peers:
            raise SiteError(f"--peer names site {site_name!r} twice")
        peers[site_name] = sae
    with Site.load(args.dir, open_kme=False) as site:  # the KME set-up it replaces may be broken
        settings = site.use_kme(args.url, args.sae_id, args.cert, args.key, args.ca, peers,
                                replace=args.replace)
        path = site.path
    with Site.load(path) as site:  # as serve and connect will load it
        print(f"site {site.name} now draws its QKD keys from the KME at {settings.url}, as "
              f"SAE {settings.sae_id}")
        print(f"  files     {KME_CLIENT_CRT}, {KME_CLIENT_KEY} (0600), {KME_CA} in {path}")
        for peer, sae in settings.peers.items():
            print(f"  peer      {peer} = SAE {sae}")
        if not settings.peers:
            print("  peers     none yet: add --peer SITE=SAE_ID, or [key_source.peers] in "
                  "site.toml")
    return 0


def _pools(site: Site) -> dict[str, dict[str, Any]]:
    """``site show``'s pools: keys.db's, or what the KME's status says per peer SAE."""
    warn_below = site.settings.pool_warn_below
    pools: dict[str, dict[str, Any]] = {}
    if site.kme is None:
        for peer in sorted(set(site.peers()) | set(site.store.peers())):
            status = site.pool_status(peer)
            pools[peer] = {"available_to_take": status.available_to_take,
                           "available_to_fetch": status.available_to_fetch,
                           "delivered": status.delivered,
                           "below_warning_level": status.available_to_take < warn_below,
                           "link": site.link_info(peer),
                           "source": site.qkd_source_label(peer)}
        return pools
    for peer in [*site.qkd_peers(), *sorted(set(site.peers()) - set(site.qkd_peers()))]:
        level = site.pool_level(peer)
        pools[peer] = {"sae_id": level.sae_id,
                       "stored_key_count": level.to_take,
                       "available_to_take": level.to_take,
                       "available_to_fetch": None,  # ETSI status does not say
                       "delivered": None,
                       "below_warning_level": level.below(warn_below),
                       "reason": level.reason,
                       "link": site.link_info(peer),
                       "source": site.qkd_source_label(peer)}
    return pools


def cmd_show(args: argparse.Namespace) -> int:
    with Site.load(args.dir) as site:
        pools = _pools(site)
        warn_below = site.settings.pool_warn_below
        key_source = site.settings.key_source
        result: dict[str, Any] = {
            "name": site.name,
            "path": str(site.path),
            "signature": site.scheme,
            "identity": site.settings.identity,
            "public_key_sha256": site.fingerprint,
            "security": site.settings.security,
            "auth": site.settings.auth,
            "suites": list(site.settings.suites),
            "pool_warn_below": warn_below,
            "key_source": key_source.describe(),
            "trusted": [{"name": t.name, "kind": t.kind, "scheme": t.scheme,
                         "public_key_sha256": t.public_key_sha256, "file": str(t.path)}
                        for t in site.trusted()],
            "pools": pools,
        }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"site {result['name']} ({result['path']})")
    print(f"  identity  {result['signature']}, {result['identity']}, "
          f"sha256 {result['public_key_sha256']}")
    print(f"  policy    {result['security']}, auth {result['auth']}")
    print(f"  suites    {', '.join(result['suites'])}")
    if key_source.is_kme:
        peers = ", ".join(f"{p} = {s}" for p, s in key_source.peers.items()) or "none"
        print(f"  keys from the KME at {key_source.url} (ETSI GS QKD 014), as SAE "
              f"{key_source.sae_id}; peer SAEs: {peers}")
    else:
        print("  keys from keys.db (this site's key store)")
    print("  trusts")
    for t in site.trusted():
        print(f"    {t.name}: {t.describe()}")
    if not result["trusted"]:
        print("    nobody yet (hybridkex site pair / site trust)")
    if key_source.is_kme:
        print(f"  QKD key pools at the KME (its Get status: 256-bit keys this SAE can obtain "
              f"per peer SAE; warning below {warn_below}, site.toml's [pool] warn_below)")
    else:
        print(f"  QKD key pools (256-bit keys; warning below {warn_below} to take, "
              "site.toml's [pool] warn_below)")
    for peer, pool in pools.items():
        if key_source.is_kme:
            sae = f" (SAE {pool['sae_id']})" if pool["sae_id"] else ""
            if pool["stored_key_count"] is None:
                print(f"    {peer}{sae}: not measured: {pool['reason']}")
            else:
                print(f"    {peer}{sae}: {pool['stored_key_count']} to take")
        else:
            print(f"    {peer}: {pool['available_to_take']} to take, "
                  f"{pool['available_to_fetch']} to fetch, {pool['delivered']} used; from "
                  f"{pool['source']}")
        if pool["below_warning_level"]:
            refill = ("the QKD link behind the KME" if key_source.is_kme
                      else "hybridkex site pair, or the QKD link")
            print(f"    WARNING: {peer}'s pool is below {warn_below} keys to take: a psk "
                  "handshake takes 4, a signature handshake 1, and a failed one keeps what "
                  f"it took; refill it ({refill})")
    if not pools:
        print("    empty")
    return 0
