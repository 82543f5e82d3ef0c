"""Server-Sent Events from Redis Streams: any relay serves any upload's events, with `Last-Event-ID` replay.

Theory of operation
-------------------
One `Fanout` task per relay reads the stream of every upload (`<p>events`) with XREAD BLOCK from an explicit
entry id (never `$`, so nothing added between two reads is missed) and hands each entry to the local
`Follower`s that want it; while nobody on the relay listens it reads nothing at all. A follower is one SSE
client: a bounded queue that merges a waiting progress event with a newer one of the same upload and never
drops the others (relay/bus.py's rules); a client that lets too many pile up is cut off.

`follow_upload` (one upload):
  1. the follower is registered first (and the fan-out's reading position taken, if it was idle), then the
     starting point is read from Redis; every entry newer than that point is added to the stream after the
     fan-out's position, so the fan-out delivers it to the follower: nothing falls between;
  2. without `Last-Event-ID`: a snapshot in one MULTI (the record and the id of the upload stream's last entry),
     sent as the catch-up of the contract (current counts, parts so far, the terminal event), every line
     with that last entry id; with `Last-Event-ID`: XRANGE of the upload's stream after that id (the per-upload
     stream has the same entry ids as the stream of every upload: relay/state/writer.py);
  3. then live entries newer than what was sent, skipping parts already sent and progress that would make
     `bytes` go back (the owner's local record may be fresher than Redis), until the terminal event.
`follow_all`: `Last-Event-ID` replays `<p>events` after that id (at most REPLAY_MAX entries), then live.
While Redis is gone, a follower simply waits: the fan-out goes on from its last id once Redis is back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from redis.asyncio import Redis

from relay.bus import Subscription
from relay.core.events import TERMINAL, Event, Part, Progress
from relay.state.base import FeedEntry
from relay.state.codec import decode_event, decode_record, id_key
from relay.state.link import ERRORS, Link
from relay.state.writer import Keys
from relay.uploads import UploadRecord

__all__ = ["Fanout", "Follower", "follow_all", "follow_upload"]

BLOCK_MS = 1000
READ_COUNT = 1000
REPLAY_MAX = 10_000
MAX_PENDING = 10_000
SNAPSHOT_TIMEOUT = 2.0


class Follower:
    """One SSE client's queue of (entry id, event)."""

    def __init__(self, upload_id: str | None, max_pending: int = MAX_PENDING) -> None:
        self.upload_id = upload_id
        self._max_pending = max_pending
        self._slots: deque[list[Any]] = deque()  # [entry id, event], replaced in place for progress
        self._open_progress: dict[str, list[Any]] = {}
        self._wakeup = asyncio.Event()
        self.closed = False

    def matches(self, event: Event) -> bool:
        return self.upload_id is None or self.upload_id == event.upload_id

    def put(self, entry_id: str, event: Event) -> None:
        if self.closed:
            return
        if isinstance(event, Progress):
            slot = self._open_progress.get(event.upload_id)
            if slot is not None:
                slot[:] = [entry_id, event]
                return
            slot = self._open_progress[event.upload_id] = [entry_id, event]
        else:
            self._open_progress.pop(event.upload_id, None)
            if len(self._slots) >= self._max_pending:
                self.close()
                return
            slot = [entry_id, event]
        self._slots.append(slot)
        self._wakeup.set()

    async def get(self, timeout: float | None = None) -> FeedEntry | None:
        """The next entry; None once closed, or after `timeout` seconds without one."""
        while not self._slots:
            if self.closed:
                return None
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                return None
        slot = self._slots.popleft()
        if self._open_progress.get(slot[1].upload_id) is slot:
            del self._open_progress[slot[1].upload_id]
        return slot[0], slot[1]

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()


