"""The /_relay/ admin endpoints end to end: events, the uploads registry, metrics and access control.

Real relay and sample-upstream processes on loopback; SSE streams are read with httpx in a thread.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from relay.testing import RunningServer, start_relay, start_sink
from tests.conftest import CONTRACT_FIELDS, PART_FIELDS, multipart_body, sha256, tricky_bytes

BOUNDARY = "relay-admin-boundary-51f0"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
ADMIN = "admin-secret"
TOKEN = "client-secret"


def multipart(files: list[tuple[str, str, bytes]], fields: dict[str, str] | None = None) -> bytes:
    return multipart_body(files, fields, boundary=BOUNDARY)


class EventStream:
    """One SSE stream followed in a thread: `events` is [(name, data), ...] in arrival order.

    The stream ends by itself (the relay closes it after the terminal event) or when `until(events)` is true.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        until: Callable[[list[tuple[str, dict[str, Any]]]], bool] | None = None,
    ) -> None:
        self.url = url
        self.headers = headers or {}
        self.until = until
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.status: int | None = None
        self.content_type = ""
        self.ended_by_server = False
        self.error: BaseException | None = None
        self.opened = threading.Event()
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.opened.wait(10), "the event stream did not open"
        # The relay takes its snapshot right after sending the headers; let it, before anything is uploaded.
        time.sleep(0.1)

    def _run(self) -> None:
        try:
            with httpx.stream("GET", self.url, headers=self.headers, timeout=httpx.Timeout(60)) as response:
                self.status = response.status_code
                self.content_type = response.headers.get("content-type", "")
                self.opened.set()
                name: str | None = None
                data: list[str] = []
                for line in response.iter_lines():
                    if line.startswith(":"):
                        continue  # a ping comment
                    if line.startswith("event:"):
                        name = line.removeprefix("event:").strip()
                    elif line.startswith("data:"):
                        data.append(line.removeprefix("data:").strip())
                    elif line == "" and data:
                        self.events.append((name or "message", json.loads("\n".join(data))))
                        name, data = None, []
                        if self.until is not None and self.until(self.events):
                            return
                else:
                    self.ended_by_server = True
        except BaseException as exc:  # reported by wait()
            self.error = exc
        finally:
            self.opened.set()
            self.ended.set()

    def wait(self, timeout: float = 30) -> list[tuple[str, dict[str, Any]]]:
        assert self.ended.wait(timeout), f"the event stream did not end; got {self.names()}"
        if self.error is not None:
            raise self.error
        return self.events

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


@dataclass
class BigUpload:
    upload_id: str
    body: bytes
    files: list[tuple[str, str, bytes]]
    fields: dict[str, str]
    answer: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    ended_by_server: bool


def admin_get(server: RunningServer, path: str, token: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{server.url}{path}", headers=headers, timeout=10)


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of Prometheus text; 0 when it is absent (a counter never touched)."""
    label_text = ",".join(f'{key}="{value}"' for key, value in labels.items())
    wanted = f"{name}{{{label_text}}}" if labels else name
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            if key == wanted:
                return float(value)
    return 0.0


def raw_exchange(server: RunningServer, head: bytes, timeout: float = 5) -> bytes:
    """Send request headers only and read what comes back (for answers from the headers alone)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(head)
        out = b""
        while b"\r\n\r\n" not in out or not re.search(rb"\}\s*$", out):
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
    return out


def terminal_events(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, data) for name, data in events if name in ("completed", "failed")]


# -- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sink() -> Iterator[RunningServer]:
    server = start_sink(None)  # --discard: still sizes and hashes every part
    yield server
    server.stop()


