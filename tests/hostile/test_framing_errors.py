"""Answers HTTP cannot carry as they are, and framing errors in the middle of a body, over raw sockets.

From the upstream: a status outside 100-599 (uvicorn has no status line for it) becomes the relay's 502
`upstream_failed`; a 204 or 304 that declares a Content-Length goes to the client without one and without a body, and
the connection stays usable. From the client: a bad chunk size or trailers over 64 KiB in the middle of a body are
answered with the request's own upload id (the one it is recorded under, also when the bad bytes came in the head's
packet; a tus PATCH's: its path's, with Tus-Resumable) and recorded as that error, not as a client that went away
nor as a refusal the app found in the same request's headers; once the upstream's early answer has started, the
relay only closes (never a second response). Every refusal the server's
protocol answers itself (400, 408, 431) is counted in relay_rejections_total.

The upstream is a scripted one on a thread: what it does depends on the request's path.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from relay.testing import RunningServer, start_relay
from tests.hostile.conftest import Response, exchange, parse_responses

CHUNKED_HEAD = b"POST /upload/%s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n%s\r\n"


class ScriptedUpstream:
    """Answers by the request's path: /upload/status999, /upload/204body, /upload/304cl, /upload/early (413 right
    after the head, then reads and drops the body), /upload/silent (reads the body, never answers); anything else
    a plain 200. Keeps the heads it has read."""

    ANSWERS = {
        "status999": b"HTTP/1.1 999 Weird\r\nContent-Length: 2\r\n\r\nok",
        "204body": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        "304cl": b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 10\r\n\r\n',
        "ok": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    }

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(20)
            try:
                while True:  # keep-alive: one request after another on this connection
                    data = b""
                    while b"\r\n\r\n" not in data:
                        piece = conn.recv(65536)
                        if not piece:
                            return
                        data += piece
                    head, _, rest = data.partition(b"\r\n\r\n")
                    self.heads.append(head)
                    mode = head.split(b" ")[1].split(b"/")[-1].decode()
                    if mode == "early":
                        conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nnope")
                        self._drop_until_close(conn)
                        return
                    if mode == "silent":
                        self._drop_until_close(conn)
                        return
                    self._read_body(conn, head, rest)
                    conn.sendall(self.ANSWERS.get(mode, self.ANSWERS["ok"]))
            except OSError:
                return

    @staticmethod
    def _drop_until_close(conn: socket.socket) -> None:
        while conn.recv(65536):
            pass

    @staticmethod
    def _read_body(conn: socket.socket, head: bytes, rest: bytes) -> None:
        """Content-Length or chunked (to its last chunk, no trailers), enough for what these tests send."""
        lines = [line.lower() for line in head.split(b"\r\n")[1:]]
        length = next((int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length:")), None)
        chunked = any(line.startswith(b"transfer-encoding:") and b"chunked" in line for line in lines)
        if length is None and not chunked:
            return
        body = rest
        while len(body) < length if length is not None else not body.endswith(b"0\r\n\r\n"):
            piece = conn.recv(65536)
            if not piece:
                return
            body += piece

    def close(self) -> None:
        self.server.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def relay(upstream: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    spool = str(tmp_path_factory.mktemp("spool"))  # resumable uploads too
    server = start_relay("--max-body-size", "1MiB", "--header-timeout", "1", "--spool", spool, upstream=upstream.url)
    yield server
    server.stop()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def record(relay: RunningServer, upload_id: str) -> dict[str, object]:
    response = httpx.get(f"{relay.url}/_relay/uploads/{upload_id}", timeout=10)
    assert response.status_code == 200, (upload_id, response.text)
    data: dict[str, object] = response.json()
    return data


def error_code(upload: dict[str, object]) -> object:
    error = upload.get("error")
    return error.get("code") if isinstance(error, dict) else None


def rejections(relay: RunningServer, code: str) -> float:
    text = httpx.get(f"{relay.url}/_relay/metrics", timeout=10).text
    wanted = f'relay_rejections_total{{code="{code}"}}'
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    return 0.0


def read_until_closed(sock: socket.socket, timeout: float = 15.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not piece:
            return data
        data += piece


def post(path: str, body: bytes = b"hi", extra: bytes = b"") -> bytes:
    return b"POST /upload/%s HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n%s" % (
        path.encode(),
        extra,
        len(body),
        body,
    )


# -- the upstream's answers ------------------------------------------------------------------------------------


def test_an_upstream_status_outside_100_599_is_a_502(relay: RunningServer) -> None:
    result = exchange(relay.port, post("status999", extra=b"X-Upload-ID: weird-status\r\n"))
    assert result.statuses == [502], result.raw[:300]
    answer = result.responses[0]
    assert answer.headers["x-upload-id"] == "weird-status"
    assert answer.json() == {"error": {"code": "upstream_failed", "message": answer.json()["error"]["message"]}}  # type: ignore[index]
    upload = record(relay, "weird-status")
    assert upload["state"] == "failed" and error_code(upload) == "upstream_failed", upload
    assert "KeyError" not in relay.log()


@pytest.mark.parametrize("mode,status", [("204body", 204), ("304cl", 304)])
def test_a_bodyless_answer_loses_its_content_length_and_keeps_the_connection(
    relay: RunningServer, mode: str, status: int
) -> None:
    # Two requests on one connection: the second is answered only if the first left the connection usable.
    both = post(mode, extra=b"X-Upload-ID: bodyless-%s\r\n" % mode.encode()) + post("ok")
    result = exchange(relay.port, both, min_responses=2)
    assert result.statuses == [status, 200], result.raw[:500]
    first = result.responses[0]
    assert "content-length" not in first.headers and "transfer-encoding" not in first.headers, first.headers
    assert first.headers["x-upload-id"] == f"bodyless-{mode}"
    if status == 304:
        assert first.headers["etag"] == '"v1"'  # the rest of a 304's header fields pass through
    assert result.responses[1].body == b"ok"
    assert record(relay, f"bodyless-{mode}")["state"] == "completed"
    assert "Exception in ASGI application" not in relay.log()


# -- framing errors in the body -----------------------------------------------------------------------------------


def test_a_bad_chunk_mid_body_is_answered_with_the_requests_id(relay: RunningServer) -> None:
    before = rejections(relay, "bad_request")
    request = CHUNKED_HEAD % (b"silent", b"X-Upload-ID: bad-chunk-1\r\n") + b"5\r\nabcde\r\nZZ\r\n"
    result = exchange(relay.port, request)
    assert result.statuses == [400], result.raw[:300]
    assert result.responses[0].headers["x-upload-id"] == "bad-chunk-1"
    assert result.responses[0].json()["error"]["code"] == "bad_request"  # type: ignore[index]
    wait_for(lambda: record(relay, "bad-chunk-1")["state"] != "receiving", "the upload's end")
    upload = record(relay, "bad-chunk-1")
    assert upload["state"] == "failed" and error_code(upload) == "bad_request", upload
    assert rejections(relay, "bad_request") == before + 1  # counted once, by the protocol, not again by the app


def test_a_bad_chunk_carries_the_id_the_relay_drew(relay: RunningServer, upstream: ScriptedUpstream) -> None:
    marker = b"X-Marker: drawn-id\r\n"
    with socket.create_connection(("127.0.0.1", relay.port), timeout=15) as sock:
        sock.sendall(CHUNKED_HEAD % (b"silent", marker))

        def forwarded() -> bool:
            # The relay holds one chunk back: the head goes upstream once a later chunk is in. Then the app has
            # drawn its id.
            sock.sendall(b"5\r\nabcde\r\n")
            time.sleep(0.05)
            return any(b"x-marker: drawn-id" in head.lower() for head in upstream.heads)

        wait_for(forwarded, "the forward")
        sock.sendall(b"ZZ\r\n")
        responses = parse_responses(read_until_closed(sock))
    assert [response.status for response in responses] == [400]
    upload_id = responses[0].headers["x-upload-id"]
    wait_for(lambda: record(relay, upload_id)["state"] != "receiving", "the upload's end")
    upload = record(relay, upload_id)
    assert upload["state"] == "failed" and error_code(upload) == "bad_request", upload


def test_a_bad_chunk_in_the_heads_packet_carries_the_id_the_upload_is_recorded_under(relay: RunningServer) -> None:
    # Head and bad chunk in one write: the protocol answers before the app has run, so the id it gives is the one
    # it drew at the head, which the app then goes by.
    before = rejections(relay, "bad_request")
    result = exchange(relay.port, CHUNKED_HEAD % (b"silent", b"") + b"5\r\nabcde\r\nZZ\r\n")
    assert result.statuses == [400], result.raw[:300]
    upload_id = result.responses[0].headers["x-upload-id"]
    wait_for(lambda: httpx.get(f"{relay.url}/_relay/uploads/{upload_id}", timeout=10).status_code == 200, "a record")
    wait_for(lambda: record(relay, upload_id)["state"] != "receiving", "the upload's end")
    upload = record(relay, upload_id)
    assert upload["state"] == "failed" and error_code(upload) == "bad_request", upload
    assert rejections(relay, "bad_request") == before + 1


def test_a_request_refused_by_both_is_recorded_and_counted_as_the_protocols_answer(relay: RunningServer) -> None:
    # DELETE is not among the route's methods (405 from its headers), and its body's bad chunk is in the same packet:
    # the protocol has answered 400 before the app refuses; the record says what the client was told, counted once.
    codes = ("bad_request", "method_not_allowed")
    before = {code: rejections(relay, code) for code in codes}
    head = b"DELETE /upload/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nX-Upload-ID: both-refused\r\n\r\n"
    result = exchange(relay.port, head + b"5\r\nabcde\r\nZZ\r\n")
    assert result.statuses == [400], result.raw[:300]
    assert result.responses[0].headers["x-upload-id"] == "both-refused"
    wait_for(lambda: httpx.get(f"{relay.url}/_relay/uploads/both-refused", timeout=10).status_code == 200, "a record")
    upload = record(relay, "both-refused")
    assert upload["state"] == "rejected" and error_code(upload) == "bad_request", upload
    assert {code: rejections(relay, code) for code in codes} == {
        "bad_request": before["bad_request"] + 1,
        "method_not_allowed": before["method_not_allowed"],
    }


def test_a_bad_chunk_in_a_tus_patch_is_answered_as_that_upload_in_tus(relay: RunningServer) -> None:
    tus = b"Tus-Resumable: 1.0.0\r\n"
    creation = b"POST /upload/tus HTTP/1.1\r\nHost: x\r\n%sUpload-Length: 10\r\nContent-Length: 0\r\n\r\n" % tus
    created = exchange(relay.port, creation)
    assert created.statuses == [201], created.raw[:300]
    upload_id = created.responses[0].headers["x-upload-id"]
    patch = (
        b"PATCH /resumable/%s HTTP/1.1\r\nHost: x\r\n%sUpload-Offset: 0\r\nExpect: 100-continue\r\n"
        b"Content-Type: application/offset+octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        % (upload_id.encode(), tus)
    )
    with socket.create_connection(("127.0.0.1", relay.port), timeout=15) as sock:
        sock.sendall(patch)
        sock.settimeout(15)
        interim = b""
        while b"\r\n\r\n" not in interim:  # 100 Continue: the app has begun reading the append's body
            piece = sock.recv(65536)
            assert piece, interim
            interim += piece
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        sock.sendall(b"5\r\nabcde\r\nZZ\r\n")
        responses = parse_responses(interim.partition(b"\r\n\r\n")[2] + read_until_closed(sock))
    assert [response.status for response in responses] == [400], responses
    answer = responses[0]
    assert answer.headers["x-upload-id"] == upload_id
    assert answer.headers["tus-resumable"] == "1.0.0"
    assert answer.json()["error"]["code"] == "bad_request"  # type: ignore[index]


def test_trailers_over_the_limit_are_a_431_for_that_upload(relay: RunningServer) -> None:
    before = rejections(relay, "headers_too_large")
    trailers = b"X-Trailer: " + b"a" * 70_000 + b"\r\n\r\n"
    request = CHUNKED_HEAD % (b"silent", b"X-Upload-ID: big-trailers\r\n") + b"2\r\nhi\r\n0\r\n" + trailers
    result = exchange(relay.port, request)
    assert result.statuses == [431], result.raw[:300]
    assert result.responses[0].headers["x-upload-id"] == "big-trailers"
    wait_for(lambda: record(relay, "big-trailers")["state"] != "receiving", "the upload's end")
    upload = record(relay, "big-trailers")
    assert upload["state"] == "failed" and error_code(upload) == "headers_too_large", upload
    assert rejections(relay, "headers_too_large") == before + 1


def test_a_bad_chunk_after_an_early_answer_gets_no_second_response(relay: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", relay.port), timeout=15) as sock:
        sock.sendall(CHUNKED_HEAD % (b"early", b"X-Upload-ID: early-then-bad\r\n"))
        sock.settimeout(0.05)
        data = b""

        def answered() -> bool:
            # Chunks until the upstream's 413 is in whole (the relay holds one chunk back before the head leaves).
            nonlocal data
            sock.sendall(b"5\r\nabcde\r\n")
            try:
                piece = sock.recv(65536)
            except TimeoutError:
                return False
            assert piece, data
            data += piece
            responses = parse_responses(data)
            return bool(responses) and responses[0].body == b"nope"

        wait_for(answered, "the early answer")
        sock.sendall(b"ZZ\r\n")
        data += read_until_closed(sock)
    responses: list[Response] = parse_responses(data)
    assert [response.status for response in responses] == [413], data[:600]
    assert data.count(b"HTTP/1.1") == 1, data[:600]


# -- refusals the protocol answers itself, counted ---------------------------------------------------------------


def test_the_protocols_own_refusals_are_counted(relay: RunningServer) -> None:
    codes = ("bad_request", "headers_too_large", "client_timeout")
    before = {code: rejections(relay, code) for code in codes}
    assert exchange(relay.port, b"GARBAGE\r\n\r\n").statuses == [400]
    big = b"POST /upload/x HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 70_000 + b"\r\nContent-Length: 2\r\n\r\nhi"
    assert exchange(relay.port, big).statuses == [431]
    # Headers that never end: the --header-timeout of 1 s answers 408.
    assert exchange(relay.port, b"POST /upload/x HTTP/1.1\r\nHost: x\r\n").statuses == [408]
    after = {code: rejections(relay, code) for code in codes}
    assert after == {code: before[code] + 1 for code in codes}
