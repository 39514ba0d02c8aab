"""HKX/1 test vectors: complete sessions with fixed randomness, keys and QKD keys.

Each case runs a real client and server (hybridkex.protocol) whose every random
choice comes from :class:`VectorRandomness`, records every byte on the wire, every
handshake message in plaintext and every secret the key schedule derives, and
writes them to tests/vectors/hkx1-<case>.json.  tests/test_protocol_vectors.py
regenerates each file and compares it byte for byte.

    python -m tests.hkx1_vectors          # rewrite tests/vectors/hkx1-*.json

The randomness is reproducible by a second implementation (the files say how):

* ``random_bytes(n)``: SHAKE256(seed || "hkx1 vector " || label || u32 counter), n bytes;
* KEM key pairs: the KEM's ``derive_keypair`` on such bytes (X25519: 32-byte scalar;
  ML-KEM: the 64-byte seed d || z of FIPS 203);
* X25519 encapsulation: an ephemeral key pair derived the same way;
* ML-KEM encapsulation: ML-KEM.Encaps_internal(ek, m) of FIPS 203 with m drawn the
  same way, computed by kyber-py (an independent implementation: the peer decapsulates
  with cryptography, so every vector is also an interoperability check);
* ML-DSA signatures: the deterministic variant (rnd = 32 zero bytes), by dilithium-py;
  Ed25519 is deterministic already.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import struct
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from dilithium_py.ml_dsa import ML_DSA_44, ML_DSA_65, ML_DSA_87
from kyber_py.ml_kem import ML_KEM_768, ML_KEM_1024

from hybridkex.keydelivery import StoredKey, StoreKeySource, linked_pools
from hybridkex.primitives import kem, signature
from hybridkex.protocol import (
    SUITES,
    ClientConnection,
    Config,
    Connection,
    ConnectionClosed,
    NeedData,
    ServerConnection,
    SigningIdentity,
    TrustStore,
)
from hybridkex.protocol.record import RecordBuffer, RecordProtection
from hybridkex.protocol.suites import HandshakeType, Suite
from tests.support import CLIENT, SERVER, self_signed

VECTOR_DIR = Path(__file__).parent / "vectors"
CLOCK = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.UTC)
CERTIFICATES_FROM = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)  # for 365 days
_MLKEM = {"ML-KEM-768": ML_KEM_768, "ML-KEM-1024": ML_KEM_1024}
_MLDSA = {"ML-DSA-44": ML_DSA_44, "ML-DSA-65": ML_DSA_65, "ML-DSA-87": ML_DSA_87}
RANDOMNESS_RECIPE = (
    "random_bytes(n) and every other draw: SHAKE256(seed || 'hkx1 vector ' || label || "
    "u32 counter)[:n], counter from 0 per side, labels 'random', 'kem keypair', "
    "'x25519 ephemeral', 'ml-kem m'; KEM key pairs: derive_keypair(draw) (X25519 32-byte "
    "scalar, ML-KEM 64-byte seed d||z); X25519 encapsulation: ephemeral key pair from a "
    "draw; ML-KEM encapsulation: FIPS 203 ML-KEM.Encaps_internal(ek, m = draw of 32); "
    "ML-DSA signatures: FIPS 204 deterministic variant (rnd = 0^32), empty context; "
    "Ed25519: RFC 8032.")


class VectorRandomness:
    """A hybridkex.protocol.Randomness whose every draw is a function of ``seed``."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self.counter = 0

    def draw(self, label: str, n: int) -> bytes:
        data = self.seed + b"hkx1 vector " + label.encode() + struct.pack(">I", self.counter)
        self.counter += 1
        return hashlib.shake_256(data).digest(n)

    def random_bytes(self, n: int) -> bytes:
        return self.draw("random", n)

    def kem_keypair(self, kem_name: str) -> tuple[bytes, bytes]:
        scheme = kem(kem_name)
        return scheme.derive_keypair(self.draw("kem keypair", scheme.seed_size))

    def encapsulate(self, kem_name: str, public: bytes) -> tuple[bytes, bytes]:
        if kem_name == "X25519":
            x25519 = kem("X25519")
            eph_public, eph_private = x25519.derive_keypair(self.draw("x25519 ephemeral", 32))
            # DH(ephemeral, peer) is what decapsulating the peer's key with ours gives.
            return x25519.decapsulate(public, eph_private), eph_public
        secret, ciphertext = _MLKEM[kem_name]._encaps_internal(
            public, self.draw("ml-kem m", 32))
        return bytes(secret), bytes(ciphertext)

    def sign(self, scheme: str, private: bytes, message: bytes) -> bytes:
        if scheme in _MLDSA:
            _, expanded = _MLDSA[scheme].key_derive(private)
            return bytes(_MLDSA[scheme].sign(expanded, message, b"", deterministic=True))
        if scheme == "Ed25519":
            return signature(scheme).sign(private, message)
        raise ValueError(f"no deterministic signing for {scheme} in the vectors")


