"""KDF combiners: one secret out of several, secret while any one input is.

``combine(parts, context, length)`` takes an ordered list of ``(name, secret)``
pairs, such as ``[("X25519", ss_x), ("ML-KEM-768", ss_m), ("QKD", k_qkd)]``, and the
context (in HKX/1, the transcript hash).  Every combiner here binds each secret to
its name and length and binds the context, so no two different input tuples can
collide.  Inputs are validated, never repaired: a missing, empty or duplicated part
is a :class:`CombinerError`.  docs/combiners.md gives each definition and the
argument for why the output stays secret while any one input does.
"""

from __future__ import annotations

import abc
import struct
from collections.abc import Sequence

from cryptography.hazmat.primitives import hmac

from hybridkex.errors import CombinerError, UnknownAlgorithm
from hybridkex.primitives._checks import Bytes, as_bytes, check_length
from hybridkex.primitives.kdf import digest, hash_algorithm, hkdf_expand, hkdf_extract
from hybridkex.primitives.kem import xwing_combine

__all__ = [
    "COMBINERS",
    "CasKDF",
    "CatKDF",
    "Combiner",
    "HKDFConcat",
    "XWingCombiner",
    "combine",
    "etsi_caskdf",
    "etsi_catkdf",
    "etsi_f",
    "get",
]

Part = tuple[str, Bytes]

_MAX_NAME = 255
_MAX_PARTS = 255
_MAX_SECRET = 0xFFFF
_MAX_CONTEXT = 0xFFFF


def _validate(parts: object, minimum: int = 2) -> list[tuple[bytes, bytes]]:
    """Check the parts and return them as (encoded name, secret) pairs, order kept."""
    if not isinstance(parts, Sequence) or isinstance(parts, str | bytes | bytearray):
        raise CombinerError("parts must be a sequence of (name, secret) pairs")
    if not minimum <= len(parts) <= _MAX_PARTS:
        raise CombinerError(
            f"a combiner takes {minimum} to {_MAX_PARTS} parts, got {len(parts)}")
    checked: list[tuple[bytes, bytes]] = []
    seen: set[bytes] = set()
    for index, part in enumerate(parts):
        if not isinstance(part, tuple | list) or len(part) != 2:
            raise CombinerError(f"part {index} is not a (name, secret) pair")
        name, secret = part
        if not isinstance(name, str) or not name:
            raise CombinerError(f"part {index} has no name")
        encoded = name.encode("utf-8")
        if len(encoded) > _MAX_NAME:
            raise CombinerError(f"part {index} name is longer than {_MAX_NAME} bytes")
        if encoded in seen:
            raise CombinerError(f"part {name!r} appears twice")
        if secret is None:
            raise CombinerError(f"part {name!r} is missing its secret")
        value = as_bytes(secret, f"secret of part {name!r}", error=CombinerError)
        if not value:
            raise CombinerError(f"part {name!r} has an empty secret")
        if len(value) > _MAX_SECRET:
            raise CombinerError(f"part {name!r} secret is longer than {_MAX_SECRET} bytes")
        seen.add(encoded)
        checked.append((encoded, value))
    return checked


def _context(context: Bytes) -> bytes:
    ctx = as_bytes(context, "combiner context", error=CombinerError)
    if len(ctx) > _MAX_CONTEXT:
        raise CombinerError(f"combiner context is longer than {_MAX_CONTEXT} bytes")
    return ctx


def _length(hash_name: str, length: int) -> int:
    return check_length(length, "combiner output length",
                        255 * hash_algorithm(hash_name).digest_size)


class Combiner(abc.ABC):
    """A KDF combiner, by name."""

    name: str

    @abc.abstractmethod
    def combine(self, parts: Sequence[Part], context: Bytes, length: int,
                hash_name: str = "SHA-256") -> bytes:
        """``length`` bytes derived from every part and the context."""

    def __repr__(self) -> str:
        return f"<Combiner {self.name}>"


