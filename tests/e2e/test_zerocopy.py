"""The spliced body path (relay/zerocopy.py): a raw Content-Length body of 1 MiB or more, with `--digest none`, or
with the default sha256 hashed from a tee'd copy of the pipe (relay/pipehash.py).

Real relay-server processes, real sockets, real upstreams. A spliced request is recognisable from outside: its
answer carries `Connection: close` (the HTTP parser never saw the spliced bytes, so the connection cannot carry
another request). Every failure must leave the upstream without a complete body, as on the normal path
(tests/e2e/test_promise.py is the same matrix on the normal path).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from relay.testing import RunningServer, start_relay, start_sink
from tests.conftest import start_test_upstream, tricky_bytes

SIZE = 5 * 1024 * 1024 + 123  # odd, so it never lines up with the pipe or the reads
HALF = SIZE // 2
DIGESTS = pytest.mark.parametrize("digest", ["none", "sha256"])  # spliced as is, and tee'd to a hash thread


@pytest.fixture
def servers() -> Iterator[list[RunningServer]]:
    started: list[RunningServer] = []
    yield started
    for server in reversed(started):
        server.stop()


def head(path: str, length: int, *, upload_id: str, extra: str = "") -> bytes:
    return (
        f"PUT {path} HTTP/1.1\r\nHost: relay\r\nX-Upload-ID: {upload_id}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n{extra}\r\n"
    ).encode()


def read_answer(sock: socket.socket, timeout: float = 15) -> tuple[int, bytes, bytes]:
    """(status, head, body) of one response read off the socket (by Content-Length)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            raise AssertionError(f"connection closed before an answer: {data!r}")
        data += piece
        while data.startswith(b"HTTP/1.1 100") and b"\r\n\r\n" in data:
            data = data.partition(b"\r\n\r\n")[2]
    raw_head, _, rest = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?i)content-length:\s*(\d+)", raw_head)
    length = int(match.group(1)) if match else 0
    while len(rest) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        rest += piece
    return int(raw_head.split()[1]), raw_head.lower(), rest[:length]


def upload(relay: RunningServer, body: bytes, *, upload_id: str, expect: bool = False, after: bytes = b"") -> tuple:
    """One raw-socket upload; with `expect`, the body waits for the relay's 100 Continue."""
    with socket.create_connection(("127.0.0.1", relay.port), timeout=15) as sock:
        extra = "Expect: 100-continue\r\n" if expect else ""
        if expect:
            sock.sendall(head("/upload/z", len(body), upload_id=upload_id, extra=extra))
            assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue")
            sock.sendall(body + after)
        else:
            sock.sendall(head("/upload/z", len(body), upload_id=upload_id) + body + after)
        return read_answer(sock)


def record(relay: RunningServer, upload_id: str) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + 5
    while True:
        found = httpx.get(f"{relay.url}/_relay/uploads/{upload_id}", timeout=5).json()
        if found.get("state") != "receiving" or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def metric(relay: RunningServer, name: str) -> float:
    text = httpx.get(f"{relay.url}/_relay/metrics", timeout=5).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def stored(store: Path) -> list[Path]:
    return [path for path in store.rglob("*") if path.is_file()] if store.exists() else []


@pytest.mark.parametrize("expect", [False, True], ids=["body-with-head", "expect-100"])
def test_spliced_body_arrives_byte_exact(tmp_path: Path, servers: list[RunningServer], expect: bool) -> None:
    store = tmp_path / "received"
    sink = start_sink(store)
    servers.append(sink)
    relay = start_relay("--digest", "none", upstream=sink.url)
    servers.append(relay)
    data = tricky_bytes(SIZE, seed=15)
    status, answer_head, answer = upload(relay, data, upload_id=f"exact-{expect}", expect=expect)
    assert status == 200, answer
    assert b"connection: close" in answer_head  # spliced: the connection ends with this request
    assert json.loads(answer)["files"][0]["sha256"] == hashlib.sha256(data).hexdigest()  # the sink's own hash
    (kept,) = stored(store)
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    seen = record(relay, f"exact-{expect}")
    assert (seen["state"], seen["bytes"], seen["total"], seen["parts"][0]["size"]) == ("completed", SIZE, SIZE, SIZE)
    assert metric(relay, "relay_bytes_received_total") == SIZE
    assert metric(relay, "relay_bytes_forwarded_total") == SIZE


