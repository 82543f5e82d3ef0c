"""relay/core/digests.py Rule 6: the algorithms a caller answers with are computed whatever the request gave.

The relay answers a plain upload with `Repr-Digest: sha-256` (the contract), also when the client gave only
sha-512; sha-256 is hashed once, and not at all when the caller already has it (`precomputed`, Rule 5).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from relay.core.digests import format_digest, request_digests
from relay.errors import DigestMismatch

BODY = b"the body, " * 1000
S512 = b"sha-512=:" + base64.b64encode(hashlib.sha512(BODY).digest()) + b":"


def counting(made: list[str]) -> Any:
    def hasher(name: str) -> Any:
        made.append(name)
        return hashlib.new(name)

    return hasher


@pytest.mark.parametrize("field", [b"content-digest", b"repr-digest"])
def test_sha512_only_reports_sha256(field: bytes) -> None:
    made: list[str] = []
    checker = request_digests([(field, S512)], hasher=counting(made), reported=("sha-256",))
    assert checker is not None
    checker.update(BODY[:100])
    checker.update(BODY[100:])
    checker.verify()
    assert sorted(made) == ["sha256", "sha512"]  # one hash each
    assert checker.repr_digest() == format_digest("sha-256", hashlib.sha256(BODY).digest())


def test_precomputed_sha256_is_not_hashed_for_the_report() -> None:
    made: list[str] = []
    checker = request_digests(
        [(b"repr-digest", S512)], hasher=counting(made), precomputed=("sha-256",), reported=("sha-256",)
    )
    assert checker is not None
    checker.update(BODY)
    checker.verify({"sha-256": hashlib.sha256(BODY).digest()})
    assert made == ["sha512"]
    assert checker.repr_digest() == format_digest("sha-256", hashlib.sha256(BODY).digest())


def test_a_mismatch_still_reports_sha256_of_what_was_received() -> None:
    received = BODY[:-1] + b"?"
    checker = request_digests([(b"content-digest", S512)], reported=("sha-256",))
    assert checker is not None
    checker.update(received)
    with pytest.raises(DigestMismatch, match="sha-512"):
        checker.verify()
    assert checker.repr_digest() == format_digest("sha-256", hashlib.sha256(received).digest())


def test_reported_alone_makes_no_checker() -> None:
    """No known digest in the request: nothing is hashed, and the answer has no Repr-Digest."""
    assert request_digests([(b"content-digest", b"md5=:AAAA:")], reported=("sha-256",)) is None
    assert request_digests([], reported=("sha-256",)) is None
