"""The upload relay's benchmark suite: one command, one interleaved run, a Markdown table and a PNG chart.

    python benchmarks/run.py                    # full run: 1 GiB x 3 reps, memory up to 4 GiB (~5 min)
    python benchmarks/run.py --quick            # smoke run: 4 MiB, 1 rep, nginx skipped (~20 s)
    python benchmarks/run.py --size 256MiB --reps 5 --out /tmp/bench-out
    python benchmarks/run.py --only scaleout    # the scale-out sections alone (benchmarks/scaleout.py)

It starts, each in its own process group, and stops them all at the end:
  - the upstream: `benchmarks/upstream.py`, a raw asyncio discard server (`--upstream relay-sink` uses
    `relay-sink --discard` instead; the `sink-check` path compares the two, direct, in every run);
  - `relay-server --digest sha256` (inspection + sha256, the default) and `relay-server --digest none`,
    both from the same environment as the Python running this script;
  - nginx with `proxy_request_buffering off` and default (16k) body buffers, when `nginx` is on PATH;
  - any `--relay NAME='CMD'` (placeholders {port}, {upstream}, {python}) for prototypes.
It then measures, every pass interleaving the paths (A B C A B C ...):
  - throughput: raw body with Content-Length (`curl -T`), chunked (`curl -T - < file`) and multipart
    (`curl -F`): median/min/max MB/s, ratios vs direct and nginx, relay CPU-s/GiB, page faults/GiB, peak RSS;
  - memory: relay peak RSS for 16 MiB, 256 MiB, 1 GiB and 4 GiB uploads;
  - concurrency: 32 concurrent 64 MiB uploads (`curl -Z`), aggregate MB/s and peak RSS;
  - small uploads: 2,000 keep-alive uploads of 1 KiB from a raw-socket client, p50/p99 latency;
  - resumable (tus) uploads of the same 1 GiB file, in the throughput reps (benchmarks/resumable.py): one append,
    16 MiB appends, and the plain upload by the same raw-socket sender as reference; ratios to the plain upload,
    spool write MB/s, relay CPU-s/GiB; and one-append uploads in the memory section (peak RSS, 16 MiB to 4 GiB).
    The relays run with `--spool <run dir>` (the data's disk) and forward finished resumable uploads raw;
  - scale-out (issue 12, benchmarks/scaleout.py, with its own redis-server and SeaweedFS): `--workers 2 --redis`
    against nginx with 2 workers under 32 x 64 MiB concurrent uploads (per worker RSS, CPU and uploads); 1 KiB
    latency and CPU-s/GiB with and without `--redis`; resumable uploads on an S3 spool against the disk spool.
Every upload is checked: HTTP 200 and the byte count the upstream reports must equal the bytes sent.
Peak RSS is VmHWM summed over the server's process tree, reset through /proc/PID/clear_refs before each
upload; CPU is utime+stime of the tree from /proc/PID/stat. Linux only; needs curl. The chart needs
matplotlib (the `bench` extra) and is skipped without it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import resumable
import scaleout

HERE = Path(__file__).resolve().parent
PY = sys.executable
BIN = Path(sys.executable).parent
CLK = os.sysconf("SC_CLK_TCK")
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
URL_PATH = "/upload/bench"
CURL_W = "%{http_code} %{size_upload} %{time_total}"
WORKLOADS = {
    "raw": "raw, Content-Length (`curl -T`)",
    "chunked": "raw, chunked (`curl -T - <file`)",
    "multipart": "multipart (`curl -F`)",
}

NGINX_CONF = """daemon off;
master_process on;
worker_processes {workers};
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {run}/client_body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    upstream sink {{ server 127.0.0.1:{upstream_port}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        proxy_request_buffering off;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location / {{ proxy_pass http://sink; }}
    }}
}}
"""


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)(i?B)?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 4MiB, 1GiB)")
    return int(float(m.group(1)) * {"": 1, "K": KiB, "M": MiB, "G": GiB}[m.group(2).upper()])


def label(n: int) -> str:
    for unit, k in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= k and n % k == 0:
            return f"{n // k} {unit}"
    return f"{n} B"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------- /proc
def proc_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _stat(pids: list[int]) -> tuple[float, int]:
    cpu, faults = 0, 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        faults += int(fields[7])
        cpu += int(fields[11]) + int(fields[12])
    return cpu / CLK, faults


def status_kib(pids: list[int], field: str) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
    return total


def reset_hwm(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")


# --------------------------------------------------------------------------------------------- servers
class Server:
    def __init__(
        self,
        name: str,
        cmd: list[str] | str,
        port: int,
        logdir: Path,
        env: dict[str, str] | None = None,
        grace: float = 10,
    ) -> None:
        self.name, self.cmd, self.port = name, cmd, port
        self.log = logdir / f"{name}.log"
        self.env = {**os.environ, **env} if env else None
        self.grace = grace  # seconds between SIGTERM and SIGKILL at stop()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> Server:
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(
                self.cmd,
                shell=isinstance(self.cmd, str),
                executable=None,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=self.env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                time.sleep(0.3)
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on port {self.port}; see {self.log}")

    def pids(self) -> list[int]:
        return proc_tree(self.proc.pid) if self.proc and self.proc.poll() is None else []

    def stop(self) -> None:
        self.terminate()
        self.wait_stopped()

    def terminate(self) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)  # its own process group (start_new_session)

    def wait_stopped(self) -> None:
        if not self.proc:
            return
        try:
            self.proc.wait(self.grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def tool(name: str) -> str:
    """A console script from this environment, else from PATH."""
    local = BIN / name
    return str(local) if local.exists() else (shutil.which(name) or name)


# --------------------------------------------------------------------------------------------- data
def data_file(data_dir: Path, size: int) -> Path:
    """Random bytes, made once: a 64 MiB block from a seeded generator, repeated (never committed)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"data_{size}.bin"
    if path.exists() and path.stat().st_size == size:
        return path
    if shutil.disk_usage(data_dir).free < size + GiB:
        sys.exit(f"not enough space in {data_dir} for {label(size)}")
    log(f"generating {path} ({label(size)}) ...")
    block = random.Random(20261124).randbytes(min(size, 64 * MiB))
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        left = size
        while left:
            f.write(block[: min(left, len(block))])
            left -= min(left, len(block))
    tmp.rename(path)
    return path


