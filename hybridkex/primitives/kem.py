"""Key encapsulation mechanisms by name, over pyca/cryptography.

All keys, ciphertexts and secrets are ``bytes`` in the standard encodings
(docs/primitives.md has the table):

- X25519: 32-byte keys; the ciphertext is the ephemeral public key.
- ML-KEM-768/1024: FIPS 203 ek and c; the private key is the 64-byte seed d || z.
- X-Wing: pk_M || pk_X (1216 bytes), ct_M || ct_X (1120); private key = 32-byte seed.
- X25519MLKEM768: ek || x25519 (1216), ct || x25519 (1120), secret ss_M || ss_X (64);
  private key = d || z || x25519 scalar (96 bytes).

X25519 used as a KEM returns the raw Diffie-Hellman output as its secret, exactly as
TLS 1.3 and X25519MLKEM768 use it; hybridkex always feeds it through a combiner whose
context binds the public values.  An all-zero X25519 output (a low-order peer key)
is refused with :class:`InvalidKey`/:class:`InvalidCiphertext` as RFC 8446 section
7.4.2 requires, except inside X-Wing, whose draft specifies no such check and whose
security does not rest on it.
"""

from __future__ import annotations

import abc
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from hybridkex.errors import InvalidCiphertext, InvalidKey, InvalidParameter
from hybridkex.primitives._checks import Bytes, as_bytes
from hybridkex.primitives._held import HeldKey, held_key

__all__ = [
    "KEM",
    "KEMS",
    "MLKEM",
    "X25519KEM",
    "X25519MLKEM768",
    "XWing",
    "xwing_combine",
]


class KEM(abc.ABC):
    """A key encapsulation mechanism: the sizes it speaks and its four operations."""

    name: str
    backend: str = "cryptography"
    public_key_size: int
    private_key_size: int
    ciphertext_size: int
    shared_secret_size: int
    seed_size: int

    def generate_keypair(self) -> tuple[bytes, bytes]:
        """A fresh ``(public, private)`` pair from the operating system's CSPRNG."""
        return self.derive_keypair(os.urandom(self.seed_size))

    @abc.abstractmethod
    def derive_keypair(self, seed: Bytes) -> tuple[bytes, bytes]:
        """The ``(public, private)`` pair determined by ``seed`` (``seed_size`` bytes).

        The private key may come back as a :class:`~hybridkex.primitives._held.HeldKey`:
        bytes that also hold the decoded key, so ``decapsulate`` need not decode it again.
        """

    @abc.abstractmethod
    def encapsulate(self, public: Bytes) -> tuple[bytes, bytes]:
        """``(shared_secret, ciphertext)`` for the holder of ``public``'s private key."""

    @abc.abstractmethod
    def decapsulate(self, ciphertext: Bytes, private: Bytes) -> bytes:
        """The shared secret that ``ciphertext`` carries to ``private``."""

    def sizes(self) -> dict[str, int]:
        return {
            "public_key": self.public_key_size,
            "private_key": self.private_key_size,
            "ciphertext": self.ciphertext_size,
            "shared_secret": self.shared_secret_size,
            "seed": self.seed_size,
        }

    def __repr__(self) -> str:
        return f"<KEM {self.name} ({self.backend})>"


# --- X25519 ---------------------------------------------------------------------------


def _x25519_private(scalar: Bytes, what: str) -> X25519PrivateKey:
    key = held_key(scalar)
    if isinstance(key, X25519PrivateKey):
        return key
    return X25519PrivateKey.from_private_bytes(as_bytes(scalar, what, 32, error=InvalidKey))


def _x25519_public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


