"""Optional liboqs backend (``pip install 'hybridkex[oqs]'`` plus the liboqs shared library).

liboqs-python, when imported on a machine without the liboqs shared library,
clones and builds liboqs from the network.  A security library must never do that
behind its user's back, so this module looks for the shared library itself, in the
same places liboqs-python would, and imports ``oqs`` only when one is there.
"""

from __future__ import annotations

import ctypes.util
import functools
import importlib.util
import os
from pathlib import Path
from typing import Any

from hybridkex.errors import BackendUnavailable, InvalidCiphertext, InvalidKey
from hybridkex.primitives._checks import Bytes, as_bytes
from hybridkex.primitives.kem import KEM
from hybridkex.primitives.signature import SignatureScheme

__all__ = ["OQS_KEM_NAMES", "OQS_SIGNATURE_NAMES", "find_liboqs", "load", "oqs_kems",
           "oqs_signatures"]

# Names hybridkex offers through liboqs (liboqs's own spelling).  They are listed even
# without liboqs so that a request for one gets "install the extra", not "unknown".
OQS_KEM_NAMES = (
    "ML-KEM-512",
    "FrodoKEM-640-AES", "FrodoKEM-976-AES", "FrodoKEM-1344-AES",
    "FrodoKEM-640-SHAKE", "FrodoKEM-976-SHAKE", "FrodoKEM-1344-SHAKE",
    "HQC-128", "HQC-192", "HQC-256",
    "Classic-McEliece-348864", "Classic-McEliece-460896", "Classic-McEliece-6688128",
    "Classic-McEliece-6960119", "Classic-McEliece-8192128",
)
# Standard (FIPS 205) name -> liboqs mechanism name.
OQS_SIGNATURE_NAMES = {
    **{f"SLH-DSA-{h}-{n}{v}": f"SLH_DSA_PURE_{h.upper()}_{n}{v.upper()}"
       for h in ("SHA2", "SHAKE") for n in (128, 192, 256) for v in ("s", "f")},
    "Falcon-512": "Falcon-512",
    "Falcon-1024": "Falcon-1024",
}

INSTALL_HINT = (
    "it needs the optional liboqs backend: install the liboqs shared library "
    "(set OQS_INSTALL_PATH if it is not on the loader path) and "
    "pip install 'hybridkex[oqs]'"
)


def find_liboqs() -> str | None:
    """The path of a loadable liboqs shared library, or None; searches like liboqs-python."""
    install = Path(os.environ.get("OQS_INSTALL_PATH", Path.home() / "_oqs"))
    for candidate in (install / "lib" / "liboqs.so", install / "lib64" / "liboqs.so"):
        if candidate.is_file():
            return str(candidate)
    return ctypes.util.find_library("oqs")


@functools.cache
def load() -> Any | None:
    """The ``oqs`` module, or None when liboqs or liboqs-python is missing.  Never builds."""
    if find_liboqs() is None or importlib.util.find_spec("oqs") is None:
        return None
    import oqs  # safe: the shared library is present, so no download is attempted

    return oqs