# --------------------------------------------------------------------------------------------- clients
def curl_cmd(workload: str, url: str, path: Path, resp: Path) -> list[str]:
    base = ["curl", "-sS", "-o", str(resp), "-w", CURL_W]
    if workload == "raw":
        return [*base, "-T", str(path), url]
    if workload == "chunked":
        return [*base, "-T", "-", url]
    return [*base, "-F", f"file=@{path}", url]


class RawClient:
    """A keep-alive HTTP/1.1 client on a plain socket, for small-upload latency (no client library noise)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def post(self, body: bytes) -> tuple[int, bytes]:
        head = (
            f"POST {URL_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.sock.sendall(head + body)
        while b"\r\n\r\n" not in self.buf:
            more = self.sock.recv(65536)
            if not more:
                raise ConnectionError("closed before the response head")
            self.buf += more
        head_end = self.buf.index(b"\r\n\r\n")
        lines = self.buf[:head_end].decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and "close" in value.lower():
                close = True  # e.g. nginx after keepalive_requests (1000): reconnect for the next one
        end = head_end + 4 + length
        while len(self.buf) < end:
            more = self.sock.recv(65536)
            if not more:
                raise ConnectionError("closed mid-response")
            self.buf += more
        payload, self.buf = self.buf[head_end + 4 : end], self.buf[end:]
        if close:
            self.reconnect()
        return status, payload

    def reconnect(self) -> None:
        self.sock.close()
        self.sock = socket.create_connection(("127.0.0.1", self.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# --------------------------------------------------------------------------------------------- the suite
class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.run_dir = Path(args.data_dir) / f"run-{os.getpid()}"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.servers: list[Server] = []
        self.paths: dict[str, Server] = {}  # name -> the server the client talks to
        self.scale: dict[str, Server] = {}  # the scale-out sections' own paths and services (scaleout.py)
        self.relays: set[str] = set()  # paths whose process is measured (not direct)
        self.upstream: Server | None = None
        self.res: dict[str, Any] = {"meta": {}, "throughput": [], "memory": [], "concurrency": [], "small": []}
        self.res["scaleout"] = {}

    # -- lifecycle
    def start(self) -> None:
        a = self.a
        port = free_port()
        if a.upstream == "raw":
            up = Server("upstream", [PY, str(HERE / "upstream.py"), "--port", str(port)], port, self.run_dir)
        else:
            up = Server("upstream", [tool("relay-sink"), "--port", str(port), "--discard"], port, self.run_dir)
        self.upstream = self._start(up)
        self.paths["direct"] = up
        upstream_url = up.url
        if "sink-check" not in a.skip and a.upstream == "raw":
            p = free_port()
            self.paths["sink-check"] = self._start(
                Server("sink-check", [tool("relay-sink"), "--port", str(p), "--discard"], p, self.run_dir)
            )
            self.relays.add("sink-check")
        for name, digest in (("relay-sha256", "sha256"), ("relay-none", "none")):
            if name in a.skip:
                continue
            self.paths[name] = self.start_relay(name, digest, resumable.relay_args(self.run_dir, name))
            self.relays.add(name)
        for spec in a.relay or []:
            name, _, cmd = spec.partition("=")
            p = free_port()
            cmd = cmd.format(port=p, upstream=upstream_url, upstream_port=up.port, python=PY)
            self.paths[name] = self._start(Server(name, cmd, p, self.run_dir))
            self.relays.add(name)
        if "nginx" not in a.skip:
            nginx = self.start_nginx("nginx", 1)
            if nginx is not None:
                self.paths["nginx"] = nginx
                self.relays.add("nginx")
        scaleout.start(self)
        log("paths: " + ", ".join(f"{k}={v.url}" for k, v in {**self.paths, **self.scale}.items()))

    def start_relay(self, name: str, digest: str, extra: list[str], env: dict[str, str] | None = None) -> Server:
        """`relay-server` on a free port, forwarding to the upstream; `extra` arguments after the common ones."""
        p = free_port()
        cmd = [tool("relay-server"), "--host", "127.0.0.1", "--port", str(p)]
        cmd += ["--upstream", self.upstream.url, "--digest", digest, "--max-body-size", "0", *extra]  # type: ignore[union-attr]
        return self._start(Server(name, cmd, p, self.run_dir, env=env))

    def start_service(self, name: str, cmd: list[str] | str, port: int, grace: float) -> Server:
        """A server the scale-out sections need (redis-server, SeaweedFS): listening when this returns."""
        self.scale[name] = self._start(Server(name, cmd, port, self.run_dir, grace=grace))
        return self.scale[name]

    def start_nginx(self, name: str, workers: int) -> Server | None:
        nginx = shutil.which("nginx") or next((c for c in ("/usr/sbin/nginx",) if os.path.exists(c)), None)
        if nginx is None:
            log(f"nginx not installed: skipping the {name} path")
            return None
        p = free_port()
        nrun = self.run_dir / name
        nrun.mkdir(exist_ok=True)
        conf = nrun / "nginx.conf"
        conf.write_text(NGINX_CONF.format(run=nrun, port=p, upstream_port=self.upstream.port, workers=workers))  # type: ignore[union-attr]
        cmd = [nginx, "-p", str(nrun), "-c", str(conf), "-e", str(nrun / "error.log")]
        return self._start(Server(name, cmd, p, self.run_dir))

    def _start(self, server: Server) -> Server:
        log(f"starting {server.name}: {server.cmd if isinstance(server.cmd, str) else ' '.join(server.cmd)}")
        self.servers.append(server)
        return server.start()

    def stop(self) -> None:
        """All at once (each drains on its own), the services the relays use (Redis, S3) after them."""
        services = [s for s in self.servers if s.name in scaleout.SERVICES]
        for group in ([s for s in self.servers if s not in services], services):
            for server in group:
                server.terminate()
            for server in group:
                server.wait_stopped()
        scaleout.stop(self)

    def upstream_stats(self) -> dict[str, int]:
        c = RawClient(self.upstream.port)  # type: ignore[union-attr]
        try:
            c.sock.sendall(b"GET /_stats HTTP/1.1\r\nHost: x\r\n\r\n")
            while b"\r\n\r\n" not in c.buf:
                c.buf += c.sock.recv(65536)
            head, _, body = c.buf.partition(b"\r\n\r\n")
            length = int(re.search(rb"content-length: *(\d+)", head, re.I).group(1))  # type: ignore[union-attr]
            while len(body) < length:
                body += c.sock.recv(65536)
            return json.loads(body[:length])
        finally:
            c.close()

    def server(self, name: str) -> Server:
        return self.paths[name] if name in self.paths else self.scale[name]

    def measured(self, name: str) -> list[int]:
        return self.server(name).pids() if name in self.relays or name in self.scale else []

    # -- what benchmarks/resumable.py needs (its Host protocol)
    def url(self, name: str) -> str:
        return self.server(name).url

    def port(self, name: str) -> int:
        return self.server(name).port

    def meter(self, name: str) -> Callable[[], dict[str, Any]]:
        """Reset the path's peak RSS and start counting its CPU; call the result when the upload is done."""
        pids = self.measured(name)
        reset_hwm(pids)
        cpu0, flt0 = _stat(pids)

        def done() -> dict[str, Any]:
            now = self.measured(name)
            cpu1, flt1 = _stat(now)
            return dict(
                cpu=cpu1 - cpu0,
                faults=flt1 - flt0,
                hwm_kib=status_kib(now, "VmHWM"),
                rss_kib=status_kib(now, "VmRSS"),
            )

        return done

    # -- what benchmarks/scaleout.py needs besides (its Host protocol)
    def data(self, size: int) -> Path:
        return data_file(Path(self.a.data_dir), size)

    @staticmethod
    def cpu(pids: list[int]) -> float:
        return _stat(pids)[0]

    @staticmethod
    def hwm_kib(pids: list[int]) -> int:
        return status_kib(pids, "VmHWM")

    @staticmethod
    def reset_hwm(pids: list[int]) -> None:
        reset_hwm(pids)

    def tus_relays(self) -> list[str]:
        return [n for n in resumable.RESUMABLE_RELAYS if n in self.paths] if "resumable" in self.a.sections else []

    def resumable_upload(self, name: str, workload: str, path: Path, tag: str) -> dict[str, Any]:
        r = resumable.upload(self, name, workload, path, tag)
        extra = f"  appends {r['appends']}" if "appends" in r else ""
        if r.get("spool_secs"):
            extra += f"  spool {r['spool_bytes'] / r['spool_secs'] / 1e6:.0f} MB/s"
        log(
            f"  {name:>13} {workload:<11} {tag:<8} {r['mb_s']:8.1f} MB/s  {r['secs']:.2f}s  cpu {r['cpu']:.2f}s  "
            f"peak RSS {r['hwm_kib'] / 1024:.1f} MiB{extra}" + ("" if r["ok"] else f"  FAILED {r.get('error', '')}")
        )
        return r

    # -- one big upload with accounting
    def upload(self, name: str, workload: str, path: Path, tag: str) -> dict[str, Any]:
        url = self.server(name).url + URL_PATH
        pids = self.measured(name)
        reset_hwm(pids)
        cpu0, flt0 = _stat(pids)
        resp = self.run_dir / "resp.json"
        resp.unlink(missing_ok=True)
        t0 = time.perf_counter()
        with open(path, "rb") as stdin:
            p = subprocess.run(
                curl_cmd(workload, url, path, resp),
                capture_output=True,
                text=True,
                timeout=self.a.timeout,
                stdin=stdin if workload == "chunked" else subprocess.DEVNULL,
            )
        wall = time.perf_counter() - t0
        pids = self.measured(name)
        cpu1, flt1 = _stat(pids)
        r: dict[str, Any] = dict(
            path=name,
            workload=workload,
            tag=tag,
            size=path.stat().st_size,
            wall=wall,
            cpu=cpu1 - cpu0,
            faults=flt1 - flt0,
            hwm_kib=status_kib(pids, "VmHWM"),
            rss_kib=status_kib(pids, "VmRSS"),
        )
        try:
            code, sent, secs = p.stdout.split()
            body = json.loads(resp.read_text())
            r.update(
                status=int(code),
                secs=float(secs),
                bytes=r["size"] if workload == "chunked" else int(sent),
                upstream_bytes=body.get("bytes"),
            )
        except Exception as exc:  # report it, don't die
            r.update(
                status=None,
                secs=wall,
                bytes=0,
                upstream_bytes=None,
                error=f"{exc!r}: {p.stdout[-200:]} {p.stderr[-300:]}",
            )
        r["ok"] = r["status"] == 200 and r["bytes"] > 0 and r["upstream_bytes"] == r["bytes"]
        r["mb_s"] = r["bytes"] / r["secs"] / 1e6 if r["ok"] and r["secs"] > 0 else 0.0
        log(
            f"  {name:>13} {workload:<11} {tag:<8} {r['mb_s']:8.1f} MB/s  cpu {r['cpu']:.2f}s  "
            f"peak RSS {r['hwm_kib'] / 1024:.1f} MiB" + ("" if r["ok"] else f"  FAILED {r.get('error', '')}")
        )
        return r

    # -- sections
    def throughput(self, plain: bool = True) -> None:
        """The plain workloads and, each rep after them, the resumable rows (plain=False: those alone)."""
        a = self.a
        f = data_file(Path(a.data_dir), a.size)
        warm = data_file(Path(a.data_dir), min(a.size, 16 * MiB))
        tus = self.tus_relays()
        tus_file = data_file(Path(a.data_dir), a.resumable_size) if tus else f
        if tus and self.res["meta"].get("disk_mb_s") is None:
            self.res["meta"]["disk_mb_s"] = resumable.disk_probe(self.run_dir, min(a.resumable_size, 256 * MiB))
            resumable.file_sha256(tus_file)  # before the clock runs
        log(
            f"== throughput: {label(a.size)} x {a.reps} reps, interleaved"
            + (f"; resumable {label(a.resumable_size)}, appends of {label(a.append_size)}" if tus else "")
        )
        for name in self.paths:
            if plain:
                self.upload(name, "raw", warm, "warm-up")
            if tus and name != "sink-check":
                self.resumable_upload(name, resumable.SOCK, warm, "warm-up")
            if name in tus:
                for workload in (resumable.ONE, resumable.APPENDS):
                    self.resumable_upload(name, workload, warm, "warm-up")
        for rep in range(a.reps):
            tag = f"rep{rep + 1}"
            for workload in WORKLOADS if plain else ():
                for name in self.paths:
                    if name == "sink-check" and workload != "raw":
                        continue
                    self.res["throughput"].append(self.upload(name, workload, f, tag))
            if not tus:
                continue
            # the reference and the resumable rows of one relay back to back: noise shared within the pair
            for name in self.paths:
                if name == "sink-check":
                    continue
                self.res["throughput"].append(self.resumable_upload(name, resumable.SOCK, tus_file, tag))
                if name in tus:
                    for workload in (resumable.ONE, resumable.APPENDS):
                        self.res["throughput"].append(self.resumable_upload(name, workload, tus_file, tag))

    def memory(self) -> None:
        log("== memory growth")
        for size in self.a.memory_sizes:
            f = data_file(Path(self.a.data_dir), size)
            for name in self.paths:
                if name in self.relays and name != "sink-check":
                    self.res["memory"].append(self.upload(name, "raw", f, label(size)))
                if name in self.tus_relays():
                    self.res["memory"].append(self.resumable_upload(name, resumable.ONE, f, label(size)))

    def concurrency(self) -> None:
        n, size = self.a.conc, self.a.conc_size
        f = data_file(Path(self.a.data_dir), size)
        log(f"== concurrency: {n} x {label(size)}")
        for name, server in self.paths.items():
            if name == "sink-check":
                continue
            pids = self.measured(name)
            reset_hwm(pids)
            cpu0, _ = _stat(pids)
            st0 = self.upstream_stats()
            cmd = ["curl", "-sS", "-Z", "--parallel-max", str(n), "--parallel-immediate", "-w", CURL_W + "\\n"]
            for i in range(n):
                cmd += ["-T", str(f), "-o", "/dev/null", f"{server.url}{URL_PATH}-c{i}"]
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=self.a.timeout, stdin=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            pids = self.measured(name)
            cpu1, _ = _stat(pids)
            got = self.upstream_stats()["bytes"] - st0["bytes"]
            lines = [ln.split() for ln in p.stdout.strip().splitlines()]
            ok = sum(1 for ln in lines if len(ln) == 3 and ln[0] == "200" and int(ln[1]) == size)
            r = dict(
                path=name,
                n=n,
                size=size,
                wall=wall,
                ok_transfers=ok,
                upstream_bytes=got,
                ok=ok == n and got == n * size,
                mb_s=n * size / wall / 1e6,
                cpu=cpu1 - cpu0,
                hwm_kib=status_kib(pids, "VmHWM"),
            )
            log(
                f"  {name:>13} {r['mb_s']:8.1f} MB/s aggregate  ok {ok}/{n}  upstream {got} B  "
                f"peak RSS {r['hwm_kib'] / 1024:.1f} MiB"
            )
            self.res["concurrency"].append(r)

    def small(self) -> None:
        self.res["small"] += self.small_rows([n for n in self.paths if n != "sink-check"])

    def small_rows(self, names: list[str]) -> list[dict[str, Any]]:
        """Keep-alive small uploads through each path, interleaved in blocks of 50: one row per path."""
        a = self.a
        body = os.urandom(a.small_size)
        log(f"== small uploads: {a.small} x {label(a.small_size)} keep-alive, interleaved in blocks of 50")
        clients = {name: RawClient(self.port(name)) for name in names}
        lat: dict[str, list[float]] = {name: [] for name in names}
        bad: dict[str, int] = dict.fromkeys(names, 0)
        cpu: dict[str, float] = dict.fromkeys(names, 0.0)
        try:
            for name in names:  # warm-up
                for _ in range(20):
                    clients[name].post(body)
            done = 0
            while done < a.small:
                block = min(50, a.small - done)
                for name in names:
                    c = clients[name]
                    pids = self.measured(name)
                    cpu0, _ = _stat(pids)
                    for _ in range(block):
                        t0 = time.perf_counter()
                        try:
                            status, payload = c.post(body)
                        except OSError:  # counted as failed; the next upload gets a new connection
                            bad[name] += 1
                            c.reconnect()
                            continue
                        lat[name].append((time.perf_counter() - t0) * 1000)
                        if status != 200 or json.loads(payload).get("bytes") != len(body):
                            bad[name] += 1
                    cpu[name] += _stat(pids)[0] - cpu0
                done += block
        finally:
            for c in clients.values():
                c.close()
        rows = []
        for name in names:
            r = dict(
                path=name,
                n=len(lat[name]),
                size=a.small_size,
                p50_ms=pct(lat[name], 0.5),
                p99_ms=pct(lat[name], 0.99),
                mean_ms=statistics.fmean(lat[name]),
                failed=bad[name],
                cpu_ms=cpu[name] * 1000 / max(1, len(lat[name])) if self.measured(name) else None,
                ok=bad[name] == 0,
            )
            log(f"  {name:>13} p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  failed {bad[name]}")
            rows.append(r)
        return rows

    # -- report
    def meta(self) -> dict[str, Any]:
        def out(cmd: list[str]) -> str:
            try:
                return (
                    subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
                    or subprocess.run(cmd, capture_output=True, text=True, timeout=10).stderr.strip()
                )
            except (OSError, subprocess.TimeoutExpired):
                return "-"

        from importlib.metadata import PackageNotFoundError, version

        versions = {}
        for pkg in (
            "upload-relay",
            "uvicorn",
            "uvloop",
            "httptools",
            "httpx",
            "httpcore",
            "h11",
            "starlette",
            "fastapi",
            "anyio",
            "python-multipart",
        ):
            try:
                versions[pkg] = version(pkg)
            except PackageNotFoundError:
                versions[pkg] = "-"
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        return {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join(["python", *sys.argv]),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "versions": versions,
            "curl": out(["curl", "--version"]).splitlines()[0] if shutil.which("curl") else "-",
            "nginx": out([nginx, "-v"]) if "nginx" in self.paths else "not run",
            "commit": out(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"]),
            # a run may take the relay from elsewhere (a clean export of one commit): then say where
            "relay_from": str(Path(out([PY, "-P", "-c", "import relay; print(relay.__file__)"])).parent),
            "dirty": [
                line.strip()
                for line in out(["git", "-C", str(HERE.parent), "status", "--porcelain", "--", "relay"]).splitlines()
            ],
            "upstream": self.a.upstream,
        }

    def report(self) -> str:
        return render(self.res)

    def run(self) -> Path:
        a = self.a
        self.res["meta"] = {"args": {k: v for k, v in vars(a).items()}}
        t0 = time.monotonic()
        self.res["meta"]["errors"] = []
        for section in ("throughput", "memory", "concurrency", "small"):
            resumable_only = section == "throughput" and "resumable" in a.sections
            if section not in a.sections and not resumable_only:
                continue
            try:
                if section == "throughput":
                    self.throughput(plain="throughput" in a.sections)
                else:
                    getattr(self, section)()
            except Exception as exc:  # keep what the other sections measured
                import traceback

                log(traceback.format_exc())
                self.res["meta"]["errors"].append(f"{section}: {exc!r}")
        for section in scaleout.SECTIONS:
            if section in a.sections:
                try:
                    scaleout.run(self, section)
                except Exception as exc:  # keep what the other sections measured
                    import traceback

                    log(traceback.format_exc())
                    self.res["meta"]["errors"].append(f"{section}: {exc!r}")
        if self.tus_relays():
            self.res["meta"]["spool_left"] = resumable.spool_left(self.run_dir, self.tus_relays())
        self.res["meta"].update(self.meta())
        self.res["meta"]["seconds"] = round(time.monotonic() - t0, 1)
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(self.res, indent=1, default=str))
        chart = out / "chart.png"
        self.res["meta"]["chart"] = chart.name if make_chart(self.res, chart) else None
        md = out / "results.md"
        md.write_text(render(self.res))
        log(f"wrote {md}, {out / 'results.json'}" + (f", {chart}" if self.res["meta"]["chart"] else ""))
        return md


