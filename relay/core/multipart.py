"""Streaming multipart/form-data reading over python-multipart's push parser, with our own bounds.

Theory of operation
-------------------
`MultipartReader.write(chunk)` pushes bytes into `python_multipart.MultipartParser` (all but the bulk of part
data, which it hands on itself: Rule 7) and turns its callbacks into three of ours: `on_part_begin(PartHeaders)`
once a part's headers are complete, `on_part_data(memoryview)` with zero-copy slices of the caller's chunk
(valid only during the call), and `on_part_end()`. `close()` says whether the body ended properly. Any split
of the same body gives the same calls (modulo how data is sliced) and the same verdict.

Rules (each is tested in tests/core/):

1. Boundary (`parse_boundary`): only `multipart/form-data` is multipart; anything else is a raw body and its
   parameters are never parsed. A multipart Content-Type longer than `MAX_CONTENT_TYPE` bytes, without a
   boundary, or with a boundary that is not 1-70 visible ASCII characters (spaces allowed, not last; RFC 2046
   section 5.1.1) is `MalformedMultipart`. The length cap bounds the parameter parser (CVE-2024-24762 shape).
2. Preamble: before the first delimiter only CR, LF, space and tab are accepted, at most `MAX_PREAMBLE` bytes
   of them; we skip them ourselves (python-multipart skips CR/LF up to the next hyphen, which depends on where
   the chunks are cut). The first delimiter must then follow exactly (CVE-2024-53981, CVE-2026-40347 shapes).
3. Part headers: at most `MAX_HEADERS` header lines per part, each at most `MAX_HEADER_LINE` bytes, and at most
   `MAX_HEADER_BLOCK` bytes of names and values per part (CVE-2026-42561 shape). Every part needs exactly one
   Content-Disposition (RFC 7578 section 4.2); a second Content-Disposition or Content-Type is malformed.
4. Epilogue: everything after the closing delimiter is ignored (RFC 2046 allows an epilogue) without being
   parsed: the parser is not even called again, so megabytes of junk there cost nothing but the byte count.
   The request body limit still bounds it.
5. At most `MAX_PARTS` parts per body, so the per-part records a caller keeps stay bounded (fields do not count
   against `max_files`).
6. A body that ends before the closing delimiter is malformed (`close()`), and so is anything the parser
   rejects. After an error the reader is dead: further writes raise `MalformedMultipart`.
7. Part data skips the parser. When a chunk starts inside a part's data with nothing carried over (the parser
   is in `PART_DATA` with `index` 0: no partial delimiter pending), the reader searches the chunk itself for
   the delimiter `CRLF--boundary` with one `bytes.find`, hands everything before it to `on_part_data`, and
   gives the parser only the rest: from the delimiter on, or from the last CR when the chunk ends in a partial
   delimiter, which the parser then carries over as it always does. The parser ends each write in the state it
   would have reached seeing every byte, so every call and every verdict is the same
   (tests/core/test_multipart_fastpath.py compares them call by call with a reader whose parser sees all).
   python-multipart already scans part data with the same `find`; what this saves is its per-write cost:
   `write()` in the relay took 0.197 -> 0.150 CPU-s/GiB of a 1 GiB `curl -F` (loopback reads of ~250 KB,
   benchmarks/prototypes/multipart_write_time.py), and 0.80 -> 0.37 at 4 KiB chunks over a raw count
   (benchmarks/prototypes/multipart_scan.py). The `find` itself is the floor. `rfind`, twice as fast over bytes
   in cache, was no faster on fresh socket reads and 3.5 times slower on runs of delimiter characters: not used.
   This reads the parser's `state` and `index` (python-multipart 0.0.34, pinned in constraints.txt).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from relay.errors import MalformedMultipart

__all__ = [
    "MAX_BOUNDARY",
    "MAX_CONTENT_TYPE",
    "MAX_HEADERS",
    "MAX_HEADER_BLOCK",
    "MAX_HEADER_LINE",
    "MAX_PARTS",
    "MAX_PREAMBLE",
    "MultipartReader",
    "PartHeaders",
    "parse_boundary",
]

MAX_BOUNDARY = 70
"""RFC 2046 section 5.1.1: a boundary is 1 to 70 characters."""
MAX_CONTENT_TYPE = 1024
"""Longest multipart Content-Type whose parameters we parse."""
MAX_PREAMBLE = 64 * 1024
"""Most whitespace accepted before the first delimiter."""
MAX_HEADERS = 64
"""Most header lines in one part."""
MAX_HEADER_LINE = 8 * 1024
"""Longest single part header line (python-multipart counts it without the CRLF)."""
MAX_HEADER_BLOCK = 16 * 1024
"""Most bytes of header names and values in one part."""
MAX_PARTS = 10_000
"""Most parts in one body."""

# python-multipart logs a warning for every parse error; ours carries the same message, so keep the log quiet.
_PARSER_LOG = logging.getLogger("relay.core.multipart.parser")
_PARSER_LOG.addHandler(logging.NullHandler())
_PARSER_LOG.propagate = False

_PART_DATA = MultipartState.PART_DATA

_BOUNDARY_CHARS = re.compile(rb"[\x21-\x7e ]{0,69}[\x21-\x7e]")
_NOT_WHITESPACE = re.compile(rb"[^\r\n \t]")
_FILENAME_STAR = re.compile(r"(?:^|;)[ \t]*filename\*[ \t]*=[ \t]*([^;]*)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class PartHeaders:
    """What a part's headers say: form field name, filename (None when absent) and Content-Type."""

    field: str | None
    filename: str | None
    content_type: str | None