@pytest.fixture(scope="module")
def relay(sink: RunningServer) -> Iterator[RunningServer]:
    server = start_relay("--max-body-size", "300MiB", upstream=sink.url)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def guarded(sink: RunningServer) -> Iterator[RunningServer]:
    """Every access control at once: client token, admin token, a 1 MiB limit, one upload at a time."""
    server = start_relay(
        "--token",
        TOKEN,
        "--admin-token",
        ADMIN,
        "--max-body-size",
        "1MiB",
        "--max-concurrent-uploads",
        "1",
        upstream=sink.url,
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def big_upload(relay: RunningServer) -> BigUpload:
    """A 64 MiB multipart upload (three files, two plain fields), followed from before its first byte."""
    rng = random.Random(64)
    files = [
        ("file", "first.bin", rng.randbytes(40 * 1024 * 1024)),
        ("file", "second.bin", tricky_bytes(2 * 1024 * 1024, seed=2)),
        ("other", "third.dat", rng.randbytes(22 * 1024 * 1024 - 3000)),
    ]
    fields = {"note": "hello relay", "tag": "x" * 1000}
    body = multipart(files, fields)
    upload_id = "big-multipart-64"
    stream = EventStream(f"{relay.url}/_relay/uploads/{upload_id}/events")
    assert stream.status == 200 and stream.content_type.startswith("text/event-stream")
    response = httpx.post(
        f"{relay.url}/upload/big/multi",
        content=body,
        timeout=60,
        headers={"content-type": MULTIPART, "x-upload-id": upload_id},
    )
    assert response.status_code == 200, response.text
    events = stream.wait()
    return BigUpload(upload_id, body, files, fields, response.json(), events, stream.ended_by_server)


# -- events ------------------------------------------------------------------------------------------------


def test_events_of_a_multipart_upload_in_order(big_upload: BigUpload) -> None:
    events, body = big_upload.events, big_upload.body
    names = [name for name, _ in events]
    assert names[0] == "started"
    assert names[-1] == "completed" and names.count("completed") == 1 and "failed" not in names
    assert big_upload.ended_by_server
    assert set(names) <= {"started", "progress", "part", "completed"}
    for _, data in events:
        assert data["upload_id"] == big_upload.upload_id
        assert data["total"] == len(body)
        assert {"upload_id", "bytes", "total", "ts"} <= set(data)

    counts = [data["bytes"] for _, data in events]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == len(body)
    stamps = [data["ts"] for _, data in events]
    assert stamps == sorted(stamps)
    progress = [data for name, data in events if name == "progress"]
    assert progress, "a 64 MiB upload reports progress"
    gaps = [later["ts"] - earlier["ts"] for earlier, later in zip(progress, progress[1:], strict=False)]
    assert all(gap >= 0.1 - 1e-6 for gap in gaps), gaps

    _, terminal = events[-1]
    assert terminal["upstream_status"] == 200


def test_part_events_match_sent_data_and_the_upstream(big_upload: BigUpload) -> None:
    parts = [data for name, data in big_upload.events if name == "part"]
    # Fields come first in the body, then the files, so parts complete in that order.
    expected = [
        (name, None, None, len(value.encode()), sha256(value.encode())) for name, value in big_upload.fields.items()
    ]
    expected += [
        (field, filename, "application/octet-stream", len(data), hashlib.sha256(data).hexdigest())
        for field, filename, data in big_upload.files
    ]
    assert [(p["field"], p["filename"], p["content_type"], p["size"], p["sha256"]) for p in parts] == expected
    upstream_files = [(f["field"], f["filename"], f["size"], f["sha256"]) for f in big_upload.answer["files"]]
    assert upstream_files == [(e[0], e[1], e[3], e[4]) for e in expected if e[1] is not None]
    assert big_upload.answer["fields"] == big_upload.fields
    assert big_upload.answer["bytes"] == len(big_upload.body)


def test_late_subscriber_gets_the_catch_up_then_the_end(relay: RunningServer, big_upload: BigUpload) -> None:
    stream = EventStream(f"{relay.url}/_relay/uploads/{big_upload.upload_id}/events")
    events = stream.wait(10)
    assert stream.ended_by_server
    names = [name for name, _ in events]
    assert names == ["progress", "part", "part", "part", "part", "part", "completed"]
    assert events[0][1]["bytes"] == events[0][1]["total"] == len(big_upload.body)
    # Replayed parts are the live ones with the current count: within one stream `bytes` never goes down.
    live_parts = [{**data, "bytes": len(big_upload.body)} for name, data in big_upload.events if name == "part"]
    assert [data for name, data in events if name == "part"] == live_parts
    assert events[-1][1] == big_upload.events[-1][1]


def test_subscriber_to_an_unknown_id_waits_for_it_to_start(relay: RunningServer) -> None:
    upload_id = f"later-{time.monotonic_ns()}"
    stream = EventStream(f"{relay.url}/_relay/uploads/{upload_id}/events")
    time.sleep(1.0)
    assert not stream.ended.is_set()
    data = tricky_bytes(100_000, seed=5)
    response = httpx.post(f"{relay.url}/upload/later.bin", content=data, headers={"x-upload-id": upload_id})
    assert response.status_code == 200
    events = stream.wait(10)
    names = [name for name, _ in events]
    assert names[0] == "started" and names[-1] == "completed"
    (part,) = [data for name, data in events if name == "part"]
    assert part["field"] is None and part["size"] == len(data) and part["sha256"] == sha256(data)


# -- the registry --------------------------------------------------------------------------------------------


def test_registry_record_has_the_contract_fields(relay: RunningServer, big_upload: BigUpload) -> None:
    response = admin_get(relay, f"/_relay/uploads/{big_upload.upload_id}")
    assert response.status_code == 200
    record = response.json()
    assert set(record) == CONTRACT_FIELDS | {"client", "path"}  # issue 16: records gain client and path
    assert record["id"] == big_upload.upload_id
    assert record["state"] == "completed"
    assert record["route"] == "/upload/"
    assert record["bytes"] == record["total"] == len(big_upload.body)
    assert record["upstream_status"] == 200 and record["error"] is None
    assert record["started_at"] <= record["finished_at"] <= time.time()
    assert all(set(part) == PART_FIELDS for part in record["parts"])
    live_parts = [data for name, data in big_upload.events if name == "part"]
    assert record["parts"] == [{key: part[key] for key in PART_FIELDS} for part in live_parts]


def test_unknown_upload_is_404_json(relay: RunningServer) -> None:
    response = admin_get(relay, "/_relay/uploads/never-seen")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == "not_found"


def test_uploads_are_listed_newest_first(relay: RunningServer) -> None:
    ids = [f"order-{index}-{time.monotonic_ns()}" for index in range(3)]
    for upload_id in ids:
        assert httpx.post(f"{relay.url}/upload/o", content=b"x", headers={"x-upload-id": upload_id}).is_success
    listed = [record["id"] for record in admin_get(relay, "/_relay/uploads").json()["uploads"]]
    assert [upload_id for upload_id in listed if upload_id in ids] == ids[::-1]
    assert listed[:3] == ids[::-1]
    assert all(
        set(record) == CONTRACT_FIELDS | {"client", "path"}
        for record in admin_get(relay, "/_relay/uploads").json()["uploads"]
    )


def test_all_events_stream_sees_two_uploads(relay: RunningServer) -> None:
    ids = [f"both-a-{time.monotonic_ns()}", f"both-b-{time.monotonic_ns()}"]

    def both_done(events: list[tuple[str, dict[str, Any]]]) -> bool:
        return {data["upload_id"] for name, data in events if name == "completed"} >= set(ids)

    stream = EventStream(f"{relay.url}/_relay/events", until=both_done)
    for upload_id in ids:
        response = httpx.post(f"{relay.url}/upload/two", content=b"y" * 10_000, headers={"x-upload-id": upload_id})
        assert response.status_code == 200
    events = stream.wait(10)
    for upload_id in ids:
        mine = [name for name, data in events if data["upload_id"] == upload_id]
        assert mine[0] == "started" and mine[-1] == "completed" and "part" in mine


# -- the data path is not slowed by followers ---------------------------------------------------------------------


def timed_upload(relay: RunningServer, upload_id: str, size_mib: int = 256) -> float:
    block = tricky_bytes(1024 * 1024, seed=9)

    def body() -> Iterator[bytes]:
        for _ in range(size_mib):
            yield block

    started = time.monotonic()
    response = httpx.post(
        f"{relay.url}/upload/fast.bin",
        content=body(),
        timeout=120,
        headers={"content-length": str(size_mib * 1024 * 1024), "x-upload-id": upload_id},
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    return elapsed


def test_a_slow_subscriber_does_not_slow_the_upload(relay: RunningServer) -> None:
    timed_upload(relay, f"warm-{time.monotonic_ns()}", size_mib=32)
    alone = timed_upload(relay, f"alone-{time.monotonic_ns()}")
    upload_id = f"followed-{time.monotonic_ns()}"
    # A subscriber that opens the stream and reads nothing at all until the upload is over.
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(f"GET /_relay/uploads/{upload_id}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.2)
        followed = timed_upload(relay, upload_id)
        received = b""
        while b"event: completed" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    finally:
        sock.close()
    assert followed < 2 * alone + 0.5, (followed, alone)
    assert b"event: started" in received and b"event: completed" in received


# -- refusals and failures ------------------------------------------------------------------------------------


def follow(server: RunningServer, upload_id: str, token: str | None = ADMIN) -> EventStream:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return EventStream(f"{server.url}/_relay/uploads/{upload_id}/events", headers=headers)


def test_refused_uploads_end_failed_and_are_recorded_rejected(guarded: RunningServer) -> None:
    auth = {"authorization": f"Bearer {TOKEN}"}
    before = admin_get(guarded, "/_relay/metrics", ADMIN).text
    cases = {
        # declared length over --max-body-size: 413 from the headers, with Expect: 100-continue never a 100
        "rej-413": (
            f"POST /upload/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nX-Upload-ID: rej-413\r\n"
            "Content-Length: 1048577\r\nExpect: 100-continue\r\n\r\n",
            413,
            "body_too_large",
        ),
        # no token: 401 from the headers
        "rej-401": (
            "POST /upload/x HTTP/1.1\r\nHost: x\r\nX-Upload-ID: rej-401\r\nContent-Length: 10\r\n"
            "Expect: 100-continue\r\n\r\n",
            401,
            "unauthorized",
        ),
    }
    for upload_id, (head, status, code) in cases.items():
        stream = follow(guarded, upload_id)
        answer = raw_exchange(guarded, head.encode())
        assert answer.startswith(f"HTTP/1.1 {status}".encode()), answer
        assert b"100 Continue" not in answer and b"connection: close" in answer.lower()
        assert f'"{code}"'.encode() in answer
        events = stream.wait(10)
        assert [name for name, _ in events] == ["started", "failed"]
        assert events[-1][1]["error"]["code"] == code
        record = admin_get(guarded, f"/_relay/uploads/{upload_id}", ADMIN).json()
        assert record["state"] == "rejected" and record["error"]["code"] == code and record["bytes"] == 0

    # chunked over the limit: refused mid-body, so `failed`, not `rejected`
    stream = follow(guarded, "fail-chunked")
    over = httpx.post(
        f"{guarded.url}/upload/c.bin",
        content=iter([b"z" * 65536] * 17),
        timeout=10,
        headers={**auth, "x-upload-id": "fail-chunked"},
    )
    assert over.status_code == 413
    events = stream.wait(10)
    assert events[0][0] == "started" and [name for name, _ in terminal_events(events)] == ["failed"]
    assert events[-1][1]["error"]["code"] == "body_too_large"
    record = admin_get(guarded, "/_relay/uploads/fail-chunked", ADMIN).json()
    assert record["state"] == "failed" and record["error"]["code"] == "body_too_large"

    after = admin_get(guarded, "/_relay/metrics", ADMIN).text
    for outcome, delta in (("rejected", 2), ("failed", 1)):
        assert (
            metric(after, "relay_uploads_total", outcome=outcome)
            - metric(before, "relay_uploads_total", outcome=outcome)
            == delta
        )
    for code in ("body_too_large", "unauthorized"):
        assert metric(after, "relay_rejections_total", code=code) > metric(before, "relay_rejections_total", code=code)
    assert metric(after, "relay_uploads_in_flight") == 0


def test_upstream_down_ends_failed() -> None:
    relay = start_relay(upstream="http://127.0.0.1:9")
    try:
        stream = follow(relay, "down-1", token=None)
        response = httpx.post(f"{relay.url}/upload/x", content=b"abc", headers={"x-upload-id": "down-1"})
        assert response.status_code == 502
        events = stream.wait(10)
        record = admin_get(relay, "/_relay/uploads/down-1").json()
        metrics = admin_get(relay, "/_relay/metrics").text
    finally:
        relay.stop()
    assert events[0][0] == "started"
    assert [(name, data["error"]["code"]) for name, data in terminal_events(events)] == [
        ("failed", "upstream_unavailable")
    ]
    assert record["state"] == "failed" and record["error"]["code"] == "upstream_unavailable"
    assert metric(metrics, "relay_uploads_total", outcome="failed") == 1
    assert metric(metrics, "relay_rejections_total", code="upstream_unavailable") == 1
    assert metric(metrics, "relay_uploads_in_flight") == 0


# -- metrics -------------------------------------------------------------------------------------------------


def test_metrics_move(relay: RunningServer) -> None:
    before = admin_get(relay, "/_relay/metrics")
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
    data = tricky_bytes(3 * 1024 * 1024 + 7, seed=11)
    assert httpx.post(f"{relay.url}/upload/m.bin", content=data, timeout=30).status_code == 200
    refused = raw_exchange(relay, b"POST /upload/huge HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n")
    assert refused.startswith(b"HTTP/1.1 413")
    after = admin_get(relay, "/_relay/metrics").text

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before.text, name, **labels)

    assert delta("relay_uploads_total", outcome="completed") == 1
    assert delta("relay_uploads_total", outcome="rejected") == 1
    assert delta("relay_bytes_received_total") == len(data)
    assert delta("relay_bytes_forwarded_total") == len(data)
    assert delta("relay_rejections_total", code="body_too_large") == 1
    assert metric(after, "relay_uploads_in_flight") == 0
    assert delta("relay_upload_duration_seconds_count") >= 1
    assert delta("relay_upload_size_bytes_count") >= 1
    assert delta("relay_upload_size_bytes_sum") >= len(data)
    assert "relay_bytes_drained_total" in after


# -- access control -----------------------------------------------------------------------------------------------


def test_admin_token_guards_all_but_health(guarded: RunningServer) -> None:
    assert admin_get(guarded, "/_relay/health").status_code == 200
    assert admin_get(guarded, "/_relay/health").json()["status"] == "ok"
    for path in (
        "/_relay/metrics",
        "/_relay/uploads",
        "/_relay/uploads/x",
        "/_relay/uploads/x/events",
        "/_relay/events",
    ):
        for token in (None, "wrong", TOKEN):
            response = admin_get(guarded, path, token)
            assert response.status_code == 401, (path, token)
            assert response.json()["error"]["code"] == "unauthorized"
    assert admin_get(guarded, "/_relay/metrics", ADMIN).status_code == 200
    assert admin_get(guarded, "/_relay/uploads", ADMIN).status_code == 200
    assert admin_get(guarded, "/_relay/uploads/x", ADMIN).status_code == 404
    stream = EventStream(
        f"{guarded.url}/_relay/events", headers={"authorization": f"Bearer {ADMIN}"}, until=lambda events: True
    )
    httpx.post(f"{guarded.url}/upload/t", content=b"t", headers={"authorization": f"Bearer {TOKEN}"})
    assert stream.wait(10) and stream.status == 200


def test_token_is_required_and_not_forwarded(guarded: RunningServer) -> None:
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {TOKEN}"}):
        response = httpx.post(f"{guarded.url}/upload/t", content=b"abc", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
        assert response.headers["x-upload-id"]
    response = httpx.post(f"{guarded.url}/upload/t", content=b"abc", headers={"authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert "authorization" not in dict(response.json()["headers"])


def test_forward_authorization_keeps_the_header(sink: RunningServer) -> None:
    relay = start_relay("--token", TOKEN, "--forward-authorization", upstream=sink.url)
    try:
        response = httpx.post(f"{relay.url}/upload/t", content=b"abc", headers={"authorization": f"Bearer {TOKEN}"})
        refused = httpx.post(f"{relay.url}/upload/t", content=b"abc")
    finally:
        relay.stop()
    assert response.status_code == 200
    assert dict(response.json()["headers"])["authorization"] == f"Bearer {TOKEN}"
    assert refused.status_code == 401


def test_max_concurrent_uploads(guarded: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
        sock.sendall(
            f"POST /upload/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Length: 10\r\n\r\nab".encode()
        )
        time.sleep(0.3)
        second = httpx.post(f"{guarded.url}/upload/x", content=b"x", headers={"authorization": f"Bearer {TOKEN}"})
        assert second.status_code == 429 and second.json()["error"]["code"] == "too_many_uploads"
        assert int(second.headers["retry-after"]) >= 1
        assert second.headers["x-upload-id"]
        record = admin_get(guarded, f"/_relay/uploads/{second.headers['x-upload-id']}", ADMIN).json()
        assert record["state"] == "rejected" and record["error"]["code"] == "too_many_uploads"
        sock.sendall(b"cdefghij")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
    third = httpx.post(f"{guarded.url}/upload/x", content=b"x", headers={"authorization": f"Bearer {TOKEN}"})
    assert third.status_code == 200


@pytest.mark.parametrize("path", ["/_relay/openapi.json", "/_relay/docs"])
def test_admin_token_guards_the_api_docs(guarded: RunningServer, path: str) -> None:
    assert admin_get(guarded, path).status_code in (401, 404)


def test_admin_errors_are_contract_json(relay: RunningServer) -> None:
    response = httpx.options(f"{relay.url}/_relay/health")
    assert response.status_code in (404, 405)
    assert set(response.json()["error"]) == {"code", "message"}


def test_refused_upload_records_the_declared_total(guarded: RunningServer) -> None:
    response = httpx.post(f"{guarded.url}/upload/t", content=b"abc", headers={"x-upload-id": "rej-total"})
    assert response.status_code == 401
    record = admin_get(guarded, "/_relay/uploads/rej-total", ADMIN).json()
    assert record["state"] == "rejected" and record["total"] == 3


def test_a_refusal_never_touches_the_upload_in_progress_with_the_same_id(relay: RunningServer) -> None:
    upload_id = f"clobber-{time.monotonic_ns()}"
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
        sock.sendall(f"POST /upload/slow HTTP/1.1\r\nHost: x\r\nX-Upload-ID: {upload_id}\r\n"
                     "Content-Length: 10\r\n\r\nab".encode())  # fmt: skip
        time.sleep(0.3)
        stream = follow(relay, upload_id, token=None)
        refusals = [
            httpx.get(f"{relay.url}/upload/x", headers={"x-upload-id": upload_id}),  # 405
            httpx.post(f"{relay.url}/upload/%2e%2e/x", content=b"x", headers={"x-upload-id": upload_id}),  # 400
        ]
        assert [response.status_code for response in refusals] == [405, 400] or all(
            response.status_code == 409 for response in refusals
        )
        record = admin_get(relay, f"/_relay/uploads/{upload_id}").json()
        again = httpx.post(f"{relay.url}/upload/x", content=b"x", headers={"x-upload-id": upload_id})
        sock.sendall(b"cdefghij")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
    events = stream.wait(10)
    assert record["state"] == "receiving", record
    assert again.status_code == 409
    assert [name for name, _ in terminal_events(events)] == ["completed"], events


def test_progress_at_least_once_a_second_while_bytes_flow(relay: RunningServer) -> None:
    upload_id = f"trickle-{time.monotonic_ns()}"
    stream = follow(relay, upload_id, token=None)

    def trickle() -> Iterator[bytes]:
        for _ in range(12):  # chunked (no total, so no percent ticks): 12 chunks 0.25 s apart
            yield b"t" * 1000
            time.sleep(0.25)

    response = httpx.post(f"{relay.url}/upload/trickle", content=trickle(), headers={"x-upload-id": upload_id})
    assert response.status_code == 200
    events = stream.wait(10)
    stamps = [data["ts"] for name, data in events if name == "progress"]
    assert len(stamps) >= 2, events
    gaps = [later - earlier for earlier, later in zip(stamps, stamps[1:], strict=False)]
    assert all(0.1 - 1e-6 <= gap <= 1.0 + 0.25 + 0.2 for gap in gaps), gaps
    assert [data["total"] for _, data in events] == [None] * len(events)


def test_stopping_the_relay_ends_open_event_streams_cleanly(sink: RunningServer) -> None:
    server = start_relay(upstream=sink.url)
    try:
        streams = [EventStream(f"{server.url}/_relay/events"), EventStream(f"{server.url}/_relay/uploads/x/events")]
    finally:
        assert server.stop() == 0
    for stream in streams:
        stream.wait(10)  # raises what httpx raised: an incomplete chunked body would be a RemoteProtocolError
        assert stream.ended_by_server
    assert "without completing response" not in server.log()
