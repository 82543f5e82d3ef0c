from __future__ import annotations

import hashlib

import pytest

from relay.core.events import Part, Progress
from relay.core.inspector import UploadInspector
from relay.core.limits import Limits
from relay.core.progress import ProgressPolicy
from relay.errors import MalformedMultipart

B = "inspectorBoundary"
CT = f"multipart/form-data; boundary={B}"


def body_of(*parts: tuple[str, str | None, bytes]) -> bytes:
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{B}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return out + f"--{B}--\r\n".encode()


@pytest.mark.parametrize(
    "content_type", ["multipart/form-data", "multipart/form-data; boundary=", 'multipart/form-data; boundary=""']
)
def test_constructor_refuses_multipart_without_boundary(content_type: str) -> None:
    with pytest.raises(MalformedMultipart):
        UploadInspector(upload_id="u", content_type=content_type, total=None, limits=Limits())


@pytest.mark.parametrize("content_type", [None, "", "application/json", "multipart/mixed; boundary=x"])
def test_other_types_are_raw(content_type: str | None) -> None:
    inspector = UploadInspector(upload_id="u", content_type=content_type, total=None, limits=Limits())
    assert not inspector.is_multipart


def test_parts_come_out_of_the_feed_that_completes_them() -> None:
    body = body_of(("a", None, b"1"), ("f", "x.bin", b"abc"))
    inspector = UploadInspector(upload_id="u1", content_type=CT, total=len(body), limits=Limits())
    assert inspector.is_multipart and inspector.total == len(body)
    delimiter = f"--{B}\r\n".encode()
    split = body.index(delimiter, 10) + len(delimiter)  # the first part ends once its delimiter line is complete
    first = inspector.feed(body[:split], 1.0)
    assert [type(e) for e in first] == [Part, Progress]
    part = first[0]
    assert isinstance(part, Part)
    assert (part.upload_id, part.index, part.field, part.filename, part.size, part.ts) == ("u1", 0, "a", None, 1, 1.0)
    assert part.sha256 == hashlib.sha256(b"1").hexdigest()
    second = inspector.feed(body[split:], 2.0)
    assert [type(e) for e in second] == [Part, Progress]
    assert second[0].bytes == len(body) and second[1].bytes == len(body)
    assert inspector.finish(3.0) == []
    assert [p.filename for p in inspector.parts] == [None, "x.bin"]


def test_truncated_multipart_fails_at_finish() -> None:
    body = body_of(("f", "x.bin", b"abc"))
    inspector = UploadInspector(upload_id="u", content_type=CT, total=None, limits=Limits())
    inspector.feed(body[:-5], 0)
    with pytest.raises(MalformedMultipart):
        inspector.finish(1)


def test_raw_body_part_at_finish() -> None:
    inspector = UploadInspector(upload_id="r", content_type="image/png", total=6, limits=Limits())
    events = inspector.feed(b"abc", 0.0) + inspector.feed(b"def", 0.05)
    assert [type(e) for e in events] == [Progress]  # the first chunk ticks; the second is within min_interval
    [part] = inspector.finish(0.2)
    assert isinstance(part, Part)
    assert (part.field, part.filename, part.content_type, part.size, part.bytes, part.ts) == (
        None,
        None,
        "image/png",
        6,
        6,
        0.2,
    )
    assert part.sha256 == hashlib.sha256(b"abcdef").hexdigest()
    assert inspector.parts == [part]
    assert inspector.finish(0.3) == []


def test_digest_off() -> None:
    for content_type, body in (("text/plain", b"raw"), (CT, body_of(("f", "a", b"x")))):
        inspector = UploadInspector(upload_id="u", content_type=content_type, total=None, limits=Limits(), digest=False)
        inspector.feed(body, 0)
        inspector.finish(0)
        assert [p.sha256 for p in inspector.parts] == [None]


def test_progress_policy_and_snapshot() -> None:
    policy = ProgressPolicy(min_interval=0.0, max_interval=0.0)
    inspector = UploadInspector(upload_id="p", content_type=None, total=None, limits=Limits(), progress=policy)
    assert all(isinstance(e, Progress) for e in inspector.feed(b"x", 1.0) + inspector.feed(b"y", 1.0))
    assert inspector.feed(b"", 2.0) == []
    assert inspector.snapshot(9.0) == Progress(upload_id="p", bytes=2, total=None, ts=9.0)


def test_part_data_is_never_copied() -> None:
    # Hashing sees memoryviews of the caller's chunk, not bytes copies.
    seen: list[object] = []

    class Spy:
        def update(self, data: object) -> None:
            seen.append(data)

        def hexdigest(self) -> str:
            return ""

    inspector = UploadInspector(upload_id="u", content_type=CT, total=None, limits=Limits(), hasher=Spy)
    chunk = body_of(("f", "a", b"x" * 1000))
    inspector.feed(chunk, 0)
    assert seen and all(isinstance(v, memoryview) and v.obj is chunk for v in seen)
