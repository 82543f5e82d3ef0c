"""A smoke run of the benchmark suite (benchmarks/run.py --quick), so it cannot rot.

Tiny sizes (4 MiB, 1 rep, 20 small uploads, 4 x 1 MiB concurrent; resumable 16 MiB in one append and in
4 MiB appends), nginx skipped; about 10 s. The suite drives uploads with curl: without curl this test is skipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
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
        timeout=120,
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
