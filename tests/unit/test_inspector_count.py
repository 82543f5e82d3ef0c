"""UploadInspector.count: a spliced raw body's bytes, counted and limited without being seen (relay/splicewire.py)."""

from __future__ import annotations

import hashlib

import pytest

from relay.core.events import Progress
from relay.core.inspector import UploadInspector
from relay.core.limits import Limits
from relay.core.progress import ProgressPolicy
from relay.errors import BodyTooLarge


def test_count_counts_like_feed_and_the_hash_is_whoever_spliced_its() -> None:
    made: list[hashlib._Hash] = []

    def hasher() -> hashlib._Hash:
        made.append(hashlib.sha256())
        return made[-1]

    inspector = UploadInspector(upload_id="u", content_type=None, total=300, limits=Limits(), hasher=hasher)
    inspector.count(100, 1.0)
    inspector.count(200, 2.0)
    made[0].update(b"x" * 300)  # the splice's hash thread, done before finish
    (part,) = inspector.finish(3.0)
    assert (inspector.bytes_received, part.size, part.sha256) == (300, 300, hashlib.sha256(b"x" * 300).hexdigest())


def test_count_enforces_the_body_limit() -> None:
    inspector = UploadInspector(upload_id="u", content_type=None, total=None, limits=Limits(max_body_size=150))
    inspector.count(150, 1.0)
    with pytest.raises(BodyTooLarge):
        inspector.count(1, 1.0)


def test_count_emits_progress_as_feed_does() -> None:
    policy = ProgressPolicy(min_interval=0.0, max_interval=0.5, percent_step=10.0)
    counted = UploadInspector(upload_id="u", content_type=None, total=10, limits=Limits(), progress=policy)
    fed = UploadInspector(upload_id="u", content_type=None, total=10, limits=Limits(), progress=policy)
    for now in (1.0, 2.0):
        events = counted.count(5, now)
        assert events == fed.feed(b"12345", now)
        assert [type(event) for event in events] == [Progress]
    assert counted.count(0, 3.0) == []


def test_count_is_for_raw_bodies_only() -> None:
    inspector = UploadInspector(
        upload_id="u", content_type="multipart/form-data; boundary=b", total=None, limits=Limits()
    )
    with pytest.raises(AssertionError):
        inspector.count(1, 1.0)
