"""HKX/1 handshakes and records per second, against their primitive floor and TLS 1.3.

Everything runs in one process and one run, so the ratios compare figures taken on
the same machine in the same state:

1. **Handshakes.** Full HKX/1 handshakes, a :class:`ClientConnection` and a
   :class:`ServerConnection` in one thread, ``data_to_send()`` of one moved into
   ``receive_data()`` of the other, fresh connections every time.  Every handshake
   spends fresh QKD keys: before each segment of handshakes (outside the timed
   region) two :class:`MemoryKeyStore` objects receive the same keys, half of them
   initiated by each site, exactly as many as the segment needs.  Configurations:
   signature (bootstrap) mode with ML-DSA-65 raw pinned keys, server-only
   (``mutual_auth=False`` on the server) and mutual; signature mode with ML-DSA-65
   X.509 chains (a root anchor and a leaf per site), server-only and mutual (the
   X.509 rows do what the TLS baseline does: one chain check and one handshake
   signature per authenticated side); psk mode; and suites
   0x0101..0x0104 in server-only signature mode and in psk mode.  Each site's ML-DSA
   key is given to its :class:`SigningIdentity` as plain bytes, as a site loads it from
   storage, and the identity decodes it once (``prepare_private_key``), as it does in
   real use (``--plain-keys``: the identity's key put back to plain bytes after
   construction, decoded again for every signature, as before identities did this).
   ``pool us`` is what a handshake spends in the key stores (take + fetch), measured
   apart; it is part of the handshake's time, not of the floor.
2. **The primitive floor** of each configuration: exactly the primitive operations
   that handshake performs, called directly on pyca/cryptography with key objects
   held as a native implementation would hold them: two X25519 key pairs and two
   exchanges; ML-KEM key generation, encapsulation (from the public key's bytes) and
   decapsulation; ML-DSA-65 signatures and verifications (X.509: parsing the peer's
   leaf, checking its signature against the anchor, then the handshake signature);
   per side, a running SHA-384 transcript hash finalised after every message and
   the key schedule's HKDF-Extract, HKDF-Expand and HMAC calls; one AEAD object per
   traffic key and every handshake record sealed and opened, at the sizes the real
   handshake sent; in psk mode the three Poly1305 tags made and checked.  What is
   not a primitive is not in it: encoding, the state machine, the QKD key pool.
   ``hs/floor`` is the time of a handshake over the time of its floor.
3. **pyOpenSSL TLS 1.3** full handshakes (bench/tls_baseline.py: X25519MLKEM768,
   ML-DSA-65 certificate chain of CA and leaf, server-only and mutual), and
   ``HKX/TLS``, the ratio of rates against the matching authentication.
4. **Records.** 16 KiB of application data through ``send`` and the peer's
   ``receive_data``/``next_event`` (until NEED_DATA) on an established session, one
   record per call and 64 records per call, in MB/s (10^6 bytes of plaintext per
   second), against the same key's raw ``AESGCM`` (``ChaCha20Poly1305`` for the
   ChaCha suites) ``encrypt`` + ``decrypt`` of 16 KiB.

The machines are shared and noisy: every figure is the median of ``--repeats``
repeats, the configurations are interleaved within each repeat, and each handshake
batch runs back to back with its floor (order flipped every repeat).  ``paired`` is
the median of the per-repeat ratios, a cross-check on the ratio of medians.

    python bench/handshake.py            # 7 repeats of 0.4 s batches, about 90 seconds
    python bench/handshake.py --quick    # 3 repeats of 0.12 s batches, about 15 seconds
    python bench/handshake.py --json     # the same, as JSON on stdout
    python bench/handshake.py --plain-keys      # signing keys decoded for every signature
    python bench/handshake.py --clock cpu       # timed by CPU time: steadier on a busy machine
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cryptography
import tls_baseline
from cryptography import x509
from cryptography.hazmat.backends.openssl import backend as openssl_backend
from cryptography.hazmat.primitives import hashes, hmac, poly1305
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from hybridkex.keydelivery import StoreKeySource, linked_pools
from hybridkex.protocol import (
    NEED_DATA,
    SUITES,
    ClientConnection,
    Config,
    DataReceived,
    ServerConnection,
    SigningIdentity,
    Suite,
    TrustStore,
)
from hybridkex.protocol.keyschedule import traffic_key_iv
from tests.support import CLIENT, SERVER, self_signed

SCHEME = "ML-DSA-65"
TLS_GROUP = "X25519MLKEM768"
SEGMENT = 16  # handshakes per fresh pair of key stores
RECORD = 1 << 14
BULK_RECORDS = 64
PSK_UNITS = 3  # binder + two AuthMacs, besides the QKD key

# What every rate is timed with: wall time (perf_counter), or with --clock cpu this
# process's CPU time, which a shared machine's other jobs do not inflate (everything
# here runs in one thread, so the process's CPU time is the work measured).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]

GOAL_TLS = 1.1  # X.509 bootstrap rate / TLS 1.3 rate, at least
GOAL_FLOOR = 1.15  # handshake time / floor time, at most, for every configuration
GOAL_PSK = 3.0  # psk rate / bootstrap rate, at least (an earlier goal, still reported)
GOAL_RECORD = 0.7  # record MB/s / raw AES-256-GCM MB/s, at least


# -- identities and key pools -------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """Both sites' ML-DSA-65 identities, as raw pinned keys and as X.509 chains."""

    raw: dict[str, SigningIdentity]
    raw_trust: dict[str, TrustStore]
    chain: dict[str, SigningIdentity]
    chain_trust: TrustStore
    root: x509.Certificate

    @classmethod
    def create(cls, plain: bool = False) -> Credentials:
        """Identities built from the plain key bytes a site loads from storage, which
        :class:`SigningIdentity` decodes once; ``plain``: each identity's key then put back
        to plain bytes, so that every signature decodes it again (the cost before
        identities prepared their keys)."""
        def load(identity: SigningIdentity) -> SigningIdentity:
            if plain:  # bypasses the frozen dataclass on purpose: the bench's diagnostic
                object.__setattr__(identity, "private_key", bytes(identity.private_key))
            return identity

        raw = {}
        for site in (CLIENT, SERVER):
            key = mldsa.MLDSA65PrivateKey.generate()
            raw[site] = load(SigningIdentity(SCHEME, key.private_bytes_raw(),
                                             key.public_key().public_bytes_raw()))
        raw_trust = {CLIENT: TrustStore(pinned={SERVER: (SCHEME, raw[SERVER].public_key)}),
                     SERVER: TrustStore(pinned={CLIENT: (SCHEME, raw[CLIENT].public_key)})}
        root = self_signed(SCHEME, "hybridkex bench root")
        chain = {}
        for site in (CLIENT, SERVER):
            # root + leaf: the leaf alone goes on the wire, the root is the peer's anchor
            chain[site] = load(root.issue(site).identity())
        return cls(raw, raw_trust, chain, TrustStore(anchors=[root.certificate]),
                   root.certificate)


