"""relay_rejections_total{code} counts the refusals of resumable requests, once each, by the code of the answer.

The contract: `relay_rejections_total{code}` is "errors answered by the relay, by code", and every limit of plain
uploads applies to each resumable request. A real relay (with --max-body-size 1KB --max-file-size 10, as the
review that found the gap used) is driven over real sockets; /_relay/metrics is read before and after each step.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.test_admin import metric
from tests.interop.support import TUS, Stack, tus_create, tus_patch

PROBLEM = "https://iana.org/assignments/http-problem-types#"
REJECTIONS = "relay_rejections_total"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("rejections"), ("--max-body-size", "1KB", "--max-file-size", "10"))
    s.start_sink()
    s.start_relay()
    yield s
    s.stop()


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client() as c:
        yield c


def rejections(client: httpx.Client) -> dict[str, float]:
    """Every relay_rejections_total series, by code."""
    text = client.get("/_relay/metrics").text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(REJECTIONS + "{"):
            code = line.split('code="', 1)[1].split('"', 1)[0]
            out[code] = metric(text, REJECTIONS, code=code)
    return out


def moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The series that changed, and by how much."""
    return {code: after[code] - before.get(code, 0.0) for code in after if after[code] != before.get(code, 0.0)}


def created(client: httpx.Client, length: int) -> str:
    answer = tus_create(client, "/upload/r.bin", length)
    assert answer.status_code == 201, answer.text
    location: str = answer.headers["location"]
    return location


def test_creation_over_the_file_limit_counts_file_too_large(client: httpx.Client) -> None:
    before = rejections(client)
    answer = tus_create(client, "/upload/big.bin", 11)
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "file_too_large"
    assert answer.headers["tus-max-size"] == "10"
    assert moved(before, rejections(client)) == {"file_too_large": 1}


def test_creation_over_the_body_limit_counts_body_too_large(client: httpx.Client) -> None:
    before = rejections(client)
    answer = tus_create(client, "/upload/big.bin", 1001)
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "body_too_large"
    assert moved(before, rejections(client)) == {"body_too_large": 1}


def test_unparsable_upload_length_counts_bad_request(client: httpx.Client) -> None:
    before = rejections(client)
    answer = client.post("/upload/bad.bin", headers={**TUS, "Upload-Length": "abc"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "bad_request"
    assert moved(before, rejections(client)) == {"bad_request": 1}


def test_offset_mismatch_counts_once(client: httpx.Client) -> None:
    location = created(client, 10)
    before = rejections(client)
    answer = tus_patch(client, location, 5, b"x" * 5)
    assert answer.status_code == 409, answer.text
    assert answer.headers["upload-offset"] == "0"
    assert moved(before, rejections(client)) == {"offset_mismatch": 1}


def test_wrong_content_type_counts_once(client: httpx.Client) -> None:
    location = created(client, 10)
    before = rejections(client)
    answer = tus_patch(client, location, 0, b"x" * 5, headers={"Content-Type": "text/plain"})
    assert answer.status_code == 415, answer.text
    assert moved(before, rejections(client)) == {"unsupported_media_type": 1}


def test_checksum_mismatch_counts_once(client: httpx.Client) -> None:
    location = created(client, 10)
    before = rejections(client)
    wrong = base64.b64encode(hashlib.sha1(b"not these bytes").digest()).decode()
    answer = tus_patch(client, location, 0, b"x" * 5, headers={"Upload-Checksum": f"sha1 {wrong}"})
    assert answer.status_code == 460, answer.text
    assert moved(before, rejections(client)) == {"checksum_mismatch": 1}
    head = client.head(location, headers=TUS)
    assert head.headers["upload-offset"] == "0"  # the bytes were discarded, as the contract says


def test_ietf_problem_document_counts_by_the_relays_code(client: httpx.Client) -> None:
    """A draft answer (application/problem+json) is counted under the code the relay uses for it elsewhere."""
    draft = {"Upload-Draft-Interop-Version": "8"}
    answer = client.post("/upload/ietf.bin", headers={**draft, "Upload-Complete": "?0"})
    assert answer.status_code == 201, answer.text
    location = answer.headers["location"]
    before = rejections(client)
    wrong = client.patch(
        location,
        headers={
            **draft,
            "Upload-Offset": "3",
            "Upload-Complete": "?0",
            "Content-Type": "application/partial-upload",
        },
        content=b"abc",
    )
    assert wrong.status_code == 409, wrong.text
    assert wrong.json()["type"] == PROBLEM + "mismatching-upload-offset"
    assert moved(before, rejections(client)) == {"offset_mismatch": 1}


def test_unknown_upload_counts_not_found(client: httpx.Client) -> None:
    before = rejections(client)
    assert client.head("/resumable/no-such-upload", headers=TUS).status_code == 404
    assert moved(before, rejections(client)) == {"not_found": 1}


def test_a_successful_upload_counts_nothing(client: httpx.Client) -> None:
    before = rejections(client)
    location = created(client, 10)
    assert tus_patch(client, location, 0, b"0123").status_code == 204
    done = tus_patch(client, location, 4, b"456789")
    assert done.status_code == 204, done.text
    assert client.head(location, headers=TUS).headers["upload-offset"] == "10"
    assert moved(before, rejections(client)) == {}


def test_a_refused_final_upload_counts_once(client: httpx.Client) -> None:
    """tus concatenation's final POST is refused through the same seam: counted once, not twice."""
    before = rejections(client)
    answer = client.post("/upload/final.bin", headers={**TUS, "Upload-Concat": "final;/resumable/no-such-partial"})
    assert answer.status_code == 404, answer.text
    assert moved(before, rejections(client)) == {"not_found": 1}


def test_a_wrong_tus_version_counts_once(client: httpx.Client) -> None:
    before = rejections(client)
    answer = client.post("/upload/v.bin", headers={"Tus-Resumable": "0.2.2", "Upload-Length": "5"})
    assert answer.status_code == 412, answer.text
    assert moved(before, rejections(client)) == {"unsupported_version": 1}


def test_a_refused_creation_is_recorded_rejected(client: httpx.Client) -> None:
    """As a plain upload refused from its headers: a `rejected` record under the answer's X-Upload-ID, with the
    error, and relay_uploads_total{outcome="rejected"} (relay/resumable/answers.py `note_refused_creation`)."""
    text = client.get("/_relay/metrics").text
    before = metric(text, "relay_uploads_total", outcome="rejected")
    answer = tus_create(client, "/upload/refused.bin", 11)
    assert answer.status_code == 413, answer.text
    record = client.get(f"/_relay/uploads/{answer.headers['x-upload-id']}").json()
    assert (record["state"], record["error"]["code"], record["total"]) == ("rejected", "file_too_large", 11)
    after = metric(client.get("/_relay/metrics").text, "relay_uploads_total", outcome="rejected")
    assert after == before + 1


def test_an_id_in_use_leaves_that_uploads_record_alone(client: httpx.Client) -> None:
    first = client.post("/upload/mine.bin", headers={**TUS, "Upload-Length": "5", "X-Upload-ID": "taken-id"})
    assert first.status_code == 201, first.text
    again = client.post("/upload/mine.bin", headers={**TUS, "Upload-Length": "5", "X-Upload-ID": "taken-id"})
    assert again.status_code == 409, again.text
    record = client.get("/_relay/uploads/taken-id").json()
    assert (record["state"], record["error"]) == ("receiving", None)
