"""Resumable (tus 1.0.0) rows of the benchmark suite, measured in benchmarks/run.py's interleaved run.

For each relay that speaks tus (relay-sha256, relay-none: started with `--spool <run dir>/spool-<name>`, on the
same disk as the data files, and a route that forwards a finished resumable upload as the raw bytes, so the
upstream gets exactly what a plain `curl -T` brings it), beside the plain uploads of the same file:

  - `sock`: the plain upload again (POST, Content-Length), sent by the same raw-socket sender as the tus rows,
    to every path but sink-check: the reference the resumable ratios are taken against, client cost equal;
  - `tus-1`: POST creation with Upload-Length, then ONE PATCH of the whole file (cut-through);
  - `tus-appends`: POST, then PATCHes of `--append-size` (16 MiB) each; all but the last only go to the spool,
    the last one completes the upload and forwards the spool plus its own bytes;
  - in the memory section, `tus-1` at every memory size: relay peak RSS beside the plain upload's.

The sender is a keep-alive HTTP/1.1 client on a plain socket; a body is read from the file into one 64 KiB
buffer and written piece by piece, as `curl -T` does (nothing is loaded into memory; the client's cost is the
same for plain and tus rows). Not `socket.sendfile`: measured here, a sendfile client made the receiving relay
spend 1.1 CPU-s/GiB instead of 0.7 on the same plain upload (run 8 in benchmarks/RESULTS.md used it).
A resumable upload's time runs from the first byte of the creation POST (connect included, like curl's
`time_total`) to the answer of the completing PATCH, which the relay sends only once the upstream answered.

Every upload is checked: the creation answers 201 with a Location, every PATCH 204 with the Upload-Offset it
should have reached, the completing one with `X-Upstream-Status: 200`; the upstream's byte count for the
upload (the discard upstream's running totals, before and after) equals the file size, in exactly one
request; and where the relay computed it, `X-Upload-Sha256` equals the file's sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

MiB, GiB = 1 << 20, 1 << 30
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"
WRITE_SIZE = 64 * 1024  # curl's upload buffer
RESUMABLE_RELAYS = ("relay-sha256", "relay-none")  # the relays that speak tus (not prototypes, not nginx)
ONE, APPENDS, SOCK = "tus-1", "tus-appends", "sock"
# The route of the relays under test: resumable uploads forwarded as the raw bytes (the default is multipart).
RELAY_TOML = '[[routes]]\nprefix = "/upload/"\nresumable_forward = "raw"\n'


def label(n: int) -> str:
    for unit, k in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= k and n % k == 0:
            return f"{n // k} {unit}"
    return f"{n} B"


def workload_labels(append_size: int) -> dict[str, str]:
    return {
        SOCK: "raw, Content-Length (raw socket, 64 KiB writes)",
        ONE: "tus, one append (POST + 1 PATCH)",
        APPENDS: f"tus, {label(append_size)} appends (POST + PATCHes)",
    }


class Host(Protocol):
    """What the suite (benchmarks/run.py) gives this module."""

    a: argparse.Namespace
    run_dir: Path

    def url(self, name: str) -> str: ...

    def port(self, name: str) -> int: ...

    def meter(self, name: str) -> Callable[[], dict[str, Any]]: ...

    def upstream_stats(self) -> dict[str, int]: ...


def relay_args(run_dir: Path, name: str) -> list[str]:
    """Extra relay-server arguments: the route forwarding resumable uploads raw, and a spool of its own."""
    toml = run_dir / "relay-resumable.toml"
    toml.write_text(RELAY_TOML)
    spool = spool_dir(run_dir, name)
    spool.mkdir(parents=True, exist_ok=True)
    return ["--config", str(toml), "--spool", str(spool)]


def spool_dir(run_dir: Path, name: str) -> Path:
    return run_dir / f"spool-{name}"


def spool_left(run_dir: Path, names: list[str], wait: float = 6.0) -> dict[str, int]:
    """Data files still in each relay's spool, waiting up to `wait` s (delivered uploads' data go within 5 s)."""
    deadline = time.monotonic() + wait
    while True:
        left = {n: len(list(spool_dir(run_dir, n).glob("*.data"))) for n in names}
        if not any(left.values()) or time.monotonic() > deadline:
            return left
        time.sleep(0.25)


def disk_probe(directory: Path, size: int) -> float:
    """MB/s of writing `size` bytes into `directory` then fsync: what a spool commit costs on this disk."""
    block = b"\xa5" * MiB
    path = directory / ".disk-probe"
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    secs = time.perf_counter() - t0
    path.unlink()
    return size / secs / 1e6


_SHA: dict[Path, str] = {}


def file_sha256(path: Path) -> str:
    if path not in _SHA:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(4 * MiB):
                h.update(chunk)
        _SHA[path] = h.hexdigest()
    return _SHA[path]


# --------------------------------------------------------------------------------------------- the sender
@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Sender:
    """A keep-alive HTTP/1.1 client on a plain socket; request bodies are written from a file, 64 KiB at a time."""

    port: int
    timeout: float
    sock: socket.socket | None = None
    buf: bytes = b""
    interim: list[int] = field(default_factory=list)
    sent_at: float = 0.0  # perf_counter() when the last request's body was written

    def connect(self) -> socket.socket:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buf = b""
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: tuple[BinaryIO, int, int] | None = None,
    ) -> Answer:
        """`body` is (file, offset, count): that slice of the file is the request body."""
        sock = self.connect()
        count = body[2] if body is not None else 0
        lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {count}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if body is not None and count:
            f, offset, _ = body
            try:
                sent = self._send_body(sock, f, offset, count)
            except OSError:  # the server answered early and closed: its answer may still be readable
                sent = -1
            if sent != count:
                answer = self._read(method)
                self.close()
                return answer
        self.sent_at = time.perf_counter()
        return self._read(method)

    @staticmethod
    def _send_body(sock: socket.socket, f: BinaryIO, offset: int, count: int) -> int:
        buf = bytearray(WRITE_SIZE)
        view = memoryview(buf)
        f.seek(offset)
        sent = 0
        while sent < count:
            n = f.readinto(view[: min(WRITE_SIZE, count - sent)])  # type: ignore[attr-defined]
            if not n:
                break  # the file is shorter than asked
            sock.sendall(view[:n])
            sent += n
        return sent

    def _fill(self) -> None:
        assert self.sock is not None
        more = self.sock.recv(1 << 16)
        if not more:
            raise ConnectionError("the server closed the connection before its answer ended")
        self.buf += more

    def _read(self, method: str) -> Answer:
        while True:
            while b"\r\n\r\n" not in self.buf:
                self._fill()
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if 100 <= status < 200:
                self.interim.append(status)  # 100 Continue, 104 Upload Resumption Supported
                continue
            break
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._chunked()
        elif "content-length" in headers:
            length = int(headers["content-length"])
            while len(self.buf) < length:
                self._fill()
            body, self.buf = self.buf[:length], self.buf[length:]
        else:  # until the server closes
            assert self.sock is not None
            while more := self.sock.recv(1 << 16):
                self.buf += more
            body, self.buf = self.buf, b""
            self.close()
        if "close" in headers.get("connection", "").lower():
            self.close()
        return Answer(status, headers, body)

    def _chunked(self) -> bytes:
        out = bytearray()
        while True:
            while b"\r\n" not in self.buf:
                self._fill()
            line, _, self.buf = self.buf.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while not (self.buf.startswith(b"\r\n") or b"\r\n\r\n" in self.buf):
                    self._fill()
                end = 2 if self.buf.startswith(b"\r\n") else self.buf.index(b"\r\n\r\n") + 4
                self.buf = self.buf[end:]
                return bytes(out)
            while len(self.buf) < size + 2:
                self._fill()
            out += self.buf[:size]
            self.buf = self.buf[size + 2 :]


# --------------------------------------------------------------------------------------------- uploads
class Failed(Exception):
    pass


def _expect(answer: Answer, status: int, what: str) -> None:
    if answer.status != status:
        raise Failed(f"{what}: HTTP {answer.status}, expected {status}: {answer.body[:200]!r}")


def _plain(sender: Sender, url_path: str, f: BinaryIO, size: int, r: dict[str, Any]) -> None:
    answer = sender.request("POST", url_path, {"Content-Type": "application/octet-stream"}, (f, 0, size))
    r["status"] = answer.status
    r["upstream_bytes"] = json.loads(answer.body).get("bytes") if answer.status == 200 else None
    _expect(answer, 200, "plain POST")


def _tus(sender: Sender, url_path: str, f: BinaryIO, size: int, append: int, r: dict[str, Any]) -> str | None:
    """Create, then PATCH in pieces of `append` bytes; returns the relay's X-Upload-Sha256, if any."""
    t_create = time.perf_counter()
    created = sender.request("POST", url_path, {**TUS, "Upload-Length": str(size)})
    _expect(created, 201, "creation")
    location = created.headers.get("location")
    if not location:
        raise Failed("creation answered 201 without Location")
    if "://" in location:
        location = "/" + location.split("://", 1)[1].partition("/")[2]
    r["create_secs"] = time.perf_counter() - t_create
    offset, spool_bytes, spool_secs, appends, last = 0, 0, 0.0, 0, created
    waits: list[float] = []  # per non-completing append: from its last byte sent to its 204
    while offset < size:
        count = min(append, size - offset)
        t = time.perf_counter()
        last = sender.request(
            "PATCH",
            location,
            {**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS},
            (f, offset, count),
        )
        secs = time.perf_counter() - t
        appends += 1
        _expect(last, 204, f"PATCH at {offset}")
        offset += count
        if last.headers.get("upload-offset") != str(offset):
            raise Failed(f"PATCH answered Upload-Offset {last.headers.get('upload-offset')}, expected {offset}")
        if offset < size:  # a non-completing append: it only went into the spool (and was fsynced)
            spool_bytes += count
            spool_secs += secs
            waits.append(time.perf_counter() - sender.sent_at)
        else:
            r["last_patch_secs"] = secs
    r.update(appends=appends, spool_bytes=spool_bytes, spool_secs=spool_secs, status=last.status)
    if waits:
        r["answer_wait_ms"] = statistics.median(waits) * 1000
    upstream_status = last.headers.get("x-upstream-status")
    r["upstream_status"] = int(upstream_status) if upstream_status and upstream_status.isdigit() else None
    if r["upstream_status"] != 200:
        raise Failed(f"the completing PATCH answered X-Upstream-Status {upstream_status}")
    return last.headers.get("x-upload-sha256")


