"""The dashboard watched in a real browser while real uploads run through a real relay.

The relay forwards to an upstream that reads 25 MiB/s per upload, so a 200 MiB `relay-upload` stays in flight
for about 8 s: long enough to see its bar move, short enough for a test.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from relay.testing import RunningServer, start_relay
from tests.browser.conftest import By, console_errors, save_screenshot, start_test_module, wait_for

MiB = 1024 * 1024
UPSTREAM_RATE = 25 * MiB


def make_file(path: Path, size: int, seed: int) -> str:
    """Write `size` seeded random bytes to `path`; return their sha256."""
    block = random.Random(seed).randbytes(MiB)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for at in range(0, size, MiB):
            piece = block[: min(MiB, size - at)]
            out.write(piece)
            digest.update(piece)
    return digest.hexdigest()


def relay_upload(relay: RunningServer, file: Path, to: str, log: Path) -> subprocess.Popen[bytes]:
    """`relay-upload FILE --to PATH --json` in the background, its output in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "client", str(file), "--to", to, "--relay", relay.url, "--json", "--quiet"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def refused_from_headers(relay: RunningServer) -> int:
    """Declare a body over --max-body-size and send none: the relay refuses it from its headers."""
    parts = urlsplit(relay.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        conn.putrequest("POST", "/upload/too-big")
        conn.putheader("Content-Length", str(10 * 1024**3))
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def rows(driver: Any, table: str) -> list[dict[str, str]]:
    """The rows of #inflight or #recent, as {cell class: text}, plus `width` of an in-flight bar's fill."""
    return driver.execute_script(
        """
        return [...document.querySelectorAll(`#${arguments[0]} tbody tr`)].map((row) => {
          const found = { id: row.dataset.id };
          for (const cell of row.cells) found[cell.className] = cell.textContent;
          const fill = row.querySelector(".bar > div");
          if (fill) found.width = fill.style.width;
          return found;
        });
        """,
        table,
    )


@pytest.fixture
def slow_relay(servers: list[RunningServer], tmp_path: Path) -> RunningServer:
    upstream = start_test_module("slow_upstream", str(UPSTREAM_RATE))
    servers.append(upstream)
    relay = start_relay("--max-body-size", "1GiB", upstream=upstream.url, cwd=tmp_path)
    servers.append(relay)
    return relay


def test_live_progress_then_completed_with_sha256(browser: Any, slow_relay: RunningServer, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big_sha = make_file(big, 200 * MiB, seed=1)
    small = tmp_path / "small.bin"
    make_file(small, 48 * MiB, seed=2)
    # History for the recent table and the totals: a quick upload and a refusal.
    assert refused_from_headers(slow_relay) == 413
    hello = tmp_path / "hello.txt"
    hello.write_text("hello from the browser test\n")
    assert relay_upload(slow_relay, hello, "/upload/notes", tmp_path / "hello.log").wait(30) == 0

    browser.set_window_size(1280, 1100)  # tall enough for the whole page in one screenshot
    browser.get(slow_relay.url + "/_relay/ui/")
    wait_for(lambda: browser.find_element(By.ID, "live").get_attribute("data-state") == "live", what="the stream")
    wait_for(lambda: len(rows(browser, "recent")) == 2, what="the snapshot's two uploads")

    uploads = [
        relay_upload(slow_relay, big, "/upload/isos/big.bin", tmp_path / "big.log"),
        relay_upload(slow_relay, small, "/upload/photos/small.bin", tmp_path / "small.log"),
    ]
    try:
        # The big upload's bar, sampled until it has shown two different widths.
        widths: set[str] = set()

        def big_row() -> dict[str, str] | None:
            return next((row for row in rows(browser, "inflight") if "big.bin" in row["path"]), None)

        def moved() -> bool:
            row = big_row()
            if row and row["width"] not in ("", "0%", "0.0%"):
                widths.add(row["width"])
            return len(widths) >= 2

        wait_for(moved, timeout=20, what="the big upload's bar to move")
        wait_for(lambda: len(rows(browser, "inflight")) == 2, timeout=10, what="both uploads in flight")
        row = wait_for(big_row, what="the big upload's row")
        assert "MB/s" in row["rate"] and "/ 200.0 MiB" in row["bytes"], row
        wait_for(lambda: float((big_row() or {"width": "0%"})["width"].rstrip("%")) > 20, timeout=20)
        save_screenshot(browser, "dashboard-in-flight")
        for upload in uploads:
            assert upload.wait(60) == 0, (tmp_path / "big.log").read_text()
    finally:
        for upload in uploads:
            if upload.poll() is None:
                upload.kill()
                upload.wait()

    result = json.loads((tmp_path / "big.log").read_text().splitlines()[-1])
    assert result["files"][0]["sha256"] == big_sha
    done = wait_for(
        lambda: next(
            (r for r in rows(browser, "recent") if "big.bin" in r["path"] and r["outcome"] == "completed"), None
        ),
        timeout=10,
        what="the big upload's row to end completed",
    )
    assert big_sha in done["sha256"] and done["upstream"] == "200", done
    wait_for(lambda: not rows(browser, "inflight"), what="the in-flight table to empty")
    # The totals come from /_relay/metrics: 3 completed uploads and the one rejection, by code.
    wait_for(lambda: browser.find_element(By.ID, "total-uploads").text == "4", timeout=5, what="4 uploads")
    assert "body_too_large 1" in browser.find_element(By.ID, "total-rejections").text
    rejected = next(r for r in rows(browser, "recent") if r["outcome"] == "rejected")
    assert rejected["error"] == "body_too_large"
    save_screenshot(browser, "dashboard-done")
    assert console_errors(browser) == []


def test_phone_viewport_has_no_horizontal_scroll(browser: Any, slow_relay: RunningServer, tmp_path: Path) -> None:
    # A long sha256 in the recent table is the widest thing the page shows.
    hello = tmp_path / "a-rather-long-file-name-for-a-small-screen.txt"
    hello.write_text("phone\n")
    assert relay_upload(slow_relay, hello, "/upload/phone", tmp_path / "up.log").wait(30) == 0
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
    )
    browser.get(slow_relay.url + "/_relay/ui/")
    wait_for(lambda: len(rows(browser, "recent")) == 1, what="the upload's row")
    page = browser.execute_script(
        "return {scroll: document.documentElement.scrollWidth, view: document.documentElement.clientWidth}"
    )
    assert page["view"] == 390 and page["scroll"] <= page["view"], page
    # The drop zone and the pause buttons are real buttons; every field has a label.
    assert browser.find_element(By.ID, "drop-zone").tag_name == "button"
    for field in ("upload-path", "upload-token"):
        assert browser.find_elements(By.CSS_SELECTOR, f"label[for='{field}']")
    save_screenshot(browser, "dashboard-phone")
    browser.execute_cdp_cmd(
        "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
    )
    background = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(15, 18, 22)", background
    save_screenshot(browser, "dashboard-phone-dark")
    assert console_errors(browser) == []


def test_csp_blocks_inline_script(browser: Any, slow_relay: RunningServer) -> None:
    browser.get(slow_relay.url + "/_relay/ui/")
    wait_for(lambda: browser.find_element(By.ID, "live").get_attribute("data-state") == "live", what="the stream")
    assert console_errors(browser) == []  # the page itself breaks no rule
    # An injected inline script does not run, and the browser says why.
    browser.execute_script(
        "const s = document.createElement('script'); s.textContent = 'window.injected = 1'; document.head.append(s)"
    )
    assert browser.execute_script("return window.injected") is None
    errors = console_errors(browser)
    assert errors and all("Content Security Policy" in error for error in errors), errors
