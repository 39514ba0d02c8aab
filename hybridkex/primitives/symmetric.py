"""AEADs and MACs by name.

Each object is stateless: the key is passed to every call and lives only for that
call.  Failures of authentication raise :class:`AuthenticationFailed` and release
nothing of the message.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hmac, poly1305
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from hybridkex.errors import AuthenticationFailed, InvalidKey, InvalidParameter
from hybridkex.primitives._checks import Bytes, as_bytes
from hybridkex.primitives.kdf import hash_algorithm

__all__ = ["AEAD", "HMAC", "MAC", "Poly1305"]

# A single AEAD call takes at most this much plaintext (cryptography's own limit is 2**31-1).
_MAX_AEAD_INPUT = 2**31 - 1


class AEAD:
    """An AEAD with 32-byte keys, 12-byte nonces and 16-byte tags (RFC 5116 interface)."""

    key_size = 32
    nonce_size = 12
    tag_size = 16

    def __init__(self, name: str, cipher: Callable[[bytes], AESGCM | ChaCha20Poly1305]) -> None:
        self.name = name
        self._cipher = cipher
        # error labels built once, not on every call
        self._key_label = f"{name} key"
        self._nonce_label = f"{name} nonce"

    def __repr__(self) -> str:
        return f"<AEAD {self.name}>"

    def encrypt(
        self, key: Bytes, nonce: Bytes, plaintext: Bytes, associated_data: Bytes = b""
    ) -> bytes:
        """Return ciphertext || tag.  A (key, nonce) pair must never be used twice."""
        cipher = self._cipher(as_bytes(key, self._key_label, self.key_size, error=InvalidKey))
        nonce_bytes = as_bytes(nonce, self._nonce_label, self.nonce_size)
        data = as_bytes(plaintext, "plaintext")
        if len(data) > _MAX_AEAD_INPUT:
            raise InvalidParameter(f"{self.name} plaintext is too long for one call")
        return cipher.encrypt(nonce_bytes, data, as_bytes(associated_data, "associated data"))

    def decrypt(
        self, key: Bytes, nonce: Bytes, ciphertext: Bytes, associated_data: Bytes = b""
    ) -> bytes:
        """Return the plaintext, or raise AuthenticationFailed and return nothing."""
        cipher = self._cipher(as_bytes(key, self._key_label, self.key_size, error=InvalidKey))
        nonce_bytes = as_bytes(nonce, self._nonce_label, self.nonce_size)
        data = as_bytes(ciphertext, "ciphertext")
        if len(data) < self.tag_size:
            raise AuthenticationFailed(f"{self.name} ciphertext is shorter than its tag")
        try:
            return cipher.decrypt(nonce_bytes, data, as_bytes(associated_data, "associated data"))
        except InvalidTag:
            raise AuthenticationFailed(f"{self.name} tag does not verify") from None


class MAC:
    """A message authentication code: ``compute`` a tag, ``verify`` it in constant time."""

    name: str
    key_size: int
    tag_size: int
    one_time: bool

    def compute(self, key: Bytes, data: Bytes) -> bytes:
        raise NotImplementedError

    def verify(self, key: Bytes, data: Bytes, tag: Bytes) -> bool:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<MAC {self.name}>"


class HMAC(MAC):
    """HMAC (RFC 2104) over a SHA-2 hash.  ``key_size`` is the recommended key length."""

    one_time = False

    def __init__(self, name: str, hash_name: str) -> None:
        self.name = name
        self._algorithm = hash_algorithm(hash_name)
        self._key_label = f"{name} key"
        self.key_size = self.tag_size = self._algorithm.digest_size

    def compute(self, key: Bytes, data: Bytes) -> bytes:
        mac = hmac.HMAC(as_bytes(key, self._key_label, error=InvalidKey), self._algorithm)
        mac.update(as_bytes(data, "data"))
        return mac.finalize()

    def verify(self, key: Bytes, data: Bytes, tag: Bytes) -> bool:
        """Constant-time check of a full-length tag."""
        tag_bytes = as_bytes(tag, "tag")
        mac = hmac.HMAC(as_bytes(key, self._key_label, error=InvalidKey), self._algorithm)
        mac.update(as_bytes(data, "data"))
        try:
            mac.verify(tag_bytes)
        except InvalidSignature:
            return False
        return True


class Poly1305(MAC):
    """Poly1305 (RFC 8439): a one-time authenticator.  Each 32-byte key authenticates
    exactly one message; a key used twice lets an observer forge.  hybridkex uses it
    with one-time keys drawn from the QKD pool."""

    name = "Poly1305"
    key_size = 32
    tag_size = 16
    one_time = True

    def compute(self, key: Bytes, data: Bytes) -> bytes:
        key_bytes = as_bytes(key, "Poly1305 key", self.key_size, error=InvalidKey)
        return poly1305.Poly1305.generate_tag(key_bytes, as_bytes(data, "data"))

    def verify(self, key: Bytes, data: Bytes, tag: Bytes) -> bool:
        key_bytes = as_bytes(key, "Poly1305 key", self.key_size, error=InvalidKey)
        try:
            poly1305.Poly1305.verify_tag(key_bytes, as_bytes(data, "data"), as_bytes(tag, "tag"))
        except InvalidSignature:
            return False
        return True


AEADS: dict[str, AEAD] = {
    "AES-256-GCM": AEAD("AES-256-GCM", AESGCM),
    "ChaCha20-Poly1305": AEAD("ChaCha20-Poly1305", ChaCha20Poly1305),
}

MACS: dict[str, MAC] = {
    "HMAC-SHA256": HMAC("HMAC-SHA256", "SHA-256"),
    "HMAC-SHA384": HMAC("HMAC-SHA384", "SHA-384"),
    "Poly1305": Poly1305(),
}