@dataclass(frozen=True)
class Case:
    name: str
    suite: Suite
    auth: str  # "signature" or "psk"
    scheme: str = "ML-DSA-65"
    x509_chain: bool = False
    security: str = "qkd-and-pq"
    description: str = ""


def _short(suite: Suite) -> str:
    return suite.name.removeprefix("HKX1_").lower().replace("_", "-")


CASES: tuple[Case, ...] = (
    *(Case(f"signature-{_short(SUITES[c])}", SUITES[c], "signature",
           description="bootstrap: mutual ML-DSA-65 signatures, pinned raw public keys")
      for c in (0x0101, 0x0102, 0x0103, 0x0104)),
    *(Case(f"psk-{_short(SUITES[c])}", SUITES[c], "psk",
           description="psk: one-time Poly1305 MACs keyed from the QKD pool")
      for c in (0x0101, 0x0102, 0x0103, 0x0104)),
    Case("signature-x509-ed25519", SUITES[0x0101], "signature", scheme="Ed25519",
         x509_chain=True,
         description="bootstrap: mutual Ed25519 signatures, X.509 chains (root, leaf)"),
    Case(f"signature-{_short(SUITES[0x0001])}", SUITES[0x0001], "signature",
         security="at-least-qkd",
         description="X25519 and the QKD key only, under security policy at-least-qkd"),
)


def _seed(case: Case, what: str) -> bytes:
    return hashlib.sha256(f"hkx1 vector {case.name} {what}".encode()).digest()


def _pool(case: Case) -> list[StoredKey]:
    keys = []
    for n, initiator in enumerate([CLIENT] * 8 + [SERVER] * 8):
        material = hashlib.shake_256(_seed(case, f"pool key {n}")).digest(48)
        keys.append(StoredKey(str(uuid.UUID(bytes=material[:16], version=4)), material[16:],
                              initiator))
    return keys


def _x509_chains(case: Case) -> tuple[dict[str, SigningIdentity], x509.Certificate]:
    """Ed25519 certificates are deterministic: with fixed keys, serials and dates the
    chain (tests/support.certificate) is rebuilt byte for byte."""
    def key(what: str) -> ed25519.Ed25519PrivateKey:
        return ed25519.Ed25519PrivateKey.from_private_bytes(_seed(case, what))

    root = self_signed("Ed25519", "hkx1 vector root", key=key("root"), serial=1,
                       not_before=CERTIFICATES_FROM, days=365)
    identities = {}
    for serial, site in enumerate((CLIENT, SERVER), start=2):
        leaf = root.issue(site, key=key(site), serial=serial, not_before=CERTIFICATES_FROM,
                          days=365)
        identities[site] = leaf.identity()
    return identities, root.certificate


def _configs(case: Case, log: Callable[[str, str, bytes], None]) -> tuple[Config, Config]:
    if case.x509_chain:
        identities, root = _x509_chains(case)
        trust = {site: TrustStore(anchors=[root]) for site in (CLIENT, SERVER)}
    else:
        scheme = signature(case.scheme)
        identities = {}
        for site in (CLIENT, SERVER):
            public, private = scheme.derive_keypair(
                _seed(case, f"{site} identity")[:scheme.seed_size])
            identities[site] = SigningIdentity(case.scheme, private, public)
        trust = {CLIENT: TrustStore(pinned={SERVER: (case.scheme, identities[SERVER].public_key)}),
                 SERVER: TrustStore(pinned={CLIENT: (case.scheme, identities[CLIENT].public_key)})}
    pools = linked_pools(CLIENT, SERVER, _pool(case))
    configs = []
    for site, store in ((CLIENT, pools.store_a), (SERVER, pools.store_b)):
        configs.append(Config(
            site=site,
            key_source=StoreKeySource(store),
            identity=identities[site],
            trust=trust[site],
            security=case.security,
            suites=(case.suite,),
            auth=case.auth,
            randomness=VectorRandomness(_seed(case, f"{site} randomness")),
            clock=lambda: CLOCK,
            secret_log=functools.partial(log, site),
        ))
    return configs[0], configs[1]


