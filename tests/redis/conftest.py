"""A real redis-server for the shared-state tests, on a free loopback port, with a throwaway config.

Not fakeredis: the point is a real server's behaviour (Lua, streams, blocking reads, a server that goes away).
Each test gets its own server (`redis_server`), which it may `stop()` (SIGTERM), `kill()` (SIGKILL) and
`start()` again on the same port; nothing is saved (`--save "" --appendonly no`), so a restart is an empty
Redis, the harshest case. The tests are skipped, saying why, where redis-server is not installed (.ci/run
installs it).
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from relay.testing import RunningServer, start_relay, start_sink

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, directory: Path) -> None:
        assert REDIS_SERVER is not None
        self.port = free_port()
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.started_once = False

    def start(self, timeout: float = 10.0) -> None:
        """Start (or start again, on the same port) and wait until this very process answers. The port was free
        when it was drawn, but another process (another test run on the machine) may take it meanwhile: a first
        start then moves to a new port; a restart cannot (the relays know the URL) and fails saying so."""
        for _ in range(5):
            if self._start_once(timeout):
                return
            if self.started_once:
                break
            self.port = free_port()
            self.url = f"redis://127.0.0.1:{self.port}/0"
        raise RuntimeError(f"redis-server did not start: {(self.directory / 'redis.log').read_text()[-2000:]}")

    def _start_once(self, timeout: float) -> bool:
        assert REDIS_SERVER is not None
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.directory), "--protected-mode", "yes", "--loglevel", "warning"]
        log = (self.directory / "redis.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False  # the port was taken (by someone else: we never answered)
            if self.answers():
                self.started_once = True
                return True
            time.sleep(0.02)
        self.stop(signal.SIGKILL)
        return False

    def answers(self) -> bool:
        """Whether this object's redis-server answers on the port (not another one that took the port)."""
        if self.proc is None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"INFO server\r\n")
                reply = b""
                while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                    data = sock.recv(65536)
                    if not data:
                        return False
                    reply += data
                found = re.search(rb"process_id:(\d+)", reply)
                return found is not None and int(found.group(1)) == self.proc.pid
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def command(self, *args: str) -> bytes:
        """One command with redis-cli-like simplicity: the raw reply (for INFO and the like)."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            reply = client.execute_command(*args)
        finally:
            client.close()
        return reply if isinstance(reply, bytes) else str(reply).encode()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (.ci/run installs it with apt-get)")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


class Relays:
    """Relays started with --redis against one Redis, each stopped by PID at the end of the test."""

    def __init__(self, redis: RedisServer, upstream: str) -> None:
        self.redis = redis
        self.upstream = upstream
        self.started: list[RunningServer] = []

    def start(self, *extra: str) -> RunningServer:
        relay = start_relay("--redis", self.redis.url, "--redis-prefix", "t:", *extra, upstream=self.upstream)
        self.started.append(relay)
        return relay

    def start_many(self, count: int, *extra: str) -> list[RunningServer]:
        """`count` relays started side by side (a relay takes seconds to start on a busy machine)."""
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(lambda _: self.start(*extra), range(count)))

    def stop_all(self) -> None:
        for relay in self.started:
            relay.stop()


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[RunningServer]:
    server = start_sink(tmp_path / "received")
    yield server
    server.stop()


@pytest.fixture
def relays(redis_server: RedisServer, sink: RunningServer) -> Iterator[Relays]:
    group = Relays(redis_server, sink.url)
    yield group
    group.stop_all()
