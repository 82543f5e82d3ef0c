"""Resumable uploads under faults: the relay killed mid-append, clients gone mid-PATCH, the upstream down or
dying at completion, two appends racing. After each: the sink never holds a partial file, the upload ends
byte-exact, and the spool keeps no data once it is delivered."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from relay.testing import start_process, start_relay, start_sink
from tests.interop.support import (
    OCTETS,
    Stack,
    TinyUpstream,
    make_stack,
    sha256,
    tus_create,
    tus_head,
    tus_patch,
    wait_for,
)

__all__ = ["make_stack"]


def raw_patch(port: int, location: str, offset: int, length: int, body: bytes, extra: str = "") -> socket.socket:
    """A tus PATCH declaring `length` body bytes and sending only `body`: the connection is left open."""
    head = (
        f"PATCH {location} HTTP/1.1\r\nHost: relay\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: {offset}\r\n"
        f"Content-Type: {OCTETS}\r\nContent-Length: {length}\r\n{extra}\r\n"
    )
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head.encode() + body)
    return sock


def finish(stack: Stack, location: str, data: bytes) -> httpx.Response:
    """Resume from the offset HEAD reports and send the rest."""
    with stack.client() as client:
        head = tus_head(client, location)
        assert head.status_code == 200, head.text
        offset = int(head.headers["upload-offset"])
        return tus_patch(client, location, offset, data[offset:])


def assert_clean(stack: Stack, expected: list[bytes]) -> None:
    """The sink holds exactly the complete files, nothing partial; the spool no data of delivered uploads."""
    assert stack.partial_files() == []
    assert sorted(stack.stored_hashes()) == sorted(sha256(d) for d in expected)
    wait_for(lambda: stack.spool_data() == [], 5)


@pytest.mark.parametrize("completing", [False, True], ids=["append", "completing-append"])
def test_relay_killed_mid_append_resumes_byte_exact(make_stack: Callable[..., Stack], completing: bool) -> None:
    stack = make_stack()
    assert stack.relay is not None
    data = os.urandom(6 * 1024 * 1024)
    with stack.client() as client:
        created = tus_create(client, "/upload/kill.bin", len(data))
        location = created.headers["location"]
        assert tus_patch(client, location, 0, data[: 1024 * 1024]).status_code == 204
    length = len(data) - 1024 * 1024 if completing else 3 * 1024 * 1024
    half = 1024 * 1024 + length // 2
    sock = raw_patch(stack.relay.port, location, 1024 * 1024, length, data[1024 * 1024 : half])
    time.sleep(0.5)
    stack.kill_relay()
    sock.close()
    assert stack.partial_files() == [] or wait_for(lambda: stack.partial_files() == [], 5)
    stack.start_relay(same_port=True)
    with stack.client() as client:
        offset = int(tus_head(client, location).headers["upload-offset"])
    assert 1024 * 1024 <= offset <= half
    on_disk = stack.spool / f"{location.rsplit('/', 1)[1]}.data"
    assert on_disk.read_bytes()[:offset] == data[:offset]
    last = finish(stack, location, data)
    assert last.status_code == 204, last.text
    assert last.headers["x-upload-sha256"] == sha256(data)
    assert_clean(stack, [data])


def test_client_gone_mid_patch_keeps_what_arrived(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    assert stack.relay is not None
    data = os.urandom(4 * 1024 * 1024)
    with stack.client() as client:
        location = tus_create(client, "/upload/gone.bin", len(data)).headers["location"]
        upload_id = location.rsplit("/", 1)[1]
        sock = raw_patch(stack.relay.port, location, 0, len(data), data[: 2 * 1024 * 1024])
        stack.wait_spooled(upload_id, 0)
        time.sleep(0.2)
        sock.close()
        wait_for(lambda: stack.record(upload_id)["bytes"] > 0, 5)
        offset = int(tus_head(client, location).headers["upload-offset"])
        assert 0 < offset <= 2 * 1024 * 1024
        record = stack.record(upload_id)
        assert record["state"] == "receiving" and record["offset"] == offset
    assert stack.stored() == [] and stack.partial_files() == []
    assert finish(stack, location, data).status_code == 204
    assert_clean(stack, [data])


def test_upstream_down_at_completion_then_delivered_once(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    assert stack.sink is not None
    data = os.urandom(500_000)
    with stack.client() as client:
        location = tus_create(client, "/upload/down.bin", len(data)).headers["location"]
        upload_id = location.rsplit("/", 1)[1]
        assert tus_patch(client, location, 0, data[:200_000]).status_code == 204
        stack.sink.stop()
        failed = tus_patch(client, location, 200_000, data[200_000:])
        assert failed.status_code == 502, failed.text
        assert failed.json()["error"]["code"] == "upstream_unavailable"
        assert failed.headers["x-upload-id"] == upload_id
        assert tus_head(client, location).headers["upload-offset"] == str(len(data))
        record = stack.record(upload_id)
        assert record["state"] == "forwarding" and record["error"]["code"] == "upstream_unavailable"
        again = tus_patch(client, location, len(data), b"")  # still down
        assert again.status_code == 502
        stack.start_sink()
        delivered = tus_patch(client, location, len(data), b"")
        assert delivered.status_code == 204, delivered.text
        assert delivered.headers["x-upload-sha256"] == sha256(data)
        replay = tus_patch(client, location, len(data), b"")
        assert replay.status_code == 204 and replay.headers["x-upload-sha256"] == sha256(data)
        record = stack.record(upload_id)
        assert record["state"] == "completed" and record["upstream_status"] == 200
        assert record["error"] is None, record  # the failed forwards are history once it is delivered
    assert_clean(stack, [data])


def test_a_client_that_only_asks_head_after_a_failed_forward_still_gets_it_delivered(
    make_stack: Callable[..., Stack],
) -> None:
    # tus-js-client after a 502 on its last PATCH retries with a HEAD, sees the full offset and reports success:
    # it never sends the completing PATCH again. The relay delivers by itself once the upstream is back.
    stack = make_stack()
    assert stack.sink is not None
    data = os.urandom(300_000)
    with stack.client() as client:
        location = tus_create(client, "/upload/headonly.bin", len(data)).headers["location"]
        upload_id = location.rsplit("/", 1)[1]
        stack.sink.stop()
        assert tus_patch(client, location, 0, data).status_code == 502
        stack.start_sink()
        assert tus_head(client, location).headers["upload-offset"] == str(len(data))
        # The HEAD itself sets the retry off (the sweeper alone would take 5 to 10 s).
        wait_for(lambda: stack.record(upload_id)["state"] == "completed", 4)
        assert stack.record(upload_id)["upstream_status"] == 200
        replay = tus_patch(client, location, len(data), b"")  # a client that does send it again: no second copy
        assert replay.status_code == 204 and replay.headers["x-upload-sha256"] == sha256(data)
    assert_clean(stack, [data])


def test_upstream_dies_mid_cut_through(tmp_path: Path) -> None:
    upstream = TinyUpstream(read_limit=1024 * 1024, die=True)
    stack = Stack(tmp_path, ())
    stack.relay = start_relay("--spool", str(stack.spool), upstream=upstream.url)
    stack.started.append(stack.relay)
    try:
        data = os.urandom(8 * 1024 * 1024)
        with stack.client() as client:
            location = tus_create(client, "/upload/die.bin", len(data)).headers["location"]
            upload_id = location.rsplit("/", 1)[1]
            answer = tus_patch(client, location, 0, data)
            assert answer.status_code == 502, answer.text
            assert len(upstream.requests) == 1 and len(upstream.requests[0][1]) < len(data)
            assert tus_head(client, location).headers["upload-offset"] == str(len(data))
            assert (stack.spool / f"{upload_id}.data").read_bytes() == data
            assert stack.record(upload_id)["state"] == "forwarding"
            upstream.close()
            stack.sink = start_sink(stack.store, "--port", str(upstream.port))
            stack.started.append(stack.sink)
            delivered = tus_patch(client, location, len(data), b"")
            assert delivered.status_code == 204, delivered.text
        assert_clean(stack, [data])
    finally:
        stack.stop()
        upstream.close()


@pytest.mark.parametrize("completing", [False, True], ids=["append", "completing-append"])
def test_two_appends_racing(make_stack: Callable[..., Stack], completing: bool) -> None:
    """The second request ends the first (which keeps what it brought, and whose forward, when it was the
    completing append going upstream, is aborted): never a corrupt or a double delivery."""
    stack = make_stack()
    assert stack.relay is not None
    data = os.urandom(3 * 1024 * 1024)
    declared = len(data) if completing else 2 * 1024 * 1024
    with stack.client() as client:
        location = tus_create(client, "/upload/race.bin", len(data)).headers["location"]
        first = raw_patch(stack.relay.port, location, 0, declared, data[: 1024 * 1024])
        stack.wait_spooled(location.rsplit("/", 1)[1], 0)
        second = tus_patch(client, location, 0, data[: 2 * 1024 * 1024])  # a client that came back
        assert second.status_code == 409, second.text
        kept = int(second.headers["upload-offset"])
        assert 0 < kept <= 1024 * 1024
        # the first request was ended: its connection is closed, and whatever it still sends is ignored
        with contextlib.suppress(OSError):
            first.sendall(data[1024 * 1024 : 2 * 1024 * 1024])
        first.close()
        assert int(tus_head(client, location).headers["upload-offset"]) == kept
        resumed = tus_patch(client, location, kept, data[kept : 2 * 1024 * 1024])
        assert resumed.status_code == 204
        last = tus_patch(client, location, 2 * 1024 * 1024, data[2 * 1024 * 1024 :])
        assert last.status_code == 204 and last.headers["x-upload-sha256"] == sha256(data)
    assert_clean(stack, [data])


def test_terminated_and_expired_leave_no_data(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("--resumable-expiry", "1")
    with stack.client() as client:
        one = tus_create(client, "/upload/t1", 100).headers["location"]
        two = tus_create(client, "/upload/t2", 100).headers["location"]
        tus_patch(client, one, 0, b"1" * 50)
        tus_patch(client, two, 0, b"2" * 50)
        assert client.delete(one, headers={"Tus-Resumable": "1.0.0"}).status_code == 204
    wait_for(lambda: stack.spool_data() == [], 7)
    assert stack.stored() == [] and stack.partial_files() == []


def test_relay_killed_while_the_upstream_thinks_delivers_after_the_restart(tmp_path: Path) -> None:
    """Every byte is in and the upstream has the whole file but has not answered when the relay is killed: after
    the restart the upload is finished (`forwarding`, noted relay_restarted) and the relay delivers it again by
    itself; the client never sent its bytes twice (completion.py Rule 2, core recover)."""
    upstream = TinyUpstream(status=200, body=b"thinking", delay=30)  # takes the body, then answers too late
    spool = tmp_path / "spool"
    relay = start_relay("--spool", str(spool), upstream=upstream.url)
    port = relay.port
    data = os.urandom(700_000)
    try:
        with httpx.Client(base_url=relay.url, timeout=20) as client:
            location = tus_create(client, "/upload/thinking.bin", len(data)).headers["location"]
            upload_id = location.rsplit("/", 1)[1]

            def send_all() -> None:
                with contextlib.suppress(httpx.HTTPError):  # the relay is killed under it
                    tus_patch(client, location, 0, data)

            sender = threading.Thread(target=send_all)
            sender.start()
            wait_for(lambda: len(upstream.requests) == 1, 10)  # the upstream has read the whole (framed) file
        relay.stop(signal.SIGKILL)
        sender.join(10)
        upstream.close()
        sink_dir = tmp_path / "received"
        sink = start_sink(sink_dir)
        relay = start_relay("--spool", str(spool), "--port", str(port), upstream=sink.url)
        try:
            with httpx.Client(base_url=relay.url, timeout=20) as client:
                assert tus_head(client, location).headers["upload-offset"] == str(len(data))
                wait_for(lambda: client.get(f"/_relay/uploads/{upload_id}").json()["state"] == "completed", 10)
            stored = [p for p in sink_dir.rglob("*") if p.is_file() and ".tmp" not in p.parts]
            assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in stored] == [sha256(data)]
        finally:
            sink.stop()
    finally:
        relay.stop()
        upstream.close()


def test_head_during_forwarding_answers_at_once(tmp_path: Path) -> None:
    """The completing append is in, the upstream thinks: HEAD and the registry say forwarding, a repeated
    completing request waits for that forward and answers as it did (one delivery)."""
    upstream = TinyUpstream(status=200, body=b"took my time", delay=1.5)
    relay = start_relay("--spool", str(tmp_path / "spool"), upstream=upstream.url)
    try:
        with httpx.Client(base_url=relay.url, timeout=20) as client:
            location = tus_create(client, "/upload/slow-upstream", 1000).headers["location"]
            upload_id = location.rsplit("/", 1)[1]
            results: dict[str, httpx.Response] = {}

            def complete(name: str, body: bytes, offset: int) -> None:
                with httpx.Client(base_url=relay.url, timeout=20) as own:
                    results[name] = tus_patch(own, location, offset, body)

            first = threading.Thread(target=complete, args=("first", b"z" * 1000, 0))
            first.start()
            wait_for(lambda: len(upstream.requests) == 1, 5)
            began = time.monotonic()
            head = tus_head(client, location)
            assert time.monotonic() - began < 1.0  # not held up by the upstream
            assert head.headers["upload-offset"] == "1000"
            record = httpx.get(f"{relay.url}/_relay/uploads/{upload_id}").json()
            assert record["state"] == "forwarding"
            second = threading.Thread(target=complete, args=("second", b"", 1000))
            second.start()
            first.join(10)
            second.join(10)
        assert results["first"].status_code == 204 and results["second"].status_code == 204
        assert results["second"].headers["x-upload-sha256"] == results["first"].headers["x-upload-sha256"]
        assert len(upstream.requests) == 1
    finally:
        relay.stop()
        upstream.close()


def test_a_delivered_upload_still_answers_after_a_restart_then_goes(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("--resumable-expiry", "3")
    data = os.urandom(10_000)
    with stack.client() as client:
        location = tus_create(client, "/upload/after.bin", len(data)).headers["location"]
        done = tus_patch(client, location, 0, data)
        assert done.status_code == 204
    wait_for(lambda: stack.spool_data() == [], 5)  # the data goes; the record stays
    stack.restart_relay()
    with stack.client() as client:
        head = tus_head(client, location)
        assert head.status_code == 200 and head.headers["upload-offset"] == str(len(data))
        again = tus_patch(client, location, len(data), b"")
        assert again.status_code == 204 and again.headers["x-upload-sha256"] == sha256(data)
        wait_for(lambda: not any(stack.spool.iterdir()), 12)  # expired: the record goes too
        assert tus_head(client, location).status_code == 404
    assert stack.stored_hashes() == [sha256(data)]


@pytest.mark.parametrize("fault", ["client-gone", "relay-killed"])
def test_a_broken_patch_with_a_checksum_keeps_nothing(make_stack: Callable[..., Stack], fault: str) -> None:
    """Its bytes cannot be verified: the offset stays where it was (docs/resumable-protocols.md)."""
    stack = make_stack()
    assert stack.relay is not None
    data = os.urandom(2 * 1024 * 1024)
    digest = base64.b64encode(hashlib.sha256(data[1000:]).digest()).decode()
    with stack.client() as client:
        location = tus_create(client, "/upload/sum.bin", len(data)).headers["location"]
        assert tus_patch(client, location, 0, data[:1000]).status_code == 204
    sock = raw_patch(
        stack.relay.port,
        location,
        1000,
        len(data) - 1000,
        data[1000 : 1024 * 1024],
        f"Upload-Checksum: sha256 {digest}\r\n",
    )
    time.sleep(0.3)
    if fault == "relay-killed":
        stack.restart_relay()
    sock.close()
    with stack.client() as client:
        assert tus_head(client, location).headers["upload-offset"] == "1000"
    last = finish(stack, location, data)
    assert last.status_code == 204 and last.headers["x-upload-sha256"] == sha256(data)
    assert_clean(stack, [data])


def test_delete_while_the_file_goes_upstream_waits_for_the_answer(tmp_path: Path) -> None:
    """A forward under way is never cut by DELETE (the upstream would see an aborted request of a file that
    was complete): DELETE waits, the upload is delivered, its data then gone."""
    upstream = TinyUpstream(status=200, body=b"ok", delay=1.0)
    spool = tmp_path / "spool"
    relay = start_relay("--spool", str(spool), upstream=upstream.url)
    try:
        with httpx.Client(base_url=relay.url, timeout=20) as client:
            location = tus_create(client, "/upload/del-fwd", 5000).headers["location"]
            upload_id = location.rsplit("/", 1)[1]
            results: dict[str, httpx.Response] = {}

            def complete() -> None:
                with httpx.Client(base_url=relay.url, timeout=20) as own:
                    results["patch"] = tus_patch(own, location, 0, b"q" * 5000)

            thread = threading.Thread(target=complete)
            thread.start()
            wait_for(lambda: len(upstream.requests) == 1, 5)
            deleted = client.delete(location, headers={"Tus-Resumable": "1.0.0"})
            thread.join(10)
            assert deleted.status_code == 204
            assert results["patch"].status_code == 204
            assert len(upstream.requests[0][1]) > 5000  # the whole multipart body
            record = httpx.get(f"{relay.url}/_relay/uploads/{upload_id}").json()
            assert record["state"] == "completed"
            wait_for(lambda: not (spool / f"{upload_id}.data").exists(), 5)
    finally:
        relay.stop()
        upstream.close()


FAILING_COMMIT = """
import sys
from relay.spool import disk_writer
from relay.spool.base import SpoolError

