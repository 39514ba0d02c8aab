"""The one module that touches pyOpenSSL's untyped cffi bindings (``OpenSSL._util``).

pyOpenSSL has no typed call for what :mod:`hybridkex.tls` needs beyond a plain TLS
connection: the key-exchange group list, the TLS 1.3 ciphersuite list, the signature
algorithm list, a private key that ``PKey`` refuses (ML-DSA), TLS 1.3 external PSKs,
a message callback (for the CertificateVerify signature scheme and alerts), and
``SSL_session_reused``.  Everything here takes and returns typed Python values; the
``lib`` and ``ffi`` objects never leave this module.

Callbacks are set once per ``SSL_CTX`` (the bindings expose no per-``SSL`` variant),
so they find the connection they serve through :data:`_HOOKS`, keyed by the ``SSL``
pointer's address and holding each connection's :class:`ConnectionHooks` weakly.  The
cffi callback objects live in :class:`ContextCallbacks`, which the owning
``SSL.Context`` keeps (and every ``SSL.Connection`` keeps its context), so they outlive
every connection that can call them.  A callback never lets an exception escape into
OpenSSL: it records it on the connection's hooks and answers "fail the handshake".
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Protocol

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib_any

__all__ = [
    "VERIFY_NAME_MISMATCH",
    "VERIFY_REFUSED",
    "VERIFY_UNSUPPORTED",
    "ConnectionHooks",
    "ContextCallbacks",
    "install_callbacks",
    "register",
    "session_reused",
    "set_ciphersuites",
    "set_groups",
    "set_signature_algorithms",
    "use_private_key_pem",
]

_lib: Any = _lib_any

_SSL3_RT_ALERT = 21
_SSL3_RT_HANDSHAKE = 22

VERIFY_NAME_MISMATCH: int = _lib.X509_V_ERR_HOSTNAME_MISMATCH
VERIFY_UNSUPPORTED: int = _lib.X509_V_ERR_INVALID_PURPOSE
VERIFY_REFUSED: int = _lib.X509_V_ERR_APPLICATION_VERIFICATION


class ConnectionHooks(Protocol):
    """What a connection answers when OpenSSL calls back during its handshake."""

    def client_psk(self) -> tuple[bytes, bytes]:
        """(identity, key) for the client's external PSK; raises to fail the handshake."""
        ...

    def server_psk(self, identity: bytes) -> bytes:
        """The key for the PSK ``identity`` a client offered; raises to fail the handshake."""
        ...

    def callback_failed(self, exc: BaseException) -> None:
        """A callback raised ``exc``; the handshake is being failed."""
        ...

    def handshake_message(self, sent: bool, message: bytes) -> None:
        """A whole handshake message (type, length, body) as sent or received."""
        ...

    def alert(self, sent: bool, level: int, description: int) -> None:
        ...

    def verify_certificate(self, der: bytes, depth: int, ok: bool, error: int,
                           error_text: str) -> int | None:
        """OpenSSL's verdict on one certificate of the peer's chain (``ok``; if not, its
        ``error`` and ``error_text``), leaf at depth 0.  None to accept, or the X509_V_ERR
        code to fail with (it decides the alert: :data:`VERIFY_NAME_MISMATCH` gives
        bad_certificate, :data:`VERIFY_UNSUPPORTED` unsupported_certificate)."""
        ...

    def keep(self, obj: object) -> None:
        """Hold ``obj`` (a buffer OpenSSL points into) for the connection's lifetime."""
        ...


_HOOKS: weakref.WeakValueDictionary[int, ConnectionHooks] = weakref.WeakValueDictionary()
_HOOKS_LOCK = threading.Lock()


def _address(ssl: Any) -> int:
    return int(_ffi.cast("uintptr_t", ssl))


def register(conn: SSL.Connection, hooks: ConnectionHooks) -> None:
    """Route the context callbacks for ``conn`` to ``hooks`` (held weakly: the caller owns
    them, and they must live as long as the connection can still call back)."""
    with _HOOKS_LOCK:
        _HOOKS[_address(conn._ssl)] = hooks


def _hooks_for(ssl: Any) -> ConnectionHooks | None:
    with _HOOKS_LOCK:
        return _HOOKS.get(_address(ssl))


# -- context settings -------------------------------------------------------------------


def set_groups(ctx: SSL.Context, names: list[str]) -> bool:
    """Restrict key exchange to ``names`` (OpenSSL group names, in preference order);
    False if this OpenSSL does not know one of them.  SSL_CTX_set1_curves_list is
    SSL_CTX_set1_groups_list under its old name."""
    return bool(_lib.SSL_CTX_set1_curves_list(ctx._context, ":".join(names).encode("ascii")) == 1)


