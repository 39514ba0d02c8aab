"""Fuzz targets: every decoder that takes bytes from outside, and what it may raise.

Each target takes one input (bytes) and runs it through a decoder the way the code
that receives such bytes does.  The decoder may succeed or raise its *typed* error
(``allowed``); anything else -- another exception, an encoder that cannot write back
what its decoder accepted -- is a crash.  A hang is an input that takes longer than
the per-input time limit (:mod:`tests.fuzz.campaign`).

Targets:

* ``hkx1-handshake``: an HKX/1 handshake message, first byte its type
  (:func:`hybridkex.protocol.wire.decode_handshake`); what decodes must re-encode to
  the same bytes (the decoders are strict and canonical).
* ``hkx1-records``: a byte stream cut into pieces by its first bytes, through
  :class:`hybridkex.protocol.record.RecordBuffer`.
* ``qkd-messages``: a distillation message, first byte selects the class
  (:mod:`hybridkex.qkd.distillation.messages`); what decodes must survive
  encode-decode-encode unchanged.
* ``qkd-frames``: a classical frame (:meth:`hybridkex.qkd.distillation.channel.Frame.decode`).
* ``kme-bodies``: a request body to the KME (``decode_json``, then the request format
  the first byte picks), and ``kme-queries``: a query string (either GET form)
  (:mod:`hybridkex.keydelivery.kme.formats`).
* ``kme-answers``: a KME's answer as the client reads it (status or key container)
  (:mod:`hybridkex.keydelivery.kme.client`).
* ``site-toml``: ``site.toml`` (:meth:`hybridkex.site.directory.SiteSettings.from_toml`),
  and ``site-pin``: a pin file of ``trust/`` (:func:`hybridkex.site.credentials.load_pin`).

The KME-to-KME sync messages are not on this branch; their decoder joins as a target
of its own when it lands (docs/fuzzing.md).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np

from hybridkex.errors import DecodeError
from hybridkex.keydelivery.errors import KeySourceError
from hybridkex.keydelivery.kme import formats
from hybridkex.keydelivery.kme.calls import KMEStatus, decode_answer
from hybridkex.keydelivery.kme.calls import parse_keys as delivered_keys
from hybridkex.keydelivery.kme.sync import parse_reservations
from hybridkex.protocol import wire
from hybridkex.protocol.record import MAX_PAYLOAD, RecordBuffer, frame_record
from hybridkex.protocol.suites import AuthMode, ContentType, KemId
from hybridkex.qkd.distillation import messages as qm
from hybridkex.qkd.distillation.channel import Frame
from hybridkex.qkd.ends import Role
from hybridkex.qkd.errors import LinkAborted
from hybridkex.site.credentials import load_pin, pin_text
from hybridkex.site.directory import SiteSettings
from hybridkex.site.errors import SiteError

__all__ = ["TARGETS", "Crash", "Target"]


class Crash(Exception):
    """A decoder broke its contract other than by raising (e.g. a non-canonical decode)."""


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    allowed: tuple[type[BaseException], ...]
    seeds: Callable[[], Iterator[bytes]] = field(repr=False)


# -- HKX/1 -----------------------------------------------------------------------------


def _hkx1_handshake(data: bytes) -> None:
    if not data:
        return
    msg_type, body = data[0], data[1:]
    message = wire.decode_handshake(msg_type, body)
    if message.encode() != wire.frame_handshake(msg_type, body):
        raise Crash(f"{type(message).__name__} decoded from bytes it does not encode to")


def _hkx1_handshake_seeds() -> Iterator[bytes]:
    ids = tuple(uuid.UUID(int=i).bytes for i in range(1, 5))
    messages: list[Any] = [
        wire.ClientHello(random=bytes(32), client_site="site-a", server_site="site-b",
                         suites=(0x0101, 0x0102),
                         key_shares=(wire.KeyShare(KemId.X25519, bytes(32)),),
                         auth_mode=AuthMode.SIGNATURE, qkd_key_ids=ids[:1]),
        wire.ClientHello(random=bytes(32), client_site="a", server_site="b", suites=(0x0101,),
                         key_shares=(wire.KeyShare(KemId.X25519, bytes(32)),),
                         auth_mode=AuthMode.PSK, qkd_key_ids=ids[3:], auth_key_ids=ids[:3],
                         binder=bytes(16)),
        wire.ServerHello(random=bytes(32), suite=0x0101,
                         key_shares=(wire.KeyShare(KemId.X25519, bytes(32)),),
                         qkd_accepted=True, client_auth_requested=False),
        wire.Identity(wire.IdentityKind.RAW_PUBLIC_KEY, 0x0807, public_key=bytes(32)),
        wire.Identity(wire.IdentityKind.X509_CHAIN, 0x0807, certificates=(b"x" * 40, b"y")),
        wire.IdentityVerify(bytes(64)),
        wire.AuthMac(bytes(16)),
        wire.Finished(bytes(48)),
        wire.KeyUpdate(True),
        wire.QkdRekey(ids[:2]),
        wire.QkdRekeyAck(),
    ]
    for message in messages:
        framed = message.encode()
        yield framed[:1] + framed[4:]


def _hkx1_records(data: bytes) -> None:
    buffer = RecordBuffer()
    cut = 1 + (data[0] % 7 if data else 0)
    for start in range(0, len(data), cut):
        buffer.feed(data[start:start + cut])
        while buffer.next_record() is not None:
            pass


def _hkx1_records_seeds() -> Iterator[bytes]:
    yield frame_record(ContentType.HANDSHAKE, b"\x01\x00\x00\x02ab")
    yield frame_record(ContentType.ALERT, b"\x02\x28") + frame_record(
        ContentType.APPLICATION_DATA, bytes(20))
    yield frame_record(ContentType.APPLICATION_DATA, bytes(MAX_PAYLOAD))[:40]


# -- QKD distillation --------------------------------------------------------------------


_MESSAGES: tuple[type[qm.Message], ...] = (
    qm.Hello, qm.Sift, qm.SiftReply, qm.Estimate, qm.EstimateReply, qm.CascadeRequest,
    qm.CascadeResponse, qm.CascadeDone, qm.Verify, qm.VerifyResult, qm.Amplify, qm.Confirm,
    qm.Abort)


def _qkd_message(data: bytes) -> None:
    if not data:
        return
    kind = _MESSAGES[data[0] % len(_MESSAGES)]
    message = kind.decode(data[1:])
    encoded = message.encode()
    again = kind.decode(encoded).encode()
    if again != encoded:
        raise Crash(f"{kind.__name__}: decode(encode(m)) encodes differently")


def _qkd_message_seeds() -> Iterator[bytes]:
    bits = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1], np.uint8)
    key_ids = (str(uuid.UUID(int=7)), str(uuid.UUID(int=8)))
    setup = qm.CascadeSetup(1024, 512, b"seed", (4, 6, 0))
    samples: list[qm.Message] = [
        qm.Hello(bytes(16), (0.4, 0.2, 0.0), (0.4, 0.4, 0.2), (4e8, 4e8, 2e8), 10**9),
        qm.Sift(bytes(16), 5, np.array([3, 9, 10, 400, 2**40]), bits[:5]),
        qm.SiftReply(bits[:4], np.array([0, 1, 2, 0], np.uint8)),
        qm.Estimate(bytes(32), bits, bits[:3]),
        qm.EstimateReply(bits, bits[:3]),
        qm.CascadeRequest(0, np.array([1, 2, 300, 70000]), setup),
        qm.CascadeRequest(3, np.array([5, 6])),
        qm.CascadeResponse(1, bits),
        qm.CascadeDone(1234, 56),
        qm.Verify(bytes(32), bytes(16)),
        qm.VerifyResult(True),
        qm.Amplify(4096 + 512, 4096, bits, key_ids),
        qm.Confirm(bytes(32)),
        qm.Abort("QBER 0.263 above the threshold 0.11"),
    ]
    for message in samples:
        yield bytes([_MESSAGES.index(type(message))]) + message.encode()


def _qkd_frame(data: bytes) -> None:
    frame = Frame.decode(data)
    if Frame.decode(frame.encode()) != frame:
        raise Crash("a frame decodes differently after re-encoding")


def _qkd_frame_seeds() -> Iterator[bytes]:
    yield Frame(bytes(16), 0, Role.BOB, qm.MessageType.SIFT, b"payload", b"tag" * 5).encode()
    yield Frame(bytes(range(16)), 7, Role.ALICE, 255, b"", b"").encode()


# -- KME ---------------------------------------------------------------------------------


_LIMITS = formats.KMELimits()


def _kme_body(data: bytes) -> None:
    if not data:
        return
    parse = (formats.parse_key_request, formats.parse_key_ids)[data[0] % 2]
    parse(formats.decode_json(data[1:]), _LIMITS)


def _kme_body_seeds() -> Iterator[bytes]:
    a, b = uuid.UUID(int=1), uuid.UUID(int=2)
    yield b'\x00{"number": 2, "size": 512}'
    yield b'\x00{"number": 1, "additional_slave_SAE_IDs": [], "extension_mandatory": [{"x": 1}]}'
    yield (f'\x01{{"key_IDs": [{{"key_ID": "{a}"}}, {{"key_ID": "{b}", "key_ID_extension": '
           f'{{"size": 512, "unit_key_IDs": ["{a}"]}}}}]}}').encode()
    yield b'\x01{"key_IDs": [], "key_IDs_extension": {}}'


def _kme_query(data: bytes) -> None:
    if not data:
        return
    parse = (formats.parse_key_request_query, formats.parse_key_ids_query)[data[0] % 2]
    parse(parse_qs(data[1:].decode("utf-8", "replace"), keep_blank_values=True), _LIMITS)


def _kme_query_seeds() -> Iterator[bytes]:
    yield b"\x00number=2&size=512"
    yield f"\x01key_ID={uuid.UUID(int=3)}".encode()
    yield b"\x00number=1&number=2&size=999999999999"


def _kme_answer(data: bytes) -> None:
    if not data:
        return
    parse = (KMEStatus.from_json, delivered_keys)[data[0] % 2]
    parse(decode_answer(data[1:]))


def _kme_answer_seeds() -> Iterator[bytes]:
    yield (b'\x00{"source_KME_ID": "a", "target_KME_ID": "b", "master_SAE_ID": "c", '
           b'"slave_SAE_ID": "d", "key_size": 256, "stored_key_count": 5, '
           b'"max_key_count": 10, "max_key_per_request": 128, "max_key_size": 2048, '
           b'"min_key_size": 64, "max_SAE_ID_count": 0}')
    yield (f'\x01{{"keys": [{{"key_ID": "{uuid.UUID(int=4)}", '
           '"key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}, {"key_ID": "x", '
           '"key": "AAE=", "key_ID_extension": {"size": 16, "unit_key_IDs": []}}]}').encode()


_SYNC_SAES = {"sae-a": "A", "sae-b": "B", "sae-c": "B"}


def _kme_sync(data: bytes) -> None:
    """A KME-to-KME reservations request, as KME B reads one from KME A."""
    parse_reservations(formats.decode_json(data), caller="A", local="B",
                       sae_sites=_SYNC_SAES, limits=_LIMITS)


def _kme_sync_seeds() -> Iterator[bytes]:
    a, b, c = (uuid.UUID(int=i) for i in (5, 6, 7))
    yield (f'{{"source_KME_ID": "A", "target_KME_ID": "B", "reservations": [{{"key_ID": '
           f'"{a}", "size": 512, "units": ["{a}", "{b}"], "master_SAE_ID": "sae-a", '
           f'"slave_SAE_IDs": ["sae-b", "sae-c"]}}, {{"key_ID": "{c}", "size": 256, '
           f'"units": ["{c}"], "master_SAE_ID": "sae-a", "slave_SAE_IDs": ["sae-b"]}}]}}'
           ).encode()
    yield b'{"source_KME_ID": "A", "target_KME_ID": "B", "reservations": []}'


# -- site --------------------------------------------------------------------------------


def _site_toml(data: bytes) -> None:
    SiteSettings.from_toml(data.decode("utf-8", "replace"), "site.toml")


def _site_toml_seeds() -> Iterator[bytes]:
    settings = SiteSettings(name="site-a", signature="ML-DSA-65", identity="x509-self-signed",
                            links={"site-b": {"distance_km": 25.0, "simulated": True}})
    yield settings.to_toml().encode()
    yield b'name = "x"\nsignature = "Ed25519"\nidentity = "x509-ca-issued"\nsuites = []\n'


_PIN_DIR: Path | None = None


def _site_pin(data: bytes) -> None:
    global _PIN_DIR
    if _PIN_DIR is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None  # a file system in memory
        _PIN_DIR = Path(tempfile.mkdtemp(prefix="hybridkex-fuzz-", dir=base))
    path = _PIN_DIR / "peer.pin"
    path.write_bytes(data)
    load_pin(path)


def _site_pin_seeds() -> Iterator[bytes]:
    yield pin_text("site-b", "Ed25519", bytes(range(32))).encode()


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("hkx1-handshake", _hkx1_handshake, (DecodeError,), _hkx1_handshake_seeds),
    Target("hkx1-records", _hkx1_records, (DecodeError,), _hkx1_records_seeds),
    Target("qkd-messages", _qkd_message, (LinkAborted,), _qkd_message_seeds),
    Target("qkd-frames", _qkd_frame, (LinkAborted,), _qkd_frame_seeds),
    Target("kme-bodies", _kme_body, (formats.KMEError,), _kme_body_seeds),
    Target("kme-queries", _kme_query, (formats.KMEError,), _kme_query_seeds),
    Target("kme-answers", _kme_answer, (KeySourceError,), _kme_answer_seeds),
    Target("kme-sync", _kme_sync, (formats.KMEError,), _kme_sync_seeds),
    Target("site-toml", _site_toml, (SiteError,), _site_toml_seeds),
    Target("site-pin", _site_pin, (SiteError,), _site_pin_seeds),
)}
