"""Limits: inclusive, raised in the chunk that crosses them, before the bytes go further."""

from __future__ import annotations

import pytest

from relay.core.events import Part
from relay.core.inspector import UploadInspector
from relay.core.limits import Limits
from relay.errors import BodyTooLarge, FileTooLarge, MalformedMultipart, TooManyFiles

B = "limitsBoundary"
CT = "multipart/form-data; boundary=" + B


def file_part(name: str, content: bytes, filename: str | None = "f.bin") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return f"--{B}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"


CLOSE = f"--{B}--\r\n".encode()


def make(content_type: str | None = CT, **limits: int) -> UploadInspector:
    return UploadInspector(upload_id="u", content_type=content_type, total=None, limits=Limits(**limits))


@pytest.mark.parametrize("content_type", [None, "application/octet-stream"])
def test_raw_body_exactly_at_limit_passes(content_type: str | None) -> None:
    inspector = make(content_type, max_body_size=10)
    inspector.feed(b"12345", 0)
    inspector.feed(b"67890", 0)
    [part] = inspector.finish(0)
    assert isinstance(part, Part) and part.size == 10 and part.filename is None


def test_raw_body_one_over_fails_in_the_crossing_chunk() -> None:
    inspector = make(None, max_body_size=10)
    inspector.feed(b"1234567890", 0)
    with pytest.raises(BodyTooLarge):
        inspector.feed(b"x", 0)
    assert inspector.bytes_received == 11


def test_raw_body_ignores_file_limits() -> None:
    inspector = make("application/octet-stream", max_file_size=1, max_files=0)
    inspector.feed(b"more than one byte", 0)
    [part] = inspector.finish(0)
    assert part.size == 18


def test_multipart_body_limit_before_parsing() -> None:
    body = file_part("a", b"x" * 100) + CLOSE
    inspector = make(max_body_size=len(body) - 1)
    with pytest.raises(BodyTooLarge):
        inspector.feed(body, 0)
    assert inspector.parts == []  # the parser never saw the chunk
    exact = make(max_body_size=len(body))
    exact.feed(body, 0)
    exact.finish(0)
    assert [p.size for p in exact.parts] == [100]


def test_file_exactly_at_limit_passes() -> None:
    inspector = make(max_file_size=100)
    inspector.feed(file_part("a", b"x" * 100) + file_part("b", b"y" * 100) + CLOSE, 0)
    inspector.finish(0)
    assert [p.size for p in inspector.parts] == [100, 100]


def test_file_one_over_fails_in_the_crossing_chunk() -> None:
    body = file_part("a", b"x" * 101) + CLOSE
    head = body.index(b"x")
    inspector = make(max_file_size=100)
    inspector.feed(body[: head + 100], 0)  # exactly the limit so far
    with pytest.raises(FileTooLarge):
        inspector.feed(body[head + 100 : head + 101], 0)


def test_fields_do_not_count_as_files() -> None:
    inspector = make(max_file_size=3, max_files=1)
    inspector.feed(file_part("text", b"long field value", filename=None) + file_part("f", b"abc") + CLOSE, 0)
    inspector.finish(0)
    assert [(p.field, p.filename, p.size) for p in inspector.parts] == [("text", None, 16), ("f", "f.bin", 3)]


def test_empty_filename_is_a_file() -> None:
    inspector = make(max_files=0)
    with pytest.raises(TooManyFiles):
        inspector.feed(file_part("f", b"", filename=""), 0)


def test_files_exactly_at_limit_pass() -> None:
    inspector = make(max_files=3)
    inspector.feed(b"".join(file_part(f"f{i}", b"data") for i in range(3)) + CLOSE, 0)
    inspector.finish(0)
    assert len(inspector.parts) == 3


def test_one_file_too_many_fails_at_its_headers() -> None:
    first = b"".join(file_part(f"f{i}", b"data") for i in range(3))
    extra = file_part("f3", b"data")
    headers_end = extra.index(b"\r\n\r\n") + 4
    inspector = make(max_files=3)
    inspector.feed(first, 0)
    inspector.feed(extra[: headers_end - 1], 0)  # headers not complete yet
    with pytest.raises(TooManyFiles):
        inspector.feed(extra[headers_end - 1 : headers_end], 0)


def test_limit_error_is_not_swallowed_as_malformed() -> None:
    inspector = make(max_file_size=1)
    with pytest.raises(FileTooLarge):
        inspector.feed(file_part("f", b"xx") + CLOSE, 0)
    with pytest.raises(MalformedMultipart):  # the reader is dead
        inspector.feed(b"more", 0)