def upload(host: Host, name: str, workload: str, path: Path, tag: str) -> dict[str, Any]:
    """One measured upload (`sock`, `tus-1` or `tus-appends`), as a row shaped like run.py's."""
    a = host.a
    size = path.stat().st_size
    append = size if workload == ONE else a.append_size
    if workload != SOCK:
        file_sha256(path)  # computed (and cached) before the clock starts
    r: dict[str, Any] = dict(path=name, workload=workload, tag=tag, size=size, bytes=size)
    if workload != SOCK:
        r["append_size"] = append
    sender = Sender(host.port(name), a.timeout)
    url_path = "/upload/bench"
    error = None
    before = host.upstream_stats() if workload != SOCK else {}
    done = host.meter(name)
    t0 = time.perf_counter()
    try:
        with open(path, "rb", buffering=0) as f:
            if workload == SOCK:
                _plain(sender, url_path, f, size, r)
                sha = None
            else:
                sha = _tus(sender, url_path, f, size, append, r)
    except (OSError, ValueError, Failed) as exc:
        error = f"{exc!r}"
        sha = None
    secs = time.perf_counter() - t0
    r.update(done())
    sender.close()
    r.update(wall=secs, secs=secs)
    if workload != SOCK and error is None:
        after = host.upstream_stats()
        r["upstream_bytes"] = after["bytes"] - before["bytes"]
        r["upstream_requests"] = after["requests"] - before["requests"]
        if r["upstream_requests"] != 1:
            error = f"the upstream saw {r['upstream_requests']} requests for one upload"
        # Any relay that reports a sha256 (whatever it is called, prototypes too) is checked against the file's.
        r["sha256_ok"] = None if sha is None else sha == file_sha256(path)
        if r["sha256_ok"] is False:
            error = f"X-Upload-Sha256 {sha} is not the file's {file_sha256(path)}"
    r.setdefault("upstream_bytes", None)
    r.setdefault("status", None)
    if error:
        r["error"] = error
    r["ok"] = error is None and r["upstream_bytes"] == size
    r["mb_s"] = size / secs / 1e6 if r["ok"] and secs > 0 else 0.0
    return r