def linked_sources(keys_per_site: int) -> tuple[StoreKeySource, StoreKeySource]:
    """Both sites' key sources over the same fresh keys, half initiated by each site."""
    pools = linked_pools(CLIENT, SERVER, keys_per_site)
    return StoreKeySource(pools.store_a), StoreKeySource(pools.store_b)


# -- configurations -------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """One handshake configuration; ``tls`` names the TLS row it is compared with."""

    name: str
    suite: Suite
    auth: str  # "signature" or "psk"
    mutual: bool = False
    x509: bool = False

    @property
    def units(self) -> int:
        """Pool keys one handshake spends: the QKD key, plus three in psk mode."""
        return 1 + (PSK_UNITS if self.auth == "psk" else 0)

    @property
    def tls(self) -> str | None:
        if self.auth != "signature" or self.suite.code != 0x0101:
            return None
        return "mutual" if self.mutual else "server-only"

    @property
    def bootstrap(self) -> bool:
        return self.auth == "signature" and self.suite.code == 0x0101

    def configs(self, creds: Credentials, sources: tuple[StoreKeySource, StoreKeySource],
                secret_log: Callable[[str, bytes], None] | None = None) -> tuple[Config, Config]:
        fields: dict[str, Any] = {"suites": (self.suite,), "auth": self.auth}
        configs = []
        for site, source in zip((CLIENT, SERVER), sources, strict=True):
            site_fields = dict(fields, site=site, key_source=source)
            if self.auth == "signature":
                site_fields["identity"] = (creds.chain if self.x509 else creds.raw)[site]
                site_fields["trust"] = creds.chain_trust if self.x509 else creds.raw_trust[site]
            if site == SERVER:
                site_fields["mutual_auth"] = self.mutual
            if site == CLIENT and secret_log is not None:
                site_fields["secret_log"] = secret_log
            configs.append(Config(**site_fields))
        return configs[0], configs[1]


