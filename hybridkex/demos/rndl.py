"""Record now, decrypt later: three recorded HKX/1 sessions and a future adversary.

``hybridkex rndl-demo`` runs this module.  It runs three real HKX/1 sessions over
loopback TCP, through a relay that keeps a copy of every byte each way.  Each session
carries the same secret message:

* ``classical``: suite 0x0001 (X25519 only), Ed25519 signatures, policy
  allow-classical;
* ``pq-hybrid``: X25519 + ML-KEM-768 (suite 0x0101), Ed25519 signatures, policy
  at-least-pq;
* ``pq+qkd``: X25519 + ML-KEM-768 + a QKD key, psk authentication (one-time MACs
  keyed from the pool), policy qkd-and-pq.  A short round of the **simulated** QKD
  link (:mod:`hybridkex.qkd.link`) distils the units, and
  :func:`~hybridkex.keydelivery.linked_pools` puts them in both sites' pools.  The
  public discussion of that round is recorded too.

Then a future adversary attacks the recordings.  Its only inputs are the recording
and what its break gives it (:func:`attack`).  The breaks are **simulated by
disclosure**.  :class:`CapturingRandomness` sits between the sites and the operating
system's randomness and keeps every KEM key pair the sites generate.
:func:`disclose` then hands the adversary the private keys its break would recover:

* ``quantum-computer``: every X25519 private key.  A quantum computer would recover
  them from the public keys in the recording; here they are looked up by those
  public keys.
* ``quantum-computer+lattice-break``: the above, plus every ML-KEM decapsulation key.

Everything after the disclosure is real.  The adversary parses the hellos from the
recording, recomputes the shared secrets, runs the HKX/1 key schedule, decrypts the
server's flight and checks both Finished messages, derives the application traffic
secrets and decrypts the application data.  Where a combiner input is missing, it
says which one, tries a random guess for it, and reports the AEAD tag failure that
guess gets.  A session *falls* when the recovered plaintext equals the secret
message.  The adversary does not know the message; only the caller compares.
"""

from __future__ import annotations

import hmac
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from hybridkex.errors import HybridKexError, InvalidParameter, ProtocolError
from hybridkex.keydelivery.keys import UNIT_BITS, DeliveredKey, KeyRef, StoredKey, key_id_text
from hybridkex.keydelivery.pools import LinkedPools, linked_pools
from hybridkex.keydelivery.source import KeySource, StoreKeySource
from hybridkex.keydelivery.store import MemoryKeyStore
from hybridkex.primitives import digest, kem
from hybridkex.protocol import Config, SecurityPolicy, SigningIdentity, SystemRandomness, TrustStore
from hybridkex.protocol import keyschedule as ks
from hybridkex.protocol.randomness import Randomness
from hybridkex.protocol.record import Record, RecordBuffer, RecordProtection
from hybridkex.protocol.suites import SUITES, AlertDescription, ContentType, HandshakeType, Suite
from hybridkex.protocol.wire import ClientHello, KeyUpdate, ServerHello
from hybridkex.qkd.distillation.transport import ClassicalChannel
from hybridkex.qkd.labels import SIMULATION_LABEL
from hybridkex.qkd.link import LinkReport, QKDLink, SiteIdentity
from hybridkex.qkd.parameters import finite_key_parameters
from hybridkex.transport import Context

__all__ = [
    "ADVERSARIES",
    "CONTROL",
    "EXPECTED_MATRIX",
    "LABEL",
    "SCENARIOS",
    "AttackResult",
    "CapturingKeySource",
    "CapturingRandomness",
    "DemoResult",
    "Disclosure",
    "Recording",
    "attack",
    "disclose",
    "run_demo",
]

LABEL = ("breaks simulated by disclosing ephemeral secrets; decryption attempts are real; "
         "QKD link simulated")
SCENARIOS = ("classical", "pq-hybrid", "pq+qkd")
ADVERSARIES = ("quantum-computer", "quantum-computer+lattice-break")
# Not part of the matrix: the same adversary given the QKD key too, as a compromised key
# store that kept delivered keys would.  It shows that the QKD key is the only thing
# the pq+qkd attack lacks.
CONTROL = "control:every-input-disclosed"
EXPECTED_MATRIX: dict[str, dict[str, bool]] = {
    "classical": {"quantum-computer": True, "quantum-computer+lattice-break": True},
    "pq-hybrid": {"quantum-computer": False, "quantum-computer+lattice-break": True},
    "pq+qkd": {"quantum-computer": False, "quantum-computer+lattice-break": False},
}
CLIENT, SERVER = "site-a", "site-b"
LINK_DISTANCE_KM = 25.0
# One round of 4e8 pulses at 25 km distils about 250 keys in under a second.  The pq+qkd
# session takes 4 (psk mode: 3 authentication units and 1 QKD key).
LINK_PULSES = 400_000_000
LINK_ROUNDS_MAX = 3
PSK_UNITS = 4
SESSION_TIMEOUT_S = 10.0
_MLKEM_KEMS = ("ML-KEM-768", "ML-KEM-1024")