def _handshake_messages(suite: Suite, flights: list[tuple[str, bytes]],
                        secrets: dict[str, bytes]) -> list[dict[str, str]]:
    """The plaintext handshake messages of the three handshake flights: ClientHello in
    clear; ServerHello in clear, then the server's messages under s_hs; the client's
    under c_hs."""
    keys = {"client": secrets["client_handshake_traffic_secret"],
            "server": secrets["server_handshake_traffic_secret"]}
    messages = []
    for index, (sender, data) in enumerate(flights[:3]):
        buffer = RecordBuffer()
        buffer.feed(data)
        records = []
        while (record := buffer.next_record()) is not None:
            records.append(record)
        clear = {0: len(records), 1: 1, 2: 0}[index]
        protection = RecordProtection(suite, keys[sender])
        plaintext = b"".join(r.payload if n < clear else protection.open(r)
                             for n, r in enumerate(records))
        while plaintext:
            length = int.from_bytes(plaintext[1:4], "big")
            raw, plaintext = plaintext[:4 + length], plaintext[4 + length:]
            messages.append({"sender": sender, "type": HandshakeType(raw[0]).name,
                             "bytes": raw.hex()})
    return messages


def _move(sender: Connection, receiver: Connection, flights: list[tuple[str, bytes]]) -> None:
    data = sender.data_to_send()
    if data:
        flights.append((sender.role, data))
        receiver.receive_data(data)
        while not isinstance(receiver.next_event(), NeedData | ConnectionClosed):
            pass


def generate(case: Case) -> dict[str, Any]:
    logged: dict[str, dict[str, bytes]] = {CLIENT: {}, SERVER: {}}

    def log(site: str, name: str, secret: bytes) -> None:
        logged[site][name] = secret

    client_config, server_config = _configs(case, log)
    client = ClientConnection(client_config, SERVER)
    server = ServerConnection(server_config)
    flights: list[tuple[str, bytes]] = []
    client.start_handshake()
    _move(client, server, flights)  # ClientHello
    _move(server, client, flights)  # ServerHello .. server Finished
    _move(client, server, flights)  # client authentication, Finished
    assert client.handshake_complete and server.handshake_complete
    client.send(b"ping")
    _move(client, server, flights)
    server.send(b"pong")
    _move(server, client, flights)
    client.key_update(request_peer=True)
    _move(client, server, flights)  # KeyUpdate(requested)
    _move(server, client, flights)  # KeyUpdate(not requested)
    rekey_ids = client.rekey_qkd()
    client.send(b"after the QKD re-key")
    _move(client, server, flights)  # QkdRekey, data
    _move(server, client, flights)  # QkdRekeyAck
    server.send(b"reply under re-keyed secrets")
    _move(server, client, flights)
    client.close()
    _move(client, server, flights)
    server.close()
    _move(server, client, flights)
    if logged[CLIENT] != logged[SERVER]:
        raise AssertionError("client and server derived different secrets")
    secrets = logged[CLIENT]
    info = client.session_info()
    return {
        "protocol": "HKX/1",
        "case": case.name,
        "description": case.description,
        "suite": {"code": f"{case.suite.code:#06x}", "name": case.suite.name},
        "auth_mode": case.auth,
        "security_policy": case.security,
        "inputs": {
            "randomness": RANDOMNESS_RECIPE,
            "client_randomness_seed": _seed(case, f"{CLIENT} randomness").hex(),
            "server_randomness_seed": _seed(case, f"{SERVER} randomness").hex(),
            "identities": {
                config.site: {
                    "scheme": config.identity.scheme,
                    "private_key": config.identity.private_key.hex(),
                    "public_key": config.identity.public_key.hex(),
                    "certificates": [c.hex() for c in config.identity.certificates],
                } for config in (client_config, server_config) if config.identity is not None
            },
            "trust_anchors": [a.public_bytes(Encoding.DER).hex()
                              for a in client_config.trust.anchors],
            "clock": CLOCK.isoformat(),
            "pool": [{"key_id": k.key_id, "key": k.key.hex(), "initiator": k.initiator}
                     for k in _pool(case)],
            "application_data": ["ping", "pong", "after the QKD re-key",
                                 "reply under re-keyed secrets"],
        },
        "handshake_messages": _handshake_messages(case.suite, flights, secrets),
        "secrets": {name: value.hex() for name, value in secrets.items()},
        "session": {
            "transcript_hash": info.transcript_hash,
            "qkd_key_ids": list(info.qkd_key_ids),
            "rekey_qkd_key_ids": list(rekey_ids),
            "pool_keys_spent_by_client": client.session_info().pool_keys_spent,
        },
        "wire": [{"sender": sender, "bytes": data.hex()} for sender, data in flights],
    }


def render(vector: dict[str, Any]) -> str:
    return json.dumps(vector, indent=1) + "\n"


def path_of(case: Case) -> Path:
    return VECTOR_DIR / f"hkx1-{case.name}.json"


def main() -> None:
    VECTOR_DIR.mkdir(exist_ok=True)
    for case in CASES:
        path_of(case).write_text(render(generate(case)))
        print(f"wrote {path_of(case)}", file=sys.stderr)


if __name__ == "__main__":
    main()
