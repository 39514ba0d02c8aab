"""The SAE's side of ETSI GS QKD 014, without I/O: what each call sends, what its answer
means, and which typed error a failed exchange becomes.

:class:`~hybridkex.keydelivery.kme.client.KMEClient` (blocking, its own HTTP/1.1 over a
kept-alive TLS socket, :mod:`.http11`) and
:class:`~hybridkex.keydelivery.kme.aio_client.AsyncKMEClient` (asyncio, aiohttp) are two
transports around this module, so both build the same requests, check the same answers
and raise the same errors:

* :class:`KMEAuthenticationError` - the KME does not accept this SAE (401, or its
  client certificate was refused in the TLS handshake);
* :class:`KMERequestError` - any other refusal, with the HTTP status and the spec's
  Error body;
* :class:`KMEOutcomeUnknown` - the connection failed after a key request may have
  reached the KME.  enc_keys may then have taken keys that nobody will ever see, and
  dec_keys may have delivered keys that a second attempt would find already
  delivered, so neither is re-sent: the caller decides;
* :class:`KMEProtocolError` - the KME's answer is not HTTP/1.1 as the client accepts
  it (a malformed status line or header, no ``Content-Length``, a transfer coding);
  for a key request the KME may have served it, and it is not re-sent either;
* :class:`KMEKeySizeMismatch` - dec_keys named keys by ``key_ID`` alone with a
  ``size``, and the KME delivered keys of another size (they are delivered: the KME
  will not hand them out again);
* ``KeysExhausted`` (503), ``KeyNotAvailable`` (400 naming key IDs) and
  ``KeySourceError`` (transport, timeouts, malformed answers) from
  :mod:`hybridkex.keydelivery.errors`.

Only a call marked ``idempotent`` (Get status) may be sent again after its bytes left;
a key request is re-sent only when it failed before any of its bytes were written.
"""

from __future__ import annotations

import base64
import binascii
import json
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from hybridkex.errors import InvalidParameter
from hybridkex.keydelivery.errors import KeyNotAvailable, KeysExhausted, KeySourceError
from hybridkex.keydelivery.keys import UNIT_BITS, DeliveredKey, units_for
from hybridkex.keydelivery.kme.formats import EXT_SIZE, EXT_UNITS, KEY_ID_ERROR, KEYS_NOT_FOUND

__all__ = [
    "DEFAULT_CONNECTIONS",
    "MAX_RESPONSE_BYTES",
    "Call",
    "Endpoint",
    "KMEAuthenticationError",
    "KMEClientBase",
    "KMEKeySizeMismatch",
    "KMEOutcomeUnknown",
    "KMEProtocolError",
    "KMERequestError",
    "KMEStatus",
    "PeerSAEs",
    "client_ssl_context",
    "dec_keys_call",
    "decode_answer",
    "enc_keys_call",
    "status_call",
]

# How many connections the coroutines or threads sharing one client may open at once.
DEFAULT_CONNECTIONS = 4
# The largest answer read: 128 keys of 2048 bits in base64 with their IDs is ~60 KiB,
# so this only stops a broken or hostile KME from filling memory.
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


class KMEOutcomeUnknown(KeySourceError):
    """The connection failed after a key request may have reached the KME.

    The KME may have taken (enc_keys) or delivered (dec_keys) keys whose answer was
    lost.  The request is not re-sent: a second enc_keys would take further keys, and
    a second dec_keys would be refused for keys the first one delivered.  Keys lost
    this way are never delivered to anyone else.
    """


class KMEProtocolError(KeySourceError):
    """The KME's answer broke HTTP/1.1 as the client accepts it (see :mod:`.http11`).

    The request reached the KME, so a key request may have been served: like
    :class:`KMEOutcomeUnknown`, it is never re-sent, and ``in_doubt`` says whether keys
    may have been taken or delivered with the answer that could not be read.
    """

    def __init__(self, message: str, *, in_doubt: bool) -> None:
        super().__init__(message)
        self.in_doubt = in_doubt


