"""A smoke run of the benchmark suite (benchmarks/run.py --quick), so it cannot rot.

Tiny sizes (4 MiB, 1 rep, 20 small uploads, 4 x 1 MiB concurrent), nginx skipped; about 10 s. The suite
drives uploads with curl: without curl this test is skipped.
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
    for heading in ("## Throughput", "## Memory growth", "## Concurrency", "## Small uploads", "## Targets"):
        assert heading in table
    for path in ("| direct |", "| relay-sha256 |", "| relay-none |", "| sink-check |"):
        assert path in table
    assert "0 failed" in table
    results = json.loads((out / "results.json").read_text())
    uploads = [r for section in ("throughput", "memory", "concurrency", "small") for r in results[section]]
    assert uploads and all(r["ok"] for r in uploads)
    # every single upload's byte count was checked against the upstream's
    assert all(r["upstream_bytes"] == r["bytes"] for r in results["throughput"] + results["memory"])
    assert not list((tmp_path / "data").glob("run-*")), "the run's scratch directory is removed"
