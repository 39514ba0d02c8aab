"""AEADs and MACs by name.

Each object is stateless: the key is passed to every call and lives only for that
call.  Where one key protects many messages (a record layer), ``AEAD.keyed(key)``
returns a :class:`KeyedAEAD` that builds the backend cipher, and its key schedule,
once.  Failures of authentication raise :class:`AuthenticationFailed` and release
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

__all__ = ["AEAD", "HMAC", "MAC", "KeyedAEAD", "Poly1305", "Poly1305Stream",
           "TagMismatch"]

#: What :meth:`KeyedAEAD.backend_calls`' ``decrypt`` raises for a tag that does not verify.
TagMismatch = InvalidTag
_RawAEADCall = Callable[[bytes, "bytes | memoryview", bytes], bytes]
_RawAEADIntoCall = Callable[[bytes, "bytes | memoryview", bytes, memoryview], int]

# A single AEAD call takes at most this much plaintext (cryptography's own limit is 2**31-1).
_MAX_AEAD_INPUT = 2**31 - 1
_NONCE_SIZE = 12
_TAG_SIZE = 16


class AEAD:
    """An AEAD with 32-byte keys, 12-byte nonces and 16-byte tags (RFC 5116 interface)."""

    key_size = 32
    nonce_size = _NONCE_SIZE
    tag_size = _TAG_SIZE

    def __init__(self, name: str, cipher: Callable[[bytes], AESGCM | ChaCha20Poly1305]) -> None:
        self.name = name
        self._cipher = cipher
        # error labels built once, not on every call
        self._key_label = f"{name} key"
        self._nonce_label = f"{name} nonce"

    def __repr__(self) -> str:
        return f"<AEAD {self.name}>"

    def keyed(self, key: Bytes) -> KeyedAEAD:
        """This AEAD bound to ``key``, for protecting many messages under one key."""
        return KeyedAEAD(self, key)

    def encrypt(
        self, key: Bytes, nonce: Bytes, plaintext: Bytes, associated_data: Bytes = b""
    ) -> bytes:
        """Return ciphertext || tag.  A (key, nonce) pair must never be used twice."""
        return self.keyed(key).encrypt(as_bytes(nonce, self._nonce_label, self.nonce_size),
                                       as_bytes(plaintext, "plaintext"),
                                       as_bytes(associated_data, "associated data"))

    def decrypt(
        self, key: Bytes, nonce: Bytes, ciphertext: Bytes, associated_data: Bytes = b""
    ) -> bytes:
        """Return the plaintext, or raise AuthenticationFailed and return nothing."""
        return self.keyed(key).decrypt(as_bytes(nonce, self._nonce_label, self.nonce_size),
                                       as_bytes(ciphertext, "ciphertext"),
                                       as_bytes(associated_data, "associated data"))


class KeyedAEAD:
    """An AEAD bound to one key (from :meth:`AEAD.keyed`).

    The backend cipher object is built once, so its key schedule is not recomputed
    for every message; the key lives exactly as long as this object.  Each call checks
    its arguments as :class:`AEAD` does.  As ever, a nonce must never repeat under
    the key: the caller (the record layer's sequence numbers) guarantees that.
    """

    __slots__ = ("_cipher", "_nonce_label", "name", "tag_size")

    def __init__(self, aead: AEAD, key: Bytes) -> None:
        self.name = aead.name
        self.tag_size = aead.tag_size
        self._nonce_label = aead._nonce_label
        self._cipher = aead._cipher(as_bytes(key, aead._key_label, aead.key_size,
                                             error=InvalidKey))

    def __repr__(self) -> str:  # never the key
        return f"<KeyedAEAD {self.name}>"

    def backend_calls(self) -> tuple[_RawAEADCall, _RawAEADCall, _RawAEADIntoCall,
                                     _RawAEADIntoCall]:
        """The backend's own ``encrypt``, ``decrypt``, ``encrypt_into`` and
        ``decrypt_into`` under this key, without the argument checks of this object's
        methods.

        For the record layer, which makes every argument itself (a 12-byte ``bytes``
        nonce from its sequence number, the ``bytes`` record header, a payload whose
        length it has checked) and would otherwise pay for the checks, a Python call
        and the error translation on every record: at 16 KiB that is a tenth of an
        AES-GCM call.  ``decrypt`` raises :data:`TagMismatch` when the tag does not
        verify (or the ciphertext is shorter than the tag), and releases nothing; so
        does ``decrypt_into``, after writing unauthenticated bytes into its buffer,
        which the caller must then wipe (as :meth:`decrypt_into` does)."""
        cipher = self._cipher
        return cipher.encrypt, cipher.decrypt, cipher.encrypt_into, cipher.decrypt_into

    def _arguments(self, nonce: Bytes, data: Bytes, what: str,
                   associated_data: Bytes) -> tuple[bytes, bytes | memoryview, bytes]:
        """The checks of every call, as AEAD.encrypt/decrypt make them: ``bytes`` of the
        right size pass on two comparisons each, ``data`` may also be a memoryview (read
        in place); anything else is converted or refused by :func:`as_bytes`."""
        if type(nonce) is not bytes or len(nonce) != _NONCE_SIZE:
            nonce = as_bytes(nonce, self._nonce_label, _NONCE_SIZE)
        if type(data) is not bytes and type(data) is not memoryview:
            data = as_bytes(data, what)
        if type(associated_data) is not bytes:
            associated_data = as_bytes(associated_data, "associated data")
        return nonce, data, associated_data

    def encrypt(self, nonce: Bytes, plaintext: Bytes, associated_data: Bytes = b"") -> bytes:
        """Return ciphertext || tag.  A nonce must never be used twice with this key.

        ``plaintext`` may be a memoryview, read in place (the record layer seals slices
        of the caller's data that way, without copying them first)."""
        nonce, plaintext, associated_data = self._arguments(nonce, plaintext, "plaintext",
                                                            associated_data)
        if len(plaintext) > _MAX_AEAD_INPUT:
            raise InvalidParameter(f"{self.name} plaintext is too long for one call")
        return self._cipher.encrypt(nonce, plaintext, associated_data)

    def encrypt_into(self, nonce: Bytes, plaintext: Bytes, associated_data: Bytes,
                     out: memoryview | bytearray) -> int:
        """Write ciphertext || tag into ``out``, which must be exactly that long; returns
        its length.  A nonce must never be used twice with this key.

        For a record layer that seals into a buffer it reuses, instead of allocating the
        ciphertext and then copying it next to its header."""
        nonce, plaintext, associated_data = self._arguments(nonce, plaintext, "plaintext",
                                                            associated_data)
        size = len(plaintext) + _TAG_SIZE
        if len(plaintext) > _MAX_AEAD_INPUT:
            raise InvalidParameter(f"{self.name} plaintext is too long for one call")
        _check_out(out, size)
        return self._cipher.encrypt_into(nonce, plaintext, associated_data, out)

    def decrypt_into(self, nonce: Bytes, ciphertext: Bytes, associated_data: Bytes,
                     out: memoryview | bytearray) -> int:
        """Write the plaintext into ``out``, which must be exactly that long; returns its
        length.  If the tag does not verify, ``out`` is wiped (the backend decrypts
        before it checks the tag) and AuthenticationFailed is raised: no unauthenticated
        byte is left behind."""
        nonce, ciphertext, associated_data = self._arguments(nonce, ciphertext, "ciphertext",
                                                             associated_data)
        size = len(ciphertext) - _TAG_SIZE
        if size < 0:
            raise AuthenticationFailed(f"{self.name} ciphertext is shorter than its tag")
        _check_out(out, size)
        try:
            return self._cipher.decrypt_into(nonce, ciphertext, associated_data, out)
        except InvalidTag:
            out[:size] = bytes(size)
            raise AuthenticationFailed(f"{self.name} tag does not verify") from None

    def decrypt(self, nonce: Bytes, ciphertext: Bytes, associated_data: Bytes = b"") -> bytes:
        """Return the plaintext, or raise AuthenticationFailed and return nothing.

        ``ciphertext`` may be a memoryview, read in place (the record layer opens
        records where they arrived, without copying them out first)."""
        nonce, ciphertext, associated_data = self._arguments(nonce, ciphertext, "ciphertext",
                                                             associated_data)
        if len(ciphertext) < _TAG_SIZE:
            raise AuthenticationFailed(f"{self.name} ciphertext is shorter than its tag")
        try:
            return self._cipher.decrypt(nonce, ciphertext, associated_data)
        except InvalidTag:
            raise AuthenticationFailed(f"{self.name} tag does not verify") from None


def _check_out(out: object, size: int) -> None:
    """``out`` must be a writable byte buffer of exactly ``size`` bytes."""
    if type(out) is memoryview:
        if out.readonly or not out.c_contiguous or out.itemsize != 1 or out.nbytes != size:
            raise InvalidParameter(f"output buffer must be a writable {size}-byte buffer")
    elif type(out) is not bytearray or len(out) != size:
        raise InvalidParameter(f"output buffer must be a {size}-byte bytearray or memoryview")


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

    def _over(self, key: Bytes, data: Bytes) -> hmac.HMAC:
        """The HMAC of ``data`` under ``key``, not yet finalized."""
        mac = hmac.HMAC(as_bytes(key, self._key_label, error=InvalidKey), self._algorithm)
        mac.update(as_bytes(data, "data"))
        return mac

    def compute(self, key: Bytes, data: Bytes) -> bytes:
        return self._over(key, data).finalize()

    def verify(self, key: Bytes, data: Bytes, tag: Bytes) -> bool:
        """Constant-time check of a full-length tag."""
        tag_bytes = as_bytes(tag, "tag")
        mac = self._over(key, data)
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

    def stream(self, key: Bytes) -> Poly1305Stream:
        """A tag over data given in pieces, under the one-time ``key``: for a message too
        long to hold whole (the Wegman-Carter tag over a run of deferred frames)."""
        return Poly1305Stream(as_bytes(key, "Poly1305 key", self.key_size, error=InvalidKey))


class Poly1305Stream:
    """One Poly1305 computation fed piece by piece; it ends with exactly one of
    :meth:`finalize` (the sender) or :meth:`verify` (the receiver, constant time).
    The key stays inside the backend object and appears in no repr."""

    def __init__(self, key: bytes) -> None:
        self._context = poly1305.Poly1305(key)

    def update(self, data: Bytes) -> None:
        self._context.update(as_bytes(data, "data"))

    def finalize(self) -> bytes:
        return self._context.finalize()

    def verify(self, tag: Bytes) -> bool:
        try:
            self._context.verify(as_bytes(tag, "tag"))
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return "<Poly1305Stream>"


AEADS: dict[str, AEAD] = {
    "AES-256-GCM": AEAD("AES-256-GCM", AESGCM),
    "ChaCha20-Poly1305": AEAD("ChaCha20-Poly1305", ChaCha20Poly1305),
}

MACS: dict[str, MAC] = {
    "HMAC-SHA256": HMAC("HMAC-SHA256", "SHA-256"),
    "HMAC-SHA384": HMAC("HMAC-SHA384", "SHA-384"),
    "Poly1305": Poly1305(),
}
