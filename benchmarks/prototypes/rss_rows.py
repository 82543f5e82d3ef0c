"""Where a long-lived relay's memory goes: the benchmark's rows one by one, VmRSS/VmHWM read between them.

    python benchmarks/prototypes/rss_rows.py --rows raw,chunked,multipart,sock,one,appends,conc,raw \
        --variant base= --variant arena2=MALLOC_ARENA_MAX=2 --digest none --size 1GiB

Each `--variant NAME=K=V,K=V` is one relay-server (the benchmark's arguments: `--upstream` the raw discard upstream,
the resumable route and a spool of its own) started with those environment variables added (PYTHONPATH=DIR runs
another checkout of the relay package). The rows run interleaved across the variants (row 1 on A, row 1 on B,
row 2 on A, ...), each through benchmarks/run.py's own code (`Suite.upload`, `resumable.upload`, the concurrency
row), VmHWM reset before each row as the benchmark does (`idle`: 1 s of nothing after a reset; `pause`: 2 s of
nothing, no reset). After each row it prints the row's peak RSS, the RSS
left after it, how that splits into the main heap (brk), other anonymous mappings (thread arenas, pymalloc arenas,
mmap'd buffers) and files, and the number of threads: what a row leaves behind is what the next row's peak starts
from.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BENCH))

import resumable  # noqa: E402
import run  # noqa: E402

ROWS = ("idle", "pause", "raw", "chunked", "multipart", "sock", "one", "appends", "conc", "small")


def smaps(pid: int) -> dict[str, float]:
    """MiB resident in the main heap, other anonymous mappings and files; thread count. Of the anonymous
    mappings, `stacks` (8 MiB each: threads' stacks, glibc keeps those of ended threads cached) and `arenas`
    (64 MiB-aligned: glibc's per-thread malloc arenas) are also counted apart."""
    out = {"heap": 0.0, "anon": 0.0, "file": 0.0, "stacks": 0.0, "arenas": 0.0}
    kind, sub = "anon", ""
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                if m := re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line):
                    parts = line.split()
                    name = parts[5] if len(parts) > 5 else ""
                    kind = "heap" if name == "[heap]" else "file" if name.startswith("/") else "anon"
                    start, end = int(m.group(1), 16), int(m.group(2), 16)
                    sub = ""
                    if kind == "anon" and not name:
                        sub = "stacks" if end - start == 8 << 20 else "arenas" if start % (64 << 20) == 0 else ""
                elif line.startswith("Rss:"):
                    out[kind] += int(line.split()[1]) / 1024
                    if sub:
                        out[sub] += int(line.split()[1]) / 1024
        out["threads"] = float(len(list(Path(f"/proc/{pid}/task").iterdir())))
    except OSError:
        pass
    return out


def concurrent(suite: run.Suite, name: str) -> dict[str, Any]:
    """The benchmark's concurrency row: `--conc` uploads of `--conc-size` through one `curl -Z`."""
    n, size = suite.a.conc, suite.a.conc_size
    f = run.data_file(Path(suite.a.data_dir), size)
    url = suite.server(name).url
    pids = suite.measured(name)
    run.reset_hwm(pids)
    cpu0, flt0 = run._stat(pids)
    cmd = ["curl", "-sS", "-Z", "--parallel-max", str(n), "--parallel-immediate", "-w", run.CURL_W + "\\n"]
    for i in range(n):
        cmd += ["-T", str(f), "-o", "/dev/null", f"{url}{run.URL_PATH}-c{i}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=suite.a.timeout, stdin=subprocess.DEVNULL)
    ok = sum(1 for ln in p.stdout.splitlines() if ln.split()[:2] == ["200", str(size)])
    cpu1, flt1 = run._stat(pids)
    return {"ok": ok == n, "hwm_kib": run.status_kib(pids, "VmHWM"), "cpu": cpu1 - cpu0, "faults": flt1 - flt0}


def one_row(suite: run.Suite, name: str, row: str, f: Path) -> dict[str, Any]:
    if row == "pause":  # no reset, no upload: what the relay does when left alone for 2 s
        time.sleep(2)
        return {"ok": True, "hwm_kib": run.status_kib(suite.measured(name), "VmHWM")}
    if row == "idle":
        pids = suite.measured(name)
        run.reset_hwm(pids)
        time.sleep(1)
        return {"ok": True, "hwm_kib": run.status_kib(pids, "VmHWM")}
    if row in run.WORKLOADS:
        return suite.upload(name, row, f, row)
    if row in ("sock", "one", "appends"):
        workload = {"sock": resumable.SOCK, "one": resumable.ONE, "appends": resumable.APPENDS}[row]
        return suite.resumable_upload(name, workload, f, row)
    if row == "conc":
        return concurrent(suite, name)
    rows = suite.small_rows([name])
    return {"ok": True, "hwm_kib": run.status_kib(suite.measured(name), "VmHWM"), "cpu": rows[0].get("cpu", 0.0)}


def variant(spec: str) -> tuple[str, dict[str, str]]:
    name, _, env = spec.partition("=")
    return name, dict(kv.split("=", 1) for kv in env.split(",") if kv)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="idle,raw,chunked,multipart,sock,one,appends,conc,raw,small,raw")
    p.add_argument("--variant", action="append", default=[], help="NAME=K=V,K=V (repeatable; default base=)")
    p.add_argument("--digest", default="none", choices=["none", "sha256"])
    p.add_argument("--size", default="1GiB")
    p.add_argument("--conc", default="32")
    p.add_argument("--conc-size", default="64MiB")
    p.add_argument("--small", default="500")
    p.add_argument("--data-dir", default="/tmp/relay-bench")
    a = p.parse_args()
    rows = a.rows.split(",")
    if unknown := set(rows) - set(ROWS):
        p.error(f"unknown rows: {unknown}")
    args = run.parse_args(
        ["--size", a.size, "--conc", a.conc, "--conc-size", a.conc_size, "--small", a.small, "--data-dir", a.data_dir]
    )
    args.sections = ["throughput", "resumable"]
    suite = run.Suite(args)
    variants = [variant(spec) for spec in a.variant or ["base="]]
    f = run.data_file(Path(a.data_dir), args.size)
    try:
        port = run.free_port()
        up = run.Server("upstream", [run.PY, str(BENCH / "upstream.py"), "--port", str(port)], port, suite.run_dir)
        suite.upstream = suite._start(up)
        for name, env in variants:
            extra = resumable.relay_args(suite.run_dir, name)
            suite.paths[name] = suite.start_relay(name, a.digest, extra, env=env or None)
            suite.relays.add(name)
        head = f"{'variant':>10} {'row':>10} {'peak':>6} {'after':>6} {'heap':>6} {'anon':>6} {'file':>5}"
        print(f"{head} stacks arenas thr  cpu-s  faults ok")
        for row in rows:
            for name, _ in variants:
                r = one_row(suite, name, row, f)
                pid = suite.server(name).proc.pid  # type: ignore[union-attr]
                after = run.status_kib([pid], "VmRSS") / 1024
                m = smaps(pid)
                print(
                    f"{name:>10} {row:>10} {r['hwm_kib'] / 1024:6.1f} {after:6.1f} {m['heap']:6.1f} "
                    f"{m['anon']:6.1f} {m['file']:5.1f} {m['stacks']:6.1f} {m['arenas']:6.1f} "
                    f"{m.get('threads', 0):3.0f} {r.get('cpu', 0):6.2f} {r.get('faults', 0):7d} {r['ok']}",
                    flush=True,
                )
    finally:
        suite.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
