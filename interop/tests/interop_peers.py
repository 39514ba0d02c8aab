"""Every peer implementation behind one small interface, in hybridkex's conventions.

Return orders differ between all of them (hybridkex: ``encapsulate -> (secret,
ciphertext)``; pqcrypto: ``(ciphertext, secret)``; Node: ``{sharedKey, ciphertext}``;
liboqs-js: ``{ciphertext, sharedSecret}``; kyber-py: ``(K, c)``), so each is wrapped
once, here, and the tests speak only this interface.

Private keys stay in each peer's own form: the 64-byte ML-KEM seed d || z and the
32-byte ML-DSA seed for OpenSSL (as hybridkex), the expanded FIPS 203 / FIPS 204
encodings for liboqs, pqcrypto, kyber-py and dilithium-py.  A peer that cannot do
something raises :class:`NotSupportedByPeer`; the matrix (interop_matrix.py) says
which cells those are and why, and the tests never ask.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import pqcrypto.kem.ml_kem_768
import pqcrypto.kem.ml_kem_1024
import pqcrypto.sign.ml_dsa_44
import pqcrypto.sign.ml_dsa_65
import pqcrypto.sign.ml_dsa_87
from dilithium_py.ml_dsa import ML_DSA_44, ML_DSA_65, ML_DSA_87
from interop_node import NodePeer, unb64
from kyber_py.ml_kem import ML_KEM_768, ML_KEM_1024
from pqcrypto import InvalidSignatureError

KYBER: dict[str, Any] = {"ML-KEM-768": ML_KEM_768, "ML-KEM-1024": ML_KEM_1024}
DILITHIUM: dict[str, Any] = {"ML-DSA-44": ML_DSA_44, "ML-DSA-65": ML_DSA_65, "ML-DSA-87": ML_DSA_87}
PQCRYPTO_KEM: dict[str, Any] = {"ML-KEM-768": pqcrypto.kem.ml_kem_768,
                                "ML-KEM-1024": pqcrypto.kem.ml_kem_1024}
PQCRYPTO_SIG: dict[str, Any] = {"ML-DSA-44": pqcrypto.sign.ml_dsa_44,
                                "ML-DSA-65": pqcrypto.sign.ml_dsa_65,
                                "ML-DSA-87": pqcrypto.sign.ml_dsa_87}


class NotSupportedByPeer(Exception):
    """The peer has no such operation (the matrix marks the cell not supported)."""


def expanded_mlkem_key(alg: str, seed: bytes) -> bytes:
    """The FIPS 203 decapsulation key dk (dk_PKE || ek || H(ek) || z) for ``seed`` = d || z.

    hybridkex (like cryptography and OpenSSL) stores only the seed; peers that take
    the expanded key get it from kyber-py's ML-KEM.KeyGen_internal.
    """
    _, dk = KYBER[alg].key_derive(seed)
    return bytes(dk)


class MLKEMPeer(Protocol):
    name: str

    def keygen(self, alg: str) -> tuple[bytes, bytes]:
        """A fresh ``(ek, private)`` made by the peer; private in the peer's own form."""

    def keygen_seed_form(self, alg: str) -> tuple[bytes, bytes]:
        """A fresh ``(ek, seed d || z)`` made by the peer: a key hybridkex can decapsulate."""

    def public_from_seed(self, alg: str, seed: bytes) -> bytes:
        """The ek the peer derives from the 64-byte seed d || z."""

    def private_from_seed(self, alg: str, seed: bytes) -> bytes:
        """hybridkex's key (the seed) in the form the peer decapsulates with."""

    def encapsulate(self, alg: str, ek: bytes) -> tuple[bytes, bytes]:
        """``(shared_secret, ciphertext)``, hybridkex's order."""

    def decapsulate(self, alg: str, private: bytes, ciphertext: bytes) -> bytes: ...


class MLDSAPeer(Protocol):
    name: str

    def keygen(self, alg: str) -> tuple[bytes, bytes]:
        """A fresh ``(public, private)`` made by the peer; private in the peer's own form."""

    def public_from_seed(self, alg: str, seed: bytes) -> bytes: ...

    def sign_with_seed(self, alg: str, seed: bytes, message: bytes) -> bytes:
        """A signature (empty context) with hybridkex's key, the 32-byte seed."""

    def sign(self, alg: str, private: bytes, message: bytes, context: bytes) -> bytes: ...

    def verify(self, alg: str, public: bytes, message: bytes, signature: bytes,
               context: bytes) -> bool: ...


