"""RFC 9530 digests through a real relay and the sample upstream.

A body that matches its `Content-Digest` / `Repr-Digest` is delivered and the answer carries `Repr-Digest` of
what the relay received. One flipped byte anywhere is 400 `digest_mismatch`, and the upstream saw no complete
body: the sample upstream renames a file into place only when its body is complete, so it holds nothing.
"""

from __future__ import annotations

import base64
import hashlib
import random
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from relay.testing import RunningServer, start_relay, start_sink
from tests.conftest import multipart_body

SIZE = 3 * 1024 * 1024 + 17
DATA = random.Random(9530).randbytes(SIZE)
BOUNDARY = "digest-boundary-9530"


def field(algorithm: str, data: bytes) -> str:
    digest = hashlib.new(algorithm.replace("-", ""), data).digest()
    return f"{algorithm}=:{base64.b64encode(digest).decode()}:"


def flipped(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x20
    return bytes(out)


def pieces(data: bytes, size: int = 256 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "received"


@pytest.fixture
def relay(store: Path) -> Iterator[RunningServer]:
    sink = start_sink(store)
    relay = start_relay(upstream=sink.url)
    yield relay
    relay.stop()
    sink.stop()


def stored(store: Path, expect: int = 0) -> list[Path]:
    """The files the sample upstream holds, temporaries too, once an aborted body's temporary has gone
    (the upstream notices the abort a moment after the relay answered); `expect`: files that should stay."""
    deadline = time.monotonic() + 5
    while True:
        found = sorted(path for path in store.rglob("*") if path.is_file()) if store.exists() else []
        if len(found) <= expect or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def record(relay: RunningServer, response: httpx.Response) -> dict[str, object]:
    upload_id = response.headers["x-upload-id"]
    answer: dict[str, object] = httpx.get(f"{relay.url}/_relay/uploads/{upload_id}", timeout=5).json()
    return answer


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("header", ["content-digest", "repr-digest"])
def test_right_digest_is_delivered(relay: RunningServer, store: Path, framing: str, header: str) -> None:
    content = DATA if framing == "content-length" else pieces(DATA)
    response = httpx.post(
        f"{relay.url}/upload/ok.bin", content=content, headers={header: field("sha-256", DATA)}, timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.headers["repr-digest"] == field("sha-256", DATA)
    (path,) = stored(store, 1)
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(DATA).digest()


@pytest.mark.parametrize(
    ("where", "framing"),
    [("first chunk", "content-length"), ("last chunk", "content-length"), ("middle", "chunked")],
)
def test_one_flipped_byte_is_refused_and_never_complete_upstream(
    relay: RunningServer, store: Path, where: str, framing: str
) -> None:
    at = {"first chunk": 0, "last chunk": SIZE - 1, "middle": SIZE // 2}[where]
    body = flipped(DATA, at)
    content = body if framing == "content-length" else pieces(body)
    response = httpx.post(
        f"{relay.url}/upload/bad.bin", content=content, headers={"content-digest": field("sha-256", DATA)}, timeout=30
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "digest_mismatch"
    assert response.headers["repr-digest"] == field("sha-256", body)  # what the relay received (the contract)
    assert stored(store) == [], "the upstream kept a body whose digest did not match"
    answer = record(relay, response)
    assert answer["state"] == "failed"
    assert answer["error"] == {"code": "digest_mismatch", "message": response.json()["error"]["message"]}
    # The relay keeps serving: the same connection pool, the right body, delivered.
    again = httpx.post(
        f"{relay.url}/upload/good.bin", content=DATA, headers={"content-digest": field("sha-256", DATA)}, timeout=30
    )
    assert again.status_code == 200
    assert [path.name for path in stored(store, 1)] == ["good.bin"]


def test_multipart_body_is_checked_whole(relay: RunningServer, store: Path) -> None:
    body = multipart_body([("file", "m.bin", DATA[:100_000])], {"note": "x"}, boundary=BOUNDARY)
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    good = httpx.post(
        f"{relay.url}/upload/m", content=body, headers={**headers, "content-digest": field("sha-256", body)}
    )
    assert good.status_code == 200, good.text
    assert good.headers["repr-digest"] == field("sha-256", body)
    bad = httpx.post(
        f"{relay.url}/upload/m2",
        content=flipped(body, len(body) // 2),
        headers={**headers, "content-digest": field("sha-256", body)},
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "digest_mismatch"
    assert [path.name for path in stored(store, 1)] == ["m.bin"]


def test_sha512(relay: RunningServer, store: Path) -> None:
    ok = httpx.post(
        f"{relay.url}/upload/512.bin", content=pieces(DATA), headers={"repr-digest": field("sha-512", DATA)}, timeout=30
    )
    assert ok.status_code == 200
    # The relay hashed sha-256 anyway (the raw body's X-Upload-Sha256): that is the digest it answers with.
    assert ok.headers["repr-digest"] == field("sha-256", DATA)
    bad = httpx.post(
        f"{relay.url}/upload/512-bad.bin",
        content=flipped(DATA, 5),
        headers={"content-digest": f"{field('sha-256', flipped(DATA, 5))}, {field('sha-512', DATA)}"},
        timeout=30,
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "digest_mismatch"
    assert "sha-512" in bad.json()["error"]["message"]
    assert [path.name for path in stored(store, 1)] == ["512.bin"]


def test_sha512_only_with_part_hashing_off(store: Path) -> None:
    sink = start_sink(store)
    relay = start_relay("--digest", "none", upstream=sink.url)
    try:
        ok = httpx.post(f"{relay.url}/upload/n.bin", content=DATA, headers={"repr-digest": field("sha-512", DATA)})
    finally:
        relay.stop()
        sink.stop()
    assert ok.status_code == 200
    # No part hashing, yet the answer is sha-256 as the contract says: the checker hashed it besides sha-512.
    assert ok.headers["repr-digest"] == field("sha-256", DATA)


@pytest.mark.parametrize("header", ["content-digest", "repr-digest"])
def test_multipart_sha512_only_answers_sha256(relay: RunningServer, store: Path, header: str) -> None:
    """The inspector hashes a multipart body's parts, not the body: the sha-256 answered is the checker's."""
    body = multipart_body([("file", "m512.bin", DATA[:100_000])], {"note": "x"}, boundary=BOUNDARY)
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}", header: field("sha-512", body)}
    ok = httpx.post(f"{relay.url}/upload/m512", content=body, headers=headers)
    assert ok.status_code == 200, ok.text
    assert ok.headers["repr-digest"] == field("sha-256", body)
    received = flipped(body, len(body) // 2)
    bad = httpx.post(f"{relay.url}/upload/m512-bad", content=received, headers=headers)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "digest_mismatch"
    assert bad.headers["repr-digest"] == field("sha-256", received)  # what the relay received
    assert [path.name for path in stored(store, 1)] == ["m512.bin"]


def test_unknown_algorithm_is_ignored(relay: RunningServer, store: Path) -> None:
    md5 = base64.b64encode(hashlib.md5(b"not the body").digest()).decode()
    response = httpx.post(
        f"{relay.url}/upload/u.bin", content=DATA, headers={"content-digest": f"md5=:{md5}:, unixsum=42"}
    )
    assert response.status_code == 200
    assert "repr-digest" not in response.headers
    assert [path.name for path in stored(store, 1)] == ["u.bin"]


@pytest.mark.parametrize("value", ["sha-256=:not base64:", "sha-256", "SHA-256=:AAAA:", "sha-256=:AAAA:"])
def test_malformed_header_is_400_before_the_body(relay: RunningServer, store: Path, value: str) -> None:
    response = httpx.post(
        f"{relay.url}/upload/x.bin",
        content=DATA,
        headers={"content-digest": value, "expect": "100-continue"},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"
    assert response.headers.get("connection") == "close"
    assert record(relay, response)["state"] == "rejected"
    assert stored(store) == []
