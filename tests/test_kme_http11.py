"""KMEClient's own HTTP/1.1 (hybridkex.keydelivery.kme.http11): what it sends, which
answers it accepts, and what it does with the connection after each.

The reader is tested without I/O first (every answer fed whole and byte by byte), then
the client against a scripted TLS server (:class:`Scripted`): a real mutual-TLS
listener that reads each request and answers with the bytes a test gives it, so the
malformed answers no real KME sends can be sent.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hybridkex.errors import InvalidParameter
from hybridkex.keydelivery.errors import KeySourceError
from hybridkex.keydelivery.kme.calls import MAX_RESPONSE_BYTES
from hybridkex.keydelivery.kme.client import KMEClient, KMEOutcomeUnknown, KMEProtocolError
from hybridkex.keydelivery.kme.http11 import (
    MAX_HEAD_BYTES,
    Answer,
    AnswerReader,
    BadAnswer,
    encode_request,
)
from tests.support import KMEFiles

KEY_ID = "5d1f1bd4-2d1a-4f4c-8c0e-3d6f0e6a3b1e"
KEYS = json.dumps({"keys": [{"key_ID": KEY_ID, "key": "q" * 43 + "="}]}).encode()


def ok(body: bytes = KEYS, *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", "Content-Type: application/json",
            f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def read_whole(data: bytes, max_body: int = 1 << 20) -> Answer | None:
    return AnswerReader(max_body).feed(data)


def read_bytewise(data: bytes, max_body: int = 1 << 20) -> Answer | None:
    reader = AnswerReader(max_body)
    answers = [reader.feed(data[i:i + 1]) for i in range(len(data))]
    assert all(a is None for a in answers[:-1])
    return answers[-1]


# -- the request ---------------------------------------------------------------------------


def test_a_request_is_one_buffer_with_its_length() -> None:
    raw = encode_request("POST", "/api/v1/keys/sae-b/enc_keys", "kme:8443",
                         {"Accept": "application/json"}, b'{"number": 1}')
    assert raw == (b"POST /api/v1/keys/sae-b/enc_keys HTTP/1.1\r\nHost: kme:8443\r\n"
                   b"Accept: application/json\r\nContent-Length: 13\r\n\r\n"
                   b'{"number": 1}')
    bare = encode_request("GET", "/x", "kme", {}, None)
    assert bare == b"GET /x HTTP/1.1\r\nHost: kme\r\n\r\n"  # no body, no length
    for bad in ("/x\r\nEvil: 1", "/x\n", "/x\0"):
        with pytest.raises(ValueError, match="CR, LF or NUL"):
            encode_request("GET", bad, "kme", {}, None)


# -- the reader without I/O ----------------------------------------------------------------


@pytest.mark.parametrize("read", [read_whole, read_bytewise])
def test_a_well_formed_answer_is_read_whole_or_in_pieces(read: object) -> None:
    assert callable(read)
    assert read(ok()) == Answer(200, KEYS, keep_alive=True)
    error = b'{"message": "no"}'
    assert read(b"HTTP/1.1 401 Unauthorized\r\ncontent-length:  17 \r\n\r\n" + error) == Answer(
        401, error, keep_alive=True)
    assert read(b"HTTP/1.1 204 No Content\r\n\r\n") == Answer(204, b"", keep_alive=True)


def test_what_ends_keep_alive() -> None:
    assert read_whole(ok(KEYS, "Connection: close")) == Answer(200, KEYS, keep_alive=False)
    assert read_whole(ok(KEYS, "Connection: keep-alive, Close")) == Answer(
        200, KEYS, keep_alive=False)
    assert read_whole(ok(KEYS).replace(b"HTTP/1.1", b"HTTP/1.0", 1)) == Answer(
        200, KEYS, keep_alive=False)
    # a second answer behind the first: the first stands, the connection is not reused
    assert read_whole(ok() + ok()) == Answer(200, KEYS, keep_alive=False)
    assert read_whole(ok() + b"x") == Answer(200, KEYS, keep_alive=False)


@pytest.mark.parametrize(("answer", "reason"), [
    (b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", None),  # no reason phrase: accepted
    (b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n", "status line"),
    (b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", "status line"),
    (b"HTTP/1.1 600 OK\r\nContent-Length: 0\r\n\r\n", "status line"),
    (b"HTTP/1.1  200 OK\r\nContent-Length: 0\r\n\r\n", "status line"),
    (b"ICY 200 OK\r\nContent-Length: 0\r\n\r\n", "status line"),
    (b"HTTP/1.1 200 O\nK\r\nContent-Length: 0\r\n\r\n", "status line"),
    (b"HTTP/1.1 100 Continue\r\n\r\n", "informational"),
    (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{}", "no Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "not a number"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n", "not a number"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n{}", "not a number"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", "conflicting"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
     "transfer coding"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
     "transfer coding"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Encoding: gzip\r\n\r\n{}",
     "content coding"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n folded\r\n\r\n{}", "header line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length 2\r\n\r\n{}", "header line"),
    (b"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 2\r\n\r\n{}", "header line"),
    (b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 2\r\n\r\n{}", "header value"),
    (b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 2\r\n\r\n{}", "header value"),
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\n{}", "has a body"),
    (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 65 + b"Content-Length: 0\r\n\r\n", "too many"),
])
def test_malformed_answers_are_refused(answer: bytes, reason: str | None) -> None:
    if reason is None:
        assert read_whole(answer) == Answer(200, b"", keep_alive=True)
        return
    with pytest.raises(BadAnswer, match=reason) as caught:
        read_whole(answer)
    assert not caught.value.too_large
    with pytest.raises(BadAnswer, match=reason):
        read_bytewise(answer)


def test_oversized_answers_are_refused_before_their_body() -> None:
    reader = AnswerReader(100)
    with pytest.raises(BadAnswer, match="too large") as caught:
        reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n")  # no body needed
    assert caught.value.too_large
    assert AnswerReader(100).feed(ok(b"x" * 100)) == Answer(200, b"x" * 100, True)
    with pytest.raises(BadAnswer, match="head is too long"):  # no end of head in sight
        AnswerReader(100).feed(b"HTTP/1.1 200 OK\r\nX: " + b"y" * MAX_HEAD_BYTES)


def test_an_incomplete_answer_is_not_an_answer() -> None:
    reader = AnswerReader(1 << 20)
    assert not reader.started
    whole = ok()
    assert reader.feed(whole[:20]) is None and reader.started
    assert reader.feed(whole[20:-1]) is None  # all but the last byte of the body
    assert reader.feed(whole[-1:]) == Answer(200, KEYS, True)


# -- the client against a scripted server -----------------------------------------------------


class Scripted:
    """A mutual-TLS server (the KME's TLS context) that answers each request with the
    next entry of ``answers``: bytes to send, then keep the connection open; or
    ``(bytes, "close")`` to send them and close it.  ``requests`` holds every request
    it read, ``connections`` counts the connections it accepted."""

    def __init__(self, ctx: ssl.SSLContext, answers: list[bytes | tuple[bytes, str]]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.connections = 0
        self._ctx = ctx
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self._listener.getsockname()[1]}"
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            try:
                conn = self._ctx.wrap_socket(raw, server_side=True)
            except (OSError, ssl.SSLError):
                raw.close()
                continue
            self._open.append(conn)
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        buffer = b""
        with contextlib.suppress(OSError):
            while self.answers:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(rest) < length:
                    rest += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + rest[:length])
                buffer = rest[length:]
                answer = self.answers.pop(0)
                if isinstance(answer, tuple):
                    conn.sendall(answer[0])
                    conn.close()
                    return
                conn.sendall(answer)

    def close(self) -> None:
        self._listener.close()
        for conn in self._open:
            with contextlib.suppress(OSError):
                conn.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> KMEFiles:
    return KMEFiles.create(Path(tmp_path_factory.mktemp("pki")), ["sae-a"])


@pytest.fixture
def server(files: KMEFiles) -> Iterator[Scripted]:
    """A scripted server with no answers yet: the test appends them."""
    scripted = Scripted(files.server_context(), [])
    yield scripted
    scripted.close()


def client(files: KMEFiles, server: Scripted, **kwargs: float) -> KMEClient:
    return KMEClient(server.url, *files.pair("sae-a"), files.ca, timeout=kwargs.get(
        "timeout", 5.0), connections=1)


def test_keep_alive_reuses_one_connection(files: KMEFiles,
                                          server: Scripted) -> None:
    server.answers += [ok(), ok(), ok()]
    alice = client(files, server)
    for _ in range(3):
        (key,) = alice.get_keys("sae-b")
        assert key.key_id == KEY_ID and key.key == b"\xaa" * 32
    assert server.connections == 1
    host = server.url.removeprefix("https://").encode()
    assert server.requests[0] == (
        b"POST /api/v1/keys/sae-b/enc_keys HTTP/1.1\r\nHost: " + host + b"\r\n"
        b"Accept: application/json\r\nContent-Type: application/json\r\n"
        b"Content-Length: 26\r\n\r\n" + b'{"number": 1, "size": 256}')


def test_connection_close_and_a_closed_connection_are_reconnected(
        files: KMEFiles, server: Scripted) -> None:
    server.answers += [ok(KEYS, "Connection: close"), ok(), (ok(), "close"), ok()]
    alice = client(files, server)
    alice.get_keys("sae-b")  # answered with Connection: close: not kept
    alice.get_keys("sae-b")  # a new connection, kept
    assert server.connections == 2
    alice.get_keys("sae-b")  # answered, then the server closes ...
    time.sleep(0.1)
    alice.get_keys("sae-b")  # ... which the client notices before it reuses the connection
    assert server.connections == 3 and len(server.requests) == 4


def test_a_server_that_sends_two_answers_is_not_reused(
        files: KMEFiles, server: Scripted) -> None:
    other = KEYS.replace(b"5d1f", b"0000")
    server.answers += [ok() + ok(other), ok(other)]
    alice = client(files, server)
    assert alice.get_keys("sae-b")[0].key_id == KEY_ID  # the first answer only
    # the second answer was never taken for the next request's: a new connection
    assert alice.get_keys("sae-b")[0].key_id == KEY_ID.replace("5d1f", "0000")
    assert server.connections == 2


@pytest.mark.parametrize(("answer", "reason"), [
    (b"HTTP/1.1 OK\r\nContent-Length: 0\r\n\r\n", "status line"),
    (b"HTTP/1.1 200 OK\r\n\r\n" + KEYS, "no Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n" + KEYS[:16] + b"\r\n",
     "transfer coding"),
])
def test_malformed_answers_are_typed_errors_and_never_resent(
        files: KMEFiles, server: Scripted, answer: bytes,
        reason: str) -> None:
    server.answers += [ok(), answer, answer, ok()]
    alice = client(files, server)
    alice.get_keys("sae-b")
    with pytest.raises(KMEProtocolError, match=f"{reason}.*may have served enc_keys") as caught:
        alice.get_keys("sae-b")
    assert caught.value.in_doubt
    with pytest.raises(KMEProtocolError, match=reason) as caught:
        alice.status("sae-b")  # not in doubt, and not sent again either
    assert not caught.value.in_doubt and "may have served" not in str(caught.value)
    assert len(server.requests) == 3
    alice.get_keys("sae-b")  # the client goes on, on a new connection
    assert server.connections == 3


def test_an_oversized_answer_is_refused(files: KMEFiles,
                                        server: Scripted) -> None:
    server.answers += [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_RESPONSE_BYTES + 1)]
    with pytest.raises(KeySourceError, match="too large"):
        client(files, server).get_keys("sae-b")


def test_a_connection_that_closes_mid_body(files: KMEFiles,
                                           server: Scripted) -> None:
    cut = ok()[:-10]
    server.answers += [ok(), (cut, "close"), ok(), (cut, "close"), ok()]
    alice = client(files, server)
    alice.get_keys("sae-b")
    with pytest.raises(KMEOutcomeUnknown, match="in the middle of its answer"):
        alice.get_keys("sae-b")  # the keys may be gone: not sent again
    assert len(server.requests) == 2
    alice.get_keys("sae-b")
    # Get status may be sent twice: cut short on the kept-alive connection, it is sent
    # once more on a new one (whose answer here is a Key container, not a status)
    with pytest.raises(KeySourceError, match="status"):
        alice.status("sae-b")
    assert len(server.requests) == 5 and server.connections == 3


def test_a_timeout_mid_answer_is_in_doubt(files: KMEFiles,
                                          server: Scripted) -> None:
    server.answers += [ok()[:-10]]  # and then nothing
    with pytest.raises(KMEOutcomeUnknown, match=r"did not answer enc_keys within 0\.3 s"):
        client(files, server, timeout=0.3).get_keys("sae-b")


@pytest.mark.parametrize("url", ["https://kme.example/a b", "https://kme.example/k\u00e9me",
                                 "https://kme.example/a\x7fb"])
def test_a_kme_url_path_that_cannot_go_into_a_request_line_is_refused(url: str) -> None:
    """The URL's path prefixes every request line as it is: a space would split the line,
    a non-ASCII character cannot be sent.  Refused when the client is made, typed."""
    from hybridkex.keydelivery.kme.calls import Endpoint

    with pytest.raises(InvalidParameter, match="ASCII without spaces"):
        Endpoint.parse(url)
    assert Endpoint.parse("https://kme.example/prefix%20x/").prefix == "/prefix%20x"
