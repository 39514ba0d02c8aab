"""HKX/1 record layer: framing, and AEAD protection of one direction's records.

A record is ``type(1) | length(2) | payload``.  Before the handshake keys exist the
payload is the plaintext (ClientHello and ServerHello only); afterwards it is
``AEAD-Seal(key, nonce, plaintext, aad = the 3-byte header)`` with
``nonce = iv XOR seq`` (seq as a 12-byte big-endian integer, starting at 0 for every
new key).  The header is authenticated, so a record's type and length cannot be
changed; the sequence number is implicit, so a record that is dropped, replayed or
reordered fails authentication at the receiver.

Two ways through: records one at a time (``next_record``, ``seal``, ``open``: bytes in,
bytes out), and application data in runs, one loop over every whole record at hand:
opened where they arrived, as ``bytes`` (:meth:`RecordBuffer.open_application_records`)
or straight into the application's buffer
(:meth:`RecordBuffer.open_application_data_into`), and sealed into a list of records
(:meth:`RecordProtection.seal_run`) or straight into a transport's buffer
(:meth:`RecordProtection.seal_many_into`).  A transport may also read into
:meth:`RecordBuffer.receive_buffer`.  Both ways make the same checks in the same order,
and neither ever hands out a byte that did not authenticate.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hybridkex.errors import DecodeError, RecordAuthenticationFailed
from hybridkex.primitives import aead
from hybridkex.primitives.symmetric import TagMismatch
from hybridkex.protocol.keyschedule import IV_SIZE, traffic_key_iv
from hybridkex.protocol.suites import AlertDescription, ContentType, Suite

__all__ = [
    "AEAD_RECORD_LIMITS",
    "HEADER_SIZE",
    "MAX_PAYLOAD",
    "MAX_PLAINTEXT",
    "MAX_RECORD",
    "OPEN_BATCH",
    "Record",
    "RecordBuffer",
    "RecordProtection",
    "frame_record",
    "sealed_size",
]

HEADER_SIZE = 3
MAX_PLAINTEXT = 1 << 14
MAX_PAYLOAD = MAX_PLAINTEXT + 256
MAX_RECORD = HEADER_SIZE + MAX_PAYLOAD
# Records one key may protect before it must be replaced.  AES-GCM: RFC 8446 section
# 5.5 allows 2^24.5 full-size records for a 2^-57 margin; HKX/1 stops at 2^24.
# ChaCha20-Poly1305's limit is beyond the 64-bit sequence space; 2^48 keeps the
# sequence number far from wrapping.
AEAD_RECORD_LIMITS = {"AES-256-GCM": 1 << 24, "ChaCha20-Poly1305": 1 << 48}
_TAG_SIZE = 16  # both record AEADs
#: Records opened in one run (a megabyte of plaintext at most): what one read holds
#: comes out in one call, without holding an unbounded feed's plaintext at once.
OPEN_BATCH = 64
_APPLICATION_DATA = int(ContentType.APPLICATION_DATA)
_CONTENT_TYPES = frozenset(int(t) for t in ContentType)
_HEADER = struct.Struct(">BH")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from
# A full application-data record's header, the associated data of most records: made
# once rather than packed for each.
_FULL_PAYLOAD = MAX_PLAINTEXT + _TAG_SIZE
_FULL_HEADER = _pack_header(_APPLICATION_DATA, _FULL_PAYLOAD)


@dataclass(frozen=True)
class Record:
    content_type: int
    payload: bytes

    def __repr__(self) -> str:  # a payload may be plaintext: never shown
        return f"Record(type={self.content_type}, length={len(self.payload)})"


def frame_record(content_type: int, payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("record payload too long")
    return _pack_header(content_type, len(payload)) + payload


def sealed_size(plaintext_size: int) -> int:
    """Bytes on the wire for ``plaintext_size`` bytes of data in full-size sealed records."""
    records = -(-plaintext_size // MAX_PLAINTEXT)
    return plaintext_size + records * (HEADER_SIZE + _TAG_SIZE)


class RecordBuffer:
    """Bytes from the transport in, whole records out; lengths checked before buffering.

    Bytes given to ``feed`` are read in place (an offset moves along them), so a
    payload is copied at most once.  Only a record split across two ``feed`` calls,
    or a transport that reads into :meth:`receive_buffer`, makes the buffer keep bytes
    in a bytearray of its own (the store).  The store is never resized, only replaced
    by a larger one, so a view of it that someone still holds can never make it fail.
    """

    __slots__ = ("_data", "_end", "_keep", "_pos", "_store", "_view")

    def __init__(self) -> None:
        self._data: bytes | bytearray = b""  # what records are read from: fed bytes or the store
        self._pos = 0  # the first unread byte of _data
        self._end = 0  # the end of what _data holds
        self._store: bytearray | None = None
        self._keep = False  # keep the store between reads (a transport reads into it)
        self._view: memoryview | None = None  # of _data, made once for its records

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if self._pos == self._end:  # everything read: start over on the new bytes
            self._data = data if type(data) is bytes else bytes(data)
            self._view = None
            self._pos, self._end = 0, len(self._data)
            return
        size = len(data)  # an incomplete record waits: gather from here on
        store = self._reserve(size)
        store[self._end:self._end + size] = data
        self._end += size

    def receive_buffer(self, size_hint: int) -> memoryview:
        """A writable view of at least ``size_hint`` free bytes after what is buffered,
        for a transport that reads straight into it (``socket.recv_into``); report how
        many bytes it wrote with :meth:`buffer_received`."""
        self._keep = True
        store = self._reserve(max(size_hint, 1))
        return memoryview(store)[self._end:]

    def buffer_received(self, nbytes: int) -> None:
        if self._data is not self._store or not 0 <= nbytes <= len(self._data) - self._end:
            raise ValueError("buffer_received() does not match the last receive_buffer()")
        self._end += nbytes

    def _reserve(self, room: int) -> bytearray:
        """Make the store what records are read from, unread bytes first and at least
        ``room`` free bytes after them."""
        data, pos, end, store = self._data, self._pos, self._end, self._store
        if data is store and store is not None and len(store) - end >= room:
            return store
        unread = end - pos
        if store is None or len(store) < unread + room:
            # a transport's store also has room for one more whole record, so that a
            # record split across two reads never makes it grow; a gathering one doubles
            size = unread + room + (MAX_RECORD if self._keep else 0)
            grown = bytearray(max(size, 2 * len(store) if store is not None else 0))
            with memoryview(data) as view:
                grown[:unread] = view[pos:end]
            store = self._store = grown
        elif unread:
            store[:unread] = data[pos:end]  # a copy first: the two ranges may overlap
        if self._data is not store:
            self._data, self._view = store, None
        self._pos, self._end = 0, unread
        return store

    def _consumed(self, pos: int) -> None:
        """Everything before ``pos`` has been read."""
        if pos < self._end:
            self._pos = pos
            return
        # all read: drop the reference to the transport's bytes (and to a gathered store)
        self._data, self._pos, self._end, self._view = b"", 0, 0, None
        if not self._keep:
            self._store = None

    def pending(self) -> int:
        return self._end - self._pos

    def next_record(self) -> Record | None:
        data, pos = self._data, self._pos
        if self._end - pos < HEADER_SIZE:
            return None
        content_type, length = _unpack_header(data, pos)
        if content_type not in _CONTENT_TYPES:
            raise DecodeError(f"unknown record type {content_type}",
                              AlertDescription.UNEXPECTED_MESSAGE)
        if length > MAX_PAYLOAD:
            raise DecodeError(f"record of {length} bytes exceeds {MAX_PAYLOAD}",
                              AlertDescription.RECORD_OVERFLOW)
        stop = pos + HEADER_SIZE + length
        if self._end < stop:
            return None
        if type(data) is bytes:
            payload = data[pos + HEADER_SIZE:stop]
        else:
            with memoryview(data) as view:
                payload = view[pos + HEADER_SIZE:stop].tobytes()
        self._consumed(stop)
        return Record(content_type, payload)

    # -- application data in place -----------------------------------------------------
    # Both methods take only what the general path (next_record, then
    # RecordProtection.open) would accept: a whole application-data record whose
    # plaintext fits in 2^14 bytes.  Anything else (another type, a bad length, an
    # incomplete record) is left where it is, for next_record to read and refuse with
    # the same error as ever.

    def open_application_records(self, protection: RecordProtection) -> list[bytes]:
        """The plaintexts of the whole application-data records at the front of the
        buffer, in order, each opened where it lies (at most :data:`OPEN_BATCH` of
        them; the list is empty when the next record is not one).

        As in :meth:`open_application_data_into`, a record that fails authentication
        after others were opened stays unread and fails the next call, so the
        plaintext that did authenticate is delivered first.
        """
        data, pos = self._data, self._pos
        if self._end - pos < HEADER_SIZE or data[pos] != _APPLICATION_DATA:
            return []
        view = self._view
        if view is None:
            view = self._view = memoryview(data)
        opened, pos = protection.open_run(data, view, pos, self._end)
        if pos < self._end:
            self._pos = pos
        else:  # all read, as in _consumed (inlined: this runs once per read)
            self._data, self._pos, self._end, self._view = b"", 0, 0, None
            if not self._keep:
                self._store = None
        return opened

    def open_application_data_into(self, protection: RecordProtection,
                                   out: memoryview) -> int:
        """Open whole application-data records at the front of the buffer straight into
        ``out``, as many as fit; returns the plaintext bytes written (0: none could be).

        A record that fails authentication after others were opened stays unread and
        fails the next call, so the plaintext that did authenticate is delivered first.
        """
        data, pos = self._data, self._pos
        if self._end - pos < HEADER_SIZE or data[pos] != _APPLICATION_DATA:
            return 0
        view = self._view
        if view is None:
            view = self._view = memoryview(data)
        written, pos = protection.open_run_into(data, view, pos, self._end, out)
        self._consumed(pos)
        return written


class RecordProtection:
    """One direction's current key: seals (sender) or opens (receiver) records in order.

    The AEAD is keyed once (:meth:`hybridkex.primitives.AEAD.keyed`); the key bytes are
    not kept beside it.  The IV is held as an integer, so a nonce (iv XOR seq, seq as a
    12-byte big-endian integer) is one XOR.  The sequence number moves on only when a
    record has been sealed or has opened, and never reaches the AEAD's usage limit.
    """

    __slots__ = ("_aead", "_decrypt", "_decrypt_into", "_encrypt", "_encrypt_into", "_iv",
                 "_tag_size", "limit", "seq")

    def __init__(self, suite: Suite, secret: bytes) -> None:
        algorithm = aead(suite.aead)
        key, iv = traffic_key_iv(suite, secret)
        self._aead = algorithm.keyed(key)
        # seal and open_payload make their own arguments: nonce, header, checked length
        (self._encrypt, self._decrypt, self._encrypt_into,
         self._decrypt_into) = self._aead.backend_calls()
        self._iv = int.from_bytes(iv, "big")
        self._tag_size = algorithm.tag_size
        self.seq = 0
        self.limit = AEAD_RECORD_LIMITS[suite.aead]

    def __repr__(self) -> str:
        return f"<RecordProtection {self._aead.name} seq={self.seq}>"

    def seal(self, content_type: int, plaintext: bytes | memoryview) -> bytes:
        """:meth:`seal_split`, joined: one record as one ``bytes``, for the records a
        connection sends one at a time (handshake messages, alerts, the record at a key
        update); application data otherwise goes to :meth:`seal_split` directly."""
        header, sealed = self.seal_split(content_type, plaintext)
        return header + sealed

    def seal_split(self, content_type: int, plaintext: bytes | memoryview) -> tuple[bytes, bytes]:
        """:meth:`seal` as (header, ciphertext), for a sender that joins many records
        into one write anyway: the join is then the only copy of the ciphertext."""
        size = len(plaintext)
        if size > MAX_PLAINTEXT:
            raise ValueError("record plaintext too long")
        seq = self.seq
        if seq >= self.limit:
            raise _limit_reached()
        header = _pack_header(content_type, size + self._tag_size)
        sealed = self._encrypt((self._iv ^ seq).to_bytes(IV_SIZE, "big"), plaintext, header)
        self.seq = seq + 1
        return header, sealed

    def seal_run(self, content_type: int, data: memoryview, start: int, records: int,
                 out: list[bytes]) -> int:
        """Seal ``data[start:]`` as full-size records (the last may be shorter), at most
        ``records`` of them, appending each one's header and ciphertext to ``out``;
        returns where the unsealed rest of ``data`` starts.  :meth:`seal_split` in one
        loop, for a sender that queues many records at once."""
        encrypt, iv, tag, limit = self._encrypt, self._iv, self._tag_size, self.limit
        seq, total = self.seq, len(data)
        append = out.append
        full = _pack_header(content_type, MAX_PLAINTEXT + tag)  # every record but the last
        try:
            while start < total and records > 0:
                if seq >= limit:
                    raise _limit_reached()
                stop = start + MAX_PLAINTEXT
                if stop > total:
                    stop = total
                    header = _pack_header(content_type, stop - start + tag)
                else:
                    header = full
                sealed = encrypt((iv ^ seq).to_bytes(IV_SIZE, "big"), data[start:stop], header)
                append(header)
                append(sealed)
                seq += 1
                records -= 1
                start = stop
        finally:
            self.seq = seq  # every record queued was sealed under its own nonce
        return start

    def seal_into(self, content_type: int, plaintext: bytes | memoryview,
                  out: memoryview) -> int:
        """Seal one record into the front of ``out``; returns its size on the wire."""
        size = len(plaintext)
        if size > MAX_PLAINTEXT:
            raise ValueError("record plaintext too long")
        seq = self.seq
        if seq >= self.limit:
            raise _limit_reached()
        header = _pack_header(content_type, size + self._tag_size)
        stop = HEADER_SIZE + size + self._tag_size
        out[:HEADER_SIZE] = header
        self._encrypt_into((self._iv ^ seq).to_bytes(IV_SIZE, "big"), plaintext, header,
                           out[HEADER_SIZE:stop])
        self.seq = seq + 1
        return stop

    def seal_many_into(self, content_type: int, data: memoryview, out: memoryview,
                       records: int) -> tuple[int, int]:
        """Seal ``data`` as full-size records (the last may be shorter) into ``out``, at
        most ``records`` of them and as many as fit; returns (bytes of ``data`` sealed,
        bytes written).  :meth:`seal_into` in one loop, for bulk transfer."""
        encrypt_into, iv, tag = self._encrypt_into, self._iv, self._tag_size
        seq, limit = self.seq, self.limit
        total, room = len(data), len(out)
        consumed = written = 0
        full = _pack_header(content_type, MAX_PLAINTEXT + tag)  # every record but the last
        try:
            while consumed < total and records > 0:
                size = total - consumed
                if size > MAX_PLAINTEXT:
                    size = MAX_PLAINTEXT
                stop = written + HEADER_SIZE + size + tag
                if stop > room:
                    break
                if seq >= limit:
                    raise _limit_reached()
                header = full if size == MAX_PLAINTEXT else _pack_header(content_type,
                                                                         size + tag)
                out[written:written + HEADER_SIZE] = header
                encrypt_into((iv ^ seq).to_bytes(IV_SIZE, "big"),
                             data[consumed:consumed + size], header,
                             out[written + HEADER_SIZE:stop])
                seq += 1
                records -= 1
                consumed += size
                written = stop
        finally:
            self.seq = seq  # every record written was sealed under its own nonce
        return consumed, written

    def open(self, record: Record) -> bytes:
        return self.open_payload(record.content_type, record.payload)

    def open_payload(self, content_type: int, payload: bytes | memoryview) -> bytes:
        """The plaintext of a record of ``content_type`` whose payload is ``payload``."""
        seq = self.seq
        if seq >= self.limit:
            raise _limit_reached()
        header = _pack_header(content_type, len(payload))
        try:
            plaintext = self._decrypt((self._iv ^ seq).to_bytes(IV_SIZE, "big"), payload, header)
        except TagMismatch:
            raise _authentication_failed() from None
        self.seq = seq + 1
        if len(plaintext) > MAX_PLAINTEXT:
            raise DecodeError("record plaintext exceeds 2^14 bytes",
                              AlertDescription.RECORD_OVERFLOW)
        return plaintext

    def open_run(self, data: bytes | bytearray, view: memoryview, pos: int,
                 end: int) -> tuple[list[bytes], int]:
        """Open the whole application-data records of ``data[pos:end]`` in order (``view``
        is a memoryview of ``data``), stopping at anything else, at an incomplete record
        or after :data:`OPEN_BATCH` records; returns (their plaintexts, where the first
        unread record starts).

        :meth:`open_payload` in one loop for many records, with the same checks: the
        length before the AEAD is called, the usage limit, the tag.  A failure after
        some records opened ends the run before the failing record (the next call
        meets it again and raises); a failure on the first raises.
        """
        decrypt, iv, limit = self._decrypt, self._iv, self.limit
        seq = self.seq
        opened: list[bytes] = []
        last = seq + OPEN_BATCH  # the run ends before this sequence number
        try:
            while end - pos >= HEADER_SIZE and data[pos] == _APPLICATION_DATA and seq < last:
                length = data[pos + 1] << 8 | data[pos + 2]
                stop = pos + HEADER_SIZE + length
                if stop > end or not _TAG_SIZE <= length <= MAX_PLAINTEXT + _TAG_SIZE:
                    break  # left for next_record, which refuses it as ever
                if seq >= limit:
                    if opened:
                        break
                    raise _limit_reached()
                try:
                    plaintext = decrypt((iv ^ seq).to_bytes(IV_SIZE, "big"),
                                        view[pos + HEADER_SIZE:stop],
                                        _FULL_HEADER if length == _FULL_PAYLOAD
                                        else _pack_header(_APPLICATION_DATA, length))
                except TagMismatch:
                    if opened:
                        break
                    raise _authentication_failed() from None
                seq += 1
                opened.append(plaintext)
                pos = stop
        finally:
            self.seq = seq  # every record counted has opened under its own nonce
        return opened, pos

    def open_run_into(self, data: bytes | bytearray, view: memoryview, pos: int, end: int,
                      out: memoryview) -> tuple[int, int]:
        """:meth:`open_run`, each plaintext written into ``out`` after the last, as many
        records as fit; returns (plaintext bytes written, where the first unread record
        starts).  A record that does not authenticate is wiped from ``out`` (the backend
        writes before it checks the tag), and ends the run as in :meth:`open_run`."""
        decrypt_into, iv, limit = self._decrypt_into, self._iv, self.limit
        seq, room = self.seq, len(out)
        written = 0
        try:
            while end - pos >= HEADER_SIZE and data[pos] == _APPLICATION_DATA:
                length = data[pos + 1] << 8 | data[pos + 2]
                size = length - _TAG_SIZE
                stop = pos + HEADER_SIZE + length
                if stop > end or not 0 <= size <= MAX_PLAINTEXT or size > room - written:
                    break  # incomplete, refused by next_record as ever, or no room left
                if seq >= limit:
                    if written:
                        break
                    raise _limit_reached()
                target = out[written:written + size]
                try:
                    decrypt_into((iv ^ seq).to_bytes(IV_SIZE, "big"),
                                 view[pos + HEADER_SIZE:stop],
                                 _FULL_HEADER if length == _FULL_PAYLOAD
                                 else _pack_header(_APPLICATION_DATA, length), target)
                except TagMismatch:
                    target[:] = bytes(size)  # never leave unauthenticated plaintext
                    if written:
                        break
                    raise _authentication_failed() from None
                seq += 1
                written += size
                pos = stop
        finally:
            self.seq = seq  # every record counted has opened under its own nonce
        return written, pos


def _limit_reached() -> DecodeError:
    # The sender replaces its key before this; reaching it means a peer that did not,
    # and the receiver refuses rather than weaken the AEAD's bounds.
    return DecodeError("record sequence reached the AEAD usage limit without a key update",
                       AlertDescription.INSUFFICIENT_SECURITY)


def _authentication_failed() -> RecordAuthenticationFailed:
    return RecordAuthenticationFailed(
        "a record failed authentication: tampered, reordered, replayed or from "
        "another key")
