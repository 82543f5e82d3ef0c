"""tus 1.0.0 resumable uploads end to end: real relay and sink processes on a spool, sha256 at the sink."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from relay.headers import valid_upload_id
from relay.testing import start_relay
from tests.e2e.test_admin import EventStream
from tests.interop.support import (
    OCTETS,
    TUS,
    Stack,
    TinyUpstream,
    make_stack,
    metadata,
    raw_request,
    sha256,
    tus_create,
    tus_head,
    tus_patch,
    tus_upload,
    wait_for,
)

__all__ = ["make_stack"]  # the fixture, imported so pytest finds it here

META = metadata(filename="photo.jpg", filetype="image/jpeg", album="summer 2026")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack for the tests that need nothing special (uploads of their own, so they do not interfere)."""
    s = Stack(tmp_path_factory.mktemp("tus"), ("--max-body-size", "50MiB"))
    s.root.mkdir(parents=True, exist_ok=True)
    s.start_sink()
    s.start_relay()
    yield s
    s.stop()


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client() as c:
        yield c


def stored_for(stack: Stack, upload_id: str) -> list[Path]:
    return (
        sorted(p for p in (stack.store / upload_id).rglob("*") if p.is_file())
        if (stack.store / upload_id).exists()
        else []
    )


def test_creation_head_and_appends_are_byte_exact(stack: Stack, client: httpx.Client) -> None:
    data = os.urandom(1_000_003)
    created = tus_create(client, "/upload/album/x?q=1", len(data), meta=META)
    assert created.status_code == 201, created.text
    assert created.headers["tus-resumable"] == "1.0.0"
    upload_id = created.headers["x-upload-id"]
    location = created.headers["location"]
    assert location.endswith(f"/resumable/{upload_id}")
    head = tus_head(client, location)
    assert head.status_code == 200
    assert head.headers["upload-offset"] == "0"
    assert head.headers["upload-length"] == str(len(data))
    assert head.headers["upload-metadata"] == META
    assert head.headers["cache-control"] == "no-store"
    assert head.headers["x-upload-id"] == upload_id
    assert "GMT" in head.headers["upload-expires"]
    listed = client.get(f"/_relay/uploads/{upload_id}").json()
    assert listed["client"] == "127.0.0.1" and listed["path"] == "/upload/album/x", listed  # as plain uploads'
    record = stack.record(upload_id)
    assert record["resumable"] is True and record["state"] == "receiving"
    assert record["offset"] == 0 and record["total"] == len(data) and record["expires_at"] > time.time()
    offset = 0
    for size in (300_000, 1, 400_000):
        answer = tus_patch(client, location, offset, data[offset : offset + size])
        assert answer.status_code == 204, answer.text
        offset += size
        assert answer.headers["upload-offset"] == str(offset)
        assert answer.headers["x-upload-id"] == upload_id
        assert "upload-expires" in answer.headers
        assert tus_head(client, location).headers["upload-offset"] == str(offset)
        assert stack.record(upload_id)["bytes"] == offset
    assert stack.stored() == [] or not stored_for(stack, upload_id)  # nothing upstream before the last byte
    last = tus_patch(client, location, offset, data[offset:])
    assert last.status_code == 204, last.text
    assert last.headers["upload-offset"] == str(len(data))
    assert last.headers["x-upload-sha256"] == sha256(data)
    assert last.headers["x-upstream-status"] == "200"
    assert last.headers["tus-resumable"] == "1.0.0"
    (stored,) = stored_for(stack, upload_id)
    assert stored.name == "photo.jpg"
    assert sha256(stored.read_bytes()) == sha256(data)
    record = stack.record(upload_id)
    assert record["state"] == "completed" and record["upstream_status"] == 200
    assert record["bytes"] == len(data) and record["offset"] == len(data)
    (part,) = record["parts"]
    assert (part["field"], part["filename"], part["content_type"]) == ("file", "photo.jpg", "image/jpeg")
    assert part["sha256"] == sha256(data)
    # A repeated completing request answers as the completion did.
    again = tus_patch(client, location, len(data), b"")
    assert again.status_code == 204
    for name in ("upload-offset", "x-upload-sha256", "x-upstream-status", "x-upload-id"):
        assert again.headers[name] == last.headers[name]
    assert len(stored_for(stack, upload_id)) == 1
    # The data goes within 5 s; HEAD still answers.
    wait_for(
        lambda: not any(p.name.startswith(upload_id) and not p.name.endswith(".json") for p in stack.spool_data()), 5
    )
    head = tus_head(client, location)
    assert head.status_code == 200 and head.headers["upload-offset"] == str(len(data))


