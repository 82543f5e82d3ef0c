"""relay-sink end to end: a real process on a free port, real sockets, bytes compared on disk."""

from __future__ import annotations

import hashlib
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from relay.testing import RunningServer, start_sink
from tests.conftest import multipart_body

BOUNDARY = "sinkTestBoundary-1f3c"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
SIZES = [0, 1, 65535, 65537, 10 * 1024 * 1024]


def data_of(size: int, seed: int = 7) -> bytes:
    """Seeded random bytes sprinkled with CRLFs and near-boundary runs."""
    rng = random.Random(seed + size)
    out = bytearray(rng.randbytes(size))
    runs = [b"\r\n", b"\r\n--", b"\r\n--" + BOUNDARY[:-1].encode(), b"--" + BOUNDARY.encode(), b"\r\n\r\n"]
    for at in range(0, max(0, size - 64), 997):
        run = runs[rng.randrange(len(runs))]
        out[at : at + len(run)] = run
    return bytes(out[:size])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def multipart(files: list[tuple[str, str, bytes]], fields: dict[str, str] | None = None) -> bytes:
    return multipart_body(files, fields, boundary=BOUNDARY)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "received"


@pytest.fixture
def sink(store: Path) -> Iterator[RunningServer]:
    server = start_sink(store)
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture
def client(sink: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sink.url, timeout=30) as c:
        yield c


def stored(store: Path) -> list[Path]:
    """Everything under the store, temporary files included."""
    return sorted(p for p in store.rglob("*") if p.is_file())


