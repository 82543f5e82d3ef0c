"""The spliced cut-through's pump (relay/resumable/spliced.py) on real sockets, pipes and a real disk spool, without
a relay around it: client socket -> pipe A -> upstream socket, A tee'd into pipe S for the spool thread (which
writes with O_DIRECT, Rule 7, or through the page cache: every test runs both ways).

What the relay's promise needs, checked directly: when `on_last` runs (the upload about to be recorded complete),
the data file already holds every byte and the upstream has not been given the last one (Rule 2); after it,
the upstream gets the body byte for byte; the spooled bytes of earlier appends go first (Rule 6); a client that
leaves mid-body leaves the file holding exactly a prefix of the body, counted as the append's `written` (Rule 3).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from relay import pipehash
from relay.core.progress import ProgressPolicy
from relay.errors import ClientDisconnected
from relay.resumable import spliced, spliced_threads
from relay.resumable.live import LiveAppend
from relay.spool.disk import DiskSpool
from relay.zerocopy import ClientSocket, SplicedBody

pytestmark = pytest.mark.skipif(not spliced.ENABLED, reason="needs splice(2) and tee(2)")


@pytest.fixture(autouse=True, params=["direct", "page-cache"])
def spool_writes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test twice: the spool thread writing with O_DIRECT (Rule 7) and through the page cache."""
    monkeypatch.setattr(spliced_threads, "DIRECT", request.param == "direct")
    return str(request.param)


SIZE = 5 * 1024 * 1024 + 77


async def _no_body() -> Any:
    raise AssertionError("a spliced body is never received")


def _reader(sock: socket.socket, into: bytearray) -> threading.Thread:
    def run() -> None:
        while chunk := sock.recv(1 << 20):
            into.extend(chunk)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def _run(
    tmp_path: Path,
    data: bytes,
    *,
    spooled: bytes = b"",
    send: int | None = None,
    pause: bool = False,
    digest: Any = None,
) -> dict[str, Any]:
    """Splice `data` (after `spooled`, already in the file) as one append; `send` bytes only, then the client
    leaves. Returns what the upstream got, the file, the append and what `on_last` saw."""
    spool = DiskSpool(tmp_path / "spool")
    await spool.create("up1", b"{}")
    if spooled:
        writer0 = await spool.writer("up1", 0)
        await writer0.write(spooled)
        await writer0.commit()
    writer = await spool.writer("up1", len(spooled))
    live = LiveAppend(
        _no_body,
        writer,
        upload_id="up1",
        total=len(spooled) + len(data),
        max_bytes=len(data),
        checksum=None,
        emit=lambda event: None,
        progress=ProgressPolicy(),
    )
    client_app, client_peer = socket.socketpair()
    upstream_relay, upstream_peer = socket.socketpair()
    for sock in (client_app, upstream_relay):
        sock.setblocking(False)
    forwarded: list[int] = []
    seen: dict[str, Any] = {}

    async def on_last() -> None:
        seen["file"] = (tmp_path / "spool" / "up1.data").stat().st_size
        seen["forwarded"] = sum(forwarded)
        await writer.commit(sync=False)

    body = SplicedBody(
        _never(),
        take=lambda: ClientSocket(client_app.fileno(), data[:1000]),
        length=len(spooled) + len(data),
        client_idle=5.0,
        on_received=lambda size: None,
        on_forwarded=forwarded.append,
        on_end=lambda whole: seen.setdefault("whole", whole),
        digest=None if digest is None else lambda: digest,
    )
    cut = spliced.CutThrough(body.take, live, on_last, spooled=len(spooled), path=writer.path)
    got = bytearray()
    reader = _reader(upstream_peer, got)
    to_send = data[1000:] if send is None else data[1000:send]

    def client() -> None:
        if pause:
            client_peer.sendall(to_send[:-10])
            time.sleep(0.5)
            client_peer.sendall(to_send[-10:])
            return
        client_peer.sendall(to_send)
        if send is not None:
            client_peer.close()

    sender = threading.Thread(target=client, daemon=True)
    sender.start()
    try:
        await cut.wrap(body).splice(
            upstream_relay.fileno(),
            b"HEAD\r\n",
            upstream_idle=5.0,
            upstream_progress=lambda: 0,
            stop=lambda: False,
            attach=lambda waiter: None,
        )
    except ClientDisconnected:
        seen["disconnected"] = True
        await writer.abort()
    finally:
        await cut.close()  # a pump an upstream failure left suspended (none here, unless the test fails)
        sender.join()
        upstream_relay.close()
        reader.join(5)
        for sock in (client_app, client_peer, upstream_peer):
            sock.close()
        await spool.close()
    seen["upstream"] = bytes(got)
    seen["file_bytes"] = (tmp_path / "spool" / "up1.data").read_bytes()
    seen["written"] = live.written
    seen["ended"] = live.ended
    return seen


