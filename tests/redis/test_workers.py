"""`relay-server --workers N --redis`: a supervisor and N relay processes on one port, end to end.

Real processes throughout: redis-server, the sample upstream, the supervisor and its forked workers (found as
the supervisor's children in /proc). Which worker served an upload is read where the relay itself writes it:
the `relay` field of the upload's hash in Redis (each worker is a relay with its own id). Covered: 32 concurrent
uploads byte-exact at the embedded upstream and spread over both workers, the start-up lines printed once;
a worker killed with SIGKILL mid-upload (the one whose pid holds the connections, read from /proc) is
restarted, its uploads break at once and end `failed` `relay_lost` within 30 s, the other worker's uploads
complete, and uploads go on; SIGTERM drains and exits 0, a second SIGINT exits 130; `--workers 2` without
`--redis` (flag, environment, config file) and workers that cannot start are one line on stderr and exit 2.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from relay.testing import RunningServer, start_relay
from relay.workers import RestartPolicy
from tests.redis.conftest import RedisServer
from tests.redis.test_relays import record, slow_body, upload, wait_for


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def served_by(redis: RedisServer, upload_id: str) -> str:
    """The id of the relay (here: the worker) that wrote the upload's record."""
    return redis.command("HGET", f"w:upload:{upload_id}", "relay").decode()


def wait_state(relay: RunningServer, upload_id: str, state: str, timeout: float) -> None:
    wait_for(lambda: (record(relay, upload_id) or {}).get("state") == state, timeout, f"{upload_id} {state}")


def wait_owner(redis: RedisServer, upload_id: str) -> str:
    wait_for(lambda: served_by(redis, upload_id) != "", 5, f"the record of {upload_id} in Redis")
    return served_by(redis, upload_id)


@pytest.fixture
def supervisors(redis_server: RedisServer) -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def start(*extra: str, upstream: str | None = None) -> RunningServer:
        relay = start_relay(
            "--workers", "2", "--redis", redis_server.url, "--redis-prefix", "w:", *extra, upstream=upstream
        )
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop(timeout=40)


def test_two_workers_share_32_concurrent_uploads(
    supervisors: Callable[..., RunningServer], redis_server: RedisServer, tmp_path: Path
) -> None:
    store = tmp_path / "received"
    relay = supervisors("--store", str(store))
    log = relay.log()
    assert log.count("listening on") == 1 and "(2 workers)" in log, log
    assert log.count("embedded sample upstream") == 1, log
    assert len(children(relay.pid)) == 3  # two workers and one embedded upstream, not one per worker
    bodies = {f"many-{index}": os.urandom(256 * 1024 + index) for index in range(32)}

    def one(upload_id: str) -> int:
        chunks = [bodies[upload_id][at : at + 64 * 1024] for at in range(0, len(bodies[upload_id]), 64 * 1024)]
        return upload(relay, upload_id, _paced(chunks)).status_code

    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(one, bodies))
    assert statuses == [200] * 32
    for upload_id, body in bodies.items():  # byte-exact at the upstream
        stored = (store / upload_id / upload_id).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(body).hexdigest()
    time.sleep(0.3)  # the last flush to Redis
    spread = Counter(served_by(redis_server, upload_id) for upload_id in bodies)
    print("uploads per worker:", sorted(spread.values()))
    assert len(spread) == 2 and "" not in spread, spread


def _paced(chunks: list[bytes]) -> Iterator[bytes]:
    for chunk in chunks:  # slow enough that the 32 uploads overlap
        yield chunk
        time.sleep(0.02)


class SlowUpload:
    """A raw-socket upload of `chunks` x 64 KiB, one chunk every 0.1 s: its client port tells which worker holds
    it (`held_by`), and `outcome` is the status code it got or "broken" when the connection broke under it."""

    SIZE = 64 * 1024

    def __init__(self, relay: RunningServer, upload_id: str, chunks: int = 300) -> None:
        self.upload_id = upload_id
        self.chunks = chunks
        url = httpx.URL(relay.url)
        self.sock = socket.create_connection((url.host, url.port), timeout=60)
        self.port = self.sock.getsockname()[1]
        self.outcome: str | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        head = (
            f"POST /upload/{self.upload_id} HTTP/1.1\r\nHost: relay\r\nX-Upload-ID: {self.upload_id}\r\n"
            f"Content-Length: {self.chunks * self.SIZE}\r\nConnection: close\r\n\r\n"
        )
        try:
            self.sock.sendall(head.encode())
            for index in range(self.chunks):
                self.sock.sendall(bytes([index % 251]) * self.SIZE)
                time.sleep(0.1)
            status = self.sock.recv(64).split(b" ")[1:2]
            self.outcome = status[0].decode() if status else "broken"
        except OSError:
            self.outcome = "broken"
        finally:
            self.sock.close()