def set_ciphersuites(ctx: SSL.Context, names: list[str]) -> bool:
    """The TLS 1.3 ciphersuites, by their RFC 8446 names."""
    return bool(_lib.SSL_CTX_set_ciphersuites(ctx._context, ":".join(names).encode("ascii")) == 1)


def set_signature_algorithms(ctx: SSL.Context, names: list[str]) -> bool:
    """The signature schemes offered and accepted (TLS 1.3 names: mldsa65, ed25519, ...)."""
    return bool(_lib.SSL_CTX_set1_sigalgs_list(ctx._context, ":".join(names).encode("ascii"))
                == 1)


def use_private_key_pem(ctx: SSL.Context, pem: bytes) -> None:
    """Install an unencrypted PKCS#8 PEM private key from memory.

    pyOpenSSL's ``use_privatekey`` refuses ML-DSA keys (``PKey.from_cryptography_key``
    knows no ML-DSA), and its PEM loader is deprecated; OpenSSL's own PEM reader takes
    every key type, from a memory buffer, so the key never has to be written to a file.
    """
    bio = _lib.BIO_new_mem_buf(pem, len(pem))
    if bio == _ffi.NULL:
        raise MemoryError("BIO_new_mem_buf failed")
    try:
        pkey = _lib.PEM_read_bio_PrivateKey(bio, _ffi.NULL, _ffi.NULL, _ffi.NULL)
    finally:
        _lib.BIO_free(bio)
    if pkey == _ffi.NULL:
        _lib.ERR_clear_error()
        raise ValueError("OpenSSL cannot read this private key")
    try:
        if _lib.SSL_CTX_use_PrivateKey(ctx._context, pkey) != 1:
            _lib.ERR_clear_error()
            raise ValueError("OpenSSL refused this private key")
    finally:
        _lib.EVP_PKEY_free(pkey)  # the context holds its own reference


def session_reused(conn: SSL.Connection) -> bool:
    """SSL_session_reused: in TLS 1.3, True when the handshake used a PSK."""
    return bool(_lib.SSL_session_reused(conn._ssl) == 1)


# -- callbacks ---------------------------------------------------------------------------


def _certificate_der(cert: Any) -> bytes:
    bio = _lib.BIO_new(_lib.BIO_s_mem())
    if bio == _ffi.NULL:
        raise MemoryError("BIO_new failed")
    try:
        if _lib.i2d_X509_bio(bio, cert) != 1:
            _lib.ERR_clear_error()
            raise ValueError("a certificate does not encode")
        data = _ffi.new("char **")
        length = _lib.BIO_get_mem_data(bio, data)
        return bytes(_ffi.buffer(data[0], length))
    finally:
        _lib.BIO_free(bio)


def _psk_session(ssl: Any, key: bytes, cipher_id: bytes) -> Any:
    """A new SSL_SESSION carrying ``key`` as a TLS 1.3 external PSK bound to the
    ciphersuite ``cipher_id`` (whose hash is the PSK's hash).  Ownership passes to
    OpenSSL once the callback returns it."""
    cipher = _lib.SSL_CIPHER_find(ssl, cipher_id)
    if cipher == _ffi.NULL:
        raise RuntimeError("OpenSSL does not know the PSK's ciphersuite")
    session = _lib.Cryptography_SSL_SESSION_new()
    if session == _ffi.NULL:
        raise MemoryError("SSL_SESSION_new failed")
    buffer = _ffi.new("unsigned char[]", key)
    try:
        if (_lib.SSL_SESSION_set1_master_key(session, buffer, len(key)) != 1
                or _lib.SSL_SESSION_set_cipher(session, cipher) != 1
                or _lib.SSL_SESSION_set_protocol_version(session, _lib.TLS1_3_VERSION) != 1):
            _lib.SSL_SESSION_free(session)
            _lib.ERR_clear_error()
            raise RuntimeError("OpenSSL refused to build the PSK session")
    finally:
        _ffi.memmove(buffer, b"\x00" * len(key), len(key))  # OpenSSL keeps its own copy
    return session


