"""The scale-out sections of the benchmark report (benchmarks/scaleout.py measures them), as Markdown lines.

Every figure is a ratio or a cost taken inside one interleaved run: aggregate MB/s against nginx with the same number
of workers, CPU-s/GiB with `--redis` against without, time on the S3 spool against the disk spool. Each section ends
with its targets (issue 12) and a verdict computed from the same rows.
"""

from __future__ import annotations

import statistics
from typing import Any

MiB, GiB = 1 << 20, 1 << 30
RSS_GOAL_MIB, AGGREGATE_GOAL, P50_GOAL_MS, CPU_GOAL = 128, 1.3, 1.5, 1.05


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def _label(n: int) -> str:
    for unit, k in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= k and n % k == 0:
            return f"{n // k} {unit}"
    return f"{n} B"


def _rows(rows: list[dict[str, Any]], path: str, workload: str | None = None) -> list[dict[str, Any]]:
    return [r for r in rows if r["path"] == path and (workload is None or r.get("workload") == workload)]


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get("ok") and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def _per_gib(rows: list[dict[str, Any]], key: str) -> float | None:
    good = [r for r in rows if r.get("ok") and r.get(key) is not None]
    gib = sum(r["bytes"] for r in good) / GiB
    return sum(r[key] for r in good) / gib if gib else None


def _verdict(met: bool | None, miss: str) -> str:
    return "not measured" if met is None else ("**met**" if met else miss)


def failures(res: dict[str, Any]) -> int:
    so = res.get("scaleout", {})
    return sum(1 for key in ("workers", "small", "cpu", "s3") for r in so.get(key, []) if not r.get("ok"))


def render(res: dict[str, Any]) -> list[str]:
    so = res.get("scaleout", {})
    if not any(so.get(k) for k in ("workers", "small", "cpu", "s3", "skipped")):
        return []
    lines = ["## Scale-out (issue 12)", ""]
    for section, why in so.get("skipped", {}).items():
        lines += [f"Section `{section}` not run: {why}.", ""]
    lines += _workers(so) + _redis(so) + _s3(so)
    return lines


# --------------------------------------------------------------------------------------------- workers
def _worker_cells(rows: list[dict[str, Any]]) -> tuple[str, str, str, float | None]:
    """Peak RSS of each worker (max over reps), uploads per worker in each rep, CPU split, the largest RSS."""
    good = [r for r in rows if r["ok"] and r["workers"]]
    if not good:
        return "–", "–", "–", None
    count = max(len(r["workers"]) for r in good)
    rss = [max(r["workers"][i]["hwm_kib"] for r in good if i < len(r["workers"])) / 1024 for i in range(count)]
    uploads = " · ".join("/".join(str(w["uploads"]) for w in r["workers"]) for r in good)
    cpu = [sum(r["workers"][i]["cpu"] for r in good if i < len(r["workers"])) for i in range(count)]
    split = "/".join(f"{100 * c / sum(cpu):.0f}" for c in cpu) + " %" if sum(cpu) else "–"
    return " / ".join(f"{x:.1f}" for x in rss), uploads, split, max(rss)