async def commit(self, *, sync=True):
    if not sync:  # the completing append of a cut-through: the disk fails under it
        await self._finish(keep=True, sync=False)
        raise SpoolError("injected ENOSPC")
    return await ORIGINAL(self, sync=sync)

ORIGINAL = disk_writer.DiskWriter.commit
disk_writer.DiskWriter.commit = commit
from relay.cli import main
sys.exit(main())
"""


def test_a_disk_error_on_the_completing_append_is_503_and_leaves_the_upload_usable(tmp_path: Path) -> None:
    sink = start_sink(tmp_path / "received")
    relay = start_process(
        [
            sys.executable,
            "-c",
            FAILING_COMMIT,
            "--port",
            "0",
            "--spool",
            str(tmp_path / "spool"),
            "--upstream",
            sink.url,
        ]
    )
    try:
        with httpx.Client(base_url=relay.url, timeout=10) as client:
            location = tus_create(client, "/upload/enospc.bin", 5).headers["location"]
            failed = tus_patch(client, location, 0, b"hello")
            assert failed.status_code == 503, failed.text
            assert failed.json()["error"]["code"] == "spool_unavailable"
            head = tus_head(client, location)  # answers at once: nothing is left held
            assert head.status_code == 200
            again = tus_patch(
                client, location, int(head.headers["upload-offset"]), b"hello"[int(head.headers["upload-offset"]) :]
            )
            assert again.status_code == 503  # the disk still fails, but the request ends
        assert "Traceback" not in relay.log()
    finally:
        relay.stop()
        sink.stop()