class ContextCallbacks:
    """The cffi callbacks installed on one SSL_CTX.  Keep this object as long as the
    context (``SSL.Context``) lives."""

    def __init__(self, psk_cipher_id: bytes | None) -> None:
        self._cipher_id = psk_cipher_id
        self.msg = _ffi.callback("void(int, int, int, void *, size_t, SSL *, void *)",
                                 self._on_message)
        self.use_session = _ffi.callback(
            "int(SSL *, EVP_MD *, unsigned char **, size_t *, SSL_SESSION **)",
            self._on_use_session, error=0)
        self.find_session = _ffi.callback(
            "int(SSL *, unsigned char *, size_t, SSL_SESSION **)",
            self._on_find_session, error=0)
        self.verify = _ffi.callback("int(int, X509_STORE_CTX *)", self._on_verify, error=0)

    def _on_verify(self, preverify_ok: int, store: Any) -> int:
        ssl = _lib.X509_STORE_CTX_get_ex_data(store, _lib.SSL_get_ex_data_X509_STORE_CTX_idx())
        hooks = _hooks_for(ssl)
        if hooks is None:
            return 0
        try:
            error = int(_lib.X509_STORE_CTX_get_error(store))
            text = _ffi.string(_lib.X509_verify_cert_error_string(error)).decode(
                "ascii", "replace")
            verdict = hooks.verify_certificate(
                _certificate_der(_lib.X509_STORE_CTX_get_current_cert(store)),
                int(_lib.X509_STORE_CTX_get_error_depth(store)), bool(preverify_ok), error, text)
        except BaseException as exc:
            hooks.callback_failed(exc)
            verdict = VERIFY_REFUSED
        if verdict is None and preverify_ok:
            return 1
        if verdict is not None:
            _lib.X509_STORE_CTX_set_error(store, verdict)
        return 0

    def _on_message(self, write_p: int, version: int, content_type: int, buf: Any,
                    length: int, ssl: Any, arg: Any) -> None:
        if content_type not in (_SSL3_RT_HANDSHAKE, _SSL3_RT_ALERT):
            return
        try:
            hooks = _hooks_for(ssl)
            if hooks is None:
                return
            data = bytes(_ffi.buffer(buf, length))
            if content_type == _SSL3_RT_ALERT:
                if len(data) == 2:
                    hooks.alert(bool(write_p), data[0], data[1])
            else:
                hooks.handshake_message(bool(write_p), data)
        except Exception:  # noqa: S110 - an observer must never break the handshake
            pass

    def _on_use_session(self, ssl: Any, md: Any, id_out: Any, idlen_out: Any,
                        sess_out: Any) -> int:
        hooks = _hooks_for(ssl)
        if hooks is None or self._cipher_id is None:
            return 0
        try:
            # Called again after a HelloRetryRequest (then with md set to the chosen
            # suite's hash): the hooks hand out the same key and identity both times.
            identity, key = hooks.client_psk()
            session = _psk_session(ssl, key, self._cipher_id)
        except BaseException as exc:
            hooks.callback_failed(exc)
            return 0
        buffer = _ffi.new("unsigned char[]", identity)
        hooks.keep(buffer)  # OpenSSL copies it, but may read it until the callback returns
        id_out[0] = buffer
        idlen_out[0] = len(identity)
        sess_out[0] = session
        return 1

    def _on_find_session(self, ssl: Any, identity: Any, length: int, sess_out: Any) -> int:
        # Returning 1 with no session would let the handshake go on without the PSK;
        # every failure here returns 0 instead, which fails the handshake.
        hooks = _hooks_for(ssl)
        if hooks is None or self._cipher_id is None:
            return 0
        try:
            key = hooks.server_psk(bytes(_ffi.buffer(identity, length)))
            sess_out[0] = _psk_session(ssl, key, self._cipher_id)
        except BaseException as exc:
            hooks.callback_failed(exc)
            return 0
        return 1


def install_callbacks(ctx: SSL.Context, *, psk_cipher_id: bytes | None, client: bool,
                      verify_mode: int) -> ContextCallbacks:
    """Install the message callback, the certificate verification callback with
    ``verify_mode`` (SSL.VERIFY_*), and with ``psk_cipher_id`` the PSK callback of the
    role (``client``: use-session; server: find-session).  Returns the callbacks, which
    the caller keeps with the context."""
    callbacks = ContextCallbacks(psk_cipher_id)
    _lib.SSL_CTX_set_msg_callback(ctx._context, callbacks.msg)
    _lib.SSL_CTX_set_verify(ctx._context, verify_mode, callbacks.verify)
    if psk_cipher_id is not None:
        if client:
            _lib.SSL_CTX_set_psk_use_session_callback(ctx._context, callbacks.use_session)
        else:
            _lib.SSL_CTX_set_psk_find_session_callback(ctx._context, callbacks.find_session)
    return callbacks