def test_metadata_fields_reach_the_upstream_before_the_file(tmp_path: Path) -> None:
    upstream = TinyUpstream(status=200, body=b"ok")
    relay = start_relay("--spool", str(tmp_path / "spool"), upstream=upstream.url)
    try:
        with httpx.Client(base_url=relay.url, timeout=10) as client:
            data = os.urandom(3000)
            _, last = tus_upload(client, "/upload/m?x=%2F1", data, chunk=1000, meta=META)
            assert last.status_code == 204
        ((head, body),) = upstream.requests
        assert head.startswith(b"POST /upload/m?x=%2F1 HTTP/1.1\r\n")
        boundary = head.split(b"boundary=", 1)[1].split(b"\r\n", 1)[0]
        assert body.startswith(
            b"--" + boundary + b'\r\nContent-Disposition: form-data; name="album"\r\n\r\nsummer 2026\r\n'
        )
        assert b'name="file"; filename="photo.jpg"\r\nContent-Type: image/jpeg\r\n\r\n' + data + b"\r\n--" in body
        assert body.endswith(b"--" + boundary + b"--\r\n")
        assert b"x-upload-id: " + last.headers["x-upload-id"].encode() in head
    finally:
        relay.stop()
        upstream.close()


def test_raw_forward_route_and_creation_with_upload(tmp_path: Path) -> None:
    stack = Stack(tmp_path, ())
    sink = stack.start_sink()
    config = tmp_path / "relay.toml"
    config.write_text(f'[[routes]]\nprefix = "/raw/"\nupstream = "{sink.url}"\nresumable_forward = "raw"\n')
    stack.relay = start_relay("--spool", str(stack.spool), "--config", str(config))
    stack.started.append(stack.relay)
    try:
        data = os.urandom(200_000)
        with stack.client() as client:
            first = tus_create(client, "/raw/blob.bin", len(data), meta=META, body=data[:50_000])
            assert first.status_code == 201, first.text
            assert first.headers["upload-offset"] == "50000"
            location = first.headers["location"]
            last = tus_patch(client, location, 50_000, data[50_000:])
            assert last.status_code == 204, last.text
            assert last.headers["x-upload-sha256"] == sha256(data)
            record = stack.record(last.headers["x-upload-id"])
            (part,) = record["parts"]
            assert part["field"] is None and part["content_type"] == "image/jpeg"
            # creation-with-upload carrying the whole file: 201 once the upstream has it
            whole = os.urandom(70_000)
            done = tus_create(client, "/raw/whole.bin", len(whole), body=whole)
            assert done.status_code == 201, done.text
            assert done.headers["upload-offset"] == str(len(whole))
            assert done.headers["x-upload-sha256"] == sha256(whole)
            assert done.headers["x-upstream-status"] == "200"
            assert done.headers["location"].endswith("/resumable/" + done.headers["x-upload-id"])
        assert sorted(stack.stored_hashes()) == sorted([sha256(data), sha256(whole)])
    finally:
        stack.stop()


def test_defer_length(stack: Stack, client: httpx.Client) -> None:
    data = os.urandom(300_000)
    created = tus_create(client, "/upload/deferred", None, meta=metadata(filename="d.bin"))
    assert created.status_code == 201
    location, upload_id = created.headers["location"], created.headers["x-upload-id"]
    head = tus_head(client, location)
    assert head.headers["upload-defer-length"] == "1" and "upload-length" not in head.headers
    assert stack.record(upload_id)["total"] is None
    assert tus_patch(client, location, 0, data[:100_000]).status_code == 204
    last = tus_patch(client, location, 100_000, data[100_000:], {"Upload-Length": str(len(data))})
    assert last.status_code == 204, last.text
    assert last.headers["x-upload-sha256"] == sha256(data)
    assert sha256(stored_for(stack, upload_id)[0].read_bytes()) == sha256(data)


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "md5"])
def test_checksums(stack: Stack, client: httpx.Client, algorithm: str) -> None:
    data = os.urandom(200_000)
    created = tus_create(client, "/upload/sum", len(data))
    location, upload_id = created.headers["location"], created.headers["x-upload-id"]

    def checksum(body: bytes) -> str:
        return f"{algorithm} " + base64.b64encode(hashlib.new(algorithm, body).digest()).decode()

    good = tus_patch(client, location, 0, data[:80_000], {"Upload-Checksum": checksum(data[:80_000])})
    assert good.status_code == 204 and good.headers["upload-offset"] == "80000"
    bad = tus_patch(client, location, 80_000, data[80_000:150_000], {"Upload-Checksum": checksum(b"other")})
    assert bad.status_code == 460, bad.text
    assert tus_head(client, location).headers["upload-offset"] == "80000"
    unknown = tus_patch(client, location, 80_000, data[80_000:], {"Upload-Checksum": "crc32 AAAA"})
    assert unknown.status_code == 400
    last = tus_patch(client, location, 80_000, data[80_000:], {"Upload-Checksum": checksum(data[80_000:])})
    assert last.status_code == 204, last.text
    assert sha256(stored_for(stack, upload_id)[0].read_bytes()) == sha256(data)


