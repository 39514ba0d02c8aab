"""Signature schemes by name, over pyca/cryptography.

=================  ====================================  =======================  ==========
name               public key                            private key              context
=================  ====================================  =======================  ==========
ML-DSA-44/65/87    FIPS 204 pk                           32-byte seed xi          0..255 B
Ed25519            32 bytes (RFC 8032)                   32-byte seed             none
ECDSA-P256         65-byte uncompressed SEC1 point       32-byte scalar           none
ML-DSA-65+Ed25519  ML-DSA pk || Ed25519 pk (1984 B)      ML-DSA seed || Ed seed   0..255 B
=================  ====================================  =======================  ==========

ML-DSA signs in the FIPS 204 "pure" mode with the caller's context string; signing is
hedged (fresh randomness per signature), as FIPS 204 recommends.  Ed25519 and
ECDSA have no context input: a non-empty context raises :class:`InvalidParameter`
rather than being silently dropped.  ECDSA signatures are DER-encoded with SHA-256.

``verify`` returns ``False`` for any signature that does not verify, whatever its
length or content.  It raises for what the caller controls, never for what the
signer sent: :class:`InvalidKey` for a public key that does not decode, and
:class:`InvalidParameter` for a context the scheme cannot take or non-bytes input.
"""

from __future__ import annotations

import abc
import os
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, mldsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from hybridkex.errors import InvalidKey, InvalidParameter, UnknownAlgorithm
from hybridkex.primitives._checks import Bytes, as_bytes
from hybridkex.primitives._held import HeldKey, held_key

__all__ = [
    "ECDSAP256",
    "MLDSA",
    "SIGNATURES",
    "CompositeMLDSA65Ed25519",
    "Ed25519",
    "SignatureScheme",
    "backend_private_key",
    "private_key_pem",
]

MAX_CONTEXT = 255


class SignatureScheme(abc.ABC):
    """A signature scheme: the sizes it speaks and its four operations."""

    name: str
    backend: str = "cryptography"
    public_key_size: int
    private_key_size: int
    signature_size: int  # the largest signature the scheme produces
    seed_size: int
    max_context: int = 0  # the longest context string accepted (0: contexts unsupported)

    def generate_keypair(self) -> tuple[bytes, bytes]:
        """A fresh ``(public, private)`` pair from the operating system's CSPRNG."""
        return self.derive_keypair(os.urandom(self.seed_size))

    @abc.abstractmethod
    def derive_keypair(self, seed: Bytes) -> tuple[bytes, bytes]:
        """The ``(public, private)`` pair determined by ``seed``.

        The private key may come back as a :class:`~hybridkex.primitives._held.HeldKey`:
        bytes that also hold the decoded key, so ``sign`` need not decode it again.
        """

    def prepare_private_key(self, private: Bytes) -> bytes:
        """``private``, checked and decoded once, for a key that will sign many times.

        The result equals ``private`` and is used exactly like it.  Where the backend
        needs a decoded key object (ML-DSA, Ed25519, ECDSA-P256) the result holds it, so
        that ``sign`` does not decode the key again (for ML-DSA that re-runs key
        generation from the seed).  It lives as long as the caller keeps it, like the
        bytes it replaces.
        """
        return as_bytes(private, f"{self.name} private key", self.private_key_size,
                        error=InvalidKey)

    def prepare_public_key(self, public: Bytes, decoded: object = None) -> bytes:
        """``public``, checked and decoded once, for a key that will verify many times (a
        pinned peer key) or that the caller has already decoded (``decoded``: the
        backend key object of a certificate, used if it is this scheme's key and
        encodes to ``public``).

        The result equals ``public`` and is used exactly like it; where the backend
        decodes keys (ML-DSA, Ed25519) it holds the key object, so ``verify`` does not
        decode it again.
        """
        return as_bytes(public, f"{self.name} public key", self.public_key_size,
                        error=InvalidKey)

    @abc.abstractmethod
    def sign(self, private: Bytes, message: Bytes, context: Bytes = b"") -> bytes:
        """A signature on ``message`` under ``context``."""

    @abc.abstractmethod
    def verify(self, public: Bytes, message: Bytes, signature: Bytes,
               context: Bytes = b"") -> bool:
        """Whether ``signature`` is valid for ``message`` and ``context`` under ``public``."""

    def _context(self, context: Bytes) -> bytes:
        ctx = as_bytes(context, f"{self.name} context")
        if len(ctx) > self.max_context:
            if self.max_context == 0:
                raise InvalidParameter(f"{self.name} takes no context string")
            raise InvalidParameter(
                f"{self.name} context must be at most {self.max_context} bytes, got {len(ctx)}"
            )
        return ctx

    def sizes(self) -> dict[str, int]:
        return {
            "public_key": self.public_key_size,
            "private_key": self.private_key_size,
            "signature": self.signature_size,
            "seed": self.seed_size,
            "max_context": self.max_context,
        }

    def __repr__(self) -> str:
        return f"<SignatureScheme {self.name} ({self.backend})>"