def wait_for(condition: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("size", SIZES)
def test_raw_body_stored_exactly(client: httpx.Client, store: Path, size: int) -> None:
    content = data_of(size)
    response = client.post("/upload/dir/photo.raw?x=1", content=content, headers={"Content-Type": "image/x-raw"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["bytes"] == size and answer["framing"] == "content-length"
    [entry] = answer["files"]
    assert entry["field"] is None and entry["filename"] is None and entry["content_type"] == "image/x-raw"
    assert entry["size"] == size and entry["sha256"] == sha(content)
    assert entry["stored_as"].endswith("/photo.raw")
    assert (store / entry["stored_as"]).read_bytes() == content
    assert list((store / ".tmp").iterdir()) == []


@pytest.mark.parametrize("size", SIZES)
def test_multipart_files_stored_exactly(client: httpx.Client, store: Path, size: int) -> None:
    first, second = data_of(size), data_of(size // 3 + 5, seed=11)
    body = multipart([("file", "one.bin", first), ("file", "two.bin", second)], {"note": "hi there"})
    response = client.post("/upload/m", content=body, headers={"Content-Type": MULTIPART})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["bytes"] == len(body)
    assert answer["fields"] == {"note": "hi there"}
    assert [(f["field"], f["filename"], f["size"], f["sha256"]) for f in answer["files"]] == [
        ("file", "one.bin", len(first), sha(first)),
        ("file", "two.bin", len(second), sha(second)),
    ]
    assert (store / answer["files"][0]["stored_as"]).read_bytes() == first
    assert (store / answer["files"][1]["stored_as"]).read_bytes() == second


def test_seed_scenario_path_and_query(client: httpx.Client) -> None:
    body = multipart([("file", "a.txt", b"hello")])
    answer = client.post("/upload/a/b?q1=hello", content=body, headers={"Content-Type": MULTIPART}).json()
    assert answer["path"] == "/upload/a/b"
    assert answer["query"] == {"q1": "hello"}
    assert answer["files"][0]["sha256"] == sha(b"hello")


def test_repeated_query_keys_and_fields_are_lists(client: httpx.Client) -> None:
    body = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="k"\r\n\r\n1\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="k"\r\n\r\n2\r\n--{BOUNDARY}--\r\n'
    ).encode()
    answer = client.put("/x?a=1&a=2&b=", content=body, headers={"Content-Type": MULTIPART}).json()
    assert answer["query"] == {"a": ["1", "2"], "b": ""}
    assert answer["fields"] == {"k": ["1", "2"]}
    assert answer["files"] == []


def test_chunked_framing_is_reported(client: httpx.Client, store: Path) -> None:
    content = data_of(300_000)

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(content), 50_000):
            yield content[i : i + 50_000]

    answer = client.post("/upload/c.bin", content=pieces()).json()
    assert answer["framing"] == "chunked"
    assert ["transfer-encoding", "chunked"] in answer["headers"]
    assert answer["files"][0]["sha256"] == sha(content)
    assert (store / answer["files"][0]["stored_as"]).read_bytes() == content


def test_headers_are_reported_lower_case(client: httpx.Client) -> None:
    answer = client.post("/h", content=b"x", headers={"X-Custom-Thing": "Value"}).json()
    assert ["x-custom-thing", "Value"] in answer["headers"]


def test_upload_id_names_the_directory(client: httpx.Client, store: Path) -> None:
    answer = client.post("/up/file.txt", content=b"abc", headers={"X-Upload-ID": "my_id-1"}).json()
    assert answer["files"][0]["stored_as"] == "my_id-1/file.txt"
    again = client.post("/up/file.txt", content=b"def", headers={"X-Upload-ID": "my_id-1"}).json()
    assert again["files"][0]["stored_as"] == "my_id-1/file-1.txt"  # never overwrites
    assert (store / "my_id-1" / "file.txt").read_bytes() == b"abc"
    bad = client.post("/up/file.txt", content=b"x", headers={"X-Upload-ID": "../../evil"}).json()
    request_id, name = bad["files"][0]["stored_as"].split("/")
    assert len(request_id) == 32 and int(request_id, 16) >= 0 and name == "file.txt"


def test_raw_body_without_a_name_is_body_bin(client: httpx.Client) -> None:
    answer = client.post("/upload/", content=b"x").json()
    assert answer["files"][0]["stored_as"].endswith("/body.bin")


@pytest.mark.parametrize(
    "filename,expected",
    [
        ("../../etc/passwd", "passwd"),
        ("a/b\\c.txt", "c.txt"),
        ("..", "file-0.bin"),
        ("", "file-0.bin"),
        (".hidden", "hidden"),
        ("nul\x00and\x01ctl\x7f.txt", "nulandctl.txt"),
        ('we<i>rd:"na|me?*.txt', "we_i_rd__na_me__.txt"),
    ],
)
def test_hostile_filenames_are_sanitized(client: httpx.Client, store: Path, filename: str, expected: str) -> None:
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f"; filename="{filename}"\r\n\r\n'.encode()
    body = head + b"data\r\n" + f"--{BOUNDARY}--\r\n".encode()
    answer = client.post("/s", content=body, headers={"Content-Type": MULTIPART}).json()
    stored_as = answer["files"][0]["stored_as"]
    assert stored_as.split("/")[1] == expected
    assert (store / stored_as).resolve().parent.parent == store.resolve()
    assert (store / stored_as).read_bytes() == b"data"


def test_long_filename_is_capped_and_keeps_its_extension(client: httpx.Client) -> None:
    body = multipart([("f", "é" * 300 + ".txt", b"x")])
    name = client.post("/s", content=body, headers={"Content-Type": MULTIPART}).json()["files"][0]["stored_as"]
    name = name.split("/")[1]
    assert name.endswith(".txt") and len(name.encode()) <= 200


def test_same_filename_twice_in_one_request(client: httpx.Client, store: Path) -> None:
    body = multipart([("f", "same.txt", b"one"), ("f", "same.txt", b"two")])
    files = client.post("/s", content=body, headers={"Content-Type": MULTIPART}).json()["files"]
    assert [(store / f["stored_as"]).read_bytes() for f in files] == [b"one", b"two"]
    assert files[0]["stored_as"] != files[1]["stored_as"]


def raw_request(sink: RunningServer, head: bytes, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", sink.port))
    sock.sendall(head + body)
    return sock


def only_empty_tmp(store: Path) -> bool:
    return [p.name for p in store.iterdir()] == [".tmp"] and list((store / ".tmp").iterdir()) == []


def test_mid_body_disconnect_leaves_nothing(sink: RunningServer, store: Path) -> None:
    size = 1024 * 1024
    head = f"POST /upload/cut.bin HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
    sock = raw_request(sink, head, data_of(size)[: size // 2])
    assert wait_for(lambda: len(list((store / ".tmp").iterdir())) == 1), "no temporary file while receiving"
    sock.close()
    assert wait_for(lambda: only_empty_tmp(store)), stored(store)


def test_chunked_body_without_last_chunk_leaves_nothing(sink: RunningServer, store: Path) -> None:
    head = b"POST /upload/cut.bin HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    sock = raw_request(sink, head, b"".join(b"%x\r\n" % 4096 + b"a" * 4096 + b"\r\n" for _ in range(16)))
    assert wait_for(lambda: len(list((store / ".tmp").iterdir())) == 1)
    sock.close()
    assert wait_for(lambda: only_empty_tmp(store)), stored(store)


def test_disconnect_mid_multipart_leaves_earlier_files_out_too(sink: RunningServer, store: Path) -> None:
    body = multipart([("f", "complete.bin", b"x" * 100_000), ("f", "cut.bin", b"y" * 500_000)])
    head = f"POST /m HTTP/1.1\r\nHost: x\r\nContent-Type: {MULTIPART}\r\nContent-Length: {len(body)}\r\n\r\n"
    sock = raw_request(sink, head.encode(), body[:300_000])
    assert wait_for(lambda: len(list((store / ".tmp").iterdir())) == 2)
    sock.close()
    assert wait_for(lambda: only_empty_tmp(store)), stored(store)


@pytest.mark.parametrize(
    "body",
    [
        multipart([("f", "a.bin", b"x" * 70_000)])[:-20],  # no closing boundary
        b"junk before\r\n" + multipart([("f", "a.bin", b"x")]),
        multipart([("f", "good.bin", b"x" * 1000)]).replace(b"--\r\n", b"\r\nno headers end"),
    ],
    ids=["truncated", "junk-preamble", "bad-last-part"],
)
def test_malformed_multipart_is_400_and_leaves_nothing(client: httpx.Client, store: Path, body: bytes) -> None:
    response = client.post("/m", content=body, headers={"Content-Type": MULTIPART})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_multipart"
    assert only_empty_tmp(store), stored(store)


def test_multipart_without_boundary_is_refused_from_the_headers(client: httpx.Client, store: Path) -> None:
    response = client.post("/m", content=b"whatever", headers={"Content-Type": "multipart/form-data"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "malformed_multipart"
    assert only_empty_tmp(store)


def test_oversized_text_field_is_413_and_leaves_nothing(client: httpx.Client, store: Path) -> None:
    body = multipart([("f", "a.bin", b"x")], {"big": "v" * (1024 * 1024 + 1)})
    response = client.post("/m", content=body, headers={"Content-Type": MULTIPART})
    assert response.status_code == 413 and response.json()["error"]["code"] == "field_too_large"
    assert only_empty_tmp(store)
    ok = client.post("/m", content=multipart([], {"big": "v" * 1024 * 1024}), headers={"Content-Type": MULTIPART})
    assert ok.status_code == 200 and len(ok.json()["fields"]["big"]) == 1024 * 1024


def test_other_methods_are_405(client: httpx.Client) -> None:
    for method in ("GET", "DELETE", "PATCH"):
        response = client.request(method, "/anything")
        assert response.status_code == 405
        assert response.json()["error"]["code"] == "method_not_allowed"


def test_discard_mode_hashes_but_stores_nothing(tmp_path: Path) -> None:
    server = start_sink(None)
    try:
        content = data_of(200_000)
        with httpx.Client(base_url=server.url, timeout=30) as c:
            raw = c.post("/d/x.bin", content=content).json()
            parts = c.post("/d", content=multipart([("f", "a", content)]), headers={"Content-Type": MULTIPART}).json()
        assert raw["files"][0]["stored_as"] is None and raw["files"][0]["sha256"] == sha(content)
        assert parts["files"][0]["stored_as"] is None and parts["files"][0]["size"] == len(content)
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize(
    "args",
    [["--port", "-1"], ["--port", "nope"], ["--bogus"], ["--dir", "x", "--discard"], ["--host", "256.0.0.1"]],
)
def test_bad_flags_exit_2_with_one_line(args: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "relay.sink", *args], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("relay-sink: error:")
