"""The interop matrix: its tables, rows and peers, and what fills every cell.

interop/RESULTS.md is this matrix with the outcomes of a test run.  Each cell is one
of three things:

- :class:`Run`: a test in interop/tests runs it; ``Row.test`` names the test
  function, parametrized with :func:`cells` (a test checks that every such function
  exists).
- :class:`CoveredBy`: tests/test_crosscheck.py already checks it (kyber-py and
  dilithium-py against hybridkex's primitives); the cell shows those tests' outcome
  instead of repeating them.
- :class:`NotSupported`: the peer cannot do it, with the reason.  Where the reason is
  a property of the peer's API that can be checked (no key generation from a seed,
  no context strings), ``limitation`` names a check in test_interop_primitives.py;
  the cell then reads "not supported" only while that check passes, so a peer that
  gains the feature turns the cell into a failure that asks for the row to be run.

Adding a table (the TLS rows, with hybridkex.tls): add its rows to ``TABLES``, a
peer column to ``PEERS`` if needed (tlslite-ng), a branch to :func:`status`, and the
test functions the rows name.
"""

from __future__ import annotations

from dataclasses import dataclass

PEERS: dict[str, str] = {
    "openssl": "OpenSSL 3.5 (Node.js crypto)",
    "liboqs": "liboqs (liboqs-js, WebAssembly)",
    "pqcrypto": "pqcrypto (PQClean)",
    "kyber-py": "kyber-py",
    "dilithium-py": "dilithium-py",
}

HKX_CONTEXT = b"hybridkex interop context"


@dataclass(frozen=True)
class Row:
    table: str
    key: str  # unique; the first part of the test ids of its cells
    kind: str  # what the row checks, for status()
    title: str
    test: str  # the interop/tests function that runs its Run cells
    alg: str = ""
    context: bytes = b""
    suite: int = 0  # HKX/1 suite code


@dataclass(frozen=True)
class Cell:
    row: Row
    peer: str

    def __str__(self) -> str:
        return f"{self.row.key}-{self.peer}"


@dataclass(frozen=True)
class Run:
    pass


@dataclass(frozen=True)
class NotSupported:
    reason: str
    limitation: str | None = None  # a check that the reason still holds


@dataclass(frozen=True)
class Reference:
    """One test of tests/test_crosscheck.py: function, its ``name`` parameter, and for
    the ML-DSA ones whether its ``ctx`` parameter is empty (None: any, or none)."""

    function: str
    alg: str
    empty_context: bool | None = None


@dataclass(frozen=True)
class CoveredBy:
    tests: tuple[Reference, ...]


Status = Run | NotSupported | CoveredBy

# --- the tables ----------------------------------------------------------------------

MLKEM = "ML-KEM (FIPS 203)"
MLDSA = "ML-DSA (FIPS 204)"
HYBRID = "X25519 and X25519MLKEM768 (the TLS 1.3 hybrid's layout)"
HKX = "HKX/1 handshakes with KEM and signature steps done by the peer"

DESCRIPTIONS: dict[str, str] = {
    MLKEM: (
        "Keys, ciphertexts and shared secrets between hybridkex.primitives.kem() and "
        "each peer. A forged ciphertext is the real one with one bit flipped; the peers "
        "that take only expanded keys (liboqs, pqcrypto) decapsulate with hybridkex's "
        "seed expanded to the FIPS 203 decapsulation key by kyber-py."),
    MLDSA: (
        "Signatures between hybridkex.primitives.signature() and each peer, in the "
        "FIPS 204 pure mode, with the empty context and with a 25-byte context string."),
    HYBRID: (
        "OpenSSL's ML-KEM-768 and X25519 (Node.js crypto) put together in "
        "interop/node/openssl.mjs as draft-ietf-tls-ecdhe-mlkem lays them out: client "
        "share = ek ‖ X25519 public (1216 bytes), server share = ciphertext ‖ X25519 "
        "public (1120), shared secret = ss_ML-KEM ‖ ss_X25519 (64), against "
        "hybridkex's X25519MLKEM768 KEM."),
    HKX: (
        "A hybridkex ClientConnection and ServerConnection (tests/hkx1.py's sites: "
        "QKD pool, ML-DSA-65 identities, mutual authentication) with the named steps "
        "routed to the peer through Config.randomness (hybridkex.protocol.randomness). "
        "The handshake completes and application data goes both ways. The client "
        "always decapsulates with hybridkex.primitives."),
}