@pytest.mark.parametrize("expect", [False, True], ids=["body-with-head", "expect-100"])
def test_hashed_body_is_spliced_and_its_sha256_reported(
    tmp_path: Path, servers: list[RunningServer], expect: bool
) -> None:
    """The default sha256: spliced (Connection: close), the relay's X-Upload-Sha256, record and metrics exact."""
    store = tmp_path / "received"
    sink = start_sink(store)
    servers.append(sink)
    relay = start_relay(upstream=sink.url)
    servers.append(relay)
    data = tricky_bytes(SIZE, seed=16)
    want = hashlib.sha256(data).hexdigest()
    status, answer_head, answer = upload(relay, data, upload_id=f"hashed-{expect}", expect=expect)
    assert status == 200, answer
    assert b"connection: close" in answer_head, "not spliced: the hashed body took the copying path"
    assert f"x-upload-sha256: {want}".encode() in answer_head
    assert json.loads(answer)["files"][0]["sha256"] == want
    (kept,) = stored(store)
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == want
    seen = record(relay, f"hashed-{expect}")
    assert (seen["state"], seen["bytes"], seen["parts"][0]["size"], seen["parts"][0]["sha256"]) == (
        "completed",
        SIZE,
        SIZE,
        want,
    )
    assert metric(relay, "relay_bytes_received_total") == SIZE
    assert metric(relay, "relay_bytes_forwarded_total") == SIZE


