"""Reduce a profile of relay-server to a small table per thread (issue 15): where its samples land, in a few
named buckets, and the top frames.

    python benchmarks/prototypes/profile_reduce.py /tmp/h_sha/sha256-raw.pyspy.txt [--rate 199] [--top 8]
    python benchmarks/prototypes/profile_reduce.py --perf /tmp/h_sha/rec/sha256-raw.perf.data

py-spy (`record --native --threads -f raw`): with --native, py-spy 0.4.3 here kept the samples of threads blocked
in a system call (idle pool threads, the loop in epoll_pwait, a thread waiting for the GIL, the hash thread
waiting in readv), so its counts are wall-clock, not CPU. The waits are named as such ("waiting: ..."; idle pool
threads are left out of the table) but a hash thread blocked in readv cannot be told from one copying in it: read
the CPU split from perf (`perf record -e cpu-clock`: on-CPU samples only, kernel symbols), which --perf reduces.
"""

from __future__ import annotations

import argparse
import collections
import re

# (bucket, pattern on the whole stack, tried in order): the first that matches names the sample.
BUCKETS = [
    ("waiting: epoll", r"epoll_pwait|epoll_wait"),
    ("waiting: a queue or lock (idle worker)", r"_queue_SimpleQueue_get|PyThread_acquire_lock"),
    ("waiting: the GIL (after a call that released it)", r"take_gil|pthread_cond_timedwait|pthread_cond_wait"),
    ("sha256 (libcrypto)", r"sha256_block|SHA256|sha256_update|EVP_Digest|_hashlib"),
    ("read pipe B (readv: blocked or copying)", r"os_readv"),
    ("tee(2) via ctypes", r"pipehash\.py:\d+\);tee|ctypes|ffi_call"),
    ("splice(2)", r"os_splice|splice \("),
    ("epoll / loop select", r"epoll_wait|_run_once|__epoll"),
    ("socket recv (uvicorn/httptools)", r"sock_recv|recv \(|data_received|on_body"),
    ("socket send", r"sock_send|send \(|writev|_write_to_self"),
    ("multipart parse", r"multipart"),
    ("GIL drop, wake-ups", r"drop_gil|PyEval_RestoreThread|PyEval_SaveThread|pthread_cond_signal|futex"),
]


def parse(path: str) -> list[tuple[str, list[str], int]]:
    rows = []
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = re.sub(r"^thread \(\d+\):?\s*", "", frames[0]) or "thread"  # "thread (TID): NAME"
        rows.append((thread, frames[1:], int(count)))
    return rows


def bucket(frames: list[str]) -> str:
    joined = ";".join(frames)
    leafish = ";".join(frames[-6:])
    for name, pattern in BUCKETS:
        if re.search(pattern, leafish):
            return name
    for name, pattern in BUCKETS:
        if re.search(pattern, joined):
            return name + " (below)"
    return "other Python"


def leaf(frames: list[str]) -> str:
    return re.sub(r"0x[0-9a-f]+ ", "", frames[-1]) if frames else "?"


# perf: (bucket, dso pattern, symbol pattern), first match wins.
PERF_BUCKETS = [
    ("sha256 (libcrypto)", r"libcrypto", r""),
    ("Python interpreter (libpython)", r"libpython", r""),
    ("uvloop / asyncio C", r"loop\.cpython|_asyncio", r""),
    ("libc, ctypes, ffi", r"libc\.so|libffi|_ctypes", r""),
    ("copy kernel->user (recv, pipe read)", r"kernel", r"_copy_to_iter|copy_page_to_iter|copy_user|rep_movs"),
    ("copy user->kernel (send)", r"kernel", r"_copy_from_iter|copy_from_user"),
    ("irq enable / softirq (loopback TCP delivery)", r"kernel", r"_raw_spin_unlock_irq|handle_softirqs|irq"),
    ("scheduler, futex (wake-ups)", r"kernel", r"finish_task_switch|schedule|futex|try_to_wake|switch"),
    ("splice / tee / pipe", r"kernel", r"splice|pipe|tee|pagefrags|iov_iter_extract|page_cache_pipe"),
    ("TCP/IP, skb, slab, pages", r"kernel", r"tcp|ip_|skb|slab|kmem|kfree|free_|alloc|page|sock|net"),
    ("other kernel", r"kernel", r""),
]


def perf_bucket(dso: str, sym: str) -> str:
    for name, dso_pattern, sym_pattern in PERF_BUCKETS:
        if re.search(dso_pattern, dso) and re.search(sym_pattern, sym):
            return name
    return "other: " + dso.strip("()").rsplit("/", 1)[-1]


def perf_main(path: str, top: int) -> None:
    import subprocess

    out = subprocess.run(
        ["/usr/bin/perf", "script", "-i", path, "-F", "tid,ip,sym,dso"], capture_output=True, text=True, check=True
    ).stdout
    buckets: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    symbols: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        tid, dso = parts[0], parts[-1]
        sym = " ".join(parts[2:-1]) or "?"
        name = perf_bucket(dso, sym)
        buckets[tid][name] += 1
        symbols[tid][f"{sym if not sym.startswith('[unknown]') else '?'} {dso.strip('()').rsplit('/', 1)[-1]}"] += 1
    total = sum(sum(c.values()) for c in buckets.values())
    print(f"{path}: {total} on-CPU samples (cpu-clock)\n")
    for tid, counter in sorted(buckets.items(), key=lambda kv: -sum(kv[1].values())):
        n = sum(counter.values())
        print(f"## thread {tid}: {n} samples ({100 * n / total:.0f} % of the process)")
        print("| where | samples | % of thread |\n|---|---:|---:|")
        for name, c in counter.most_common():
            print(f"| {name} | {c} | {100 * c / n:.0f} |")
        tops = "; ".join(f"{f} {c}" for f, c in symbols[tid].most_common(top))
        print(f"\ntop symbols: {tops}\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--perf", action="store_true", help="path is a perf.data (perf record -e cpu-clock)")
    parser.add_argument("--rate", type=float, default=199.0)
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()
    if args.perf:
        perf_main(args.path, args.top)
        return
    rows = parse(args.path)
    threads: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    leaves: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for thread, frames, count in rows:
        threads[thread][bucket(frames)] += count
        leaves[thread][leaf(frames)] += count
    total = sum(sum(c.values()) for c in threads.values())
    print(f"{args.path}: {total} samples at {args.rate:g} Hz (wall-clock: blocked threads are sampled too)\n")
    for thread, counter in sorted(threads.items(), key=lambda kv: -sum(kv[1].values())):
        n = sum(counter.values())
        if sum(c for name, c in counter.items() if not name.startswith("waiting: a queue")) < n * 0.02:
            print(f"## {thread}: {n} samples, all idle (waiting for work)\n")
            continue
        print(f"## {thread}: {n} samples ({n / args.rate:.2f} s, {100 * n / total:.0f} %)")
        print("| where (bucket) | samples | % of thread |\n|---|---:|---:|")
        for name, c in counter.most_common():
            print(f"| {name} | {c} | {100 * c / n:.0f} |")
        print("\ntop leaf frames: " + "; ".join(f"{f} {c}" for f, c in leaves[thread].most_common(args.top)) + "\n")


if __name__ == "__main__":
    main()
