"""A smoke run of the benchmark suite (benchmarks/run.py --quick), so it cannot rot.

Tiny sizes (4 MiB, 1 rep, 20 small uploads, 4 x 1 MiB concurrent; resumable 16 MiB in one append and in
4 MiB appends), nginx skipped; about 20 s. The suite drives uploads with curl: without curl this test is skipped.
The scale-out sections (benchmarks/scaleout.py: `--workers 2 --redis`, with and without `--redis`, the S3 spool
on SeaweedFS) run with `--digest none` only; where redis-server or SeaweedFS's `weed` is missing, the report must
say that the section was not run, and the rest must still pass.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
REDIS = shutil.which("redis-server") is not None
WEED = (Path(sys.executable).parent / "weed").exists() or shutil.which("weed") is not None
pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="the benchmark suite needs curl")
MiB = 1 << 20


def test_quick_run_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            "--quick",
            "--out",
            str(out),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / "results.md").read_text()
    for heading in (
        "## Throughput",
        "## Memory growth",
        "## Resumable uploads (tus)",
        "### Targets (issue 11)",
        "## Concurrency",
        "## Small uploads",
        "## Targets (issue 6)",
    ):
        assert heading in table
    for path in ("| direct |", "| relay-sha256 |", "| relay-none |", "| sink-check |"):
        assert path in table
    for row in (
        "| tus, one append (POST + 1 PATCH) | relay-sha256 |",
        "| tus, 4 MiB appends (POST + PATCHes) | relay-none |",
        "| raw, Content-Length (raw socket, 64 KiB writes) | relay-sha256 |",
        "| relay-sha256, tus, one append (POST + 1 PATCH) |",
    ):
        assert row in table
    assert "0 failed" in table
    results = json.loads((out / "results.json").read_text())
    uploads = [r for section in ("throughput", "memory", "concurrency", "small") for r in results[section]]
    assert uploads and all(r["ok"] for r in uploads)
    # every single upload's byte count was checked against the upstream's
    assert all(r["upstream_bytes"] == r["bytes"] for r in results["throughput"] + results["memory"])
    for relay in ("relay-sha256", "relay-none"):
        one = [r for r in results["throughput"] if r["path"] == relay and r["workload"] == "tus-1"]
        many = [r for r in results["throughput"] if r["path"] == relay and r["workload"] == "tus-appends"]
        assert len(one) == len(many) == 1
        for r in one + many:
            # the tiny resumable row: 16 MiB, checked by status, the upstream's byte count, one upstream request
            assert r["size"] == 16 * MiB and r["status"] == 204 and r["upstream_status"] == 200
            assert r["upstream_bytes"] == r["size"] and r["upstream_requests"] == 1
            assert r["sha256_ok"] is (True if relay == "relay-sha256" else None)
        assert one[0]["appends"] == 1 and one[0]["spool_bytes"] == 0
        assert many[0]["appends"] == 4 and many[0]["spool_bytes"] == 12 * MiB and many[0]["spool_secs"] > 0
        mem = [r for r in results["memory"] if r["path"] == relay and r["workload"] == "tus-1"]
        assert sorted(r["size"] for r in mem) == [MiB, 4 * MiB]
    assert results["meta"]["spool_left"] == {"relay-sha256": 0, "relay-none": 0}
    assert "## Resumable uploads (tus): 16 MiB" in table
    assert not list((tmp_path / "data").glob("run-*")), "the run's scratch directory is removed"
    check_scaleout(results["scaleout"], table)


def check_scaleout(so: dict[str, Any], table: str) -> None:
    assert "## Scale-out (issue 12)" in table
    if not REDIS:
        assert "Section `workers` not run: redis-server is not installed." in table
    else:
        assert "### 2 workers: 4 concurrent 1 MiB uploads" in table and so["workers_flag"] is True
        rows = {r["path"]: r for r in so["workers"]}
        assert set(rows) == {"direct", "relay-none", "relay-none-w2"}
        assert all(r["ok"] and r["upstream_bytes"] == 4 * MiB for r in rows.values())
        # two worker processes under the supervisor, each measured on its own; one process without --workers
        assert len(rows["relay-none-w2"]["workers"]) == 2 and rows["relay-none-w2"]["root_hwm_kib"] > 0
        assert len(rows["relay-none"]["workers"]) == 1 and rows["relay-none"]["root_hwm_kib"] is None
        assert [r["path"] for r in so["small"]] == ["direct", "relay-none", "relay-none-redis"]
        assert all(r["ok"] and r["n"] == 20 for r in so["small"])
        assert [r["path"] for r in so["cpu"]] == ["relay-none", "relay-none-redis"]
        assert all(r["ok"] and r["upstream_bytes"] == r["bytes"] for r in so["cpu"])
        assert "| 1 KiB p50 added <= 1.5 ms with `--redis` | relay-none-redis |" in table
    if not WEED:
        assert "Section `s3` not run: SeaweedFS's `weed` is not installed" in table
    else:
        assert "### Resumable uploads on S3 (SeaweedFS) against the disk spool: 16 MiB" in table
        s3 = [r for r in so["s3"] if r["path"] == "relay-none-s3"]
        assert sorted(r["workload"] for r in s3) == ["tus-1", "tus-appends"]
        assert all(r["ok"] and r["upstream_bytes"] == r["size"] and r["upstream_requests"] == 1 for r in s3)
        assert so["s3_left"] == {"relay-none-s3": 0}, "the S3 spool kept the data of delivered uploads"