MLKEM_ALGS = ("ML-KEM-768", "ML-KEM-1024")
MLDSA_ALGS = ("ML-DSA-44", "ML-DSA-65", "ML-DSA-87")


def _mlkem_rows(alg: str) -> list[Row]:
    return [
        Row(MLKEM, f"{alg}-seed", "seed",
            f"{alg}: the same encapsulation key from the same seed d ‖ z",
            "test_mlkem_public_key_from_seed", alg),
        Row(MLKEM, f"{alg}-peer-encaps", "peer-encaps",
            f"{alg}: the peer encapsulates to a hybridkex key, hybridkex decapsulates",
            "test_mlkem_peer_encapsulates", alg),
        Row(MLKEM, f"{alg}-peer-decaps", "peer-decaps",
            f"{alg}: hybridkex encapsulates to a key the peer made, the peer decapsulates",
            "test_mlkem_peer_decapsulates", alg),
        Row(MLKEM, f"{alg}-rejection", "rejection",
            f"{alg}: forged ciphertext to a hybridkex key: the peer's implicit-rejection "
            "secret is hybridkex's",
            "test_mlkem_implicit_rejection", alg),
    ]


def _mldsa_rows(alg: str) -> list[Row]:
    return [
        Row(MLDSA, f"{alg}-seed", "seed",
            f"{alg}: the same public key from the same seed ξ",
            "test_mldsa_public_key_from_seed", alg),
        Row(MLDSA, f"{alg}-peer-signs", "peer-signs",
            f"{alg}: the peer signs, hybridkex verifies (empty context); an altered "
            "message is refused",
            "test_mldsa_peer_signs", alg),
        Row(MLDSA, f"{alg}-peer-verifies", "peer-verifies",
            f"{alg}: hybridkex signs, the peer verifies (empty context); an altered "
            "message is refused",
            "test_mldsa_peer_verifies", alg),
        Row(MLDSA, f"{alg}-peer-signs-ctx", "peer-signs-ctx",
            f"{alg}: the peer signs with a context string, hybridkex verifies; another "
            "context is refused",
            "test_mldsa_peer_signs", alg, HKX_CONTEXT),
        Row(MLDSA, f"{alg}-peer-verifies-ctx", "peer-verifies-ctx",
            f"{alg}: hybridkex signs with a context string, the peer verifies; another "
            "context is refused",
            "test_mldsa_peer_verifies", alg, HKX_CONTEXT),
    ]


HYBRID_ROWS = [
    Row(HYBRID, "x25519", "x25519",
        "X25519: the same public key from the same scalar, the same shared secret both ways",
        "test_x25519"),
    Row(HYBRID, "hybrid-keygen", "hybrid-keygen",
        "X25519MLKEM768: the same client share from the same private key (d ‖ z ‖ scalar)",
        "test_hybrid_client_share_from_private_key"),
    Row(HYBRID, "hybrid-peer-client", "hybrid-peer-client",
        "X25519MLKEM768: the peer's client share, hybridkex answers (server share), "
        "the peer decapsulates: the same 64-byte secret",
        "test_hybrid_peer_is_client"),
    Row(HYBRID, "hybrid-peer-server", "hybrid-peer-server",
        "X25519MLKEM768: hybridkex's client share, the peer answers, hybridkex "
        "decapsulates: the same 64-byte secret",
        "test_hybrid_peer_is_server"),
]

