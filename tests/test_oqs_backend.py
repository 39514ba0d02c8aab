"""The optional liboqs backend: present or absent, it must never download anything.

Most of this file runs everywhere.  The round-trip tests at the end need the liboqs
shared library and liboqs-python (``pip install 'hybridkex[oqs]'``); they skip, and
say so, only when those optional packages are absent.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hybridkex import primitives
from hybridkex.errors import BackendUnavailable, UnknownAlgorithm
from hybridkex.primitives import oqs_backend

HAVE_LIBOQS = oqs_backend.load() is not None


@pytest.fixture
def no_liboqs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Pretend the shared library is missing, whatever this machine has."""
    monkeypatch.setattr(oqs_backend, "find_liboqs", lambda: None)
    for cached in (oqs_backend.load, oqs_backend.oqs_kems, oqs_backend.oqs_signatures):
        cached.cache_clear()
    yield
    for cached in (oqs_backend.load, oqs_backend.oqs_kems, oqs_backend.oqs_signatures):
        cached.cache_clear()


@pytest.mark.usefixtures("no_liboqs")
@pytest.mark.parametrize("name", ["ML-KEM-512", "FrodoKEM-640-AES", "HQC-128",
                                  "Classic-McEliece-348864"])
def test_liboqs_kem_without_liboqs_names_the_extra(name: str) -> None:
    with pytest.raises(BackendUnavailable, match=r"hybridkex\[oqs\]"):
        primitives.kem(name)


@pytest.mark.usefixtures("no_liboqs")
def test_liboqs_signature_without_liboqs_names_the_extra() -> None:
    with pytest.raises(BackendUnavailable, match="liboqs"):
        primitives.signature("SLH-DSA-SHA2-128s")


@pytest.mark.usefixtures("no_liboqs")
def test_without_the_library_oqs_is_never_imported() -> None:
    sys.modules.pop("oqs", None)
    assert oqs_backend.load() is None
    assert primitives.available()  # built-ins still listed
    assert "oqs" not in sys.modules


@pytest.mark.usefixtures("no_liboqs")
def test_available_lists_no_liboqs_algorithm_without_it() -> None:
    assert all(info.backend == "cryptography" for info in primitives.available())


def test_unknown_names_are_not_blamed_on_liboqs() -> None:
    with pytest.raises(UnknownAlgorithm):
        primitives.kem("ML-KEM-999")
    with pytest.raises(UnknownAlgorithm):
        primitives.signature("RSA-1024")


def test_find_liboqs_honours_oqs_install_path(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "liboqs.so").write_bytes(b"")
    monkeypatch.setenv("OQS_INSTALL_PATH", str(tmp_path))
    assert oqs_backend.find_liboqs() == str(lib / "liboqs.so")


needs_liboqs = pytest.mark.skipif(
    not HAVE_LIBOQS,
    reason="optional liboqs backend absent (liboqs shared library + pip install 'hybridkex[oqs]')",
)


@needs_liboqs
def test_liboqs_kem_round_trip() -> None:
    kem = primitives.kem("ML-KEM-512")
    public, private = kem.generate_keypair()
    secret, ciphertext = kem.encapsulate(public)
    assert kem.decapsulate(ciphertext, private) == secret


@needs_liboqs
def test_liboqs_signature_round_trip() -> None:
    scheme = primitives.signature("SLH-DSA-SHA2-128f")
    public, private = scheme.generate_keypair()
    sig = scheme.sign(private, b"m")
    assert scheme.verify(public, b"m", sig)
    assert not scheme.verify(public, b"n", sig)