class OQSKEM(KEM):
    """A liboqs KEM.  Private keys are liboqs's own encoding (expanded, not a seed)."""

    backend = "liboqs"

    def __init__(self, oqs: Any, name: str) -> None:
        self._oqs = oqs
        self.name = name
        with oqs.KeyEncapsulation(name) as kem:
            details = kem.details
        self.public_key_size = details["length_public_key"]
        self.private_key_size = details["length_secret_key"]
        self.ciphertext_size = details["length_ciphertext"]
        self.shared_secret_size = details["length_shared_secret"]
        self.seed_size = details.get("length_keypair_seed", 0)

    def generate_keypair(self) -> tuple[bytes, bytes]:
        with self._oqs.KeyEncapsulation(self.name) as kem:
            public = bytes(kem.generate_keypair())
            return public, bytes(kem.export_secret_key())

    def derive_keypair(self, seed: Bytes) -> tuple[bytes, bytes]:
        if not self.seed_size:
            raise BackendUnavailable(f"liboqs has no seeded key generation for {self.name}")
        seed_bytes = as_bytes(seed, f"{self.name} seed", self.seed_size, error=InvalidKey)
        with self._oqs.KeyEncapsulation(self.name) as kem:
            public = bytes(kem.generate_keypair_seed(seed_bytes))
            return public, bytes(kem.export_secret_key())

    def encapsulate(self, public: Bytes) -> tuple[bytes, bytes]:
        pk = as_bytes(public, f"{self.name} public key", self.public_key_size, error=InvalidKey)
        with self._oqs.KeyEncapsulation(self.name) as kem:
            ciphertext, secret = kem.encap_secret(pk)
        return bytes(secret), bytes(ciphertext)

    def decapsulate(self, ciphertext: Bytes, private: Bytes) -> bytes:
        ct = as_bytes(ciphertext, f"{self.name} ciphertext", self.ciphertext_size,
                      error=InvalidCiphertext)
        sk = as_bytes(private, f"{self.name} private key", self.private_key_size,
                      error=InvalidKey)
        with self._oqs.KeyEncapsulation(self.name, sk) as kem:
            return bytes(kem.decap_secret(ct))


class OQSSignature(SignatureScheme):
    """A liboqs signature scheme.  Private keys are liboqs's own encoding."""

    backend = "liboqs"

    def __init__(self, oqs: Any, name: str, mechanism: str) -> None:
        self._oqs = oqs
        self.name = name
        self._mechanism = mechanism
        with oqs.Signature(mechanism) as sig:
            details = sig.details
        self.public_key_size = details["length_public_key"]
        self.private_key_size = details["length_secret_key"]
        self.signature_size = details["length_signature"]
        self.seed_size = 0
        self.max_context = 255 if oqs.sig_supports_context(mechanism) else 0

    def generate_keypair(self) -> tuple[bytes, bytes]:
        with self._oqs.Signature(self._mechanism) as sig:
            public = bytes(sig.generate_keypair())
            return public, bytes(sig.export_secret_key())

    def derive_keypair(self, seed: Bytes) -> tuple[bytes, bytes]:
        raise BackendUnavailable(f"liboqs has no seeded key generation for {self.name}")

    def sign(self, private: Bytes, message: Bytes, context: Bytes = b"") -> bytes:
        ctx = self._context(context)
        sk = as_bytes(private, f"{self.name} private key", self.private_key_size,
                      error=InvalidKey)
        msg = as_bytes(message, "message")
        with self._oqs.Signature(self._mechanism, sk) as sig:
            return bytes(sig.sign_with_ctx_str(msg, ctx) if ctx else sig.sign(msg))

    def verify(self, public: Bytes, message: Bytes, signature: Bytes,
               context: Bytes = b"") -> bool:
        ctx = self._context(context)
        pk = as_bytes(public, f"{self.name} public key", self.public_key_size, error=InvalidKey)
        msg = as_bytes(message, "message")
        sig_bytes = as_bytes(signature, "signature")
        with self._oqs.Signature(self._mechanism) as sig:
            if ctx:
                return bool(sig.verify_with_ctx_str(msg, sig_bytes, ctx, pk))
            return bool(sig.verify(msg, sig_bytes, pk))


@functools.cache
def oqs_kems() -> dict[str, KEM]:
    oqs = load()
    if oqs is None:
        return {}
    enabled = set(oqs.get_enabled_kem_mechanisms())
    return {name: OQSKEM(oqs, name) for name in OQS_KEM_NAMES if name in enabled}


@functools.cache
def oqs_signatures() -> dict[str, SignatureScheme]:
    oqs = load()
    if oqs is None:
        return {}
    enabled = set(oqs.get_enabled_sig_mechanisms())
    return {
        name: OQSSignature(oqs, name, mechanism)
        for name, mechanism in OQS_SIGNATURE_NAMES.items()
        if mechanism in enabled
    }