HKX_ROWS = [
    Row(HKX, "hkx-encaps-768", "server-encaps",
        "HKX1_X25519_MLKEM768_AES_256_GCM_SHA384: the server's ML-KEM-768 encapsulation",
        "test_hkx_server_encapsulation_by_peer", "ML-KEM-768", suite=0x0101),
    Row(HKX, "hkx-encaps-1024", "server-encaps",
        "HKX1_X25519_MLKEM1024_AES_256_GCM_SHA384: the server's ML-KEM-1024 encapsulation",
        "test_hkx_server_encapsulation_by_peer", "ML-KEM-1024", suite=0x0103),
    Row(HKX, "hkx-keypair", "client-keypair",
        "The client's ML-KEM-768 key pair (hybridkex decapsulates with it)",
        "test_hkx_client_keypair_by_peer", "ML-KEM-768", suite=0x0101),
    Row(HKX, "hkx-both", "both",
        "Both ML-KEM-768 steps: the client's key pair and the server's encapsulation",
        "test_hkx_both_mlkem_steps_by_peer", "ML-KEM-768", suite=0x0101),
    Row(HKX, "hkx-all-kem", "all-kem",
        "Every KEM step, X25519 too: both key pairs, both encapsulations",
        "test_hkx_every_kem_step_by_peer", "ML-KEM-768", suite=0x0101),
    Row(HKX, "hkx-sign", "sign",
        "Both sites' ML-DSA-65 handshake signatures (mutual authentication)",
        "test_hkx_signatures_by_peer", "ML-DSA-65", suite=0x0101),
]

TABLES: dict[str, list[Row]] = {
    MLKEM: [row for alg in MLKEM_ALGS for row in _mlkem_rows(alg)],
    MLDSA: [row for alg in MLDSA_ALGS for row in _mldsa_rows(alg)],
    HYBRID: HYBRID_ROWS,
    HKX: HKX_ROWS,
}

# --- what each peer can do, and why not ----------------------------------------------

# Checked by test_interop_primitives.py::test_limitation_still_holds.
LIMITATIONS: dict[str, str] = {
    "liboqs-keygen": (
        "liboqs-js 0.15.1 makes key pairs only at random (generateKeyPair()) and hands out "
        "the expanded private key (ML-KEM dk 2400/3168 bytes, ML-DSA sk 2560/4032/4896); "
        "it has no key generation from a seed, and its WebAssembly build exports only "
        "OQS_KEM_keypair / OQS_SIG_keypair, no seeded variant"),
    "liboqs-context": (
        "liboqs-js 0.15.1 signs and verifies with the empty context only: sign(message, "
        "secretKey) and verify(message, signature, publicKey) take no context, and its "
        "WebAssembly build exports OQS_SIG_sign / OQS_SIG_verify, not the _with_ctx_str "
        "variants"),
    "pqcrypto-keygen": (
        "pqcrypto 1.0.0 makes key pairs only at random (keygen() takes no seed) and hands "
        "out the expanded private key"),
}

ONLY_MLKEM = "kyber-py implements ML-KEM (FIPS 203) only"
ONLY_MLDSA = "dilithium-py implements ML-DSA (FIPS 204) only"
NO_X25519 = {
    "liboqs": "liboqs implements post-quantum algorithms only: no X25519",
    "pqcrypto": "pqcrypto (PQClean) implements post-quantum algorithms only: no X25519",
    "kyber-py": "kyber-py implements ML-KEM only: no X25519",
    "dilithium-py": "dilithium-py implements ML-DSA only: no X25519",
}
HKX_NEEDS_SEED = (
    "the HKX/1 client decapsulates with hybridkex.primitives, using the private key that "
    "Randomness.kem_keypair returned, and cryptography takes an ML-KEM private key only "
    "as the 64-byte seed d ‖ z; {peer} makes only expanded keys (and "
    "Randomness has no decapsulate step to hand to the peer instead)")
