"""The IETF draft "Resumable Uploads for HTTP", interop versions 6 (-05) and 8 (-09..-11), end to end:
creation, 104 on a raw socket, appends with application/partial-upload, problem documents per version."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.interop.support import Stack, metadata, raw_request, read_interim, sha256, wait_for

PARTIAL = "application/partial-upload"
PROBLEM = "https://iana.org/assignments/http-problem-types#"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("ietf"), ("--max-body-size", "50MiB"))
    s.start_sink()
    s.start_relay()
    yield s
    s.stop()


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client() as c:
        yield c


def ietf(version: int, **headers: str) -> dict[str, str]:
    return {"Upload-Draft-Interop-Version": str(version), **{k.replace("_", "-"): v for k, v in headers.items()}}


def create(client: httpx.Client, version: int, path: str, **headers: str) -> httpx.Response:
    return client.post(path, headers=ietf(version, Upload_Complete="?0", **headers))


def append(
    client: httpx.Client, version: int, location: str, offset: int, body: bytes, complete: bool
) -> httpx.Response:
    headers = ietf(version, Upload_Offset=str(offset), Upload_Complete="?1" if complete else "?0", Content_Type=PARTIAL)
    return client.patch(location, headers=headers, content=body)


def stored_for(stack: Stack, upload_id: str) -> list[bytes]:
    folder = stack.store / upload_id
    return [p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()] if folder.exists() else []


@pytest.mark.parametrize("version", [6, 8])
def test_creation_then_appends(stack: Stack, client: httpx.Client, version: int) -> None:
    data = os.urandom(700_001)
    created = create(client, version, "/upload/ietf/a?z=1", Upload_Metadata=metadata(filename="ietf.bin", note="n1"))
    assert created.status_code == 201, created.text
    assert created.headers["upload-draft-interop-version"] == str(version)
    assert created.headers["upload-complete"] == "?0"
    assert created.headers["upload-offset"] == "0"
    assert "upload-limit" in created.headers
    location, upload_id = created.headers["location"], created.headers["x-upload-id"]
    head = client.head(location, headers=ietf(version))
    assert head.status_code == 204
    assert head.headers["upload-offset"] == "0" and head.headers["upload-complete"] == "?0"
    assert "upload-length" not in head.headers
    assert head.headers["cache-control"] == "no-store"
    if version == 8:
        assert "max-size=" in head.headers["upload-limit"]
    offset = 0
    for size in (250_000, 250_000):
        answer = append(client, version, location, offset, data[offset : offset + size], complete=False)
        assert answer.status_code == (201 if version == 6 else 204), answer.text
        offset += size
        assert answer.headers["upload-offset"] == str(offset)
        assert answer.headers["upload-complete"] == "?0"
    assert not stored_for(stack, upload_id)
    last = append(client, version, location, offset, data[offset:], complete=True)
    assert last.status_code == 200, last.text  # the upstream's own answer
    assert last.headers["upload-complete"] == "?1"
    assert last.headers["upload-offset"] == str(len(data))
    assert last.headers["x-upload-sha256"] == sha256(data)
    assert last.headers["x-upstream-status"] == "200"
    answer = last.json()  # the sink's
    assert answer["fields"] == {"note": "n1"}
    assert answer["files"][0]["filename"] == "ietf.bin" and answer["files"][0]["sha256"] == sha256(data)
    assert answer["query"] == {"z": "1"}
    seen = dict(answer["headers"])  # what the upstream got: X-Forwarded-* as a plain upload brings them
    assert seen["x-forwarded-host"] == httpx.URL(stack.url).netloc.decode() and seen["x-forwarded-proto"] == "http"
    assert seen["x-upload-id"] == upload_id
    assert [sha256(b) for b in stored_for(stack, upload_id)] == [sha256(data)]
    head = client.head(location, headers=ietf(version))
    assert head.headers["upload-complete"] == "?1" and head.headers["upload-length"] == str(len(data))
    again = append(client, version, location, len(data), b"", complete=True)
    assert again.status_code == 200 and again.headers["x-upload-sha256"] == sha256(data)
    assert stack.record(upload_id)["state"] == "completed"
    wait_for(lambda: not (stack.spool / f"{upload_id}.data").exists(), 5)


@pytest.mark.parametrize("version", [6, 8])
def test_whole_file_in_one_request_with_104_then_cut_then_resumed(stack: Stack, version: int) -> None:
    assert stack.relay is not None
    data = os.urandom(4 * 1024 * 1024)
    head = (
        f"POST /upload/ietf/whole.bin HTTP/1.1\nHost: x\nUpload-Draft-Interop-Version: {version}\n"
        f"Upload-Complete: ?1\nContent-Type: application/x-whole\nContent-Length: {len(data)}\n"
    )
    sock = raw_request(stack.relay.port, head)  # the head alone: the 104 must come before any body byte
    status, interim = read_interim(sock)
    assert status == 104
    assert interim["upload-draft-interop-version"] == str(version)
    location = interim["location"]
    assert location.startswith("/resumable/")
    upload_id = location.rsplit("/", 1)[1]
    half = len(data) // 2
    sock.sendall(data[:half])
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        stack.wait_spooled(upload_id, 0)  # the relay is taking what was sent
        time.sleep(0.2)
        sock.close()  # cut mid-body
        seen = client.head(location, headers=ietf(version))
        assert seen.status_code == 204, seen.text
        offset = int(seen.headers["upload-offset"])
        assert 0 < offset <= half, stack.relay.log()[-3000:]
        assert seen.headers["upload-complete"] == "?0"
        assert seen.headers["upload-length"] == str(len(data))
        assert not stored_for(stack, upload_id)  # the upstream never saw a complete body
        assert stack.partial_files() == []
        last = append(client, version, location, offset, data[offset:], complete=True)
        assert last.status_code == 200, last.text
        assert last.headers["x-upload-sha256"] == sha256(data)
        assert last.json()["files"][0]["content_type"] == "application/x-whole"
    assert [sha256(b) for b in stored_for(stack, upload_id)] == [sha256(data)]


@pytest.mark.parametrize("version", [6, 8])
def test_whole_file_in_one_request_completes(stack: Stack, client: httpx.Client, version: int) -> None:
    data = os.urandom(300_000)
    answer = client.post(
        "/upload/ietf/one.bin", headers=ietf(version, Upload_Complete="?1"), content=data
    )  # httpx skips the 104
    assert answer.status_code == 200, answer.text
    assert answer.headers["upload-complete"] == "?1"
    assert answer.headers["x-upload-sha256"] == sha256(data)
    assert answer.headers["location"] == "/resumable/" + answer.headers["x-upload-id"]
    assert [sha256(b) for b in stored_for(stack, answer.headers["x-upload-id"])] == [sha256(data)]


@pytest.mark.parametrize("version", [6, 8])
def test_problem_documents(stack: Stack, client: httpx.Client, version: int) -> None:
    created = create(client, version, "/upload/ietf/p")
    location, upload_id = created.headers["location"], created.headers["x-upload-id"]
    assert append(client, version, location, 0, b"a" * 100, complete=False).status_code in (201, 204)
    wrong = append(client, version, location, 50, b"b" * 10, complete=False)
    assert wrong.status_code == 409
    assert wrong.headers["upload-offset"] == "100"
    assert wrong.headers["content-type"] == "application/problem+json"
    doc = wrong.json()
    assert doc["type"] == PROBLEM + "mismatching-upload-offset"
    assert (doc["expected-offset"], doc["provided-offset"]) == (100, 50)
    media = client.patch(
        location,
        headers=ietf(
            version, Upload_Offset="100", Upload_Complete="?0", Content_Type="application/offset+octet-stream"
        ),
        content=b"x",
    )
    assert media.status_code == 415
    assert append(client, version, location, 100, b"c" * 100, complete=True).status_code == 200
    more = append(client, version, location, 200, b"d" * 10, complete=True)
    assert more.status_code == 400
    kind = "completed-upload" if version == 6 else "inconsistent-upload-length"
    assert more.json()["type"] == PROBLEM + kind
    assert [sha256(b) for b in stored_for(stack, upload_id)] == [sha256(b"a" * 100 + b"c" * 100)]


@pytest.mark.parametrize("version", [6, 8])
def test_bytes_past_the_length(stack: Stack, client: httpx.Client, version: int) -> None:
    created = create(client, version, "/upload/ietf/past", Upload_Length="100")
    location, upload_id = created.headers["location"], created.headers["x-upload-id"]

    def body() -> Iterator[bytes]:
        yield b"a" * 80
        time.sleep(0.05)
        yield b"b" * 80

    answer = client.patch(
        location, headers=ietf(version, Upload_Offset="0", Upload_Complete="?0", Content_Type=PARTIAL), content=body()
    )
    assert answer.status_code == 400, answer.text
    head = client.head(location, headers=ietf(version))
    if version == 6:  # -05: stop appending at the length
        assert head.headers["upload-offset"] == "100"
    else:  # -09..-11: the upload is invalid from then on
        assert answer.json()["type"] == PROBLEM + "inconsistent-upload-length"
        assert head.status_code == 404
        assert not (stack.spool / f"{upload_id}.data").exists()
    assert not stored_for(stack, upload_id)


@pytest.mark.parametrize("version", [6, 8])
def test_inconsistent_length_and_delete(stack: Stack, client: httpx.Client, version: int) -> None:
    created = create(client, version, "/upload/ietf/len", Upload_Length="100")
    location, upload_id = created.headers["location"], created.headers["x-upload-id"]
    bad = client.patch(
        location,
        headers=ietf(version, Upload_Offset="0", Upload_Complete="?1", Upload_Length="100", Content_Type=PARTIAL),
        content=b"x" * 50,
    )
    assert bad.status_code == 400
    if version == 8:
        assert bad.json()["type"] == PROBLEM + "inconsistent-upload-length"
    deleted = client.delete(location, headers=ietf(version))
    assert deleted.status_code == 204
    assert client.head(location, headers=ietf(version)).status_code == 404
    assert stack.record(upload_id)["error"]["code"] == "terminated"


def test_options_for_the_drafts(client: httpx.Client) -> None:
    eight = client.options("/upload/x", headers=ietf(8))
    assert eight.status_code == 204
    assert "application/partial-upload" in eight.headers["accept-patch"]
    six = client.options("/resumable/", headers=ietf(6))
    assert "max-size=" in six.headers["upload-limit"]


def test_another_interop_version_is_a_plain_upload(stack: Stack, client: httpx.Client) -> None:
    answer = client.post("/upload/ietf/plain.bin", headers=ietf(7, Upload_Complete="?1"), content=b"plain")
    assert answer.status_code == 200 and "location" not in answer.headers
    assert json.loads(answer.text)["files"][0]["size"] == 5


def test_content_disposition_names_the_file(stack: Stack, client: httpx.Client) -> None:
    answer = client.post(
        "/upload/ietf/named",
        headers=ietf(8, Upload_Complete="?1", Content_Disposition='attachment; filename="report 1.pdf"'),
        content=b"%PDF-1.7 not really",
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["files"][0]["filename"] == "report 1.pdf"


def test_a_per_append_digest_on_a_filling_incomplete_append_is_not_the_files(
    stack: Stack, client: httpx.Client
) -> None:
    """An `Upload-Complete: ?0` append that brings the last bytes does not complete the upload, so its Repr-Digest
    (here: of its own bytes) is not taken for the whole file's (completion.py Rule 7). A reviewer's repro: 400
    digest_mismatch and the data deleted, after the fix that saves a completing append's digest at its start."""
    data = os.urandom(10)
    mine = "sha-256=:" + base64.b64encode(hashlib.sha256(data[4:]).digest()).decode() + ":"
    created = create(client, 8, "/upload/ietf/filling", Upload_Length=str(len(data)))
    location = created.headers["location"]
    assert append(client, 8, location, 0, data[:4], complete=False).status_code == 204
    headers = ietf(8, Upload_Offset="4", Upload_Complete="?0", Content_Type=PARTIAL, Repr_Digest=mine)
    assert client.patch(location, headers=headers, content=data[4:]).status_code == 204
    done = append(client, 8, location, len(data), b"", complete=True)
    assert done.status_code == 200, done.text
    assert stored_for(stack, created.headers["x-upload-id"]) != []