_MLDSA_CLASSES: dict[str, tuple[type[mldsa.MLDSA44PrivateKey | mldsa.MLDSA65PrivateKey
                                     | mldsa.MLDSA87PrivateKey],
                                type[mldsa.MLDSA44PublicKey | mldsa.MLDSA65PublicKey
                                     | mldsa.MLDSA87PublicKey]]] = {
    "ML-DSA-44": (mldsa.MLDSA44PrivateKey, mldsa.MLDSA44PublicKey),
    "ML-DSA-65": (mldsa.MLDSA65PrivateKey, mldsa.MLDSA65PublicKey),
    "ML-DSA-87": (mldsa.MLDSA87PrivateKey, mldsa.MLDSA87PublicKey),
}


class MLDSA(SignatureScheme):
    """ML-DSA (FIPS 204), pure mode, hedged signing; private key = the 32-byte seed xi."""

    private_key_size = seed_size = 32
    max_context = MAX_CONTEXT

    def __init__(self, name: str, public_key_size: int, signature_size: int) -> None:
        self.name = name
        self.public_key_size = public_key_size
        self.signature_size = signature_size
        self._private_cls, self._public_cls = _MLDSA_CLASSES[name]

    def derive_keypair(self, seed: Bytes) -> tuple[bytes, bytes]:
        key = self._private(seed)
        return key.public_key().public_bytes_raw(), HeldKey(key.private_bytes_raw(), key)

    def prepare_private_key(self, private: Bytes) -> bytes:
        key = self._private(private)
        return HeldKey(key.private_bytes_raw(), key)

    def _private(
        self, private: Bytes
    ) -> mldsa.MLDSA44PrivateKey | mldsa.MLDSA65PrivateKey | mldsa.MLDSA87PrivateKey:
        key = held_key(private)
        if isinstance(key, self._private_cls):
            return key
        seed = as_bytes(private, f"{self.name} private seed", 32, error=InvalidKey)
        return self._private_cls.from_seed_bytes(seed)

    def sign(self, private: Bytes, message: Bytes, context: Bytes = b"") -> bytes:
        ctx = self._context(context)
        return self._private(private).sign(as_bytes(message, "message"), ctx)

    def prepare_public_key(self, public: Bytes, decoded: object = None) -> bytes:
        pk = as_bytes(public, f"{self.name} public key", self.public_key_size, error=InvalidKey)
        if not (isinstance(decoded, self._public_cls) and decoded.public_bytes_raw() == pk):
            decoded = self._public(pk)
        return HeldKey(pk, decoded)

    def _public(self, pk: bytes) -> mldsa.MLDSA44PublicKey | mldsa.MLDSA65PublicKey \
            | mldsa.MLDSA87PublicKey:
        try:
            return self._public_cls.from_public_bytes(pk)
        except ValueError:
            raise InvalidKey(f"{self.name} public key does not decode") from None

    def verify(self, public: Bytes, message: Bytes, signature: Bytes,
               context: Bytes = b"") -> bool:
        ctx = self._context(context)
        key = held_key(public)
        if not isinstance(key, self._public_cls):
            key = self._public(as_bytes(public, f"{self.name} public key",
                                        self.public_key_size, error=InvalidKey))
        sig = as_bytes(signature, "signature")
        msg = as_bytes(message, "message")
        try:
            key.verify(sig, msg, ctx)
        except (InvalidSignature, ValueError):
            return False
        return True


