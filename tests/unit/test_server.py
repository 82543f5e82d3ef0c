"""relay/server.py pieces that need no server: the no-copy body and malloc tuning."""

from __future__ import annotations

import sys

import pytest
from uvicorn.protocols.http import httptools_impl

from relay.tuning import _ChunkList, install_nocopy_body, tune_malloc


def test_nocopy_body_is_active_on_the_pinned_uvicorn() -> None:
    # If this fails after a uvicorn upgrade, check RequestResponseCycle's use of `body` and extend NOCOPY_UVICORN.
    assert install_nocopy_body()
    assert httptools_impl.RequestResponseCycle.__name__ == "_NoCopyCycle"


def test_chunk_list_behaves_like_uvicorns_bytearray() -> None:
    body = _ChunkList()
    assert len(body) == 0 and bytes(body) == b""
    piece = b"x" * 1000
    body += piece
    assert bytes(body) is piece  # one piece: handed over as is, no copy
    body += b"yz"
    assert len(body) == 1002 and bytes(body) == piece + b"yz"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tune_malloc_on_glibc() -> None:
    assert tune_malloc()
