"""HKX/1 key schedule: the TLS 1.3 schedule (RFC 8446 section 7.1) with a combiner at its root.

Where TLS 1.3 extracts its handshake secret from one (EC)DHE secret, HKX/1 feeds every
secret the handshake agreed on (the X25519 and ML-KEM shared secrets and the QKD key)
to a KDF combiner bound to the transcript hash of ClientHello..ServerHello; the rest
is TLS 1.3's ladder with HKX/1's own labels ("hkx1 " instead of "tls13 "), so keys
from one protocol can never be mistaken for the other's.

    HS   = Combine([(kem name, ss) for each suite KEM] + [("QKD", k_qkd)],
                   context = H(ClientHello..ServerHello), length = Hash.length)
    c_hs = Derive-Secret(HS, "c hs traffic", ClientHello..ServerHello)
    s_hs = Derive-Secret(HS, "s hs traffic", ClientHello..ServerHello)
    MS   = HKDF-Extract(salt = Derive-Secret(HS, "derived", ""), IKM = 0^Hash.length)
    c_ap = Derive-Secret(MS, "c ap traffic", ClientHello..server Finished)
    s_ap = Derive-Secret(MS, "s ap traffic", ClientHello..server Finished)
    exp  = Derive-Secret(MS, "exp master",   ClientHello..server Finished)

Every function here is one step of docs/protocol.md section "Key schedule", named
as there.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence

from hybridkex.combiner import combine
from hybridkex.errors import InvalidParameter
from hybridkex.primitives import MAC, digest, hkdf_expand, hkdf_extract, mac
from hybridkex.primitives._checks import check_length
from hybridkex.protocol.suites import Suite

__all__ = [
    "COMBINER",
    "LABEL_PREFIX",
    "application_secrets",
    "derive_secret",
    "exporter",
    "finished_verify_data",
    "handshake_secrets",
    "hkdf_expand_label",
    "master_secret",
    "next_traffic_secret",
    "qkd_rekey_secret",
    "traffic_key_iv",
]

LABEL_PREFIX = b"hkx1 "
CLASSICAL_ONLY_PART = ("classical-only", b"\x00")
COMBINER = "hkdf-concat"
KEY_SIZE = 32  # both record AEADs take 256-bit keys
IV_SIZE = 12


_LABEL_HEADS: dict[tuple[str, int], bytes] = {}
_CONTEXT_LENGTHS = [bytes((n,)) for n in range(256)]


def _label_head(label: str, length: int) -> bytes:
    """u16(length) || <"hkx1 " + label>: the part of the info that is fixed per call site."""
    full = LABEL_PREFIX + label.encode("ascii")
    return struct.pack(">HB", length, len(full)) + full


def hkdf_expand_label(hash_name: str, secret: bytes, label: str, context: bytes,
                      length: int) -> bytes:
    """HKDF-Expand-Label with the "hkx1 " prefix: info = u16(length) || <label> || <context>."""
    head = _LABEL_HEADS.get((label, length))
    if head is None:
        head = _label_head(label, length)
        if len(_LABEL_HEADS) < 256:  # the schedule's own labels; exporter labels may vary
            _LABEL_HEADS[(label, length)] = head
    return hkdf_expand(hash_name, secret, head + _CONTEXT_LENGTHS[len(context)] + context,
                       length)


@functools.lru_cache(maxsize=8)
def _empty_hash(hash_name: str) -> bytes:
    """Hash(""), which Derive-Secret(., "derived", "") and the exporter take."""
    return digest(hash_name, b"")


def derive_secret(suite: Suite, secret: bytes, label: str, transcript_hash: bytes) -> bytes:
    """Derive-Secret: takes the transcript *hash*, so callers hash once per transcript point."""
    return hkdf_expand_label(suite.hash, secret, label, transcript_hash, suite.hash_len)


def handshake_secrets(suite: Suite, shared_secrets: Sequence[tuple[str, bytes]],
                      qkd_key: bytes | None,
                      hello_hash: bytes) -> tuple[bytes, bytes, bytes]:
    """(HS, c_hs, s_hs) from the suite's KEM secrets, in suite order, then the QKD key.

    The combiner names every input, so a session without a QKD key can never derive
    the same HS as one with it, and binds the hello transcript hash as its context.
    """
    parts = [*shared_secrets]
    if qkd_key is not None:
        parts.append(("QKD", qkd_key))
    if len(parts) == 1:
        # X25519 alone (security policy allow-classical).  A combiner needs two parts;
        # this public one adds no secrecy and marks the secrets as classical-only.
        parts.append(CLASSICAL_ONLY_PART)
    hs = combine(parts, hello_hash, suite.hash_len, COMBINER, suite.hash)
    return (hs,
            derive_secret(suite, hs, "c hs traffic", hello_hash),
            derive_secret(suite, hs, "s hs traffic", hello_hash))


def master_secret(suite: Suite, handshake_secret: bytes) -> bytes:
    salt = derive_secret(suite, handshake_secret, "derived", _empty_hash(suite.hash))
    return hkdf_extract(suite.hash, salt, bytes(suite.hash_len))


def application_secrets(suite: Suite, master: bytes,
                        server_finished_hash: bytes) -> tuple[bytes, bytes, bytes]:
    """(c_ap, s_ap, exporter master secret) over ClientHello..server Finished."""
    return (derive_secret(suite, master, "c ap traffic", server_finished_hash),
            derive_secret(suite, master, "s ap traffic", server_finished_hash),
            derive_secret(suite, master, "exp master", server_finished_hash))


def finished_verify_data(suite: Suite, base_secret: bytes, transcript_hash: bytes) -> bytes:
    """HMAC(finished_key, transcript hash), finished_key = Expand-Label(base, "finished")."""
    finished_key = hkdf_expand_label(suite.hash, base_secret, "finished", b"", suite.hash_len)
    return finished_mac(suite).compute(finished_key, transcript_hash)


def finished_mac(suite: Suite) -> MAC:
    return mac("HMAC-" + suite.hash.replace("-", ""))


def traffic_key_iv(suite: Suite, secret: bytes) -> tuple[bytes, bytes]:
    """The record AEAD key and IV of one direction."""
    return (hkdf_expand_label(suite.hash, secret, "key", b"", KEY_SIZE),
            hkdf_expand_label(suite.hash, secret, "iv", b"", IV_SIZE))


def next_traffic_secret(suite: Suite, secret: bytes) -> bytes:
    """KeyUpdate: the next generation of one direction's traffic secret."""
    return hkdf_expand_label(suite.hash, secret, "traffic upd", b"", suite.hash_len)


