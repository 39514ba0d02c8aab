"""Run the fuzz targets: ``python -m tests.fuzz.campaign [options]``.

Two engines:

* ``mutate`` (default, no extra package): a seeded mutational fuzzer.  It starts from
  each target's valid encodings and applies byte-level mutations (bit flips, interesting
  integers over length fields, insertions, deletions, duplications, splices, truncation)
  and, for text formats, a dictionary of tokens.  Every input runs under a per-input
  time limit (an interval timer); one that exceeds it is a hang.  The CI slice
  (tests/test_fuzz.py) runs this engine.
* ``atheris``: coverage-guided fuzzing with libFuzzer (``pip install atheris``), one
  process per target, ``-runs`` inputs each and libFuzzer's ``-timeout`` as the hang
  limit.  The long campaign of docs/fuzzing.md runs this engine.

Exit status 0 when no target crashed or hung; crashing inputs are written to
``--crash-dir`` (atheris writes its own ``crash-*`` and ``timeout-*`` files there).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["Hang", "Tally", "mutate_inputs", "run_mutate"]

_INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
                0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 2**63 - 1, 2**63, 2**64 - 1)
_TOKENS = (b"[", b"]", b"{", b"}", b'"', b"\\", b",", b":", b"=", b"\n", b"null", b"true",
           b"1e999", b"-0", b"NaN", b"Infinity", b"1.5", b"-1", b"18446744073709551616",
           b'"\\ud800"', b"\x00", b"\xff", b"[[[[[[[[", b"{{{{", b'"key_ID"', b'"size"',
           b'"keys"', b'"number"', b"[links.x]", b"inf", b"nan", b"'''", b'"""',
           b"1979-05-27T07:32:00Z", b"{a={b={c=1}}}")


class Hang(Exception):
    """The per-input time limit passed."""


@dataclass
class Tally:
    """What one target did with its inputs."""

    target: str
    inputs: int = 0
    accepted: int = 0
    refused: int = 0
    crashes: int = 0
    hangs: int = 0
    seconds: float = 0.0
    slowest_s: float = 0.0


def _mutate(rng: random.Random, data: bytes, corpus: Sequence[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 4, 8))):
        op = rng.randrange(11)
        size = len(out)
        if op == 0 and size:                                   # flip a bit
            i = rng.randrange(size)
            out[i] ^= 1 << rng.randrange(8)
        elif op == 1 and size:                                 # a random byte
            out[rng.randrange(size)] = rng.randrange(256)
        elif op == 2:                                          # an interesting integer
            width = rng.choice((1, 2, 3, 4, 8))
            value = rng.choice(_INTERESTING) % (1 << (8 * width))
            raw = value.to_bytes(width, rng.choice(("big", "little")))
            i = rng.randrange(size + 1)
            out[i:i + width] = raw
        elif op == 3:                                          # insert random bytes
            i = rng.randrange(size + 1)
            out[i:i] = rng.randbytes(rng.choice((1, 2, 4, 16, 64)))
        elif op == 4 and size:                                 # delete a range
            i = rng.randrange(size)
            del out[i:i + rng.choice((1, 2, 4, 16, 256))]
        elif op == 5 and size:                                 # duplicate a range
            i = rng.randrange(size)
            piece = out[i:i + rng.choice((1, 4, 16, 64))]
            out[i:i] = piece * rng.choice((1, 2, 16))
        elif op == 6 and size:                                 # truncate
            del out[rng.randrange(size):]
        elif op == 7 and corpus:                               # splice with another input
            other = rng.choice(corpus)
            i, j = rng.randrange(size + 1), rng.randrange(len(other) + 1)
            out = out[:i] + other[j:]
        elif op == 8:                                          # a token of a text format
            i = rng.randrange(size + 1)
            out[i:i] = rng.choice(_TOKENS) * rng.choice((1, 1, 1, 64, 5000))
        elif op == 9 and size:                                 # swap two bytes
            i, j = rng.randrange(size), rng.randrange(size)
            out[i], out[j] = out[j], out[i]
        elif op == 10:                                         # something else entirely
            out = bytearray(rng.randbytes(rng.randrange(64)))
    return bytes(out)


def mutate_inputs(seeds: Sequence[bytes], count: int, seed: int) -> Iterator[bytes]:
    """``count`` inputs: the seeds themselves first, then mutants of seeds and of
    earlier mutants (a bounded pool), all determined by ``seed``."""
    rng = random.Random(seed)
    pool = list(seeds)
    produced = 0
    for data in seeds:
        if produced == count:
            return
        yield data
        produced += 1
    while produced < count:
        data = _mutate(rng, rng.choice(pool), pool)
        if rng.random() < 0.05:
            if len(pool) < 256:
                pool.append(data)
            else:
                pool[rng.randrange(len(seeds), len(pool))] = data
        yield data
        produced += 1


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang


def run_mutate(name: str, count: int, seed: int, timeout_s: float,
               crash_dir: Path | None = None) -> tuple[Tally, list[tuple[bytes, str]]]:
    """Run ``count`` mutated inputs through target ``name``; returns the tally and the
    crashing or hanging inputs with what went wrong."""
    from tests.fuzz.targets import TARGETS

    target = TARGETS[name]
    tally = Tally(name)
    failures: list[tuple[bytes, str]] = []
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    started = time.perf_counter()
    try:
        for data in mutate_inputs(list(target.seeds()), count, seed):
            tally.inputs += 1
            begin = time.perf_counter()
            outcome = ""
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
            try:
                target.run(data)
                tally.accepted += 1
            except target.allowed:
                tally.refused += 1
            except Hang:
                outcome = "hang"
            except Exception as exc:  # anything else is the finding
                outcome = f"crash: {type(exc).__name__}: {exc}"[:300]
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            elapsed = time.perf_counter() - begin
            tally.slowest_s = max(tally.slowest_s, elapsed)
            if not outcome and elapsed > timeout_s:
                outcome = "hang"
            if outcome:
                if outcome == "hang":
                    tally.hangs += 1
                else:
                    tally.crashes += 1
                failures.append((data, outcome))
                if crash_dir is not None:
                    crash_dir.mkdir(parents=True, exist_ok=True)
                    (crash_dir / f"{name}-{tally.inputs}.bin").write_bytes(data)
    finally:
        signal.signal(signal.SIGALRM, previous)
        tally.seconds = time.perf_counter() - started
    return tally, failures


def _run_atheris(name: str, count: int, timeout_s: float, crash_dir: Path) -> int:
    """One target under libFuzzer in this process (a child of :func:`_atheris_campaign`)."""
    import atheris

    with atheris.instrument_imports(include=["hybridkex"]):
        from tests.fuzz.targets import TARGETS
    target = TARGETS[name]
    corpus = crash_dir / f"corpus-{name}"
    corpus.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(target.seeds()):
        (corpus / f"seed-{i}").write_bytes(data)

    def one_input(data: bytes) -> None:
        with contextlib.suppress(*target.allowed):
            target.run(data)

    atheris.Setup([sys.argv[0], f"-runs={count}", f"-timeout={max(1, round(timeout_s))}",
                   "-rss_limit_mb=4096", "-max_len=65536", "-print_final_stats=1",
                   f"-artifact_prefix={crash_dir}/{name}-", str(corpus)], one_input)
    atheris.Fuzz()
    return 0


def _atheris_campaign(names: Sequence[str], count: int, timeout_s: float,
                      crash_dir: Path) -> list[dict[str, Any]]:
    results = []
    for name in names:
        started = time.perf_counter()
        log = crash_dir / f"{name}.log"
        with log.open("wb") as out:
            code = subprocess.call(  # this interpreter, this module
                [sys.executable, "-m", "tests.fuzz.campaign", "--engine", "atheris-child",
                 "--target", name, "--inputs", str(count), "--timeout-s", str(timeout_s),
                 "--crash-dir", str(crash_dir)], stdout=out, stderr=subprocess.STDOUT)
        text = log.read_text(errors="replace")
        runs = [int(line.rsplit(":", 1)[1]) for line in text.splitlines()
                if line.startswith("stat::number_of_executed_units:")]
        results.append({"target": name, "inputs": runs[-1] if runs else None,
                        "exit_status": code, "crashed": "Uncaught Python exception" in text,
                        "hung": "ALARM: working on the last Unit" in text,
                        "seconds": round(time.perf_counter() - started, 1),
                        "log": str(log)})
        print(json.dumps(results[-1]), flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.campaign",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["mutate", "atheris", "atheris-child"],
                        default="mutate")
    parser.add_argument("--target", action="append",
                        help="a target name (repeatable; default: every target)")
    parser.add_argument("--inputs", type=int, default=10_000, help="inputs per target")
    parser.add_argument("--seed", type=int, default=1, help="seed of the mutate engine")
    parser.add_argument("--timeout-s", type=float, default=2.0,
                        help="per-input time limit (seconds)")
    parser.add_argument("--crash-dir", type=Path, default=Path("fuzz-findings"))
    args = parser.parse_args(argv)
    if args.engine == "atheris-child":
        return _run_atheris(args.target[0], args.inputs, args.timeout_s, args.crash_dir)
    from tests.fuzz.targets import TARGETS

    names = args.target or list(TARGETS)
    unknown = sorted(set(names) - set(TARGETS))
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    args.crash_dir.mkdir(parents=True, exist_ok=True)
    if args.engine == "atheris":
        results = _atheris_campaign(names, args.inputs, args.timeout_s, args.crash_dir)
        total = sum(r["inputs"] or 0 for r in results)
        bad = [r for r in results if r["crashed"] or r["hung"] or r["exit_status"]]
        print(json.dumps({"engine": "atheris", "inputs": total, "targets": len(results),
                          "crashes": sum(r["crashed"] for r in results),
                          "hangs": sum(r["hung"] for r in results)}))
        return 1 if bad else 0
    total_bad = 0
    for name in names:
        tally, failures = run_mutate(name, args.inputs, args.seed, args.timeout_s,
                                     args.crash_dir)
        total_bad += len(failures)
        print(json.dumps(asdict(tally)), flush=True)
        for data, outcome in failures[:5]:
            print(f"  {outcome}: {data[:80]!r}", flush=True)
    return 1 if total_bad else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