def test_a_bad_checksum_on_the_completing_append_keeps_the_old_offset(stack: Stack, client: httpx.Client) -> None:
    data = os.urandom(100_000)
    created = tus_create(client, "/upload/sum-last", len(data))
    location, upload_id = created.headers["location"], created.headers["x-upload-id"]
    bad = tus_patch(client, location, 0, data, {"Upload-Checksum": "sha1 " + base64.b64encode(b"x" * 20).decode()})
    assert bad.status_code == 460, bad.text
    assert tus_head(client, location).headers["upload-offset"] == "0"
    assert not stored_for(stack, upload_id)
    assert tus_patch(client, location, 0, data).status_code == 204
    assert sha256(stored_for(stack, upload_id)[0].read_bytes()) == sha256(data)


def test_refusals(stack: Stack, client: httpx.Client) -> None:
    created = tus_create(client, "/upload/refusals", 1000)
    location = created.headers["location"]
    tus_patch(client, location, 0, b"x" * 100)
    wrong = tus_patch(client, location, 50, b"y" * 10)
    assert wrong.status_code == 409 and wrong.headers["upload-offset"] == "100"
    media = client.patch(location, content=b"z", headers={**TUS, "Upload-Offset": "100", "Content-Type": "text/plain"})
    assert media.status_code == 415
    assert media.headers["x-upload-id"] == created.headers["x-upload-id"]
    version = client.patch(
        location, content=b"z", headers={"Tus-Resumable": "0.2.2", "Upload-Offset": "100", "Content-Type": OCTETS}
    )
    assert version.status_code == 412 and version.headers["tus-version"] == "1.0.0"
    assert version.headers["x-upload-id"] == created.headers["x-upload-id"]
    past = tus_patch(client, location, 100, b"p" * 901)
    assert past.status_code == 413
    assert tus_head(client, location).headers["upload-offset"] == "100"
    overridden = client.post(
        location,
        content=b"q" * 50,
        headers={**TUS, "X-HTTP-Method-Override": "PATCH", "Upload-Offset": "100", "Content-Type": OCTETS},
    )
    assert overridden.status_code == 204 and overridden.headers["upload-offset"] == "150"
    assert tus_head(client, location).headers["upload-offset"] == "150"
    assert client.get(location, headers=TUS).status_code == 405
    assert tus_head(client, "/resumable/nosuchupload").status_code == 404
    deeper = tus_head(client, location + "/more")
    assert deeper.status_code == 404 and deeper.headers["tus-resumable"] == "1.0.0"
    for method in ("GET", "HEAD", "PATCH", "DELETE", "POST"):  # the prefix alone is not an upload: another path
        bare = client.request(method, "/resumable/", headers=TUS)
        assert bare.status_code == 404, (method, bare.status_code)


def test_413_for_an_upload_length_over_the_limit(stack: Stack, client: httpx.Client) -> None:
    answer = tus_create(client, "/upload/huge", 50 * 1024 * 1024 + 1)
    assert answer.status_code == 413
    assert answer.headers["tus-max-size"] == str(50 * 1024 * 1024)
    assert answer.json()["error"]["code"] == "body_too_large"