def setups() -> list[Setup]:
    default = SUITES[0x0101]
    rows = [
        Setup("signature, raw key, server-only", default, "signature"),
        Setup("signature, raw key, mutual", default, "signature", mutual=True),
        Setup("signature, X.509, server-only", default, "signature", x509=True),
        Setup("signature, X.509, mutual", default, "signature", mutual=True, x509=True),
        Setup("psk", default, "psk"),
    ]
    for code in (0x0102, 0x0103, 0x0104):
        rows.append(Setup("signature, raw key, server-only", SUITES[code], "signature"))
        rows.append(Setup("psk", SUITES[code], "psk"))
    return rows


# -- handshakes -----------------------------------------------------------------------------


def handshake(client_config: Config, server_config: Config,
              flights: list[tuple[str, bytes]] | None = None
              ) -> tuple[ClientConnection, ServerConnection]:
    """One full handshake over memory; ``flights`` collects what went on the wire."""
    client = ClientConnection(client_config, SERVER)
    server = ServerConnection(server_config)
    client.start_handshake()
    sender: ClientConnection | ServerConnection = client
    receiver: ClientConnection | ServerConnection = server
    while data := sender.data_to_send():
        if flights is not None:
            flights.append((sender.role, data))
        receiver.receive_data(data)
        while receiver.next_event() is not NEED_DATA:
            pass
        sender, receiver = receiver, sender
    if not (client.handshake_complete and server.handshake_complete):
        raise RuntimeError("the handshake did not complete")
    return client, server