def held_by(pids: list[int], relay_port: int) -> dict[int, int]:
    """Client port -> the pid holding the server side of that connection (from /proc: socket inodes of each
    process's fds, matched with the established TCP sockets whose local port is the relay's)."""
    peers: dict[str, int] = {}  # socket inode -> client port
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == relay_port and fields[3] == "01":
            peers[fields[9]] = int(fields[2].split(":")[1], 16)
    held: dict[int, int] = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            inode = target.removeprefix("socket:[").removesuffix("]")
            if target.startswith("socket:[") and inode in peers:
                held[peers[inode]] = pid
    return held


@pytest.mark.slow
def test_sigkill_of_a_worker_mid_upload(
    supervisors: Callable[..., RunningServer], redis_server: RedisServer, sink: RunningServer, tmp_path: Path
) -> None:
    relay = supervisors(upstream=sink.url)
    relay_port = httpx.URL(relay.url).port
    assert relay_port is not None
    workers = children(relay.pid)
    assert len(workers) == 2
    # Slow uploads, two at a time, until both workers hold some (the kernel hashes each connection to one of them).
    uploads: list[SlowUpload] = []
    holders: dict[int, int] = {}
    while len(set(holders.values())) < 2:
        assert len(uploads) < 24, holders
        uploads += [SlowUpload(relay, f"slow-{len(uploads) + extra}") for extra in range(2)]
        for started in uploads[-2:]:
            wait_state(relay, started.upload_id, "receiving", 10)
        holders = held_by(workers, relay_port)
    assert sorted(holders) == sorted(each.port for each in uploads), (holders, [each.port for each in uploads])
    victim = workers[0]
    lost = [each for each in uploads if holders[each.port] == victim]
    survivors = [each for each in uploads if holders[each.port] != victim]
    owner = {each.upload_id: wait_owner(redis_server, each.upload_id) for each in uploads}
    lost_relay = owner[lost[0].upload_id]  # the worker's relay id: one per worker, none shared
    assert {owner[each.upload_id] for each in lost} == {lost_relay}, owner
    assert lost_relay not in {owner[each.upload_id] for each in survivors}, owner
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: len(set(children(relay.pid)) - set(workers)) == 1, 10, "a new worker")
    assert f"(pid {victim}) was killed by SIGKILL; restarting" in relay.log()
    # The killed worker's uploads broke at their clients at once, and end `failed` `relay_lost` within 30 s.
    wait_for(lambda: all(each.outcome == "broken" for each in lost), 5, "the killed worker's uploads broken")
    for each in lost:
        wait_state(relay, each.upload_id, "failed", 35)
        got = record(relay, each.upload_id)
        assert got is not None and got["error"]["code"] == "relay_lost"
    assert time.monotonic() - killed_at < 30
    # Uploads keep working, on both workers, the new one included.
    after = {f"after-{index}": os.urandom(100_000) for index in range(12)}
    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(lambda item: upload(relay, item[0], item[1]).status_code, after.items()))
    assert statuses == [200] * 12
    for upload_id, body in after.items():
        stored = (tmp_path / "received" / upload_id / upload_id).read_bytes()
        assert stored == body
    time.sleep(0.3)
    new_owners = {served_by(redis_server, upload_id) for upload_id in after}
    assert len(new_owners) == 2 and lost_relay not in new_owners, (new_owners, lost_relay)
    # The other worker's uploads were never touched: they complete.
    for each in survivors:
        each.thread.join(60)
    outcomes = {each.upload_id: each.outcome for each in survivors}
    assert set(outcomes.values()) == {"200"}, (outcomes, relay.log()[-3000:])


