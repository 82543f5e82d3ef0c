"""Hostile shapes stay cheap: each finishes in well under a second on megabytes, and fails as early as it can."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from relay.core.inspector import UploadInspector
from relay.core.limits import Limits
from relay.core.multipart import MAX_CONTENT_TYPE, MAX_PARTS, MAX_PREAMBLE, MultipartReader, parse_boundary
from relay.errors import MalformedMultipart

B = b"hostileBoundary"
CT = "multipart/form-data; boundary=" + B.decode()
MB = 1024 * 1024
CHUNK = 256 * 1024


@contextmanager
def under(seconds: float) -> Iterator[None]:
    """The block cost less than `seconds` of this thread's CPU: a bound on the work (a quadratic scan would blow
    it by orders of magnitude), not on wall time, which other processes on a loaded machine stretch."""
    start = time.thread_time()
    yield
    used = time.thread_time() - start
    assert used < seconds, f"took {used:.3f} CPU-s"


def chunks(body: bytes, size: int = CHUNK) -> Iterator[bytes]:
    return (body[i : i + size] for i in range(0, len(body), size))


def feed_all(body: bytes, size: int = CHUNK) -> tuple[int, UploadInspector]:
    """Feed until it fails; return how many bytes were fed."""
    inspector = UploadInspector(upload_id="u", content_type=CT, total=None, limits=Limits())
    fed = 0
    for chunk in chunks(body, size):
        fed += len(chunk)
        inspector.feed(chunk, 0)
    inspector.finish(0)
    return fed, inspector


PART = b"--" + B + b'\r\nContent-Disposition: form-data; name="f"; filename="a"\r\n\r\ndata\r\n'
CLOSE = b"--" + B + b"--\r\n"


@pytest.mark.parametrize(
    "value",
    [
        "multipart/form-data; " + 'a="\\"' * 50_000,  # CVE-2024-24762 shape: quotes and escapes
        "multipart/form-data; boundary=x" + ";" * 200_000,
        "multipart/form-data" + " " * 200_000 + "; boundary=x",
    ],
)
def test_crafted_multipart_content_type_is_refused_fast(value: str) -> None:
    with under(0.1), pytest.raises(MalformedMultipart):
        parse_boundary(value)


def test_crafted_raw_content_type_is_not_parsed() -> None:
    with under(0.1):
        assert parse_boundary("text/plain; " + 'a="\\"' * 100_000) is None


def test_parameter_parsing_within_the_cap_is_fast() -> None:
    nasty = "multipart/form-data; boundary=b; " + '"; a="' * ((MAX_CONTENT_TYPE - 40) // 6)
    assert len(nasty) <= MAX_CONTENT_TYPE
    with under(0.1):
        for _ in range(100):
            parse_boundary(nasty)


def test_crafted_content_disposition_is_fast() -> None:
    value = b"form-data; name=" + b'"a\\"; ' * 1300  # just under the 8 KiB header line cap
    body = b"--" + B + b"\r\nContent-Disposition: " + value + b"\r\n\r\nx\r\n" + CLOSE
    with under(0.2):
        for _ in range(20):
            feed_all(body)


def test_megabytes_of_crlf_before_the_first_boundary_fail_within_the_bound() -> None:
    body = b"\r\n" * (4 * MB) + PART + CLOSE
    fed = 0
    with under(0.2), pytest.raises(MalformedMultipart):
        inspector = UploadInspector(upload_id="u", content_type=CT, total=None, limits=Limits())
        for chunk in chunks(body, 16 * 1024):
            fed += len(chunk)
            inspector.feed(chunk, 0)
    assert fed <= MAX_PREAMBLE + 16 * 1024


def test_preamble_at_the_bound_is_accepted() -> None:
    fed, inspector = feed_all(b"\r\n" * (MAX_PREAMBLE // 2) + PART + CLOSE, 1000)
    assert [p.size for p in inspector.parts] == [4]


def test_junk_before_the_first_boundary_fails_at_once() -> None:
    inspector = UploadInspector(upload_id="u", content_type=CT, total=None, limits=Limits())
    with pytest.raises(MalformedMultipart):
        inspector.feed(b"\r\n\r\nnot a boundary" + b"x" * MB, 0)


def test_megabytes_of_junk_after_the_last_boundary_are_ignored_cheaply() -> None:
    calls = 0

    def count(_: memoryview) -> None:
        nonlocal calls
        calls += 1

    reader = MultipartReader(B, on_part_data=count)
    reader.write(PART + CLOSE)
    reader._parser.write = lambda data: pytest.fail("the epilogue reached the parser")  # type: ignore[method-assign]
    with under(0.1):
        for junk in (b"\r\n" * (4 * MB), b"junk--" * MB, (b"\r\n--" + B + b"\r\n") * 10_000):
            reader.write(junk)
    reader.close()
    assert calls == 1


@pytest.mark.parametrize(
    "extra",
    [
        b"".join(b"X-H%d: v\r\n" % i for i in range(100_000)),  # thousands of headers
        b"X-Big: " + b"a" * (5 * MB) + b"\r\n",  # one huge value
        b"X-" + b"a" * (5 * MB) + b": v\r\n",  # one huge name
        b"X-Pad:" + b" " * (5 * MB) + b"v\r\n",  # spaces the parser skips one by one
        b"".join(b"X-H%d: " % i + b"b" * 8000 + b"\r\n" for i in range(60)),  # many big ones
    ],
    ids=["many", "huge-value", "huge-name", "huge-padding", "big-block"],
)
def test_header_floods_fail_early(extra: bytes) -> None:
    head = b"--" + B + b'\r\nContent-Disposition: form-data; name="f"\r\n'
    body = head + extra + b"\r\nx\r\n" + CLOSE
    fed = 0
    with under(0.3), pytest.raises(MalformedMultipart):
        inspector = UploadInspector(upload_id="u", content_type=CT, total=None, limits=Limits())
        for chunk in chunks(body, 16 * 1024):
            fed += len(chunk)
            inspector.feed(chunk, 0)
    assert fed <= 64 * 1024


@pytest.mark.parametrize(
    "content",
    [
        b"\r\n" * (2 * MB),
        (b"\r\n--" + B[:-1] + b"x") * (MB // 16),
        (b"\r\n--" + B + b"-x") * (MB // 16),
        b"\r" * (4 * MB),
    ],
    ids=["crlf", "near-boundary", "boundary-dash", "cr"],
)
def test_boundary_dense_data_is_cheap(content: bytes) -> None:
    body = b"--" + B + b'\r\nContent-Disposition: form-data; name="f"; filename="a"\r\n\r\n' + content + b"\r\n" + CLOSE
    with under(0.5):
        fed, inspector = feed_all(body)
    assert [p.size for p in inspector.parts] == [len(content)]


def test_part_count_is_bounded() -> None:
    field = b"--" + B + b'\r\nContent-Disposition: form-data; name="a"\r\n\r\nx\r\n'
    fed, inspector = feed_all(field * MAX_PARTS + CLOSE)
    assert len(inspector.parts) == MAX_PARTS
    with under(1.0), pytest.raises(MalformedMultipart):
        feed_all(field * (MAX_PARTS * 10) + CLOSE)
