"""tus concatenation (parallel uploads) end to end: real relay and sink processes on a spool, sha256 at the sink.

Partial uploads are spooled and never delivered on their own; the final POST forwards their bytes, in order, as
one file, once; their spool data goes after delivery. relay/core/concat.py has the rules.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import signal
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from relay.testing import start_relay, start_sink
from tests.interop.support import (
    OCTETS,
    TUS,
    Stack,
    TinyUpstream,
    make_stack,
    metadata,
    sha256,
    tus_create,
    tus_head,
    tus_patch,
    wait_for,
)

__all__ = ["make_stack"]  # the fixture, imported so pytest finds it here

META = metadata(filename="joined.bin", filetype="application/x-joined", album="parallel")


def partial(client: httpx.Client, data: bytes, *, chunk: int | None = None) -> str:
    """A partial upload of `data`, sent in appends of `chunk` bytes; its location."""
    created = tus_create(client, "/upload/parts", len(data), headers={"Upload-Concat": "partial"})
    assert created.status_code == 201, created.text
    location = created.headers["location"]
    step = chunk or max(len(data), 1)
    for start in range(0, len(data), step):
        answer = tus_patch(client, location, start, data[start : start + step], {"Upload-Concat": "partial"})
        assert answer.status_code == 204, answer.text
    return str(location)


def final(client: httpx.Client, urls: list[str], *, meta: str | None = META, **extra: str) -> httpx.Response:
    headers = {**TUS, "Upload-Concat": "final;" + " ".join(urls), **extra}
    if meta is not None:
        headers["Upload-Metadata"] = meta
    return client.post("/upload/joined/file", headers=headers)


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


def spool_empty(stack: Stack) -> bool:
    return stack.spool_data() == [] and not any(p.name.endswith(".json") for p in stack.spool.iterdir())


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack("--max-body-size", "20MiB")


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client() as c:
        yield c


def test_discovery_offers_concatenation(client: httpx.Client) -> None:
    answer = client.options("/resumable/", headers=TUS)
    assert "concatenation" in answer.headers["tus-extension"].split(",")


def test_partials_are_joined_in_order_and_delivered_once(stack: Stack, client: httpx.Client) -> None:
    pieces = [os.urandom(300_000), os.urandom(1), os.urandom(777_777)]
    data = b"".join(pieces)
    locations = [partial(client, piece, chunk=100_000) for piece in pieces]
    ids = [location.rsplit("/", 1)[1] for location in locations]
    # every byte of every partial is in: nothing went upstream, no record shows them, HEAD says partial
    assert stack.stored() == []
    for location, piece in zip(locations, pieces, strict=True):
        head = tus_head(client, location)
        assert head.status_code == 200 and head.headers["upload-concat"] == "partial"
        assert head.headers["upload-offset"] == head.headers["upload-length"] == str(len(piece))
    assert all(client.get(f"/_relay/uploads/{upload_id}").status_code == 404 for upload_id in ids)

    urls = [stack.url + locations[0], locations[1], stack.url + locations[2] + "/"]  # absolute, relative, slash
    done = final(client, urls)
    assert done.status_code == 201, done.text
    assert done.headers["x-upload-sha256"] == sha256(data) and done.headers["x-upstream-status"] == "200"
    location = done.headers["location"]
    upload_id = location.rsplit("/", 1)[1]
    assert stack.stored_hashes() == [sha256(data)]
    (stored,) = stack.stored()
    assert stored.name == "joined.bin"

    head = tus_head(client, location)
    assert head.status_code == 200
    assert head.headers["upload-offset"] == head.headers["upload-length"] == str(len(data))
    assert head.headers["upload-concat"] == "final;" + " ".join(locations)
    record = client.get(f"/_relay/uploads/{upload_id}").json()
    assert record["state"] == "completed" and record["parts"][0]["sha256"] == sha256(data)
    assert record["total"] == len(data)
    uploads = client.get("/_relay/uploads").json()["uploads"]
    assert not {u["id"] for u in uploads} & set(ids)  # the partial uploads never show

    assert (
        client.patch(location, headers={**TUS, "Upload-Offset": str(len(data)), "Content-Type": OCTETS}).status_code
        == 403
    )
    wait_for(lambda: stack.spool_data() == [], 7)  # the partials' bytes (and the final's none) are gone
    assert all(tus_head(client, loc).status_code == 404 for loc in locations)
    assert stack.stored_hashes() == [sha256(data)]  # once


def test_bad_finals_are_refused_and_change_nothing(stack: Stack, client: httpx.Client) -> None:
    one, two = os.urandom(5000), os.urandom(7000)
    first, second = partial(client, one), partial(client, two)
    unfinished = tus_create(client, "/upload/parts", 10, headers={"Upload-Concat": "partial"}).headers["location"]
    plain = tus_create(client, "/upload/plain", 10).headers["location"]
    tus_patch(client, plain, 0, b"0123456789"[:5])
    unknown = "/resumable/nosuchupload"

    cases: list[tuple[httpx.Response, int, str]] = [
        (final(client, [first, unknown]), 404, "not_found"),
        (final(client, [first, plain]), 400, "bad_request"),
        (final(client, [first, unfinished]), 400, "bad_request"),
        (final(client, [first, first]), 400, "bad_request"),
        (final(client, []), 400, "bad_request"),
        (final(client, ["/upload/parts/x"]), 400, "bad_request"),
        (final(client, ["/resumable/../resumable/x"]), 400, "bad_request"),
        (final(client, ["/resumable/%2e%2e"]), 400, "bad_request"),
        (final(client, ["ftp://host/resumable/abc"]), 400, "bad_request"),
        (final(client, [first, second], **{"Upload-Length": "12000"}), 400, "bad_request"),
        (client.post("/upload/x", headers={**TUS, "Upload-Concat": "whole", "Upload-Length": "1"}), 400, "bad_request"),
    ]
    with_body = client.post(
        "/upload/joined",
        headers={**TUS, "Upload-Concat": f"final;{first} {second}", "Content-Type": OCTETS},
        content=b"extra",
    )
    cases.append((with_body, 403, "forbidden"))
    ietf = client.post(
        "/upload/joined",
        headers={"Upload-Draft-Interop-Version": "6", "Upload-Complete": "?1", "Upload-Concat": "partial"},
        content=b"abc",
    )
    for answer, status, code in cases:
        assert (answer.status_code, error_code(answer)) == (status, code), answer.text
        assert answer.headers["tus-resumable"] == "1.0.0" and answer.headers["x-upload-id"]
    assert (ietf.status_code, error_code(ietf)) == (400, "bad_request")  # answered in its own protocol
    assert stack.stored() == []

    done = final(client, [first, second])  # the refusals claimed nothing
    assert done.status_code == 201, done.text
    assert stack.stored_hashes() == [sha256(one + two)]
    again = final(client, [first, second])  # spent: deleted with their delivery
    assert again.status_code == 404


def test_a_final_over_the_size_limit_is_refused(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("--max-body-size", "10000")
    with stack.client() as client:
        locations = [partial(client, os.urandom(6000)) for _ in range(2)]
        answer = final(client, locations)
        assert (answer.status_code, error_code(answer)) == (413, "body_too_large")
        assert answer.headers["tus-max-size"] == "10000"
    assert stack.stored() == []


def test_a_final_whose_upstream_is_down_is_kept_then_terminated(tmp_path: os.PathLike[str]) -> None:
    """502 with Location; the partials are claimed (DELETE of one: 403); terminating the final deletes them all."""
    upstream = TinyUpstream(die=True)
    spool = tmp_path / "spool"  # type: ignore[operator]
    relay = start_relay("--spool", str(spool), upstream=upstream.url)
    try:
        with httpx.Client(base_url=relay.url, timeout=20) as client:
            locations = [partial(client, os.urandom(20_000)) for _ in range(2)]
            answer = final(client, locations)
            assert answer.status_code == 502 and "location" in answer.headers, answer.text
            location = answer.headers["location"]
            head = tus_head(client, location)
            assert head.status_code == 200 and head.headers["upload-offset"] == "40000"
            record = client.get(f"/_relay/uploads/{location.rsplit('/', 1)[1]}").json()
            assert record["state"] == "forwarding" and record["error"]["code"] == "upstream_failed"
            refused = client.delete(locations[0], headers=TUS)
            assert (refused.status_code, error_code(refused)) == (403, "forbidden")
            assert final(client, locations).status_code == 400  # claimed by the first final
            assert client.delete(location, headers=TUS).status_code == 204
            wait_for(lambda: not [p for p in spool.iterdir() if p.is_file() and not p.name.endswith(".json")], 7)
            wait_for(lambda: all(tus_head(client, loc).status_code == 404 for loc in locations), 7)
            assert tus_head(client, location).status_code == 404
            record = client.get(f"/_relay/uploads/{location.rsplit('/', 1)[1]}").json()
            assert record["state"] == "failed" and record["error"]["code"] == "terminated"
    finally:
        relay.stop()
        upstream.close()


def test_relay_killed_during_the_final_forward_delivers_once_after_the_restart(tmp_path: os.PathLike[str]) -> None:
    """The final POST is in, the upstream has read the whole file but not answered, the relay is killed: after
    the restart the final upload is recovered from its partials' spooled bytes and delivered, once."""
    root = os.fspath(tmp_path)
    upstream = TinyUpstream(status=200, body=b"thinking", delay=30)
    spool = os.path.join(root, "spool")
    relay = start_relay("--spool", spool, upstream=upstream.url)
    port = relay.port
    pieces = [os.urandom(400_000), os.urandom(250_000), os.urandom(123)]
    data = b"".join(pieces)
    location: list[str] = []
    try:
        with httpx.Client(base_url=relay.url, timeout=40) as client:
            locations = [partial(client, piece, chunk=100_000) for piece in pieces]

            def send_final() -> None:
                with contextlib.suppress(httpx.HTTPError):  # the relay is killed under it
                    final(client, locations)

            sender = threading.Thread(target=send_final)
            sender.start()
            wait_for(lambda: len(upstream.requests) == 1, 10)  # the upstream has read the whole (framed) file
            assert data in upstream.requests[0][1]
        relay.stop(signal.SIGKILL)
        sender.join(10)
        upstream.close()
        sink_dir = os.path.join(root, "received")
        sink = start_sink(sink_dir)
        relay = start_relay("--spool", spool, "--port", str(port), upstream=sink.url)
        try:
            with httpx.Client(base_url=relay.url, timeout=20) as client:
                finals = [
                    name[: -len(".json")]
                    for name in os.listdir(spool)
                    if name.endswith(".json")
                    and name[: -len(".json")] not in {loc.rsplit("/", 1)[1] for loc in locations}
                ]
                assert len(finals) == 1
                location.append(f"/resumable/{finals[0]}")
                head = tus_head(client, location[0])
                assert head.status_code == 200 and head.headers["upload-offset"] == str(len(data))
                wait_for(lambda: client.get(f"/_relay/uploads/{finals[0]}").json()["state"] == "completed", 15)
                wait_for(lambda: all(tus_head(client, loc).status_code == 404 for loc in locations), 7)
            stored = [p for p in _files(sink_dir) if ".tmp" not in p]
            assert [_sha256_file(p) for p in stored] == [sha256(data)]
        finally:
            sink.stop()
    finally:
        relay.stop()
        upstream.close()


