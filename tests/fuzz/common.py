"""Helpers shared by the fuzz tests, the corpus replay, the corpus builder and the atheris harness.

A corpus entry is one file: the request Content-Type on the first line (empty for none), then `\\n`, then the body
bytes exactly. `verdict()` runs a fresh UploadInspector over a body cut into chunks and returns something
comparable across cuts: the parts it found (as the registry shows them) or the relay error code. Anything that is not
a RelayError propagates: for the inspector that is a crash.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

from tests.core.helpers import inspect

CORPUS = Path(__file__).resolve().parent / "corpus"
HEX = b"0123456789abcdefABCDEF"


# The same verdict the core tests compare across splits: one definition, in tests/core/helpers.py.
verdict = inspect


def cut(body: bytes, points: Iterable[int]) -> list[bytes]:
    edges = [0, *sorted({p for p in points if 0 < p < len(body)}), len(body)]
    return [body[a:b] for a, b in zip(edges, edges[1:], strict=False)]


def random_cuts(body: bytes, seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    return cut(body, (rng.randrange(1, max(2, len(body))) for _ in range(count)))


def byte_by_byte(body: bytes) -> list[bytes]:
    return [body[i : i + 1] for i in range(len(body))]


def read_entry(path: Path) -> tuple[str | None, bytes]:
    data = path.read_bytes()
    first, _, body = data.partition(b"\n")
    content_type = first.decode("latin-1").strip()
    return (content_type or None), body


def write_entry(path: Path, content_type: str | None, body: bytes) -> None:
    path.write_bytes((content_type or "").encode("latin-1") + b"\n" + body)


def decode_once(path: bytes) -> bytes:
    """Percent-decoding, one pass, written from the contract: `%` and two hex digits is a byte, else kept."""
    out = bytearray()
    i = 0
    while i < len(path):
        if path[i : i + 1] == b"%" and i + 3 <= len(path) and path[i + 1] in HEX and path[i + 2] in HEX:
            out.append(int(path[i + 1 : i + 3], 16))
            i += 3
        else:
            out += path[i : i + 1]
            i += 1
    return bytes(out)


def reference_has_dot_segment(raw_path: bytes) -> bool:
    """The contract's sentence: percent-decoded once, with `\\` read as `/`, has a `.` or `..` segment."""
    return any(seg in (b".", b"..") for seg in decode_once(raw_path).replace(b"\\", b"/").split(b"/"))