def _x25519(
    private: X25519PrivateKey, peer: bytes, error: type[InvalidParameter], allow_zero: bool
) -> bytes:
    """X25519(private, peer); the all-zero output is refused unless ``allow_zero``."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer))
    except ValueError:
        # cryptography refuses exactly one case: the all-zero shared secret that a
        # low-order peer point produces (RFC 7748 section 6.1).
        if allow_zero:
            return bytes(32)
        raise error("X25519 peer value is a low-order point (all-zero shared secret)") from None


class X25519KEM(KEM):
    """Diffie-Hellman over Curve25519 (RFC 7748) used as a KEM: ciphertext = ephemeral key."""

    name = "X25519"
    public_key_size = private_key_size = ciphertext_size = shared_secret_size = seed_size = 32

    def derive_keypair(self, seed: Bytes) -> tuple[bytes, bytes]:
        private = _x25519_private(seed, "X25519 seed")
        return _x25519_public_bytes(private), HeldKey(private.private_bytes_raw(), private)

    def encapsulate(self, public: Bytes) -> tuple[bytes, bytes]:
        peer = as_bytes(public, "X25519 public key", 32, error=InvalidKey)
        ephemeral = X25519PrivateKey.generate()
        secret = _x25519(ephemeral, peer, InvalidKey, allow_zero=False)
        return secret, _x25519_public_bytes(ephemeral)

    def decapsulate(self, ciphertext: Bytes, private: Bytes) -> bytes:
        ephemeral = as_bytes(ciphertext, "X25519 ciphertext", 32, error=InvalidCiphertext)
        return _x25519(_x25519_private(private, "X25519 private key"), ephemeral,
                       InvalidCiphertext, allow_zero=False)


# --- ML-KEM (FIPS 203) -----------------------------------------------------------------

_MLKEM_CLASSES: dict[str, tuple[type[mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey],
                                type[mlkem.MLKEM768PublicKey | mlkem.MLKEM1024PublicKey]]] = {
    "ML-KEM-768": (mlkem.MLKEM768PrivateKey, mlkem.MLKEM768PublicKey),
    "ML-KEM-1024": (mlkem.MLKEM1024PrivateKey, mlkem.MLKEM1024PublicKey),
}


class MLKEM(KEM):
    """ML-KEM (FIPS 203).  The private key is the 64-byte seed d || z of ML-KEM.KeyGen_internal.

    Encapsulation keys are checked as FIPS 203 section 7.2 requires (length and
    modulus check); a ciphertext of the wrong length is refused (section 7.3);
    a well-formed but forged ciphertext yields the implicit-rejection secret.
    """

    private_key_size = seed_size = 64
    shared_secret_size = 32

    def __init__(self, name: str, public_key_size: int, ciphertext_size: int) -> None:
        self.name = name
        self.public_key_size = public_key_size
        self.ciphertext_size = ciphertext_size
        self._private_cls, self._public_cls = _MLKEM_CLASSES[name]

    def _private(self, private: Bytes) -> mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey:
        key = held_key(private)
        if isinstance(key, self._private_cls):
            return key
        seed = as_bytes(private, f"{self.name} private seed", 64, error=InvalidKey)
        return self._private_cls.from_seed_bytes(seed)

    def derive_keypair(self, seed: Bytes) -> tuple[bytes, bytes]:
        key = self._private(seed)
        return key.public_key().public_bytes_raw(), HeldKey(key.private_bytes_raw(), key)

    def public_key_from_private(self, private: Bytes) -> bytes:
        return self._private(private).public_key().public_bytes_raw()

    def encapsulate(self, public: Bytes) -> tuple[bytes, bytes]:
        ek = as_bytes(public, f"{self.name} encapsulation key", self.public_key_size,
                      error=InvalidKey)
        try:
            key = self._public_cls.from_public_bytes(ek)
        except ValueError:
            raise InvalidKey(f"{self.name} encapsulation key fails the FIPS 203 check") from None
        return key.encapsulate()

    def decapsulate(self, ciphertext: Bytes, private: Bytes) -> bytes:
        ct = as_bytes(ciphertext, f"{self.name} ciphertext", self.ciphertext_size,
                      error=InvalidCiphertext)
        return self._private(private).decapsulate(ct)


# --- X-Wing (draft-connolly-cfrg-xwing-kem) --------------------------------------------

XWING_LABEL = b"\\.//^\\"


def _shake256(data: bytes, length: int) -> bytes:
    h = hashes.Hash(hashes.SHAKE256(digest_size=length))
    h.update(data)
    return h.finalize()


def xwing_combine(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    """The X-Wing combiner: SHA3-256(ss_M || ss_X || ct_X || pk_X || XWingLabel).

    Fixed-length inputs make the concatenation injective without length prefixes;
    ct_X and pk_X bind the X25519 half, while ML-KEM's ciphertext need not be hashed
    because ML-KEM is ciphertext-collision-resistant (the draft's security argument).
    """
    for value, what in ((ss_m, "ML-KEM secret"), (ss_x, "X25519 secret"),
                        (ct_x, "X25519 ciphertext"), (pk_x, "X25519 public key")):
        as_bytes(value, f"X-Wing {what}", 32)
    h = hashes.Hash(hashes.SHA3_256())
    h.update(ss_m + ss_x + ct_x + pk_x + XWING_LABEL)
    return h.finalize()


class XWing(KEM):
    """X-Wing: ML-KEM-768 + X25519 with the SHA3-256 combiner (draft -05 to -10 vectors)."""

    name = "X-Wing"
    public_key_size = 1216
    ciphertext_size = 1120
    private_key_size = seed_size = 32
    shared_secret_size = 32
    _mlkem = MLKEM("ML-KEM-768", 1184, 1088)

    def _expand(self, private: Bytes) -> tuple[bytes, X25519PrivateKey, bytes]:
        """expandDecapsulationKey: SHAKE256(sk, 96) = ML-KEM seed (64) || X25519 scalar (32)."""
        sk = as_bytes(private, "X-Wing private key", 32, error=InvalidKey)
        expanded = _shake256(sk, 96)
        sk_x = X25519PrivateKey.from_private_bytes(expanded[64:96])
        return expanded[:64], sk_x, _x25519_public_bytes(sk_x)

    def derive_keypair(self, seed: Bytes) -> tuple[bytes, bytes]:
        seed_m, _, pk_x = self._expand(seed)
        return self._mlkem.public_key_from_private(seed_m) + pk_x, bytes(seed)

    def encapsulate(self, public: Bytes) -> tuple[bytes, bytes]:
        pk = as_bytes(public, "X-Wing public key", self.public_key_size, error=InvalidKey)
        pk_m, pk_x = pk[:1184], pk[1184:]
        ss_m, ct_m = self._mlkem.encapsulate(pk_m)
        ek_x = X25519PrivateKey.generate()
        ct_x = _x25519_public_bytes(ek_x)
        ss_x = _x25519(ek_x, pk_x, InvalidKey, allow_zero=True)
        return xwing_combine(ss_m, ss_x, ct_x, pk_x), ct_m + ct_x

    def decapsulate(self, ciphertext: Bytes, private: Bytes) -> bytes:
        ct = as_bytes(ciphertext, "X-Wing ciphertext", self.ciphertext_size,
                      error=InvalidCiphertext)
        seed_m, sk_x, pk_x = self._expand(private)
        ct_m, ct_x = ct[:1088], ct[1088:]
        ss_m = self._mlkem.decapsulate(ct_m, seed_m)
        ss_x = _x25519(sk_x, ct_x, InvalidCiphertext, allow_zero=True)
        return xwing_combine(ss_m, ss_x, ct_x, pk_x)


# --- X25519MLKEM768 (RFC 9954 / draft-ietf-tls-ecdhe-mlkem) ----------------------------


class X25519MLKEM768(KEM):
    """The TLS 1.3 hybrid group 0x11EC as a KEM.

    public = ML-KEM ek || X25519 share, ciphertext = ML-KEM ct || X25519 share,
    secret = ss_ML-KEM || ss_X25519 (64 bytes, fed as-is into the TLS key schedule).
    The private key is the ML-KEM seed d || z followed by the X25519 scalar.
    """

    name = "X25519MLKEM768"
    public_key_size = 1216
    ciphertext_size = 1120
    private_key_size = seed_size = 96
    shared_secret_size = 64
    _mlkem = MLKEM("ML-KEM-768", 1184, 1088)
    _x25519 = X25519KEM()

    def derive_keypair(self, seed: Bytes) -> tuple[bytes, bytes]:
        private = as_bytes(seed, "X25519MLKEM768 seed", 96, error=InvalidKey)
        pk_m, _ = self._mlkem.derive_keypair(private[:64])
        pk_x, _ = self._x25519.derive_keypair(private[64:])
        return pk_m + pk_x, private

    def encapsulate(self, public: Bytes) -> tuple[bytes, bytes]:
        pk = as_bytes(public, "X25519MLKEM768 public key", 1216, error=InvalidKey)
        ss_m, ct_m = self._mlkem.encapsulate(pk[:1184])
        ss_x, ct_x = self._x25519.encapsulate(pk[1184:])
        return ss_m + ss_x, ct_m + ct_x

    def decapsulate(self, ciphertext: Bytes, private: Bytes) -> bytes:
        ct = as_bytes(ciphertext, "X25519MLKEM768 ciphertext", 1120, error=InvalidCiphertext)
        sk = as_bytes(private, "X25519MLKEM768 private key", 96, error=InvalidKey)
        ss_m = self._mlkem.decapsulate(ct[:1088], sk[:64])
        ss_x = self._x25519.decapsulate(ct[1088:], sk[64:])
        return ss_m + ss_x


KEMS: dict[str, KEM] = {
    kem.name: kem
    for kem in (
        X25519KEM(),
        MLKEM("ML-KEM-768", 1184, 1088),
        MLKEM("ML-KEM-1024", 1568, 1568),
        XWing(),
        X25519MLKEM768(),
    )
}