# --- OpenSSL 3.5 (Node.js crypto) --------------------------------------------------------


class OpenSSLKEM:
    """OpenSSL 3.5 through Node 26's crypto module; private keys are seeds, as ours.

    Also X25519 and the TLS hybrid X25519MLKEM768, which only this peer has.
    """

    name = "openssl"

    def __init__(self, node: NodePeer) -> None:
        self.node = node

    def keygen(self, alg: str) -> tuple[bytes, bytes]:
        r = self.node.call("openssl.mlkem.keygen", alg=alg)
        return unb64(r["public"]), unb64(r["seed"])

    def keygen_seed_form(self, alg: str) -> tuple[bytes, bytes]:
        return self.keygen(alg)

    def public_from_seed(self, alg: str, seed: bytes) -> bytes:
        r = self.node.call("openssl.mlkem.keygen", alg=alg, seed=seed)
        assert unb64(r["seed"]) == seed
        return unb64(r["public"])

    def private_from_seed(self, alg: str, seed: bytes) -> bytes:
        return seed

    def encapsulate(self, alg: str, ek: bytes) -> tuple[bytes, bytes]:
        r = self.node.call("openssl.mlkem.encaps", alg=alg, public=ek)
        return unb64(r["secret"]), unb64(r["ciphertext"])

    def decapsulate(self, alg: str, private: bytes, ciphertext: bytes) -> bytes:
        r = self.node.call("openssl.mlkem.decaps", alg=alg, seed=private, ciphertext=ciphertext)
        return unb64(r["secret"])

    def x25519_keygen(self, scalar: bytes | None = None) -> tuple[bytes, bytes]:
        """``(public, scalar)``: a fresh key, or the one for ``scalar``."""
        r = self.node.call("openssl.x25519.keygen", scalar=scalar)
        return unb64(r["public"]), unb64(r["scalar"])

    def x25519(self, scalar: bytes, public: bytes) -> bytes:
        return unb64(self.node.call("openssl.x25519.derive", scalar=scalar,
                                    public=public)["secret"])

    def x25519_encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        """X25519 as a KEM: ``(DH output, fresh ephemeral public key)``."""
        r = self.node.call("openssl.x25519.encaps", public=public)
        return unb64(r["secret"]), unb64(r["ciphertext"])

    def hybrid_keygen(self, private: bytes | None = None) -> tuple[bytes, bytes]:
        """X25519MLKEM768 ``(client share, d || z || x25519 scalar)``."""
        r = self.node.call("openssl.x25519mlkem768.keygen", private=private)
        return unb64(r["public"]), unb64(r["private"])

    def hybrid_encapsulate(self, client_share: bytes) -> tuple[bytes, bytes]:
        """X25519MLKEM768 ``(ss_ML-KEM || ss_X25519, server share)``."""
        r = self.node.call("openssl.x25519mlkem768.encaps", public=client_share)
        return unb64(r["secret"]), unb64(r["ciphertext"])

    def hybrid_decapsulate(self, private: bytes, server_share: bytes) -> bytes:
        r = self.node.call("openssl.x25519mlkem768.decaps", private=private,
                           ciphertext=server_share)
        return unb64(r["secret"])


class OpenSSLSignatures:
    """ML-DSA in OpenSSL 3.5 through Node's crypto module; private keys are seeds."""

    name = "openssl"

    def __init__(self, node: NodePeer) -> None:
        self.node = node

    def keygen(self, alg: str) -> tuple[bytes, bytes]:
        r = self.node.call("openssl.mldsa.keygen", alg=alg)
        return unb64(r["public"]), unb64(r["seed"])

    def public_from_seed(self, alg: str, seed: bytes) -> bytes:
        r = self.node.call("openssl.mldsa.keygen", alg=alg, seed=seed)
        assert unb64(r["seed"]) == seed
        return unb64(r["public"])

    def sign_with_seed(self, alg: str, seed: bytes, message: bytes) -> bytes:
        return self.sign(alg, seed, message, b"")

    def sign(self, alg: str, private: bytes, message: bytes, context: bytes) -> bytes:
        r = self.node.call("openssl.mldsa.sign", alg=alg, seed=private, message=message,
                           context=context)
        return unb64(r["signature"])

    def verify(self, alg: str, public: bytes, message: bytes, signature: bytes,
               context: bytes) -> bool:
        r = self.node.call("openssl.mldsa.verify", alg=alg, public=public, message=message,
                           signature=signature, context=context)
        return r["valid"] is True


