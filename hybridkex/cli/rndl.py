"""``hybridkex rndl-demo``: record three HKX/1 sessions, then attack them as a future adversary.

The logic lives in :mod:`hybridkex.demos.rndl`, imported when the command runs;
docs/rndl.md explains the demonstration and what it does not show.  The breaks are
simulated by disclosing the sites' ephemeral KEM private keys.  The decryption attempts
are real.  The QKD link is simulated.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import TYPE_CHECKING, Any

from hybridkex.protocol import suite_by_name

if TYPE_CHECKING:
    from hybridkex.demos.rndl import DemoResult

AUTH = {"classical": "signature (Ed25519)", "pq-hybrid": "signature (Ed25519)",
        "pq+qkd": "psk (one-time MACs keyed from the pool)"}


def register(sub: Any) -> None:
    p = sub.add_parser("rndl-demo", help="record now, decrypt later: record three HKX/1 "
                       "sessions and attack them with simulated future breaks")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=cmd_rndl_demo)


def _say(text: str, first: str = "   ", rest: str | None = None) -> None:
    print(textwrap.fill(text, 96, initial_indent=first, break_on_hyphens=False,
                        subsequent_indent=first if rest is None else rest))


def _cell(falls: bool) -> str:
    return "FALLS" if falls else "secret"


def _print_text(result: DemoResult) -> None:
    from hybridkex.demos import rndl
    from hybridkex.qkd.labels import SIMULATION_LABEL

    out = result.to_json()
    link = out["qkd_link"]
    width = max(len(s) for s in rndl.SCENARIOS)
    print("hybridkex rndl-demo: record now, decrypt later")
    print(f"*** {rndl.LABEL} ***")
    print()
    discussion = result.sessions["pq+qkd"].recording.qkd_public_discussion
    print(f"1. QKD link, {SIMULATION_LABEL}:")
    rounds = link["rounds"]
    _say(f"{link['distance_km']:g} km, {rounds} round{'s' if rounds > 1 else ''} of "
         f"{link['pulses_per_round']:,} pulses, QBER {100 * link['qber']:.2f}%: "
         f"{link['keys_deposited']} keys of 256 bits in both sites' in-memory pools "
         f"({out['timings_s']['qkd_link']:.2f} s).  Its classical channel (authenticated by "
         f"{link['auth_mode']}, not encrypted; in-process here) was recorded too: "
         f"{len(discussion)} frames, "
         f"{sum(len(f) for f in discussion):,} bytes.")
    print()
    print("2. Three HKX/1 sessions over loopback TCP, through a relay on 127.0.0.1 that "
          "recorded")
    print(f"   every byte each way.  Each carried the same {len(result.message)}-byte secret "
          "message.")
    for name, run in result.sessions.items():
        kems = " + ".join(run.kems) + (" + QKD" if run.qkd_key_ids else "")
        recorded = out["bytes_recorded"][name]
        total = recorded["client_to_server"] + recorded["server_to_client"]
        print(f"   {name:<{width}}  suite {suite_by_name(run.suite).code:#06x}  {kems:<25}  "
              f"{total:>5,} bytes recorded")
        print(f"   {'':<{width}}  {AUTH[name]}, policy {run.security_policy}")
    found = "appears in" if out["message_in_any_recording"] else "appears in none of"
    receipts = all(run.receipt_ok for run in result.sessions.values())
    print(f"   The message {found} the recordings.  Every server confirmed receipt: "
          f"{'yes' if receipts else 'NO'}.")
    print()
    print("3. Later, the adversary holds the recordings, the protocol, and what its break gives:")
    for adversary, counts in out["disclosed"].items():
        what = f"{counts['x25519_private_keys']} X25519 private keys"
        if counts["mlkem_decapsulation_keys"]:
            what += f" + {counts['mlkem_decapsulation_keys']} ML-KEM decapsulation keys"
        print(f"   {adversary:<31} {what}")
    print("   (disclosed by the sites' randomness, looked up by the public keys in the "
          "recordings)")
    print()
    print("Which recordings fall (FALLS = the plaintext the adversary decrypted equals the "
          "secret message):")
    print()
    print(f"   {'':<{width}}  " + "  ".join(f"{a:<31}" for a in rndl.ADVERSARIES).rstrip())
    for name, row in result.matrix.items():
        print(f"   {name:<{width}}  "
              + "  ".join(f"{_cell(row[a]):<31}" for a in rndl.ADVERSARIES).rstrip())
    print()
    print("Why:")
    for name, attempts in result.results.items():
        for adversary, attempt in attempts.items():
            if attempt.client_data == result.message:
                why = (f"re-derived the keys, both Finished messages verified, decrypted "
                       f"{len(attempt.client_data)} bytes equal to the secret message: "
                       f"{attempt.client_data.decode('utf-8', 'replace')!r}")
            else:
                why = f"{attempt.failure}"
                if any(s.startswith("tried a uniformly random guess") for s in attempt.steps):
                    why += ".  A random guess for what is missing failed the AEAD tag"
            _say(f"{name} / {adversary}: {why}.", "   - ", "     ")
    control = result.control
    falls = control.client_data == result.message
    print()
    _say("Control (not part of the matrix): the quantum-computer+lattice-break adversary, given "
         "the QKD key as well (as a compromised QKD device or key store would give it), runs "
         "the same code on the pq+qkd recording: "
         + ("it decrypts the secret message, so the QKD key is the only thing it lacked."
            if falls else f"it still fails ({control.failure})."), "")
    print()
    if result.as_expected:
        _say("As expected: the classical session falls to a quantum computer; the PQ hybrid "
             "falls only to a quantum computer plus a lattice break; PQ + QKD falls to neither, "
             "because its QKD key was never sent over any classical channel: the recordings hold "
             "only its ID.",
             "")
    else:
        _say(f"NOT AS EXPECTED: the expected matrix is {json.dumps(rndl.EXPECTED_MATRIX)}, "
             "and the control should decrypt.", "")
    _say("Caveats: the breaks are simulated by disclosure, and the QKD link is a simulation.  "
         "docs/rndl.md says what this demonstration does not show.", "")
    print(f"Total {out['timings_s']['total']:.2f} s (attacks {out['timings_s']['attacks']:.3f} s)."
          "  --json prints every step of every attack.")


def cmd_rndl_demo(args: argparse.Namespace) -> int:
    # The demo runs the simulated QKD link: numpy loads only for this command.
    from hybridkex.demos import rndl

    result = rndl.run_demo()
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        _print_text(result)
    if not result.as_expected:
        print("hybridkex rndl-demo: the result differs from the expected one (matrix or "
              "control)", file=sys.stderr)
        return 1
    return 0
