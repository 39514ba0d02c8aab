"""An ETSI GS QKD 014 V1.1.1 client (an SAE talking to its KME), standard library only.

HTTPS with mutual TLS through :mod:`http.client` and :mod:`ssl`: the client presents its
SAE certificate (whose subject common name is its SAE ID) and checks the KME's
certificate against ``ca`` and the host name in ``base_url``.  Each call opens its own
connection, so one client may be shared between threads.

Keys come back as :class:`~hybridkex.keydelivery.DeliveredKey`, exactly as the key
store hands them out: for a key of other than 256 bits, ``extension`` holds the IDs of
its further 256-bit units (hybridkex's ``key_ID_extension``, see docs/kme.md), and the
slave side passes ``key.ids`` back to :meth:`KMEClient.get_keys_with_ids`.

Errors are the key store's: :class:`~hybridkex.keydelivery.KeyNotAvailable` (400 about
the key IDs: unknown, already delivered, malformed), :class:`~hybridkex.keydelivery.
KeysExhausted` (503), :class:`KMEAuthenticationError` (401, or the KME refusing the
client certificate), :class:`KMERequestError` (any other refusal) and
:class:`~hybridkex.keydelivery.KeySourceError` (transport, timeouts, malformed answers).
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from hybridkex.errors import InvalidParameter
from hybridkex.keydelivery.errors import KeyNotAvailable, KeysExhausted, KeySourceError
from hybridkex.keydelivery.keys import UNIT_BITS, DeliveredKey, KeyRef, units_for
from hybridkex.keydelivery.kme.formats import EXT_SIZE, EXT_UNITS, KEY_ID_ERROR, KEYS_NOT_FOUND

__all__ = [
    "KMEAuthenticationError",
    "KMEClient",
    "KMEKeySource",
    "KMERequestError",
    "KMEStatus",
    "decode_answer",
    "delivered_keys",
]

MAX_RESPONSE_BYTES = 8 * 1024 * 1024
_AUTH_ALERTS = ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_REQUIRED", "CERTIFICATE_UNKNOWN",
                "CERTIFICATE_REVOKED", "CERTIFICATE_EXPIRED", "UNSUPPORTED_CERTIFICATE",
                "ACCESS_DENIED")


class KMEAuthenticationError(KeySourceError):
    """The KME does not accept this SAE: 401, or its client certificate was refused."""


class KMERequestError(KeySourceError):
    """The KME refused the request for another reason (e.g. a size it does not deliver)."""

    def __init__(self, status: int, message: str,
                 details: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(f"KME answered {status}: {message}")
        self.status = status
        self.message = message
        self.details = [dict(d) for d in details]


@dataclass(frozen=True)
class KMEStatus:
    """The Status data format (clause 6.1), with the spec's members in snake case."""

    source_kme_id: str
    target_kme_id: str
    master_sae_id: str
    slave_sae_id: str
    key_size: int
    stored_key_count: int
    max_key_count: int
    max_key_per_request: int
    max_key_size: int
    min_key_size: int
    max_sae_id_count: int
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, body: Any) -> KMEStatus:
        if not isinstance(body, dict):
            raise KeySourceError("the KME's status is not a JSON object")
        strings = ("source_KME_ID", "target_KME_ID", "master_SAE_ID", "slave_SAE_ID")
        ints = ("key_size", "stored_key_count", "max_key_count", "max_key_per_request",
                "max_key_size", "min_key_size", "max_SAE_ID_count")
        for name in strings:
            if not isinstance(body.get(name), str):
                raise KeySourceError(f"the KME's status lacks {name}")
        for name in ints:
            value = body.get(name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise KeySourceError(f"the KME's status lacks {name}")
        return cls(
            source_kme_id=body["source_KME_ID"], target_kme_id=body["target_KME_ID"],
            master_sae_id=body["master_SAE_ID"], slave_sae_id=body["slave_SAE_ID"],
            key_size=body["key_size"], stored_key_count=body["stored_key_count"],
            max_key_count=body["max_key_count"], max_key_per_request=body["max_key_per_request"],
            max_key_size=body["max_key_size"], min_key_size=body["min_key_size"],
            max_sae_id_count=body["max_SAE_ID_count"], raw=dict(body))


def _path_segment(sae_id: str) -> str:
    if not isinstance(sae_id, str) or not sae_id or sae_id in (".", ".."):
        raise InvalidParameter("an SAE ID must be a non-empty string other than '.' and '..'")
    return quote(sae_id, safe="")


class KMEClient:
    """An SAE's connection details to its KME: ``KMEClient(base_url, cert, key, ca)``."""

    def __init__(self, base_url: str, cert: str | Path, key: str | Path, ca: str | Path, *,
                 timeout: float = 10.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise InvalidParameter("the KME URL must be https://host[:port][/prefix]")
        if parts.query or parts.fragment:
            raise InvalidParameter("the KME URL takes no query or fragment")
        try:
            port = parts.port or 443
        except ValueError:
            raise InvalidParameter("the KME URL has an invalid port") from None
        if not timeout > 0:
            raise InvalidParameter("timeout must be positive")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._host = parts.hostname
        self._port = port
        self._prefix = parts.path.rstrip("/")
        self._ssl = self._context(cert, key, ca)

    @staticmethod
    def _context(cert: str | Path, key: str | Path, ca: str | Path) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
        except (OSError, ValueError) as exc:
            raise InvalidParameter(f"cannot load the CA certificate {ca}: {exc}") from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(str(cert), str(key), password=b"")
        except (OSError, ValueError) as exc:
            raise InvalidParameter(f"cannot load the SAE certificate {cert} with key {key}: "
                                   f"{exc}") from None
        return ctx

    def __repr__(self) -> str:
        return f"KMEClient({self.base_url!r})"

    # -- the three methods of clause 5

    def status(self, slave_sae: str) -> KMEStatus:
        """Get status (clause 5.2): what this (master) SAE can obtain for ``slave_sae``."""
        body = self._call("GET", f"/api/v1/keys/{_path_segment(slave_sae)}/status", None)
        return KMEStatus.from_json(body)

    def get_keys(self, slave_sae: str, number: int = 1,
                 size: int = UNIT_BITS) -> list[DeliveredKey]:
        """Get key (clause 5.3, POST): ``number`` new keys of ``size`` bits for ``slave_sae``."""
        if not isinstance(number, int) or isinstance(number, bool) or number < 1:
            raise InvalidParameter("number must be a positive int")
        units_for(size)
        body = self._call("POST", f"/api/v1/keys/{_path_segment(slave_sae)}/enc_keys",
                          {"number": number, "size": size})
        keys = self._keys(body)
        if len(keys) != number or any(k.size_bits != size for k in keys):
            raise KeySourceError("the KME returned other keys than were requested")
        if len({i for k in keys for i in k.ids}) != sum(len(k.ids) for k in keys):
            raise KeySourceError("the KME returned a key ID twice")
        return keys

    def get_keys_with_ids(self, master_sae: str, key_ids: Sequence[str | Sequence[str]],
                          size: int = UNIT_BITS) -> list[DeliveredKey]:
        """Get key with key IDs (clause 5.4, POST): the keys ``master_sae`` obtained.

        ``key_ids`` as :meth:`KeyStore.fetch` takes them: a key ID, or the sequence of
        unit IDs of a key (``DeliveredKey.ids``); ``size`` is the keys' size in bits.
        """
        units = units_for(size)
        if isinstance(key_ids, str) or not isinstance(key_ids, Sequence) or not key_ids:
            raise InvalidParameter("key_ids must be a non-empty sequence of key IDs")
        entries: list[dict[str, Any]] = []
        refs: list[tuple[str, ...]] = []
        for ref in key_ids:
            ids = (ref,) if isinstance(ref, str) else tuple(ref)
            if len(ids) != units or not all(isinstance(i, str) for i in ids):
                raise KeyNotAvailable(f"a key of {size} bits is made of {units} stored keys, "
                                      f"the request names {len(ids)}")
            entry: dict[str, Any] = {"key_ID": ids[0]}
            if size != UNIT_BITS:
                entry["key_ID_extension"] = {EXT_SIZE: size, EXT_UNITS: list(ids[1:])}
            entries.append(entry)
            refs.append(ids)
        body = self._call("POST", f"/api/v1/keys/{_path_segment(master_sae)}/dec_keys",
                          {"key_IDs": entries})
        by_id = {k.key_id.lower(): k for k in self._keys(body)}
        try:
            keys = [by_id[ids[0].lower()] for ids in refs]
        except KeyError:
            raise KeySourceError("the KME returned other keys than were requested") from None
        if len(by_id) != len(refs) or any(k.size_bits != size for k in keys):
            raise KeySourceError("the KME returned other keys than were requested")
        return keys

    # -- plumbing

    def _keys(self, body: Any) -> list[DeliveredKey]:
        return delivered_keys(body)

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None) -> Any:
        status, raw = self._exchange(method, self._prefix + path, body)
        decoded = decode_answer(raw)
        if status == 200:
            if decoded is None:
                raise KeySourceError(f"the KME's answer to {method} {path} is not JSON")
            return decoded
        message = f"HTTP {status}"
        details: list[Mapping[str, Any]] = []
        if isinstance(decoded, dict):
            if isinstance(decoded.get("message"), str):
                message = decoded["message"]
            if isinstance(decoded.get("details"), list):
                details = [d for d in decoded["details"] if isinstance(d, dict)]
        if status == 401:
            raise KMEAuthenticationError(f"the KME refused this SAE: {message}")
        if status == 503:
            raise KeysExhausted(f"the KME cannot deliver: {message}")
        if status == 400 and (message == KEYS_NOT_FOUND
                              or any(KEY_ID_ERROR in d for d in details)):
            raise KeyNotAvailable(f"the KME refused the key IDs: {message}")
        raise KMERequestError(status, message, details)

    def _exchange(self, method: str, path: str,
                  body: Mapping[str, Any] | None) -> tuple[int, bytes]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                           context=self._ssl)
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read(MAX_RESPONSE_BYTES + 1)
            if len(raw) > MAX_RESPONSE_BYTES:
                raise KeySourceError("the KME's answer is too large")
            return response.status, raw
        except ssl.SSLCertVerificationError as exc:
            raise KeySourceError(f"cannot verify the KME at {self.base_url}: "
                                 f"{exc.verify_message}") from None
        except ssl.SSLError as exc:
            reason = str(exc.reason or exc)
            if any(alert in reason.upper() for alert in _AUTH_ALERTS):
                raise KMEAuthenticationError(
                    f"the KME at {self.base_url} refused the client certificate ({reason})"
                ) from None
            raise KeySourceError(f"TLS with the KME at {self.base_url} failed: {reason}") from None
        except TimeoutError:
            raise KeySourceError(f"the KME at {self.base_url} did not answer within "
                                 f"{self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise KeySourceError(f"cannot reach the KME at {self.base_url}: "
                                 f"{type(exc).__name__}: {exc}") from None
        finally:
            conn.close()