async def _never() -> Any:
    raise AssertionError("the fallback is not iterated once spliced")
    yield b""


def test_the_last_byte_waits_for_the_file_and_on_last(tmp_path: Path) -> None:
    """The client pauses before its last 10 bytes: the upstream has taken everything before them by then, and has
    room for them; still, when `on_last` runs, the last byte has not gone."""
    data = os.urandom(SIZE)
    seen = asyncio.run(_run(tmp_path, data, pause=True))
    assert seen["file"] == SIZE and seen["forwarded"] <= SIZE - 1  # Rule 2: all in the file, not all upstream
    assert seen["upstream"] == b"HEAD\r\n" + data
    assert seen["file_bytes"] == data and seen["written"] == SIZE and seen["ended"] and seen["whole"]


def test_spooled_bytes_go_first_from_the_file(tmp_path: Path) -> None:
    earlier, data = os.urandom(3 * 1024 * 1024 + 5), os.urandom(SIZE)
    seen = asyncio.run(_run(tmp_path, data, spooled=earlier))
    assert hashlib.sha256(seen["upstream"]).digest() == hashlib.sha256(b"HEAD\r\n" + earlier + data).digest()
    assert seen["file_bytes"] == earlier + data
    assert seen["forwarded"] <= len(earlier) + SIZE - 1


def test_the_body_is_hashed_spooled_bytes_first(tmp_path: Path, spool_writes: str) -> None:
    """Rule 8 (direct: the spool thread hashes from its buffers) or pipe B's hash thread (page cache): either way
    the hash holds the spooled bytes, read back from the file, then this append's."""
    earlier, data = os.urandom(2 * 1024 * 1024 + 11), os.urandom(SIZE)
    digest = hashlib.sha256()
    seen = asyncio.run(_run(tmp_path, data, spooled=earlier, digest=digest))
    assert seen["upstream"] == b"HEAD\r\n" + earlier + data
    assert digest.hexdigest() == hashlib.sha256(earlier + data).hexdigest()
    assert pipehash.in_use() == 0  # the hash thread reserved for the body is free again, whoever hashed it


def test_a_client_that_leaves_keeps_a_prefix_in_the_file(tmp_path: Path) -> None:
    data = os.urandom(SIZE)
    seen = asyncio.run(_run(tmp_path, data, send=2 * 1024 * 1024 + 3))
    assert seen["disconnected"] and "file" not in seen  # on_last never ran: the upstream never got a whole body
    held = seen["file_bytes"]
    assert seen["written"] == len(held) <= 2 * 1024 * 1024 + 3 and held == data[: len(held)]
    assert not seen["ended"] and len(seen["upstream"]) - len(b"HEAD\r\n") <= len(held)


def test_the_spool_thread_does_not_wait_on_a_closed_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """`Gather` waits for pipe S to fill, but not once its writer is gone: the upload's last byte waits for the
    spool thread (Rule 2), so a pause there would delay every cut-through's answer."""
    pauses: list[float] = []
    monkeypatch.setattr(spliced_threads.time, "sleep", pauses.append)
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, b"x" * 100)
        gather = spliced_threads.Gather(read_fd)
        gather.wait()
        assert len(pauses) == spliced_threads.GATHER_TRIES  # open and nearly empty: it waited
        pauses.clear()
        os.close(write_fd)
        write_fd = -1
        gather.wait()
        assert pauses == []  # closed: the rest is read at once
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
