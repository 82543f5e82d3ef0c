"""Where a relay-server process's CPU goes on one 1 GiB upload: `perf stat` of the process, user/system CPU of its
loop thread and of the rest (the hash thread, which dies with its body), and a py-spy profile (issue 15).

    python benchmarks/prototypes/profile_relay.py --out /tmp/h_sha [--reps 3] CASE...

CASE is DIGEST-WORKLOAD: none-raw, sha256-raw, none-multipart, sha256-multipart (raw is `curl -T FILE`,
multipart `curl -F file=@FILE`). For each case it starts the discard upstream (benchmarks/upstream.py) and one
relay-server, warms it with a 16 MiB upload, then:
  1. `--reps` uploads each under `perf stat -e task-clock,context-switches,cpu-migrations,page-faults -p PID`
     (perf's output kept as CASE.perf.N.txt), with the /proc utime/stime of the process and of its main (loop)
     thread around each;
  2. one more upload under `py-spy record --native --threads -r 199 -f raw -p PID` (CASE.pyspy.txt, collapsed
     stacks), reduced by benchmarks/prototypes/profile_reduce.py;
  3. with --perf-record, one more under `perf record -e cpu-clock -F 999 -p PID` (on-CPU samples only, kernel
     symbols included), reported per thread and symbol (CASE.perf-report.txt).
Every upload must answer 200 with the upstream's count equal to the file's size.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from sha_ab import free_port, wait_port  # noqa: E402

GIB = 1024**3
CLK = os.sysconf("SC_CLK_TCK")
ROOT = HERE.parent.parent
VENV = Path(sys.executable).parent
PERF_EVENTS = "task-clock,context-switches,cpu-migrations,page-faults"


def times(pid: int, tid: int | None = None) -> tuple[float, float]:
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK, int(fields[12]) / CLK


def upload(workload: str, port: int, path: str) -> None:
    body = ["-T", path] if workload == "raw" else ["-F", f"file=@{path}"]
    out = subprocess.run(
        ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", *body, f"http://127.0.0.1:{port}/upload/profile"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    text, status = out.rsplit("\n", 1)
    assert status == "200", out
    assert '"bytes":' in text.replace(" ", ""), text


def measured(args: argparse.Namespace, case: str, pid: int, port: int, rep: int) -> dict[str, float]:
    _, workload = case.split("-")
    size = os.path.getsize(args.file)
    perf_out = args.out / f"{case}.perf.{rep}.txt"
    perf = subprocess.Popen(
        ["/usr/bin/perf", "stat", "-e", PERF_EVENTS, "-p", str(pid), "-o", str(perf_out)], start_new_session=True
    )
    time.sleep(0.5)  # perf attached
    u0, s0 = times(pid)
    lu0, ls0 = times(pid, pid)
    upload(workload, port, args.file)
    time.sleep(0.3)  # the hash thread's last update and exit
    u1, s1 = times(pid)
    lu1, ls1 = times(pid, pid)
    os.kill(perf.pid, signal.SIGINT)
    perf.wait(10)
    per = GIB / size
    return {
        "user": (u1 - u0) * per,
        "sys": (s1 - s0) * per,
        "loop_user": (lu1 - lu0) * per,
        "loop_sys": (ls1 - ls0) * per,
        "rest_user": ((u1 - u0) - (lu1 - lu0)) * per,
        "rest_sys": ((s1 - s0) - (ls1 - ls0)) * per,
    }


def profile(args: argparse.Namespace, case: str, pid: int, port: int) -> None:
    _, workload = case.split("-")
    out = args.out / f"{case}.pyspy.txt"
    spy = subprocess.Popen(
        [
            str(VENV / "py-spy"),
            "record",
            "--native",
            "--threads",
            "-r",
            "199",
            "-f",
            "raw",
            "-o",
            str(out),
            "-p",
            str(pid),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(args.out / f"{case}.pyspy.log", "wb"),
        start_new_session=True,
    )
    time.sleep(1.0)  # py-spy attached
    upload(workload, port, args.file)
    time.sleep(0.3)
    os.kill(spy.pid, signal.SIGINT)
    spy.wait(30)


def perf_record(args: argparse.Namespace, case: str, pid: int, port: int) -> None:
    """On-CPU samples only (py-spy's --native samples count threads blocked in a system call too)."""
    _, workload = case.split("-")
    data = args.out / f"{case}.perf.data"
    rec = subprocess.Popen(
        ["/usr/bin/perf", "record", "-e", "cpu-clock", "-F", "999", "-p", str(pid), "-o", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    time.sleep(0.5)
    upload(workload, port, args.file)
    time.sleep(0.3)
    os.kill(rec.pid, signal.SIGINT)
    rec.wait(30)
    report = subprocess.run(
        [
            "/usr/bin/perf",
            "report",
            "-i",
            str(data),
            "--no-children",
            "--sort",
            "pid,dso,sym",
            "--stdio",
            "--percent-limit",
            "0.5",
        ],
        capture_output=True,
        check=True,
    ).stdout
    (args.out / f"{case}.perf-report.txt").write_bytes(report)


def run_case(args: argparse.Namespace, case: str) -> list[dict[str, float]]:
    digest, _ = case.split("-")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        up_port = free_port()
        up = subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks/upstream.py"), "--port", str(up_port)], start_new_session=True
        )
        procs.append(up)
        wait_port(up_port, up)
        port = free_port()
        cmd = [
            str(VENV / "relay-server"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--upstream",
            f"http://127.0.0.1:{up_port}",
            "--digest",
            digest,
            "--max-body-size",
            "0",
        ]
        relay = subprocess.Popen(
            cmd,
            stdout=open(args.out / f"{case}.relay.log", "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(relay)
        wait_port(port, relay)
        upload(case.split("-")[1], port, args.warm)
        rows = [measured(args, case, relay.pid, port, rep) for rep in range(args.reps)]
        if not args.no_pyspy:
            profile(args, case, relay.pid, port)
        if args.perf_record:
            perf_record(args, case, relay.pid, port)
        return rows
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cases", nargs="+")
    parser.add_argument("--out", type=Path, default=Path("/tmp/h_sha"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--file", default="/tmp/relay-bench/data_1073741824.bin")
    parser.add_argument("--warm", default="/tmp/relay-bench/data_16777216.bin")
    parser.add_argument("--no-pyspy", action="store_true")
    parser.add_argument("--perf-record", action="store_true", help="3. one more upload under perf record")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"load before: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    results = {}
    for case in args.cases:
        results[case] = rows = run_case(args, case)
        for row in rows:
            print(f"{case:18s} " + " ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    (args.out / "profile_cpu.json").write_text(json.dumps(results, indent=1))
    print(f"load after: {Path('/proc/loadavg').read_text().strip()}", flush=True)


if __name__ == "__main__":
    main()
