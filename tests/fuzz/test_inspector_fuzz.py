"""Property tests on UploadInspector: random multipart-ish bodies, random chunkings.

For every body: no exception but the relay's own RelayError subclasses, the same verdict and the same parts
(field, filename, content type, size, sha256) whatever the chunking, in bounded time. Plus pathological shapes
timed on their own, and the corpus in tests/fuzz/corpus/ replayed under several chunkings against the verdicts
recorded in corpus/expected.json (regenerate with `python -m tests.fuzz.make_corpus` after a deliberate change).
"""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from relay.core.limits import Limits
from tests.fuzz.common import CORPUS, byte_by_byte, cut, random_cuts, read_entry, verdict

BOUNDARIES = [b"b", b"relay-xyz", b"----WebKitFormBoundary7MA4YWxkTrZu0gW", b"with space", b"x" * 70, b"--", b"\xff"]


@st.composite
def content_types(draw: st.DrawFn) -> tuple[str | None, bytes]:
    boundary = draw(st.sampled_from(BOUNDARIES))
    text = boundary.decode("latin-1")
    content_type = draw(
        st.sampled_from(
            [
                f"multipart/form-data; boundary={text}",
                f'multipart/form-data; boundary="{text}"',
                f"Multipart/Form-Data;boundary={text};charset=utf-8",
                f"multipart/form-data; boundary={text}x{'y' * 70}",  # too long: refused from the header
                "multipart/form-data",
                "multipart/form-data; boundary=",
                "application/octet-stream",
                None,
            ]
        )
    )
    return content_type, boundary


def tokens(boundary: bytes) -> st.SearchStrategy[bytes]:
    dash = b"--" + boundary
    return st.one_of(
        st.sampled_from(
            [
                dash + b"\r\n",
                dash + b"--",
                dash + b"--\r\n",
                b"\r\n" + dash + b"\r\n",
                b"\r\n" + dash + b"--\r\n",
                b"\r\n" + dash,
                b"\r\n" + dash[:-1],
                dash + b" \t\r\n",
                dash + b"-",
                b'Content-Disposition: form-data; name="f"; filename="a.bin"\r\n',
                b'Content-Disposition: form-data; name="field"\r\n',
                b"Content-Disposition: form-data; name=f; filename*=UTF-8''%e2%82%ac.txt\r\n",
                b'content-disposition: form-data; name="g"; filename=""\r\n',
                b"Content-Type: text/plain\r\n",
                b"X-Other: 1\r\n",
                b"Bad Header\r\n",
                b":\r\n",
                b"\r\n",
                b"\r",
                b"\n",
                b"--",
                b"-",
                b" ",
                b"\t",
                b"\r\n\r\n",
                b"\x00",
            ]
        ),
        st.binary(max_size=64),
    )


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str | None, bytes]:
    content_type, boundary = draw(content_types())
    dash = b"--" + boundary
    if draw(st.booleans()):  # a well-formed body, then maybe mutated
        parts = draw(st.lists(st.tuples(st.booleans(), st.binary(max_size=300)), min_size=0, max_size=4))
        out = [draw(st.sampled_from([b"", b"\r\n", b"  \r\n"]))]
        for i, (is_file, data) in enumerate(parts):
            fname = b'; filename="f%d.bin"' % i if is_file else b""
            out.append(dash + b'\r\nContent-Disposition: form-data; name="p%d"%s\r\n\r\n' % (i, fname) + data + b"\r\n")
        out.append(dash + b"--\r\n" + draw(st.binary(max_size=20)))
        body = bytearray(b"".join(out))
        for _ in range(draw(st.integers(0, 3))):
            if body:
                at = draw(st.integers(0, len(body) - 1))
                body[at] = draw(st.integers(0, 255))
        return content_type, bytes(body)
    return content_type, b"".join(draw(st.lists(tokens(boundary), max_size=30)))


limits_strategy = st.builds(
    Limits, max_file_size=st.one_of(st.none(), st.integers(0, 200)), max_files=st.one_of(st.none(), st.integers(0, 3))
)


@settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(bodies(), st.lists(st.integers(1, 4000), max_size=8), limits_strategy)
def test_same_verdict_for_any_chunking(case: tuple[str | None, bytes], points: list[int], limits: Limits) -> None:
    content_type, body = case
    whole = verdict(content_type, [body], limits)
    assert verdict(content_type, cut(body, points), limits) == whole
    if len(body) <= 1500:
        assert verdict(content_type, byte_by_byte(body), limits) == whole


@settings(max_examples=150, deadline=2000)
@given(bodies(), st.integers(1, 10_000))
def test_body_limit_is_exact(case: tuple[str | None, bytes], limit: int) -> None:
    """The byte limit alone: over it is body_too_large whatever else is wrong, unless another error came first."""
    content_type, body = case
    got = verdict(content_type, random_cuts(body, limit, 4), Limits(max_body_size=limit))
    if len(body) <= limit:
        assert got == verdict(content_type, [body])
    else:
        assert got.get("error") is not None


# -- pathological shapes, timed ------------------------------------------------------------------------------

B = b"relay-xyz"
CT = f"multipart/form-data; boundary={B.decode()}"
HEAD = b"--" + B + b'\r\nContent-Disposition: form-data; name="f"; filename="a"\r\n\r\n'
MIB = 1024 * 1024
PATHOLOGICAL = {
    "crlf-dash-flood": HEAD + b"\r\n-" * (2 * MIB) + b"\r\n--" + B + b"--\r\n",
    "partial-boundary-flood": HEAD + (b"\r\n--" + B[:-1]) * (MIB // 8) + b"\r\n--" + B + b"--\r\n",
    "cr-flood": HEAD + b"\r" * (4 * MIB) + b"\r\n--" + B + b"--\r\n",
    "many-empty-parts": (b"--" + B + b'\r\nContent-Disposition: form-data; name="a"\r\n\r\n\r\n') * 20_000
    + b"--"
    + B
    + b"--\r\n",
    "header-flood": b"--" + B + b"\r\n" + b"X-A: b\r\n" * 100_000,
    "preamble-flood": b"\r\n" * (MIB // 2),
    "epilogue-flood": HEAD + b"x\r\n--" + B + b"--\r\n" + b"\r\n--" + B * (MIB // 8),
}


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_bodies_take_bounded_time(name: str) -> None:
    body = PATHOLOGICAL[name]
    started = time.process_time()
    whole = verdict(CT, cut(body, range(65536, len(body), 65536)))
    small = verdict(CT, cut(body, range(1000, len(body), 1000)))
    seconds = time.process_time() - started
    assert whole == small
    assert seconds < 10, f"{name}: {seconds:.1f} s of CPU for {len(body)} bytes"


# -- the corpus ----------------------------------------------------------------------------------------------

EXPECTED = json.loads((CORPUS / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_replays_with_the_recorded_verdict(name: str) -> None:
    content_type, body = read_entry(CORPUS / name)
    whole = verdict(content_type, [body])
    assert whole == EXPECTED[name]
    for seed in range(3):
        assert verdict(content_type, random_cuts(body, seed, 6)) == whole
    if len(body) <= 4096:
        assert verdict(content_type, byte_by_byte(body)) == whole


def test_corpus_is_complete() -> None:
    on_disk = {p.name for p in CORPUS.glob("*.bin")}
    assert on_disk == set(EXPECTED), on_disk ^ set(EXPECTED)
    assert len(on_disk) >= 25