def test_refused_creations_carry_an_upload_id(stack: Stack, client: httpx.Client) -> None:
    """The contract: every response on a routed path carries X-Upload-ID, the relay's own errors too (as plain
    uploads do); a valid chosen id is the one answered, an invalid one is never echoed."""
    refusals = {
        "412 other version": client.post("/upload/r", headers={"Tus-Resumable": "0.2.2", "Upload-Length": "10"}),
        "413 over the limit": tus_create(client, "/upload/r", 50 * 1024 * 1024 + 1),
        "400 no length": client.post("/upload/r", headers=TUS),
        "405 PUT": client.put("/upload/r", headers={**TUS, "Upload-Length": "10"}),
    }
    for what, answer in refusals.items():
        assert what.startswith(str(answer.status_code)), (what, answer.status_code, answer.text)
        assert valid_id(answer.headers.get("x-upload-id")), (what, answer.headers)
    chosen = tus_create(client, "/upload/r", 50 * 1024 * 1024 + 1, headers={"X-Upload-ID": "my-own-id"})
    assert chosen.status_code == 413 and chosen.headers["x-upload-id"] == "my-own-id"
    bad = tus_create(client, "/upload/r", 10, headers={"X-Upload-ID": "bad!id"})
    assert bad.status_code == 400 and valid_id(bad.headers.get("x-upload-id"))
    assert bad.headers["x-upload-id"] != "bad!id"


def valid_id(value: str | None) -> bool:
    return value is not None and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value) is not None


def test_bytes_past_the_length_in_a_streamed_body_keep_nothing(stack: Stack, client: httpx.Client) -> None:
    created = tus_create(client, "/upload/streamed", 1000)
    location, upload_id = created.headers["location"], created.headers["x-upload-id"]
    stream = EventStream(
        f"{stack.url}/_relay/uploads/{upload_id}/events", until=lambda ev: any(n == "interrupted" for n, _ in ev)
    )

    def body() -> Iterator[bytes]:
        yield b"a" * 600
        yield b"b" * 600

    answer = client.patch(location, content=body(), headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS})
    assert answer.status_code == 413
    assert tus_head(client, location).headers["upload-offset"] == "0"
    assert not stored_for(stack, upload_id)
    seen = [data["bytes"] for _, data in stream.wait(10) if "bytes" in data]
    assert seen == sorted(seen), seen  # no progress for bytes that were then dropped


@pytest.mark.parametrize("path", ["/upload/some/where", "/resumable/"])
def test_options_discovery(stack: Stack, client: httpx.Client, path: str) -> None:
    answer = client.options(path, headers=TUS)
    assert answer.status_code == 204
    if path.startswith("/upload/"):  # a routed path: every answer carries an id (contract, "Upload ids")
        assert valid_upload_id(answer.headers["x-upload-id"].encode())
    assert answer.headers["tus-resumable"] == "1.0.0"
    assert answer.headers["tus-version"] == "1.0.0"
    extensions = answer.headers["tus-extension"].split(",")
    for name in ("creation", "creation-with-upload", "creation-defer-length", "termination", "expiration", "checksum"):
        assert name in extensions
    assert answer.headers["tus-max-size"] == str(50 * 1024 * 1024)
    assert answer.headers["tus-checksum-algorithm"] == "sha1,sha256,md5"


def test_delete_terminates(stack: Stack, client: httpx.Client) -> None:
    created = tus_create(client, "/upload/del", 1000)
    location, upload_id = created.headers["location"], created.headers["x-upload-id"]
    tus_patch(client, location, 0, b"x" * 500)
    assert (stack.spool / f"{upload_id}.data").exists()
    deleted = client.delete(location, headers=TUS)
    assert deleted.status_code == 204
    assert deleted.headers["tus-resumable"] == "1.0.0"
    assert not (stack.spool / f"{upload_id}.data").exists()
    assert tus_head(client, location).status_code == 404
    assert tus_patch(client, location, 500, b"y").status_code == 404
    record = stack.record(upload_id)
    assert record["state"] == "failed" and record["error"]["code"] == "terminated"


def test_delete_of_a_delivered_upload(stack: Stack, client: httpx.Client) -> None:
    """DELETE after delivery: 204, later requests 404 (the contract), and the record still says what happened:
    `completed` (nothing was terminated), no info document left in the spool."""
    location, done = tus_upload(client, "/upload/deldone", b"d" * 3000, chunk=1000)
    assert done.status_code == 204 and done.headers["x-upstream-status"] == "200"
    upload_id = done.headers["x-upload-id"]
    assert tus_head(client, location).status_code == 200  # kept for its expiry period, until...
    assert client.delete(location, headers=TUS).status_code == 204
    assert tus_head(client, location).status_code == 404
    assert tus_patch(client, location, 3000, b"").status_code == 404
    assert stack.record(upload_id)["state"] == "completed"
    assert not list(stack.spool.glob(f"{upload_id}*"))