def parse_boundary(content_type: str | None) -> bytes | None:
    """The boundary of a multipart/form-data Content-Type, None for any other body.

    Raises MalformedMultipart for multipart/form-data without a usable boundary.
    """
    if not content_type:
        return None
    media_type = content_type.partition(";")[0].strip(" \t").lower()
    if media_type != "multipart/form-data":
        return None
    if len(content_type) > MAX_CONTENT_TYPE:
        raise MalformedMultipart(f"multipart Content-Type longer than {MAX_CONTENT_TYPE} characters")
    try:
        _, params = parse_options_header(content_type)
    except UnicodeError as exc:  # non-latin-1 characters in a str header
        raise MalformedMultipart("undecodable multipart Content-Type") from exc
    boundary = params.get(b"boundary")
    if not boundary:
        raise MalformedMultipart("multipart/form-data without a boundary")
    if len(boundary) > MAX_BOUNDARY or not _BOUNDARY_CHARS.fullmatch(boundary):
        raise MalformedMultipart("multipart boundary must be 1-70 visible ASCII characters")
    return boundary


def _decode(raw: bytes) -> str:
    # Browsers send UTF-8 filenames raw; fall back to latin-1, which always decodes.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _filename_star(disposition: str) -> str | None:
    """RFC 5987 `filename*=charset'lang'value`, used only when a plain `filename` is absent.

    RFC 7578 forbids it and python-multipart ignores it, but a part that names a file only this way is still
    a file for our limits.
    """
    match = _FILENAME_STAR.search(disposition)
    if match is None:
        return None
    value = match.group(1).strip(" \t").strip('"')
    charset, quote, rest = value.partition("'")
    if not quote:
        return unquote(value, encoding="utf-8", errors="replace")
    _, _, encoded = rest.partition("'")
    try:
        return unquote(encoded, encoding=charset or "utf-8", errors="replace")
    except LookupError:
        return unquote(encoded, encoding="utf-8", errors="replace")


def _part_headers(disposition: bytes, content_type: bytes | None) -> PartHeaders:
    text = disposition.decode("latin-1")
    _, options = parse_options_header(text)
    name = options.get(b"name")
    raw_filename = options.get(b"filename")
    filename = _decode(raw_filename) if raw_filename is not None else _filename_star(text)
    ctype = _decode(content_type).strip(" \t") if content_type is not None else None
    return PartHeaders(
        field=_decode(name) if name is not None else None,
        filename=filename,
        content_type=ctype or None,
    )


def _ignore_part_begin(headers: PartHeaders) -> None:
    pass


def _ignore_data(data: memoryview) -> None:
    pass


def _ignore() -> None:
    pass


