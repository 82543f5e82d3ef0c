"""Request smuggling and Host tricks, over raw sockets, against a real relay in front of the `recorder`.

Every hostile shape must be answered with a 4xx (400, or 413/414/431 for sizes) or a clean close, and must never
turn into two requests upstream. What reached the upstream is read from the relay's registry (every routed request
gets an entry: `GET /_relay/uploads`) and from the recorder's echo of the raw target it received. A control group of
legitimate framings (and one legitimately pipelined pair) shows the counting works.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from relay.testing import RunningServer
from tests.conftest import start_test_upstream
from tests.hostile.conftest import Exchange, RelayUnderTest, exchange

SMUGGLED = b"POST /upload/smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
HEAD = b"POST /upload/a HTTP/1.1\r\nHost: x\r\n"
CHUNKED_BODY = b"4\r\nabcd\r\n0\r\n\r\n"


def req(*headers: bytes, body: bytes = b"", start: bytes = HEAD) -> bytes:
    return start + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


HOSTILE = {
    # Content-Length together with Transfer-Encoding, both orders, the classic CL.TE / TE.CL payloads.
    "cl-then-te": req(b"Content-Length: 4", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED),
    "te-then-cl": req(b"Transfer-Encoding: chunked", b"Content-Length: 60", body=b"0\r\n\r\n" + SMUGGLED),
    "cl-and-te-identity": req(b"Content-Length: 4", b"Transfer-Encoding: identity", body=b"abcd"),
    # Duplicate or conflicting Content-Length.
    "cl-conflicting": req(b"Content-Length: 4", b"Content-Length: 50", body=b"abcd" + SMUGGLED),
    "cl-duplicate-equal": req(b"Content-Length: 4", b"Content-Length: 4", body=b"abcd"),
    "cl-list": req(b"Content-Length: 4, 4", body=b"abcd"),
    "cl-list-conflicting": req(b"Content-Length: 4, 60", body=b"abcd" + SMUGGLED),
    # Negative, non-numeric, signed, hex, spaced, huge Content-Length.
    "cl-negative": req(b"Content-Length: -1", body=b"abcd"),
    "cl-plus": req(b"Content-Length: +4", body=b"abcd"),
    "cl-alpha": req(b"Content-Length: abc", body=b"abcd"),
    "cl-hex": req(b"Content-Length: 0x4", body=b"abcd"),
    "cl-inner-space": req(b"Content-Length: 1 0", body=b"abcd"),
    "cl-empty": req(b"Content-Length: ", body=b"abcd"),
    "cl-overflow": req(b"Content-Length: 99999999999999999999999999", body=b"abcd"),
    "cl-u64-max": req(b"Content-Length: 18446744073709551615", body=b"abcd"),  # parses, then over the limit: 413
    "cl-over-limit": req(b"Content-Length: 1048577", body=b"abcd"),
    # Odd Transfer-Encoding values.
    "te-chunked-identity": req(b"Transfer-Encoding: chunked, identity", body=CHUNKED_BODY),
    "te-identity": req(b"Transfer-Encoding: identity", body=b"abcd"),
    "te-xchunked": req(b"Transfer-Encoding: xchunked", body=CHUNKED_BODY),
    "te-chunked-twice-one-line": req(b"Transfer-Encoding: chunked, chunked", body=CHUNKED_BODY),
    "te-chunked-two-lines": req(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", body=CHUNKED_BODY),
    "te-space-before-colon": req(b"Transfer-Encoding : chunked", body=CHUNKED_BODY),
    "te-vertical-tab": req(b"Transfer-Encoding: \x0bchunked", body=CHUNKED_BODY),
    "te-gzip-chunked": req(b"Transfer-Encoding: gzip, chunked", body=CHUNKED_BODY),
    "te-unknown-chunked": req(b"Transfer-Encoding: x-custom, chunked", body=CHUNKED_BODY),
    # Obsolete line folding.
    "obs-fold-hides-te": req(b"X-A: 1", b" Transfer-Encoding: chunked", b"Content-Length: 4", body=b"abcd"),
    "obs-fold-te-value": req(b"Transfer-Encoding:", b" chunked", body=CHUNKED_BODY),
    "obs-fold-first-line": b"POST /upload/a HTTP/1.1\r\n Host: x\r\nContent-Length: 4\r\n\r\nabcd",
    # Bad chunk sizes.
    "chunk-non-hex": req(b"Transfer-Encoding: chunked", body=b"zz\r\nabcd\r\n0\r\n\r\n"),
    "chunk-overflow": req(b"Transfer-Encoding: chunked", body=b"FFFFFFFFFFFFFFFFFF\r\nabcd\r\n0\r\n\r\n"),
    "chunk-negative": req(b"Transfer-Encoding: chunked", body=b"-4\r\nabcd\r\n0\r\n\r\n"),
    "chunk-0x": req(b"Transfer-Encoding: chunked", body=b"0x4\r\nabcd\r\n0\r\n\r\n"),
    "chunk-missing-crlf": req(b"Transfer-Encoding: chunked", body=b"4\r\nabcdXX0\r\n\r\n" + SMUGGLED),
    "chunk-short-data": req(b"Transfer-Encoding: chunked", body=b"8\r\nabcd\r\n0\r\n\r\n" + SMUGGLED),
    "chunk-bare-lf": req(b"Transfer-Encoding: chunked", body=b"4\nabcd\n0\n\n"),
    "chunk-space-after-size": req(b"Transfer-Encoding: chunked", body=b"4 \r\nabcd\r\n0\r\n\r\n"),
    # CR, LF, NUL and other controls in header names or values.
    "cr-in-value": req(b"X-A: a\rb", b"Content-Length: 4", body=b"abcd"),
    "lf-in-value": req(b"X-A: a\nX-Injected: 1", b"Content-Length: 4", body=b"abcd"),
    "nul-in-value": req(b"X-A: a\x00b", b"Content-Length: 4", body=b"abcd"),
    "del-in-value": req(b"X-A: a\x7fb", b"Content-Length: 4", body=b"abcd"),
    "nul-in-name": req(b"X-\x00A: ab", b"Content-Length: 4", body=b"abcd"),
    "cr-in-name": req(b"X-\rA: ab", b"Content-Length: 4", body=b"abcd"),
    "space-in-name": req(b"X A: ab", b"Content-Length: 4", body=b"abcd"),
    "no-colon": req(b"XA", b"Content-Length: 4", body=b"abcd"),
    "bare-lf-lines": b"POST /upload/a HTTP/1.1\nHost: x\nContent-Length: 4\n\nabcd",
    # Broken request lines.
    "space-in-target": b"POST /upload/a b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd",
    "ctl-in-target": b"POST /upload/a\x01b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd",
    "lowercase-method": b"post /upload/a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd",
    "connect-authority-form": b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: x\r\n\r\n",
}

LEGITIMATE = {
    "content-length": req(b"Content-Length: 4", body=b"abcd"),
    "chunked": req(b"Transfer-Encoding: chunked", body=CHUNKED_BODY),
    "chunked-upper-case": req(b"Transfer-Encoding: CHUNKED", body=CHUNKED_BODY),
    "chunked-tab-ows": req(b"Transfer-Encoding:\tchunked", body=CHUNKED_BODY),
    "chunk-extension": req(b"Transfer-Encoding: chunked", body=b"4;name=value\r\nabcd\r\n0\r\n\r\n"),
    "chunk-leading-zeros": req(b"Transfer-Encoding: chunked", body=b"0004\r\nabcd\r\n0\r\n\r\n"),
    "chunk-trailer": req(b"Transfer-Encoding: chunked", body=b"4\r\nabcd\r\n0\r\nX-Trailer: t\r\n\r\n"),
    "cl-trailing-ows": req(b"Content-Length: 4 ", body=b"abcd"),
    "obs-text-value": req(b"X-A: \x80\xff", b"Content-Length: 4", body=b"abcd"),
    # A request hidden in a body is body bytes, nothing else.
    "request-in-cl-body": req(b"Content-Length: %d" % len(SMUGGLED), body=SMUGGLED),
    "request-in-chunked-body": req(
        b"Transfer-Encoding: chunked", body=b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    ),
}


@pytest.fixture
def relay(hostile_relay: RelayUnderTest) -> Iterator[RelayUnderTest]:
    yield hostile_relay
    assert hostile_relay.healthy()


def new_uploads(relay: RelayUnderTest, before: set[str]) -> list[dict[str, object]]:
    return [upload for upload in relay.uploads() if upload["id"] not in before]


def assert_refused(result: Exchange) -> None:
    assert result.responses or result.closed, result.raw[:300]
    for response in result.responses:
        assert response.status in (400, 413, 414, 431), result.raw[:300]
        # The contract's JSON error (what httptools cannot parse too, not uvicorn's text/plain), with an id.
        error = response.json()
        assert isinstance(error, dict) and set(error["error"]) == {"code", "message"}, result.raw[:300]
        assert response.headers.get("x-upload-id"), result.raw[:300]
    assert len(result.responses) <= 1, result.raw[:500]


@pytest.mark.parametrize("request_bytes", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_framing_is_refused_and_never_forwarded(relay: RelayUnderTest, request_bytes: bytes) -> None:
    before = relay.upload_ids()
    result = exchange(relay.port, request_bytes)
    assert_refused(result)
    uploads = new_uploads(relay, before)
    assert len(uploads) <= 1
    # Refused from its headers ("rejected"), or begun and then aborted when the framing broke ("failed"): the
    # upstream saw at most an aborted request, never a complete one.
    assert all(upload["state"] in ("rejected", "failed") for upload in uploads), uploads


@pytest.mark.parametrize("request_bytes", list(LEGITIMATE.values()), ids=list(LEGITIMATE))
def test_legitimate_framing_is_one_request_upstream(relay: RelayUnderTest, request_bytes: bytes) -> None:
    before = relay.upload_ids()
    result = exchange(relay.port, request_bytes)
    assert result.statuses == [200], result.raw[:300]
    assert result.responses[0].json()["target"] == "/upload/a"
    (upload,) = new_uploads(relay, before)
    assert upload["state"] == "completed"


def test_pipelining_is_counted_as_two_requests(relay: RelayUnderTest) -> None:
    """The positive control: two real requests on one connection are two uploads; the method sees them."""
    before = relay.upload_ids()
    first = req(b"Content-Length: 4", body=b"abcd")
    second = req(b"Content-Length: 0", b"Connection: close", start=b"POST /upload/second HTTP/1.1\r\nHost: x\r\n")
    result = exchange(relay.port, first + second, min_responses=2)
    assert result.statuses == [200, 200]
    assert [r.json()["target"] for r in result.responses] == ["/upload/a", "/upload/second"]
    assert len(new_uploads(relay, before)) == 2


DESYNC = ["cl-then-te", "cl-conflicting", "obs-fold-hides-te", "cl-alpha", "chunk-missing-crlf", "chunk-non-hex"]


@pytest.mark.parametrize("hostile", DESYNC)
def test_a_good_request_then_a_desync_attempt_on_the_same_connection(relay: RelayUnderTest, hostile: str) -> None:
    """uvicorn parses the whole segment: the desync attempt is refused, and it may cost the good request its
    answer (uvicorn's 400 goes out and the connection closes), but it never becomes a request of its own, and
    the good request still ends in a terminal state with its id free again."""
    upload_id = f"desync-{hostile}"
    before = relay.upload_ids()
    good = req(b"X-Upload-ID: " + upload_id.encode(), b"Content-Length: 4", body=b"abcd")
    result = exchange(relay.port, good + HOSTILE[hostile])
    assert result.statuses in ([200], [200, 400], [400]), result.raw[:300]
    uploads = new_uploads(relay, before)
    assert len([u for u in uploads if u["state"] != "rejected"]) <= 1
    deadline = time.monotonic() + 2
    while any(u["state"] == "receiving" for u in uploads) and time.monotonic() < deadline:
        time.sleep(0.1)
        uploads = new_uploads(relay, before)
    assert all(u["state"] != "receiving" for u in uploads), uploads
    again = httpx.post(f"{relay.url}/upload/again", content=b"x", headers={"x-upload-id": upload_id}, timeout=10)
    assert again.status_code == 200


def test_http10_chunked_with_a_request_after_it_is_one_request(relay: RelayUnderTest) -> None:
    # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing; the connection must close after it.
    before = relay.upload_ids()
    request = b"POST /upload/a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED
    result = exchange(relay.port, request)
    assert len(result.responses) <= 1 and result.closed
    assert len(new_uploads(relay, before)) <= 1


# -- the upstream host comes only from configuration --------------------------------------------------------


@pytest.fixture(scope="module")
def decoy() -> Iterator[RunningServer]:
    """A second recorder: had the relay followed an absolute-form target or a Host header, it would land here."""
    server = start_test_upstream("recorder")
    yield server
    server.stop()


def decoy_connections(decoy: RunningServer) -> int:
    """Connections the decoy accepted before this probe (the probe itself is one)."""
    return int(httpx.post(f"{decoy.url}/probe", content=b"", timeout=10).json()["seen"]) - 1


def host_tricks(decoy: RunningServer) -> dict[str, tuple[bytes, str]]:
    d = decoy.url.removeprefix("http://").encode()
    body = b"Content-Length: 4\r\n\r\nabcd"
    return {
        "absolute-form": (b"POST http://%s/upload/x HTTP/1.1\r\nHost: x\r\n%s" % (d, body), "/upload/x"),
        "absolute-form-query": (
            b"POST http://%s/upload/x?q=1 HTTP/1.1\r\nHost: %s\r\n%s" % (d, d, body),
            "/upload/x?q=1",
        ),
        "absolute-form-https": (b"POST https://%s/upload/x HTTP/1.1\r\nHost: x\r\n%s" % (d, body), "/upload/x"),
        "absolute-form-userinfo": (b"POST http://x@%s/upload/x HTTP/1.1\r\nHost: x\r\n%s" % (d, body), "/upload/x"),
        "absolute-form-evil": (b"POST http://evil.example/upload/x HTTP/1.1\r\nHost: x\r\n%s" % body, "/upload/x"),
        "host-is-decoy": (b"POST /upload/x HTTP/1.1\r\nHost: %s\r\n%s" % (d, body), "/upload/x"),
        "two-hosts": (b"POST /upload/x HTTP/1.1\r\nHost: x\r\nHost: %s\r\n%s" % (d, body), "/upload/x"),
        "host-userinfo": (b"POST /upload/x HTTP/1.1\r\nHost: x@%s\r\n%s" % (d, body), "/upload/x"),
        "x-forwarded-host": (
            b"POST /upload/x HTTP/1.1\r\nHost: x\r\nX-Forwarded-Host: %s\r\n%s" % (d, body),
            "/upload/x",
        ),
        "forwarded": (b"POST /upload/x HTTP/1.1\r\nHost: x\r\nForwarded: host=%s\r\n%s" % (d, body), "/upload/x"),
        "no-host": (b"POST /upload/x HTTP/1.1\r\n%s" % body, "/upload/x"),
        "empty-host": (b"POST /upload/x HTTP/1.1\r\nHost:\r\n%s" % body, "/upload/x"),
    }


TRICKS = [
    "absolute-form",
    "absolute-form-query",
    "absolute-form-https",
    "absolute-form-userinfo",
    "absolute-form-evil",
    "host-is-decoy",
    "two-hosts",
    "host-userinfo",
    "x-forwarded-host",
    "forwarded",
    "no-host",
    "empty-host",
]


@pytest.mark.parametrize("trick", TRICKS)
def test_absolute_form_and_host_tricks_stay_on_the_configured_upstream(
    relay: RelayUnderTest, decoy: RunningServer, trick: str
) -> None:
    request, target = host_tricks(decoy)[trick]
    before = decoy_connections(decoy)
    result = exchange(relay.port, request)
    if result.statuses != [400]:  # refusing a trick is fine; following it is not
        assert result.statuses == [200], result.raw[:300]
        assert result.responses[0].json()["target"] == target  # origin-form, on the configured upstream
    assert decoy_connections(decoy) == before + 1  # only our own probe


def test_connect_never_opens_a_tunnel(relay: RelayUnderTest, decoy: RunningServer) -> None:
    d = decoy.url.removeprefix("http://").encode()
    before = decoy_connections(decoy)
    result = exchange(relay.port, b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (d, d))
    assert result.statuses in ([400], [404], [405]) or (not result.responses and result.closed)
    assert decoy_connections(decoy) == before + 1


# -- oversized request lines and headers --------------------------------------------------------------------

OVERSIZED = {
    "request-line-70k": b"POST /upload/" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
    "request-line-2m": b"POST /upload/" + b"a" * 2_000_000 + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
    "query-70k": b"POST /upload/x?" + b"q" * 70_000 + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
    "one-header-70k": req(b"X-Big: " + b"b" * 70_000, b"Content-Length: 1", body=b"x"),
    "9000-small-headers": req(*(b"X-%d: 1" % i for i in range(9000)), b"Content-Length: 1", body=b"x"),
    "header-name-70k": req(b"X-" + b"n" * 70_000 + b": 1", b"Content-Length: 1", body=b"x"),
}


@pytest.mark.parametrize("request_bytes", list(OVERSIZED.values()), ids=list(OVERSIZED))
def test_oversized_heads_get_431_and_the_relay_keeps_serving(relay: RelayUnderTest, request_bytes: bytes) -> None:
    before = relay.upload_ids()
    result = exchange(relay.port, request_bytes)
    if result.responses:  # a 2 MB line may be cut by a reset once the 431 is out; a bare close is allowed
        assert result.statuses in ([431], [414]), result.raw[:300]
        assert result.responses[0].json()["error"]["code"] == "headers_too_large"
    else:
        assert result.closed
    assert not new_uploads(relay, before)
    after = exchange(relay.port, req(b"Content-Length: 4", b"Connection: close", body=b"abcd"))
    assert after.statuses == [200]


def test_headers_just_under_the_cap_are_served(relay: RelayUnderTest) -> None:
    result = exchange(relay.port, req(b"X-Big: " + b"b" * 60_000, b"Content-Length: 4", body=b"abcd"))
    assert result.statuses == [200]
