"""PROTOTYPE (measured in benchmarks/RESULTS.md, not used by the relay): uvicorn without its two body copies.

uvicorn 0.54's httptools protocol appends each body piece to a bytearray (`cycle.body += body`, copy 1) and
`receive()` hands the app `bytes(self.body)` (copy 2), then assigns a fresh `bytearray()`. This keeps the
pieces httptools hands over in a list instead: `receive()` then gets the very bytes object when one piece is
waiting (the usual case: uvicorn pauses reading past 64 KiB), or one join when several are. Call `install()`
once before serving (in relay/server.py, next to tune_malloc()). It relies on uvicorn internals
(`RequestResponseCycle.body`), so pin uvicorn or keep a test that fails when they change.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http import httptools_impl


class ChunkList:
    """Enough of a bytearray for uvicorn: `+=` appends the piece, len() is the total, bytes() joins."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def __iadd__(self, data: bytes) -> ChunkList:
        self.parts.append(data)
        self.size += len(data)
        return self

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        parts = self.parts
        if len(parts) == 1 and type(parts[0]) is bytes:
            return parts[0]  # no copy
        return b"".join(parts)


class NoCopyCycle(httptools_impl.RequestResponseCycle):
    @property
    def body(self) -> Any:
        return self._body

    @body.setter
    def body(self, value: Any) -> None:  # uvicorn assigns a fresh bytearray(): keep a chunk list instead
        self._body = ChunkList() if isinstance(value, bytearray) and not value else value


def install() -> None:
    httptools_impl.RequestResponseCycle = NoCopyCycle  # type: ignore[misc]