def test_upstream_500_is_passed_through(tmp_path: Path) -> None:
    from relay.testing import start_relay

    upstream = TinyUpstream(status=500, body=b"upstream broke")
    relay = start_relay("--spool", str(tmp_path / "spool"), upstream=upstream.url)
    try:
        with httpx.Client(base_url=relay.url, timeout=10) as client:
            created = tus_create(client, "/upload/five", 10_000)
            location, upload_id = created.headers["location"], created.headers["x-upload-id"]
            answer = tus_patch(client, location, 0, b"f" * 10_000)
            assert answer.status_code == 500
            assert answer.text == "upstream broke"
            assert answer.headers["x-tiny"] == "yes"
            assert answer.headers["x-upload-id"] == upload_id
            record = httpx.get(f"{relay.url}/_relay/uploads/{upload_id}").json()
            assert record["state"] == "completed" and record["upstream_status"] == 500
            wait_for(lambda: not (tmp_path / "spool" / f"{upload_id}.data").exists(), 5)
            assert len(upstream.requests) == 1
    finally:
        relay.stop()
        upstream.close()


def test_events_of_a_resumable_upload(stack: Stack, client: httpx.Client) -> None:
    data = os.urandom(3 * 1024 * 1024)
    created = tus_create(client, "/upload/events", len(data), meta=metadata(filename="e.bin"))
    location, upload_id = created.headers["location"], created.headers["x-upload-id"]
    stream = EventStream(f"{stack.url}/_relay/uploads/{upload_id}/events")
    tus_patch(client, location, 0, data[: 1024 * 1024])
    tus_patch(client, location, 1024 * 1024, data[1024 * 1024 : 2 * 1024 * 1024])
    assert tus_patch(client, location, 2 * 1024 * 1024, data[2 * 1024 * 1024 :]).status_code == 204
    events = stream.wait(20)
    names = [name for name, _ in events]
    assert "resumed" in names and "interrupted" in names and "part" in names
    assert names[-1] == "completed" and "progress" in names
    part = next(data_ for name, data_ in events if name == "part")
    assert part["sha256"] == sha256(data)
    seen = [data_["bytes"] for name, data_ in events if "bytes" in data_]
    assert seen == sorted(seen), seen
    assert next(d for n, d in events if n == "interrupted")["offset"] == 1024 * 1024


def test_all_events_stream_has_started(stack: Stack, client: httpx.Client) -> None:
    stream = EventStream(f"{stack.url}/_relay/events", until=lambda ev: any(n == "completed" for n, _ in ev))
    data = os.urandom(100_000)
    tus_upload(client, "/upload/started", data, chunk=60_000)
    names = [name for name, _ in stream.wait(20)]
    assert names.index("started") < names.index("resumed") < names.index("completed")


