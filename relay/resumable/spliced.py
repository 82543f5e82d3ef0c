"""Zero-copy cut-through: the completing append spliced to the upstream AND into the disk spool's data file.

Theory of operation
-------------------
A plain raw body goes socket to socket through a pipe (relay/zerocopy.py). The append that completes a resumable
upload must also land in the spool (relay/resumable/appends.py Rule 2: kept if the upstream fails). Here the same
pump gets one more consumer: pipe A (filled from the client socket) is tee'd into pipe S, a thread writes S into
the upload's data file (relay/resumable/spliced_threads.py: with O_DIRECT, Rule 7), and A is
spliced to the upstream socket (with sha256, A is also tee'd into pipe B for the hash thread, relay/pipehash.py).

The seam is `CutThrough`, offered by `offer` only when the spliced path keeps every rule of the copying one:
the disk spool (a data file descriptor, `DiskWriter.splice_fd`), the relay's own server glue (`relay.take_body`,
plain TCP), the whole file in this one append (nothing spooled before it, raw framing: no preamble or epilogue),
a Content-Length of at least SPLICE_MIN, no tus checksum and no Repr-Digest (both need the bytes in Python).
`ForwardUpload.outgoing` (relay/resumable/forward.py) asks `wrap`, which turns the proxy's `SplicedBody` into
`SpooledBody`: the upstream leg calls its `splice` as for any spliced body. When the client socket cannot be
taken, nothing was read and the leg iterates the `FileBody` instead: today's copying path, unchanged.

Rules (the copying path's, relay/resumable/forward.py and live.py, kept here):
1. A byte goes upstream only once it is in pipe S (tee'd) and, when hashing, in pipe B: `ready` is the lesser
   of the two counts, each tee'd anew only once what it tee'd before has left pipe A (tee copies the pipe's head).
2. The last body byte is held back until every byte is in the file (pipe S closed, the spool thread done) and
   `on_last` has run (the upload decided complete, committed without fsync, recorded `forwarding`). So the
   upstream never holds a complete body the relay could still lose or refuse.
3. Whatever ends the pump, the spool thread is awaited before anyone reads `LiveAppend.written`: it is exactly
   the bytes the data file received (a client that breaks keeps those; HEAD reports them after the abort).
4. An upstream that fails (UpstreamGone, UpstreamTimeout) leaves the pump suspended: `rest` then moves the rest
   of the body from the client into pipe S (the bytes of A already tee'd are dropped, the others moved), and the
   append ends as on the copying path (fsync, state saved, 502/504; appends.py Rule 2).
5. Counts: every byte in from the client is counted by the forward's inspector (limits, progress, sha256 at the
   end: relay/splicewire.py) and by the append (bytes spooled, its Progress events); `stats` counts the bodies
   that took this path in this process.
6. An upload whose earlier appends are spooled (16 MiB appends, a resume) sends those bytes first, between the
   request head and this append's bytes, with sendfile(2) from the data file (no user-space copy either); the
   hash thread hashes them from the file before pipe B. No pipe byte goes upstream before the last file byte.

7. The spool thread writes pipe S with O_DIRECT (relay/spool/direct.py: read into the relay's own reused
   buffers, then to the disk by DMA, past the page cache) where the file system allows it: this append's bytes
   are read back only if its upstream fails, and the file goes once the upload is delivered. Measured
   (benchmarks/RESULTS.md run 13, 1 GiB, `--digest none`, 7 interleaved reps): time against the plain upload
   2.01x -> 1.23x (median), relay CPU 2.34 -> 1.05 s; the page-cache copy it avoids was 42 % of the relay's
   samples on a host that hands freed memory back. Elsewhere, the splice into the file.
   The thread lets pipe S gather half its size before each read: fewer wake-ups and GIL hand-overs.
8. Where the spool thread writes directly, the bytes pass through its buffers anyway, and it hashes them there:
   no pipe B, no hash thread (`_start_hashing`). Rule 1's "in pipe B" then reads "in pipe S", and Rule 2 holds
   the last byte until the spool thread, hash included, has ended.

What this path does not do, measured (benchmarks/prototypes/append_costs.py): the non-completing appends are
not spliced. Splicing socket -> pipe -> file cost the same CPU as recv_into + write (0.88 vs 0.82 CPU-s/GiB:
a splice into a file copies into the page cache all the same), and a spliced request's connection must close.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from relay import pipehash, splicewire
from relay.core.splicing import SPLICE_MIN
from relay.errors import ClientTimeout, UpstreamTimeout
from relay.pipehash import RawHash
from relay.resumable import spliced_threads
from relay.resumable.answers import SpoolUnavailable
from relay.resumable.live import LiveAppend
from relay.spool import direct
from relay.zerocopy import FLAGS, PIPE_SIZE, TEE_FLAGS, ClientSocket, SplicedBody, UpstreamGone, _Pump

__all__ = ["ENABLED", "CutThrough", "SpooledBody", "offer", "stats"]

ENABLED = splicewire.SPLICE and pipehash.tee_supported()  # tests and prototypes switch it off
stats = {"spliced": 0}  # bodies whose completing append took this path (Rule 5)
_DROP = bytearray(256 * 1024)


def offer(
    scope: Any,
    live: LiveAppend,
    *,
    spooled: int,
    length: int,
    framed: bool,
    digests: object | None,
    on_last: Callable[[], Awaitable[None]] | None,
) -> CutThrough | None:
    """A `CutThrough` for this completing append, or None when only the copying path keeps every rule."""
    take = scope.get("extensions", {}).get(splicewire.TAKE_BODY)
    fd_of = getattr(live.writer, "splice_fd", None)
    path = getattr(live.writer, "path", None)
    if not ENABLED or take is None or fd_of is None or path is None or framed or digests is not None:
        return None
    if live.checksum is not None or live.written or length - spooled < SPLICE_MIN:
        return None
    return CutThrough(lambda: take(scope), live, on_last, spooled=spooled, path=path)


class CutThrough:
    """One completing append's spliced path: the client socket's taker, the append, and the suspended pump."""

    def __init__(
        self,
        take: Callable[[], ClientSocket | None],
        live: LiveAppend,
        on_last: Callable[[], Awaitable[None]] | None,
        *,
        spooled: int = 0,
        path: os.PathLike[str] | str | None = None,
    ) -> None:
        self.take = take
        self.live = live
        self.on_last = on_last
        self.spooled = spooled  # the upload's bytes before this append: sent from the data file (sendfile)
        self.path = path
        self.pump: _SpoolPump | None = None  # suspended after an upstream failure (Rule 4)

    def wrap(self, body: SplicedBody) -> SpooledBody:
        return SpooledBody(self, body)

    def count(self, size: int) -> None:
        self.live.count_spliced(size)

    async def end(self, pump: _SpoolPump) -> None:
        """Rule 3: close the pump, wait for the spool thread, tell the append what the file holds."""
        self.pump = None
        pump.close()
        await pump.spool_done()

    def pending(self) -> bool:
        return self.pump is not None

    async def rest(self) -> None:
        """Rule 4: the rest of the body into the spool only."""
        pump = self.pump
        assert pump is not None
        try:
            await pump.spool_rest()
        finally:
            await self.end(pump)

    async def close(self) -> None:
        if self.pump is not None:
            await self.end(self.pump)


class SpooledBody(SplicedBody):
    """The proxy's spliced body, its `splice` run by a pump that also feeds the spool (the module docstring)."""

    def __init__(self, cut: CutThrough, body: SplicedBody) -> None:
        def received(size: int) -> None:
            cut.count(size)
            body.on_received(size)

        self.forward_received = body.on_received  # the forward's count alone (the spooled bytes are not this append's)
        super().__init__(
            body.fallback,
            take=cut.take,
            length=body.length,
            client_idle=body.client_idle,
            on_received=received,
            on_forwarded=body.on_forwarded,
            on_end=body.on_end,
            digest=body.digest,
        )
        self.cut = cut

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
        client, digest = self._take()
        if client is None:
            return None  # nothing was read: the leg iterates the FileBody (the copying path)
        stats["spliced"] += 1
        whole, suspend = False, False
        pump: _SpoolPump | None = None
        try:
            pump = _SpoolPump(self, client, upstream_fd, head, upstream_idle, upstream_progress, digest)
            if self.cut.spooled:
                self.forward_received(self.cut.spooled)
            if client.buffered:
                self.on_received(len(client.buffered))
            stopped = await pump.run(stop, attach)
            whole = not stopped
            return stopped
        except (UpstreamGone, UpstreamTimeout):
            suspend = pump is not None and pump.teed < pump.length  # Rule 4: the rest still goes into the spool
            raise
        finally:
            attach(None)
            if pump is not None:
                if suspend:
                    self.cut.pump = pump
                    pump.suspend()
                else:
                    await self.cut.end(pump)
            self.on_end(whole)