class Ed25519(SignatureScheme):
    """Ed25519 (RFC 8032, pure), private key = the 32-byte seed."""

    name = "Ed25519"
    public_key_size = private_key_size = seed_size = 32
    signature_size = 64

    def derive_keypair(self, seed: Bytes) -> tuple[bytes, bytes]:
        key = self._private(seed, "Ed25519 seed")
        return key.public_key().public_bytes_raw(), HeldKey(key.private_bytes_raw(), key)

    def prepare_private_key(self, private: Bytes) -> bytes:
        key = self._private(private, "Ed25519 private key")
        return HeldKey(key.private_bytes_raw(), key)

    @staticmethod
    def _private(private: Bytes, what: str) -> Ed25519PrivateKey:
        key = held_key(private)
        if isinstance(key, Ed25519PrivateKey):
            return key
        return Ed25519PrivateKey.from_private_bytes(as_bytes(private, what, 32, error=InvalidKey))

    def sign(self, private: Bytes, message: Bytes, context: Bytes = b"") -> bytes:
        self._context(context)
        key = self._private(private, "Ed25519 private key")
        return key.sign(as_bytes(message, "message"))

    def verify(self, public: Bytes, message: Bytes, signature: Bytes,
               context: Bytes = b"") -> bool:
        self._context(context)
        # Any 32 bytes load; a string that is not a curve point fails inside verify,
        # which RFC 8032 section 5.1.7 defines as an invalid signature (False).
        key = Ed25519PublicKey.from_public_bytes(
            as_bytes(public, "Ed25519 public key", 32, error=InvalidKey))
        try:
            key.verify(as_bytes(signature, "signature"), as_bytes(message, "message"))
        except InvalidSignature:
            return False
        return True


