"""The reader's own pass over part data (Rule 7 in relay/core/multipart.py) changes nothing anyone can observe.

Two references, both fed the same chunks:

- `PreviousReader`: the same reader with the pass switched off, so python-multipart sees every byte (the reader as
  it was before Rule 7). Compared call by call: which `write()` each part begin, part data (joined within one
  write), part end and error came out of, and the verdict of `close()`.
- python-multipart alone, fed the whole body in one `write()`: the parts (headers and content) and the verdict.

Then two deliberately broken passes (one forgets the partial delimiter at a chunk's end, one looks one byte short
for it) show that the same checks catch a broken carry-over.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser

from relay.core.multipart import MultipartReader, PartHeaders, _part_headers
from relay.errors import MalformedMultipart
from tests.core.helpers import split_at

CURL = b"------------------------d74496d66958873e"
BOUNDARIES = [CURL, b"x", b"a b", b"----WebKitFormBoundary7MA4YWxkTrZu0gW", b"B" * 70]
KIB = 1024
MIB = 1024 * KIB
QUIET = logging.getLogger("tests.multipart.reference")
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False


class PreviousReader(MultipartReader):
    """The reader without its own pass: python-multipart scans every byte, as before Rule 7."""

    def _pass_data(self, chunk: bytes) -> bytes:
        return chunk


class ForgetsCarry(MultipartReader):
    """Deliberately broken: a partial delimiter at a chunk's end is handed on as data instead of carried over."""

    def _pass_data(self, chunk: bytes) -> bytes:
        at = chunk.find(self._delimiter)
        if at < 0:
            self._on_part_data(memoryview(chunk))
            return b""
        if at:
            self._on_part_data(memoryview(chunk)[:at])
        return chunk[at:]


class ShortReach(MultipartReader):
    """Deliberately broken: looks for the partial delimiter one byte short of its longest."""

    def __init__(self, boundary: bytes, **callbacks: Any) -> None:
        super().__init__(boundary, **callbacks)
        self._reach -= 1


# ------------------------------------------------------------------------------------------------- recording


def calls(reader_class: type[MultipartReader], boundary: bytes, chunks: list[bytes]) -> list[tuple[object, ...]]:
    """What the reader did, write by write: ("write", i), ("begin", headers), ("data", size, sha256), ("end",),
    then ("error",) or ("closed",). Data within one write is joined (slicing is free to differ)."""
    log: list[tuple[object, ...]] = []
    pending = bytearray()

    def flush() -> None:
        if pending:
            log.append(("data", len(pending), hashlib.sha256(pending).hexdigest()))
            del pending[:]

    def begin(headers: PartHeaders) -> None:
        flush()
        log.append(("begin", headers))

    def data(view: memoryview) -> None:
        assert len(view), "no empty data calls"
        pending.extend(view)

    def end() -> None:
        flush()
        log.append(("end",))

    reader = reader_class(boundary, on_part_begin=begin, on_part_data=data, on_part_end=end)
    try:
        for i, chunk in enumerate(chunks):
            log.append(("write", i))
            reader.write(chunk)
            flush()
        reader.close()
    except MalformedMultipart:
        flush()
        log.append(("error",))
        return log
    log.append(("closed",))
    return log


def reader_parts(
    boundary: bytes, chunks: list[bytes], reader_class: type[MultipartReader] = MultipartReader
) -> tuple[list[tuple[object, ...]], bool]:
    """The reader's parts (headers, size, sha256 of the content) and whether it accepted the body."""
    parts: list[tuple[object, ...]] = []
    content = bytearray()
    current: list[PartHeaders] = []

    def begin(headers: PartHeaders) -> None:
        current[:] = [headers]
        del content[:]

    def end() -> None:
        parts.append((current[0], len(content), hashlib.sha256(content).hexdigest()))

    reader = reader_class(boundary, on_part_begin=begin, on_part_data=content.extend, on_part_end=end)
    try:
        for chunk in chunks:
            reader.write(chunk)
        reader.close()
    except MalformedMultipart:
        return parts, False
    return parts, True


def python_multipart(boundary: bytes, body: bytes) -> tuple[list[tuple[object, ...]], bool]:
    """python-multipart alone, the whole body in one write: its parts and whether it reached the closing delimiter.

    Only for bodies that start with the first delimiter and carry few, short part headers: of the reader's own
    rules on preamble and headers, only the Content-Disposition ones are applied here."""
    parts: list[tuple[object, ...]] = []
    content = bytearray()
    fields: dict[bytes, bytes] = {}
    name, value = bytearray(), bytearray()
    ended = []

    def header_end() -> None:
        key = bytes(name).lower()
        if key in fields and key in (b"content-disposition", b"content-type"):
            raise FormParserError("the reader's Rule 3: a second Content-Disposition or Content-Type")
        fields[key] = bytes(value)
        del name[:], value[:]

    def headers_finished() -> None:
        if b"content-disposition" not in fields:
            raise FormParserError("the reader's Rule 3: no Content-Disposition")

    def part_begin() -> None:
        fields.clear()
        del content[:]

    def part_end() -> None:
        headers = _part_headers(fields[b"content-disposition"], fields.get(b"content-type"))
        parts.append((headers, len(content), hashlib.sha256(content).hexdigest()))

    parser = MultipartParser(
        boundary,
        callbacks={
            "on_part_begin": part_begin,
            "on_header_field": lambda data, start, end: name.extend(data[start:end]),
            "on_header_value": lambda data, start, end: value.extend(data[start:end]),
            "on_header_end": header_end,
            "on_headers_finished": headers_finished,
            "on_part_data": lambda data, start, end: content.extend(data[start:end]),
            "on_part_end": part_end,
            "on_end": lambda: ended.append(True),
        },
    )
    parser.logger = QUIET
    try:
        parser.write(body)
    except FormParserError:
        return parts, False
    return parts, bool(ended)