def _files(root: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files)


def _sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_finals_racing_for_the_same_partials_deliver_one_file(stack: Stack, client: httpx.Client) -> None:
    pieces = [os.urandom(200_000), os.urandom(100_000)]
    locations = [partial(client, piece) for piece in pieces]
    answers: list[int] = []

    def post() -> None:
        with stack.client() as own:
            answers.append(final(own, locations).status_code)

    threads = [threading.Thread(target=post) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(answers) == 6 and answers.count(201) == 1, answers
    assert set(answers) <= {201, 400, 404}, answers  # claimed by the winner (400), or already gone with it (404)
    assert stack.stored_hashes() == [sha256(b"".join(pieces))]


def test_expiry_takes_the_final_with_its_partials_and_lone_partials_quietly(tmp_path: os.PathLike[str]) -> None:
    """An undelivered final upload expires with its partial uploads' data; a partial nobody claimed expires
    like any upload, without ever showing in the registry."""
    upstream = TinyUpstream(die=True)
    spool = os.path.join(os.fspath(tmp_path), "spool")
    relay = start_relay("--spool", spool, "--resumable-expiry", "3", upstream=upstream.url)
    try:
        with httpx.Client(base_url=relay.url, timeout=20) as client:
            locations = [partial(client, os.urandom(10_000)) for _ in range(2)]
            lone = partial(client, os.urandom(500))
            answer = final(client, locations)
            assert answer.status_code == 502, answer.text
            location = answer.headers["location"]
            upload_id = location.rsplit("/", 1)[1]
            wait_for(lambda: tus_head(client, location).status_code == 404, 15)
            wait_for(lambda: client.get(f"/_relay/uploads/{upload_id}").json()["state"] == "failed", 10)  # swept
            record = client.get(f"/_relay/uploads/{upload_id}").json()
            assert record["error"]["code"] == "expired"
            wait_for(lambda: all(tus_head(client, loc).status_code == 404 for loc in [*locations, lone]), 15)
            wait_for(lambda: not [n for n in os.listdir(spool) if n.endswith(".data")], 10)
            ids = {u["id"] for u in client.get("/_relay/uploads").json()["uploads"]}
            assert ids == {upload_id}
    finally:
        relay.stop()
        upstream.close()


def test_partials_created_with_upload_and_checksummed_then_a_final_with_its_digest(
    stack: Stack, client: httpx.Client
) -> None:
    """A partial upload sent whole with its creation (answered 201 with Location, not forwarded), another with a
    tus checksum; the final's Repr-Digest is checked over the joined file: right, delivered; wrong, refused 400
    and nothing kept."""
    one, two = os.urandom(3000), os.urandom(4000)
    created = tus_create(client, "/upload/parts", len(one), headers={"Upload-Concat": "partial"}, body=one)
    assert created.status_code == 201 and created.headers["upload-offset"] == str(len(one)), created.text
    first = created.headers["location"]
    second = tus_create(client, "/upload/parts", len(two), headers={"Upload-Concat": "partial"}).headers["location"]
    checksum = "sha1 " + base64.b64encode(hashlib.sha1(two).digest()).decode()
    bad = tus_patch(client, second, 0, two, {"Upload-Checksum": "sha1 " + base64.b64encode(b"x" * 20).decode()})
    assert bad.status_code == 460
    assert tus_patch(client, second, 0, two, {"Upload-Checksum": checksum}).status_code == 204
    assert stack.stored() == []

    wrong = "sha-256=:" + base64.b64encode(hashlib.sha256(b"other").digest()).decode() + ":"
    refused = final(client, [first, second], **{"Repr-Digest": wrong})
    assert (refused.status_code, error_code(refused)) == (400, "digest_mismatch"), refused.text
    assert stack.stored() == []
    wait_for(lambda: all(tus_head(client, loc).status_code == 404 for loc in (first, second)), 7)

    three = os.urandom(2500)
    again = partial(client, three)
    right = "sha-256=:" + base64.b64encode(hashlib.sha256(three).digest()).decode() + ":"
    done = final(client, [again], **{"Repr-Digest": right})
    assert done.status_code == 201 and done.headers["x-upload-sha256"] == sha256(three), done.text
    assert stack.stored_hashes() == [sha256(three)]