def decode_answer(raw: bytes) -> Any:
    """A KME's answer body as JSON, or None when it is empty or not JSON (any bytes)."""
    if not raw:
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: deep nesting
        return None


def delivered_keys(body: Any) -> list[DeliveredKey]:
    """The Key container data format (clause 6.3) as DeliveredKeys; anything else in
    ``body`` raises :class:`~hybridkex.keydelivery.KeySourceError`."""
    if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
        raise KeySourceError("the KME's answer is not a key container")
    keys: list[DeliveredKey] = []
    for entry in body["keys"]:
        if not isinstance(entry, dict):
            raise KeySourceError("the KME's key container holds a non-object")
        key_id, encoded = entry.get("key_ID"), entry.get("key")
        if not isinstance(key_id, str) or not isinstance(encoded, str):
            raise KeySourceError("a key in the KME's answer lacks key_ID or key")
        try:
            material = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise KeySourceError("a key in the KME's answer is not base64") from None
        extension: tuple[str, ...] = ()
        ext = entry.get("key_ID_extension")
        if isinstance(ext, dict) and EXT_UNITS in ext:
            units = ext.get(EXT_UNITS)
            if not isinstance(units, list) or not all(isinstance(u, str) for u in units):
                raise KeySourceError("a key's key_ID_extension is malformed")
            extension = tuple(units)
            if ext.get(EXT_SIZE) != len(material) * 8:
                raise KeySourceError("a key's size does not match its key_ID_extension")
        if not material:
            raise KeySourceError("a key in the KME's answer is empty")
        keys.append(DeliveredKey(key_id, material, len(material) * 8, extension))
    return keys


class KMEKeySource:
    """A :class:`KeySource` over an ETSI GS QKD 014 KME.

    ``peers`` maps the peer identifier the session uses to the peer's SAE ID; without
    it (``None``) the peer identifier *is* the SAE ID.  ``take`` is Get key for that
    slave SAE, ``fetch`` Get key with key IDs from that master SAE.
    """

    def __init__(self, client: KMEClient, peers: Mapping[str, str] | None = None) -> None:
        self.client = client
        self.peers = dict(peers) if peers is not None else None

    def sae_of(self, peer: str) -> str:
        if self.peers is None:
            return peer
        try:
            return self.peers[peer]
        except KeyError:
            raise KeySourceError(f"no SAE ID is configured for peer {peer!r}") from None

    def take(self, peer: str, count: int = 1, size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        return self.client.get_keys(self.sae_of(peer), count, size_bits)

    def fetch(self, peer: str, key_ids: Sequence[KeyRef],
              size_bits: int = UNIT_BITS) -> list[DeliveredKey]:
        return self.client.get_keys_with_ids(self.sae_of(peer), key_ids, size_bits)

    def __repr__(self) -> str:
        return f"KMEKeySource({self.client!r})"
