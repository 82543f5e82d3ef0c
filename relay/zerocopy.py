"""Zero-copy bodies: the client's socket spliced to the upstream's through a pipe, the relay counting what moves.

Theory of operation
-------------------
For a body nothing needs to look at (relay/core/splicing.py decides), copying every byte up into Python and back
down is most of the relay's CPU (benchmarks/RESULTS.md, run 9). Linux's `splice(2)` moves socket bytes into a pipe
and pipe bytes into another socket without a user-space copy. The relay's part shrinks to two system calls per
pipe-full and the bookkeeping it owes: counts, progress events, limits, timeouts.

The seam is ONE object, `SplicedBody`. The proxy hands it to the upstream leg in place of its body generator, and
it iterates exactly like that generator, so every leg that does not splice (TLS upstream, another leg) gets the
normal, readable path. The relay's own leg, on plain TCP, calls `SplicedBody.splice(...)` instead; that asks the
server glue for the client's socket (`take`, which pauses uvicorn's reading and hands over what uvicorn had already
buffered: those bytes go first) and returns False when it cannot be had (TLS client, the body already in memory):
the leg then iterates as usual. Once taken, there is no way back: an error ends the request as on the normal path.

What must still hold (the relay's promise and the contract), and how:
- Exactly `length` bytes are read from the client: splice is asked for no more than what is left of the body, so
  a pipelined next request is never read as body. The connection is closed after the answer (the HTTP parser never
  saw the spliced bytes, so it cannot read a next request on it; the glue sets keep-alive off).
- A client that leaves mid-body (EOF, reset) raises ClientDisconnected; the leg aborts the upstream connection, so
  the upstream sees a short Content-Length body and a reset: never a complete body.
- Idle timeouts: no byte from the client for `client_idle` s is ClientTimeout; no byte taken by the upstream for
  `upstream_idle` s, and no progress by `upstream_progress()` (TCP_INFO, as on the normal path), is
  UpstreamTimeout. One timer per body, re-armed only when a deadline passes.
- `on_received(n)` / `on_forwarded(n)` after every splice in / out: the proxy counts, emits progress, checks
  --client-min-rate there. `stop()` is asked after each round (the upstream answered early, or went away);
  `wake` is the future the upstream connection resolves when it reads response bytes.
- Cancellation (the drain timeout at shutdown) and every error close the pipe and the duplicated descriptors
  (the poll registrations go with them); the caller aborts the upstream connection.
- A body the relay hashes (`digest`, the default sha256) is spliced too: pipe A is tee'd into a pipe B that a
  thread hashes (relay/pipehash.py). `ready` counts the bytes at the head of pipe A that may leave: all of them
  without a hash, only the tee'd ones with it, and the next tee waits until they have all left (tee copies from
  the head of the pipe). The body is whole only once the hash thread has hashed the last byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from relay import pipehash
from relay.errors import ClientDisconnected, ClientTimeout, UpstreamTimeout
from relay.pipehash import RawHash

__all__ = ["ClientSocket", "SplicedBody", "UpstreamGone", "splice_supported", "tee_supported"]

PIPE_SIZE = 1024 * 1024  # Linux's default pipe-max-size for unprivileged processes; 64 KiB if refused
FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
TEE_FLAGS = getattr(os, "SPLICE_F_NONBLOCK", 2)
# Rounds without a wait before the pump yields to the loop anyway, so other uploads are served.
ROUNDS_PER_YIELD = 16


def splice_supported() -> bool:
    return hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")


def tee_supported() -> bool:
    """Whether a hashed body may be spliced: splice, and tee(2) for the hash thread's copy."""
    return splice_supported() and pipehash.tee_supported()


@dataclass(frozen=True, slots=True)
class ClientSocket:
    """What the server glue hands over: the client socket's descriptor and the body bytes it already read."""

    fd: int
    buffered: bytes


class UpstreamGone(Exception):
    """The upstream socket refused a write (reset, closed): the leg decides whether an answer stands."""