HKX_SIGN_NEEDS_SEED = (
    "HKX/1 identities hold the 32-byte ML-DSA seed, which is what Randomness.sign is "
    "given; {peer} signs only with an expanded private key")

_KEYGEN_LIMITATION = {"liboqs": "liboqs-keygen", "pqcrypto": "pqcrypto-keygen"}

_MLKEM_CROSSCHECK = {
    "seed": "test_mlkem_same_public_key_from_seed",
    "peer-encaps": "test_mlkem_their_ciphertext_decapsulated_by_us",
    "peer-decaps": "test_mlkem_our_ciphertext_decapsulated_by_them",
    "rejection": "test_mlkem_implicit_rejection_agrees",
}


def _mldsa_crosscheck(row: Row) -> CoveredBy:
    alg = row.alg
    empty = not row.context
    if row.kind == "seed":
        return CoveredBy((Reference("test_mldsa_same_public_key_from_seed", alg),))
    signs = row.kind.startswith("peer-signs")
    function = ("test_mldsa_their_signature_verified_by_us" if signs
                else "test_mldsa_our_signature_verified_by_them")
    tests = [Reference(function, alg, empty)]
    if not empty:
        tests.append(Reference("test_mldsa_wrong_context_fails_both_ways", alg))
    return CoveredBy(tuple(tests))


def _not_supported(limitation: str) -> NotSupported:
    return NotSupported(LIMITATIONS[limitation], limitation)


def status(row: Row, peer: str) -> Status:
    """What fills the cell of ``peer`` in ``row``."""
    if row.table == MLKEM:
        if peer == "dilithium-py":
            return NotSupported(ONLY_MLDSA)
        if peer == "kyber-py":
            return CoveredBy((Reference(_MLKEM_CROSSCHECK[row.kind], row.alg),))
        if row.kind == "seed" and peer in _KEYGEN_LIMITATION:
            return _not_supported(_KEYGEN_LIMITATION[peer])
        return Run()
    if row.table == MLDSA:
        if peer == "kyber-py":
            return NotSupported(ONLY_MLKEM)
        if peer == "dilithium-py":
            return _mldsa_crosscheck(row)
        if row.kind == "seed" and peer in _KEYGEN_LIMITATION:
            return _not_supported(_KEYGEN_LIMITATION[peer])
        if row.context and peer == "liboqs":
            return _not_supported("liboqs-context")
        return Run()
    if row.table == HYBRID:
        return Run() if peer == "openssl" else NotSupported(NO_X25519[peer])
    if row.table == HKX:
        if row.kind == "sign":
            if peer == "kyber-py":
                return NotSupported(ONLY_MLKEM)
            if peer in _KEYGEN_LIMITATION:
                return NotSupported(HKX_SIGN_NEEDS_SEED.format(peer=peer),
                                    _KEYGEN_LIMITATION[peer])
            return Run()
        if peer == "dilithium-py":
            return NotSupported(ONLY_MLDSA)
        if row.kind == "all-kem" and peer != "openssl":
            return NotSupported(NO_X25519[peer])
        if row.kind in ("client-keypair", "both") and peer in _KEYGEN_LIMITATION:
            return NotSupported(HKX_NEEDS_SEED.format(peer=peer), _KEYGEN_LIMITATION[peer])
        return Run()
    raise AssertionError(f"no status rules for table {row.table!r}")


def all_cells() -> list[tuple[Cell, Status]]:
    return [(Cell(row, peer), status(row, peer))
            for rows in TABLES.values() for row in rows for peer in PEERS]


def cells(test: str) -> list[Cell]:
    """The cells that the interop test function ``test`` runs (its parametrization)."""
    found = [cell for cell, s in all_cells() if isinstance(s, Run) and cell.row.test == test]
    assert found, f"no matrix cell is run by {test}"
    return found
