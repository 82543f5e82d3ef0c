"""The ceiling of designs for "1 GiB in 16 MiB appends", measured without the relay's Python/ASGI overheads.

Issue 11's last target: a resumable upload sent as appends of 16 MiB (each append durable - written to a spool
file and fdatasync'ed - before it is acknowledged; the last append acknowledged only once the upstream answered
the forwarded file) must take <= 1.6x a plain streamed upload through the relay. This script asks what each
design can reach at best on this machine.

Theory of operation. Three processes: the discard upstream (benchmarks/upstream.py, real HTTP/1.1), a
"relay-sim" (this script with `--serve`: blocking sockets, one thread per client connection plus whatever a
variant needs, 1 MiB mmap'ed - so page-aligned - buffers) and the client (this script), which holds one
keep-alive TCP connection to the sim. Client -> sim protocol, one request at a time:

    PLAIN <n>\\n                                  then n bytes (socket.sendfile from the data file)
    APPEND <variant> <id> <offset> <n> <total> <last>\\n  then n bytes

The sim answers one line: `OK\\n` for an append that is not the last, and `OK <json>\\n` for PLAIN and the last
append, sent only once the upstream's HTTP answer has been read completely; the json holds that answer
(`{"bytes": N}`, which the client checks against the file size) and the sim's fdatasync seconds and count.
`ERR <text>` reports a failure. Sim -> upstream is `POST / HTTP/1.1`, Host, Content-Length: <file size>, the
body, then the response (status line, headers, Content-Length body); a new upstream connection per upload.
Spool files live in --spool-dir (checked to be on /tmp's file system), one per upload, closed and unlinked
after the final OK (timed apart: `unlink`; with ext4's `discard` it costs ~0.5 s per GiB here).

Variants (the first word decides; each rep runs every variant once, in a rotated order):

  plain  recv_into a 1 MiB buffer, sendall to the upstream; OK after the answer. The reference.
  A      today's design: per append recv -> os.write (buffered) -> fdatasync -> OK; after the last append open
         the upstream and os.sendfile the whole spool file, read the answer, OK.
  T      trailing forward from the page cache: appends as in A; the first append starts a trail thread that opens
         the upstream request and, whenever an append has been fdatasync'ed, os.sendfile's the newly committed
         range; the last append's OK after the answer.
  TD     appends with O_DIRECT (fill the aligned buffer with recv_into, os.pwrite, in the connection thread) +
         fdatasync; the trail reads committed ranges back through an O_DIRECT fd (os.preadv, aligned buffer)
         and sendall's them.
  TDW    TD with a writer thread and three alternating buffers, so recv and the O_DIRECT disk write overlap
         (added: TD's serial recv -> pwrite leaves the disk idle while receiving).
  C      tee in memory: one upstream request open from the first append; each 1 MiB received goes to a writer
         thread (O_DIRECT pwrite, three alternating buffers) and is sendall'ed to the upstream meanwhile;
         fdatasync at the append's end, OK (the last after the answer). The upstream sees bytes before they
         are durable, which is what this design accepts.
  CB     C with a buffered os.pwrite in the writer thread instead of O_DIRECT.

Suffixes, added because the first runs showed the disk, not the CPU, setting the pace (any order of "s" "r"):
  ...s   a syncer thread calls fdatasync each time --sync-every bytes (4 MiB) more have been written, so the
         disk works while the append is still arriving and the append's own fdatasync finds less to flush.
  ...r   a recycled spool file: one per variant name, written by the warm-up upload and then overwritten in
         place by every upload (no O_TRUNC, no unlink): no block allocation, no discard, and for buffered
         variants the page-cache pages stay (no fresh pages from the host). E.g. CBsr, Ar, Cr.

Printed per upload: wall (client: first byte sent -> final OK), the sim's CPU seconds (/proc/PID/stat utime +
stime delta, all threads), for appends the time of the appends before the last and of the tail (last append's
start -> final OK), the sim's fdatasync total in the append path and in the syncer. Then a table: median wall,
per-rep range, ratio to the same rep's plain (median and range), best wall and best/best-plain (a ceiling on a
noisy shared machine), median CPU, appends, tail, fdatasync, syncer, unlink. `uptime` before and after.

    .venv/bin/python benchmarks/prototypes/trail_ceiling.py --file /tmp/relay-bench/data_1073741824.bin \\
        --reps 7 --variants plain,A,T,TD,C,CB --append-size 16777216 [--spool-dir /tmp/p-trail/spool]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import queue
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

BUF = 1 << 20
ALIGN = 4096
NBUFS = 3
HERE = Path(__file__).resolve()
UPSTREAM = HERE.parent.parent / "upstream.py"
CLK = os.sysconf("SC_CLK_TCK")
BASES = ("A", "T", "TD", "TDW", "C", "CB")
SUFFIXES = ("", "s", "r", "sr")


# ---------------------------------------------------------------------------------------------- relay-sim side


def read_line(sock: socket.socket) -> bytes:
    """One request line, without consuming the body bytes that follow it."""
    while True:
        peek = sock.recv(512, socket.MSG_PEEK)
        if not peek:
            return b""
        end = peek.find(b"\n")
        if end >= 0:
            return sock.recv(end + 1)
        if len(peek) >= 512:
            raise ValueError("request line too long")
        time.sleep(0.0005)  # a partial line: wait for the rest


def fill(sock: socket.socket, mv: memoryview, want: int) -> None:
    got = 0
    while got < want:
        k = sock.recv_into(mv[got:want])
        if not k:
            raise ConnectionError("client closed mid-body")
        got += k


def connect_upstream(port: int, total: int) -> socket.socket:
    up = socket.create_connection(("127.0.0.1", port))
    up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {total}\r\n\r\n"
    up.sendall(head.encode())
    return up


def read_response(up: socket.socket) -> dict:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = up.recv(65536)
        if not chunk:
            raise ConnectionError("upstream closed before answering")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(body) < length:
        chunk = up.recv(65536)
        if not chunk:
            raise ConnectionError("upstream closed mid-answer")
        body += chunk
    up.close()
    if status != 200:
        raise RuntimeError(f"upstream status {status}: {body[:200]!r}")
    return json.loads(body[:length])


def aligned_write(fd: int, mv: memoryview, k: int, offset: int) -> None:
    """O_DIRECT pwrite of k bytes; a short unaligned tail is padded and the file truncated back."""
    padded = -(-k // ALIGN) * ALIGN
    done = 0
    while done < padded:
        done += os.pwrite(fd, mv[done:padded], offset + done)
    if padded != k:
        os.ftruncate(fd, offset + k)


class Upload:
    def __init__(self, name: str, total: int, path: Path, port: int, sync_every: int) -> None:
        # lower-case suffixes: "s" a syncer thread fdatasync's every `sync_every` bytes written; "r" the spool
        # file is a recycled one (one per variant name, kept between uploads: no allocation, no unlink)
        variant = name.rstrip("sr")
        suffix = name[len(variant) :]
        assert variant in BASES and suffix in SUFFIXES, name
        self.reuse = "r" in suffix
        if self.reuse:
            path = path.parent / f"pool-{name}"
        self.variant, self.total, self.path, self.port = variant, total, path, port
        self.sync_every = sync_every if "s" in suffix else 0
        direct = variant in ("TD", "TDW", "C")
        flags = os.O_RDWR | os.O_CREAT | (0 if self.reuse else os.O_TRUNC) | (os.O_DIRECT if direct else 0)
        self.fd = os.open(path, flags, 0o600)
        self.rfd = os.open(path, os.O_RDONLY | os.O_DIRECT) if variant == "TD" or variant == "TDW" else -1
        self.sync_s = 0.0
        self.syncs = 0
        self.bg_sync_s = 0.0
        self.bg_syncs = 0
        self.written = 0  # bytes written so far (appends are sequential), for the syncer
        self.done = False
        self.committed = 0
        self.cond = threading.Condition()
        self.result: dict | None = None
        self.error: BaseException | None = None
        self.trail: threading.Thread | None = None
        self.up: socket.socket | None = None
        self.writer: threading.Thread | None = None
        self.bufs = [mmap.mmap(-1, BUF) for _ in range(NBUFS if variant in ("C", "CB", "TDW") else 1)]
        self.free: queue.Queue = queue.Queue()
        self.work: queue.Queue = queue.Queue()
        for b in self.bufs:
            self.free.put(memoryview(b))
        if variant in ("T", "TD", "TDW"):
            self.trail = threading.Thread(target=self._trail, daemon=True)
            self.trail.start()
        if variant in ("C", "CB"):
            self.up = connect_upstream(port, total)
        if variant in ("C", "CB", "TDW"):
            self.writer = threading.Thread(target=self._write_loop, daemon=True)
            self.writer.start()
        self.syncer: threading.Thread | None = None
        if self.sync_every:
            self.syncer = threading.Thread(target=self._sync_loop, daemon=True)
            self.syncer.start()

    # -- threads
    def _trail(self) -> None:
        try:
            up = connect_upstream(self.port, self.total)
            sent = 0
            rbuf = memoryview(mmap.mmap(-1, BUF)) if self.rfd >= 0 else None
            while sent < self.total:
                with self.cond:
                    while self.committed <= sent:
                        self.cond.wait()
                    end = self.committed
                while sent < end:
                    if rbuf is None:
                        n = os.sendfile(up.fileno(), self.fd, sent, end - sent)
                    else:
                        want = min(BUF, end - sent)
                        got = os.preadv(self.rfd, [rbuf[: -(-want // ALIGN) * ALIGN]], sent)
                        n = min(got, want)
                        up.sendall(rbuf[:n])
                    if n <= 0:
                        raise RuntimeError("trail read nothing")
                    sent += n
            self.result = read_response(up)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def _wrote(self, end: int) -> None:
        if self.sync_every:
            with self.cond:
                self.written = end
                self.cond.notify_all()

    def _sync_loop(self) -> None:
        synced = 0
        while True:
            with self.cond:
                while not self.done and self.written - synced < self.sync_every:
                    self.cond.wait()
                if self.done:
                    return
                target = self.written
            t = time.perf_counter()
            os.fdatasync(self.fd)
            self.bg_sync_s += time.perf_counter() - t
            self.bg_syncs += 1
            synced = target

    def _write_loop(self) -> None:
        direct = self.variant in ("C", "TDW")
        while True:
            item = self.work.get()
            if item is None:
                self.work.task_done()
                return
            mv, offset, k = item
            try:
                if direct:
                    aligned_write(self.fd, mv, k, offset)
                else:
                    done = 0
                    while done < k:
                        done += os.pwrite(self.fd, mv[done:k], offset + done)
                self._wrote(offset + k)
            except BaseException as exc:
                self.error = exc
            self.free.put(mv)
            self.work.task_done()

    # -- per append
    def append(self, sock: socket.socket, offset: int, n: int) -> None:
        v = self.variant
        end = offset + n
        if v in ("A", "T"):
            mv = self.free.get()
            pos = offset
            while pos < end:
                k = sock.recv_into(mv[: min(BUF, end - pos)])
                if not k:
                    raise ConnectionError("client closed mid-append")
                done = 0
                while done < k:
                    done += os.write(self.fd, mv[done:k])
                pos += k
                self._wrote(pos)
            self.free.put(mv)
        elif v == "TD":
            assert offset % ALIGN == 0, offset
            mv = self.free.get()
            pos = offset
            while pos < end:
                k = min(BUF, end - pos)
                fill(sock, mv, k)
                aligned_write(self.fd, mv, k, pos)
                pos += k
                self._wrote(pos)
            self.free.put(mv)
        else:  # C, CB, TDW: a writer thread; C and CB also tee to the open upstream request
            if v != "CB":
                assert offset % ALIGN == 0, offset
            pos = offset
            while pos < end:
                k = min(BUF, end - pos)
                mv = self.free.get()
                fill(sock, mv, k)
                self.work.put((mv, pos, k))
                if self.up is not None:
                    self.up.sendall(mv[:k])
                pos += k
            self.work.join()
        if self.error is not None:
            raise self.error
        t = time.perf_counter()
        os.fdatasync(self.fd)
        self.sync_s += time.perf_counter() - t
        self.syncs += 1
        with self.cond:
            self.committed = end
            self.cond.notify_all()

    def finish(self) -> dict:
        try:
            if self.variant == "A":
                up = connect_upstream(self.port, self.total)
                sent = 0
                while sent < self.total:
                    sent += os.sendfile(up.fileno(), self.fd, sent, self.total - sent)
                self.result = read_response(up)
            elif self.trail is not None:
                self.trail.join()
            else:
                assert self.up is not None
                self.result = read_response(self.up)
            if self.error is not None:
                raise self.error
            return {
                "upstream": self.result,
                "sync_s": self.sync_s,
                "syncs": self.syncs,
                "bg_sync_s": self.bg_sync_s,
                "bg_syncs": self.bg_syncs,
            }
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        with self.cond:
            self.done = True
            self.cond.notify_all()
        if self.syncer is not None:
            self.syncer.join()
        if self.writer is not None and self.writer.is_alive():
            self.work.put(None)
            self.writer.join()
        for fd in (self.fd, self.rfd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.rfd = -1
        if not self.reuse:
            self.path.unlink(missing_ok=True)


def plain(sock: socket.socket, n: int, port: int) -> dict:
    up = connect_upstream(port, n)
    mv = memoryview(mmap.mmap(-1, BUF))
    left = n
    while left:
        k = sock.recv_into(mv[: min(BUF, left)])
        if not k:
            raise ConnectionError("client closed mid-body")
        up.sendall(mv[:k])
        left -= k
    return {"upstream": read_response(up)}


def handle(sock: socket.socket, port: int, spool: Path, sync_every: int) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    uploads: dict[str, Upload] = {}
    try:
        while True:
            line = read_line(sock)
            if not line:
                return
            parts = line.decode().split()
            try:
                if parts[0] == "PLAIN":
                    answer = "OK " + json.dumps(plain(sock, int(parts[1]), port))
                else:
                    _, variant, uid, offset, n, total, last = parts
                    if uid not in uploads:
                        assert int(offset) == 0
                        path = spool / f"sim-{os.getpid()}-{uid}"
                        uploads[uid] = Upload(variant, int(total), path, port, sync_every)
                    up = uploads[uid]
                    up.append(sock, int(offset), int(n))
                    if last == "1":
                        del uploads[uid]
                        answer = "OK " + json.dumps(up.finish())
                    else:
                        answer = "OK"
            except Exception as exc:
                answer = f"ERR {type(exc).__name__}: {exc}".replace("\n", " ")
                sock.sendall(answer.encode() + b"\n")
                return
            sock.sendall(answer.encode() + b"\n")
            if parts[0] == "APPEND" and last == "1":
                # cleanup after the answer (close + unlink frees 1 GiB of extents; the file system has `discard`)
                t = time.perf_counter()
                up.close()
                sock.sendall(b"DONE %.6f\n" % (time.perf_counter() - t))
    finally:
        for up in uploads.values():
            up.close()
        sock.close()


def serve(port: int, spool: Path, sync_every: int) -> None:
    lsock = socket.create_server(("127.0.0.1", 0))
    print(lsock.getsockname()[1], flush=True)
    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=handle, args=(conn, port, spool, sync_every), daemon=True).start()


# ---------------------------------------------------------------------------------------------- client side


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, port: int, sim_pid: int, data: Path) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(300)
        self.reader = self.sock.makefile("rb")
        self.sim_pid = sim_pid
        self.file = data.open("rb")
        self.size = data.stat().st_size
        self.uid = 0

    def _send(self, head: str, offset: int, n: int) -> str:
        self.sock.sendall(head.encode())
        sent = self.sock.sendfile(self.file, offset, n)
        assert sent == n, (sent, n)
        answer = self.reader.readline().decode().strip()
        if not answer.startswith("OK"):
            raise RuntimeError(f"sim answered {answer!r} to {head.strip()!r}")
        return answer[3:]

    def _check(self, payload: str) -> dict:
        info = json.loads(payload)
        got = info["upstream"]["bytes"]
        if got != self.size:
            raise SystemExit(f"FAIL: upstream received {got} bytes, the file has {self.size}")
        return info

    def upload(self, variant: str, append: int) -> dict:
        cpu0 = proc_cpu(self.sim_pid)
        t0 = time.perf_counter()
        row: dict = {}
        if variant == "plain":
            info = self._check(self._send(f"PLAIN {self.size}\n", 0, self.size))
        else:
            self.uid += 1
            offset = 0
            tail_start = t0
            while offset < self.size:
                n = min(append, self.size - offset)
                last = offset + n == self.size
                if last:
                    tail_start = time.perf_counter()
                head = f"APPEND {variant} {self.uid} {offset} {n} {self.size} {int(last)}\n"
                payload = self._send(head, offset, n)
                offset += n
            info = self._check(payload)
            t1 = time.perf_counter()
            row.update(appends=tail_start - t0, tail=t1 - tail_start, sync=info["sync_s"], syncs=info["syncs"])
            row.update(bg_sync=info["bg_sync_s"], bg_syncs=info["bg_syncs"])
        row["wall"] = time.perf_counter() - t0
        row["cpu"] = proc_cpu(self.sim_pid) - cpu0
        if variant != "plain":  # the sim closes and unlinks the spool file after the final OK: not in `wall`
            done = self.reader.readline().decode().split()
            assert done[0] == "DONE", done
            row["unlink"] = float(done[1])
        return row


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def fmt_range(values: list[float], unit: str = "") -> str:
    return f"{min(values):.2f}-{max(values):.2f}{unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--variants", default="plain,A,T,TD,C,CB")
    parser.add_argument("--append-size", type=int, default=16 << 20)
    parser.add_argument("--spool-dir", type=Path, default=Path("/tmp/p-trail/spool"))
    parser.add_argument("--serve", action="store_true", help="run as the relay-sim (started by the client)")
    parser.add_argument("--upstream-port", type=int)
    parser.add_argument(
        "--sync-every", type=int, default=4 << 20, help="bytes between the syncer's fdatasync (variants ending in s)"
    )
    args = parser.parse_args()
    if args.serve:
        serve(args.upstream_port, args.spool_dir, args.sync_every)
        return

    variants = args.variants.split(",")
    unknown = set(variants) - {"plain", *(b + s for b in BASES for s in SUFFIXES)}
    if unknown or "plain" not in variants:
        parser.error(f"unknown variants {sorted(unknown)} (plain is required)")
    if args.append_size % ALIGN:
        parser.error("--append-size must be a multiple of 4096 (O_DIRECT)")
    args.spool_dir.mkdir(parents=True, exist_ok=True)
    same_fs = os.stat(args.spool_dir).st_dev == os.stat("/tmp").st_dev
    print(f"spool dir {args.spool_dir} on /tmp's file system: {same_fs}")
    size = args.file.stat().st_size
    print(f"file {args.file} {size} bytes, appends of {args.append_size} ({-(-size // args.append_size)} appends)")
    print("uptime before:", uptime())

    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(UPSTREAM), "--port", str(port)])]
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.05)
        cmd = [sys.executable, str(HERE), "--serve", "--upstream-port", str(port), "--spool-dir", str(args.spool_dir)]
        cmd += ["--sync-every", str(args.sync_every)]
        sim = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        procs.append(sim)
        assert sim.stdout is not None
        client = Client(int(sim.stdout.readline()), sim.pid, args.file)
        # warm the data file into the page cache, and the paths once each (not measured)
        subprocess.run(["cat", str(args.file)], stdout=subprocess.DEVNULL, check=True)
        for v in variants:
            client.upload(v, args.append_size)

        rows: dict[str, list[dict]] = {v: [] for v in variants}
        for rep in range(args.reps):
            k = rep % len(variants)
            order = variants[k:] + variants[:k]
            results = {v: client.upload(v, args.append_size) for v in order}
            for v in order:
                r = results[v]
                r["ratio"] = r["wall"] / results["plain"]["wall"]
                rows[v].append(r)
                extra = ""
                if "tail" in r:
                    extra = (
                        f"  appends {r['appends']:6.3f}  tail {r['tail']:6.3f}"
                        f"  fdatasync {r['sync']:6.3f} s/{r['syncs']}  syncer {r['bg_sync']:6.3f} s/{r['bg_syncs']}"
                        f"  unlink {r['unlink']:5.3f}"
                    )
                print(
                    f"rep {rep + 1} {v:6s} wall {r['wall']:6.3f} s  x{r['ratio']:.2f}  sim CPU {r['cpu']:5.2f}{extra}",
                    flush=True,
                )
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        for pooled in args.spool_dir.glob("pool-*"):
            pooled.unlink()

    print("uptime after:", uptime())
    print()
    print(
        f"{'variant':7s} {'wall med':>8s} {'wall range':>12s} {'ratio med':>9s} {'ratio range':>12s}"
        f" {'best':>6s} {'best/':>5s} {'CPU-s':>6s}"
        f" {'appends':>8s} {'tail':>6s} {'fdatasync':>9s} {'syncer':>6s} {'unlink':>6s}"
    )
    med = statistics.median
    best_plain = min(r["wall"] for r in rows["plain"])
    for v in variants:
        rs = rows[v]
        walls, ratios = [r["wall"] for r in rs], [r["ratio"] for r in rs]
        line = (
            f"{v:7s} {med(walls):8.3f} {fmt_range(walls):>12s} {med(ratios):9.2f} {fmt_range(ratios):>12s}"
            f" {min(walls):6.3f} {min(walls) / best_plain:5.2f} {med([r['cpu'] for r in rs]):6.2f}"
        )
        if "tail" in rs[0]:
            line += (
                f" {med([r['appends'] for r in rs]):8.3f} {med([r['tail'] for r in rs]):6.3f}"
                f" {med([r['sync'] for r in rs]):9.3f} {med([r['bg_sync'] for r in rs]):6.3f}"
                f" {med([r['unlink'] for r in rs]):6.3f}"
            )
        print(line)


if __name__ == "__main__":
    main()
