"""relay-server --workers N: a supervisor process and N relay processes serving one port.

Theory of operation
-------------------
The supervisor (this module, in the process the user started) does the start-up checks once, binds, and forks:
  - N listening sockets on the same host:port, each with SO_REUSEPORT (`bind_shared`); worker i serves socket i
    and the kernel spreads new connections across them by a hash of the address pair. A single shared socket
    was measured first: uvloop (libuv) accepts until EAGAIN, so whichever worker woke first took a whole burst
    (32 concurrent uploads went 32/0 in 2 rounds of 5). The supervisor keeps its copy of every socket, so a
    dead worker's queued connections wait for its successor instead of being reset.
  - the embedded sample upstream (relay-sink), when a route has no upstream: one process for all workers.
  - N workers, each a whole relay (its own RelayApp, its own relay id on the shared Redis).
Every child is in its own process group, so a terminal's Ctrl-C reaches the supervisor only, which forwards
SIGTERM/SIGINT to each worker: one signal is the graceful drain, a second SIGINT the forced quit, as in a single
relay. Children are forked with SIGINT/SIGTERM blocked and unblock them once uvicorn's handlers are in place
(when the worker is ready), so a signal forwarded during start-up is delayed, never swallowed. A child also
gets SIGTERM when the supervisor dies (PR_SET_PDEATHSIG).

Rules:
  1. A worker that exits while the relay is not draining is restarted after a backoff (`RestartPolicy`):
     0.1 s doubling to 5 s while it keeps dying within 10 s of its start.
  2. Workers that die before ready GIVE_UP_AFTER times in a row (any worker) mean a start-up that cannot
     succeed: the supervisor stops everything and exits with one line on stderr (2 before the relay was ever
     ready, 1 after).
  3. The start-up lines are printed once, when every worker is ready.
  4. After SIGTERM/SIGINT nothing is restarted; the supervisor closes its sockets (new connections are refused
     once the workers close theirs), waits for every worker, then stops the embedded upstream. A worker still
     running KILL_GRACE seconds after the drain timeout is killed. Exit code: 130 when a second SIGINT forced
     the quit, 0 when every worker drained cleanly, 1 otherwise.
"""

from __future__ import annotations

import ctypes
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import NoReturn

from relay.server import bind_socket

__all__ = ["GIVE_UP_AFTER", "Pool", "RestartPolicy", "bind_shared", "supervise"]

log = logging.getLogger("relay.workers")
GIVE_UP_AFTER = 5
KILL_GRACE = 10.0
FORCED_EXIT = 130
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class Pool:
    """What the supervisor runs: `serve(sock, on_ready)` is one relay on a socket (True: forced quit), `sink()`
    the embedded upstream until SIGTERM, `announce()` prints the start-up lines."""

    sockets: list[socket.socket]
    serve: Callable[[socket.socket, Callable[[], None]], bool]
    announce: Callable[[], None]
    sink: Callable[[Callable[[], None]], object] | None = None
    drain_timeout: float = 30.0
    prog: str = "relay-server"


@dataclass(slots=True)
class RestartPolicy:
    """When to restart a worker that died, and when to give up. Pure: fed with facts, answers delays."""

    first_delay: float = 0.1
    max_delay: float = 5.0
    stable_after: float = 10.0  # a worker that lived this long did not die of a bad start
    give_up_after: int = GIVE_UP_AFTER
    failed_starts: int = 0  # deaths before ready in a row, any worker

    def ready(self) -> None:
        self.failed_starts = 0

    def died(self, *, was_ready: bool, lived: float, last_delay: float) -> float | None:
        """The delay before the restart, or None: give up."""
        if not was_ready:
            self.failed_starts += 1
            if self.failed_starts >= self.give_up_after:
                return None
        if lived >= self.stable_after or last_delay <= 0:
            return self.first_delay
        return min(last_delay * 2, self.max_delay)


