"""The HTTP/1.1 an SAE speaks with its KME, without I/O: one request out, one answer in.

:class:`~hybridkex.keydelivery.kme.client.KMEClient` sends its requests over a
kept-alive TLS socket of its own instead of :mod:`http.client`, whose generality (header
parsing through :mod:`email`, chunked bodies, informational answers) cost three
quarters of the client's CPU per request.  This module is the whole of that HTTP: it
turns a request into the bytes of one write and reads the KME's answer from the bytes
it is fed, and it knows nothing of sockets, threads or clocks.

It is strict on purpose, because a KME's answer carries keys and nothing in ETSI GS
QKD 014 needs more than this:

* the status line is ``HTTP/1.1 NNN reason`` (or ``HTTP/1.0``), with a final status
  (200-599); an informational answer (1xx) is refused, as the client never asks for one;
* header lines are ``name: value`` with a token for a name; a folded line, a bare CR or
  LF, a head over :data:`MAX_HEAD_BYTES` or more than :data:`MAX_HEADERS` lines are
  refused;
* the body is exactly ``Content-Length`` bytes (one value, digits only, at most the
  reader's ``max_body``); an answer without it, with any ``Transfer-Encoding`` (chunked
  included) or with a ``Content-Encoding`` other than ``identity`` is refused;
* the connection is kept only for an HTTP/1.1 answer without ``Connection: close``
  that ended exactly where its body did: bytes after it (a second answer nobody asked
  for) leave the answer valid but the connection unused from then on.

What is wrong raises :class:`BadAnswer` (``too_large`` when only the size is); the
client turns it into its typed errors, naming the KME.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_HEADERS", "MAX_HEAD_BYTES", "Answer", "AnswerReader", "BadAnswer",
           "encode_request"]

MAX_HEAD_BYTES = 16 * 1024
"""The longest status line and headers read: a KME's are a few hundred bytes."""
MAX_HEADERS = 64
"""The most header lines an answer may carry."""

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_DIGITS = re.compile(rb"[0-9]{1,19}")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


class BadAnswer(Exception):
    """The KME's answer is not HTTP/1.1 as this client accepts it; ``too_large`` when
    its body is over the reader's bound."""

    def __init__(self, reason: str, *, too_large: bool = False) -> None:
        super().__init__(reason)
        self.too_large = too_large


@dataclass(frozen=True)
class Answer:
    """A complete answer: its status, its body, and whether the connection that carried
    it may carry the next request."""

    status: int
    body: bytes
    keep_alive: bool


def encode_request(method: str, target: str, host: str, headers: dict[str, str],
                   body: bytes | None) -> bytes:
    """The whole request, head and body, as one buffer: one write, one TLS record.

    ``target`` is the path (already percent-encoded) and ``host`` the Host header's
    value; a request with a body says its length, one without a body sends none.
    """
    for text in (method, target, host, *headers, *headers.values()):
        if any(c in text for c in "\r\n\0"):
            raise ValueError("a request line or header contains CR, LF or NUL")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head + body if body else head


class AnswerReader:
    """Reads one answer from the bytes :meth:`feed` is given, in whatever pieces they
    come; :meth:`feed` returns the :class:`Answer` once its last byte is in.

    ``started`` tells whether any byte of the answer arrived, which decides what a
    connection that closes now means: no answer at all, or one cut short.
    """

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self._buffer = bytearray()
        self._head: tuple[int, int, bool] | None = None  # status, body length, keep-alive
        self._body_start = 0

    @property
    def started(self) -> bool:
        return bool(self._buffer)

    def feed(self, data: bytes) -> Answer | None:
        self._buffer += data
        if self._head is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    raise BadAnswer("the answer's head is too long")
                return None
            if end > MAX_HEAD_BYTES:
                raise BadAnswer("the answer's head is too long")
            self._head = _parse_head(bytes(self._buffer[:end]), self.max_body)
            self._body_start = end + 4
        status, length, keep_alive = self._head
        end = self._body_start + length
        if len(self._buffer) < end:
            return None
        extra = len(self._buffer) > end  # bytes nobody asked for: do not reuse
        return Answer(status, bytes(self._buffer[self._body_start:end]),
                      keep_alive and not extra)


def _parse_head(head: bytes, max_body: int) -> tuple[int, int, bool]:
    """The status, the body's length and whether the connection may be kept."""
    lines = head.split(b"\r\n")
    status_line = _STATUS_LINE.fullmatch(lines[0])
    if status_line is None:
        raise BadAnswer("the answer's status line is malformed")
    status = int(status_line.group(2))
    if status < 200:
        raise BadAnswer(f"the answer is informational ({status}), which was not asked for")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadAnswer("the answer has too many header lines")
    lengths: set[bytes] = set()
    keep_alive = status_line.group(1) == b"1"
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise BadAnswer("a header line of the answer is malformed")
        value = value.strip(b" \t")
        if not _FIELD_VALUE.fullmatch(value):
            raise BadAnswer("a header value of the answer is malformed")
        name = name.lower()
        if name == b"content-length":
            lengths.add(value)
        elif name == b"transfer-encoding":
            raise BadAnswer("the answer has a transfer coding (Transfer-Encoding), which "
                            "this client does not accept")
        elif name == b"content-encoding" and value.lower() != b"identity":
            raise BadAnswer("the answer has a content coding, which this client does not "
                            "accept")
        elif name == b"connection" and b"close" in (
                t.strip(b" \t").lower() for t in value.split(b",")):
            keep_alive = False
    if status in (204, 304):
        if lengths - {b"0"}:
            raise BadAnswer(f"a {status} answer has a body")
        return status, 0, keep_alive
    if not lengths:
        raise BadAnswer("the answer has no Content-Length")
    if len(lengths) > 1:
        raise BadAnswer("the answer has conflicting Content-Length headers")
    (text,) = lengths
    if not _DIGITS.fullmatch(text):
        raise BadAnswer("the answer's Content-Length is not a number")
    length = int(text)
    if length > max_body:
        raise BadAnswer("the answer is too large", too_large=True)
    return status, length, keep_alive