def _workers(so: dict[str, Any]) -> list[str]:
    rows = so.get("workers", [])
    if not rows:
        return []
    n, size, w = rows[0]["n"], rows[0]["size"], so.get("workers_n", 2)
    reps = len({r["tag"] for r in rows})
    names = list(dict.fromkeys(r["path"] for r in rows))
    med = {name: _median(_rows(rows, name), "mb_s") for name in names}
    out = [f"### {w} workers: {n} concurrent {_label(size)} uploads (`curl -Z`), {reps} reps interleaved", ""]
    if not so.get("workers_flag", True):
        out += [
            f"**Stand-in:** this `relay-server` has no `--workers`, so the `-w{w}` relays ran as ONE process with"
            " `--redis`: their rows are not the scale-out figures.",
            "",
        ]
    out += [
        "Aggregate MB/s = all bytes over the wall time of the whole `curl -Z` run; CPU-s/GiB summed over the process"
        " tree (supervisor or master included); peak RSS of each worker (VmHWM, reset before each run; max over the"
        " reps); uploads per worker counted from the connections each worker held (one per upload), per rep.",
        "",
        f"| path | aggregate MB/s median (min–max) | vs nginx | vs nginx-w{w} | vs 1 process | CPU-s/GiB | "
        "peak RSS per worker MiB | supervisor / master MiB | uploads per worker (each rep) | CPU split | "
        "Redis CPU-s/GiB | ok |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for name in names:
        mine = _rows(rows, name)
        speeds = [r["mb_s"] for r in mine if r["ok"]]
        one = name.rsplit(f"-w{w}", 1)[0] if name.startswith("relay") and name.endswith(f"-w{w}") else None
        rss, uploads, split, _ = _worker_cells(mine)
        roots = [r["root_hwm_kib"] / 1024 for r in mine if r["ok"] and r.get("root_hwm_kib") is not None]

        def vs(ref: str | None, me: str = name) -> str:
            mine, theirs = med[me], med.get(ref or "")
            return _f(mine / theirs if mine and theirs else None, "{:.2f}x")

        out.append(
            f"| {name} | **{_f(med[name], '{:.0f}')}** ({_f(min(speeds, default=None), '{:.0f}')}–"
            f"{_f(max(speeds, default=None), '{:.0f}')}) | {vs('nginx')} | {vs(f'nginx-w{w}')} | {vs(one)} | "
            f"{_f(_per_gib(mine, 'cpu') if name != 'direct' else None)} | {rss} | "
            f"{_f(max(roots) if roots else None, '{:.1f}')} | {uploads} | {split} | "
            f"{_f(_per_gib(mine, 'redis_cpu'))} | {sum(r['ok'] for r in mine)}/{len(mine)} |"
        )
    out += ["", "| target (issue 12) | relay | measured | verdict |", "|---|---|---:|---|"]
    for name in names:
        if not (name.startswith("relay") and name.endswith(f"-w{w}")):
            continue
        ref, speed = med.get(f"nginx-w{w}"), med[name]
        ratio = speed / ref if ref and speed else None
        met = None if ratio is None else ratio >= AGGREGATE_GOAL
        miss = f"missed by {AGGREGATE_GOAL - (ratio or 0):.2f}x"
        out.append(
            f"| aggregate >= {AGGREGATE_GOAL}x nginx-w{w} | {name} | {_f(ratio, '{:.2f}x')} | {_verdict(met, miss)} |"
        )
        peak = _worker_cells(_rows(rows, name))[3]
        met = None if peak is None else peak <= RSS_GOAL_MIB
        miss = f"over by {(peak or 0) - RSS_GOAL_MIB:.1f} MiB"
        out.append(
            f"| peak RSS <= {RSS_GOAL_MIB} MiB per worker | {name} | {_f(peak, '{:.1f} MiB')} | {_verdict(met, miss)} |"
        )
    return [*out, ""]


# --------------------------------------------------------------------------------------------- redis
def _redis(so: dict[str, Any]) -> list[str]:
    small, cpu = so.get("small", []), so.get("cpu", [])
    out: list[str] = []
    targets: list[str] = []
    if small:
        by = {r["path"]: r for r in small}
        d = by.get("direct", {})
        out += [
            f"### With and without `--redis`: {small[0]['n']} x {_label(small[0]['size'])} keep-alive uploads",
            "",
            "| path | p50 ms | p99 ms | p50 added vs direct ms | p99 added ms | relay CPU ms per upload | failed |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in by.items():
            p50 = r["p50_ms"] - d["p50_ms"] if d else None
            p99 = r["p99_ms"] - d["p99_ms"] if d else None
            out.append(
                f"| {name} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {_f(p50, '{:+.3f}')} | {_f(p99, '{:+.3f}')} | "
                f"{_f(r.get('cpu_ms'))} | {r['failed']} |"
            )
            if name.endswith("-redis"):
                met = None if p50 is None else p50 <= P50_GOAL_MS
                miss = f"over by {(p50 or 0) - P50_GOAL_MS:.3f} ms"
                targets.append(
                    f"| 1 KiB p50 added <= {P50_GOAL_MS} ms with `--redis` | {name} | {_f(p50, '{:.3f} ms')} | "
                    f"{_verdict(met, miss)} |"
                )
        out.append("")
    if cpu:
        reps = len({r["tag"] for r in cpu})
        out += [
            f"### Relay CPU with and without `--redis`: raw {_label(cpu[0]['size'])} (`curl -T`), {reps} reps",
            "",
            "| relay | CPU-s/GiB without | with `--redis` | ratio (per-rep min–max) | MB/s without / with | "
            "Redis CPU-s/GiB | ok |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for plain in dict.fromkeys(r["path"] for r in cpu if not r["path"].endswith("-redis")):
            a, b = _rows(cpu, plain), _rows(cpu, f"{plain}-redis")
            ca, cb = _per_gib(a, "cpu"), _per_gib(b, "cpu")
            ratio = cb / ca if ca and cb else None
            paired = [
                y["cpu"] / x["cpu"] for x in a for y in b if x["tag"] == y["tag"] and x["ok"] and y["ok"] and x["cpu"]
            ]
            spread = f" ({min(paired):.2f}–{max(paired):.2f})" if paired else ""
            out.append(
                f"| {plain} | {_f(ca)} | {_f(cb)} | **{_f(ratio, '{:.3f}')}**{spread} | "
                f"{_f(_median(a, 'mb_s'), '{:.0f}')} / "
                f"{_f(_median(b, 'mb_s'), '{:.0f}')} | {_f(_per_gib(b, 'redis_cpu'), '{:.3f}')} | "
                f"{sum(r['ok'] for r in a)}/{len(a)} · {sum(r['ok'] for r in b)}/{len(b)} |"
            )
            met = None if ratio is None else ratio <= CPU_GOAL
            targets.append(
                f"| CPU-s/GiB with `--redis` within 5 % of without | {plain}-redis | {_f(ratio, '{:.3f}x')} | "
                f"{_verdict(met, f'over by {((ratio or 0) - 1) * 100:.1f} %')} |"
            )
        out.append("")
    if targets:
        out += ["| target (issue 12) | relay | measured | verdict |", "|---|---|---:|---|", *targets, ""]
    return out


# --------------------------------------------------------------------------------------------- s3
def _s3(so: dict[str, Any]) -> list[str]:
    rows = so.get("s3", [])
    if not rows:
        return []
    size = rows[0]["size"]
    append = next((r["append_size"] for r in rows if r["workload"] == "tus-appends"), size)
    reps = len({r["tag"] for r in rows})
    out = [
        f"### Resumable uploads on S3 (SeaweedFS) against the disk spool: {_label(size)}, {reps} reps interleaved",
        "",
        "Time from the creation POST's first byte to the completing PATCH's answer (after the upstream's), median;"
        " the S3 rows against the same digest's disk-spool relay (min–max of the per-rep ratios in brackets).",
        "",
        f"| relay | spool | one append s | vs disk | {_label(append)} appends s | vs disk | "
        "relay CPU-s/GiB one / appends | S3 server CPU-s/GiB one / appends | ok |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in dict.fromkeys(r["path"] for r in rows):
        disk = name.removesuffix("-s3")
        cells = []
        for workload in ("tus-1", "tus-appends"):
            mine, ref = _rows(rows, name, workload), _rows(rows, disk, workload)
            secs, base = _median(mine, "secs"), _median(ref, "secs")
            paired = [m["secs"] / d["secs"] for m in mine for d in ref if m["tag"] == d["tag"] and m["ok"] and d["ok"]]
            ratio = "–" if name == disk or not (secs and base) else f"**{secs / base:.2f}x**"
            if paired and name != disk:
                ratio += f" ({min(paired):.2f}–{max(paired):.2f})"
            cells += [_f(secs), ratio]
        one, many = _rows(rows, name, "tus-1"), _rows(rows, name, "tus-appends")
        ok = f"{sum(r['ok'] for r in one)}/{len(one)} · {sum(r['ok'] for r in many)}/{len(many)}"
        out.append(
            f"| {disk} | {'S3' if name != disk else 'disk'} | {' | '.join(cells)} | "
            f"{_f(_per_gib(one, 'cpu'))} / {_f(_per_gib(many, 'cpu'))} | "
            f"{_f(_per_gib(one, 's3_cpu')) if name != disk else '–'} / "
            f"{_f(_per_gib(many, 's3_cpu')) if name != disk else '–'} | {ok} |"
        )
    left = {**so.get("spool_left", {}), **so.get("s3_left", {})}
    if left:
        info = so.get("s3_info_left", {})
        out += [
            "",
            "Data left after the run (6 s allowed): "
            + ", ".join(
                f"{k} {v} {'data objects' if k.endswith('-s3') else 'spool data files'}" for k, v in left.items()
            )
            + (
                f"; info documents (ID.json, kept until expiry as on disk): {sum(info.values())} in the bucket"
                if info
                else ""
            )
            + ".",
        ]
    return [*out, ""]
