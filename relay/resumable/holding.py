"""Holding an upload: one append at a time (`OpenAppend`), one forward at a time (`ForwardLock`), and with Redis
the same across relays (`SharedHolding`, mixed into relay/resumable/store.py's ResumableStore).

Theory of operation
-------------------
On one relay an open append is an `OpenAppend` (its task, cancelled by a supersede while it waits for body bytes)
and a forward holds an asyncio lock (the store's Rules 2 and 5). With `--redis`, the upload's lease in Redis
(relay/resumable/shared.py) is what says who holds it, on any relay:
- `begin`, on the head of a HEAD, PATCH or DELETE: while another relay's append holds the lease it asks that
  relay to end it (PUBLISH, repeated every ASK_AGAIN) and polls until the lease is free (bounded: HOLD_WAIT, then
  503). A lease held by this relay is ended as on one relay (`settle`). A lease in `forward` mode is no open
  append: HEAD answers from the document, a completion waits in ForwardLock. A PATCH then takes the lease.
- A holder that died never let go: the next taker finds the upload orphaned and recovers it from the spool's
  durable bytes (`_take_over`, as after a restart; an upload that was being forwarded is delivered again).
- `ForwardLock` takes the lease in `forward` mode, or switches the completing request's own lease to it.
- The sweep takes a lease per upload in `sweep` mode and skips the ones that are held.
- An id Redis does not know (it restarted empty) is looked up in the spool and adopted (shared.py Rule 5).
- An upload Redis lost that nobody asks about any more would sit in the spool for ever (the sweep sees only what
  Redis lists): `_find_orphans`, at the end of a sweep, lists the spool at most once per ORPHAN_SCAN_EVERY across
  relays, and at once after Redis restarted empty (shared.py Rule 6), and adopts the ids Redis still does not
  know ORPHAN_GRACE later; the sweep then expires them (or a client goes on with them) as any other upload.
  The grace is for safety, not for a known race: creation writes Redis before the spool, and deletion the spool
  before Redis, so an id listed but unknown is lost already; waiting two leases' time also lets an append still
  running on a relay that lost its lease end first.
Waiting is a poll of one small script every POLL seconds, only on a request's head, never per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import TYPE_CHECKING

from relay.core import resumable as core
from relay.core.events import ErrorInfo
from relay.core.resumable import ResumableUpload
from relay.resumable.unavailable import Seen, StateUnavailable
from relay.spool.base import Spool, SpoolError

if TYPE_CHECKING:
    from relay.resumable.shared import RedisUploads
    from relay.resumable.store import ResumableStore

__all__ = ["ForwardLock", "OpenAppend", "SharedHolding"]

log = logging.getLogger("relay.resumable")
HOLD_WAIT = 12.0  # how long a request waits for another relay's append to let go (two leases' time)
FORWARD_WAIT = 600.0  # how long a completion or DELETE waits for another relay's forward
POLL = 0.05
ASK_AGAIN = 1.0  # pub/sub may lose a supersede: asked again this often while waiting (shared.py Rule 3)
# Listing the spool for uploads Redis lost (shared.py Rule 6). On S3 a listing is one request per 1000 objects, so
# it runs once per ORPHAN_SCAN_EVERY across all relays (60 sweeps), and at once when Redis comes back empty.
ORPHAN_SCAN_EVERY = 300.0
ORPHAN_GRACE = 12.0  # an id still unknown to Redis this long after the listing is adopted (two leases' time)
ORPHAN_CLAIM = 30.0  # a listing claimed by a relay that then died is done again by another after this long


@dataclass(eq=False)
class OpenAppend:
    """The request that holds an upload while it appends: how to end it, and when it has ended."""

    writer: str
    task: asyncio.Task[object] | None = field(default_factory=asyncio.current_task)
    superseded: bool = False
    cancellable: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def supersede(self) -> None:
        """End this append from another request (Rule 2): cancel its task once, if it may be cancelled now."""
        if self.superseded:
            return
        self.superseded = True
        if self.cancellable and self.task is not None and not self.task.done():
            self.task.cancel()

    def allow_cancel(self) -> bool:
        """From now on a supersede cancels the task; False when it was superseded already."""
        self.cancellable = True
        return not self.superseded

    def forbid_cancel(self) -> None:
        self.cancellable = False

    def claim(self) -> bool:
        """Called on CancelledError: True when the cancel was a supersede alone (now undone), as IdleWatch.claim."""
        if not self.superseded or self.task is None:
            return False
        return self.task.uncancel() == 0


class ForwardLock:
    """Rule 5: this relay's lock on the upload's forward and, with Redis, its lease in `forward` mode."""

    def __init__(self, store: ResumableStore, upload_id: str, lease: int | None) -> None:
        self._store = store
        self._upload_id = upload_id
        self._lease = lease  # the lease the request already holds (an append that completed the upload)
        self._lock = store._forwards.setdefault(upload_id, asyncio.Lock())
        self._token: int | None = None
        self.held = False

    @property
    def _borrowed(self) -> bool:
        """The lease is the request's own (switched to `forward`): the request gives it back, not this lock."""
        return self._token is not None and self._token == self._lease

    def locked(self) -> bool:
        return self._lock.locked()

    async def acquire(self) -> None:
        await self._lock.acquire()
        try:
            self._token = await self._store._forward_lease(self._upload_id, self._lease)
        except BaseException:
            self._lock.release()
            raise
        self.held = True

    async def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            if self._borrowed and self._store.shared is not None and self._token is not None:
                with contextlib.suppress(StateUnavailable):  # the request goes on under it, appending
                    await self._store.shared.switch(self._upload_id, self._token, "append")
            elif self._token is not None:
                await self._store.let_go(self._upload_id, self._token)
        finally:
            self._lock.release()

    async def __aenter__(self) -> ForwardLock:
        await self.acquire()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release()


