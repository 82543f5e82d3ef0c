"""An X-Upload-ID used again after its upload ended (the contract allows it): the dashboard shows the new run in
flight, not the old run's finished row growing, and keeps the old run's row in the recent table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.testing import RunningServer, start_relay
from tests.browser.conftest import By, console_errors, start_test_module, wait_for
from tests.browser.test_dashboard import UPSTREAM_RATE, make_file, rows

MiB = 1024 * 1024
UPLOAD_ID = "twice"  # at most 8 characters: the id cell shows the first 8


@pytest.fixture
def slow_relay(servers: list[RunningServer], tmp_path: Path) -> RunningServer:
    upstream = start_test_module("slow_upstream", str(UPSTREAM_RATE))
    servers.append(upstream)
    relay = start_relay("--max-body-size", "1GiB", upstream=upstream.url, cwd=tmp_path)
    servers.append(relay)
    return relay


def test_a_reused_id_shows_its_new_run_in_flight(browser: Any, slow_relay: RunningServer, tmp_path: Path) -> None:
    browser.get(slow_relay.url + "/_relay/ui/")
    wait_for(lambda: browser.find_element(By.ID, "live").get_attribute("data-state") == "live", what="the stream")
    first = httpx.post(
        f"{slow_relay.url}/upload/first", content=b"x" * 1000, headers={"x-upload-id": UPLOAD_ID}, timeout=10
    )
    assert first.status_code == 200
    wait_for(
        lambda: [r for r in rows(browser, "recent") if r["id"] == UPLOAD_ID and r["outcome"] == "completed"],
        what="the first run's row, completed",
    )

    big = tmp_path / "big.bin"
    make_file(big, 100 * MiB, seed=3)  # 4 s in flight at the upstream's 25 MiB/s
    second = subprocess.Popen(
        [sys.executable, "-m", "client", str(big), "--to", "/upload/second", "--relay", slow_relay.url,
         "--header", f"X-Upload-ID: {UPLOAD_ID}", "--json", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        row = wait_for(
            lambda: next((r for r in rows(browser, "inflight") if r["id"] == UPLOAD_ID), None),
            what="the second run in flight",
        )
        assert "second" in row["path"] and "/ 100.0 MiB" in row["bytes"], row
        # The first run's row stays as it was: its own path, size and outcome.
        (old,) = [r for r in rows(browser, "recent") if r["id"] == UPLOAD_ID]
        assert "first" in old["path"] and old["outcome"] == "completed" and old["size"] == "1000 B", old
        output, _ = second.communicate(timeout=60)
        assert second.returncode == 0, output
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    wait_for(lambda: not rows(browser, "inflight"), what="the in-flight table to empty")
    finished = wait_for(
        lambda: (found := [r for r in rows(browser, "recent") if r["id"] == UPLOAD_ID]) and len(found) == 2 and found,
        what="both runs in the recent table",
    )
    assert [("second" in r["path"], r["outcome"]) for r in finished] == [(True, "completed"), (False, "completed")]
    assert console_errors(browser) == []
