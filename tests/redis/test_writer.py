"""The write queue (relay/state/writer.py) without Redis: what the data path hands it, and what a flush takes.

Progress of one upload is merged until something else of that upload is queued; part/completed/failed are
never merged or dropped; a batch that could not be written gives its records and non-progress events back,
and each record or event is counted once as not written, however many times it is tried.
"""

from __future__ import annotations

from relay.core.events import Completed, Event, Part, Progress, Started
from relay.state.codec import record_gen
from relay.state.writer import Batch, Keys, WriteQueue, flush_args, record_kind
from relay.uploads import UploadRecord


def progress(upload_id: str, size: int) -> Progress:
    return Progress(upload_id, size, 100, 1000.0 + size)


def part(upload_id: str, index: int) -> Part:
    return Part(upload_id, 10 * index, 100, 1001.0, index, "f", "a.bin", None, 10, None)


def names(events: list[Event]) -> list[tuple[str, str, int]]:
    return [(event.upload_id, event.name, event.bytes) for event in events]


def test_progress_merges_but_never_jumps_over_a_later_event() -> None:
    queue = WriteQueue("r1", lambda n: None)
    queue.event(Started("a", 0, 100, 1000.0))
    queue.event(progress("a", 10))
    queue.event(progress("b", 5))
    queue.event(progress("a", 20))  # merged into a's waiting progress
    queue.event(part("a", 0))
    queue.event(progress("a", 30))  # after the part: a new slot, not merged over the part
    queue.event(progress("a", 40))
    batch = queue.take()
    assert names(batch.events) == [
        ("a", "started", 0),
        ("a", "progress", 20),
        ("b", "progress", 5),
        ("a", "part", 0),
        ("a", "progress", 40),
    ]
    assert names(queue.take().events) == []


def test_a_failed_batch_keeps_what_matters_and_counts_once() -> None:
    dropped: list[int] = []
    queue = WriteQueue("r1", dropped.append)
    record = UploadRecord(id="a", route="/upload/", total=100, started_at=1000.0)
    queue.record(record)
    queue.event(Started("a", 0, 100, 1000.0))
    queue.event(progress("a", 10))
    queue.release("relay:cap:uploads", "r1:0")
    batch = queue.take()
    assert batch.size == 3 and batch.carried == 0
    queue.give_back(batch)  # Redis was down
    queue.event(Completed("a", 100, 100, 1002.0, 200))
    again = queue.take()
    assert names(again.events) == [("a", "started", 0), ("a", "completed", 100)]  # the progress went
    assert [r.id for r, _ in again.records] == ["a"] and again.releases == [("relay:cap:uploads", "r1:0")]
    assert again.carried == 2  # the record and the started event were counted the first time
    assert again.size - again.carried == 1  # only the completed event is new


def test_flush_args_layout() -> None:
    record = UploadRecord(id="a", route="/upload/", total=100, started_at=1000.0)
    batch = Batch(records=[(record, "r1:1000.0")], events=[progress("a", 10)], releases=[("k", "m")])
    args = flush_args(Keys("p:"), batch, relay_id="r1", finished_ttl=3600)
    assert args[:6] == ["p:", 3600, 3600, 1, 1, 1]
    assert args[12:19][:5] == ["a", "r1:1000.0", "0", "plain", 0] and args[18] == 1000.0
    assert args[-5:] == ["a", "progress", args[-3], "k", "m"]


def test_record_kinds() -> None:
    """What FLUSH is told of a record besides `fin`: a refusal never replaces an upload in progress, a resumable
    upload never goes into `active` (the relay_lost sweeper's list)."""
    record = UploadRecord(id="a", route="/upload/", total=100, started_at=1000.0)
    assert record_kind(record) == "plain"
    record.resumable = True
    assert record_kind(record) == "resumable"
    refused = UploadRecord(id="b", route="/upload/", total=100, started_at=1000.0, state="rejected")
    assert record_kind(refused) == "refusal"
    assert record_gen(record) == "1000.0"  # the run: its start, whichever relay writes it