# -- the disclosure: what the sites' randomness handed out -------------------------------


@dataclass(frozen=True, repr=False)
class KeyPairRecord:
    """One KEM key pair a site generated: a client key share or a server's X25519 ephemeral."""

    kem: str
    public: bytes
    private: bytes


@dataclass(frozen=True, repr=False)
class EncapsulationRecord:
    """One encapsulation a server made: the shared secret and the ciphertext it sent."""

    kem: str
    public: bytes
    shared_secret: bytes
    ciphertext: bytes


class CapturingRandomness:
    """A :class:`~hybridkex.protocol.randomness.Randomness` that keeps what it produced.

    Every draw is delegated to ``delegate`` (the operating system's CSPRNG by default).
    The wrapper only keeps a copy of each KEM key pair and each encapsulation result.
    This copy is the *disclosure* that simulates a break.

    The X25519 "encapsulation" is performed here from its definition
    (docs/protocol.md section 3.1).  An ephemeral key pair is drawn from the delegate,
    and the secret is X25519(ephemeral private key, client share).  That way the
    server's ephemeral private key is kept as well, so "every X25519 private key" is
    literally every one.  The result is what ``kem("X25519").encapsulate`` computes.
    The connection treats any failure as an invalid key share, as it does for the
    library's own encapsulation.  ML-KEM encapsulation is delegated unchanged.
    """

    def __init__(self, delegate: Randomness | None = None) -> None:
        self._delegate: Randomness = delegate if delegate is not None else SystemRandomness()
        self._lock = threading.Lock()
        self._keypairs: list[KeyPairRecord] = []
        self._encapsulations: list[EncapsulationRecord] = []

    def random_bytes(self, n: int) -> bytes:
        return self._delegate.random_bytes(n)

    def kem_keypair(self, kem_name: str) -> tuple[bytes, bytes]:
        public, private = self._delegate.kem_keypair(kem_name)
        with self._lock:
            self._keypairs.append(KeyPairRecord(kem_name, bytes(public), bytes(private)))
        return public, private

    def encapsulate(self, kem_name: str, public: bytes) -> tuple[bytes, bytes]:
        if kem_name == "X25519":
            ephemeral_public, ephemeral_private = self.kem_keypair("X25519")
            secret = kem("X25519").decapsulate(public, ephemeral_private)
            ciphertext = ephemeral_public
        else:
            secret, ciphertext = self._delegate.encapsulate(kem_name, public)
        with self._lock:
            self._encapsulations.append(
                EncapsulationRecord(kem_name, bytes(public), bytes(secret), bytes(ciphertext)))
        return secret, ciphertext

    def sign(self, scheme: str, private: bytes, message: bytes) -> bytes:
        return self._delegate.sign(scheme, private, message)

    @property
    def keypairs(self) -> tuple[KeyPairRecord, ...]:
        with self._lock:
            return tuple(self._keypairs)

    @property
    def encapsulations(self) -> tuple[EncapsulationRecord, ...]:
        with self._lock:
            return tuple(self._encapsulations)

    def __repr__(self) -> str:
        return (f"<CapturingRandomness {len(self._keypairs)} key pairs, "
                f"{len(self._encapsulations)} encapsulations>")


@dataclass(frozen=True, repr=False)
class Disclosure:
    """What a break gives the adversary: private keys, indexed by their public keys.

    A quantum computer turns a public key it sees in a recording into the private key.
    A lookup by that public key simulates exactly this, and nothing more.  Shared
    secrets, traffic secrets, QKD keys and the message are never in here.
    """

    x25519_private_keys: Mapping[bytes, bytes] = field(default_factory=dict)
    mlkem_decapsulation_keys: Mapping[bytes, bytes] = field(default_factory=dict)
    # Only the control disclosure has these (QKD key ID -> key): no break of X25519 or
    # ML-KEM yields them; a compromised QKD device or key store would.
    qkd_keys: Mapping[bytes, bytes] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"Disclosure({len(self.x25519_private_keys)} X25519 private keys, "
                f"{len(self.mlkem_decapsulation_keys)} ML-KEM decapsulation keys, "
                f"{len(self.qkd_keys)} QKD keys)")