def bind_shared(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` listening sockets on one port with SO_REUSEPORT (OSError as `bind_socket` raises it)."""
    # A plain bind first: SO_REUSEPORT alone would quietly share a port another relay of this user listens on.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        port = probe.getsockname()[1]
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(bind_socket(host, port, reuse_port=True))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


@dataclass(eq=False, slots=True)
class _Child:
    name: str
    run: Callable[[Callable[[], None]], object]  # gets on_ready; its result: forced quit or not
    keep: socket.socket | None = None  # the one listening socket this child serves
    pid: int | None = None
    last_pid: int = 0
    ready: bool = False
    started: float = 0.0
    delay: float = 0.0
    restart_at: float | None = None
    exit_code: int | None = None


@dataclass
class _Supervisor:
    pool: Pool
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    signals: list[int] = field(default_factory=list)
    draining: bool = False
    forced: bool = False
    announced: bool = False
    gave_up: str | None = None
    kill_at: float | None = None

    def __post_init__(self) -> None:
        self.workers = [_Child(f"worker {i + 1}", self._worker(sock), sock) for i, sock in enumerate(self.pool.sockets)]
        self.sink = _Child("embedded upstream", self.pool.sink) if self.pool.sink is not None else None
        self.ready_r, self.ready_w = os.pipe()
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.ready_r, self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.ready_r, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)

    def _worker(self, sock: socket.socket) -> Callable[[Callable[[], None]], object]:
        return lambda on_ready: self.pool.serve(sock, on_ready)

    def run(self) -> int:
        for signum in (*_STOP_SIGNALS, signal.SIGCHLD):
            signal.signal(signum, self._on_signal)
        signal.set_wakeup_fd(self.wake_w)
        if self.sink is not None:
            self._start(self.sink)
        for worker in self.workers:
            self._start(worker)
        while self._alive(self.workers) or (not self.draining and self.gave_up is None):
            self._step()
        self._stop_sink()
        return self._exit_code()

    def _step(self) -> None:
        now = time.monotonic()
        due = [c.restart_at for c in self._children() if c.restart_at is not None] + [self.kill_at or now + 1.0]
        for key, _ in self.selector.select(max(0.0, min(due) - now)):
            if key.fd == self.ready_r:
                self._read_ready()
            else:
                _drain_pipe(self.wake_r)
        while self.signals:
            self._forward(self.signals.pop(0))
        self._reap()
        self._restart_due()
        if self.kill_at is not None and time.monotonic() >= self.kill_at:
            self._kill_stragglers()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum != signal.SIGCHLD:
            self.signals.append(signum)

    def _forward(self, signum: int) -> None:
        if self.draining and signum == signal.SIGINT:
            self.forced = True
        if not self.draining:
            self._begin_drain(f"{signal.Signals(signum).name}: draining the workers")
        for worker in self._alive(self.workers):
            _signal(worker, signum)

    def _begin_drain(self, why: str) -> None:
        log.info("%s: %s", self.pool.prog, why)
        self.draining = True
        self.kill_at = time.monotonic() + self.pool.drain_timeout + KILL_GRACE
        for worker in self.workers:
            worker.restart_at = None
        for sock in self.pool.sockets:
            sock.close()  # the workers' copies close as they drain: new connections are refused after

    def _read_ready(self) -> None:
        try:
            indexes = os.read(self.ready_r, 4096)
        except BlockingIOError:
            return
        for index in indexes:
            self.workers[index].ready = True
            self.policy.ready()
        if not self.announced and not self.draining and all(worker.ready for worker in self.workers):
            self.announced = True
            self.pool.announce()

    def _reap(self) -> None:
        for child in self._children():
            if child.pid is None:
                continue
            pid, status = os.waitpid(child.pid, os.WNOHANG)
            if pid == 0:
                continue
            child.pid = None
            child.exit_code = os.waitstatus_to_exitcode(status)
            if not self.draining:
                self._died(child)

    def _died(self, child: _Child) -> None:
        lived = time.monotonic() - child.started
        delay = self.policy.died(was_ready=child.ready or child is self.sink, lived=lived, last_delay=child.delay)
        how = _describe(child.exit_code)
        if delay is None:
            self.gave_up = (
                f"{self.policy.failed_starts} workers in a row exited before they were ready"
                f" (the last: {child.name} {how})"
            )
            self._begin_drain("giving up")
            for worker in self._alive(self.workers):
                _signal(worker, signal.SIGTERM)
            return
        log.warning("%s: %s (pid %d) %s; restarting in %.1f s", self.pool.prog, child.name, child.last_pid, how, delay)
        child.delay = delay
        child.ready = False
        child.restart_at = time.monotonic() + delay

    def _restart_due(self) -> None:
        now = time.monotonic()
        for child in self._children():
            if child.restart_at is not None and child.restart_at <= now and not self.draining:
                child.restart_at = None
                self._start(child)

    def _start(self, child: _Child) -> None:
        index = self.workers.index(child) if child in self.workers else None
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        pid = os.fork()
        if pid == 0:
            self._become(child, index)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        child.pid, child.last_pid, child.started, child.exit_code = pid, pid, time.monotonic(), None

    def _become(self, child: _Child, index: int | None) -> NoReturn:
        """In the forked child: leave the supervisor's signals, fds and sockets behind, then run."""
        code = 1
        try:
            _detach(os.getppid())
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for signum in _STOP_SIGNALS:
                signal.signal(signum, lambda *_: None)
            self.selector.close()
            for fd in (self.ready_r, self.wake_r, self.wake_w):
                os.close(fd)
            for sock in self.pool.sockets:
                if sock is not child.keep:
                    sock.close()
            code = FORCED_EXIT if child.run(self._on_ready(index)) is True else 0
        except SystemExit as exc:  # uvicorn exits 3 when the app's start-up fails, having logged why
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("%s: %s failed", self.pool.prog, child.name)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _on_ready(self, index: int | None) -> Callable[[], None]:
        def ready() -> None:
            if index is not None:
                os.write(self.ready_w, bytes([index]))
            # uvicorn's handlers are in place now: a signal forwarded meanwhile is delivered to them.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

        return ready

    def _kill_stragglers(self) -> None:
        self.kill_at = None
        for worker in self._alive(self.workers):
            log.warning("%s: %s (pid %d) outlived the drain; killing it", self.pool.prog, worker.name, worker.pid)
            _signal(worker, signal.SIGKILL)

    def _stop_sink(self) -> None:
        if self.sink is None or self.sink.pid is None:
            return
        _signal(self.sink, signal.SIGTERM)
        if self.forced:
            _signal(self.sink, signal.SIGINT)
        deadline = time.monotonic() + self.pool.drain_timeout + KILL_GRACE
        while self.sink.pid is not None:
            pid, _ = os.waitpid(self.sink.pid, os.WNOHANG)
            if pid:
                self.sink.pid = None
            elif time.monotonic() > deadline:
                _signal(self.sink, signal.SIGKILL)
                deadline = float("inf")
            else:
                time.sleep(0.02)

    def _exit_code(self) -> int:
        if self.gave_up is not None:
            print(f"{self.pool.prog}: error: workers keep exiting: {self.gave_up}; giving up", file=sys.stderr)
            return 1 if self.announced else 2
        codes = {worker.exit_code for worker in self.workers}
        if self.forced or FORCED_EXIT in codes:
            return FORCED_EXIT
        return 0 if codes <= {0} else 1

    def _children(self) -> list[_Child]:
        return [*self.workers, *([self.sink] if self.sink is not None else [])]

    @staticmethod
    def _alive(children: list[_Child]) -> list[_Child]:
        return [child for child in children if child.pid is not None]


def _signal(child: _Child, signum: int) -> None:
    if child.pid is not None:
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            pass  # exited; reaped on the next step


def _detach(parent: int) -> None:
    """Own process group (the terminal's Ctrl-C is the supervisor's to forward); SIGTERM if the parent dies."""
    os.setpgid(0, 0)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: an orphaned worker drains when its listening socket is closed
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _describe(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def supervise(pool: Pool) -> int:
    """Run the workers (and the embedded upstream) until they have all exited; the exit code."""
    return _Supervisor(pool).run()