# --------------------------------------------------------------------------------------------- rendering
def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get("ok") and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def _rows(res: dict[str, Any], section: str, path: str, workload: str) -> list[dict[str, Any]]:
    return [r for r in res[section] if r["path"] == path and r["workload"] == workload]


def summary(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """relay -> the resumable figures: medians, ratios to the plain upload, spool MB/s, CPU, RSS."""
    out: dict[str, dict[str, Any]] = {}
    for relay in RESUMABLE_RELAYS:
        sock = _rows(res, "throughput", relay, SOCK)
        one = _rows(res, "throughput", relay, ONE)
        many = _rows(res, "throughput", relay, APPENDS)
        if not one and not many:
            continue
        size = (one or many)[0]["size"]
        curl = [r for r in _rows(res, "throughput", relay, "raw") if r["size"] == size]
        s: dict[str, Any] = {"size": size, "n": {}, "ok": {}}
        for key, rows in ((SOCK, sock), (ONE, one), (APPENDS, many), ("curl", curl)):
            s[key] = _median(rows, "secs")
            s["n"][key], s["ok"][key] = len(rows), sum(1 for r in rows if r["ok"])
            good = [r for r in rows if r["ok"]]
            gib = sum(r["bytes"] for r in good) / GiB
            s[f"cpu_{key}"] = sum(r["cpu"] for r in good) / gib if gib else None
        for key in (ONE, APPENDS):
            s[f"ratio_{key}"] = s[key] / s[SOCK] if s[key] and s[SOCK] else None
            s[f"ratio_curl_{key}"] = s[key] / s["curl"] if s[key] and s["curl"] else None
            paired = [
                t["secs"] / p["secs"]
                for t in (one if key == ONE else many)
                for p in sock
                if t["tag"] == p["tag"] and t["ok"] and p["ok"]
            ]
            s[f"paired_{key}"] = (min(paired), max(paired)) if paired else None
        spooled = [r for r in many if r["ok"] and r.get("spool_secs")]
        s["spool_mb_s"] = (
            sum(r["spool_bytes"] for r in spooled) / sum(r["spool_secs"] for r in spooled) / 1e6 if spooled else None
        )
        s["create_ms"] = (_median(one + many, "create_secs") or 0) * 1000 if one or many else None
        s["answer_wait_ms"] = _median(many, "answer_wait_ms")
        s["forward_secs"] = _median(many, "last_patch_secs")
        s["appends"] = many[0].get("appends") if many else None
        s["append_size"] = many[0].get("append_size") if many else None
        mem_tus = {r["size"]: r for r in _rows(res, "memory", relay, ONE) if r["ok"]}
        mem_plain = {r["size"]: r for r in _rows(res, "memory", relay, "raw") if r["ok"]}
        hw = [r["hwm_kib"] / 1024 for r in mem_tus.values()]
        s["rss_sizes"] = sorted(mem_tus)
        s["rss_spread"] = max(hw) - min(hw) if len(hw) >= 2 else None
        over = [(mem_tus[z]["hwm_kib"] - mem_plain[z]["hwm_kib"]) / 1024 for z in mem_tus if z in mem_plain]
        s["rss_over_plain"] = max(over) if over else None
        s["rss_max"] = max(hw) if hw else None
        out[relay] = s
    return out


def render(res: dict[str, Any]) -> list[str]:
    """The "Resumable uploads" section and its targets (issue 11), as Markdown lines."""
    s = summary(res)
    if not s:
        return []
    lines: list[str] = []
    add = lines.append
    first = next(iter(s.values()))
    append = first.get("append_size") or res["meta"].get("args", {}).get("append_size") or 16 * MiB
    add(f"## Resumable uploads (tus): {label(first['size'])}, against the plain upload of the same file")
    add("")
    add(
        "Time from the first byte of the creation POST to the completing PATCH's answer (sent once the upstream"
        " answered), median of the reps; the ratios are to the plain upload (POST, Content-Length) of the same"
        " file sent by the same raw-socket sender to the same relay process in the same rep (min–max of the"
        " per-rep ratios in brackets), and to the plain `curl -T` row above."
    )
    add("")
    add(
        "| relay | plain s | tus one append s | vs plain | vs `curl -T` | "
        f"tus {label(append)} appends s | vs plain | vs `curl -T` | spool write MB/s | "
        "relay CPU-s/GiB plain / one / appends | ok |"
    )
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for relay, x in s.items():

        def ratio(key: str, x: dict[str, Any] = x) -> str:
            v, p = x[f"ratio_{key}"], x[f"paired_{key}"]
            return _f(v, "**{:.2f}x**") + (f" ({p[0]:.2f}–{p[1]:.2f})" if p else "")

        ok = " · ".join(f"{x['ok'][k]}/{x['n'][k]}" for k in (SOCK, ONE, APPENDS))
        add(
            f"| {relay} | {_f(x[SOCK])} | {_f(x[ONE])} | {ratio(ONE)} | {_f(x[f'ratio_curl_{ONE}'], '{:.2f}x')} | "
            f"{_f(x[APPENDS])} | {ratio(APPENDS)} | {_f(x[f'ratio_curl_{APPENDS}'], '{:.2f}x')} | "
            f"{_f(x['spool_mb_s'], '{:.0f}')} | {_f(x[f'cpu_{SOCK}'])} / {_f(x[f'cpu_{ONE}'])} / "
            f"{_f(x[f'cpu_{APPENDS}'])} | {ok} |"
        )
    add("")
    meta = res["meta"]
    notes = []
    if first.get("appends"):
        notes.append(
            f"{first['appends']} appends per upload; spool write MB/s is the non-completing appends' bytes over"
            " their time (each answered 204 after its fsync)"
        )
    for relay, x in s.items():
        if x["appends"] and x["appends"] > 1 and x[ONE] and x[APPENDS]:
            per = (x[APPENDS] - x[ONE]) / (x["appends"] - 1) * 1000
            notes.append(
                f"{relay}: creation (POST) {_f(x['create_ms'], '{:.1f}')} ms, each append beyond the first adds"
                f" {per:.0f} ms, of which {_f(x['answer_wait_ms'], '{:.1f}')} ms (median) from its last byte to its"
                f" 204 (the fsync, the info document); the completing append (the spool forwarded, plus its own"
                f" {label(x['append_size'] or 0)}) {_f(x['forward_secs'])} s"
            )
    if meta.get("disk_mb_s"):
        notes.append(f"the spool's disk wrote {meta['disk_mb_s']:.0f} MB/s with an fsync at the end (a probe)")
    left = meta.get("spool_left")
    if left is not None:
        notes.append(
            "spool data files left after the run: " + ", ".join(f"{k} {v}" for k, v in left.items())
            if any(left.values())
            else "no spool data file was left after the run"
        )
    if notes:
        add("Notes: " + "; ".join(notes) + ".")
        add("")
    add("### Targets (issue 11), from this run")
    add("")
    add("| target | relay | measured | verdict |")
    add("|---|---|---:|---|")
    for relay, x in s.items():
        for key, goal, what in ((ONE, 1.15, "one append"), (APPENDS, 1.6, f"{label(append)} appends")):
            v = x[f"ratio_{key}"]
            verdict = "not measured" if v is None else ("**met**" if v <= goal else f"missed by {v - goal:.2f}x")
            add(f"| {what} <= {goal}x plain | {relay} | {_f(v, '{:.2f}x')} | {verdict} |")
        over, spread = x["rss_over_plain"], x["rss_spread"]
        span = f"{label(min(x['rss_sizes']))}..{label(max(x['rss_sizes']))}" if x["rss_sizes"] else "sizes"
        verdict = "not measured" if over is None else ("**met**" if over <= 64 else f"over by {over - 64:.1f} MiB")
        add(
            f"| one-append peak RSS <= plain + 64 MiB ({span}) | {relay} | "
            f"{_f(over, '{:+.1f} MiB')} (spread {_f(spread, '{:.1f}')} MiB) | {verdict} |"
        )
    add("")
    return lines
