"""``hybridkex selftest``: known-answer checks and the list of usable algorithms."""

from __future__ import annotations

import argparse
import json
from typing import Any

from hybridkex import __version__, primitives, selftest


def register(sub: Any) -> None:
    p = sub.add_parser("selftest", help="run known-answer checks and list the algorithms")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=cmd_selftest)


def _format_sizes(sizes: dict[str, int]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sizes.items())


def cmd_selftest(args: argparse.Namespace) -> int:
    results = selftest.run()
    algorithms = primitives.available()
    failed = [r for r in results if not r.passed]
    if args.json:
        print(json.dumps({
            "version": __version__,
            "backend": primitives.backend_version(),
            "checks": [{"name": r.name, "passed": r.passed, "detail": r.detail}
                       for r in results],
            "algorithms": [{"kind": a.kind, "name": a.name, "backend": a.backend,
                            "sizes": a.sizes} for a in algorithms],
            "passed": not failed,
        }, indent=2))
        return 1 if failed else 0
    print(f"hybridkex {__version__} self-test on {primitives.backend_version()}")
    print()
    print("Known-answer checks:")
    for r in results:
        mark = "ok  " if r.passed else "FAIL"
        print(f"  [{mark}] {r.name}" + (f": {r.detail}" if r.detail else ""))
    print()
    print("Available algorithms (sizes in bytes):")
    width = max(len(a.name) for a in algorithms)
    for a in algorithms:
        print(f"  {a.kind:<12} {a.name:<{width}}  {a.backend:<12} {_format_sizes(a.sizes)}")
    if primitives.oqs_backend.load() is None:
        print()
        print("  liboqs backend: not installed (optional; adds ML-KEM-512, FrodoKEM, HQC,")
        print("  Classic McEliece, SLH-DSA; see docs/primitives.md)")
    print()
    if failed:
        print(f"self-test FAILED: {len(failed)} of {len(results)} checks")
        return 1
    print(f"self-test passed: {len(results)} checks")
    return 0