class _SpoolPump(_Pump):
    """relay/zerocopy.py's pump with pipe S tee'd to the spool thread and the last byte held back (Rules 1-2)."""

    def __init__(
        self,
        body: SpooledBody,
        client: ClientSocket,
        upstream_fd: int,
        head: bytes,
        upstream_idle: float,
        upstream_progress: Callable[[], int],
        digest: RawHash | None,
    ) -> None:
        self.cut = body.cut
        self.spooled = self.file_left = body.cut.spooled  # Rule 6: sent from the data file first
        self.file_fd = os.open(body.cut.path, os.O_RDONLY | os.O_CLOEXEC) if self.spooled else -1  # type: ignore[arg-type]
        self.appender: direct.DirectAppender | None = None  # Rule 7, until the spool thread takes it
        self.spool_hash: RawHash | None = None  # Rule 8: the body's hash, fed by the spool thread
        try:
            super().__init__(body, client, upstream_fd, head, upstream_idle, upstream_progress, digest)
        except BaseException:
            if self.file_fd >= 0:
                os.close(self.file_fd)
            if self.appender is not None:
                self.appender.close()
            raise
        if self.file_fd >= 0:
            self._own(self.file_fd)
        self.pending = b""  # the buffered body bytes, sent after the spooled ones
        if self.spooled:
            self.prefix, self.head_left, self.pending = memoryview(head), len(head), client.buffered
        self.file_offset = 0
        self.left -= self.spooled
        self.length = body.length - self.spooled  # this append's bytes
        self.spool_ready = 0  # bytes at the head of pipe A that are in pipe S
        self.hash_ready = 0  # ... and in pipe B (when hashing)
        self.buffered = len(client.buffered)  # body bytes that go upstream in the prefix
        self.teed = self.buffered  # body bytes handed to the spool (the buffered ones by the thread)
        self.sent = 0  # body bytes spliced upstream from pipe A
        self.released = False  # Rule 2: the last byte may go
        self.counted = False  # the append knows what the file holds (Rule 3)
        self.spool_end = -1
        self.spooling: asyncio.Future[int] | None = None
        try:
            self._start_spooling(client.buffered)
        except BaseException:
            self.close()
            raise

    def _start_spooling(self, buffered: bytes) -> None:
        read_fd, self.spool_end = os.pipe2(os.O_CLOEXEC)
        self._own(self.spool_end)
        try:
            os.set_blocking(self.spool_end, False)
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.spool_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            writer = self.cut.live.writer
            file_fd = writer.splice_fd()  # type: ignore[attr-defined]
            reserve = writer.reserve_now  # type: ignore[attr-defined]
            appender = self._direct_appender()
            hashing = None if self.spool_hash is None else (self.spool_hash, str(self.cut.path), self.spooled)
            job = partial(spliced_threads.spool_thread, read_fd, file_fd, buffered, reserve, appender, hashing)
            self.spooling = pipehash.in_thread(job, "relay-spool-splice")
            self.appender = None  # the thread's now: it finishes it
        except BaseException:
            os.close(read_fd)
            if self.appender is not None:
                self.appender.close()
            raise
        self.spooling.add_done_callback(self._spooled)

    def _direct_appender(self) -> direct.DirectAppender | None:
        """Rule 7: the appender of this append's bytes, where the file system takes O_DIRECT (opened once)."""
        if self.appender is None and spliced_threads.DIRECT and self.cut.path is not None:
            fd = self.cut.live.writer.splice_fd()  # type: ignore[attr-defined]
            self.appender = direct.open_appender(self.cut.path, fd)
        return self.appender

    def _start_hashing(self, digest: RawHash, buffered: bytes) -> None:
        """Rule 8: the spool thread hashes what it writes, where it writes directly (no pipe B, no hash thread:
        the one `_take` reserved is given back). Otherwise the parent's hash thread; with spooled bytes, it
        hashes those from the data file first (Rule 6)."""
        if self._direct_appender() is not None:
            self.spool_hash = digest
            pipehash.release()  # the reservation `_take` made: no hash thread takes it (last: nothing raises after)
            return
        if not self.spooled:
            super()._start_hashing(digest, buffered)
            return
        hash_read, self.hash_end = os.pipe2(os.O_CLOEXEC)
        self._own(self.hash_end)
        try:
            os.set_blocking(self.hash_end, False)
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.hash_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            path, spooled = str(self.cut.path), self.spooled
            job = partial(spliced_threads.hash_file_then_pipe, path, spooled, hash_read, digest, buffered)
            self.hashing = pipehash.in_thread(job, "relay-pipehash")
        except BaseException:
            os.close(hash_read)
            raise
        self.hashing.add_done_callback(self._hashed)

    def _write_prefix(self) -> bool:
        """The request head, then (Rule 6) the spooled bytes from the data file, then the buffered body bytes."""
        moved = super()._write_prefix()
        if self.prefix or not (self.file_left or self.pending):
            return moved
        if self.file_left:
            try:
                sent = os.sendfile(self.upstream_fd, self.file_fd, self.file_offset, min(self.file_left, 1 << 22))
            except BlockingIOError:
                return moved
            except OSError as exc:
                raise UpstreamGone(str(exc)) from exc
            if not sent:
                raise OSError(errno.EIO, "the spool's data file is shorter than its upload")
            self.file_offset += sent
            self.file_left -= sent
            self.last_out = self.loop.time()
            self.body.on_forwarded(sent)
            moved = True
        if not self.file_left and self.pending:
            self.prefix, self.pending = memoryview(self.pending), b""
        return moved

    def _spooled(self, future: asyncio.Future[int]) -> None:
        if not future.cancelled():
            future.exception()
        self._wake()

    def _close_spool_pipe(self) -> None:
        if self.spool_end in self.fds:
            self.fds.remove(self.spool_end)
            os.close(self.spool_end)

    async def spool_done(self) -> None:
        """Rule 3: the spool thread has ended; the append's count is the file's."""
        self._close_spool_pipe()
        if self.spooling is None or self.counted:
            return  # never started, or counted already by `_complete`
        error: OSError | None = None
        try:
            await asyncio.shield(self.spooling)
        except OSError as exc:
            error = exc
        self.cut.live.spliced_into_file(error)
        self.counted = True

    async def run(self, stop: Callable[[], bool], attach: Callable[[asyncio.Future[None] | None], None]) -> bool:
        self._arm()
        rounds = 0
        while True:
            moved = self._write_prefix() | self._fill() | self._tee() | self._drain()
            if not self.left and self.teed == self.length and not self.released:
                await self._complete()
                moved = True
            if not self.left and not self.in_pipe and not self.prefix:
                await self._finish_hash()
                return False
            if stop():
                return True
            if self.failure is not None:
                raise self.failure
            rounds += 1
            if moved and rounds < 16:
                continue
            rounds = 0
            await self._wait(attach, moved)

    async def _complete(self) -> None:
        """Rule 2: every byte is in the file; let the append be decided, then let the last byte go."""
        self._close_spool_pipe()
        assert self.spooling is not None
        try:
            await asyncio.shield(self.spooling)
        except OSError:  # a full disk: the forward is aborted, the client gets 503
            self._raise_spool_error()
            raise
        self.cut.live.spliced_into_file(None)
        self.counted = True
        if self.cut.on_last is not None:
            await self.cut.on_last()
        self.released = True

    def _fill(self) -> bool:
        return self._splice_in() > 0  # ready only once tee'd into the spool's pipe (`_tee`)

    def _tee(self) -> bool:
        moved = False
        if not self.spool_ready and self.in_pipe and self.spool_end in self.fds:
            try:
                self.spool_ready = pipehash.tee(self.read_end, self.spool_end, self.in_pipe, TEE_FLAGS)
            except BlockingIOError:
                pass  # pipe S is full: the disk is behind
            except OSError:
                self._raise_spool_error()
                raise
            self.teed += self.spool_ready
            moved = self.spool_ready > 0
        if self.hashing is not None and not self.hash_ready and self.in_pipe:
            try:
                self.hash_ready = pipehash.tee(self.read_end, self.hash_end, self.in_pipe, TEE_FLAGS)
            except BlockingIOError:
                pass
            except OSError:
                if self.hashing.done() and not self.hashing.cancelled() and self.hashing.exception() is not None:
                    raise self.hashing.exception() from None  # type: ignore[misc]
                raise
            moved = moved or self.hash_ready > 0
        self.ready = self.spool_ready if self.hashing is None else min(self.spool_ready, self.hash_ready)
        return moved

    def _raise_spool_error(self) -> None:
        """A spool thread that failed (a full disk, EIO) ends the append as on the copying path: SpoolUnavailable,
        a RelayError, so the upstream request is aborted and the client gets 503 (relay/resumable/live.py Rule 7)."""
        if self.spooling is not None and self.spooling.done() and not self.spooling.cancelled():
            error = self.spooling.exception()
            if error is not None:
                raise SpoolUnavailable.storing(error) from error

    def _drain(self) -> bool:
        count = self.ready if self.released else min(self.ready, self.length - 1 - self.sent - self.buffered)
        if count <= 0 or self.prefix or self.file_left or self.pending:
            return False
        try:
            moved = os.splice(self.read_end, self.upstream_fd, count, flags=FLAGS)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise UpstreamGone(str(exc)) from exc
        self.in_pipe -= moved
        self.ready -= moved
        self.spool_ready -= moved
        if self.hashing is not None:
            self.hash_ready -= moved
        self.sent += moved
        self.last_out = self.loop.time()
        self.body.on_forwarded(moved)
        return moved > 0

    async def _wait(self, attach: Callable[[asyncio.Future[None] | None], None], moved: bool) -> None:
        spool_full = not self.spool_ready and self.in_pipe > 0 and self.spool_end in self.fds
        sending_file = bool(self.file_left) and not self.prefix and not self.ready
        if moved or not (spool_full or sending_file):
            await super()._wait(attach, moved)
            return
        if spool_full:
            self.loop.add_writer(self.spool_end, self._wake)
        if sending_file:
            self.loop.add_writer(self.upstream_fd, self._wake)
        try:
            await super()._wait(attach, moved)
        finally:
            if spool_full:
                self.loop.remove_writer(self.spool_end)
            if sending_file:
                self.loop.remove_writer(self.upstream_fd)

    # -- after an upstream failure (Rule 4) ---------------------------------------------------------------

    def suspend(self) -> None:
        """The upstream is gone: its descriptor and the hash pipe are closed; the client's stays for `rest`."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for fd in (self.upstream_fd, self.hash_end):
            if fd in self.fds:
                self.fds.remove(fd)
                os.close(fd)
        self.hashing = None
        self.body.on_received = self.cut.count  # the forward is over: its inspector counts no more

    async def spool_rest(self) -> None:
        """Drop from pipe A what pipe S has, move the rest of A and of the body into S, under the idle timeout."""
        while self.spool_ready:
            got = os.readv(self.read_end, [memoryview(_DROP)[: min(self.spool_ready, len(_DROP))]])
            self.spool_ready -= got
            self.in_pipe -= got
        idle = self.body.client_idle
        while self.in_pipe or self.left:
            self._raise_spool_error()
            moved = self._fill() | self._move()
            if moved:
                await asyncio.sleep(0)
                continue
            await self._wait_spool_rest(idle)

    def _move(self) -> bool:
        if not self.in_pipe:
            return False
        try:
            moved = os.splice(self.read_end, self.spool_end, self.in_pipe, flags=FLAGS)
        except BlockingIOError:
            return False
        except OSError:
            self._raise_spool_error()
            raise
        self.in_pipe -= moved
        self.teed += moved
        return moved > 0

    async def _wait_spool_rest(self, idle: float | None) -> None:
        waiter = self.loop.create_future()
        self.waiter = waiter
        readable = bool(self.left) and self.in_pipe < self.pipe_size
        writable = self.in_pipe > 0
        if readable:
            self.loop.add_reader(self.client_fd, self._wake)
        if writable:
            self.loop.add_writer(self.spool_end, self._wake)
        try:
            await asyncio.wait_for(waiter, idle)
        except TimeoutError:
            if readable:
                raise ClientTimeout(f"no body bytes for {idle:g} s") from None
        finally:
            self.waiter = None
            if readable:
                self.loop.remove_reader(self.client_fd)
            if writable:
                self.loop.remove_writer(self.spool_end)