def qkd_rekey_secret(suite: Suite, secret: bytes, qkd_key: bytes, direction: str,
                     key_ids: Sequence[bytes]) -> bytes:
    """QKD re-key: a direction's next traffic secret from its current one and a fresh QKD key.

    Through the combiner, so the new secret is safe if either input is: the traffic
    secret (which carries the handshake's X25519, ML-KEM and QKD secrets) or the new
    QKD key.  The context names the direction ("c" or "s") and the key IDs, so the
    same key can never produce the same secret in two places.
    """
    context = LABEL_PREFIX + b"qkd rekey " + direction.encode("ascii") + b"".join(key_ids)
    return combine([("traffic", secret), ("QKD", qkd_key)], context, suite.hash_len,
                   COMBINER, suite.hash)


def exporter(suite: Suite, exporter_master: bytes, label: str, context: bytes,
             length: int) -> bytes:
    """Keying material for an application (RFC 8446 section 7.5, with "hkx1 " labels)."""
    if not isinstance(label, str) or not label.isascii() or len(label) > 250:
        raise InvalidParameter("exporter label must be ASCII, at most 250 characters")
    length = check_length(length, "exporter length", 255 * suite.hash_len)
    secret = derive_secret(suite, exporter_master, label, _empty_hash(suite.hash))
    return hkdf_expand_label(suite.hash, secret, "exporter", digest(suite.hash, context), length)