def test_sigterm_drains_and_exits_0(supervisors: Callable[..., RunningServer], sink: RunningServer) -> None:
    relay = supervisors(upstream=sink.url)
    workers = children(relay.pid)
    done: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: done.append(upload(relay, "drained-1", slow_body(30, pause=0.1))))
    thread.start()
    wait_state(relay, "drained-1", "receiving", 10)
    relay.proc.send_signal(signal.SIGTERM)
    assert relay.proc.wait(30) == 0
    thread.join(10)
    assert done and done[0].status_code == 200 and done[0].json()["bytes"] == 30 * 64 * 1024
    for pid in workers:  # every worker has exited (and was reaped by the supervisor)
        assert not Path(f"/proc/{pid}").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{relay.url}/_relay/health", timeout=5)


def test_second_sigint_forces_the_quit_130(supervisors: Callable[..., RunningServer], sink: RunningServer) -> None:
    relay = supervisors("--drain-timeout", "60", upstream=sink.url)
    outcome: list[str] = []

    def slow() -> None:
        try:
            outcome.append(str(upload(relay, "cut-1", slow_body(600, pause=0.1)).status_code))
        except httpx.HTTPError as exc:
            outcome.append(type(exc).__name__)

    thread = threading.Thread(target=slow, daemon=True)
    thread.start()
    wait_state(relay, "cut-1", "receiving", 10)
    relay.proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert relay.proc.poll() is None  # draining: the upload goes on
    relay.proc.send_signal(signal.SIGINT)
    assert relay.proc.wait(15) == 130
    thread.join(10)
    assert outcome and outcome[0] != "200"


def run_relay(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("where", ["flag", "environment", "config"])
def test_workers_without_redis_is_one_line_and_exit_2(where: str, tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text("[server]\nworkers = 2\n")
    args = {"flag": ["--workers", "2"], "environment": [], "config": ["--config", str(config)]}[where]
    env = {"RELAY_WORKERS": "2"} if where == "environment" else {}
    proc = run_relay("--upstream", "http://127.0.0.1:9", *args, env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--redis" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert "listening on" not in proc.stdout


def test_port_in_use_is_one_line_and_exit_2(
    supervisors: Callable[..., RunningServer], redis_server: RedisServer, sink: RunningServer
) -> None:
    # SO_REUSEPORT alone would let a second supervisor of the same user share the port without a word.
    first = supervisors(upstream=sink.url)
    proc = run_relay("--port", str(first.port), "--workers", "2", "--redis", redis_server.url, "--upstream", sink.url)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot listen" in lines[0] and "in use" in lines[0], proc.stderr


def test_workers_that_cannot_start_give_up_with_one_line(redis_server: RedisServer, tmp_path: Path) -> None:
    # The spool is opened by each worker's app at start-up: a path under a file fails there, every time.
    spool = "/dev/null/spool"
    proc = run_relay(
        "--workers", "2", "--redis", redis_server.url, "--spool", spool, "--upstream", "http://127.0.0.1:9"
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("relay-server: error: workers keep exiting") and "giving up" in last, proc.stderr
    assert "Traceback" not in proc.stderr and "listening on" not in proc.stdout


def test_restart_policy_backs_off_and_gives_up() -> None:
    policy = RestartPolicy(first_delay=0.1, max_delay=1.0, stable_after=10.0, give_up_after=3)
    assert policy.died(was_ready=True, lived=1.0, last_delay=0.0) == 0.1
    assert policy.died(was_ready=True, lived=1.0, last_delay=0.1) == 0.2
    assert policy.died(was_ready=True, lived=1.0, last_delay=0.8) == 1.0  # capped
    assert policy.died(was_ready=True, lived=60.0, last_delay=1.0) == 0.1  # it served a while: start over
    assert policy.died(was_ready=False, lived=0.5, last_delay=0.1) == 0.2
    assert policy.died(was_ready=False, lived=0.5, last_delay=0.2) == 0.4
    policy.ready()  # any worker ready: the count of failed starts begins again
    assert policy.died(was_ready=False, lived=0.5, last_delay=0.4) == 0.8
    assert policy.died(was_ready=False, lived=0.5, last_delay=0.8) == 1.0
    assert policy.died(was_ready=False, lived=0.5, last_delay=1.0) is None