class Fanout:
    """Reads `<p>events` for this relay's followers (see the module docstring)."""

    def __init__(self, client: Redis, keys: Keys, link: Link) -> None:
        self.client = client
        self.key = keys.stream(None)
        self.link = link
        self.followers: set[Follower] = set()
        self.last_id: str | None = None
        self.subscriptions: set[Subscription] = set()  # RedisEventBus.subscribe()'s, relay/bus.py's rules
        self._wanted = asyncio.Event()

    @property
    def listening(self) -> bool:
        return bool(self.followers or self.subscriptions)

    async def join(self, follower: Follower) -> Follower:
        """Register first, then make sure the reader has a position: taken now, before the caller reads its
        snapshot, so the reader starts at or before it."""
        self.followers.add(follower)
        if self.last_id is None:
            try:
                async with asyncio.timeout(SNAPSHOT_TIMEOUT):
                    await self.position()
            except ERRORS as exc:
                self.link.down(exc)
        self.wake()
        return follower

    def wake(self) -> None:
        self._wanted.set()

    def remove(self, follower: Follower) -> None:
        follower.close()
        self.followers.discard(follower)

    async def run(self) -> None:
        """Reads only while someone on this relay listens: an idle relay sends Redis no XREAD at all."""
        while True:
            if not self.listening:
                self.last_id = None  # the next listener takes a fresh position
                self._wanted.clear()
                await self._wanted.wait()
                continue
            await self.link.wait_up()
            try:
                await self.position()
                await self.read_once()
            except ERRORS as exc:
                self.link.down(exc)

    async def position(self) -> None:
        """Where to read from: the newest entry now, then always an explicit id (never `$`, which would
        lose what is added between two reads)."""
        if self.last_id is None:
            newest: Any = await self.client.xrevrange(self.key, count=1)
            self.last_id = _text(newest[0][0]) if newest else "0-0"

    async def read_once(self) -> None:
        assert self.last_id is not None
        reply: Any = await self.client.xread({self.key: self.last_id}, count=READ_COUNT, block=BLOCK_MS)
        for _, entries in reply or []:
            for raw_id, fields in entries:
                self.last_id = _text(raw_id)
                event = _entry_event(fields) if self.listening else None
                if event is not None:
                    self.deliver(self.last_id, event)

    def deliver(self, entry_id: str, event: Event) -> None:
        for follower in tuple(self.followers):
            if follower.matches(event):
                follower.put(entry_id, event)
                if follower.closed:
                    self.followers.discard(follower)
        for subscription in tuple(self.subscriptions):
            if subscription.matches(event):
                subscription.put(event)
                if subscription.closed:
                    self.subscriptions.discard(subscription)


async def follow_upload(
    client: Redis,
    keys: Keys,
    fanout: Fanout,
    local: Callable[[str], UploadRecord | None],
    upload_id: str,
    last_event_id: str | None,
    unknown_wait: float,
) -> AsyncIterator[FeedEntry]:
    follower = Follower(upload_id)
    try:
        await fanout.join(follower)
        if last_event_id is not None:
            replayed, record = await _replay_upload(client, keys, upload_id, last_event_id)
            sent_id, parts_sent, sent_bytes = last_event_id, 0, 0
            for entry in replayed:
                yield entry
                sent_id, event = entry
                sent_bytes = max(sent_bytes, event.bytes)
                parts_sent = event.index + 1 if isinstance(event, Part) else parts_sent
                if isinstance(event, TERMINAL):
                    return
            if record is not None and record.finished:
                return  # the client has had the terminal event already
            known = record is not None or bool(replayed)
        else:
            record, sent_id = await _snapshot(client, keys, upload_id, local(upload_id))
            catch_up = _catch_up(record)
            for event in catch_up:
                yield sent_id, event
            if record is not None and record.finished:
                return
            known, parts_sent = record is not None, len(record.parts) if record else 0
            sent_bytes = record.bytes if record else 0
        first = True
        while True:
            live = await follower.get(unknown_wait if first and not known else None)
            if live is None:
                return
            first = False
            entry_id, event = live
            if id_key(entry_id) <= id_key(sent_id):
                continue
            if (isinstance(event, Part) and event.index < parts_sent) or (
                isinstance(event, Progress) and event.bytes < sent_bytes
            ):
                continue
            if event.bytes < sent_bytes:
                event = dataclasses.replace(event, bytes=sent_bytes)
            sent_bytes = event.bytes
            yield entry_id, event
            if isinstance(event, TERMINAL):
                return
    finally:
        fanout.remove(follower)


