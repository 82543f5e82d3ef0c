"""InMemoryUploadRegistry: records built from events, the contract's fields, bounded memory."""

from __future__ import annotations

import pytest

import relay.uploads
from relay.core.events import Completed, ErrorInfo, Failed, Part, Progress, Started
from relay.uploads import InMemoryUploadRegistry
from tests.conftest import CONTRACT_FIELDS, PART_FIELDS


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(relay.uploads.time, "monotonic", fake)
    return fake


def start(registry: InMemoryUploadRegistry, upload_id: str, ts: float = 1.0, total: int | None = 100) -> None:
    registry.apply(Started(upload_id, 0, total, ts, "/upload/", "POST", f"/upload/{upload_id}"))


def finish(registry: InMemoryUploadRegistry, upload_id: str, ts: float = 2.0) -> None:
    registry.apply(Completed(upload_id, 100, 100, ts, 200))


def test_lifecycle_started_progress_part_completed() -> None:
    registry = InMemoryUploadRegistry()
    start(registry, "u1", ts=10.0)
    record = registry.get("u1")
    assert record is not None and record.state == "receiving" and registry.is_active("u1")
    registry.apply(Progress("u1", 40, 100, 10.5))
    assert registry.get("u1").bytes == 40  # type: ignore[union-attr]
    registry.apply(Part("u1", 60, 100, 10.6, 0, "file", "a.bin", "application/octet-stream", 7, "ab" * 32))
    registry.apply(Progress("u1", 50, 100, 10.7))  # an older count never lowers the record's
    registry.apply(Completed("u1", 100, 100, 11.0, 201))
    assert not registry.is_active("u1")
    assert registry.get("u1").to_dict() == {  # type: ignore[union-attr]
        "id": "u1",
        "state": "completed",
        "route": "/upload/",
        "bytes": 100,
        "total": 100,
        "parts": [
            {
                "field": "file",
                "filename": "a.bin",
                "content_type": "application/octet-stream",
                "size": 7,
                "sha256": "ab" * 32,
            }
        ],
        "started_at": 10.0,
        "finished_at": 11.0,
        "upstream_status": 201,
        "error": None,
        "client": "",
        "path": "/upload/u1",
    }


def test_to_dict_has_exactly_the_contract_fields() -> None:
    registry = InMemoryUploadRegistry()
    start(registry, "u1", total=None)
    registry.apply(Part("u1", 5, None, 1.5, 0, None, None, "text/plain", 5, None))
    as_dict = registry.get("u1").to_dict()  # type: ignore[union-attr]
    assert set(as_dict) == CONTRACT_FIELDS | {"client", "path"}  # issue 16: records gain client and path
    assert set(as_dict["parts"][0]) == PART_FIELDS
    assert as_dict["total"] is None and as_dict["finished_at"] is None and as_dict["error"] is None


def test_failed_records_the_error() -> None:
    registry = InMemoryUploadRegistry()
    start(registry, "u1")
    registry.apply(Progress("u1", 30, 100, 1.2))
    registry.apply(Failed("u1", 50, 100, 1.5, ErrorInfo("upstream_failed", "broke"), upstream_status=None))
    record = registry.get("u1").to_dict()  # type: ignore[union-attr]
    assert record["state"] == "failed"
    assert record["error"] == {"code": "upstream_failed", "message": "broke"}
    assert record["bytes"] == 50 and record["finished_at"] == 1.5 and record["upstream_status"] is None


def test_rejected_from_headers_is_state_rejected() -> None:
    registry = InMemoryUploadRegistry()
    start(registry, "u1")
    registry.apply(Failed("u1", 0, 100, 1.0, ErrorInfo("unauthorized", "token"), rejected=True))
    record = registry.get("u1")
    assert record is not None and record.state == "rejected" and record.finished
    assert record.to_dict()["error"] == {"code": "unauthorized", "message": "token"}
    assert not registry.is_active("u1")


def test_events_after_the_terminal_one_change_nothing() -> None:
    registry = InMemoryUploadRegistry()
    start(registry, "u1")
    finish(registry, "u1")
    registry.apply(Failed("u1", 999, 100, 3.0, ErrorInfo("upstream_failed", "late")))
    registry.apply(Progress("u1", 999, 100, 3.0))
    record = registry.get("u1").to_dict()  # type: ignore[union-attr]
    assert record["state"] == "completed" and record["bytes"] == 100 and record["error"] is None


def test_events_for_unknown_uploads_are_ignored() -> None:
    registry = InMemoryUploadRegistry()
    registry.apply(Progress("ghost", 10, None, 1.0))
    registry.apply(Completed("ghost", 10, None, 1.0, 200))
    assert registry.get("ghost") is None and len(registry) == 0 and not registry.is_active("ghost")


def test_a_reused_id_starts_a_fresh_record() -> None:
    registry = InMemoryUploadRegistry()
    start(registry, "u1", ts=1.0)
    finish(registry, "u1")
    start(registry, "u1", ts=5.0)
    record = registry.get("u1")
    assert record is not None and record.state == "receiving" and record.started_at == 5.0 and record.parts == []
    assert len(registry) == 1


def test_recent_is_newest_first_and_limited() -> None:
    registry = InMemoryUploadRegistry()
    for index, ts in enumerate([5.0, 1.0, 9.0, 3.0]):
        start(registry, f"u{index}", ts=ts)
    assert [r.id for r in registry.recent()] == ["u2", "u0", "u3", "u1"]
    assert [r.id for r in registry.recent(limit=2)] == ["u2", "u0"]


def test_max_finished_evicts_oldest_finished_only(clock: Clock) -> None:
    registry = InMemoryUploadRegistry(max_finished=2, ttl=3600)
    start(registry, "active", ts=0.5)
    for index in range(5):
        start(registry, f"done{index}", ts=1.0 + index)
        clock.now += 1
        finish(registry, f"done{index}", ts=1.5 + index)
    assert {r.id for r in registry.recent()} == {"active", "done3", "done4"}
    assert registry.is_active("active")


def test_ttl_evicts_finished_records_only(clock: Clock) -> None:
    registry = InMemoryUploadRegistry(max_finished=100, ttl=10)
    start(registry, "active")
    start(registry, "old")
    finish(registry, "old")
    clock.now += 5
    start(registry, "young")
    finish(registry, "young")
    clock.now += 6  # "old" finished 11 s ago, "young" 6 s ago
    assert registry.get("old") is None
    assert registry.get("young") is not None
    clock.now += 3600
    assert [r.id for r in registry.recent()] == ["active"]
    assert registry.get("active").state == "receiving"  # type: ignore[union-attr]


def test_many_uploads_stay_bounded(clock: Clock) -> None:
    registry = InMemoryUploadRegistry(max_finished=50, ttl=3600)
    for index in range(1000):
        start(registry, f"u{index}", ts=float(index))
        registry.apply(Failed(f"u{index}", 0, 100, float(index), ErrorInfo("unauthorized", "x"), rejected=True))
    assert len(registry) == 50
    assert registry.recent(limit=1)[0].id == "u999"


def test_recent_is_newest_first_when_start_times_tie() -> None:
    registry = InMemoryUploadRegistry()
    for upload_id in ("first", "second", "third"):
        start(registry, upload_id, ts=7.0)
    assert [r.id for r in registry.recent()] == ["third", "second", "first"]
