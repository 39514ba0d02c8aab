"""ETSI TS 103 744 CatKDF and CasKDF against the standard's Annex C known answers.

The vectors (tests/data/etsi_103744_vectors.json) are ETSI's own, transcribed from
its informative reference implementation; ../shared/vectors holds none for this
standard.  They exercise ``etsi_catkdf``/``etsi_caskdf`` with every input explicit,
which the named combiners "etsi-catkdf"/"etsi-caskdf" then call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hybridkex import combiner

DATA = json.loads((Path(__file__).parent / "data" / "etsi_103744_vectors.json").read_text())
VECTORS: list[dict[str, Any]] = DATA["vectors"]


def _id(v: dict[str, Any]) -> str:
    return f"{v['hash']}-L{v['length']}-{v['source'].split('parameter set ')[1].split(',')[0]}"


def test_vectors_cover_both_sha2_sizes_used_by_hybridkex() -> None:
    assert {"SHA-256", "SHA-384"} <= {v["hash"] for v in VECTORS}


@pytest.mark.parametrize("vector", VECTORS, ids=_id)
def test_catkdf_known_answer(vector: dict[str, Any]) -> None:
    cat = vector["catkdf"]
    out = combiner.etsi_catkdf(
        vector["hash"],
        [bytes.fromhex(s) for s in cat["secrets"]],
        bytes.fromhex(cat["psk"]),
        bytes.fromhex(cat["label"]),
        bytes.fromhex(cat["context"]),
        bytes.fromhex(cat["ma"]),
        bytes.fromhex(cat["mb"]),
        vector["length"],
    )
    assert out.hex() == cat["expected"].lower()


@pytest.mark.parametrize("vector", VECTORS, ids=_id)
def test_caskdf_known_answer(vector: dict[str, Any]) -> None:
    cas = vector["caskdf"]
    rounds = [
        (bytes.fromhex(r["k"]), bytes.fromhex(r["label"]), bytes.fromhex(r["context"]),
         bytes.fromhex(r["ma"]), bytes.fromhex(r["mb"]), r["length"])
        for r in cas["rounds"]
    ]
    out = combiner.etsi_caskdf(vector["hash"], rounds, bytes.fromhex(cas["psk"]))
    assert out.hex() == cas["expected"].lower()


def test_named_catkdf_is_the_standard_function_with_documented_inputs() -> None:
    parts = [("X25519", b"\x11" * 32), ("QKD", b"\x22" * 32)]
    descriptor = b"\x06X25519\x00\x20" + b"\x03QKD\x00\x20"
    expected = combiner.etsi_catkdf("SHA-256", [b"\x11" * 32, b"\x22" * 32], b"",
                                    b"hybridkex etsi-catkdf v1", b"ctx", descriptor, b"", 32)
    assert combiner.combine(parts, b"ctx", 32, "etsi-catkdf") == expected


def test_named_caskdf_is_the_standard_function_with_documented_inputs() -> None:
    parts = [("X25519", b"\x11" * 32), ("QKD", b"\x22" * 32)]
    rounds = [
        (b"\x11" * 32, b"hybridkex etsi-caskdf v1\x01", b"ctx", b"X25519", b"", 32),
        (b"\x22" * 32, b"hybridkex etsi-caskdf v1\x02", b"ctx", b"QKD", b"", 32),
    ]
    assert combiner.combine(parts, b"ctx", 32, "etsi-caskdf") == combiner.etsi_caskdf(
        "SHA-256", rounds)