class ECDSAP256(SignatureScheme):
    """ECDSA over P-256 with SHA-256 (FIPS 186-5); DER signatures, SEC1 public keys.

    The private key is the 32-byte big-endian scalar; ``derive_keypair`` takes it as
    is and refuses a seed outside [1, n-1] instead of reducing it (no silent bias).
    """

    name = "ECDSA-P256"
    public_key_size = 65
    private_key_size = seed_size = 32
    signature_size = 72
    _order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

    def generate_keypair(self) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        return self._public_bytes(key), HeldKey(
            key.private_numbers().private_value.to_bytes(32, "big"), key)

    @staticmethod
    def _public_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)

    def prepare_private_key(self, private: Bytes) -> bytes:
        key = self._private(private, "ECDSA-P256 private key")
        return HeldKey(key.private_numbers().private_value.to_bytes(32, "big"), key)

    def _private(self, private: Bytes, what: str) -> ec.EllipticCurvePrivateKey:
        key = held_key(private)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key
        scalar = int.from_bytes(as_bytes(private, what, 32, error=InvalidKey), "big")
        if not 1 <= scalar < self._order:
            raise InvalidKey(f"{what} is not a scalar in [1, n-1]")
        return ec.derive_private_key(scalar, ec.SECP256R1())

    def derive_keypair(self, seed: Bytes) -> tuple[bytes, bytes]:
        key = self._private(seed, "ECDSA-P256 seed")
        return self._public_bytes(key), HeldKey(bytes(seed), key)

    def sign(self, private: Bytes, message: Bytes, context: Bytes = b"") -> bytes:
        self._context(context)
        key = self._private(private, "ECDSA-P256 private key")
        return key.sign(as_bytes(message, "message"), ec.ECDSA(hashes.SHA256()))

    def verify(self, public: Bytes, message: Bytes, signature: Bytes,
               context: Bytes = b"") -> bool:
        self._context(context)
        pk = as_bytes(public, "ECDSA-P256 public key", error=InvalidKey)
        if len(pk) not in (33, 65):
            raise InvalidKey(f"ECDSA-P256 public key must be 33 or 65 bytes, got {len(pk)}")
        try:
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), pk)
        except ValueError:
            raise InvalidKey("ECDSA-P256 public key is not a point on P-256") from None
        try:
            key.verify(as_bytes(signature, "signature"), as_bytes(message, "message"),
                       ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


class CompositeMLDSA65Ed25519(SignatureScheme):
    """ML-DSA-65 and Ed25519 together: a signature stands only if both halves verify.

    The construction is id-MLDSA65-Ed25519-SHA512 of draft-ietf-lamps-pq-composite-sigs
    (-13 to -19)::

        M'  = Prefix || Label || len(ctx) (1 byte) || ctx || SHA-512(M)
        sig = ML-DSA-65.Sign(sk_M, M', ctx=Label) || Ed25519.Sign(sk_E, M')

    with Prefix = "CompositeAlgorithmSignatures2025" and
    Label = "COMPSIG-MLDSA65-Ed25519-SHA512".  Signing the same M' under a label
    bound into both halves means neither half can be stripped and reused as a
    stand-alone ML-DSA or Ed25519 signature on M.  Keys and signatures are the
    plain concatenations: public = pk_M (1952) || pk_E (32), private = ML-DSA seed
    (32) || Ed25519 seed (32), signature = 3309 + 64 bytes.
    """

    name = "ML-DSA-65+Ed25519"
    PREFIX = b"CompositeAlgorithmSignatures2025"
    LABEL = b"COMPSIG-MLDSA65-Ed25519-SHA512"
    public_key_size = 1952 + 32
    private_key_size = seed_size = 64
    signature_size = 3309 + 64
    max_context = MAX_CONTEXT
    _mldsa = MLDSA("ML-DSA-65", 1952, 3309)
    _ed25519 = Ed25519()

    def _message_representative(self, message: Bytes, context: Bytes) -> bytes:
        ctx = self._context(context)
        h = hashes.Hash(hashes.SHA512())
        h.update(as_bytes(message, "message"))
        return self.PREFIX + self.LABEL + bytes([len(ctx)]) + ctx + h.finalize()

    def derive_keypair(self, seed: Bytes) -> tuple[bytes, bytes]:
        private = as_bytes(seed, f"{self.name} seed", 64, error=InvalidKey)
        pk_m, _ = self._mldsa.derive_keypair(private[:32])
        pk_e, _ = self._ed25519.derive_keypair(private[32:])
        return pk_m + pk_e, private

    def sign(self, private: Bytes, message: Bytes, context: Bytes = b"") -> bytes:
        sk = as_bytes(private, f"{self.name} private key", 64, error=InvalidKey)
        m_prime = self._message_representative(message, context)
        return (self._mldsa.sign(sk[:32], m_prime, self.LABEL)
                + self._ed25519.sign(sk[32:], m_prime))

    def verify(self, public: Bytes, message: Bytes, signature: Bytes,
               context: Bytes = b"") -> bool:
        pk = as_bytes(public, f"{self.name} public key", self.public_key_size, error=InvalidKey)
        m_prime = self._message_representative(message, context)
        sig = as_bytes(signature, "signature")
        if len(sig) != self.signature_size:
            return False
        # Both halves are always checked, so timing does not tell which one failed.
        ok_m = self._mldsa.verify(pk[:1952], m_prime, sig[:3309], self.LABEL)
        ok_e = self._ed25519.verify(pk[1952:], m_prime, sig[3309:])
        return ok_m and ok_e


SIGNATURES: dict[str, SignatureScheme] = {
    scheme.name: scheme
    for scheme in (
        MLDSA("ML-DSA-44", 1312, 2420),
        MLDSA("ML-DSA-65", 1952, 3309),
        MLDSA("ML-DSA-87", 2592, 4627),
        Ed25519(),
        ECDSAP256(),
        CompositeMLDSA65Ed25519(),
    )
}


def backend_private_key(name: str, private: Bytes) -> Any:
    """The cryptography private key object for a non-composite scheme's raw private key
    (for what needs the object itself: certificates, PEM files)."""
    scheme = SIGNATURES.get(name)
    if isinstance(scheme, MLDSA):
        return scheme._private(private)
    if isinstance(scheme, Ed25519):
        return scheme._private(private, "Ed25519 private key")
    if isinstance(scheme, ECDSAP256):
        return scheme._private(private, "ECDSA-P256 private key")
    raise UnknownAlgorithm(f"{name!r} has no single private key object (or is unknown)")


def private_key_pem(name: str, private: Bytes) -> bytes:
    """A non-composite scheme's raw private key as unencrypted PKCS#8 PEM (ML-DSA in the
    seed-only form of RFC 9881), for what reads keys only from PEM (OpenSSL, Node.js)."""
    key = backend_private_key(name, private)
    return bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