def mismatches(
    reader_class: type[MultipartReader], boundary: bytes, body: bytes, cuts: Iterator[tuple[int, ...]]
) -> list[tuple[int, ...]]:
    """The cuts at which `reader_class` does anything the previous reader does not."""
    bad = []
    for points in cuts:
        chunks = split_at(body, *points)
        if calls(reader_class, boundary, chunks) != calls(PreviousReader, boundary, chunks):
            bad.append(points)
    return bad


# ------------------------------------------------------------------------------------------------- bodies


def head(boundary: bytes, n: int = 0, filename: bytes = b"a.bin") -> bytes:
    return (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="f%d"; filename="' % n + filename + b'"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    )


def one_file(boundary: bytes, data: bytes, closing: bytes = b"--\r\n") -> bytes:
    """One file part with `data`, then the last delimiter and `closing` after it."""
    return head(boundary) + data + b"\r\n--" + boundary + closing


def look_alikes(boundary: bytes) -> list[bytes]:
    """File data that is not a delimiter but starts like one, and CR/LF shapes around it."""
    delimiter = b"\r\n--" + boundary
    m = len(delimiter)
    prefixes = [delimiter[:k] for k in sorted({1, 2, 3, 4, 5, m // 2, m - 2, m - 1}) if 0 < k < m]
    return [
        b"",
        b"\r",
        b"\n",
        b"\r\n",
        b"\r\r\n",
        b"\n\r",
        b"\r\n\r\n",
        *prefixes,  # as the data's tail: the real delimiter follows
        *(p + b"x" for p in prefixes),
        *(p + b"\r" for p in prefixes),
        delimiter + b"x",
        delimiter + b"-",
        delimiter + b"-x",
        delimiter + b"\r",
        delimiter + b"\rx",
        delimiter + b"\n",
        delimiter + b"\r" + delimiter + b"x",
        b"\n--" + boundary,
        b"--" + boundary + b"--",
        b"\r\n-" + boundary,
        delimiter[:-1] + b"\x00" + delimiter[-1:],
        prefixes[-1] + delimiter + b"-" + delimiter + b"--x",
    ]


def closings(boundary: bytes) -> list[bytes]:
    """What may follow the last delimiter: good endings, padding, an epilogue, and bad padding."""
    return [b"--\r\n", b"--", b"--junk\r\n--" + boundary + b"--", b" \t\r\n", b"  ", b" x", b" \rx", b"\r\n", b"-"]


# ------------------------------------------------------------------------------------------------- tests


def every_split(boundary: bytes, body: bytes) -> Iterator[tuple[int, ...]]:
    """The body cut in two at every index, and cut after the first part's headers and again at every index after
    them: only a chunk that starts in part data goes through the reader's own pass, so the second set is the one
    that carries a partial delimiter over from it."""
    yield from ((cut,) for cut in range(len(body) + 1))
    data_at = len(head(boundary))
    yield from ((data_at, cut) for cut in range(data_at, len(body) + 1))


@pytest.mark.parametrize("boundary", [CURL, b"x", b"a b"])
def test_look_alike_then_delimiter_split_at_every_position(boundary: bytes) -> None:
    """Every look-alike as the end of a file's data, then the closing delimiter, the body split everywhere."""
    for data in look_alikes(boundary):
        body = one_file(boundary, b"payload" + data)
        assert mismatches(MultipartReader, boundary, body, every_split(boundary, body)) == [], data
        want = python_multipart(boundary, body)
        assert reader_parts(boundary, [body]) == want
        assert reader_parts(boundary, [body[i : i + 1] for i in range(len(body))]) == want


@pytest.mark.parametrize("boundary", [CURL, b"x"])
def test_delimiter_endings_split_at_every_position(boundary: bytes) -> None:
    """Every ending of the last delimiter (closing, padding, bad padding, epilogue, truncation), split everywhere."""
    delimiter = b"\r\n--" + boundary
    for data in [b"", b"\r", b"\r\n", delimiter[:-1], delimiter + b"-x"]:
        for closing in closings(boundary):
            body = one_file(boundary, b"payload" + data, closing)
            assert mismatches(MultipartReader, boundary, body, every_split(boundary, body)) == [], (data, closing)
            assert reader_parts(boundary, [body]) == python_multipart(boundary, body)


@pytest.mark.parametrize("boundary", [CURL, b"x"])
def test_delimiter_in_three_pieces(boundary: bytes) -> None:
    """Both cuts anywhere from just before the data's look-alike to the end of the body: a partial delimiter
    carried over twice, a look-alike resolved in the third chunk."""
    delimiter = b"\r\n--" + boundary
    for data in [delimiter[:-1], delimiter + b"\r", delimiter[:3] + b"x"]:
        body = one_file(boundary, b"payload" + data, b"--\r\n")
        start = len(head(boundary)) + len(b"payload") - 1
        cuts = ((a, b) for a in range(start, len(body) + 1) for b in range(a, len(body) + 1))
        assert mismatches(MultipartReader, boundary, body, cuts) == []


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1000, 4 * KIB, 64 * KIB, 256_000, MIB])
def test_look_alikes_straddle_chunk_ends(size: int) -> None:
    """Chunk sizes from a byte to 1 MiB; at every chunk end a look-alike, a partial delimiter or a real delimiter
    begins 0 to len(delimiter) + 1 bytes before it (a sample of those offsets for the big chunks)."""
    rng = random.Random(size)
    boundary = CURL
    delimiter = b"\r\n--" + boundary
    shapes = [delimiter[:-1] + b"x", delimiter + b"-x", delimiter + b"\rx", b"\r", delimiter + b"x"]
    step = max(size, 4 * len(delimiter))  # the distance between the chunk ends that get a look-alike
    step -= step % size
    first = len(head(boundary)) + step - len(head(boundary)) % size
    m = len(delimiter)
    backs = range(m + 2) if size < 64 * KIB else sorted({0, 1, 2, 3, m // 2, m - 2, m - 1, m, m + 1})
    for back in backs:
        data = bytearray(rng.randbytes(first + len(shapes) * step + 10 - len(head(boundary))))
        for k, shape in enumerate(shapes):
            at = first + k * step - back - len(head(boundary))
            data[at : at + len(shape)] = shape
        second = head(boundary, 1, b"b.bin") + bytes(rng.randbytes(back + 3))
        body = one_file(boundary, bytes(data), b"\r\n" + second + b"\r\n--" + boundary + b"--\r\n")
        chunks = [body[i : i + size] for i in range(0, len(body), size)]
        assert calls(MultipartReader, boundary, chunks) == calls(PreviousReader, boundary, chunks), back
        assert reader_parts(boundary, chunks) == python_multipart(boundary, body), back


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, bytes, list[bytes]]:
    boundary = draw(st.sampled_from(BOUNDARIES))
    delimiter = b"\r\n--" + boundary
    piece = st.one_of(
        st.binary(max_size=40),
        st.sampled_from(look_alikes(boundary)),
        st.integers(1, len(delimiter) - 1).map(lambda k: delimiter[:k]),
    )
    parts = draw(st.lists(st.lists(piece, max_size=10).map(b"".join), min_size=1, max_size=3))
    body = b"".join(head(boundary, n) + content + b"\r\n" for n, content in enumerate(parts))
    body += b"--" + boundary + draw(st.sampled_from(closings(boundary)))
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]
    size = draw(st.one_of(st.integers(1, 80), st.sampled_from([4 * KIB, 64 * KIB])))
    if draw(st.booleans()):
        chunks = [body[i : i + size] for i in range(0, len(body), size)]
    else:
        chunks = split_at(body, *draw(st.lists(st.integers(0, len(body)), max_size=8)))
    return boundary, body, chunks


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
def test_random_bodies_match_both_references(case: tuple[bytes, bytes, list[bytes]]) -> None:
    boundary, body, chunks = case
    assert calls(MultipartReader, boundary, chunks) == calls(PreviousReader, boundary, chunks)
    want = python_multipart(boundary, body)
    assert reader_parts(boundary, chunks) == want
    assert reader_parts(boundary, [body]) == want


def test_data_after_a_failure_is_refused() -> None:
    body = one_file(CURL, b"payload", b" x")
    reader = MultipartReader(CURL)
    with pytest.raises(MalformedMultipart):
        reader.write(body)
    with pytest.raises(MalformedMultipart):
        reader.write(b"more data")


@pytest.mark.parametrize("broken", [ForgetsCarry, ShortReach])
def test_the_checks_catch_a_broken_carry_over(broken: type[MultipartReader]) -> None:
    """The split-at-every-position check above, pointed at a broken pass, finds it; the real pass is clean."""
    delimiter = b"\r\n--" + CURL
    body = one_file(CURL, b"payload" + delimiter[:-1] + b"x", b"--\r\n")
    assert mismatches(MultipartReader, CURL, body, every_split(CURL, body)) == []
    assert mismatches(broken, CURL, body, every_split(CURL, body)) != []
    # The whole-body reference sees it too: the parts differ at the cuts that matter.
    want = python_multipart(CURL, body)
    assert [cuts for cuts in every_split(CURL, body) if reader_parts(CURL, split_at(body, *cuts), broken) != want]