# --- liboqs (WebAssembly, in the same Node process) --------------------------------------


class LibOQSKEM:
    """liboqs-js ML-KEM: random key generation only, expanded decapsulation keys."""

    name = "liboqs"

    def __init__(self, node: NodePeer) -> None:
        self.node = node

    def keygen(self, alg: str) -> tuple[bytes, bytes]:
        r = self.node.call("liboqs.kem.keygen", alg=alg)
        return unb64(r["public"]), unb64(r["secret"])

    def keygen_seed_form(self, alg: str) -> tuple[bytes, bytes]:
        raise NotSupportedByPeer("liboqs-js generates only expanded private keys")

    def public_from_seed(self, alg: str, seed: bytes) -> bytes:
        raise NotSupportedByPeer("liboqs-js has no key generation from a seed")

    def private_from_seed(self, alg: str, seed: bytes) -> bytes:
        return expanded_mlkem_key(alg, seed)

    def encapsulate(self, alg: str, ek: bytes) -> tuple[bytes, bytes]:
        r = self.node.call("liboqs.kem.encaps", alg=alg, public=ek)
        return unb64(r["secret"]), unb64(r["ciphertext"])

    def decapsulate(self, alg: str, private: bytes, ciphertext: bytes) -> bytes:
        r = self.node.call("liboqs.kem.decaps", alg=alg, secret=private, ciphertext=ciphertext)
        return unb64(r["secret"])


class LibOQSSignatures:
    """liboqs-js ML-DSA: random key generation only, expanded keys, empty context only."""

    name = "liboqs"

    def __init__(self, node: NodePeer) -> None:
        self.node = node

    def keygen(self, alg: str) -> tuple[bytes, bytes]:
        r = self.node.call("liboqs.sig.keygen", alg=alg)
        return unb64(r["public"]), unb64(r["secret"])

    def public_from_seed(self, alg: str, seed: bytes) -> bytes:
        raise NotSupportedByPeer("liboqs-js has no key generation from a seed")

    def sign_with_seed(self, alg: str, seed: bytes, message: bytes) -> bytes:
        raise NotSupportedByPeer("liboqs-js signs only with an expanded private key")

    def sign(self, alg: str, private: bytes, message: bytes, context: bytes) -> bytes:
        if context:
            raise NotSupportedByPeer("liboqs-js signs with the empty context only")
        return unb64(self.node.call("liboqs.sig.sign", alg=alg, secret=private,
                                    message=message)["signature"])

    def verify(self, alg: str, public: bytes, message: bytes, signature: bytes,
               context: bytes) -> bool:
        if context:
            raise NotSupportedByPeer("liboqs-js verifies with the empty context only")
        r = self.node.call("liboqs.sig.verify", alg=alg, public=public, message=message,
                           signature=signature)
        return r["valid"] is True


# --- pqcrypto (PQClean, in process) ----------------------------------------------------


class PQCryptoKEM:
    """pqcrypto 1.0.0 ML-KEM: random key generation only, expanded decapsulation keys."""

    name = "pqcrypto"

    def keygen(self, alg: str) -> tuple[bytes, bytes]:
        ek, dk = PQCRYPTO_KEM[alg].keygen()
        return bytes(ek), bytes(dk)

    def keygen_seed_form(self, alg: str) -> tuple[bytes, bytes]:
        raise NotSupportedByPeer("pqcrypto generates only expanded private keys")

    def public_from_seed(self, alg: str, seed: bytes) -> bytes:
        raise NotSupportedByPeer("pqcrypto has no key generation from a seed")

    def private_from_seed(self, alg: str, seed: bytes) -> bytes:
        return expanded_mlkem_key(alg, seed)

    def encapsulate(self, alg: str, ek: bytes) -> tuple[bytes, bytes]:
        ciphertext, secret = PQCRYPTO_KEM[alg].encaps(ek)
        return bytes(secret), bytes(ciphertext)

    def decapsulate(self, alg: str, private: bytes, ciphertext: bytes) -> bytes:
        return bytes(PQCRYPTO_KEM[alg].decaps(private, ciphertext))


