from __future__ import annotations

from collections.abc import Iterable, Iterator

from relay.core.inspector import UploadInspector
from relay.core.limits import Limits
from relay.errors import RelayError


def inspect(content_type: str | None, chunks: Iterable[bytes], limits: Limits | None = None) -> dict[str, object]:
    """Feed `chunks` to a fresh inspector; return its parts or its error code, comparable across splits."""
    try:
        inspector = UploadInspector(upload_id="u", content_type=content_type, total=None, limits=limits or Limits())
        for i, chunk in enumerate(chunks):
            inspector.feed(chunk, float(i))
        inspector.finish(0.0)
    except RelayError as exc:
        return {"error": exc.code}
    return {"parts": [part.describe() for part in inspector.parts]}


def split_at(body: bytes, *cuts: int) -> list[bytes]:
    points = [0, *sorted(cuts), len(body)]
    return [body[a:b] for a, b in zip(points, points[1:], strict=False)]


def byte_by_byte(body: bytes) -> Iterator[bytes]:
    return (body[i : i + 1] for i in range(len(body)))