class SplicedBody:
    """A request body that may be spliced; iterated, it is the normal body generator (`fallback`)."""

    def __init__(
        self,
        fallback: AsyncIterator[bytes],
        *,
        take: Callable[[], ClientSocket | None],
        length: int,
        client_idle: float | None,
        on_received: Callable[[int], None],
        on_forwarded: Callable[[int], None],
        on_end: Callable[[bool], None],
        digest: Callable[[], RawHash] | None = None,
    ) -> None:
        self.fallback = fallback
        self.digest = digest  # the hashlib object the body's bytes must go through, got once spliced
        self.take = take
        self.length = length
        self.client_idle = client_idle
        self.on_received = on_received
        self.on_forwarded = on_forwarded
        self.on_end = on_end  # called once the splice is over: True when the whole body went

    def __aiter__(self) -> SplicedBody:
        return self

    def __anext__(self) -> Awaitable[bytes]:
        return self.fallback.__anext__()

    async def aclose(self) -> None:
        aclose = getattr(self.fallback, "aclose", None)
        if aclose is not None:
            await aclose()

    async def splice(
        self,
        upstream_fd: int,
        head: bytes,
        *,
        upstream_idle: float,
        upstream_progress: Callable[[], int],
        stop: Callable[[], bool],
        attach: Callable[[asyncio.Future[None] | None], None],
    ) -> bool | None:
        """Send `head` and the whole body to `upstream_fd`; None when the client socket cannot be taken (nothing
        was sent: iterate instead), True when `stop()` ended it early, False when the body went whole."""
        client, digest = self._take()
        if client is None:
            return None
        whole = False
        try:
            pump = _Pump(self, client, upstream_fd, head, upstream_idle, upstream_progress, digest)
            try:
                if client.buffered:
                    self.on_received(len(client.buffered))
                stopped = await pump.run(stop, attach)
            finally:
                pump.close()
                attach(None)
            whole = not stopped
            return stopped
        finally:
            self.on_end(whole)

    def _take(self) -> tuple[ClientSocket | None, RawHash | None]:
        """The client socket, and the hash its bytes go through when the body is hashed (a hash thread reserved
        for it: the pump gives it back); (None, None) when either cannot be had and nothing was taken."""
        if self.digest is None:
            return self.take(), None
        if not pipehash.reserve():
            return None, None  # every hash thread is busy: the copying path hashes on the shared worker
        try:
            digest = self.digest()
            client = self.take()
        except BaseException:
            pipehash.release()
            raise
        if client is None:
            pipehash.release()
            return None, None
        return client, digest