# --------------------------------------------------------------------------------------------- rendering
def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get("ok")]
    return statistics.median(vals) if vals else None


def summarize(res: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """workload -> path -> {median, min, max, cpu_gib, faults_gib, hwm_mib, ok, n}."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in res["throughput"]:
        out.setdefault(r["workload"], {}).setdefault(r["path"], {"rows": []})["rows"].append(r)
    for paths in out.values():
        for s in paths.values():
            rows = s.pop("rows")
            good = [r for r in rows if r["ok"]]
            speeds = [r["mb_s"] for r in good]
            gib = sum(r["bytes"] for r in good) / GiB
            s.update(
                n=len(rows),
                ok=len(good),
                median=statistics.median(speeds) if speeds else 0.0,
                min=min(speeds, default=0.0),
                max=max(speeds, default=0.0),
                cpu_gib=sum(r["cpu"] for r in good) / gib if gib else None,
                faults_gib=sum(r["faults"] for r in good) / gib if gib else None,
                hwm_mib=max((r["hwm_kib"] for r in good), default=0) / 1024,
            )
    return out


def _f(x: float | None, fmt: str = "{:.0f}") -> str:
    return "–" if x is None else fmt.format(x)


def targets(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, relay, measured, verdict) for the issue's targets, from this run's ratios."""
    s = summarize(res)
    rows: list[tuple[str, str, str, str]] = []

    def ratio(workload: str, path: str, ref: str) -> float | None:
        w = s.get(workload, {})
        if path in w and ref in w and w[ref]["median"] and w[path]["ok"] == w[path]["n"]:
            return w[path]["median"] / w[ref]["median"]
        return None

    def verdict(value: float | None, goal: float, higher: bool = True) -> str:
        if value is None:
            return "not measured"
        met = value >= goal if higher else value <= goal
        return "**met**" if met else f"missed by {abs(value - goal):.2f}" + ("x" if higher else "")

    for workload in ("raw", "chunked"):
        for ref, goal in (("direct", 0.8), ("nginx", 1.5)):
            v = ratio(workload, "relay-none", ref)
            rows.append(
                (f"{workload} `--digest none` >= {goal}x {ref}", "relay-none", _f(v, "{:.2f}x"), verdict(v, goal))
            )
    v = ratio("multipart", "relay-sha256", "direct")
    rows.append(("multipart with sha256 >= 0.55x direct", "relay-sha256", _f(v, "{:.2f}x"), verdict(v, 0.55)))
    for relay in ("relay-sha256", "relay-none"):
        hwms = [
            r["hwm_kib"] / 1024
            for r in res["throughput"] + res["memory"]
            if r["path"] == relay and r["ok"] and r["workload"] in WORKLOADS
        ]
        peak = max(hwms) if hwms else None
        rows.append(
            (
                "peak RSS <= 64 MiB (all single uploads)",
                relay,
                _f(peak, "{:.1f} MiB"),
                verdict(peak, 64, higher=False).replace("missed by", "over by").replace("x", " MiB")
                if peak is not None and peak > 64
                else verdict(peak, 64, higher=False),
            )
        )
        mem = [r["hwm_kib"] / 1024 for r in res["memory"] if r["path"] == relay and r["ok"] and r["workload"] == "raw"]
        spread = (max(mem) - min(mem)) if len(mem) >= 2 else None
        sizes = [r["size"] for r in res["memory"] if r["path"] == relay and r["workload"] == "raw"]
        span = f"{label(min(sizes))}..{label(max(sizes))}" if sizes else "sizes"
        rows.append(
            (
                f"peak RSS flat within 4 MiB ({span})",
                relay,
                _f(spread, "{:.1f} MiB spread"),
                "**met**"
                if spread is not None and spread <= 4
                else ("not measured" if spread is None else f"over by {spread - 4:.1f} MiB"),
            )
        )
    conc = {r["path"]: r for r in res["concurrency"]}
    for relay in ("relay-sha256", "relay-none"):
        if relay in conc and "nginx" in conc and conc["nginx"]["mb_s"] and conc[relay]["ok"]:
            v = conc[relay]["mb_s"] / conc["nginx"]["mb_s"]
            rows.append(("concurrent >= 1.0x nginx aggregate", relay, f"{v:.2f}x", verdict(v, 1.0)))
        else:
            rows.append(("concurrent >= 1.0x nginx aggregate", relay, "–", "not measured"))
        if relay in conc:
            peak = conc[relay]["hwm_kib"] / 1024
            rows.append(
                (
                    "concurrent peak RSS <= 128 MiB",
                    relay,
                    f"{peak:.1f} MiB",
                    "**met**" if peak <= 128 else f"over by {peak - 128:.1f} MiB",
                )
            )
    small = {r["path"]: r for r in res["small"]}
    for relay in ("relay-sha256", "relay-none"):
        if relay in small and "direct" in small:
            added = small[relay]["p50_ms"] - small["direct"]["p50_ms"]
            rows.append(
                (
                    "1 KiB p50 added latency <= 1 ms",
                    relay,
                    f"{added:.3f} ms",
                    "**met**" if added <= 1 else f"over by {added - 1:.3f} ms",
                )
            )
    return rows


def render(res: dict[str, Any]) -> str:
    meta = res["meta"]
    s = summarize(res)
    lines: list[str] = []
    add = lines.append
    args = meta.get("args", {})
    labels = {**WORKLOADS, **resumable.workload_labels(int(args.get("append_size") or 16 * MiB))}
    add(f"# Upload relay benchmark, {meta.get('date', '')}")
    add("")
    add(
        f"Command: `{meta.get('command', '')}` ({meta.get('seconds', '?')} s). Commit {meta.get('commit', '-')}, "
        f"Python {meta.get('python')}, kernel {meta.get('kernel')}, {meta.get('cpus')} CPUs."
        + (
            f" The relay package came from {meta['relay_from']}, not this tree."
            if meta.get("relay_from") and meta["relay_from"] != str(HERE.parent / "relay")
            else (f" Uncommitted changes under relay/: {', '.join(meta['dirty'])}." if meta.get("dirty") else "")
        )
    )
    add(
        "Versions: "
        + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
        + f"; {meta.get('curl', '-')}; nginx: {meta.get('nginx', '-')}."
    )
    upstream = (
        "benchmarks/upstream.py (raw asyncio discard)" if meta.get("upstream") == "raw" else "relay-sink --discard"
    )
    add(
        f"Upstream: `{upstream}`."
        " MB = 10^6 bytes. Figures are from one interleaved run on a shared, noisy machine: compare the ratios,"
        " not the absolute numbers."
    )
    add("")
    if s:
        add(f"## Throughput: {label(int(args.get('size', 0)))}, {args.get('reps')} reps interleaved")
        if any(r["workload"] not in WORKLOADS for r in res["throughput"]):
            add("")
            add(
                f"The raw-socket and tus rows upload {label(int(args.get('resumable_size') or 0))} (see"
                ' "Resumable uploads" below); their MB/s count the whole exchange, creation included.'
            )
        add("")
        add(
            "| workload | path | median MB/s | min | max | vs direct | vs nginx | relay CPU-s/GiB | "
            "page faults/GiB | peak RSS MiB | ok |"
        )
        add("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for workload, paths in s.items():
            direct = paths.get("direct", {}).get("median")
            nginx = paths.get("nginx", {}).get("median")
            for name, x in paths.items():
                measured = name != "direct"
                add(
                    f"| {labels[workload]} | {name} | **{x['median']:.0f}** | {x['min']:.0f} | {x['max']:.0f} | "
                    f"{_f(x['median'] / direct if direct else None, '{:.2f}')} | "
                    f"{_f(x['median'] / nginx if nginx else None, '{:.2f}')} | "
                    f"{_f(x['cpu_gib'] if measured else None, '{:.2f}')} | "
                    f"{_f(x['faults_gib'] if measured else None)} | "
                    f"{_f(x['hwm_mib'] if measured else None, '{:.1f}')} | {x['ok']}/{x['n']} |"
                )
        add("")
        if "sink-check" in s.get("raw", {}):
            up, chk = s["raw"].get("direct", {}).get("median"), s["raw"]["sink-check"]["median"]
            add(
                f"`sink-check` is `relay-sink --discard` uploaded to directly; `direct` is the raw discard upstream. "
                f"relay-sink reaches {_f(chk / up if up else None, '{:.2f}')}x of it, "
                f"so {'it would be' if up and chk < 0.9 * up else 'it is not'} the bottleneck."
            )
            add("")
    if res["memory"]:
        add("## Memory growth: relay peak RSS (MiB) per upload size (`curl -T`)")
        add("")
        sizes = sorted({r["size"] for r in res["memory"]})
        names = list(dict.fromkeys((r["path"], r["workload"]) for r in res["memory"]))
        add("| path | " + " | ".join(label(z) for z in sizes) + " | spread | MB/s at each size |")
        add("|---|" + "---:|" * len(sizes) + "---:|---|")
        for path, workload in names:
            name = path if workload == "raw" else f"{path}, {labels[workload]}"
            rows = {r["size"]: r for r in res["memory"] if r["path"] == path and r["workload"] == workload}
            hw = [rows[z]["hwm_kib"] / 1024 for z in sizes if z in rows]
            add(
                f"| {name} | "
                + " | ".join(
                    (f"{rows[z]['hwm_kib'] / 1024:.1f}" + ("" if rows[z]["ok"] else " FAILED")) if z in rows else "–"
                    for z in sizes
                )
                + f" | {max(hw) - min(hw):.1f} | "
                + ", ".join(f"{rows[z]['mb_s']:.0f}" for z in sizes if z in rows)
                + " |"
            )
        add("")
    lines += resumable.render(res)
    lines += scaleout.render(res)
    if res["concurrency"]:
        r0 = res["concurrency"][0]
        add(f"## Concurrency: {r0['n']} concurrent {label(r0['size'])} uploads (`curl -Z --parallel-immediate`)")
        add("")
        add("| path | aggregate MB/s | vs direct | vs nginx | wall s | relay CPU-s/GiB | peak RSS MiB | ok |")
        add("|---|---:|---:|---:|---:|---:|---:|---|")
        conc = {r["path"]: r for r in res["concurrency"]}
        for name, r in conc.items():
            gib = r["n"] * r["size"] / GiB
            add(
                f"| {name} | **{r['mb_s']:.0f}** | "
                f"{_f(r['mb_s'] / conc['direct']['mb_s'] if 'direct' in conc else None, '{:.2f}')} | "
                f"{_f(r['mb_s'] / conc['nginx']['mb_s'] if 'nginx' in conc else None, '{:.2f}')} | {r['wall']:.2f} | "
                f"{_f(r['cpu'] / gib if name != 'direct' else None, '{:.2f}')} | "
                f"{_f(r['hwm_kib'] / 1024 if name != 'direct' else None, '{:.1f}')} | "
                f"{r['ok_transfers']}/{r['n']}{'' if r['ok'] else ' FAILED'} |"
            )
        add("")
    if res["small"]:
        r0 = res["small"][0]
        add(f"## Small uploads: {r0['n']} x {label(r0['size'])}, keep-alive, one connection per path")
        add("")
        add("| path | p50 ms | p99 ms | mean ms | p50 added vs direct ms | relay CPU ms per upload | failed |")
        add("|---|---:|---:|---:|---:|---:|---:|")
        small = {r["path"]: r for r in res["small"]}
        d = small.get("direct", {}).get("p50_ms")
        for name, r in small.items():
            add(
                f"| {name} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['mean_ms']:.3f} | "
                f"{_f(r['p50_ms'] - d if d is not None else None, '{:+.3f}')} | "
                f"{_f(r.get('cpu_ms'), '{:.2f}')} | {r['failed']} |"
            )
        add("")
    t = targets(res) if any(res[k] for k in ("throughput", "memory", "concurrency", "small")) else []
    if t:
        add("## Targets (issue 6), from this run")
        add("")
        add("| target | relay | measured | verdict |")
        add("|---|---|---:|---|")
        for row in t:
            add("| " + " | ".join(row) + " |")
        add("")
    if meta.get("chart"):
        add(f"![throughput, memory and concurrency]({meta['chart']})")
        add("")
    failures = sum(1 for k in ("throughput", "memory", "concurrency", "small") for r in res[k] if not r.get("ok"))
    failures += scaleout.failures(res)
    for err in meta.get("errors", []):
        add(f"**Section failed:** {err}")
    add(f"Every upload was checked (HTTP 200 and the upstream's byte count): {failures} failed.")
    return "\n".join(lines) + "\n"


def make_chart(res: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no chart (pip install 'upload-relay[bench]')")
        return False
    s = summarize(res)
    panels = [p for p in ("throughput", "memory", "concurrency") if res[p]]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    colors = {
        "direct": "#555555",
        "sink-check": "#aaaaaa",
        "relay-sha256": "#1f77b4",
        "relay-none": "#2ca02c",
        "nginx": "#d62728",
    }
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "throughput":
            workloads = list(s)
            names = list(dict.fromkeys(n for w in workloads for n in s[w]))
            width = 0.8 / len(names)
            for i, name in enumerate(names):
                xs = [j + i * width for j, w in enumerate(workloads) if name in s[w]]
                med = [s[w][name]["median"] for w in workloads if name in s[w]]
                lo = [s[w][name]["median"] - s[w][name]["min"] for w in workloads if name in s[w]]
                hi = [s[w][name]["max"] - s[w][name]["median"] for w in workloads if name in s[w]]
                ax.bar(xs, med, width, yerr=[lo, hi], capsize=2, label=name, color=colors.get(name))
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(workloads))], workloads)
            ax.set_ylabel("MB/s (median, min-max)")
            ax.set_title(f"{label(int(res['meta']['args']['size']))} uploads")
            ax.legend(fontsize=7)
        elif panel == "memory":
            for name, workload in dict.fromkeys((r["path"], r["workload"]) for r in res["memory"]):
                rows = sorted(
                    (r for r in res["memory"] if r["path"] == name and r["workload"] == workload),
                    key=lambda r: r["size"],
                )
                tus = workload != "raw"
                ax.plot(
                    [r["size"] / MiB for r in rows],
                    [r["hwm_kib"] / 1024 for r in rows],
                    "s--" if tus else "o-",
                    label=f"{name} (tus)" if tus else name,
                    color=colors.get(name),
                )
            ax.set_xscale("log", base=2)
            ax.set_xlabel("upload size (MiB)")
            ax.set_ylabel("peak RSS (MiB)")
            ax.set_ylim(bottom=0)
            ax.set_title("memory growth")
            ax.legend(fontsize=7)
        else:
            rows = res["concurrency"]
            ax.bar(
                [r["path"] for r in rows],
                [r["mb_s"] for r in rows],
                color=[colors.get(r["path"], "#9467bd") for r in rows],
            )
            ax.set_ylabel("aggregate MB/s")
            ax.set_title(f"{rows[0]['n']} x {label(rows[0]['size'])} concurrent")
            ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 4 MiB, 1 rep, memory 1/4 MiB, 4 x 1 MiB concurrent, 20 small uploads, no nginx; "
        "resumable 16 MiB in 4 MiB appends",
    )
    p.add_argument("--size", type=parse_size, default=GiB, help="throughput upload size (default 1GiB)")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    p.add_argument(
        "--resumable-size",
        type=parse_size,
        default=None,
        help="size of the resumable (tus) uploads and their plain reference (default: --size)",
    )
    p.add_argument("--append-size", type=parse_size, default=16 * MiB, help="tus append size (default 16MiB)")
    p.add_argument(
        "--memory-sizes",
        type=lambda t: [parse_size(x) for x in t.split(",")],
        default=[16 * MiB, 256 * MiB, GiB, 4 * GiB],
        help="comma-separated (default 16MiB,256MiB,1GiB,4GiB)",
    )
    p.add_argument("--conc", type=int, default=32, help="concurrent uploads (default 32)")
    p.add_argument("--conc-size", type=parse_size, default=64 * MiB, help="size of each (default 64MiB)")
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="worker processes of the `workers` section's relays (`--workers N --redis`) and nginx (default 2)",
    )
    p.add_argument("--small", type=int, default=2000, help="number of small uploads (default 2000)")
    p.add_argument("--small-size", type=parse_size, default=KiB, help="small upload size (default 1KiB)")
    p.add_argument(
        "--sections",
        "--only",
        type=lambda t: t.split(","),
        default=["throughput", "memory", "concurrency", "small", "resumable", *scaleout.SECTIONS],
        help="comma-separated subset of throughput,memory,concurrency,small,resumable,workers,redis,s3 "
        "(resumable: the tus rows in the throughput reps and the memory section; workers, redis, s3: the "
        "scale-out sections of benchmarks/scaleout.py; `scaleout` names all three)",
    )
    p.add_argument(
        "--skip",
        type=lambda t: t.split(","),
        default=[],
        help="paths to leave out: nginx, sink-check, relay-sha256, relay-none",
    )
    p.add_argument(
        "--relay",
        action="append",
        metavar="NAME=CMD",
        help="an extra relay (bash command; placeholders {port} {upstream} {upstream_port} {python}), "
        "e.g. proto='exec {python} /tmp/proto/run.py --port {port} --upstream {upstream}'",
    )
    p.add_argument(
        "--upstream",
        choices=["raw", "relay-sink"],
        default="raw",
        help="the upstream every path forwards to (default raw: benchmarks/upstream.py)",
    )
    p.add_argument("--out", default=str(HERE / "results"), help="where results.md/.json and chart.png go")
    p.add_argument("--data-dir", default="/tmp/relay-bench", help="generated data files and server logs")
    p.add_argument("--timeout", type=float, default=600, help="seconds for one curl run")
    args = p.parse_args(argv)
    if args.quick:
        defaults = p.parse_args([])
        for key, value in (
            ("size", 4 * MiB),
            ("reps", 1),
            ("memory_sizes", [MiB, 4 * MiB]),
            ("conc", 4),
            ("conc_size", MiB),
            ("small", 20),
            ("resumable_size", 16 * MiB),
            ("append_size", 4 * MiB),
        ):
            if getattr(args, key) == getattr(defaults, key):
                setattr(args, key, value)
        if "nginx" not in args.skip:
            args.skip.append("nginx")
    if args.resumable_size is None:
        args.resumable_size = args.size
    if "scaleout" in args.sections:
        args.sections = [s for s in args.sections if s != "scaleout"] + list(scaleout.SECTIONS)
    unknown = set(args.sections) - {"throughput", "memory", "concurrency", "small", "resumable", *scaleout.SECTIONS}
    if unknown:
        p.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not shutil.which("curl"):
        log("curl is required (apt-get install curl)")
        return 2
    suite = Suite(args)

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        suite.start()
        md = suite.run()
    finally:
        suite.stop()
    print(md.read_text())
    bad = sum(1 for k in ("throughput", "memory", "concurrency", "small") for r in suite.res[k] if not r.get("ok"))
    bad += scaleout.failures(suite.res)
    bad += len(suite.res["meta"].get("errors", []))
    if bad:
        log(f"{bad} uploads failed; server logs kept in {suite.run_dir}")
        return 1
    shutil.rmtree(suite.run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