class Handshakes:
    """Times full handshakes of one setup; every segment gets fresh, exactly sized pools."""

    def __init__(self, setup: Setup, creds: Credentials) -> None:
        self.setup = setup
        self.client, self.server = setup.configs(creds, linked_sources(setup.units))

    def _segment_configs(self, count: int) -> tuple[Config, Config]:
        sources = linked_sources(count * self.setup.units)
        return (dataclasses.replace(self.client, key_source=sources[0]),
                dataclasses.replace(self.server, key_source=sources[1]))

    def probe(self) -> list[tuple[str, bytes]]:
        """One handshake, checked to be what the row claims; returns its flights."""
        flights: list[tuple[str, bytes]] = []
        client, server = handshake(*self._segment_configs(1), flights=flights)
        setup, info, seen = self.setup, client.session_info(), server.session_info()
        expected_kind = "psk" if setup.auth == "psk" else "x509" if setup.x509 else "raw-public-key"
        client_kind = expected_kind if setup.auth == "psk" or setup.mutual else "unauthenticated"
        problems = [what for what, ok in (
            ("suite", info.suite == seen.suite == setup.suite.name),
            ("auth mode", info.auth_mode == seen.auth_mode == setup.auth),
            ("QKD key", info.qkd and seen.qkd),
            ("post-quantum KEM", info.post_quantum),
            ("fallback", info.fallback is None and seen.fallback is None),
            ("server identity", info.peer.kind == expected_kind),
            ("client identity", seen.peer.kind == client_kind),
        ) if not ok]
        if problems:
            raise RuntimeError(f"{setup.name} {setup.suite.code:#06x}: wrong {problems}")
        return flights

    def rate(self, seconds: float) -> float:
        """Handshakes per second; only the handshakes are timed, not the pool deposits."""
        elapsed, count = 0.0, 0
        while elapsed < seconds:
            client, server = self._segment_configs(SEGMENT)
            start = clock()
            for _ in range(SEGMENT):
                handshake(client, server)
            elapsed += clock() - start
            count += SEGMENT
        return count / elapsed

    def pool_cost(self, rounds: int = 64) -> float:
        """Seconds per handshake spent in take + fetch of its keys (part of the handshake)."""
        units = self.setup.units
        elapsed = 0.0
        for _ in range(max(1, rounds // SEGMENT)):
            a, b = linked_sources(SEGMENT * units)
            start = clock()
            for _ in range(SEGMENT):
                keys = a.take(SERVER, units)
                b.fetch(CLIENT, [k.key_id for k in keys])
            elapsed += clock() - start
        return elapsed / (max(1, rounds // SEGMENT) * SEGMENT)


# -- the primitive floor ----------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    sender: str
    encrypted: bool
    plaintext: bytes  # random bytes of the real message's size


def handshake_messages(flights: Sequence[tuple[str, bytes]]) -> list[Message]:
    """The handshake's records as the floor replays them: who sent each, whether it was
    encrypted, and its plaintext size.  HKX/1 seals every handshake message in a record of
    its own; ClientHello and ServerHello (first flight, first record of the second) are clear."""
    messages = []
    for index, (sender, data) in enumerate(flights):
        offset, number = 0, 0
        while offset < len(data):
            length = int.from_bytes(data[offset + 1:offset + 3], "big")
            encrypted = not (index == 0 or (index == 1 and number == 0))
            size = length - 16 if encrypted else length
            messages.append(Message(sender, encrypted, os.urandom(size)))
            offset += 3 + length
            number += 1
    return messages


_SHA384 = hashes.SHA384()
_INFO = bytes(2 + 1 + 17 + 1 + 48)  # an Expand-Label info: length, label, transcript hash
_ZEROS = bytes(48)
_SIGNED_PREFIX = b"\x20" * 64 + b"HKX/1, server IdentityVerify\x00"


def _expand(secret: bytes, length: int = 48) -> bytes:
    return HKDFExpand(_SHA384, length, _INFO).derive(secret)


class Floor:
    """Exactly the primitive operations of one setup's handshake, on cryptography directly."""

    def __init__(self, setup: Setup, creds: Credentials,
                 messages: Sequence[Message]) -> None:
        self.setup = setup
        self.messages = list(messages)
        kem_name = next(k.algorithm for k in setup.suite.kems if k.algorithm != "X25519")
        self.kem_private: Any = {"ML-KEM-768": mlkem.MLKEM768PrivateKey,
                                 "ML-KEM-1024": mlkem.MLKEM1024PrivateKey}[kem_name]
        self.kem_public: Any = {"ML-KEM-768": mlkem.MLKEM768PublicKey,
                                "ML-KEM-1024": mlkem.MLKEM1024PublicKey}[kem_name]
        self.aead: Any = AESGCM if setup.suite.aead == "AES-256-GCM" else ChaCha20Poly1305
        self.qkd = os.urandom(32)
        self.poly_keys = [os.urandom(32) for _ in range(PSK_UNITS)]
        # what the three Poly1305 tags cover: the ClientHello (binder), then the whole
        # transcript before each side's AuthMac (server: CH..SH, client: CH..server Finished)
        clear = [m.plaintext for m in self.messages]
        self.poly_inputs = [clear[0], b"".join(clear[:2]), b"".join(clear[:-2])]
        identities = creds.chain if setup.x509 else creds.raw
        self.signers = {site: mldsa.MLDSA65PrivateKey.from_seed_bytes(identities[site].private_key)
                        for site in (CLIENT, SERVER)}
        self.pinned = {site: mldsa.MLDSA65PublicKey.from_public_bytes(identities[site].public_key)
                       for site in (CLIENT, SERVER)}
        self.leaves = {site: identities[site].certificates[0] if setup.x509 else b""
                       for site in (CLIENT, SERVER)}
        self.root = creds.root

    def _side(self, shared: bytes) -> tuple[list[bytes], list[Any]]:
        """One side's key schedule and running transcript hash; returns the transcript hashes
        after every message and the AEAD objects of its four traffic keys (c_hs, s_hs first)."""
        transcript = hashes.Hash(_SHA384)
        points = []
        for message in self.messages:
            transcript.update(message.plaintext)
            points.append(transcript.copy().finalize())
        prk = HKDF.extract(_SHA384, points[1], shared)  # the combiner: Extract, then Expand
        hs = _expand(prk)
        traffic = [_expand(hs), _expand(hs)]  # c hs traffic, s hs traffic
        master = HKDF.extract(_SHA384, _expand(hs), _ZEROS)
        traffic += [_expand(master), _expand(master)]  # c ap traffic, s ap traffic
        _expand(master)  # exporter master secret
        for secret in traffic[:2]:  # Finished: made for one's own, checked for the peer's
            finished = hmac.HMAC(_expand(secret), _SHA384)
            finished.update(points[-1])
            finished.finalize()
        aeads = []
        for secret in traffic:  # key and IV per traffic secret
            aeads.append(self.aead(_expand(secret, 32)))
            _expand(secret, 12)
        return points, aeads

    def once(self) -> None:
        setup = self.setup
        # key exchange: client key shares, server encapsulations, client decapsulations
        x_client = X25519PrivateKey.generate()
        x_client_public = x_client.public_key().public_bytes_raw()
        k_client = self.kem_private.generate()
        k_client_public = k_client.public_key().public_bytes_raw()
        x_server = X25519PrivateKey.generate()
        x_server_public = x_server.public_key().public_bytes_raw()
        ss_x_server = x_server.exchange(X25519PublicKey.from_public_bytes(x_client_public))
        ss_k_server, ciphertext = self.kem_public.from_public_bytes(k_client_public).encapsulate()
        ss_x_client = x_client.exchange(X25519PublicKey.from_public_bytes(x_server_public))
        ss_k_client = k_client.decapsulate(ciphertext)
        points, aeads = {}, {}
        points[CLIENT], aeads[CLIENT] = self._side(ss_x_client + ss_k_client + self.qkd)
        points[SERVER], aeads[SERVER] = self._side(ss_x_server + ss_k_server + self.qkd)
        # every encrypted handshake record sealed by its sender and opened by its receiver
        nonce = bytes(12)
        for message in self.messages:
            if message.encrypted:
                which = 0 if message.sender == "client" else 1  # c_hs or s_hs
                sender, receiver = ((CLIENT, SERVER) if message.sender == "client"
                                    else (SERVER, CLIENT))
                header = b"\x16" + (len(message.plaintext) + 16).to_bytes(2, "big")
                sealed = aeads[sender][which].encrypt(nonce, message.plaintext, header)
                aeads[receiver][which].decrypt(nonce, sealed, header)
        if setup.auth == "psk":
            # binder over the ClientHello, then one AuthMac per side over the transcript
            for key, data in zip(self.poly_keys, self.poly_inputs, strict=True):
                tag = poly1305.Poly1305.generate_tag(key, data)
                poly1305.Poly1305.verify_tag(key, data, tag)
            return
        pairs = [(SERVER, CLIENT)] + ([(CLIENT, SERVER)] if setup.mutual else [])
        for signer, _verifier in pairs:
            content = _SIGNED_PREFIX + points[signer][2]
            sig = self.signers[signer].sign(content, b"")
            if setup.x509:
                leaf = x509.load_der_x509_certificate(self.leaves[signer])
                leaf.verify_directly_issued_by(self.root)
                public: Any = leaf.public_key()
            else:
                public = self.pinned[signer]
            public.verify(sig, content, b"")

    def rate(self, seconds: float) -> float:
        count = 0
        start = clock()
        while True:
            for _ in range(8):
                self.once()
            count += 8
            elapsed = clock() - start
            if elapsed >= seconds:
                return count / elapsed


# -- records ------------------------------------------------------------------------------------


class Records:
    """Established sessions of one suite, and the same key's raw AEAD.

    One session sends one record per call and another 64 per call, each only ever
    that, so each is measured in its own steady state (a connection's buffers keep
    the size the largest send gave them).
    """

    def __init__(self, setup: Setup, creds: Credentials) -> None:
        self.block = os.urandom(RECORD)
        self.bulk = os.urandom(RECORD * BULK_RECORDS)
        self.header = b"\x17" + (RECORD + 16).to_bytes(2, "big")
        self.sessions = {False: self._session(setup, creds, self.block),
                         True: self._session(setup, creds, self.bulk)}

    def _session(self, setup: Setup, creds: Credentials,
                 data: bytes) -> tuple[ClientConnection, ServerConnection]:
        secrets: dict[str, bytes] = {}

        def log(name: str, secret: bytes) -> None:
            secrets[name] = secret

        client, server = handshake(*setup.configs(creds, linked_sources(setup.units), log))
        key, self.nonce = traffic_key_iv(setup.suite,
                                         secrets["client_application_traffic_secret_0"])
        self.raw: Any = (AESGCM if setup.suite.aead == "AES-256-GCM" else ChaCha20Poly1305)(key)
        client.send(data)
        wire = client.data_to_send()
        # the raw baseline really has the session's key: it opens the session's first record
        first = self.raw.decrypt(self.nonce, wire[3:3 + RECORD + 16], wire[:3])
        if first != data[:RECORD]:
            raise RuntimeError("the raw AEAD does not have the session's key")
        server.receive_data(wire)
        received = b""
        while isinstance(event := server.next_event(), DataReceived):
            received += event.data
        if received != data:
            raise RuntimeError("the records did not arrive intact")
        return client, server

    def record_rate(self, seconds: float, bulk: bool) -> float:
        """MB/s of plaintext through send + receive_data + next_event (until NEED_DATA)."""
        client, server = self.sessions[bulk]
        data = self.bulk if bulk else self.block
        count = 0
        start = clock()
        while True:
            for _ in range(4 if bulk else 64):
                client.send(data)
                server.receive_data(client.data_to_send())
                while server.next_event() is not NEED_DATA:
                    pass
                count += 1
            elapsed = clock() - start
            if elapsed >= seconds:
                return count * len(data) / elapsed / 1e6

    def raw_rate(self, seconds: float) -> float:
        """MB/s of raw encrypt + decrypt of 16 KiB with the same key (one nonce, reused:
        harmless here, and it leaves the nonce computation out of the baseline)."""
        raw, nonce, block, header = self.raw, self.nonce, self.block, self.header
        count = 0
        start = clock()
        while True:
            for _ in range(64):
                raw.decrypt(nonce, raw.encrypt(nonce, block, header), header)
            count += 64
            elapsed = clock() - start
            if elapsed >= seconds:
                return count * RECORD / elapsed / 1e6


# -- the run ------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    return {"python": platform.python_version(), "cryptography": cryptography.__version__,
            "openssl": openssl_backend.openssl_version_text(), "nproc": usable,
            "machine": platform.machine(), "load_average": os.getloadavg()}


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def measure(repeats: int, seconds: float, plain: bool = False) -> dict[str, Any]:
    creds = Credentials.create(plain)
    rows = setups()
    runners = {}
    for setup in rows:
        runner = Handshakes(setup, creds)
        floor = Floor(setup, creds, handshake_messages(runner.probe()))
        floor.once()
        runners[setup] = (runner, floor)
    tls_rows = {"server-only": False, "mutual": True}
    tls_seen = {name: tls_baseline.tls13_handshake_once(group=TLS_GROUP, signature=SCHEME,
                                                        mutual=mutual)
                for name, mutual in tls_rows.items()}
    for name, seen in tls_seen.items():
        if seen["group"] != TLS_GROUP or seen["version"] != "TLSv1.3":
            raise RuntimeError(f"TLS {name} negotiated {seen}")
    records = {code: Records(Setup("records", SUITES[code], "psk"), creds)
               for code in (0x0101, 0x0102)}

    hs: dict[Setup, list[float]] = {s: [] for s in rows}
    fl: dict[Setup, list[float]] = {s: [] for s in rows}
    tls: dict[str, list[float]] = {name: [] for name in tls_rows}
    rec: dict[tuple[int, str], list[float]] = {
        (code, kind): [] for code in records for kind in ("record", "bulk", "raw")}
    for repeat in range(repeats):
        _progress(f"repeat {repeat + 1}/{repeats}")
        for setup in rows:
            runner, floor = runners[setup]
            if repeat % 2 == 0:
                hs[setup].append(runner.rate(seconds))
                fl[setup].append(floor.rate(seconds))
            else:
                fl[setup].append(floor.rate(seconds))
                hs[setup].append(runner.rate(seconds))
        for name, mutual in tls_rows.items():
            tls[name].append(tls_baseline.tls13_handshake_rate(
                group=TLS_GROUP, signature=SCHEME, mutual=mutual, seconds=seconds,
                clock=clock))
        for code, rec_runner in records.items():
            order = ("record", "bulk", "raw") if repeat % 2 == 0 else ("raw", "bulk", "record")
            for kind in order:
                rec[(code, kind)].append(
                    rec_runner.raw_rate(seconds / 2) if kind == "raw"
                    else rec_runner.record_rate(seconds / 2, bulk=kind == "bulk"))
    pool = {setup: runners[setup][0].pool_cost() for setup in rows}

    handshake_rows = []
    for setup in rows:
        hs_rate, floor_rate = _median(hs[setup]), _median(fl[setup])
        tls_rate = _median(tls[setup.tls]) if setup.tls else None
        handshake_rows.append({
            "name": setup.name, "suite": f"{setup.suite.code:#06x}", "auth": setup.auth,
            "mutual": setup.mutual, "x509": setup.x509, "bootstrap": setup.bootstrap,
            "handshakes_per_s": hs_rate, "floor_per_s": floor_rate,
            "hs_over_floor": floor_rate / hs_rate,
            "hs_over_floor_paired": _median([f / h for h, f in zip(hs[setup], fl[setup],
                                                                    strict=True)]),
            "hs_us": 1e6 / hs_rate, "floor_us": 1e6 / floor_rate, "pool_us": 1e6 * pool[setup],
            "tls": setup.tls, "tls_per_s": tls_rate,
            "hkx_over_tls": hs_rate / tls_rate if tls_rate else None,
            "runs": hs[setup], "floor_runs": fl[setup],
        })
    record_rows = []
    for code in records:
        raw = _median(rec[(code, "raw")])
        record_rows.append({
            "suite": f"{code:#06x}", "aead": SUITES[code].aead,
            "record_mb_s": _median(rec[(code, "record")]),
            "bulk_mb_s": _median(rec[(code, "bulk")]), "raw_mb_s": raw,
            "record_over_raw": _median(rec[(code, "record")]) / raw,
            "bulk_over_raw": _median(rec[(code, "bulk")]) / raw,
            "runs": {kind: rec[(code, kind)] for kind in ("record", "bulk", "raw")},
        })
    return {"handshakes": handshake_rows, "records": record_rows,
            "tls": {name: {"per_s": _median(runs), "runs": runs, **tls_seen[name]}
                    for name, runs in tls.items()}}


def goals(results: dict[str, Any]) -> list[tuple[bool, str]]:
    rows = results["handshakes"]
    out: list[tuple[bool, str]] = []
    boot = [r for r in rows if r["bootstrap"]]
    for r in boot:
        if r["x509"]:
            out.append((r["hkx_over_tls"] >= GOAL_TLS,
                        f"{r['name']}: {r['hkx_over_tls']:.2f}x the TLS 1.3 {r['tls']} rate "
                        f"(goal >= {GOAL_TLS:.1f}x)"))
    for r in rows:
        out.append((r["hs_over_floor"] <= GOAL_FLOOR,
                    f"{r['name']} {r['suite']}: {r['hs_over_floor']:.2f}x its primitive floor "
                    f"(paired {r['hs_over_floor_paired']:.2f}; goal <= {GOAL_FLOOR:.2f}x)"))
    psk = next(r for r in rows if r["auth"] == "psk" and r["suite"] == "0x0101")
    for r in boot:
        ratio = psk["handshakes_per_s"] / r["handshakes_per_s"]
        out.append((ratio >= GOAL_PSK,
                    f"psk: {ratio:.2f}x the rate of {r['name']} (goal >= {GOAL_PSK:.0f}x)"))
    for r in results["records"]:
        if r["aead"] != "AES-256-GCM":
            continue
        for kind in ("record", "bulk"):
            ratio = r[f"{kind}_over_raw"]
            what = "one 16 KiB record per call" if kind == "record" else (
                f"{BULK_RECORDS} records per call")
            out.append((ratio >= GOAL_RECORD,
                        f"records {r['suite']}, {what}: {ratio:.2f}x raw AES-256-GCM "
                        f"(goal >= {GOAL_RECORD:.1f}x)"))
    return out


def report(results: dict[str, Any], env: dict[str, Any], repeats: int, seconds: float) -> None:
    load = ", ".join(f"{x:.2f}" for x in env["load_average"])
    print(f"Python {env['python']}, cryptography {env['cryptography']}, {env['openssl']}, "
          f"nproc {env['nproc']}, {env['machine']}; load average {load}")
    keys = ("decoded once by SigningIdentity (prepare_private_key)" if results["prepared_keys"]
            else "plain bytes, decoded for every signature (--plain-keys)")
    print(f"median of {repeats} repeats of {seconds:g} s batches ({env['clock']} time); "
          f"signing keys: {keys}\n")
    print("HKX/1 full handshakes, client + server in one thread over memory")
    print(f"{'configuration':<32} {'suite':<6} {'hs/s':>7} {'floor/s':>8} {'hs/floor':>8} "
          f"{'paired':>6} {'hs us':>7} {'floor us':>8} {'pool us':>7} {'TLS/s':>6} "
          f"{'HKX/TLS':>7}")
    for r in results["handshakes"]:
        tls = (f"{r['tls_per_s']:6.0f} {r['hkx_over_tls']:7.2f}" if r["tls_per_s"]
               else f"{'':>6} {'':>7}")
        print(f"{r['name']:<32} {r['suite']:<6} {r['handshakes_per_s']:7.0f} "
              f"{r['floor_per_s']:8.0f} {r['hs_over_floor']:8.2f} "
              f"{r['hs_over_floor_paired']:6.2f} {r['hs_us']:7.0f} {r['floor_us']:8.0f} "
              f"{r['pool_us']:7.0f} {tls}")
    print("\npyOpenSSL TLS 1.3 full handshakes, X25519MLKEM768 + ML-DSA-65 CA + leaf")
    for name, t in results["tls"].items():
        print(f"  {name:<12} {t['per_s']:6.0f}/s  ({t['version']}, {t['group']}, {t['cipher']})")
    print("\nRecords of 16 KiB, MB/s of plaintext (send + receive_data + next_event)")
    print(f"{'suite':<7} {'AEAD':<18} {'1/call':>7} {f'{BULK_RECORDS}/call':>8} "
          f"{'raw':>7} {'1/call:raw':>10} {f'{BULK_RECORDS}/call:raw':>11}")
    for r in results["records"]:
        print(f"{r['suite']:<7} {r['aead']:<18} {r['record_mb_s']:7.0f} {r['bulk_mb_s']:8.0f} "
              f"{r['raw_mb_s']:7.0f} {r['record_over_raw']:10.2f} {r['bulk_over_raw']:11.2f}")
    print("\nGoals")
    for met, text in goals(results):
        print(f"  [{'met' if met else 'MISSED'}] {text}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true",
                        help="3 repeats of 0.12 s batches instead of 7 of 0.4 s")
    parser.add_argument("--repeats", type=int, help="repeats (default 7, quick 3)")
    parser.add_argument("--seconds", type=float, help="seconds per batch (default 0.4)")
    parser.add_argument("--json", action="store_true", help="results as JSON on stdout")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="time rates by wall time (default) or by this process's CPU "
                             "time, which other jobs on a shared machine do not inflate")
    parser.add_argument("--plain-keys", action="store_true",
                        help="sites sign with plain key bytes, decoded for every signature, "
                             "instead of the key SigningIdentity decodes once")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    seconds = args.seconds or (0.12 if args.quick else 0.4)
    if repeats < 1 or seconds <= 0:
        raise SystemExit("--repeats and --seconds must be positive")
    global clock
    clock = CLOCKS[args.clock]
    env = environment()
    env["clock"] = args.clock
    results = measure(repeats, seconds, args.plain_keys)
    results["prepared_keys"] = not args.plain_keys
    env["load_average_after"] = os.getloadavg()
    if args.json:
        results["goals"] = [{"met": met, "goal": text} for met, text in goals(results)]
        json.dump({"environment": env, "repeats": repeats, "seconds": seconds, **results},
                  sys.stdout, indent=1)
        print()
    else:
        report(results, env, repeats, seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
