"""The resumable uploads of this relay: their state, one writer each, recovery after a restart, and expiry.

Theory of operation
-------------------
The spool holds each upload's bytes and its info document (`ResumableUpload.to_json()`); this store keeps
every known upload in memory as well, and the memory is what requests decide on. A state move is a pure
function of relay.core.resumable applied synchronously (no await between reading the state and recording
the next one), so two requests of one upload never decide on the same old state.

Rules:
1. Persistence writes the *current* state, one save per upload at a time (`save` takes the upload's lock,
   then writes what memory holds then): saves that overlap can never leave an older state on disk.
2. One writer. An append registers an `OpenAppend`; a HEAD, PATCH or DELETE of the same upload first calls
   `settle`, which ends that append (its task is cancelled, it keeps what it received and records the
   break) and waits until it has recorded its end. The task is cancelled only while it waits for body
   bytes (`cancellable`): while it opens its spool writer or records its end it is let finish (a cancel
   there would lose the fsync or the record), and an append superseded before it could be cancelled
   ends as soon as it looks (`allow_cancel` says False). Once every byte is in and the upload is
   `forwarding`, the append lets go (`release`): a HEAD does not wait for the upstream.
3. Start-up reads every info document back (`recover`): uploads whose append was cut by a crash keep the
   bytes the spool holds (or lose them when that append carried a checksum), a spool that lost bytes it had
   acknowledged (or the whole data file) fails the upload; delivered and failed uploads come back as
   records only (HEAD answers until they expire, then the sweeper forgets them). The sweeper then runs
   every `SWEEP_SECONDS`, and once at start.
4. A delivered upload's bytes are deleted right after the upstream answered; its info document stays
   until it expires, so HEAD and a repeated completion still answer.
5. One forward at a time per upload (`forward_lock`): a completing request sent again while the first
   one's forward is still running waits for it, then answers from what became of it (never a second
   delivery). DELETE and the sweeper wait for (or skip) a forward under way.
6. tus concatenation (relay/core/concat.py): a final upload has no bytes of its own. Its recovery checks its
   partial uploads' durable bytes instead (all there: it goes on `forwarding`, delivered again by itself;
   any missing: `data_lost`). When it ends (delivered, terminated, expired: `save` sees it), its partial
   uploads are deleted, bytes and records, in the background, as a delivered upload's bytes are (Rule 4).

Several relays (`--redis`, relay/resumable/shared.py). Redis holds the authoritative state document and memory is
only this request's copy: `begin` (one await at the head of every HEAD, PATCH and DELETE) ends an append open on
any relay (Rule 2 across relays: the holder is asked to let go, or its lease runs out if it died), recovers an
upload whose holder died (the spool's durable bytes are kept, as after a restart: Rule 3), loads the document,
and for a PATCH takes the upload's lease. Every `save` commits through the fencing check (shared.py Rule 2); the
spool's info document is still written after it, so a relay without Redis could recover the spool. Rule 5 is a
lease in `forward` mode (`ForwardLock`); the sweeper takes a lease per upload and skips one that is held. No
start-up recovery of the whole spool: other relays may be appending to it; a dead holder's upload is recovered by
whoever takes it next. An upload Redis lost (it restarted empty) whose client never comes back is found by the
sweep's occasional listing of the spool and adopted (shared.py Rule 6), so that it expires or goes on as any other,
after a restart of the relay too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from relay.core import resumable as core
from relay.core.concat import FINAL
from relay.core.events import ErrorInfo
from relay.core.resumable import ResumableUpload
from relay.errors import TooManyUploads
from relay.resumable.holding import ForwardLock, OpenAppend, SharedHolding
from relay.resumable.unavailable import StateUnavailable
from relay.spool.base import Spool, SpoolError

if TYPE_CHECKING:
    from relay.resumable.shared import RedisUploads  # imported only with --redis (relay/resumable/unavailable.py)

__all__ = ["SWEEP_SECONDS", "ForwardLock", "OpenAppend", "ResumableStore"]

log = logging.getLogger("relay.resumable")
SWEEP_SECONDS = 5.0


class ResumableStore(SharedHolding):
    """Every resumable upload this relay knows, over a spool (and, with `shared`, Redis: see the docstring)."""

    def __init__(
        self, spool: Spool, *, on_change: Callable[[ResumableUpload], None], shared: RedisUploads | None = None
    ) -> None:
        self.spool = spool
        self.shared = shared
        self._on_change = on_change
        self._uploads: dict[str, ResumableUpload] = {}
        self._open: dict[str, OpenAppend] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._forwards: dict[str, asyncio.Lock] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._orphans: tuple[float, list[str]] | None = None  # with Redis: ids it lost, waiting (SharedHolding)
        # Called on every sweep with the uploads and the time (relay/resumable/redeliver.py retries forwards).
        self.on_sweep: Callable[[list[ResumableUpload], float], None] | None = None

    # -- start and stop -------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.shared is not None:  # no recovery of the whole spool: other relays may be appending to it (the
            await self.shared.start(self._supersede_here)  # sweep lists it for uploads Redis lost: shared.py Rule 6)
        else:
            for upload_id in await self.spool.list():
                await self._recover(upload_id)
        with contextlib.suppress(StateUnavailable):
            await self.sweep()
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def _recover(self, upload_id: str) -> None:
        try:
            info = await self.spool.load_info(upload_id)
            if info is None:
                return
            upload = await self._reconcile(ResumableUpload.from_json(info))
        except (ValueError, KeyError, TypeError, SpoolError, OSError) as exc:
            log.warning("resumable upload %s could not be recovered: %s", upload_id, exc)
            return
        self._uploads[upload_id] = upload
        await self.save(upload)

    async def _reconcile(self, upload: ResumableUpload) -> ResumableUpload:
        """The upload as the spool's durable bytes leave it after its writer died (Rule 3)."""
        upload_id = upload.id
        if upload.concat == FINAL and upload.state in (core.RECEIVING, core.FORWARDING):
            return await self._reconcile_final(upload)
        if upload.state in (core.COMPLETED, core.FAILED):  # its data went (or goes now): only the record
            await self.spool.delete_data(upload_id)  # bytes may have outlived a crash right after the answer
            return upload
        try:
            durable = await self.spool.offset(upload_id)
        except SpoolError:  # the data file is gone: nothing to go on with
            lost = ErrorInfo("data_lost", "the spool has no data for this upload")
            return core.apply(upload, core.LOSE, now=time.time(), error=lost)
        upload, keep = core.recover(upload, durable, now=time.time())
        if upload.state == core.FAILED:
            await self.spool.delete_data(upload_id)
        else:
            await self.spool.truncate(upload_id, keep)
        return upload

    async def _reconcile_final(self, upload: ResumableUpload) -> ResumableUpload:
        """Rule 6: a final upload found unfinished after its relay died goes on if its partial uploads are whole."""
        now = time.time()
        for part_id, size in zip(upload.parts, upload.part_lengths, strict=True):
            try:
                durable = await self.spool.offset(part_id)
            except SpoolError:
                durable = -1
            if durable < size:
                lost = ErrorInfo("data_lost", f"partial upload {part_id} holds {max(durable, 0)} of {size} bytes")
                return core.apply(upload, core.LOSE, now=now, error=lost)
        if upload.state == core.RECEIVING:  # it died between the final's creation and its `forwarding`
            upload = core.apply(upload, core.COMPLETE, now=now)
        if upload.error is None:  # the relay's redelivery (redeliver.py) takes uploads that say why they wait
            note = ErrorInfo("relay_restarted", "the relay restarted before the upstream answered; it delivers again")
            upload = replace(upload, error=note)
        return upload

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for task in list(self._background):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        if self.shared is not None:
            await self.shared.stop()
        await self.spool.close()

    # -- state ----------------------------------------------------------------------------------------------

    def get(self, upload_id: str) -> ResumableUpload | None:
        return self._uploads.get(upload_id)

    async def incomplete(self) -> int:
        """Incomplete uploads, on this relay or (with Redis) across every relay."""
        if self.shared is not None:
            return await self.shared.incomplete()
        return sum(1 for upload in self._uploads.values() if upload.state in core.INCOMPLETE)

    def record(self, upload: ResumableUpload) -> None:
        """The upload's next state, in memory at once (decisions read it), and told to the registry."""
        self._uploads[upload.id] = upload
        self._on_change(upload)

    async def save(self, upload: ResumableUpload) -> None:
        """Record `upload` and write the upload's current state (Rule 1): to Redis first when shared, fenced."""
        before = self._uploads.get(upload.id)
        self.record(upload)
        if self.shared is not None and upload != before:
            await self._commit(upload, before)
        async with self._lock(upload.id):
            current = self._uploads.get(upload.id)
            if current is not None:
                await self.spool.save_info(upload.id, current.to_json().encode())
        if upload.concat == FINAL and upload.state in (core.COMPLETED, core.FAILED):  # Rule 6
            for part_id in upload.parts:
                self._background_task(self._drop(part_id))

    async def _drop(self, upload_id: str) -> None:
        """A partial upload whose final upload ended: its bytes and record go (Rule 6)."""
        try:
            self.forget(upload_id)
            await self.spool.delete(upload_id)
            if self.shared is not None:
                await self.shared.forget(upload_id)
        except (SpoolError, OSError, StateUnavailable) as exc:
            log.warning("could not delete partial upload %s: %s", upload_id, exc)

    async def mark(self, upload: ResumableUpload) -> None:
        """Record `upload`; with Redis, commit it too (other relays must see it) but write no info document."""
        before = self._uploads.get(upload.id)
        self.record(upload)
        if self.shared is not None:
            await self._commit(upload, before)

    async def _commit(self, upload: ResumableUpload, before: ResumableUpload | None) -> None:
        assert self.shared is not None
        if not await self.shared.commit(upload, self.shared.held.get(upload.id), before=before):
            raise StateUnavailable(f"upload {upload.id} was taken over by another request; nothing was recorded")

    async def create(self, upload: ResumableUpload, *, max_incomplete: int | None = None) -> None:
        """A new upload, in memory at once (the id is taken) and in the spool; FileExistsError if taken,
        TooManyUploads over `max_incomplete` (checked here only with Redis: across relays, atomically)."""
        if upload.id in self._uploads:
            raise FileExistsError(f"upload {upload.id} exists")
        if self.shared is not None:
            created = await self.shared.create(upload, max_incomplete)
            if created == -1:
                raise FileExistsError(f"upload {upload.id} exists")
            if created == -2:
                raise TooManyUploads(f"{max_incomplete} resumable uploads are incomplete; try again later")
        self._uploads[upload.id] = upload
        try:
            await self.spool.create(upload.id, upload.to_json().encode())
        except BaseException:
            if self._uploads.get(upload.id) is upload:
                del self._uploads[upload.id]
            if self.shared is not None:
                with contextlib.suppress(StateUnavailable):
                    await self.shared.forget(upload.id)
            raise
        self._on_change(upload)

    def forget(self, upload_id: str) -> None:
        self._uploads.pop(upload_id, None)
        self._locks.pop(upload_id, None)
        lock = self._forwards.get(upload_id)
        if lock is not None and not lock.locked():
            del self._forwards[upload_id]

    def forward_lock(self, upload_id: str, lease: int | None = None) -> ForwardLock:
        """Held while the upload's file goes upstream (Rule 5); `lease`: the request's own, taken over."""
        return ForwardLock(self, upload_id, lease)

    def _lock(self, upload_id: str) -> asyncio.Lock:
        lock = self._locks.get(upload_id)
        if lock is None:
            lock = self._locks[upload_id] = asyncio.Lock()
        return lock

    # -- one writer (Rule 2) ----------------------------------------------------------------------------------

    def open_append(self, upload_id: str, writer: str) -> OpenAppend:
        handle = OpenAppend(writer)
        self._open[upload_id] = handle
        return handle

    def close_append(self, upload_id: str, handle: OpenAppend) -> None:
        if self._open.get(upload_id) is handle:
            del self._open[upload_id]
        handle.done.set()

    def hold(self, upload_id: str, writer: str | None) -> None:
        """The append of `writer` records its end now: let it finish, cancel nothing (Rule 2)."""
        handle = self._open.get(upload_id)
        if handle is not None and handle.writer == writer:
            handle.forbid_cancel()

    def release(self, upload_id: str) -> None:
        """The open append has every byte in and recorded (Rule 2): later requests need not wait for it."""
        handle = self._open.get(upload_id)
        if handle is not None:
            handle.forbid_cancel()
            self.close_append(upload_id, handle)

    async def settle(self, upload_id: str) -> None:
        """End the upload's open append on this relay, if any, and wait until it has recorded its end."""
        while (handle := self._open.get(upload_id)) is not None:
            handle.supersede()
            await handle.done.wait()

    # -- deleting and expiry -----------------------------------------------------------------------------------

    def delete_data_soon(self, upload_id: str) -> None:
        """A delivered upload's bytes go (Rule 4); in the background, so the answer does not wait for it."""
        self._background_task(self._delete_data(upload_id))

    def _background_task(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _delete_data(self, upload_id: str) -> None:
        try:
            await self.spool.delete_data(upload_id)
        except (SpoolError, OSError) as exc:
            log.warning("could not delete the data of delivered upload %s: %s", upload_id, exc)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await self.sweep()
            except StateUnavailable as exc:  # Redis is away: said once by the shared state's link; next time
                log.debug("the resumable uploads sweep waits for redis: %s", exc)
            except (SpoolError, OSError) as exc:
                log.warning("the resumable uploads sweep failed: %s", exc)

    async def sweep(self) -> None:
        """Expire idle incomplete uploads (their data deleted), forget finished ones past their time."""
        if self.shared is not None:
            await self._sweep_shared(self.shared)
            return
        now = time.time()
        if self.on_sweep is not None:
            self.on_sweep(list(self._uploads.values()), now)
        for upload in list(self._uploads.values()):
            forwarding = self._forwards.get(upload.id)
            if forwarding is not None and forwarding.locked():
                continue  # its file is going upstream right now (Rule 5): the upstream's answer decides
            await self._sweep_one(upload, now)

    async def _sweep_one(self, upload: ResumableUpload, now: float) -> None:
        verdict = core.sweep(upload, now)
        if verdict == "expire":
            expired = core.apply(upload, core.EXPIRE, now=now)
            self.record(expired)
            await self.spool.delete_data(upload.id)
            await self.save(expired)
        elif verdict == "forget":
            await self.drop(upload.id)

    async def drop(self, upload_id: str) -> None:
        """Forget a finished upload everywhere (its info document too): later requests about it get 404."""
        self.forget(upload_id)
        await self.spool.delete(upload_id)
        if self.shared is not None:
            await self.shared.forget(upload_id)
