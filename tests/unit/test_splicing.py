"""relay.core.splicing: which bodies may be spliced socket to socket (nothing needs to look at their bytes)."""

from __future__ import annotations

import pytest

from relay.core.splicing import SPLICE_MIN, may_splice


def test_a_large_raw_content_length_body_with_nothing_to_inspect_is_spliced() -> None:
    assert may_splice(content_length=SPLICE_MIN, digest=False, multipart=False, digest_fields=False)
    assert may_splice(content_length=10 * SPLICE_MIN, digest=False, multipart=False, digest_fields=False)


@pytest.mark.parametrize(
    ("content_length", "digest", "multipart", "digest_fields"),
    [
        (None, False, False, False),  # chunked: the relay de-chunks and re-frames it
        (SPLICE_MIN - 1, False, False, False),  # small: copying is cheaper than a pipe
        (0, False, False, False),
        (SPLICE_MIN, True, False, False),  # sha256 needs the bytes
        (SPLICE_MIN, False, True, False),  # multipart is parsed (parts, per-file limits)
        (SPLICE_MIN, False, False, True),  # a Content-Digest / Repr-Digest to verify
    ],
)
def test_anything_that_needs_the_bytes_is_not(
    content_length: int | None, digest: bool, multipart: bool, digest_fields: bool
) -> None:
    assert not may_splice(
        content_length=content_length, digest=digest, multipart=multipart, digest_fields=digest_fields
    )


def test_a_hashed_body_is_spliced_only_where_the_kernel_can_tee_it() -> None:
    assert may_splice(content_length=SPLICE_MIN, digest=True, multipart=False, digest_fields=False, tee=True)
    assert not may_splice(content_length=SPLICE_MIN, digest=True, multipart=False, digest_fields=False, tee=False)


@pytest.mark.parametrize(("multipart", "digest_fields"), [(True, False), (False, True)])
def test_tee_changes_nothing_for_parsed_or_digest_checked_bodies(multipart: bool, digest_fields: bool) -> None:
    """A Content-Digest must be verified before the last bytes leave: a splice has no last bytes to hold back."""
    assert not may_splice(
        content_length=SPLICE_MIN, digest=True, multipart=multipart, digest_fields=digest_fields, tee=True
    )