async def follow_all(client: Redis, keys: Keys, fanout: Fanout, last_event_id: str | None) -> AsyncIterator[FeedEntry]:
    follower = Follower(None)
    sent_id = last_event_id or "0-0"
    try:
        await fanout.join(follower)
        if last_event_id is not None:
            try:
                async with asyncio.timeout(SNAPSHOT_TIMEOUT):
                    entries: Any = await client.xrange(keys.stream(None), min=f"({last_event_id}", count=REPLAY_MAX)
            except ERRORS:
                entries = []
            for entry_id, event in _decode_entries(entries):
                sent_id = entry_id
                yield entry_id, event
        while (entry := await follower.get()) is not None:
            if id_key(entry[0]) > id_key(sent_id):
                yield entry
    finally:
        fanout.remove(follower)


async def _replay_upload(
    client: Redis, keys: Keys, upload_id: str, last_event_id: str
) -> tuple[list[FeedEntry], UploadRecord | None]:
    try:
        async with asyncio.timeout(SNAPSHOT_TIMEOUT), client.pipeline(transaction=True) as pipe:
            pipe.xrange(keys.stream(upload_id), min=f"({last_event_id}")
            pipe.hget(keys.upload(upload_id), "json")
            entries, text = await pipe.execute()
    except ERRORS:
        return [], None
    return _decode_entries(entries), decode_record(text)


async def _snapshot(
    client: Redis, keys: Keys, upload_id: str, local: UploadRecord | None
) -> tuple[UploadRecord | None, str]:
    """The record and the upload stream's last entry id, read together (one MULTI); this relay's own record
    when it is the fresher one (Redis lags it by up to a flush)."""
    try:
        async with asyncio.timeout(SNAPSHOT_TIMEOUT), client.pipeline(transaction=True) as pipe:
            pipe.hget(keys.upload(upload_id), "json")
            pipe.xrevrange(keys.stream(upload_id), count=1)
            text, newest = await pipe.execute()
    except ERRORS:
        return local, "0-0"
    stored = decode_record(text)
    last_id = _text(newest[0][0]) if newest else "0-0"
    return fresher(local, stored), last_id


def fresher(local: UploadRecord | None, stored: UploadRecord | None) -> UploadRecord | None:
    """This relay's record of an upload it runs is at least as new as Redis's, unless Redis has it finished
    (another relay ended it `relay_lost`) or has a newer run of the same id."""
    if local is None or stored is None:
        return local or stored
    if stored.started_at > local.started_at or (stored.finished and not local.finished):
        return stored
    return local


def _catch_up(record: UploadRecord | None) -> list[Event]:
    if record is None:
        return []
    now = record.terminal.ts if record.terminal else time.time()
    parts = [dataclasses.replace(part, bytes=record.bytes) for part in record.parts]
    events: list[Event] = [Progress(record.id, record.bytes, record.total, now), *parts]
    if record.terminal is not None:
        events.append(record.terminal)
    return events


def _decode_entries(entries: list[Any]) -> list[FeedEntry]:
    out: list[FeedEntry] = []
    for raw_id, fields in entries:
        event = _entry_event(fields)
        if event is not None:
            out.append((_text(raw_id), event))
    return out


def _entry_event(fields: dict[bytes, bytes]) -> Event | None:
    name, data = fields.get(b"e"), fields.get(b"d")
    if name is None or data is None:
        return None
    return decode_event(name.decode(), data)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
