"""Where a one-append resumable upload's extra CPU goes: `perf record` of the relay process, plain vs tus.

A relay (`--digest none` by default, a raw-forwarding route, a disk spool) in front of benchmarks/upstream.py; each
rep uploads the same file once plainly (POST, Content-Length) and once as tus (POST creation + one PATCH), with the
benchmark's own raw-socket sender, interleaved. For each upload: the wall time and the relay's CPU seconds
(/proc/PID/stat); with `--perf`, a `perf record -g` of the relay process and, at the end, `perf report
--no-children --sort dso,symbol` of rep 1 per workload, so the two can be compared.

`--variant NAME=DIR` (repeatable) starts one relay per variant with PYTHONPATH=DIR (a `git worktree` of another
commit, say), all measured in the same interleaved reps; without it, one relay of this checkout.

    .venv/bin/python benchmarks/prototypes/resumable_profile.py --file /tmp/relay-bench/data_1073741824.bin \
        --out /tmp/prof --reps 3 [--digest sha256] [--appends 16777216] [--perf] [--variant old=/tmp/wt]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from resumable import RELAY_TOML, SOCK, Sender, _plain, _tus

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_relay(
    a: argparse.Namespace, name: str, root: str | None, up_port: int
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = a.out / "relay.toml"
    config.write_text(RELAY_TOML)
    cmd = [str(ROOT / ".venv/bin/relay-server"), "--port", str(port), "--digest", a.digest]
    cmd += ["--upstream", f"http://127.0.0.1:{up_port}", "--max-body-size", "0", "--config", str(config)]
    cmd += ["--spool", str(a.out / f"spool-{name}"), "--log-level", "warning"]
    env = {**os.environ, "PYTHONPATH": root} if root else None
    relay = subprocess.Popen(cmd, env=env)
    wait_port(port)
    return relay, port


def measure(
    a: argparse.Namespace, relay: subprocess.Popen[bytes], port: int, workload: str, data: Path | None
) -> float:
    """One upload of `workload`; its relay CPU seconds (printed with its wall time)."""
    size = a.file.stat().st_size
    perf = None
    if data is not None:
        perf = subprocess.Popen(
            ["perf", "record", "-q", "-g", "-o", str(data), "-p", str(relay.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
    before, t = cpu_seconds(relay.pid), time.perf_counter()
    sender = Sender(port, 600)
    row: dict[str, Any] = {}
    with open(a.file, "rb") as f:
        if workload == SOCK:
            _plain(sender, "/upload/p.bin", f, size, row)
        else:
            _tus(sender, "/upload/t.bin", f, size, a.appends or size, row)
    sender.close()
    wall, cpu = time.perf_counter() - t, cpu_seconds(relay.pid) - before
    if perf is not None:
        perf.send_signal(signal.SIGINT)
        perf.wait()
    parts = ""
    if "spool_secs" in row and row.get("appends", 1) > 1:
        parts = f" (appends {row['spool_secs']:.2f} s, 204 wait {row['answer_wait_ms']:.1f} ms,"
        parts += f" completing {row['last_patch_secs']:.2f} s)"
    print(f"{workload}: wall {wall:.2f} s, relay CPU {cpu:.2f} s{parts}", flush=True)
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("/tmp/resumable-profile"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--digest", default="none")
    parser.add_argument("--appends", type=int, default=0, help="append size for the tus workload (0: one append)")
    parser.add_argument("--perf", action="store_true", help="perf record each measured upload")
    parser.add_argument("--variant", action="append", default=[], help="NAME=DIR: a relay with PYTHONPATH=DIR")
    a = parser.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    variants = [tuple(v.split("=", 1)) for v in a.variant] or [("this", "")]
    up_port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "benchmarks/upstream.py"), "--port", str(up_port)]))
        wait_port(up_port)
        relays = {}
        for name, root in variants:
            relays[name] = start_relay(a, name, root or None, up_port)
            procs.append(relays[name][0])
        cpus: dict[tuple[str, str], list[float]] = {}
        for rep in range(a.reps + 1):  # rep 0 warms up, unmeasured
            for name, (relay, port) in relays.items():
                for workload in (SOCK, "tus"):
                    print(f"rep {rep} {name} ", end="")
                    data = a.out / f"{name}-{workload}-{rep}.perf" if a.perf and rep else None
                    cpu = measure(a, relay, port, workload, data)
                    if rep:
                        cpus.setdefault((name, workload), []).append(cpu)
                    time.sleep(1.0)
        for (name, workload), values in cpus.items():
            print(f"{name} {workload}: relay CPU-s per rep {[round(c, 2) for c in values]}")
        if a.perf:
            for name, _ in variants:
                for workload in (SOCK, "tus"):
                    report = subprocess.run(
                        ["perf", "report", "-i", str(a.out / f"{name}-{workload}-1.perf"), "--no-children", "--stdio"]
                        + ["-q", "--sort", "dso,symbol", "-g", "none", "--percent-limit", "1.5"],
                        capture_output=True,
                        text=True,
                    ).stdout
                    (a.out / f"{name}-{workload}.report.txt").write_text(report)
                    print(f"--- {name} {workload}, rep 1, top symbols ---\n{report}")
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
