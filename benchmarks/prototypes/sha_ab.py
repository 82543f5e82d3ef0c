"""An interleaved A/B of relay-server variants on raw 1 GiB uploads (`curl -T`): relay CPU-s/GiB per rep, split
into the loop thread (the main thread) and the rest (the hash thread, which dies with its body), issue 15.

    python benchmarks/prototypes/sha_ab.py --reps 5 --file /tmp/relay-bench/data_1073741824.bin \\
        --relay "base=exec {python} benchmarks/prototypes/sha_variants.py base" \\
        --relay "read1m=exec {python} benchmarks/prototypes/sha_variants.py read1m"

Each --relay command gets `--host 127.0.0.1 --port P --upstream U --max-body-size 0` appended unless it has
{port}; the digest is the command's (`--digest none` for the none reference). Also prints sha256 alone (a hashlib
loop over the same file in 256 KiB chunks) before and after, and the load average. Every upload must answer 200
with the upstream's byte count equal to the file's size. The order of the variants rotates with each rep.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

GIB = 1024**3
CLK = os.sysconf("SC_CLK_TCK")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server on {port} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def cpu(pid: int, tid: int | None = None) -> float:
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def sha_alone(path: str) -> float:
    data = Path(path).read_bytes()
    view = memoryview(data)
    size = 256 * 1024
    h = hashlib.sha256()
    start = time.process_time()
    for i in range(0, len(data), size):
        h.update(view[i : i + size])
    return (time.process_time() - start) * GIB / len(data)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--file", default="/tmp/relay-bench/data_1073741824.bin")
    parser.add_argument("--relay", action="append", required=True, metavar="NAME=CMD")
    parser.add_argument("--json", help="write per-rep figures here")
    parser.add_argument("--logdir", default="/tmp/h_sha", help="each relay's output: LOGDIR/ab-NAME.log")
    args = parser.parse_args()
    Path(args.logdir).mkdir(parents=True, exist_ok=True)
    size = os.path.getsize(args.file)
    print(f"load before: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    print(f"sha256 alone (256 KiB chunks): {sha_alone(args.file):.3f} CPU-s/GiB", flush=True)

    procs: list[subprocess.Popen[bytes]] = []
    up_port = free_port()
    up = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks/upstream.py"), "--port", str(up_port)], start_new_session=True
    )
    procs.append(up)
    relays: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        wait_port(up_port, up)
        for spec in args.relay:
            name, cmd = spec.split("=", 1)
            port = free_port()
            cmd = cmd.replace("{python}", sys.executable)
            if "{port}" not in cmd:
                cmd += " --host 127.0.0.1 --port {port} --upstream {upstream} --max-body-size 0"
            cmd = cmd.format(port=port, upstream=f"http://127.0.0.1:{up_port}")
            log = open(Path(args.logdir) / f"ab-{name}.log", "wb")
            proc = subprocess.Popen(
                cmd, shell=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            procs.append(proc)
            wait_port(port, proc)
            relays[name] = (proc, port)
        names = list(relays)
        results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
        for rep in range(args.reps):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                proc, port = relays[name]
                total0, loop0 = cpu(proc.pid), cpu(proc.pid, proc.pid)
                t0 = time.monotonic()
                out = subprocess.run(
                    [
                        "curl",
                        "-sS",
                        "-o",
                        "-",
                        "-w",
                        "\n%{http_code}",
                        "-T",
                        args.file,
                        f"http://127.0.0.1:{port}/upload/ab",
                    ],
                    capture_output=True,
                    check=True,
                ).stdout.decode()
                wall = time.monotonic() - t0
                time.sleep(0.3)  # the hash thread's last update and exit
                total, loop = cpu(proc.pid) - total0, cpu(proc.pid, proc.pid) - loop0
                body, status = out.rsplit("\n", 1)
                assert status == "200", (name, out)
                assert f'"bytes":{size}' in body.replace(" ", ""), (name, body)
                row = {
                    "cpu": total * GIB / size,
                    "loop": loop * GIB / size,
                    "rest": (total - loop) * GIB / size,
                    "mbs": size / wall / 1e6,
                }
                results[name].append(row)
                print(
                    f"rep {rep} {name:12s} cpu {row['cpu']:.3f} loop {row['loop']:.3f} rest {row['rest']:.3f} "
                    f"{row['mbs']:.0f} MB/s",
                    flush=True,
                )
        print("\nmedian over reps (min-max): CPU-s/GiB total | loop thread | other threads | MB/s")
        for name in names:
            rows = results[name]

            def med(k: str, rows: list[dict[str, float]] = rows) -> str:
                v = [r[k] for r in rows]
                return f"{statistics.median(v):.3f} ({min(v):.2f}-{max(v):.2f})"

            print(
                f"{name:12s} {med('cpu')} | {med('loop')} | {med('rest')} | "
                f"{statistics.median(r['mbs'] for r in rows):.0f}"
            )
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    print(f"sha256 alone (256 KiB chunks): {sha_alone(args.file):.3f} CPU-s/GiB", flush=True)
    print(f"load after: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    print("commands: " + " ".join(shlex.quote(a) for a in sys.argv))


if __name__ == "__main__":
    main()
