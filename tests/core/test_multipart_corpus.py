"""The corpus in tests/data/multipart: each body whole, byte by byte and split at every index (h11 test_io style)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.core.helpers import byte_by_byte, inspect, split_at

CORPUS = Path(__file__).parent.parent / "data" / "multipart"
CASES = sorted(path.stem for path in CORPUS.glob("*.http"))


def load(name: str) -> tuple[bytes, dict[str, object]]:
    expected = json.loads((CORPUS / f"{name}.json").read_text())
    return (CORPUS / f"{name}.http").read_bytes(), expected


def expected_result(expected: dict[str, object]) -> dict[str, object]:
    return {"error": expected["error"]} if "error" in expected else {"parts": expected["parts"]}


def test_corpus_is_there() -> None:
    assert len(CASES) >= 30
    assert any("error" in load(name)[1] for name in CASES)


@pytest.mark.parametrize("name", CASES)
def test_whole(name: str) -> None:
    body, expected = load(name)
    assert inspect(str(expected["content_type"]), [body]) == expected_result(expected)


@pytest.mark.parametrize("name", CASES)
def test_byte_by_byte(name: str) -> None:
    body, expected = load(name)
    assert inspect(str(expected["content_type"]), byte_by_byte(body)) == expected_result(expected)


@pytest.mark.parametrize("name", CASES)
def test_every_split(name: str) -> None:
    body, expected = load(name)
    want = expected_result(expected)
    # Every index for bodies up to 4 KiB; for bigger ones about 1500 evenly spread cuts plus all of both ends.
    step = 1 if len(body) <= 4096 else len(body) // 1500
    edges = set(range(min(len(body), 256))) | set(range(max(0, len(body) - 256), len(body) + 1))
    cuts = set(range(0, len(body) + 1, step)) | edges
    for cut in sorted(cuts):
        assert inspect(str(expected["content_type"]), split_at(body, cut)) == want, f"split at {cut}"


@pytest.mark.parametrize("name", CASES)
def test_three_pieces(name: str) -> None:
    body, expected = load(name)
    want = expected_result(expected)
    n = len(body)
    for a in range(0, n + 1, max(1, n // 30)):
        for b in range(a, n + 1, max(1, n // 25)):
            assert inspect(str(expected["content_type"]), split_at(body, a, b)) == want, f"split at {a}, {b}"