def test_expiry(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("--resumable-expiry", "2", name="expiry")
    with stack.client() as client:
        created = tus_create(client, "/upload/exp", 1000)
        location, upload_id = created.headers["location"], created.headers["x-upload-id"]
        tus_patch(client, location, 0, b"x" * 100)
        data = stack.spool / f"{upload_id}.data"
        assert data.exists()
        wait_for(lambda: not data.exists(), 7)
        assert tus_head(client, location).status_code == 404
        record = stack.record(upload_id)
        assert record["state"] == "failed" and record["error"]["code"] == "expired"
        # Also across a restart: this one expires while the relay is down.
        later = tus_create(client, "/upload/exp2", 1000)
        assert tus_patch(client, later.headers["location"], 0, b"y" * 100).status_code == 204
        later_data = stack.spool / f"{later.headers['x-upload-id']}.data"
    stack.kill_relay()
    time.sleep(2.2)
    assert later_data.exists()
    stack.start_relay(same_port=True)
    wait_for(lambda: not later_data.exists(), 3)
    with stack.client() as client:
        assert tus_head(client, later.headers["location"]).status_code == 404
    assert stack.record(later.headers["x-upload-id"])["error"]["code"] == "expired"


def test_max_incomplete(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("--resumable-max-incomplete", "2", name="cap")
    with stack.client() as client:
        assert tus_create(client, "/upload/a", 10).status_code == 201
        assert tus_create(client, "/upload/b", 10).status_code == 201
        third = tus_create(client, "/upload/c", 10)
        assert third.status_code == 429 and third.json()["error"]["code"] == "too_many_uploads"


def test_token_on_every_request_but_preflights(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("--token", "s3cret", "--cors-origin", "https://app.example", name="token")
    auth = {"Authorization": "Bearer s3cret"}
    with stack.client() as client:
        assert tus_create(client, "/upload/t", 10).status_code == 401
        created = tus_create(client, "/upload/t", 10, headers=auth)
        assert created.status_code == 201
        location = created.headers["location"]
        assert tus_head(client, location).status_code == 401
        assert tus_patch(client, location, 0, b"0123456789").status_code == 401
        assert client.delete(location, headers=TUS).status_code == 401
        assert client.options("/resumable/", headers=TUS).status_code == 401
        preflight = client.options(
            location,
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "PATCH",
                "Access-Control-Request-Headers": "tus-resumable, upload-offset, content-type",
            },
        )
        assert preflight.status_code in (200, 204)
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert "PATCH" in preflight.headers["access-control-allow-methods"]
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert "upload-offset" in allowed and "tus-resumable" in allowed
        routed = client.options(
            "/upload/t", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "PUT"}
        )
        methods = routed.headers["access-control-allow-methods"]
        assert "PUT" in methods and "POST" in methods and "PATCH" in methods  # plain uploads' too
        assert valid_upload_id(routed.headers["x-upload-id"].encode())  # every answer on a routed path (contract)
        head = client.head(location, headers={**TUS, **auth, "Origin": "https://app.example"})
        assert head.status_code == 200
        exposed = {h.strip().lower() for h in head.headers["access-control-expose-headers"].split(",")}
        wanted = (
            "Location, Upload-Offset, Upload-Length, Upload-Defer-Length, Upload-Metadata, Upload-Expires, "
            "Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, X-Upload-ID, X-Upload-Sha256, X-Upstream-Status"
        )
        assert {h.strip().lower() for h in wanted.split(",")} <= exposed
        done = tus_patch(client, location, 0, b"0123456789", {**auth, "Origin": "https://app.example"})
        assert done.status_code == 204
        assert done.headers["access-control-allow-origin"] == "https://app.example"


def test_client_min_rate_applies_to_appends(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("--client-min-rate", "100k", "--client-min-rate-grace", "1", name="rate")
    assert stack.relay is not None
    with stack.client() as client:
        created = tus_create(client, "/upload/slow", 1024 * 1024)
        location = created.headers["location"]
        sock = raw_request(
            stack.relay.port,
            f"PATCH {location} HTTP/1.1\nHost: r\nTus-Resumable: 1.0.0\nUpload-Offset: 0\n"
            f"Content-Type: {OCTETS}\nContent-Length: {1024 * 1024}\n",
        )
        answer = b""
        sock.settimeout(0.1)
        deadline = time.monotonic() + 6
        while b"client_timeout" not in answer and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                sock.sendall(b"s" * 2048)  # 20 KiB/s, under the minimum
            with contextlib.suppress(TimeoutError):
                answer += sock.recv(65536)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"client_timeout" in answer
        offset = int(tus_head(client, location).headers["upload-offset"])
        assert 0 < offset < 1024 * 1024  # what came before the refusal is kept


def test_caps_on_creation_with_upload_leave_no_upload(make_stack: Callable[..., Stack]) -> None:
    """--max-concurrent-uploads counts requests that bring bytes: a creation-with-upload over it is refused
    before anything is created (no orphan counting against --resumable-max-incomplete)."""
    stack = make_stack("--max-concurrent-uploads", "1", name="caps")
    assert stack.relay is not None
    with stack.client() as client:
        location = tus_create(client, "/upload/open", 1000).headers["location"]
        sock = raw_request(
            stack.relay.port,
            f"PATCH {location} HTTP/1.1\nHost: r\nTus-Resumable: 1.0.0\nUpload-Offset: 0\n"
            f"Content-Type: {OCTETS}\nContent-Length: 1000\n",
            b"x" * 10,
        )
        stack.wait_spooled(location.rsplit("/", 1)[1], 0)
        refused = tus_create(client, "/upload/more", 100, body=b"y" * 100)
        assert refused.status_code == 429 and refused.headers["retry-after"]
        assert "location" not in refused.headers
        assert len(list(stack.spool.glob("*.json"))) == 1
        other = tus_patch(client, location, 0, b"z")  # a PATCH of the same upload ends the open one first
        assert other.status_code == 409
        sock.close()
