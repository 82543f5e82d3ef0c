"""Events and upload records to and from what Redis stores, and the order of stream entry ids.

An event is stored as two stream fields, `e` (its SSE name) and `d` (the JSON of `to_dict()`, exactly the SSE
`data:`), so a relay serves another relay's events without re-encoding them. A record is one JSON string (a
field of the upload's hash) that keeps everything the admin endpoints and the SSE catch-up need: its parts as
whole `part` events (index included) and its terminal event, not only the contract's short `describe()` form.

No I/O here; the Redis implementation (relay/state/redis.py) is the only caller.
"""

from __future__ import annotations

import json
from typing import Any

from relay.core.events import Completed, ErrorInfo, Event, Failed, Interrupted, Part, Progress, Resumed, Started
from relay.uploads import UploadRecord

__all__ = ["decode_event", "decode_record", "encode_event", "encode_record", "id_key", "record_gen"]

_JUNK = (ValueError, TypeError, KeyError, IndexError, AttributeError)  # json.JSONDecodeError is a ValueError

_EVENTS: dict[str, type[Event]] = {
    cls.name: cls for cls in (Started, Progress, Part, Completed, Failed, Resumed, Interrupted)
}


def encode_event(event: Event) -> tuple[str, str]:
    """(name, JSON data) of one event."""
    return event.name, json.dumps(event.to_dict(), separators=(",", ":"))


def decode_event(name: str, data: str | bytes) -> Event | None:
    """The event back from its stream fields; None for a name this relay does not know (a newer relay) or for
    fields it cannot read (something else wrote under the prefix): never an exception on a read path."""
    cls = _EVENTS.get(name)
    if cls is None:
        return None
    try:
        return _event_from_dict(cls, json.loads(data))
    except _JUNK:
        return None


def _event_from_dict(cls: type[Event], fields: dict[str, Any]) -> Event:
    if cls is Failed and isinstance(fields.get("error"), dict):
        fields = {**fields, "error": ErrorInfo(**fields["error"])}
    return cls(**fields)


def encode_record(record: UploadRecord) -> str:
    terminal = record.terminal
    return json.dumps(
        {
            "id": record.id,
            "route": record.route,
            "total": record.total,
            "started_at": record.started_at,
            "state": record.state,
            "bytes": record.bytes,
            "parts": [part.to_dict() for part in record.parts],
            "finished_at": record.finished_at,
            "upstream_status": record.upstream_status,
            "error": record.error,
            "terminal": None if terminal is None else [terminal.name, terminal.to_dict()],
            "client": record.client,
            "path": record.path,
            "resumable": record.resumable,
            "expires_at": record.expires_at,
        },
        separators=(",", ":"),
    )


def decode_record(text: str | bytes | None) -> UploadRecord | None:
    """The record back from its JSON; None for no record, or one this relay cannot read."""
    if text is None:
        return None
    try:
        fields = json.loads(text)
        terminal = fields.pop("terminal", None)
        parts = fields.pop("parts", [])
        record = UploadRecord(**fields)
        record.parts = [Part(**part) for part in parts]
        if terminal is not None:
            event = _event_from_dict(_EVENTS[terminal[0]], terminal[1])
            if not isinstance(event, Completed | Failed):
                return None
            record.terminal = event
    except _JUNK:
        return None
    return record


def record_gen(record: UploadRecord) -> str:
    """Which run of an upload id a record belongs to: an id may be reused once its upload has finished. The run
    is its start time and nothing about the relay writing it: a resumable upload's record is written by every
    relay that takes one of its requests (each starts it at the upload's `created_at`), and these writes are
    one run. Two plain runs of one id never start at the same instant (the id's lease: one run at a time)."""
    return repr(record.started_at)


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id (`<ms>-<seq>`) as something that sorts like Redis sorts them; junk sorts first."""
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return -1, -1
