"""The hashed splice (relay/zerocopy.py with relay/pipehash.py) on real sockets and pipes, without a relay around it.

A body goes client socket -> pipe A -> upstream socket while pipe A is tee'd into pipe B for a hash thread. These
tests make the hash thread slow (pipe B fills, tee says EAGAIN, the pump must wait for it) and check what the
relay's promise needs: the upstream gets the body byte for byte, the hash is the body's, every byte is counted
once, and the upstream never gets ahead of what was tee'd.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time

import pytest

from relay import pipehash, zerocopy
from relay.errors import ClientDisconnected
from relay.zerocopy import ClientSocket, SplicedBody

pytestmark = pytest.mark.skipif(not zerocopy.tee_supported(), reason="needs splice(2) and tee(2)")

SIZE = 6 * 1024 * 1024 + 321


class SlowHash:
    """sha256 that sleeps on every update (the GIL released, as hashlib's is): a hash thread that lags. It records
    how far the upstream had got at each update, to show the upstream never ran ahead of the tee."""

    def __init__(self, delay: float, forwarded: list[int]) -> None:
        self.hash = hashlib.sha256()
        self.delay = delay
        self.hashed = 0
        self.forwarded = forwarded
        self.lead: list[int] = []  # forwarded - hashed, sampled before each update

    def update(self, data: bytes | memoryview) -> None:
        self.lead.append(self.forwarded[0] - self.hashed)
        time.sleep(self.delay)
        self.hash.update(data)
        self.hashed += len(data)


def collect(sock: socket.socket, into: bytearray) -> threading.Thread:
    def run() -> None:
        while True:
            piece = sock.recv(1 << 20)
            if not piece:
                return
            into.extend(piece)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def fallback() -> object:
    async def nothing():  # type: ignore[no-untyped-def]
        if False:
            yield b""

    return nothing()


def run_splice(
    data: bytes, digest: object, *, cut_at: int | None = None, buffered: int = 4096, teed: list[int] | None = None
) -> dict[str, object]:
    """Splice `data` (the first `buffered` bytes as uvicorn's read-ahead) with `digest`; with `cut_at` the client
    resets after sending that much. Returns what the upstream got and what was counted."""
    client_app, client_relay = socket.socketpair()
    upstream_relay, upstream_app = socket.socketpair()
    for sock in (client_relay, upstream_relay):
        sock.setblocking(False)
    received: list[int] = []
    forwarded = getattr(digest, "forwarded", [0])
    ended: list[bool] = []
    got = bytearray()
    reader = collect(upstream_app, got)
    send_to = len(data) if cut_at is None else cut_at

    def send() -> None:
        client_app.sendall(data[buffered:send_to])
        if cut_at is not None:
            client_app.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            client_app.close()

    ahead = 0

    def forward(n: int) -> None:
        nonlocal ahead
        forwarded[0] += n
        if teed is not None and forwarded[0] > buffered + teed[0]:
            ahead += 1

    body = SplicedBody(
        fallback(),  # type: ignore[arg-type]
        take=lambda: ClientSocket(client_relay.fileno(), data[:buffered]),
        length=len(data),
        client_idle=5,
        on_received=received.append,
        on_forwarded=forward,
        on_end=ended.append,
        digest=(lambda: digest) if digest is not None else None,  # type: ignore[arg-type, return-value]
    )

    async def main() -> bool | None:
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            return await body.splice(
                upstream_relay.fileno(),
                b"HEAD\r\n",
                upstream_idle=5,
                upstream_progress=lambda: 0,
                stop=lambda: False,
                attach=lambda _: None,
            )
        finally:
            sender.join(10)

    outcome: object
    try:
        outcome = asyncio.run(main())
    except ClientDisconnected as exc:
        outcome = exc
    finally:
        upstream_relay.close()
        client_relay.close()
        if cut_at is None:
            client_app.close()
        reader.join(10)
        upstream_app.close()
    return {
        "outcome": outcome,
        "upstream": bytes(got),
        "received": sum(received),
        "forwarded": forwarded[0],
        "ended": ended,
        "ahead": ahead,
    }


def test_a_lagging_hash_thread_holds_the_upstream_back_and_loses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    full = 0
    teed = [0]
    real_tee = pipehash.tee

    def counting_tee(fd_in: int, fd_out: int, count: int, flags: int) -> int:
        nonlocal full
        try:
            moved = real_tee(fd_in, fd_out, count, flags)
        except BlockingIOError:
            full += 1
            raise
        teed[0] += moved
        return moved

    monkeypatch.setattr(pipehash, "tee", counting_tee)
    data = os.urandom(SIZE)
    forwarded = [0]
    digest = SlowHash(0.004, forwarded)
    seen = run_splice(data, digest, teed=teed)
    assert seen["outcome"] is False and seen["ended"] == [True]
    assert seen["upstream"] == b"HEAD\r\n" + data  # byte for byte, nothing twice, nothing skipped
    assert digest.hash.hexdigest() == hashlib.sha256(data).hexdigest()
    assert seen["received"] == SIZE and seen["forwarded"] == SIZE  # each byte counted once
    assert full > 0, "the hash thread never lagged: this test did not test the wait for pipe B"
    assert max(digest.lead) > 0  # the upstream got bytes the thread had not hashed yet: tee'd ones (next test)
    assert seen["ahead"] == 0, "the upstream got body bytes that were never tee'd to the hash thread"


def test_a_fast_hash_gives_the_bodys_sha256() -> None:
    data = os.urandom(SIZE)
    digest = hashlib.sha256()
    seen = run_splice(data, digest, buffered=0)
    assert seen["outcome"] is False and seen["upstream"] == b"HEAD\r\n" + data
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_client_reset_mid_body_ends_the_splice_short() -> None:
    data = os.urandom(SIZE)
    digest = SlowHash(0.001, [0])
    seen = run_splice(data, digest, cut_at=SIZE // 2)
    assert isinstance(seen["outcome"], ClientDisconnected) and seen["ended"] == [False]
    assert len(seen["upstream"]) < len(b"HEAD\r\n" + data)  # type: ignore[arg-type]
    wait_threads_free()  # the thread reads pipe B to its end (the pump closed it) and leaves


def wait_threads_free() -> None:
    deadline = time.monotonic() + 5
    while pipehash.in_use() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pipehash.in_use() == 0


def test_hash_threads_are_reserved_and_given_back() -> None:
    wait_threads_free()
    taken = [pipehash.reserve() for _ in range(pipehash.MAX_THREADS + 1)]
    try:
        assert taken == [True] * pipehash.MAX_THREADS + [False]
    finally:
        for ok in taken:
            if ok:
                pipehash.release()
    assert pipehash.reserve()
    pipehash.release()