class MultipartReader:
    """Push bytes in with `write()`, end with `close()`; parts come out through the callbacks.

    Exceptions raised by a callback propagate out of `write()` (that is how limits stop a body) and leave the
    reader dead.
    """

    def __init__(
        self,
        boundary: bytes,
        *,
        on_part_begin: Callable[[PartHeaders], None] = _ignore_part_begin,
        on_part_data: Callable[[memoryview], None] = _ignore_data,
        on_part_end: Callable[[], None] = _ignore,
    ) -> None:
        self._on_part_begin = on_part_begin
        self._on_part_data = on_part_data
        self._on_part_end = on_part_end
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._data,
                "on_part_end": self._on_part_end,
                "on_end": self._end,
            },
            max_header_count=MAX_HEADERS,
            max_header_size=MAX_HEADER_LINE,
        )
        self._parser.logger = _PARSER_LOG
        self._delimiter = b"\r\n--" + boundary
        self._reach = len(self._delimiter) - 1  # the longest partial delimiter a chunk can end with
        self._preamble = 0
        self._in_preamble = True
        self._done = False
        self._dead = False
        self._chunk: bytes | None = None
        self._view: memoryview | None = None
        self._name = bytearray()
        self._value = bytearray()
        self._header_bytes = 0
        self._disposition: bytes | None = None
        self._content_type: bytes | None = None
        self._parts = 0

    @property
    def done(self) -> bool:
        """True once the closing delimiter has been read."""
        return self._done

    def write(self, chunk: bytes) -> None:
        if self._dead:
            raise MalformedMultipart("multipart body already failed")
        if self._done or not chunk:
            return  # Rule 4: the epilogue is never parsed.
        if self._in_preamble:
            match = _NOT_WHITESPACE.search(chunk)
            skipped = len(chunk) if match is None else match.start()
            self._preamble += skipped
            if self._preamble > MAX_PREAMBLE:
                self._dead = True
                raise MalformedMultipart(f"more than {MAX_PREAMBLE} bytes before the first boundary")
            if match is None:
                return
            self._in_preamble = False
            if skipped:
                chunk = chunk[skipped:]  # one copy, once per body, only when there is a preamble
        try:
            parser = self._parser
            if parser.state == _PART_DATA and not parser.index:
                chunk = self._pass_data(chunk)  # Rule 7
                if not chunk:
                    return
            self._chunk = chunk
            self._view = memoryview(chunk)
            parser.write(chunk)
        except FormParserError as exc:
            self._dead = True
            raise MalformedMultipart(f"malformed multipart body: {exc}") from exc
        except BaseException:
            self._dead = True
            raise
        finally:
            self._chunk = self._view = None

    def _pass_data(self, chunk: bytes) -> bytes:
        """Rule 7: hand on the part data before the first place a delimiter could start; return the rest."""
        delimiter = self._delimiter
        at = chunk.find(delimiter)
        if at < 0:
            # A delimiter may start in the last bytes and end in the next chunk. Its CR is the only CR it has
            # (boundary characters exclude CR), so only the last CR within its reach can start one.
            size = len(chunk)
            reach = self._reach
            cr = chunk.rfind(b"\r", size - reach if size > reach else 0)
            if cr < 0 or not delimiter.startswith(chunk[cr:]):
                self._on_part_data(memoryview(chunk))
                return b""
            at = cr
        if at:
            self._on_part_data(memoryview(chunk)[:at])
        return chunk[at:]

    def close(self) -> None:
        """Check that the body ended with the closing delimiter; raise MalformedMultipart if not."""
        if self._dead:
            raise MalformedMultipart("multipart body already failed")
        if not self._done:
            self._dead = True
            raise MalformedMultipart("multipart body ended before the closing boundary")

    # python-multipart callbacks

    def _begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise MalformedMultipart(f"more than {MAX_PARTS} parts in one body")
        self._header_bytes = 0
        self._disposition = self._content_type = None
        del self._name[:], self._value[:]

    def _count_header(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BLOCK:
            raise MalformedMultipart(f"part headers longer than {MAX_HEADER_BLOCK} bytes")

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._name += memoryview(data)[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._value += memoryview(data)[start:end]

    def _header_end(self) -> None:
        name = bytes(self._name).lower()
        if name == b"content-disposition":
            if self._disposition is not None:
                raise MalformedMultipart("a part has two Content-Disposition headers")
            self._disposition = bytes(self._value)
        elif name == b"content-type":
            if self._content_type is not None:
                raise MalformedMultipart("a part has two Content-Type headers")
            self._content_type = bytes(self._value)
        del self._name[:], self._value[:]

    def _headers_finished(self) -> None:
        if self._disposition is None:
            raise MalformedMultipart("a part has no Content-Disposition header")
        self._on_part_begin(_part_headers(self._disposition, self._content_type))

    def _data(self, data: bytes, start: int, end: int) -> None:
        if data is self._chunk and self._view is not None:
            self._on_part_data(self._view[start:end])
        else:  # look-behind: a partial boundary from the previous chunk turned out to be data
            self._on_part_data(memoryview(data)[start:end])

    def _end(self) -> None:
        self._done = True