class CapturingKeySource:
    """A :class:`~hybridkex.keydelivery.source.KeySource` that keeps every key it hands out.

    It is used only for the control, which plays a compromised key store.  The matrix's
    adversaries never see these keys.
    """

    def __init__(self, delegate: KeySource) -> None:
        self._delegate = delegate
        self._lock = threading.Lock()
        self._keys: dict[bytes, bytes] = {}

    def take(self, peer: str, count: int = 1, size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        keys = self._delegate.take(peer, count, size_bits)
        with self._lock:
            for key in keys:
                if not key.extension:  # HKX/1 takes single 256-bit units
                    self._keys[uuid.UUID(key.key_id).bytes] = bytes(key.key)
        return keys

    def fetch(self, peer: str, key_ids: Sequence[KeyRef],
              size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        return self._delegate.fetch(peer, key_ids, size_bits)

    @property
    def keys(self) -> dict[bytes, bytes]:
        with self._lock:
            return dict(self._keys)

    def __repr__(self) -> str:
        return f"<CapturingKeySource {len(self._keys)} keys, over {self._delegate!r}>"


def disclose(adversary: str, capture: CapturingRandomness,
             qkd_capture: CapturingKeySource | None = None) -> Disclosure:
    """The private keys the break of ``adversary`` recovers from the captured key pairs.

    For :data:`CONTROL`, the QKD keys ``qkd_capture`` kept are disclosed as well.
    """
    if adversary not in (*ADVERSARIES, CONTROL):
        raise InvalidParameter(f"unknown adversary {adversary!r}; known: "
                               f"{', '.join((*ADVERSARIES, CONTROL))}")
    x25519 = {k.public: k.private for k in capture.keypairs if k.kem == "X25519"}
    mlkem: dict[bytes, bytes] = {}
    if adversary != "quantum-computer":
        mlkem = {k.public: k.private for k in capture.keypairs if k.kem in _MLKEM_KEMS}
    qkd: dict[bytes, bytes] = {}
    if adversary == CONTROL:
        if qkd_capture is None:
            raise InvalidParameter("the control needs the captured QKD keys")
        qkd = qkd_capture.keys
    return Disclosure(x25519, mlkem, qkd)


# -- the recording ----------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Recording:
    """Every byte of one TCP connection, each way, as a passive wiretap saw it.

    ``qkd_public_discussion`` holds the frames of the QKD link's classical channel
    that produced the pool keys, if the wiretap saw that channel too.  That channel is
    authenticated but not encrypted.
    """

    client_to_server: bytes
    server_to_client: bytes
    qkd_public_discussion: tuple[bytes, ...] = ()

    def __repr__(self) -> str:
        return (f"Recording({len(self.client_to_server)} + {len(self.server_to_client)} bytes, "
                f"{len(self.qkd_public_discussion)} QKD discussion frames)")


# -- the adversary --------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class AttackResult:
    """What the adversary got out of one recording.

    ``decrypted`` means that every record of the recording passed its AEAD tag under keys
    the adversary derived, and that both Finished messages verified.  ``failure`` says
    where and why it stopped otherwise.  ``client_data`` and ``server_data`` hold the
    plaintext it recovered from each direction (up to where it stopped).
    """

    decrypted: bool
    client_data: bytes
    server_data: bytes
    stage: str
    failure: str | None
    steps: tuple[str, ...]

    def __repr__(self) -> str:
        return (f"AttackResult(decrypted={self.decrypted}, stage={self.stage!r}, "
                f"recovered={len(self.client_data)}+{len(self.server_data)} bytes)")


class _Stopped(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


def _records(stream: bytes, direction: str) -> list[Record]:
    buffer = RecordBuffer()
    buffer.feed(stream)
    records: list[Record] = []
    try:
        while (record := buffer.next_record()) is not None:
            records.append(record)
    except HybridKexError as exc:
        raise _Stopped("framing", f"{direction}: {exc}") from None
    return records


class _Reassembler:
    """Handshake messages (type, body, framed bytes) out of handshake-record plaintexts."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes, bytes]]:
        self._buffer += data
        out = []
        while len(self._buffer) >= 4:
            length = int.from_bytes(self._buffer[1:4], "big")
            if len(self._buffer) < 4 + length:
                break
            framed, self._buffer = self._buffer[:4 + length], self._buffer[4 + length:]
            out.append((framed[0], framed[4:], framed))
        return out


def _hello(records: list[Record], direction: str, msg_type: int) -> tuple[bytes, bytes]:
    """(body, framed) of the first handshake message, which travels in a plaintext record."""
    if not records or records[0].content_type != ContentType.HANDSHAKE:
        raise _Stopped("hello", f"{direction}: the recording starts with no plaintext hello")
    messages = _Reassembler().feed(records[0].payload)
    if not messages or messages[0][0] != msg_type:
        raise _Stopped("hello", f"{direction}: the first record holds no "
                       f"{HandshakeType(msg_type).name}")
    return messages[0][1], messages[0][2]


def _shared_secrets(suite: Suite, hello: ClientHello, server_hello: ServerHello,
                    disclosure: Disclosure,
                    steps: list[str]) -> tuple[list[tuple[str, bytes | None]], list[str]]:
    """Each suite KEM's shared secret, recomputed from the recording and the disclosure.

    A secret the adversary cannot compute is None, and its reason goes in the second list.
    """
    client_shares = {s.kem: s.data for s in hello.key_shares}
    server_shares = {s.kem: s.data for s in server_hello.key_shares}
    secrets: list[tuple[str, bytes | None]] = []
    missing: list[str] = []
    for kem_id in suite.kems:
        name = kem_id.algorithm
        client_share, server_share = client_shares.get(kem_id), server_shares.get(kem_id)
        if client_share is None or server_share is None:
            raise _Stopped("key shares", f"the hellos carry no {name} share pair")
        algorithm = kem(name)
        secret: bytes | None = None
        try:
            if name == "X25519":
                # Diffie-Hellman: either side's private key and the other's public share.
                if (private := disclosure.x25519_private_keys.get(client_share)) is not None:
                    secret = algorithm.decapsulate(server_share, private)
                    steps.append("X25519: private key of the client's recorded share "
                                 "(quantum computer); shared secret = X25519(it, server share)")
                elif (private := disclosure.x25519_private_keys.get(server_share)) is not None:
                    secret = algorithm.decapsulate(client_share, private)
                    steps.append("X25519: private key of the server's recorded share "
                                 "(quantum computer); shared secret = X25519(it, client share)")
            elif (private := disclosure.mlkem_decapsulation_keys.get(client_share)) is not None:
                secret = algorithm.decapsulate(server_share, private)
                steps.append(f"{name}: decapsulation key of the client's recorded encapsulation "
                             f"key (lattice break); decapsulated the recorded "
                             f"{len(server_share)}-byte ciphertext")
        except HybridKexError as exc:
            raise _Stopped("shared secret", f"{name}: {exc}") from None
        if secret is None:
            if name == "X25519":
                missing.append("X25519 (no private key for either recorded share)")
            else:
                missing.append(f"{name} (no decapsulation key for the recorded encapsulation "
                               "key: this adversary has no lattice break)")
        secrets.append((name, secret))
    return secrets, missing


def _alert_name(plaintext: bytes) -> str:
    """The description of an alert record's plaintext (level, description)."""
    if len(plaintext) != 2:
        return f"a malformed alert of {len(plaintext)} bytes"
    try:
        return AlertDescription(plaintext[1]).name.lower()
    except ValueError:
        return f"alert {plaintext[1]}"


def _open(protection: RecordProtection, record: Record, stage: str, what: str) -> bytes:
    try:
        return protection.open(record)
    except ProtocolError as exc:
        raise _Stopped(stage, f"{what}: {type(exc).__name__} "
                       f"({_alert_name(bytes((2, exc.alert)))}): "
                       f"{exc}") from None


def _handshake_flight(records: list[Record], suite: Suite, secret: bytes, transcript: bytes,
                      who: str) -> tuple[bytes, int]:
    """Decrypt ``who``'s protected handshake flight up to its Finished and verify that.

    Returns the transcript extended by the flight, and the index of the first record
    after it (the first under the application traffic secret).
    """
    protection = RecordProtection(suite, secret)
    reassembler = _Reassembler()
    for index, record in enumerate(records):
        if index == 0:
            continue  # the hello, in plaintext
        stage = f"{who} handshake flight"
        plaintext = _open(protection, record, stage, f"{who}'s record {index}")
        if record.content_type == ContentType.ALERT:
            raise _Stopped(stage, f"{who} sent an alert during the handshake: "
                           f"{_alert_name(plaintext)}")
        if record.content_type != ContentType.HANDSHAKE:
            raise _Stopped(stage, f"{who} sent content type {record.content_type} in its flight")
        for msg_type, body, framed in reassembler.feed(plaintext):
            if msg_type == HandshakeType.FINISHED:
                expected = ks.finished_verify_data(suite, secret, digest(suite.hash, transcript))
                if not hmac.compare_digest(expected, body):
                    raise _Stopped(stage, f"the {who} Finished does not verify under the "
                                   "derived keys")
                return transcript + framed, index + 1
            transcript += framed
    raise _Stopped(f"{who} handshake flight", f"the recording ends before the {who} Finished")


def _application_data(records: list[Record], start: int, suite: Suite, secret: bytes,
                      who: str, data: bytearray) -> str:
    """Decrypt the application data in ``who``'s records from ``start`` on into ``data``
    (which keeps what was decrypted if this stops); returns how the stream ended."""
    protection = RecordProtection(suite, secret)
    reassembler = _Reassembler()
    for index in range(start, len(records)):
        record = records[index]
        stage = f"{who} application data"
        plaintext = _open(protection, record, stage, f"{who}'s record {index}")
        if record.content_type == ContentType.APPLICATION_DATA:
            data += plaintext
        elif record.content_type == ContentType.ALERT:
            return _alert_name(plaintext)
        else:
            for msg_type, body, _ in reassembler.feed(plaintext):
                if msg_type == HandshakeType.KEY_UPDATE:
                    KeyUpdate.decode(body)
                    secret = ks.next_traffic_secret(suite, secret)  # public derivation
                    protection = RecordProtection(suite, secret)
                elif msg_type in (HandshakeType.QKD_REKEY, HandshakeType.QKD_REKEY_ACK):
                    raise _Stopped(stage, f"{who} mixed a fresh QKD key into its traffic secret "
                                   f"(record {index}); the recording never contained it")
    return "no close_notify in the recording"


def attack(recording: Recording, disclosure: Disclosure) -> AttackResult:
    """Decrypt a recorded HKX/1 session with nothing but the recording and a disclosure.

    The adversary knows the protocol (docs/protocol.md, and the library's public wire
    decoders, key schedule and record layer).  It does not know the message, the
    session's traffic secrets or any QKD key.  It stops at the first thing it cannot
    do and says why.
    """
    steps: list[str] = []
    client_data, server_data = bytearray(), bytearray()
    try:
        c_records = _records(recording.client_to_server, "client to server")
        s_records = _records(recording.server_to_client, "server to client")
        steps.append(f"split the recording into records: {len(c_records)} client to server, "
                     f"{len(s_records)} server to client")
        ch_body, ch = _hello(c_records, "client to server", HandshakeType.CLIENT_HELLO)
        sh_body, sh = _hello(s_records, "server to client", HandshakeType.SERVER_HELLO)
        try:
            hello, server_hello = ClientHello.decode(ch_body), ServerHello.decode(sh_body)
        except HybridKexError as exc:
            raise _Stopped("hello", str(exc)) from None
        suite = SUITES.get(server_hello.suite)
        if suite is None:
            raise _Stopped("hello", f"unknown suite {server_hello.suite:#06x}")
        qkd_ids = [key_id_text(i) for i in hello.qkd_key_ids]
        steps.append(
            f"parsed the hellos: {hello.client_site} -> {hello.server_site}, suite {suite.name}, "
            f"{hello.auth_mode.name.lower()} authentication, QKD key IDs "
            f"{qkd_ids or 'none'}, qkd_accepted={int(server_hello.qkd_accepted)}")
        if recording.qkd_public_discussion and hello.qkd_key_ids:
            for key_id in hello.qkd_key_ids:
                frames = [n for n, f in enumerate(recording.qkd_public_discussion) if key_id in f]
                steps.append(
                    f"QKD key ID {key_id_text(key_id)} appears in frame(s) "
                    f"{frames or 'none'} of the "
                    f"{len(recording.qkd_public_discussion)} recorded frames of the QKD link's "
                    "public discussion.  That links the session to the round that made the "
                    "key.  Privacy amplification sized the key to stay secret given all of "
                    "that discussion, and HKX/1 uses only the ID")

        secrets, missing = _shared_secrets(suite, hello, server_hello, disclosure, steps)
        qkd_key: bytes | None = None
        qkd_missing = False
        known = [disclosure.qkd_keys.get(i) for i in hello.qkd_key_ids]
        if server_hello.qkd_accepted and all(k is not None for k in known):
            qkd_key = b"".join(k for k in known if k is not None)
            steps.append("QKD: the key for the recorded key ID(s) was disclosed (the control "
                         "only: a compromised QKD device or key store)")
        elif server_hello.qkd_accepted:
            qkd_missing = True
            missing.append(f"QKD (the key is named by ID on the wire, {', '.join(qkd_ids)}; "
                           "its bits were never sent over any classical channel, and no "
                           "break of X25519 or ML-KEM yields them)")
        hello_hash = digest(suite.hash, ch + sh)
        if missing:
            _guess(suite, secrets, qkd_key, qkd_missing, len(hello.qkd_key_ids),
                   hello_hash, s_records, missing, steps)
        shared = [(name, s) for name, s in secrets if s is not None]
        hs, c_hs, s_hs = ks.handshake_secrets(suite, shared, qkd_key, hello_hash)
        parts = [name for name, _ in shared] + (["QKD"] if qkd_key is not None else [])
        steps.append(f"HS = Combine({', '.join(parts)}"
                     f"{', classical-only' if len(parts) == 1 else ''}; context = H(CH || SH)); "
                     "derived the handshake traffic secrets")

        transcript, s_next = _handshake_flight(s_records, suite, s_hs, ch + sh, "server")
        steps.append(f"decrypted the server's flight ({s_next - 1} records); the server "
                     "Finished verifies under the derived keys")
        c_ap, s_ap, _ = ks.application_secrets(suite, ks.master_secret(suite, hs),
                                               digest(suite.hash, transcript))
        steps.append("derived the application traffic secrets from H(CH .. server Finished)")
        _, c_next = _handshake_flight(c_records, suite, c_hs, transcript, "client")
        steps.append(f"decrypted the client's flight ({c_next - 1} records); the client "
                     "Finished verifies")
        c_end = _application_data(c_records, c_next, suite, c_ap, "client", client_data)
        s_end = _application_data(s_records, s_next, suite, s_ap, "server", server_data)
        steps.append(f"decrypted the application data: {len(client_data)} bytes client to "
                     f"server (ended by {c_end}), {len(server_data)} bytes server to client "
                     f"(ended by {s_end})")
        return AttackResult(True, bytes(client_data), bytes(server_data), "done", None,
                            tuple(steps))
    except _Stopped as stop:
        steps.append(f"stopped at {stop.stage}: {stop.reason}")
        return AttackResult(False, bytes(client_data), bytes(server_data), stop.stage,
                            stop.reason, tuple(steps))
    except HybridKexError as exc:  # a message in a decrypted record that does not decode
        steps.append(f"stopped: {type(exc).__name__}: {exc}")
        return AttackResult(False, bytes(client_data), bytes(server_data), "decoding",
                            f"{type(exc).__name__}: {exc}", tuple(steps))


def _guess(suite: Suite, secrets: list[tuple[str, bytes | None]], qkd_key: bytes | None,
           qkd_missing: bool, qkd_keys: int, hello_hash: bytes, s_records: list[Record],
           missing: list[str], steps: list[str]) -> None:
    """The combiner needs every part.  For each missing part, try one uniformly random guess
    against the server's first protected record, then stop with the reason."""
    guessed = [(name, s if s is not None else os.urandom(32)) for name, s in secrets]
    guess_qkd = os.urandom(32 * qkd_keys) if qkd_missing else qkd_key
    _, _, s_hs = ks.handshake_secrets(suite, guessed, guess_qkd, hello_hash)
    reason = "cannot form the combiner input: missing " + "; ".join(missing)
    if len(s_records) < 2:
        raise _Stopped("combiner input", reason)
    try:
        RecordProtection(suite, s_hs).open(s_records[1])
    except HybridKexError as exc:
        steps.append("tried a uniformly random guess for the missing part(s) anyway: the "
                     f"server's first protected record failed its AEAD tag "
                     f"({type(exc).__name__}); each guess of a 256-bit secret succeeds with "
                     "probability 2^-256")
        raise _Stopped("combiner input", reason) from None
    # Not reachable in practice (probability 2^-256); say so if it ever is.
    raise _Stopped("combiner input", reason + " (a random guess opened a record)")


# -- the sessions ---------------------------------------------------------------------------


def _pump(source: socket.socket, sink: socket.socket, tape: bytearray) -> None:
    try:
        while data := source.recv(1 << 16):
            tape += data
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


class _RecordingRelay:
    """A TCP relay on 127.0.0.1 that forwards one connection and keeps every byte of it."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.upstream = upstream
        self.client_to_server = bytearray()
        self.server_to_client = bytearray()

    def serve_one(self) -> None:
        downstream, _ = self.listener.accept()
        with downstream, socket.create_connection(self.upstream, SESSION_TIMEOUT_S) as upstream:
            downstream.settimeout(SESSION_TIMEOUT_S)
            back = threading.Thread(target=_pump, name="rndl-relay-back", daemon=True,
                                    args=(upstream, downstream, self.server_to_client))
            back.start()
            _pump(downstream, upstream, self.client_to_server)
            back.join(SESSION_TIMEOUT_S)

    def close(self) -> None:
        self.listener.close()


def _read_to_close(sock: Any) -> bytes:
    data = bytearray()
    while chunk := sock.recv(1 << 16):
        data += chunk
    return bytes(data)


@dataclass(frozen=True, repr=False)
class SessionRun:
    """One recorded session, as the two sites saw it, and its recording."""

    scenario: str
    suite: str
    kems: tuple[str, ...]
    auth_mode: str
    security_policy: str
    qkd_key_ids: tuple[str, ...]
    fallback: str | None
    receipt_ok: bool
    recording: Recording
    elapsed_s: float


def record_session(scenario: str, client: Config, server: Config, message: bytes,
                   qkd_discussion: tuple[bytes, ...] = ()) -> SessionRun:
    """Run one HKX/1 session through a recording relay on loopback TCP.

    The client sends ``message`` and then close_notify.  The server reads to close_notify
    and answers with a receipt, the SHA-256 of what it read.
    """
    started = time.perf_counter()
    errors: list[BaseException] = []
    receipt: list[bytes] = []

    def guarded(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # reported by the caller
                errors.append(exc)
        return run

    with socket.create_server(("127.0.0.1", 0)) as listener:
        relay = _RecordingRelay(listener.getsockname()[:2])

        def serve() -> None:
            raw, _ = listener.accept()
            raw.settimeout(SESSION_TIMEOUT_S)
            with Context.from_config(server, SESSION_TIMEOUT_S).wrap_socket(
                    raw, server_side=True) as s:
                received = _read_to_close(s)
                s.sendall(b"receipt sha256=" + digest("SHA-256", received).hex().encode())

        threads = [threading.Thread(target=guarded(serve), name="rndl-server", daemon=True),
                   threading.Thread(target=guarded(relay.serve_one), name="rndl-relay",
                                    daemon=True)]
        for thread in threads:
            thread.start()
        try:
            raw = socket.create_connection(relay.address, SESSION_TIMEOUT_S)
            with Context.from_config(client, SESSION_TIMEOUT_S).wrap_socket(raw, peer=SERVER) as s:
                info = s.session_info()
                s.sendall(message)
                s.shutdown(socket.SHUT_WR)  # close_notify, then the TCP half-close
                receipt.append(_read_to_close(s))
        finally:
            for thread in threads:
                thread.join(SESSION_TIMEOUT_S)
            relay.close()
    if errors:
        raise HybridKexError(f"the {scenario} session failed: {errors[0]!r}") from errors[0]
    expected = b"receipt sha256=" + digest("SHA-256", message).hex().encode()
    recording = Recording(bytes(relay.client_to_server), bytes(relay.server_to_client),
                          qkd_discussion)
    return SessionRun(scenario, info.suite, info.kems, info.auth_mode, info.security_policy,
                      info.qkd_key_ids, info.fallback, receipt == [expected], recording,
                      time.perf_counter() - started)


class _TappedChannel:
    """One end of the QKD link's classical channel, with a wiretap on what it sends."""

    def __init__(self, end: ClassicalChannel, tape: list[bytes], lock: threading.Lock) -> None:
        self._end, self._tape, self._lock = end, tape, lock

    def send(self, frame: bytes) -> None:
        with self._lock:
            self._tape.append(bytes(frame))
        self._end.send(frame)

    def recv(self) -> bytes:
        return self._end.recv()

    def close(self) -> None:
        self._end.close()


class _DistilledUnits(MemoryKeyStore):
    """Site A's end of the link, keeping every unit the link deposits there, in order, so
    that :func:`~hybridkex.keydelivery.linked_pools` can put them in both sites' pools."""

    def __init__(self, site_id: str) -> None:
        super().__init__(site_id)
        self.units: list[StoredKey] = []

    def add(self, peer: str, keys: Iterable[StoredKey], *, batch_id: str | None = None) -> int:
        batch = list(keys)
        added = super().add(peer, batch, batch_id=batch_id)
        if added:
            self.units += batch
        return added


def fill_pools() -> tuple[LinkedPools, list[LinkReport], tuple[bytes, ...]]:
    """Both sites' in-memory pools, holding the units the SIMULATED QKD link distilled,
    and its public discussion as a wiretap on the classical channel recorded it."""
    distilled = _DistilledUnits(CLIENT)
    link = QKDLink(CLIENT, SERVER, finite_key_parameters(distance_km=LINK_DISTANCE_KM),
                   store_a=distilled,
                   identity_a=SiteIdentity.generate("Ed25519"),
                   identity_b=SiteIdentity.generate("Ed25519"))
    tape: list[bytes] = []
    lock = threading.Lock()

    def tap(end: ClassicalChannel, _role: int) -> ClassicalChannel:
        return _TappedChannel(end, tape, lock)

    reports: list[LinkReport] = []
    while distilled.status(SERVER).available_to_take < PSK_UNITS:
        if len(reports) == LINK_ROUNDS_MAX:
            raise HybridKexError(f"the simulated QKD link distilled too few keys in "
                                 f"{LINK_ROUNDS_MAX} rounds: {reports[-1].abort_reason}")
        reports.append(link.run_round(LINK_PULSES, channel_hook=tap))
    return linked_pools(CLIENT, SERVER, distilled.units), reports, tuple(tape)


def _configs(scenario: str, capture: CapturingRandomness, qkd_capture: CapturingKeySource,
             pools: LinkedPools) -> tuple[Config, Config]:
    """site-a's and site-b's configuration for one scenario; both draw from ``capture``,
    and site-a takes its pool keys through ``qkd_capture``."""
    if scenario == "pq+qkd":
        common: dict[str, Any] = {"suites": (SUITES[0x0101],), "auth": "psk",
                                  "security": SecurityPolicy.QKD_AND_PQ, "randomness": capture}
        return (Config(CLIENT, key_source=qkd_capture, **common),
                Config(SERVER, key_source=StoreKeySource(pools.store_b), **common))
    ids = {site: SigningIdentity.generate("Ed25519") for site in (CLIENT, SERVER)}
    if scenario == "classical":
        suite, policy = SUITES[0x0001], SecurityPolicy.ALLOW_CLASSICAL
    else:
        suite, policy = SUITES[0x0101], SecurityPolicy.AT_LEAST_PQ
    made = []
    for site, peer in ((CLIENT, SERVER), (SERVER, CLIENT)):
        trust = TrustStore(pinned={peer: ("Ed25519", ids[peer].public_key)})
        made.append(Config(site, identity=ids[site], trust=trust, suites=(suite,),
                           auth="signature", security=policy, randomness=capture))
    return made[0], made[1]


# -- the whole demonstration --------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class DemoResult:
    message: bytes
    sessions: dict[str, SessionRun]
    results: dict[str, dict[str, AttackResult]]
    control: AttackResult
    disclosures: dict[str, Disclosure]
    link_reports: list[LinkReport]
    timings_s: dict[str, float]

    @property
    def matrix(self) -> dict[str, dict[str, bool]]:
        """Which recording falls to which adversary: the recovered plaintext is the message."""
        return {s: {a: r.client_data == self.message for a, r in row.items()}
                for s, row in self.results.items()}

    @property
    def as_expected(self) -> bool:
        """The matrix is :data:`EXPECTED_MATRIX`, and the control decrypts pq+qkd."""
        return self.matrix == EXPECTED_MATRIX and self.control.client_data == self.message

    def to_json(self) -> dict[str, Any]:
        link = self.link_reports[-1]
        return {
            "matrix": self.matrix,
            "expected_matrix": EXPECTED_MATRIX,
            "as_expected": self.as_expected,
            "labels": {
                "breaks": "simulated by disclosing ephemeral secrets",
                "decryption": "real: parse, key schedule, AEAD, Finished checks",
                "qkd_link": SIMULATION_LABEL,
                "summary": LABEL,
            },
            "message_bytes": len(self.message),
            "message_in_any_recording": any(
                self.message in r.recording.client_to_server
                or self.message in r.recording.server_to_client
                for r in self.sessions.values()),
            "sessions": {
                name: {
                    "suite": run.suite, "kems": list(run.kems), "auth_mode": run.auth_mode,
                    "security_policy": run.security_policy,
                    "qkd_key_ids": list(run.qkd_key_ids), "fallback": run.fallback,
                    "receipt_ok": run.receipt_ok, "elapsed_s": round(run.elapsed_s, 3),
                } for name, run in self.sessions.items()},
            "bytes_recorded": {
                name: {"client_to_server": len(run.recording.client_to_server),
                       "server_to_client": len(run.recording.server_to_client),
                       "qkd_public_discussion": sum(
                           len(f) for f in run.recording.qkd_public_discussion)}
                for name, run in self.sessions.items()},
            "disclosed": {
                adversary: {"x25519_private_keys": len(d.x25519_private_keys),
                            "mlkem_decapsulation_keys": len(d.mlkem_decapsulation_keys),
                            "qkd_keys": len(d.qkd_keys)}
                for adversary, d in self.disclosures.items()},
            "details": {
                scenario: {
                    adversary: {
                        "falls": result.client_data == self.message,
                        "decrypted": result.decrypted,
                        "stage": result.stage,
                        "failure": result.failure,
                        "recovered_bytes": len(result.client_data),
                        "steps": list(result.steps),
                    } for adversary, result in row.items()}
                for scenario, row in self.results.items()},
            "control": {
                "adversary": CONTROL,
                "scenario": "pq+qkd",
                "meaning": "the quantum-computer+lattice-break adversary also given the QKD "
                           "key (a compromised QKD device or key store that kept it); not "
                           "part of the matrix",
                "falls": self.control.client_data == self.message,
                "decrypted": self.control.decrypted,
                "failure": self.control.failure,
                "steps": list(self.control.steps),
            },
            "qkd_link": {
                "simulation": SIMULATION_LABEL,
                "distance_km": link.distance_km,
                "rounds": len(self.link_reports),
                "pulses_per_round": link.pulses,
                "keys_deposited": sum(r.keys_deposited for r in self.link_reports),
                "auth_mode": self.link_reports[0].auth_mode,
                "qber": link.qber,
            },
            "notes": NOTES,
            "timings_s": self.timings_s,
        }


NOTES = [
    "The breaks are simulated.  The sites' randomness was wrapped, and it kept every KEM key "
    "pair they generated.  An adversary is given the private keys its break would recover "
    "(quantum computer: X25519; lattice break: ML-KEM), indexed by the public keys in the "
    "recording.  Nothing else is disclosed: no shared secret, no traffic secret, no QKD key, "
    "no message.",
    "Everything after the disclosure is real.  The adversary parses the recorded hellos, "
    "recomputes the shared secrets, runs the HKX/1 key schedule, decrypts and verifies the "
    "handshake flights and decrypts the application data.  A session falls when the "
    "plaintext recovered this way equals the secret message.",
    "The QKD key never crosses the network.  The ClientHello names it by ID, and the QKD "
    "link's public discussion (recorded too) carries the same ID, but neither holds any of "
    "its bits.  Without it the combiner input cannot be formed.",
    "The QKD link is a simulation (decoy-state BB84 Monte Carlo, then real distillation over "
    "an authenticated classical channel).  It shows nothing about the security of physical "
    "QKD devices or key stores; see docs/rndl.md.",
]


def run_demo(message: bytes | None = None) -> DemoResult:
    """Record the three sessions, then attack each recording with each adversary."""
    started = time.perf_counter()
    if message is None:
        message = (b"site-a to site-b, confidential: wire-transfer authorisation code "
                   + os.urandom(16).hex().encode())
    pools, link_reports, discussion = fill_pools()
    t_link = time.perf_counter()
    capture = CapturingRandomness()
    qkd_capture = CapturingKeySource(StoreKeySource(pools.store_a))
    sessions: dict[str, SessionRun] = {}
    for scenario in SCENARIOS:
        client, server = _configs(scenario, capture, qkd_capture, pools)
        sessions[scenario] = record_session(scenario, client, server, message,
                                            discussion if scenario == "pq+qkd" else ())
    t_sessions = time.perf_counter()
    # The sessions are over: only now does the future adversary get its break.
    disclosures = {adversary: disclose(adversary, capture) for adversary in ADVERSARIES}
    results = {scenario: {adversary: attack(run.recording, disclosures[adversary])
                          for adversary in ADVERSARIES}
               for scenario, run in sessions.items()}
    control = attack(sessions["pq+qkd"].recording, disclose(CONTROL, capture, qkd_capture))
    finished = time.perf_counter()
    return DemoResult(
        message=message, sessions=sessions, results=results, control=control,
        disclosures=disclosures, link_reports=link_reports,
        timings_s={"qkd_link": round(t_link - started, 3),
                   "sessions": round(t_sessions - t_link, 3),
                   "attacks": round(finished - t_sessions, 3),
                   "total": round(finished - started, 3)})
