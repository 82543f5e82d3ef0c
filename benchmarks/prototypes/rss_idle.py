"""A fresh relay's memory: VmRSS idle after start, and VmHWM over one `curl -T` upload, per variant, interleaved.

    python benchmarks/prototypes/rss_idle.py --reps 5 --size 1GiB \
        --variant base=PYTHONPATH=/tmp/clean --variant new= [--digest sha256] [--embedded]

Each rep starts every variant afresh (A B A B ...): `relay-server --upstream <raw discard upstream>` (or, with
`--embedded`, without --upstream: the sample upstream in the same process, storing under the run directory),
waits 1 s after it listens, reads VmRSS, uploads the file once with `curl -T`, reads VmHWM, stops it. A variant is
`NAME=K=V,K=V`: environment variables added to relay-server's (PYTHONPATH=DIR runs another checkout of the relay
package). Prints one line per process and the median and spread per variant.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BENCH))

import run  # noqa: E402


def one(suite: run.Suite, name: str, env: dict[str, str], a: argparse.Namespace, f: Path) -> tuple[float, float]:
    port = run.free_port()
    cmd = [run.tool("relay-server"), "--host", "127.0.0.1", "--port", str(port), "--digest", a.digest]
    cmd += ["--max-body-size", "0", "--store", str(suite.run_dir / "store")]
    if not a.embedded:
        cmd += ["--upstream", suite.upstream.url]  # type: ignore[union-attr]
    server = run.Server(name, cmd, port, suite.run_dir, env=env or None).start()
    try:
        time.sleep(1)
        pids = server.pids()
        idle = run.status_kib(pids, "VmRSS") / 1024
        run.reset_hwm(pids)
        resp = suite.run_dir / f"resp-{name}.json"
        p = subprocess.run(run.curl_cmd("raw", server.url + run.URL_PATH, f, resp), capture_output=True, text=True)
        if not p.stdout.startswith("200 "):
            raise RuntimeError(f"{name}: {p.stdout} {p.stderr}")
        return idle, run.status_kib(server.pids(), "VmHWM") / 1024
    finally:
        server.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", action="append", default=[], help="NAME=K=V,K=V (repeatable; default base=)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--size", default="1GiB")
    p.add_argument("--digest", default="none", choices=["none", "sha256"])
    p.add_argument("--embedded", action="store_true", help="no --upstream: the sample upstream in the process")
    p.add_argument("--data-dir", default="/tmp/relay-bench")
    a = p.parse_args()
    suite = run.Suite(run.parse_args(["--data-dir", a.data_dir]))
    f = run.data_file(Path(a.data_dir), run.parse_size(a.size))
    variants = []
    for spec in a.variant or ["base="]:
        name, _, env = spec.partition("=")
        variants.append((name, dict(kv.split("=", 1) for kv in env.split(",") if kv)))
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in variants}
    port = run.free_port()
    up = run.Server("upstream", [run.PY, str(BENCH / "upstream.py"), "--port", str(port)], port, suite.run_dir)
    suite.upstream = suite._start(up)
    try:
        for rep in range(a.reps):
            for name, env in variants:
                idle, hwm = one(suite, name, env, a, f)
                results[name].append((idle, hwm))
                print(f"rep{rep + 1} {name:>10}  idle VmRSS {idle:5.1f} MiB  upload VmHWM {hwm:5.1f} MiB", flush=True)
    finally:
        suite.stop()
    for name, rows in results.items():
        idles, hwms = [r[0] for r in rows], [r[1] for r in rows]
        print(
            f"{name:>10}: idle median {statistics.median(idles):5.1f} ({min(idles):.1f}-{max(idles):.1f})  "
            f"peak median {statistics.median(hwms):5.1f} ({min(hwms):.1f}-{max(hwms):.1f}) MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
