"""The relay end to end: real relay and upstream processes on loopback, real bytes, sha256 at the sink."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from relay.testing import RunningServer, start_relay, start_sink
from tests.conftest import multipart_body, sha256, tricky_bytes

BOUNDARY = "relay-test-boundary-7d4a"


def multipart(files: list[tuple[str, str, bytes]], fields: dict[str, str] | None = None) -> bytes:
    return multipart_body(files, fields, boundary=BOUNDARY)


MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "received"


@pytest.fixture
def sink(store: Path) -> Iterator[RunningServer]:
    server = start_sink(store)
    yield server
    server.stop()


@pytest.fixture
def relay(sink: RunningServer) -> Iterator[RunningServer]:
    server = start_relay("--max-body-size", "300MiB", upstream=sink.url)
    yield server
    server.stop()


def stored_files(store: Path) -> list[Path]:
    return sorted(path for path in store.rglob("*") if path.is_file()) if store.exists() else []


def chunks(data: bytes, size: int = 100_000) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


SIZES = [0, 1, 64 * 1024 - 1, 64 * 1024 + 1, 10 * 1024 * 1024]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_raw_upload_is_byte_exact(relay: RunningServer, store: Path, size: int, framing: str) -> None:
    data = tricky_bytes(size, seed=size)
    content = data if framing == "content-length" else chunks(data)
    response = httpx.post(
        f"{relay.url}/upload/raw/data.bin?x=1",
        content=content,
        timeout=30,
        headers={"content-type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["bytes"] == size
    assert answer["framing"] == (framing if size or framing == "chunked" else "content-length")
    assert answer["files"][0]["sha256"] == sha256(data)
    assert response.headers["x-upload-sha256"] == sha256(data)
    assert response.headers["x-upload-id"]
    (stored,) = stored_files(store)
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == sha256(data)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_multipart_upload_is_byte_exact(relay: RunningServer, store: Path, size: int, framing: str) -> None:
    data = tricky_bytes(size, seed=size + 1)
    other = tricky_bytes(1000, seed=7)
    body = multipart([("file", "a.bin", data), ("file", "b.bin", other)], {"note": "hello"})
    content = body if framing == "content-length" else chunks(body, 65_536)
    response = httpx.post(f"{relay.url}/upload/m", content=content, headers={"content-type": MULTIPART}, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["framing"] == framing
    assert answer["bytes"] == len(body)
    assert [(f["filename"], f["size"], f["sha256"]) for f in answer["files"]] == [
        ("a.bin", size, sha256(data)),
        ("b.bin", 1000, sha256(other)),
    ]
    assert answer["fields"] == {"note": "hello"}
    assert "x-upload-sha256" not in response.headers  # two files: no single digest
    digests = sorted(hashlib.sha256(path.read_bytes()).hexdigest() for path in stored_files(store))
    assert digests == sorted([sha256(data), sha256(other)])


@pytest.mark.parametrize("body_kind", ["raw", "multipart"])
def test_256_mib_streams_through(relay: RunningServer, body_kind: str) -> None:
    block = tricky_bytes(1024 * 1024, seed=3)
    expected = hashlib.sha256()
    for _ in range(256):
        expected.update(block)
    head, tail = b"", b""
    if body_kind == "multipart":
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        tail = f"\r\n--{BOUNDARY}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(256):
            yield block
        yield tail

    total = len(head) + 256 * len(block) + len(tail)
    content_type = MULTIPART if body_kind == "multipart" else "application/octet-stream"
    response = httpx.post(
        f"{relay.url}/upload/big.bin",
        content=body(),
        timeout=120,
        headers={"content-length": str(total), "content-type": content_type},
    )
    assert response.status_code == 200, response.text
    assert response.json()["files"][0]["sha256"] == expected.hexdigest()
    assert response.json()["files"][0]["size"] == 256 * 1024 * 1024
    assert response.headers["x-upload-sha256"] == expected.hexdigest()
    assert response.json()["framing"] == "content-length"


def test_seed_scenario_matches_a_direct_call(test_upstream, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    seed = test_upstream("seed")
    relay = start_relay(upstream=seed.url)
    try:
        files = {"file": ("file.txt", b"hello from the seed\r\n--not-a-boundary\r\n", "text/plain")}
        params = {"q1": "This is a query param"}
        direct = httpx.post(f"{seed.url}/upload/p1v/p2v", params=params, files=files, timeout=10)
        relayed = httpx.post(f"{relay.url}/upload/p1v/p2v", params=params, files=files, timeout=10)
    finally:
        relay.stop()
    assert direct.status_code == relayed.status_code == 200
    d, r = direct.json(), relayed.json()
    assert (r["p1"], r["p2"], r["q1"]) == ("p1v", "p2v", "This is a query param")
    # Same body bytes apart from httpx's random boundary.
    assert len(d["body"]) == len(r["body"])
    assert "hello from the seed" in r["body"]


RAW_TARGETS = [
    "/upload/a%2Fb/%7Euser/x%20y;p=1?q=%20a+b&q=2&empty=",
    "/upload/x?",  # an empty query keeps its "?"
    "/upload/x",
    "/upload/%252e%252e/x",  # double-encoded dots: decoded once they are not a dot segment
    "/upload/UPPER/%C3%A9t%c3%a9?%FF=%00",
]


@pytest.mark.parametrize("target", RAW_TARGETS)
def test_raw_target_is_forwarded_unchanged(test_upstream, target: str) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(upstream=test_upstream("recorder").url)
    try:
        request = f"POST {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"
        answer = raw_request(relay, request)
    finally:
        relay.stop()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["target"] == target


def raw_request(server: RunningServer, request: str | bytes, timeout: float = 10) -> bytes:
    data = request.encode() if isinstance(request, str) else request
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_all(sock)


def read_all(sock: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def error_of(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


def test_routing_and_methods(test_upstream) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(upstream=test_upstream("recorder").url)
    try:
        check_routing(relay)
    finally:
        relay.stop()


def check_routing(relay: RunningServer) -> None:
    assert error_of(httpx.post(f"{relay.url}/elsewhere/x", content=b"x")) == "not_found"
    assert error_of(httpx.post(f"{relay.url}/upload", content=b"x")) == "not_found"
    assert error_of(httpx.post(f"{relay.url}/Upload/x", content=b"x")) == "not_found"
    response = httpx.get(f"{relay.url}/upload/x")
    assert response.status_code == 405 and error_of(response) == "method_not_allowed"
    assert response.headers["x-upload-id"]
    for method in ("POST", "PUT", "PATCH"):
        assert httpx.request(method, f"{relay.url}/upload/m/{method}", content=b"abc").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/upload/../x",
        "/upload/%2e%2e/x",
        "/upload/%2E/x",
        "/upload/a/..%5Cb",
        "/upload/..%5c..%5cetc",
        "/upload/a/.",
        "/upload/%2e%2E%2fsecret",
    ],
)
def test_dot_segments_are_refused(relay: RunningServer, path: str) -> None:
    answer = raw_request(relay, f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b'"bad_request"' in answer


def test_upload_ids(relay: RunningServer) -> None:
    response = httpx.post(f"{relay.url}/upload/id", content=b"x", headers={"x-upload-id": "my_id-1"})
    assert response.headers["x-upload-id"] == "my_id-1"
    assert ("x-upload-id", "my_id-1") in [tuple(h) for h in response.json()["headers"]]
    bad = httpx.post(f"{relay.url}/upload/id", content=b"x", headers={"x-upload-id": "no spaces!"})
    assert bad.status_code == 400 and error_of(bad) == "bad_request"
    assert bad.headers["x-upload-id"] != "no spaces!" and len(bad.headers["x-upload-id"]) >= 16
    generated = httpx.post(f"{relay.url}/upload/id", content=b"x").headers["x-upload-id"]
    assert len(generated) >= 22  # 128 bits, base64url


def test_upload_id_in_use_is_409(relay: RunningServer) -> None:
    sock = socket.create_connection(("127.0.0.1", relay.port))
    try:
        sock.sendall(b"POST /upload/slow HTTP/1.1\r\nHost: x\r\nX-Upload-ID: busy\r\nContent-Length: 10\r\n\r\nab")
        time.sleep(0.3)
        second = httpx.post(f"{relay.url}/upload/x", content=b"x", headers={"x-upload-id": "busy"})
        assert second.status_code == 409 and error_of(second) == "upload_id_in_use"
        sock.sendall(b"cdefghij")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        sock.close()


def test_header_hygiene(sink: RunningServer) -> None:
    relay = start_relay(upstream=sink.url)
    try:
        response = httpx.post(
            f"{relay.url}/upload/h",
            content=b"body",
            headers={
                "connection": "keep-alive, x-secret-hop",
                "x-secret-hop": "1",
                "keep-alive": "timeout=5",
                "te": "trailers",
                "upgrade": "websocket",
                "proxy-authorization": "Basic x",
                "x-forwarded-for": "6.6.6.6",
                "x-custom": "kept",
                "host": "client.example",
            },
        )
        trusted = start_relay("--trust-forwarded", upstream=sink.url)
        try:
            chain = httpx.post(f"{trusted.url}/upload/h", content=b"b", headers={"x-forwarded-for": "6.6.6.6"})
        finally:
            trusted.stop()
    finally:
        relay.stop()
    seen = dict(response.json()["headers"])
    for hop in ("x-secret-hop", "keep-alive", "te", "upgrade", "proxy-authorization", "transfer-encoding"):
        assert hop not in seen
    assert seen["host"] == sink.url.removeprefix("http://")
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-host"] == "client.example"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-custom"] == "kept"
    assert seen["content-length"] == "4"
    assert "accept-encoding" not in seen or seen["accept-encoding"] == response.request.headers["accept-encoding"]
    assert dict(chain.json()["headers"])["x-forwarded-for"] == "6.6.6.6, 127.0.0.1"


# -- limits ------------------------------------------------------------------------------------------------


def test_declared_length_over_limit_is_refused_before_upstream(tmp_path: Path) -> None:
    # The upstream is a closed port: had the relay contacted it, the answer would be 502.
    relay = start_relay("--max-body-size", "1KiB", upstream="http://127.0.0.1:9")
    try:
        request = b"POST /upload/big HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\nExpect: 100-continue\r\n\r\n"
        with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
            sock.sendall(request)
            answer = read_all(sock)
        exact = httpx.post(f"{relay.url}/upload/ok", content=b"x" * 1024)
    finally:
        relay.stop()
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b"100 Continue" not in answer
    assert b"connection: close" in answer.lower()
    assert b'"body_too_large"' in answer
    assert exact.status_code == 502  # exactly the limit passes the check and goes on to the (absent) upstream


def test_chunked_body_over_limit_is_aborted_upstream(sink: RunningServer, store: Path) -> None:
    relay = start_relay("--max-body-size", "1MiB", upstream=sink.url)
    try:
        over = httpx.post(f"{relay.url}/upload/c.bin", content=chunks(b"x" * (1024 * 1024 + 1)), timeout=10)
        exact = httpx.post(f"{relay.url}/upload/d.bin", content=chunks(b"y" * (1024 * 1024)), timeout=10)
    finally:
        relay.stop()
    assert over.status_code == 413 and error_of(over) == "body_too_large"
    assert exact.status_code == 200
    names = [path.name for path in stored_files(store)]
    assert names == ["d.bin"]  # nothing of the refused body, not even a temp file


# -- failures ----------------------------------------------------------------------------------------------


def test_upstream_refusing_connections_is_502() -> None:
    relay = start_relay(upstream="http://127.0.0.1:9")
    try:
        response = httpx.post(f"{relay.url}/upload/x", content=b"abc")
    finally:
        relay.stop()
    assert response.status_code == 502 and error_of(response) == "upstream_unavailable"
    assert response.headers["x-upload-id"]


def test_upstream_closing_mid_body_is_502(test_upstream) -> None:  # type: ignore[no-untyped-def]
    upstream = test_upstream("close-mid-body")
    relay = start_relay(upstream=upstream.url)
    try:
        response = httpx.post(f"{relay.url}/upload/x", content=b"z" * (8 * 1024 * 1024), timeout=20)
    finally:
        relay.stop()
    assert response.status_code == 502 and error_of(response) == "upstream_failed"


def test_stalled_upstream_is_504(test_upstream) -> None:  # type: ignore[no-untyped-def]
    upstream = test_upstream("stall")
    relay = start_relay("--upstream-timeout", "1", upstream=upstream.url)
    try:
        started = time.monotonic()
        response = httpx.post(f"{relay.url}/upload/x", content=b"z" * 100, timeout=20)
        elapsed = time.monotonic() - started
    finally:
        relay.stop()
    assert response.status_code == 504 and error_of(response) == "upstream_timeout"
    assert elapsed < 10


def test_broken_upstream_response_closes_the_connection(test_upstream) -> None:  # type: ignore[no-untyped-def]
    upstream = test_upstream("broken-response")
    relay = start_relay(upstream=upstream.url)
    try:
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(f"{relay.url}/upload/x", content=b"abc", headers={"x-upload-id": "broken-1"}, timeout=10)
        assert httpx.get(f"{relay.url}/_relay/health").status_code == 200
        record = httpx.get(f"{relay.url}/_relay/uploads/broken-1").json()
        log = relay.log()
    finally:
        relay.stop()
    assert record["state"] == "failed" and record["error"]["code"] == "upstream_failed"
    # The failure is recorded; closing the connection is all that is left, and it needs no traceback.
    assert "Traceback" not in log and "Exception in ASGI application" not in log


def test_client_disconnect_aborts_upstream_and_relay_keeps_serving(relay: RunningServer, store: Path) -> None:
    with socket.create_connection(("127.0.0.1", relay.port)) as sock:
        sock.sendall(b"POST /upload/cut.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
        sock.sendall(b"a" * 3_000_000)
        time.sleep(0.3)
    time.sleep(0.5)
    assert stored_files(store) == []
    with httpx.Client(base_url=relay.url, timeout=10) as client:
        for index in range(50):
            data = tricky_bytes(2000, seed=index)
            response = client.post(f"/upload/after/{index}.bin", content=data)
            assert response.status_code == 200
            assert response.json()["files"][0]["sha256"] == sha256(data)
    assert len(stored_files(store)) == 50
    assert not (store / ".tmp").exists() or not any((store / ".tmp").iterdir())


def test_errors_are_contract_json(relay: RunningServer) -> None:
    response = httpx.post(f"{relay.url}/nope", content=b"x")
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()["error"]) == {"code", "message"}


def test_request_headers_over_64k_get_431(relay: RunningServer) -> None:
    big = "a" * (70 * 1024)
    answer = raw_request(relay, f"POST /upload/x HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nContent-Length: 1\r\n\r\nx")
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    huge = "b" * (1024 * 1024)
    answer = raw_request(relay, f"POST /upload/x HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\nContent-Length: 1\r\n\r\nx")
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_client_that_writes_its_whole_body_first_still_reads_the_413(sink: RunningServer, framing: str) -> None:
    # httpx writes the whole body before reading: without the relay's lingering close it would get a reset.
    relay = start_relay("--max-body-size", "1MiB", upstream=sink.url)
    try:
        data = b"q" * (3 * 1024 * 1024)
        for _ in range(3):
            content = data if framing == "content-length" else chunks(data)
            response = httpx.post(f"{relay.url}/upload/too-big", content=content, timeout=10)
            assert response.status_code == 413 and error_of(response) == "body_too_large"
            assert response.headers["connection"] == "close"
        metrics = httpx.get(f"{relay.url}/_relay/metrics").text
    finally:
        relay.stop()
    drained = next(line for line in metrics.splitlines() if line.startswith("relay_bytes_drained_total"))
    assert float(drained.split()[1]) > 0
