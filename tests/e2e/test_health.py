"""The admin side of issue 16, through real relay processes: health a load balancer can use (HEAD, upstream
reachability checked in the background, 503 with --health-checks-upstream), records and metrics that do not
mislead (an upstream 500 after part of the body, status classes, client and path, build info), the
`?state=&limit=` filters, and the admin token's refusal saying what was wrong."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from relay.testing import RunningServer, start_relay, start_sink


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of Prometheus text; 0 when it is absent."""
    label_text = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    wanted = f"{name}{{{label_text}}}" if labels else name
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if not line.startswith("#") and key == wanted:
            return float(value)
    return 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FailingUpstream:
    """A real socket server that reads the request head and 64 KiB of body, answers 500, then drains the rest
    before closing (lingering close, so the answer reaches the relay)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def answer(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data or len(data) < 64 * 1024:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            body = b'{"upstream": "broke"}'
            conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            conn.settimeout(2)
            while conn.recv(65536):
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def sink() -> Iterator[RunningServer]:
    server = start_sink(None)
    yield server
    server.stop()


# -- health --------------------------------------------------------------------------------------------------


def test_head_health_is_200_without_a_body(sink: RunningServer) -> None:
    relay = start_relay("--admin-token", "secret", upstream=sink.url)
    try:
        response = httpx.head(f"{relay.url}/_relay/health", timeout=5)
        get = httpx.get(f"{relay.url}/_relay/health", timeout=5)
    finally:
        relay.stop()
    assert response.status_code == 200 and response.content == b""
    assert get.status_code == 200 and get.json()["status"] == "ok"


def wait_for_check(relay: RunningServer, url: str) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        report = httpx.get(f"{relay.url}/_relay/health", timeout=5).json()["upstreams"][url]
        if report["checked_at"] is not None:
            return dict(report)
        time.sleep(0.05)
    raise AssertionError(f"{url} never checked")


def test_health_reports_each_upstream_and_answers_at_once_while_one_is_down(
    sink: RunningServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    config = tmp_path_factory.mktemp("cfg") / "relay.toml"
    config.write_text(
        f'[[routes]]\nprefix = "/a/"\nupstream = "{sink.url}"\n[[routes]]\nprefix = "/b/"\nupstream = "{down}"\n'
    )
    relay = start_relay("--config", str(config))
    try:
        up_report, down_report = wait_for_check(relay, sink.url), wait_for_check(relay, down)
        started = time.monotonic()
        response = httpx.get(f"{relay.url}/_relay/health", timeout=5)
        elapsed = time.monotonic() - started
    finally:
        relay.stop()
    assert response.status_code == 200 and response.json()["status"] == "ok"  # without --health-checks-upstream
    assert up_report["reachable"] is True and up_report["error"] is None
    assert down_report["reachable"] is False and "refused" in str(down_report["error"]).lower(), down_report
    assert isinstance(down_report["checked_at"], float) and abs(down_report["checked_at"] - time.time()) < 30
    assert elapsed < 0.5  # read from the background check, never a connect on the request's path


def test_health_checks_upstream_is_503_until_an_upstream_answers() -> None:
    port = free_port()
    relay = start_relay("--health-checks-upstream", upstream=f"http://127.0.0.1:{port}")
    try:
        wait_for_check(relay, f"http://127.0.0.1:{port}")
        unavailable = httpx.get(f"{relay.url}/_relay/health", timeout=5)
        head = httpx.head(f"{relay.url}/_relay/health", timeout=5)
        sink = start_sink(None, "--port", str(port))  # the upstream comes up: the next check (<= 5 s) sees it
        try:
            deadline = time.monotonic() + 12
            while httpx.get(f"{relay.url}/_relay/health", timeout=5).status_code != 200:
                assert time.monotonic() < deadline, "the upstream was never seen again"
                time.sleep(0.2)
        finally:
            sink.stop()
    finally:
        relay.stop()
    assert unavailable.status_code == 503, unavailable.text
    assert unavailable.json()["status"] == "unavailable"
    assert unavailable.json()["upstreams"][f"http://127.0.0.1:{port}"]["reachable"] is False
    assert head.status_code == 503 and head.content == b""


# -- records and metrics ---------------------------------------------------------------------------------------


def test_an_upstream_500_after_part_of_the_body_is_counted_as_5xx() -> None:
    upstream = FailingUpstream()
    relay = start_relay(upstream=upstream.url)
    try:
        response = httpx.post(f"{relay.url}/upload/partial", content=b"x" * 4_000_000, timeout=20)
        ok = None
        sink = start_sink(None)
        good = start_relay(upstream=sink.url)
        try:
            ok = httpx.post(f"{good.url}/upload/fine", content=b"fine", timeout=20)
            good_metrics = httpx.get(f"{good.url}/_relay/metrics", timeout=5).text
        finally:
            good.stop()
            sink.stop()
        record = httpx.get(f"{relay.url}/_relay/uploads/{response.headers['x-upload-id']}", timeout=5).json()
        text = httpx.get(f"{relay.url}/_relay/metrics", timeout=5).text
    finally:
        relay.stop()
        upstream.close()
    assert response.status_code == 500
    assert record["state"] == "completed" and record["upstream_status"] == 500
    assert record["client"] == "127.0.0.1" and record["path"] == "/upload/partial"
    assert metric(text, "relay_uploads_total", outcome="completed") == 1
    assert metric(text, "relay_upstream_responses_total", status_class="5xx") == 1
    assert metric(text, "relay_upstream_responses_total", status_class="2xx") == 0
    assert ok is not None and ok.status_code == 200
    assert metric(good_metrics, "relay_upstream_responses_total", status_class="2xx") == 1


def test_build_info(sink: RunningServer) -> None:
    from importlib import metadata

    relay = start_relay(upstream=sink.url)
    try:
        text = httpx.get(f"{relay.url}/_relay/metrics", timeout=5).text
    finally:
        relay.stop()
    line = next(line for line in text.splitlines() if line.startswith("relay_build_info{"))
    assert f'version="{metadata.version("upload-relay")}"' in line and 'python="3.' in line and line.endswith(" 1.0")


# -- ?state=&limit= ---------------------------------------------------------------------------------------------


def test_uploads_filtered_by_state_and_limited(sink: RunningServer) -> None:
    relay = start_relay("--max-body-size", "10", upstream=sink.url)
    try:
        for number in range(3):
            httpx.post(f"{relay.url}/upload/ok{number}", content=b"small", timeout=5)
            httpx.post(f"{relay.url}/upload/big{number}", content=b"x" * 100, timeout=5)
        listing = httpx.get(f"{relay.url}/_relay/uploads", params={"state": "rejected", "limit": "2"}, timeout=5)
        completed = httpx.get(f"{relay.url}/_relay/uploads?state=completed", timeout=5)
        limited = httpx.get(f"{relay.url}/_relay/uploads?limit=1", timeout=5)
        bad = [
            httpx.get(f"{relay.url}/_relay/uploads?{query}", timeout=5)
            for query in ("state=done", "limit=0", "limit=x", "limit=-1", "limit=100000", "state=")
        ]
    finally:
        relay.stop()
    rejected = listing.json()["uploads"]
    assert [record["path"] for record in rejected] == ["/upload/big2", "/upload/big1"]
    assert all(record["state"] == "rejected" for record in rejected)
    assert sorted(record["path"] for record in completed.json()["uploads"]) == [f"/upload/ok{n}" for n in range(3)]
    assert len(limited.json()["uploads"]) == 1
    for response in bad:
        assert response.status_code == 400, response.request.url
        assert response.json()["error"]["code"] == "bad_request"


# -- the admin token ----------------------------------------------------------------------------------------------


def test_a_wrong_admin_token_is_told_it_is_invalid(sink: RunningServer) -> None:
    relay = start_relay("--admin-token", "right", upstream=sink.url)
    try:
        wrong = httpx.get(f"{relay.url}/_relay/uploads", headers={"authorization": "Bearer wrong"}, timeout=5)
        missing = httpx.get(f"{relay.url}/_relay/uploads", timeout=5)
        right = httpx.get(f"{relay.url}/_relay/uploads", headers={"authorization": "Bearer right"}, timeout=5)
    finally:
        relay.stop()
    assert wrong.status_code == 401 and "invalid" in wrong.json()["error"]["message"]
    assert missing.status_code == 401 and "required" in missing.json()["error"]["message"]
    assert right.status_code == 200


def test_upstreams_are_probed_only_once_health_is_asked_for() -> None:
    accepted: list[socket.socket] = []
    server = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{server.getsockname()[1]}"

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    relay = start_relay(upstream=url)
    try:
        time.sleep(0.5)
        before = len(accepted)  # nobody asked: the relay opened no connection of its own
        report = wait_for_check(relay, url)
    finally:
        relay.stop()
        server.close()
        for conn in accepted:
            conn.close()
    assert before == 0 and len(accepted) >= 1
    assert report["reachable"] is True
