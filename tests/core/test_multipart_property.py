"""Random bodies split at random points against a non-streaming reference reader written from the rules."""

from __future__ import annotations

import hashlib
import re

from hypothesis import HealthCheck, given, settings, strategies as st

from relay.core.multipart import MAX_HEADER_BLOCK, MAX_HEADER_LINE, MAX_HEADERS, MAX_PREAMBLE, _part_headers
from tests.core.helpers import inspect, split_at

ERROR = {"error": "malformed_multipart"}
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=?"


def reference(body: bytes, boundary: bytes) -> dict[str, object]:
    """Whole-body reading of the rules in relay/core/multipart.py's docstring, independent of the parser."""
    dash = b"--" + boundary
    delim = b"\r\n" + dash
    i = 0
    while i < len(body) and body[i] in b"\r\n \t":
        i += 1
    if i > MAX_PREAMBLE or not body.startswith(dash, i):
        return ERROR
    i += len(dash)
    if body.startswith(b"--", i):
        return {"parts": []}
    if not body.startswith(b"\r\n", i):
        return ERROR
    i += 2
    parts: list[dict[str, object]] = []
    while True:
        disposition = content_type = None
        count = block = 0
        while True:  # header lines
            cr = body.find(b"\r", i)
            if cr < 0 or not body.startswith(b"\r\n", cr):
                return ERROR
            line = body[i:cr]
            i = cr + 2
            if not line:
                break
            count += 1
            name, colon, value = line.partition(b":")
            if not colon or not TOKEN.fullmatch(name) or count > MAX_HEADERS or len(line) > MAX_HEADER_LINE:
                return ERROR
            value = value.lstrip(b" ")
            block += len(name) + len(value)
            if block > MAX_HEADER_BLOCK:
                return ERROR
            lname = name.lower()
            if lname == b"content-disposition":
                if disposition is not None:
                    return ERROR
                disposition = value
            elif lname == b"content-type":
                if content_type is not None:
                    return ERROR
                content_type = value
        if disposition is None:
            return ERROR
        headers = _part_headers(disposition, content_type)
        search = i
        while True:  # the next real delimiter
            p = body.find(delim, search)
            if p < 0:
                return ERROR
            after = p + len(delim)
            if body.startswith(b"\r\n", after) or body.startswith(b"--", after):
                break
            if body[after : after + 1] in (b" ", b"\t"):
                q = after
                while body[q : q + 1] in (b" ", b"\t"):
                    q += 1
                if not body.startswith(b"\r\n", q):
                    return ERROR
                after = q
                break
            search = p + 1
        content = body[i:p]
        parts.append(
            {
                "field": headers.field,
                "filename": headers.filename,
                "content_type": headers.content_type,
                "size": len(content),
                "sha256": hashlib.sha256(content).hexdigest(),
            }
        )
        if body.startswith(b"--", after):
            return {"parts": parts}
        i = after + 2


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, bytes, list[bytes]]:
    boundary = draw(st.text(BCHARS, min_size=1, max_size=70)).encode()
    pieces = st.one_of(
        st.binary(max_size=30),
        st.sampled_from(
            [
                b"\r",
                b"\n",
                b"\r\n",
                b"-",
                b"--",
                b"\r\n--",
                b"\r\n--" + boundary[:-1],
                b"\r\n--" + boundary + b"-",
                b"\r\n--" + boundary + b"\r",
                b"\r\n--" + boundary + b" ",
                b"--" + boundary,
                boundary,
            ]
        ),
    )
    parts = draw(st.lists(st.lists(pieces, max_size=8).map(b"".join), max_size=4))
    body = b""
    for n, content in enumerate(parts):
        filename = draw(st.one_of(st.none(), st.sampled_from(["a.bin", "", "x y.txt", "é.txt"])))
        disposition = f'form-data; name="f{n}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        head = b"Content-Disposition: " + disposition.encode() + b"\r\n"
        if draw(st.booleans()):
            head += b"Content-Type: application/octet-stream\r\n"
        body += b"--" + boundary + b"\r\n" + head + b"\r\n" + content + b"\r\n"
    body += b"--" + boundary + b"--\r\n"
    mutation = draw(st.sampled_from(["none", "none", "truncate", "preamble", "epilogue", "flip"]))
    if mutation == "truncate":
        body = body[: draw(st.integers(0, len(body)))]
    elif mutation == "preamble":
        body = draw(st.sampled_from([b"\r\n", b" \t\r\n", b"junk\r\n", b"\r\n-"])) + body
    elif mutation == "epilogue":
        body += draw(st.binary(max_size=40))
    elif mutation == "flip" and body:
        at = draw(st.integers(0, len(body) - 1))
        body = body[:at] + draw(st.sampled_from([b"\r", b"\n", b"-", b"x", b":"])) + body[at + 1 :]
    cuts = draw(st.lists(st.integers(0, len(body)), max_size=6))
    return boundary, body, split_at(body, *cuts)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
def test_streaming_matches_reference(case: tuple[bytes, bytes, list[bytes]]) -> None:
    boundary, body, chunks = case
    content_type = "multipart/form-data; boundary=" + boundary.decode()
    want = reference(body, boundary)
    assert inspect(content_type, [body]) == want
    assert inspect(content_type, chunks) == want


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20), st.one_of(st.none(), st.sampled_from(["text/plain", "x/y"])))
def test_raw_body_is_one_part(chunks: list[bytes], content_type: str | None) -> None:
    body = b"".join(chunks)
    assert inspect(content_type, chunks) == {
        "parts": [
            {
                "field": None,
                "filename": None,
                "content_type": content_type,
                "size": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
            }
        ]
    }
