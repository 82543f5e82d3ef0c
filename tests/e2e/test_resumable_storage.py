"""Creation is refused with 507 `insufficient_storage` when the spool cannot hold the upload plus 1 GiB.

The contract ("Durability"): a resumable upload is created only if the spool's free space covers
`Upload-Length` plus 1 GiB of headroom. Tested on a real relay whose spool is on this machine's disk: the
lengths asked for are taken from that disk's free space (statvfs, as the relay reads it), with a margin of
512 MiB or more on either side, because other processes write to the same disk while the test runs. The route
has no body-size limit, so nothing but the spool's room can refuse these lengths.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.interop.support import TUS, Stack, make_stack, tus_create

__all__ = ["make_stack"]  # the fixture, imported so pytest finds it here

GiB = 1 << 30


def free_bytes(directory: Path) -> int:
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def assert_refused(answer: httpx.Response) -> None:
    assert answer.status_code == 507, answer.text
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert error["code"] == "insufficient_storage"
    assert isinstance(error["message"], str) and error["message"]
    assert "location" not in answer.headers


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack("--max-body-size", "0")


def test_an_upload_the_spool_cannot_hold_is_refused(stack: Stack) -> None:
    with stack.client() as client:
        free = free_bytes(stack.spool)
        assert_refused(tus_create(client, "/upload/big.bin", free + GiB))
        # Room for the bytes but not for the headroom: refused as well (the 1 GiB is the contract's).
        assert_refused(tus_create(client, "/upload/big.bin", free - GiB // 2))
    assert stack.spool_data() == []  # a refusal leaves nothing in the spool
    assert not any(stack.spool.glob("*.json"))
    listing = httpx.get(f"{stack.url}/_relay/uploads", timeout=10).json()
    assert not any(record.get("resumable") for record in listing["uploads"])


def test_an_upload_that_fits_with_the_headroom_is_created(stack: Stack) -> None:
    with stack.client() as client:
        free = free_bytes(stack.spool)
        assert free > 4 * GiB, "this test needs a few GiB free on the spool's disk"
        created = tus_create(client, "/upload/fits.bin", free - 3 * GiB)
        assert created.status_code == 201, created.text
        location = created.headers["location"]
        assert client.delete(location, headers=TUS).status_code == 204


def test_creation_with_a_body_is_refused_before_the_body_is_read(stack: Stack) -> None:
    """The refusal comes from the head alone: nothing of the body reaches the spool, and the relay answers."""
    with stack.client() as client:
        free = free_bytes(stack.spool)
        answer = tus_create(client, "/upload/big.bin", free + GiB, body=b"x" * 65536)
        assert_refused(answer)
    assert stack.spool_data() == []


def test_the_ietf_draft_gets_the_same_refusal(stack: Stack) -> None:
    with stack.client() as client:
        free = free_bytes(stack.spool)
        headers = {"Upload-Draft-Interop-Version": "6", "Upload-Complete": "?0", "Upload-Length": str(free + GiB)}
        assert_refused(client.post("/upload/ietf.bin", headers=headers))
    assert stack.spool_data() == []
