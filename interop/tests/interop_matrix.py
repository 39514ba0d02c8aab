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

Each table has its own columns (``COLUMNS``): the primitive and HKX/1 tables the five
implementations of ML-KEM / ML-DSA, the TLS tables the two TLS 1.3 stacks (OpenSSL 3.5
through Node.js's tls module, and tlslite-ng); a peer that is not in a table's columns
has no cells there.  Adding a table: its rows in ``TABLES``, its ``COLUMNS`` and
``DESCRIPTIONS`` entries, a branch in :func:`status`, and the test functions the rows
name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PEERS: dict[str, str] = {
    "openssl": "OpenSSL 3.5 (Node.js)",
    "liboqs": "liboqs (liboqs-js, WebAssembly)",
    "pqcrypto": "pqcrypto (PQClean)",
    "kyber-py": "kyber-py",
    "dilithium-py": "dilithium-py",
    "tlslite-ng": "tlslite-ng (pure-Python TLS 1.3)",
}
PRIMITIVE_PEERS = ("openssl", "liboqs", "pqcrypto", "kyber-py", "dilithium-py")
TLS_PEERS = ("openssl", "tlslite-ng")

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
    group: str = ""  # TLS key-exchange group (OpenSSL name); "" for the default
    scheme: str = ""  # TLS certificate scheme (hybridkex name); "" for the peer's default
    cipher: str = ""  # qkd-psk: the one TLS 1.3 suite (hence the PSK's hash)
    peer_role: str = ""  # TLS: "server" (hybridkex.tls is the client), "client", or "both"


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

# --- TLS 1.3: hybridkex.tls against Node.js's tls (OpenSSL 3.5) and tlslite-ng -------

TLS_GROUPS = "TLS 1.3 key exchange: hybridkex.tls against another TLS 1.3 stack"
TLS_AUTH = "TLS 1.3 certificates and mutual authentication"
TLS_KEYS = "TLS 1.3 exporters and the QKD key as external PSK"
TLS_CLI = "TLS 1.3 through the command line (hybridkex serve --tls)"

# hybridkex.tls.GROUPS, in its order (not imported here: the matrix has no pyOpenSSL
# dependency; test_interop_tls.py checks the two agree).
TLS_GROUP_NAMES = ("X25519MLKEM768", "SecP256r1MLKEM768", "SecP384r1MLKEM1024", "MLKEM768",
                   "MLKEM1024")
# hybridkex.tls.context.SIGNATURE_ALGORITHMS: certificate scheme -> TLS signature scheme.
TLS_SCHEMES = {"ML-DSA-44": "mldsa44", "ML-DSA-65": "mldsa65", "ML-DSA-87": "mldsa87",
               "Ed25519": "ed25519", "ECDSA-P256": "ecdsa_secp256r1_sha256"}
# The server certificate of the group rows: ML-DSA-65, the project's default identity,
# where the peer has ML-DSA.
TLS_GROUP_ROW_SCHEME = {"openssl": "ML-DSA-65", "tlslite-ng": "Ed25519"}
TLS_EXPORTER_LABEL = "EXPORTER-hybridkex-interop"

DESCRIPTIONS.update({
    TLS_GROUPS: (
        "A real TLS 1.3 connection over loopback between hybridkex.tls (pyOpenSSL, "
        "OpenSSL 4) and the peer: Node.js's tls module (OpenSSL 3.5), or tlslite-ng run "
        "in a thread of the test process. Both ends offer and accept only the row's "
        "group; the handshake completes, hybridkex.tls reports the group (and so does "
        "the peer, where it can: Node.js only on a client socket, tlslite-ng always), "
        "both report TLSv1.3 and the same cipher, the RFC 8446 exporter is equal on "
        "both ends, and application data is echoed back. Server authentication only: "
        "the server's certificate is ML-DSA-65 (tlslite-ng, which has no ML-DSA: "
        "Ed25519), verified by the client against the test root CA (tlslite-ng does "
        "not verify chains: the test compares the certificate it received)."),
    TLS_AUTH: (
        "Mutual authentication with X25519MLKEM768: both ends present a chain (leaf and "
        "intermediate) of the row's scheme and demand the other's, verified against the "
        "test root CA. Each end saw the other's leaf certificate; hybridkex.tls reports "
        "the peer's CertificateVerify signature scheme (read from the handshake) and "
        "its own; Node.js reports the chain authorized. tlslite-ng runs as a client "
        "with certificate_compression_send = [] (with its defaults it sends a "
        "compressed certificate the server never asked for: it consults its own "
        "ClientHello's compress_certificate extension instead of the "
        "CertificateRequest's, and OpenSSL answers unexpected_message; a test checks "
        "that this is still so). The refusal rows use a second CA with other names and "
        "keys; Node.js verifies chains itself after OpenSSL's handshake and refuses by "
        "closing the connection without an alert (hybridkex.tls then reports the "
        "connection truncated; Node.js reports UNABLE_TO_GET_ISSUER_CERT_LOCALLY)."),
    TLS_KEYS: (
        "The exporter rows run a handshake in each direction (server authentication "
        "only unless the row says otherwise) and compare exporters of lengths 16, 32 "
        f"and 100 with the label {TLS_EXPORTER_LABEL}. The qkd-psk rows give "
        "hybridkex.tls a QKD pool key (MemoryKeyStore, StoreKeySource) and the peer the "
        "same key under the key's ID as its TLS 1.3 external PSK (Node.js: pskCallback; "
        "tlslite-ng: pskConfigs, psk_dhe_ke only), with X25519MLKEM768: hybridkex.tls "
        "reports psk_used (SSL_session_reused), the key ID and no certificate, and "
        "spends the pool key; a Node.js server reports the identity its pskCallback "
        "saw; the exporters agree."),
    TLS_CLI: (
        "The command line's TLS server against the peer's client: two sites made by "
        "`hybridkex site init` (ML-DSA-65 identities, self-signed identity.crt), the "
        "server's trusting the client's identity.crt (`hybridkex site trust`: a site "
        "demands a client certificate), served by `hybridkex serve --tls --once --echo`. "
        "The client presents the client site's identity.key and identity.crt, trusts "
        "the server site's identity.crt, offers X25519MLKEM768 only, and checks the "
        "echo, the group and the server's ML-DSA-65 certificate; the server's log names "
        "the client's site, its mldsa65 signature and the group, and it exits 0."),
})


def _tls_pair(table: str, key: str, kind: str, title: str, test: str,
              **fields: Any) -> list[Row]:
    """The two directions of one TLS check: the peer as server, then as client."""
    return [
        Row(table, f"{key}-peer-server", kind,
            f"{title}: hybridkex.tls client, the peer's server", test, peer_role="server",
            **fields),
        Row(table, f"{key}-peer-client", kind,
            f"{title}: the peer's client, hybridkex.tls server", test, peer_role="client",
            **fields),
    ]


TLS_GROUP_ROWS = [
    row for group in TLS_GROUP_NAMES
    for row in _tls_pair(TLS_GROUPS, f"tls-{group}", "group", group, "test_tls_group",
                         group=group)
]

TLS_AUTH_ROWS = [
    *(row for scheme in TLS_SCHEMES
      for row in _tls_pair(TLS_AUTH, f"tls-mutual-{scheme}", "mutual",
                           f"{scheme} certificates, mutual authentication",
                           "test_tls_mutual_authentication", scheme=scheme)),
    Row(TLS_AUTH, "tls-untrusted-refused-by-us", "untrusted-by-us",
        "hybridkex.tls refuses the peer's certificate from a CA it does not trust "
        "(the peer as server and as client)", "test_tls_untrusted_peer_is_refused",
        scheme="Ed25519", peer_role="both"),
    Row(TLS_AUTH, "tls-untrusted-refused-by-peer", "untrusted-by-peer",
        "The peer refuses hybridkex.tls's certificate from a CA it does not trust "
        "(the peer as server and as client)", "test_tls_peer_refuses_untrusted",
        scheme="Ed25519", peer_role="both"),
]

TLS_KEY_ROWS = [
    Row(TLS_KEYS, "tls-exporter", "exporter",
        "RFC 8446 exporter without a context value (none, and the empty one), both "
        "directions", "test_tls_exporter", peer_role="both"),
    Row(TLS_KEYS, "tls-exporter-context", "exporter-context",
        "RFC 8446 exporter with a 25-byte context value, both directions",
        "test_tls_exporter", context=HKX_CONTEXT, peer_role="both"),
    Row(TLS_KEYS, "tls-exporter-mutual", "exporter-mutual",
        "RFC 8446 exporter after mutual authentication (Ed25519 client certificate), "
        "both directions", "test_tls_exporter", scheme="Ed25519", peer_role="both"),
    *_tls_pair(TLS_KEYS, "tls-psk-sha256", "psk",
               "qkd-psk with TLS_AES_128_GCM_SHA256 (a SHA-256 PSK)", "test_tls_qkd_psk",
               cipher="TLS_AES_128_GCM_SHA256"),
    *_tls_pair(TLS_KEYS, "tls-psk-sha384", "psk",
               "qkd-psk with TLS_AES_256_GCM_SHA384 (a SHA-384 PSK, hybridkex.tls's "
               "default)", "test_tls_qkd_psk", cipher="TLS_AES_256_GCM_SHA384"),
    Row(TLS_KEYS, "tls-psk-wrong-key", "psk-wrong-key",
        "qkd-psk: the peer holds a different key under the same key ID: both ends "
        "refuse the handshake, in both directions (no certificate fallback)",
        "test_tls_qkd_psk_wrong_key", cipher="TLS_AES_128_GCM_SHA256", peer_role="both"),
]

TLS_CLI_ROWS = [
    Row(TLS_CLI, "tls-cli-serve", "cli-serve",
        "hybridkex serve --tls --once --echo (ML-DSA-65 site), the peer's client, "
        "X25519MLKEM768", "test_tls_cli_serve", group="X25519MLKEM768",
        scheme="ML-DSA-65", peer_role="client"),
]

TABLES: dict[str, list[Row]] = {
    MLKEM: [row for alg in MLKEM_ALGS for row in _mlkem_rows(alg)],
    MLDSA: [row for alg in MLDSA_ALGS for row in _mldsa_rows(alg)],
    HYBRID: HYBRID_ROWS,
    HKX: HKX_ROWS,
    TLS_GROUPS: TLS_GROUP_ROWS,
    TLS_AUTH: TLS_AUTH_ROWS,
    TLS_KEYS: TLS_KEY_ROWS,
    TLS_CLI: TLS_CLI_ROWS,
}
TLS_TABLES = (TLS_GROUPS, TLS_AUTH, TLS_KEYS, TLS_CLI)
COLUMNS: dict[str, tuple[str, ...]] = {
    table: TLS_PEERS if table in TLS_TABLES else PRIMITIVE_PEERS for table in TABLES}

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

# Checked by test_interop_tls.py::test_tls_limitation_still_holds.
TLS_LIMITATIONS: dict[str, str] = {
    "tlslite-pure-mlkem": (
        "tlslite-ng 0.8.2 has ML-KEM (through kyber-py) only in the three hybrid groups "
        "secp256r1mlkem768, x25519mlkem768 and secp384r1mlkem1024; it has no pure ML-KEM "
        "group (MLKEM512/768/1024, 0x0200-0x0202)"),
    "tlslite-mldsa": (
        "tlslite-ng 0.8.2 has no ML-DSA: no ML-DSA signature scheme (mldsa44/65/87, "
        "0x0904-0x0906) and its X.509 parser refuses an ML-DSA public key"),
    "tlslite-exporter-context": (
        "tlslite-ng 0.8.2's exporter, keyingMaterialExporter(label, length), takes no "
        "context value: it always exports with the empty one"),
    "tlslite-exporter-client-auth": (
        "tlslite-ng 0.8.2 derives the exporter master secret over a transcript that "
        "includes the client's Certificate and CertificateVerify, where RFC 8446 section "
        "7.1 says ClientHello...server Finished; so after a client certificate its "
        "exporter differs from every other stack's (checked: it differs from "
        "hybridkex.tls's with a client certificate and agrees without one)"),
    "tlslite-no-chain-validation": (
        "tlslite-ng 0.8.2 does not verify certificate chains: its handshake takes no "
        "trust anchors (a Checker compares fingerprints only), so there is no untrusted "
        "CA for it to refuse (checked: its client completes a handshake with a server "
        "whose CA it was never given)"),
    "node-psk-sha256": (
        "Node.js's pskCallback hands OpenSSL its PSK through the TLS 1.2-style PSK "
        "callbacks, which OpenSSL's TLS 1.3 uses as a SHA-256 PSK (with "
        "TLS_AES_128_GCM_SHA256); Node.js cannot make a SHA-384 PSK, so a peer offering "
        "only TLS_AES_256_GCM_SHA384 cannot use it (checked: that handshake fails, the "
        "Node.js server as well as the Node.js client)"),
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
    reason = LIMITATIONS.get(limitation) or TLS_LIMITATIONS[limitation]
    return NotSupported(reason, limitation)


def _tls_status(row: Row, peer: str) -> Status:
    if peer == "openssl":
        if row.kind == "psk" and row.cipher == "TLS_AES_256_GCM_SHA384":
            return _not_supported("node-psk-sha256")
        return Run()
    assert peer == "tlslite-ng", peer
    if row.group in ("MLKEM768", "MLKEM1024"):
        return _not_supported("tlslite-pure-mlkem")
    if row.scheme.startswith("ML-DSA"):
        return _not_supported("tlslite-mldsa")
    if row.kind == "exporter-context":
        return _not_supported("tlslite-exporter-context")
    if row.kind == "exporter-mutual":
        return _not_supported("tlslite-exporter-client-auth")
    if row.kind == "untrusted-by-peer":
        return _not_supported("tlslite-no-chain-validation")
    return Run()


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
    if row.table in TLS_TABLES:
        return _tls_status(row, peer)
    raise AssertionError(f"no status rules for table {row.table!r}")


def all_cells() -> list[tuple[Cell, Status]]:
    return [(Cell(row, peer), status(row, peer))
            for table, rows in TABLES.items() for row in rows for peer in COLUMNS[table]]


def cells(test: str) -> list[Cell]:
    """The cells that the interop test function ``test`` runs (its parametrization)."""
    found = [cell for cell, s in all_cells() if isinstance(s, Run) and cell.row.test == test]
    assert found, f"no matrix cell is run by {test}"
    return found