class HKDFConcat(Combiner):
    """NIST SP 800-56C two-step derivation over labelled, length-prefixed secrets::

        IKM  = u8(n) || for each part: u8(len name) || name || u16(len secret) || secret
        PRK  = HKDF-Extract(salt = context, IKM)
        info = "hybridkex hkdf-concat v1" || u16(len context) || context || u16(length)
        OKM  = HKDF-Expand(PRK, info, length)

    The context is repeated, length-prefixed, in ``info`` because an HMAC key is
    ambiguous: keys that differ only by trailing zero bytes, or a long key and its
    hash, give the same HMAC.  ``info`` binds the output length, so outputs of
    different lengths are unrelated rather than prefixes of each other.
    """

    name = "hkdf-concat"
    LABEL = b"hybridkex hkdf-concat v1"

    def combine(self, parts: Sequence[Part], context: Bytes, length: int,
                hash_name: str = "SHA-256") -> bytes:
        checked = _validate(parts)
        ctx = _context(context)
        length = _length(hash_name, length)
        ikm = bytearray([len(checked)])
        for name, secret in checked:
            ikm += bytes([len(name)]) + name + struct.pack(">H", len(secret)) + secret
        prk = hkdf_extract(hash_name, ctx, ikm)
        info = self.LABEL + struct.pack(">H", len(ctx)) + ctx + struct.pack(">H", length)
        return hkdf_expand(hash_name, prk, info, length)


# --- ETSI TS 103 744 (clauses 7.2, 7.3, 8.2, 8.3) --------------------------------------


def etsi_f(hash_name: str, *args: bytes) -> bytes:
    """The context formatting function f (clause 7.2): H(u32(len a1) || a1 || ...)."""
    return digest(hash_name, b"".join(struct.pack(">I", len(a)) + a for a in args))


def etsi_catkdf(hash_name: str, secrets: Sequence[bytes], psk: bytes, label: bytes,
                context: bytes, ma: bytes, mb: bytes, length: int) -> bytes:
    """CatKDF (clause 8.2): HKDF(salt=label, IKM=psk || k1 || ... || kn, info=f(context, MA, MB))

    with every input of the standard explicit.
    """
    secret = psk + b"".join(secrets)
    prk = hkdf_extract(hash_name, label, secret)
    return hkdf_expand(hash_name, prk, etsi_f(hash_name, context, ma, mb), length)


def etsi_caskdf(hash_name: str, rounds: Sequence[tuple[bytes, bytes, bytes, bytes, bytes, int]],
                psk: bytes = b"") -> bytes:
    """CasKDF (clause 8.3).  Each round is (k_i, label_i, context_i, MA_i, MB_i, length_i)::

        round_secret_i = HMAC(chain_secret_{i-1}, f(k_i, MA_i, MB_i))    chain_secret_0 = psk
        out_i          = HKDF(salt=label_i, IKM=round_secret_i, info=context_i, |cs| + length_i)
        chain_secret_i || key_material_i = out_i

    Returns the last round's key material.
    """
    algorithm = hash_algorithm(hash_name)
    chain = psk
    key_material = b""
    for k, label, context, ma, mb, length in rounds:
        prf = hmac.HMAC(chain, algorithm)
        prf.update(etsi_f(hash_name, k, ma, mb))
        round_secret = prf.finalize()
        out = hkdf_expand(hash_name, hkdf_extract(hash_name, label, round_secret), context,
                          algorithm.digest_size + length)
        chain, key_material = out[: algorithm.digest_size], out[algorithm.digest_size :]
    return key_material


def _descriptor(checked: list[tuple[bytes, bytes]]) -> bytes:
    """Names and lengths of the parts (no secret bytes): what makes psk||k1||k2 parse uniquely."""
    return b"".join(bytes([len(n)]) + n + struct.pack(">H", len(s)) for n, s in checked)