class SharedHolding:
    """The store's holding across relays (see the module docstring); ResumableStore provides the rest."""

    shared: RedisUploads | None
    spool: Spool
    on_sweep: Callable[[list[ResumableUpload], float], None] | None
    _uploads: dict[str, ResumableUpload]
    _open: dict[str, OpenAppend]
    _forwards: dict[str, asyncio.Lock]
    _orphans: tuple[float, list[str]] | None  # the ids the last listing found unknown to Redis, and when

    async def settle(self, upload_id: str) -> None:
        raise NotImplementedError

    async def save(self, upload: ResumableUpload) -> None:
        raise NotImplementedError

    async def _reconcile(self, upload: ResumableUpload) -> ResumableUpload:
        raise NotImplementedError

    async def _sweep_one(self, upload: ResumableUpload, now: float) -> None:
        raise NotImplementedError

    def lost(self, upload_id: str) -> None:
        """This relay's lease on the upload ran out (shared.py): its append ends; its commit will be refused."""
        self._supersede_here(upload_id)

    def _supersede_here(self, upload_id: str) -> None:
        """Another relay asks this one to end its append of `upload_id` (shared.py Rule 3), or its lease was lost."""
        handle = self._open.get(upload_id)
        if handle is not None:
            handle.supersede()

    async def begin(self, upload_id: str, *, take: bool) -> int | None:
        """The head of a HEAD, PATCH or DELETE: no append of the upload open anywhere any more (Rule 2), its
        state loaded; with `take` (a PATCH, with Redis) the upload's lease, whose token is returned. None when
        no lease was taken: without Redis, for an unknown upload, or while another relay forwards it."""
        shared = self.shared
        if shared is None:
            await self.settle(upload_id)
            return None
        deadline, asked, mode = time.monotonic() + HOLD_WAIT, 0.0, "append" if take else None
        adopted = False
        while True:
            seen = await shared.take(upload_id, mode)
            if seen.doc is None and not adopted:  # Redis lost it (restarted empty)? The spool may know it.
                adopted = True
                if await self._adopt(upload_id):
                    continue
            self._loaded(upload_id, seen)
            if seen.token is not None:
                await self._recover_taken(upload_id, seen)
                if take:
                    return seen.token
                await self._give_back(upload_id, seen.token)  # only to recover: the document stays loaded
                return None
            if seen.doc is None or (seen.holder is None and not _orphaned(seen)):
                return None
            if seen.holder is None:  # a dead holder's lease ran out: take it to recover the upload, then go on
                mode = "append"
                continue
            if seen.mode == "forward" or (seen.mode == "sweep" and not take):
                return None  # no append is open: answer from the document (a completion waits in ForwardLock)
            if seen.holder == shared.relay_id:
                await self.settle(upload_id)
            elif seen.mode == "append" and time.monotonic() >= asked:
                await shared.supersede(seen.holder, upload_id)
                asked = time.monotonic() + ASK_AGAIN
            if time.monotonic() > deadline:
                raise StateUnavailable(f"upload {upload_id} is held by another relay; try again shortly")
            await asyncio.sleep(POLL)

    async def _adopt(self, upload_id: str) -> bool:
        """shared.py Rule 5: the upload's info document from the spool into Redis; False if the spool has none."""
        assert self.shared is not None
        try:
            info = await self.spool.load_info(upload_id)
            upload = ResumableUpload.from_json(info) if info is not None else None
        except (SpoolError, OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("resumable upload %s could not be read back from the spool: %s", upload_id, exc)
            return False
        if upload is None or upload.id != upload_id:
            return False
        log.warning("resumable upload %s was not in redis; taken back from the spool", upload_id)
        await self.shared.adopt(upload)
        return True

    def _loaded(self, upload_id: str, seen: Seen) -> None:
        upload = seen.upload()
        if upload is None:
            self._uploads.pop(upload_id, None)
        elif upload_id not in self._open:  # an append running here keeps its own copy until it ends
            self._uploads[upload_id] = upload

    async def _recover_taken(self, upload_id: str, seen: Seen) -> None:
        """A lease just taken: recover the upload if its last holder died; on any failure the lease goes back
        (else this relay would renew it for ever, and the upload would stay held)."""
        if not _orphaned(seen):
            return
        try:
            await self._take_over(upload_id, seen)
        except BaseException:
            if seen.token is not None:
                await self._give_back(upload_id, seen.token)
            raise

    async def _take_over(self, upload_id: str, seen: Seen) -> None:
        """The lease's last holder died (shared.py): its upload as the spool's durable bytes leave it."""
        upload = seen.upload()
        if upload is None:
            return
        try:
            recovered = await self._reconcile(upload)
        except (SpoolError, OSError) as exc:
            raise StateUnavailable(f"the spool could not recover upload {upload_id}: {exc}") from exc
        if recovered.state == core.FORWARDING and recovered.error is None:  # it died forwarding: deliver again
            note = ErrorInfo("relay_lost", "the relay forwarding this upload stopped; it is delivered again")
            recovered = replace(recovered, error=note)
        if recovered != upload:
            log.warning("resumable upload %s taken over from a relay that stopped, at %d", upload_id, recovered.offset)
            await self.save(recovered)

    async def let_go(self, upload_id: str, token: int | None) -> None:
        """Give back the lease `token` (if this relay still holds it); Redis trouble: it runs out by itself."""
        if self.shared is None or token is None:
            return
        await self._give_back(upload_id, token)
        if upload_id not in self._open and not self._forwards.get(upload_id, asyncio.Lock()).locked():
            self._uploads.pop(upload_id, None)  # the document in Redis is the truth: no stale copy kept

    async def _give_back(self, upload_id: str, token: int) -> None:
        if self.shared is not None and self.shared.held.get(upload_id) == token:
            with contextlib.suppress(StateUnavailable):
                await self.shared.release(upload_id, token)

    async def _forward_lease(self, upload_id: str, lease: int | None) -> int | None:
        """Rule 5 across relays: the request's own lease goes on in `forward` mode, or one is taken (waiting)."""
        shared = self.shared
        if shared is None:
            return None
        if lease is not None and shared.held.get(upload_id) == lease:
            if await shared.switch(upload_id, lease, "forward"):
                return lease
        deadline = time.monotonic() + FORWARD_WAIT
        while True:
            seen = await shared.take(upload_id, "forward")
            self._loaded(upload_id, seen)
            if seen.token is not None:
                await self._recover_taken(upload_id, seen)
                return seen.token
            if seen.doc is None:
                return None
            if time.monotonic() > deadline:
                raise StateUnavailable(f"upload {upload_id} is being forwarded by another relay")
            await asyncio.sleep(POLL * 4)

    async def _sweep_shared(self, shared: RedisUploads) -> None:
        """Every relay sweeps; a lease per upload (`sweep` mode) keeps two from sweeping one upload at once,
        and an upload held by anyone (an append, a forward) is skipped: it is not idle."""
        now = time.time()
        waiting: list[ResumableUpload] = []
        for upload_id in await shared.due(now):
            seen = await shared.take(upload_id, "sweep")
            if seen.token is None:
                continue
            try:
                self._loaded(upload_id, seen)
                if _orphaned(seen):
                    await self._take_over(upload_id, seen)
                upload = self._uploads.get(upload_id)
                if upload is not None:
                    await self._sweep_one(upload, now)
                    current = self._uploads.get(upload_id)
                    if current is not None and current.state == core.FORWARDING:
                        waiting.append(current)
            except (SpoolError, OSError) as exc:
                log.warning("the sweep of resumable upload %s failed: %s", upload_id, exc)
            finally:
                await self.let_go(upload_id, seen.token)
        if self.on_sweep is not None:
            self.on_sweep(waiting, now)
        try:
            await self._find_orphans(shared)
        except (SpoolError, OSError) as exc:  # the listing failed: another relay (or this one) tries again later
            log.warning("listing the spool for resumable uploads redis lost failed: %s", exc)

    async def _find_orphans(self, shared: RedisUploads) -> None:
        """shared.py Rule 6: list the spool if no relay did lately; adopt what Redis still lacks a grace later."""
        if self._orphans is None:
            if not await shared.claim_scan(ORPHAN_CLAIM):
                return
            found = await shared.unknown(await self.spool.list())
            if found:
                log.warning(
                    "%d resumable upload(s) in the spool are not in redis; adopted in %.0f s", len(found), ORPHAN_GRACE
                )
                self._orphans = (time.monotonic(), found)
                return
        else:
            listed_at, found = self._orphans
            if time.monotonic() - listed_at < ORPHAN_GRACE:
                return
            self._orphans = None
            for upload_id in await shared.unknown(found):  # those a request adopted meanwhile are known now
                await self._adopt(upload_id)
        await shared.scanned(ORPHAN_SCAN_EVERY)


def _orphaned(seen: Seen) -> bool:
    """An upload whose last holder died: its lease never let go, or `appending` with no lease (shared.py)."""
    if seen.orphan:
        return True
    upload = seen.upload()
    return seen.holder is None and upload is not None and upload.state == core.APPENDING