class KMEKeySizeMismatch(KeySourceError):
    """dec_keys was answered with keys of another size than the caller's ``size``.

    A key of 256 bits is named by its ``key_ID`` alone, as ETSI GS QKD 014 names every
    key, and a KME that knows each key's size from its reservation delivers the key
    whatever size it has: the request carried no size to check.  The keys are then
    delivered, and the KME will not deliver them again, so this is not a
    ``KeyNotAvailable`` ("nothing was delivered").  Pass ``size=None`` to accept the
    size the key was reserved with; a size other than 256 travels in the
    ``key_ID_extension``, which this project's KME checks before it delivers anything.
    """


# -- where the KME is, and how to reach it --------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A KME's base URL, checked: ``https://host[:port][/prefix]``."""

    base_url: str
    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, base_url: str) -> Endpoint:
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise InvalidParameter("the KME URL must be https://host[:port][/prefix]")
        if parts.query or parts.fragment:
            raise InvalidParameter("the KME URL takes no query or fragment")
        try:
            port = parts.port or 443
        except ValueError:
            raise InvalidParameter("the KME URL has an invalid port") from None
        prefix = parts.path.rstrip("/")
        if not prefix.isascii() or any(c <= " " or c == "\x7f" for c in prefix):
            # it goes into every request line as it is
            raise InvalidParameter("the KME URL's path must be ASCII without spaces or "
                                   "control characters (percent-encode them)")
        return cls(base_url.rstrip("/"), parts.hostname, port, prefix)

    @property
    def host_header(self) -> str:
        """The Host header's value (RFC 9110 7.2): the port only when not 443."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 443 else f"{host}:{self.port}"

    # -- what a failed exchange becomes

    def failure(self, call: Call, exc: BaseException, *, sent: bool,
                timeout: float) -> KeySourceError:
        """The typed error for an exchange that failed with ``exc`` (an ``OSError``, an
        ``ssl.SSLError`` or the HTTP library's own); ``sent``: whether any byte of the
        request may have been written."""
        if isinstance(exc, TimeoutError):
            if sent and not call.idempotent:
                return KMEOutcomeUnknown(
                    f"the KME at {self.base_url} did not answer {call.name} within "
                    f"{timeout:g} s; it may have served the request, which is not re-sent")
            return KeySourceError(f"the KME at {self.base_url} did not answer within "
                                  f"{timeout:g} s")
        if isinstance(exc, ssl.SSLCertVerificationError):
            reason = getattr(exc, "verify_message", None) or exc
            return KeySourceError(f"cannot verify the KME at {self.base_url}: {reason}")
        in_doubt = sent and not call.idempotent
        if isinstance(exc, ssl.SSLError):
            reason = str(exc.reason or exc)
            if any(alert in reason.upper() for alert in _AUTH_ALERTS):
                return KMEAuthenticationError(
                    f"the KME at {self.base_url} refused the client certificate ({reason})")
            what = f"TLS failed: {reason}"
            if not in_doubt:
                return KeySourceError(f"TLS with the KME at {self.base_url} failed: {reason}")
        else:
            what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if in_doubt:
            return KMEOutcomeUnknown(
                f"the connection to the KME at {self.base_url} failed after {call.name} was "
                f"sent ({what}); it may have served the request, which is not re-sent")
        return KeySourceError(f"cannot reach the KME at {self.base_url}: {what}")

    def malformed(self, call: Call, reason: str) -> KMEProtocolError:
        """The typed error for an answer that is not HTTP/1.1 as the client accepts it."""
        in_doubt = not call.idempotent
        doubt = (f"; it may have served {call.name}, which is not re-sent" if in_doubt
                 else "")
        return KMEProtocolError(f"the KME at {self.base_url} sent a malformed answer: "
                                f"{reason}{doubt}", in_doubt=in_doubt)

    def too_large(self) -> KeySourceError:
        return KeySourceError(f"the answer of the KME at {self.base_url} is too large")

    def busy(self, connections: int, timeout: float) -> KeySourceError:
        return KeySourceError(f"all {connections} connection(s) to the KME at {self.base_url} "
                              f"stayed busy for {timeout:g} s")


def check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise InvalidParameter("timeout must be a positive number of seconds")
    return float(timeout)


def check_connections(connections: int) -> int:
    if isinstance(connections, bool) or not isinstance(connections, int) or connections < 1:
        raise InvalidParameter("connections must be a positive int")
    return connections


def client_ssl_context(cert: str | Path, key: str | Path, ca: str | Path, *,
                       holder: str = "SAE") -> ssl.SSLContext:
    """The client's side of mutual TLS with a KME: verify the KME against ``ca``, present
    ``cert``.  ``holder`` names whose certificate it is in errors: an SAE's, or a KME's
    when it sends reservations to its peer KMEs (:mod:`.peers`)."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    except (OSError, ValueError) as exc:
        raise InvalidParameter(f"cannot load the CA certificate {ca}: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key), password=b"")
    except (OSError, ValueError) as exc:
        raise InvalidParameter(f"cannot load the {holder} certificate {cert} with key {key}: "
                               f"{exc}") from None
    return ctx


class KMEClientBase:
    """What both clients take and check alike: the KME's base URL, the time-out, how many
    connections may be open at once, and the SAE's side of mutual TLS."""

    def __init__(self, base_url: str, cert: str | Path, key: str | Path, ca: str | Path, *,
                 timeout: float = 10.0, connections: int = DEFAULT_CONNECTIONS) -> None:
        self._endpoint = Endpoint.parse(base_url)
        self.base_url = self._endpoint.base_url
        self.timeout = check_timeout(timeout)
        self.connections = check_connections(connections)
        self._ssl = client_ssl_context(cert, key, ca)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"


class PeerSAEs:
    """The key sources' map from the peer identifier a session uses to the peer's SAE
    ID; without one (``None``) the peer identifier *is* the SAE ID."""

    def __init__(self, peers: Mapping[str, str] | None = None) -> None:
        self.peers = dict(peers) if peers is not None else None

    def sae_of(self, peer: str) -> str:
        if self.peers is None:
            return peer
        try:
            return self.peers[peer]
        except KeyError:
            raise KeySourceError(f"no SAE ID is configured for peer {peer!r}") from None


# -- the three calls of clause 5 -------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request: ``name`` for messages, and whether it may be sent twice."""

    name: str
    method: str
    path: str
    body: bytes | None
    idempotent: bool
    refs: tuple[tuple[str, ...], ...] = ()  # dec_keys: the unit IDs asked for, per key
    number: int = 0
    size: int | None = UNIT_BITS  # dec_keys: None takes each key's size from the KME

    @property
    def headers(self) -> dict[str, str]:
        if self.body is None:
            return {"Accept": "application/json"}
        return {"Accept": "application/json", "Content-Type": "application/json"}


def _path_segment(sae_id: str) -> str:
    if not isinstance(sae_id, str) or not sae_id or sae_id in (".", ".."):
        raise InvalidParameter("an SAE ID must be a non-empty string other than '.' and '..'")
    return quote(sae_id, safe="")


def _json(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body).encode("utf-8")


def status_call(slave_sae: str) -> Call:
    """Get status (clause 5.2): what this (master) SAE can obtain for ``slave_sae``."""
    return Call("status", "GET", f"/api/v1/keys/{_path_segment(slave_sae)}/status", None,
                idempotent=True)


def enc_keys_call(slave_sae: str, number: int, size: int) -> Call:
    """Get key (clause 5.3, POST): ``number`` new keys of ``size`` bits for ``slave_sae``."""
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise InvalidParameter("number must be a positive int")
    units_for(size)
    return Call("enc_keys", "POST", f"/api/v1/keys/{_path_segment(slave_sae)}/enc_keys",
                _json({"number": number, "size": size}), idempotent=False, number=number,
                size=size)


def dec_keys_call(master_sae: str, key_ids: Sequence[str | Sequence[str]],
                  size: int | None = None) -> Call:
    """Get key with key IDs (clause 5.4, POST).

    ``size=None``: each key is named by its ``key_ID`` alone and comes back with the
    size the KME reserved it with, as clause 5.4 has it (the slave need not know the
    size).  A key named by several unit IDs needs its size: sent without it, a wrong
    unit list could only be found out after the KME delivered the key.  With a
    ``size``, each entry names that size's units, and keys of other than 256 bits
    carry ``key_ID_extension``, which the KME checks before it delivers anything.
    """
    units = None if size is None else units_for(size)
    if isinstance(key_ids, str) or not isinstance(key_ids, Sequence) or not key_ids:
        raise InvalidParameter("key_ids must be a non-empty sequence of key IDs")
    entries: list[dict[str, Any]] = []
    refs: list[tuple[str, ...]] = []
    for ref in key_ids:
        ids = (ref,) if isinstance(ref, str) else tuple(ref)
        if not ids or not all(isinstance(i, str) for i in ids):
            raise KeyNotAvailable("each entry of key_ids must be a key ID or a key's unit IDs")
        if units is None and len(ids) != 1:
            raise KeyNotAvailable(f"a key named by {len(ids)} unit IDs needs its size: pass "
                                  "size, or name the key by its key_ID alone")
        if units is not None and len(ids) != units:
            raise KeyNotAvailable(f"a key of {size} bits is made of {units} stored keys, "
                                  f"the request names {len(ids)}")
        entry: dict[str, Any] = {"key_ID": ids[0]}
        if size is not None and size != UNIT_BITS:
            entry["key_ID_extension"] = {EXT_SIZE: size, EXT_UNITS: list(ids[1:])}
        entries.append(entry)
        refs.append(ids)
    return Call("dec_keys", "POST", f"/api/v1/keys/{_path_segment(master_sae)}/dec_keys",
                _json({"key_IDs": entries}), idempotent=False, refs=tuple(refs), size=size)


# -- what an answer means -----------------------------------------------------------------------


def decode_answer(raw: bytes) -> Any:
    """A KME's answer body as JSON, or None when it is empty or not JSON (any bytes)."""
    if not raw:
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: deep nesting
        return None


def decode(call: Call, status: int, raw: bytes) -> Any:
    """The JSON of a 200 answer; any other status as its typed error."""
    decoded = decode_answer(raw)
    if status == 200:
        if decoded is None:
            raise KeySourceError(f"the KME's answer to {call.method} {call.path} is not JSON")
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
    if status == 400 and (message == KEYS_NOT_FOUND or any(KEY_ID_ERROR in d for d in details)):
        raise KeyNotAvailable(f"the KME refused the key IDs: {message}")
    raise KMERequestError(status, message, details)


def answer(call: Call, status: int, raw: bytes) -> Any:
    """What ``call`` returns, from the KME's HTTP status and body: a :class:`KMEStatus`
    or a list of :class:`DeliveredKey`, checked against what was asked."""
    body = decode(call, status, raw)
    if call.name == "status":
        return KMEStatus.from_json(body)
    keys = parse_keys(body)
    if call.name == "enc_keys":
        if len(keys) != call.number or any(k.size_bits != call.size for k in keys):
            raise KeySourceError("the KME returned other keys than were requested")
        if len({i for k in keys for i in k.ids}) != sum(len(k.ids) for k in keys):
            raise KeySourceError("the KME returned a key ID twice")
        return keys
    by_id = {k.key_id.lower(): k for k in keys}
    try:
        ordered = [by_id[ids[0].lower()] for ids in call.refs]
    except KeyError:
        raise KeySourceError("the KME returned other keys than were requested") from None
    if len(by_id) != len(call.refs) or any(
            len(ids) > 1 and [i.lower() for i in ids] != [i.lower() for i in k.ids]
            for ids, k in zip(call.refs, ordered, strict=True)):
        raise KeySourceError("the KME returned other keys than were requested")
    if call.size is not None:
        sizes = sorted({k.size_bits for k in ordered if k.size_bits != call.size})
        if sizes:
            raise KMEKeySizeMismatch(
                f"the KME delivered key(s) of {', '.join(map(str, sizes))} bits for a request "
                f"of {call.size}-bit keys; they are delivered and will not be delivered "
                "again (pass size=None to take each key at the size it was reserved with)")
    return ordered


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


def parse_keys(body: Any) -> list[DeliveredKey]:
    """The Key container data format (clause 6.3) as DeliveredKeys."""
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