class PQCryptoSignatures:
    """pqcrypto 1.0.0 ML-DSA: random key generation only, expanded keys, contexts."""

    name = "pqcrypto"

    def keygen(self, alg: str) -> tuple[bytes, bytes]:
        pk, sk = PQCRYPTO_SIG[alg].keygen()
        return bytes(pk), bytes(sk)

    def public_from_seed(self, alg: str, seed: bytes) -> bytes:
        raise NotSupportedByPeer("pqcrypto has no key generation from a seed")

    def sign_with_seed(self, alg: str, seed: bytes, message: bytes) -> bytes:
        raise NotSupportedByPeer("pqcrypto signs only with an expanded private key")

    def sign(self, alg: str, private: bytes, message: bytes, context: bytes) -> bytes:
        return bytes(PQCRYPTO_SIG[alg].sign(private, message, context=context))

    def verify(self, alg: str, public: bytes, message: bytes, signature: bytes,
               context: bytes) -> bool:
        # pqcrypto returns None for a valid signature and raises for an invalid one.
        try:
            PQCRYPTO_SIG[alg].verify(public, message, signature, context=context)
        except InvalidSignatureError:
            return False
        return True


# --- kyber-py and dilithium-py (pure Python FIPS 203 / 204) ------------------------------


class KyberPyKEM:
    """kyber-py: ML-KEM with key derivation from the seed d || z."""

    name = "kyber-py"

    def keygen(self, alg: str) -> tuple[bytes, bytes]:
        ek, dk = KYBER[alg].key_derive(os.urandom(64))
        return bytes(ek), bytes(dk)

    def keygen_seed_form(self, alg: str) -> tuple[bytes, bytes]:
        # FIPS 203 ML-KEM.KeyGen: fresh d and z, then KeyGen_internal(d, z) by kyber-py.
        seed = os.urandom(64)
        return self.public_from_seed(alg, seed), seed

    def public_from_seed(self, alg: str, seed: bytes) -> bytes:
        ek, _ = KYBER[alg].key_derive(seed)
        return bytes(ek)

    def private_from_seed(self, alg: str, seed: bytes) -> bytes:
        return expanded_mlkem_key(alg, seed)

    def encapsulate(self, alg: str, ek: bytes) -> tuple[bytes, bytes]:
        secret, ciphertext = KYBER[alg].encaps(ek)
        return bytes(secret), bytes(ciphertext)

    def decapsulate(self, alg: str, private: bytes, ciphertext: bytes) -> bytes:
        return bytes(KYBER[alg].decaps(private, ciphertext))


class DilithiumPySignatures:
    """dilithium-py: ML-DSA with key derivation from the 32-byte seed."""

    name = "dilithium-py"

    def keygen(self, alg: str) -> tuple[bytes, bytes]:
        pk, sk = DILITHIUM[alg].key_derive(os.urandom(32))
        return bytes(pk), bytes(sk)

    def public_from_seed(self, alg: str, seed: bytes) -> bytes:
        pk, _ = DILITHIUM[alg].key_derive(seed)
        return bytes(pk)

    def sign_with_seed(self, alg: str, seed: bytes, message: bytes) -> bytes:
        _, sk = DILITHIUM[alg].key_derive(seed)
        return self.sign(alg, bytes(sk), message, b"")

    def sign(self, alg: str, private: bytes, message: bytes, context: bytes) -> bytes:
        return bytes(DILITHIUM[alg].sign(private, message, ctx=context))

    def verify(self, alg: str, public: bytes, message: bytes, signature: bytes,
               context: bytes) -> bool:
        return DILITHIUM[alg].verify(public, message, signature, ctx=context) is True