class _Pump:
    """One body's splice loop: client -> pipe -> upstream, with the prefix (head, buffered bytes) written first."""

    def __init__(
        self,
        body: SplicedBody,
        client: ClientSocket,
        upstream_fd: int,
        head: bytes,
        upstream_idle: float,
        upstream_progress: Callable[[], int],
        digest: RawHash | None,
    ) -> None:
        self.body = body
        self.loop = asyncio.get_running_loop()
        self.timer: asyncio.TimerHandle | None = None
        self.prefix = memoryview(head + client.buffered)
        self.head_left = len(head)  # bytes of the prefix that are the request head, not body
        self.left = body.length - len(client.buffered)  # still to read from the client
        self.in_pipe = 0  # bytes in pipe A
        self.ready = 0  # of those, at its head, the ones that may go upstream (tee'd, when hashing)
        self.upstream_idle = upstream_idle
        self.upstream_progress = upstream_progress
        self.mark = upstream_progress()
        self.fds: list[int] = []
        self.hash_end = -1  # pipe B's write end, when hashing
        self.hashing: asyncio.Future[int] | None = None  # the hash thread's job
        try:
            self.read_end, self.write_end = self._own(*os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC))
            try:
                self.pipe_size = fcntl.fcntl(self.write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                self.pipe_size = 64 * 1024
            # Own descriptor numbers: uvloop refuses readers and writers on a descriptor its transports use.
            (self.client_fd,) = self._own(os.dup(client.fd))
            (self.upstream_fd,) = self._own(os.dup(upstream_fd))
            if digest is not None:
                self._start_hashing(digest, client.buffered)
        except BaseException:
            if digest is not None and self.hashing is None:
                pipehash.release()  # the reservation _take made: no thread took it
            self.close()
            raise
        now = self.loop.time()
        self.last_in = self.last_out = now
        self.waiter: asyncio.Future[None] | None = None
        self.failure: BaseException | None = None

    def _start_hashing(self, digest: RawHash, buffered: bytes) -> None:
        """Pipe B and its hash thread: the thread blocks reading B, the pump tees into B without blocking."""
        hash_read, self.hash_end = os.pipe2(os.O_CLOEXEC)
        self._own(self.hash_end)
        try:
            os.set_blocking(self.hash_end, False)
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.hash_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except BaseException:
            os.close(hash_read)
            raise
        self.hashing = pipehash.start(hash_read, digest, buffered)  # the thread owns hash_read from here
        self.hashing.add_done_callback(self._hashed)

    def _hashed(self, future: asyncio.Future[int]) -> None:
        if not future.cancelled():
            future.exception()  # retrieved: a pump that failed first does not read it
        self._wake()

    async def _finish_hash(self) -> None:
        """The body has left: end pipe B and wait for the thread to hash its last bytes."""
        if self.hashing is None:
            return
        self.fds.remove(self.hash_end)
        os.close(self.hash_end)
        hashed = await asyncio.shield(self.hashing)  # a cancelled wait must not look like a thread set free
        if hashed != self.body.length:
            raise RuntimeError(f"hashed {hashed} bytes of a {self.body.length}-byte body")

    def _own(self, *fds: int) -> tuple[int, ...]:
        self.fds.extend(fds)
        return fds

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()

    async def run(self, stop: Callable[[], bool], attach: Callable[[asyncio.Future[None] | None], None]) -> bool:
        self._arm()
        rounds = 0
        while True:
            moved = self._write_prefix() | self._fill() | self._tee() | self._drain()
            if not self.left and not self.in_pipe and not self.prefix:
                await self._finish_hash()
                return False
            if stop():
                return True
            if self.failure is not None:
                raise self.failure
            rounds += 1
            if moved and rounds < ROUNDS_PER_YIELD:
                continue
            rounds = 0
            await self._wait(attach, moved)

    # -- one round: each step moves what it can without blocking ---------------------------------------------

    def _write_prefix(self) -> bool:
        if not self.prefix:
            return False
        try:
            sent = os.write(self.upstream_fd, self.prefix)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise UpstreamGone(str(exc)) from exc
        self.prefix = self.prefix[sent:]
        self.last_out = self.loop.time()
        body_bytes = max(0, sent - self.head_left)
        self.head_left = max(0, self.head_left - sent)
        if body_bytes:
            self.body.on_forwarded(body_bytes)
        return sent > 0

    def _fill(self) -> bool:
        moved = self._splice_in()
        if moved and self.hashing is None:
            self.ready += moved  # nothing to tee: what is in the pipe may go upstream
        return moved > 0

    def _splice_in(self) -> int:
        """Client socket -> pipe, as much as the pipe and the body have room for: the bytes moved (0: none now)."""
        room = self.pipe_size - self.in_pipe
        if not self.left or room <= 0:
            return 0
        try:
            moved = os.splice(self.client_fd, self.write_end, min(self.left, room), flags=FLAGS)
        except BlockingIOError:
            return 0
        except OSError as exc:
            if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.ENOTCONN):
                raise ClientDisconnected() from None
            raise
        if moved == 0:
            raise ClientDisconnected()  # EOF before the declared length
        self.left -= moved
        self.in_pipe += moved
        self.last_in = self.loop.time()
        self.body.on_received(moved)
        return moved

    def _tee(self) -> bool:
        """Duplicate the head of pipe A into pipe B, once what was tee'd before has left (rule in pipehash.py)."""
        if self.hashing is None or self.ready or not self.in_pipe:
            return False
        try:
            moved = pipehash.tee(self.read_end, self.hash_end, self.in_pipe, TEE_FLAGS)
        except BlockingIOError:
            return False  # pipe B is full: the hash thread is behind
        except OSError:
            if self.hashing.done() and not self.hashing.cancelled() and self.hashing.exception() is not None:
                raise self.hashing.exception() from None  # type: ignore[misc]
            raise
        self.ready = moved
        return moved > 0

    def _drain(self) -> bool:
        if not self.ready or self.prefix:
            return False
        try:
            moved = os.splice(self.read_end, self.upstream_fd, self.ready, flags=FLAGS)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise UpstreamGone(str(exc)) from exc
        self.in_pipe -= moved
        self.ready -= moved
        self.last_out = self.loop.time()
        self.body.on_forwarded(moved)
        return moved > 0

    # -- waiting -----------------------------------------------------------------------------------------------

    async def _wait(self, attach: Callable[[asyncio.Future[None] | None], None], moved: bool) -> None:
        """Until the client has bytes, the upstream has room, pipe B has room, the upstream sends something, the
        hash thread ends, or a deadline."""
        if moved:
            await asyncio.sleep(0)
            return
        waiter = self.waiter = self.loop.create_future()
        attach(waiter)
        readable = bool(self.left) and self.in_pipe < self.pipe_size
        writable = bool(self.prefix) or self.ready > 0
        teeing = self.hashing is not None and not self.ready and self.in_pipe > 0
        if readable:
            self.loop.add_reader(self.client_fd, self._wake)
        if writable:
            self.loop.add_writer(self.upstream_fd, self._wake)
        if teeing:
            self.loop.add_writer(self.hash_end, self._wake)
        try:
            await waiter
        finally:
            self.waiter = None
            if readable:
                self.loop.remove_reader(self.client_fd)
            if writable:
                self.loop.remove_writer(self.upstream_fd)
            if teeing:
                self.loop.remove_writer(self.hash_end)

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _arm(self) -> None:
        """One timer for both idle timeouts, set for the nearer deadline; a deadline that passed with bytes moved
        since is moved on, not reported."""
        deadlines = [self.last_out + self.upstream_idle]
        if self.body.client_idle is not None:
            deadlines.append(self.last_in + self.body.client_idle)
        self.timer = self.loop.call_at(min(deadlines), self._check)

    def _check(self) -> None:
        now = self.loop.time()
        client_idle = self.body.client_idle
        waiting_for_client = bool(self.left) and self.in_pipe < self.pipe_size
        waiting_for_upstream = bool(self.prefix) or self.ready > 0  # not while the hash thread is behind
        if client_idle is not None and waiting_for_client and now - self.last_in >= client_idle:
            self.failure = ClientTimeout(f"no body bytes for {client_idle:g} s")
        elif waiting_for_upstream and now - self.last_out >= self.upstream_idle:
            mark = self.upstream_progress()
            if mark > self.mark:
                self.mark, self.last_out = mark, now
            else:
                detail = f"the upstream made no progress in {self.upstream_idle:g} s (sending the request body)"
                self.failure = UpstreamTimeout(detail)
        if not waiting_for_client:
            self.last_in = now  # the client is not the one keeping us: its clock starts when we read again
        if not waiting_for_upstream:
            self.last_out = now
        if self.failure is not None:
            self._wake()
            return
        self._arm()