class CatKDF(Combiner):
    """ETSI TS 103 744 CatKDF over the parts in order, with psk empty.

    hybridkex fills the standard's inputs as: label = "hybridkex etsi-catkdf v1",
    context = the combiner context, MA = the parts' names and lengths, MB = empty
    (both parties' messages are already bound by the transcript hash in context).
    """

    name = "etsi-catkdf"
    LABEL = b"hybridkex etsi-catkdf v1"

    def combine(self, parts: Sequence[Part], context: Bytes, length: int,
                hash_name: str = "SHA-256") -> bytes:
        checked = _validate(parts)
        ctx = _context(context)
        length = _length(hash_name, length)
        return etsi_catkdf(hash_name, [s for _, s in checked], b"", self.LABEL, ctx,
                           _descriptor(checked), b"", length)


class CasKDF(Combiner):
    """ETSI TS 103 744 CasKDF, one round per part in order, with psk empty.

    Round i uses label_i = "hybridkex etsi-caskdf v1" || u8(i), context_i = the
    combiner context, MA_i = the part's name, MB_i = empty, and every round's
    length = the requested length; the output is the last round's key material.
    """

    name = "etsi-caskdf"
    LABEL = b"hybridkex etsi-caskdf v1"

    def combine(self, parts: Sequence[Part], context: Bytes, length: int,
                hash_name: str = "SHA-256") -> bytes:
        checked = _validate(parts)
        ctx = _context(context)
        # each round expands HashLen bytes of chain secret on top of the output
        length = check_length(length, "combiner output length",
                              254 * hash_algorithm(hash_name).digest_size)
        rounds = [(secret, self.LABEL + bytes([i]), ctx, name, b"", length)
                  for i, (name, secret) in enumerate(checked, start=1)]
        return etsi_caskdf(hash_name, rounds)


class XWingCombiner(Combiner):
    """The X-Wing combiner as a named combiner.

    It takes exactly the parts ("ML-KEM-768", ss_M) and ("X25519", ss_X) in that
    order, the context ct_X || pk_X (64 bytes), length 32, and hash SHA3-256 (the
    ``hash_name`` argument must be left at its default or be "SHA3-256").
    """

    name = "xwing"

    def combine(self, parts: Sequence[Part], context: Bytes, length: int,
                hash_name: str = "SHA-256") -> bytes:
        checked = _validate(parts)
        names = [name for name, _ in checked]
        if names != [b"ML-KEM-768", b"X25519"]:
            raise CombinerError("the X-Wing combiner takes parts ML-KEM-768 then X25519")
        ctx = as_bytes(context, "X-Wing context (ct_X || pk_X)", 64, error=CombinerError)
        if length != 32:
            raise CombinerError("the X-Wing combiner outputs exactly 32 bytes")
        if hash_name not in ("SHA-256", "SHA3-256"):
            raise CombinerError("the X-Wing combiner always uses SHA3-256")
        (_, ss_m), (_, ss_x) = checked
        for value in (ss_m, ss_x):
            if len(value) != 32:
                raise CombinerError("X-Wing secrets are 32 bytes each")
        return xwing_combine(ss_m, ss_x, ctx[:32], ctx[32:])


COMBINERS: dict[str, Combiner] = {
    c.name: c for c in (HKDFConcat(), CatKDF(), CasKDF(), XWingCombiner())
}


def get(name: str) -> Combiner:
    """The combiner called ``name``: "hkdf-concat", "etsi-catkdf", "etsi-caskdf", "xwing"."""
    try:
        return COMBINERS[name]
    except (KeyError, TypeError):
        raise UnknownAlgorithm(
            f"unknown combiner {name!r}; available: {', '.join(COMBINERS)}"
        ) from None


def combine(parts: Sequence[Part], context: Bytes, length: int, combiner: str = "hkdf-concat",
            hash_name: str = "SHA-256") -> bytes:
    """Combine ``parts`` under ``context`` into ``length`` bytes with the named combiner."""
    return get(combiner).combine(parts, context, length, hash_name)