def test_hashed_splices_one_after_another_each_get_their_own_sha256(servers: list[RunningServer]) -> None:
    """Hash threads are pooled: a thread (and its read buffer) reused by the next body must not mix them up."""
    sink = start_sink(None)
    servers.append(sink)
    relay = start_relay(upstream=sink.url)
    servers.append(relay)
    bodies = [tricky_bytes(SIZE + i * 4099, seed=20 + i) for i in range(3)]
    answers: list[tuple] = []  # type: ignore[type-arg]
    threads = [
        threading.Thread(target=lambda i=i, b=b: answers.append((b, upload(relay, b, upload_id=f"many-{i}"))))
        for i, b in enumerate(bodies + bodies[:1])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(answers) == 4
    for body, (status, answer_head, _) in answers:
        assert status == 200 and b"connection: close" in answer_head
        assert f"x-upload-sha256: {hashlib.sha256(body).hexdigest()}".encode() in answer_head


def test_progress_events_while_spliced(servers: list[RunningServer]) -> None:
    sink = start_sink(None)
    servers.append(sink)
    relay = start_relay("--digest", "none", upstream=sink.url)
    servers.append(relay)
    data = tricky_bytes(SIZE, seed=3)
    events: list[dict] = []  # type: ignore[type-arg]

    def follow() -> None:
        with httpx.stream("GET", f"{relay.url}/_relay/uploads/slow/events", timeout=30) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    with socket.create_connection(("127.0.0.1", relay.port), timeout=15) as sock:
        sock.sendall(head("/upload/z", SIZE, upload_id="slow"))
        for start in range(0, SIZE, 256 * 1024):  # about 1.2 MiB/s: 4 to 5 s
            sock.sendall(data[start : start + 256 * 1024])
            time.sleep(0.2)
        status, answer_head, answer = read_answer(sock)
    follower.join(10)
    assert status == 200 and b"connection: close" in answer_head
    assert json.loads(answer)["files"][0]["sha256"] == hashlib.sha256(data).hexdigest()
    progress = [event["bytes"] for event in events if "upstream_status" not in event and "error" not in event]
    assert len(progress) >= 4, events  # about one a second while bytes flow, and never going down
    assert progress == sorted(progress) and events[-1]["upstream_status"] == 200 and events[-1]["bytes"] == SIZE


def test_pipelined_bytes_after_the_body_are_not_forwarded(servers: list[RunningServer]) -> None:
    upstream = start_test_upstream("recorder")
    servers.append(upstream)
    relay = start_relay("--digest", "none", upstream=upstream.url)
    servers.append(relay)
    data = tricky_bytes(SIZE, seed=4)
    after = b"GET /_relay/health HTTP/1.1\r\nHost: relay\r\n\r\n"
    status, answer_head, answer = upload(relay, data, upload_id="pipelined", after=after)
    assert status == 200 and b"connection: close" in answer_head
    assert json.loads(answer)["sha256"] == hashlib.sha256(data).hexdigest()


def test_small_digest_checked_and_chunked_bodies_are_not_spliced(servers: list[RunningServer]) -> None:
    """A Content-Digest is verified before the body's last bytes leave: a spliced body has none to hold back."""
    sink = start_sink(None)
    servers.append(sink)
    relay_none = start_relay("--digest", "none", upstream=sink.url)
    relay_sha = start_relay(upstream=sink.url)
    servers.extend([relay_none, relay_sha])
    small = tricky_bytes(512 * 1024, seed=5)
    big = tricky_bytes(SIZE, seed=6)
    checked = f"Content-Digest: sha-256=:{base64.b64encode(hashlib.sha256(big).digest()).decode()}:\r\n"
    for relay, body, extra in ((relay_none, small, ""), (relay_sha, small, ""), (relay_sha, big, checked)):
        with socket.create_connection(("127.0.0.1", relay.port), timeout=15) as sock:
            sock.sendall(head("/upload/z", len(body), upload_id=f"kept-{len(body)}", extra=extra) + body)
            status, answer_head, answer = read_answer(sock)
        assert status == 200 and b"connection: close" not in answer_head, answer_head
        assert json.loads(answer)["files"][0]["sha256"] == hashlib.sha256(body).hexdigest()
    chunked = httpx.put(f"{relay_none.url}/upload/c", content=iter([big[:HALF], big[HALF:]]), timeout=30)
    assert chunked.status_code == 200 and "close" not in chunked.headers.get("connection", "")
    assert chunked.json()["files"][0]["sha256"] == hashlib.sha256(big).hexdigest()


def test_chunked_body_over_the_limit_still_413(tmp_path: Path, servers: list[RunningServer]) -> None:
    store = tmp_path / "received"
    sink = start_sink(store)
    servers.append(sink)
    relay = start_relay("--digest", "none", "--max-body-size", "2MiB", upstream=sink.url)
    servers.append(relay)
    data = tricky_bytes(SIZE, seed=7)
    answer = httpx.put(f"{relay.url}/upload/c", content=iter([data[i : i + 65536] for i in range(0, SIZE, 65536)]))
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "body_too_large"
    declared = httpx.put(f"{relay.url}/upload/c", content=data)
    assert declared.status_code == 413
    time.sleep(0.3)
    assert stored(store) == []


def partial_upload(relay: RunningServer, upload_id: str, sent: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=15)
    sock.sendall(head("/upload/z", SIZE, upload_id=upload_id) + tricky_bytes(SIZE, seed=8)[:sent])
    return sock


@DIGESTS
def test_client_breaking_mid_body_never_completes_upstream(
    tmp_path: Path, servers: list[RunningServer], digest: str
) -> None:
    store = tmp_path / "received"
    sink = start_sink(store)
    servers.append(sink)
    relay = start_relay("--digest", digest, upstream=sink.url)
    servers.append(relay)
    for how in ("close", "reset"):
        sock = partial_upload(relay, f"gone-{how}", HALF)
        time.sleep(0.3)
        if how == "reset":  # SO_LINGER 0: the kernel sends RST, not FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
        seen = record(relay, f"gone-{how}")
        assert (seen["state"], seen["error"]["code"]) == ("failed", "client_disconnected"), seen
        assert 0 < seen["bytes"] <= HALF
    time.sleep(0.3)
    assert stored(store) == [], "the upstream kept a body the client never finished"


@DIGESTS
def test_idle_client_times_out(tmp_path: Path, servers: list[RunningServer], digest: str) -> None:
    store = tmp_path / "received"
    sink = start_sink(store)
    servers.append(sink)
    relay = start_relay("--digest", digest, "--client-idle-timeout", "1", upstream=sink.url)
    servers.append(relay)
    with partial_upload(relay, "idle", HALF) as sock:
        status, _, answer = read_answer(sock)
    assert status == 408 and json.loads(answer)["error"]["code"] == "client_timeout"
    time.sleep(0.3)
    assert stored(store) == []


@pytest.mark.parametrize(
    ("mode", "flags", "status", "code"),
    [
        ("close-mid-body", [], 502, "upstream_failed"),
        ("stall", ["--upstream-timeout", "1"], 504, "upstream_timeout"),
        ("early-413", [], 413, None),
    ],
)
@DIGESTS
def test_upstream_failures_while_spliced(
    servers: list[RunningServer], mode: str, flags: list[str], status: int, code: str | None, digest: str
) -> None:
    upstream = start_test_upstream(mode)
    servers.append(upstream)
    relay = start_relay("--digest", digest, *flags, upstream=upstream.url)
    servers.append(relay)
    data = tricky_bytes(SIZE, seed=9)
    with socket.create_connection(("127.0.0.1", relay.port), timeout=15) as sock:
        sock.sendall(head("/upload/z", SIZE, upload_id=f"up-{mode}"))
        try:
            sock.sendall(data)
        except OSError:
            pass  # an early answer may close the connection under the rest of the body
        got, _, answer = read_answer(sock)
    assert got == status, answer
    seen = record(relay, f"up-{mode}")
    if code is not None:
        assert json.loads(answer)["error"]["code"] == code
        assert (seen["state"], seen["error"]["code"]) == ("failed", code)
    else:
        assert (seen["state"], seen["upstream_status"]) == ("completed", 413)


@DIGESTS
def test_drain_timeout_cuts_a_spliced_body(tmp_path: Path, servers: list[RunningServer], digest: str) -> None:
    store = tmp_path / "received"
    sink = start_sink(store)
    servers.append(sink)
    relay = start_relay("--digest", digest, "--drain-timeout", "1", upstream=sink.url)
    servers.append(relay)
    with partial_upload(relay, "drain", HALF):
        time.sleep(0.3)
        relay.proc.send_signal(signal.SIGTERM)
        assert relay.proc.wait(15) == 0
    assert "shutting_down" in relay.log()
    time.sleep(0.3)
    assert stored(store) == []


def test_tls_on_either_side_falls_back_to_the_normal_path(tmp_path: Path, servers: list[RunningServer]) -> None:
    """A TLS socket carries ciphertext: nothing is spliced, the body is relayed as usual, byte-exact."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    upstream = start_test_upstream("tls-recorder", env={"TLS_CERT": str(cert_file), "TLS_KEY": str(key_file)})
    plain = start_test_upstream("recorder")
    servers.extend([upstream, plain])
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    tls_upstream = upstream.url.replace("http://", "https://")
    tls_flags = ("--ssl-certfile", str(cert_file), "--ssl-keyfile", str(key_file))
    relay_in = start_relay("--digest", "none", *tls_flags, upstream=plain.url)
    relay_out = start_relay("--digest", "none", "--upstream-ca", str(ca_file), upstream=tls_upstream)
    servers.extend([relay_in, relay_out])
    data = tricky_bytes(SIZE, seed=11)
    verify = ssl.create_default_context(cafile=str(ca_file))
    answer = httpx.put(f"{relay_in.url}/upload/t", content=data, verify=verify, timeout=30)
    assert answer.status_code == 200 and "close" not in answer.headers.get("connection", "")
    assert answer.json()["sha256"] == hashlib.sha256(data).hexdigest()
    status, answer_head, body = upload(relay_out, data, upload_id="tls-out")
    assert status == 200 and b"connection: close" not in answer_head
    assert json.loads(body)["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_resumable_uploads_raw_forward_is_not_spliced_from_the_append(
    tmp_path: Path, servers: list[RunningServer]
) -> None:
    """The completing append forwards spool + its own bytes in a made-up request: its body is not the socket's."""
    store = tmp_path / "received"
    sink = start_sink(store)
    servers.append(sink)
    config = tmp_path / "relay.toml"
    config.write_text(f'[[routes]]\nprefix = "/raw/"\nupstream = "{sink.url}"\nresumable_forward = "raw"\n')
    relay = start_relay("--digest", "none", "--spool", str(tmp_path / "spool"), "--config", str(config))
    servers.append(relay)
    data = tricky_bytes(SIZE, seed=12)
    tus = {"Tus-Resumable": "1.0.0"}
    octets = {**tus, "Content-Type": "application/offset+octet-stream"}
    with httpx.Client(base_url=relay.url, timeout=30) as client:
        created = client.post("/raw/file.bin", headers={**tus, "Upload-Length": str(SIZE)})
        assert created.status_code == 201, created.text
        location = created.headers["location"]
        first = client.patch(location, content=data[:HALF], headers={**octets, "Upload-Offset": "0"})
        assert first.status_code == 204, first.text
        last = client.patch(location, content=data[HALF:], headers={**octets, "Upload-Offset": str(HALF)})
        assert last.status_code == 204, last.text
        assert last.headers["x-upstream-status"] == "200"
    (kept,) = stored(store)
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
