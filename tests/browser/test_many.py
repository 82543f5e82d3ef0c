"""200 uploads in flight: every row is there and moving, and no row is ever rebuilt while it moves.

The stand-in (tus_stub.py) plays 200 uploads on /_relay/events, each with a progress event every 100 ms
(2000 events a second, the relay's fastest), then completes them all.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from relay.testing import RunningServer
from tests.browser.conftest import By, console_errors, save_screenshot, start_test_module, wait_for

COUNT = 200

# Watch the in-flight table: count rows added or removed (a re-render would add them all again), tag every
# row element (a rebuilt row would lose its tag), and time the gaps between animation frames.
WATCH = """
const body = document.querySelector("#inflight tbody");
window.watch = { mutations: 0, gaps: [], last: performance.now() };
new MutationObserver((records) => { window.watch.mutations += records.length; }).observe(body, { childList: true });
for (const row of body.rows) row.tagged = true;
const frame = (now) => {
  window.watch.gaps.push(now - window.watch.last);
  window.watch.last = now;
  if (window.watch.gaps.length < 600) requestAnimationFrame(frame);
};
requestAnimationFrame(frame);
"""

WIDTHS = "return [...document.querySelectorAll('#inflight .bar > div')].map((fill) => fill.style.width)"


def test_200_uploads_in_flight_update_in_place(browser: Any, servers: list[RunningServer], tmp_path: Path) -> None:
    folder = tmp_path / "stub"
    folder.mkdir()
    stub = start_test_module("tus_stub", str(folder), env={"STUB_SYNTHETIC_UPLOADS": str(COUNT)})
    servers.append(stub)
    browser.get(stub.url + "/_relay/ui/")
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#inflight tbody tr")) == COUNT, what="200 rows")
    browser.execute_script(WATCH)
    first = browser.execute_script(WIDTHS)
    wait_for(lambda: sum(a != b for a, b in zip(first, browser.execute_script(WIDTHS), strict=True)) == COUNT,
             timeout=5, what="every bar to move")  # fmt: skip
    time.sleep(1.0)  # a second of frames while all 200 move
    watch = browser.execute_script(
        "const rows = [...document.querySelectorAll('#inflight tbody tr')];"
        "return { ...window.watch, rows: rows.length, tagged: rows.filter((row) => row.tagged).length }"
    )
    assert watch["rows"] == COUNT and watch["tagged"] == COUNT, "rows were rebuilt"
    assert watch["mutations"] == 0, "rows were added or removed while they only moved"
    gaps = sorted(watch["gaps"][1:])
    median = gaps[len(gaps) // 2]
    print(f"frames: {len(gaps)}, median gap {median:.1f} ms, worst {gaps[-1]:.1f} ms")
    # Headless on a busy 2-core box: generous, but a per-event re-render of 200 rows would blow it.
    assert median < 100, gaps
    save_screenshot(browser, "dashboard-200-in-flight")
    # Then they all complete and move to the recent table (which keeps the newest 100).
    wait_for(lambda: not browser.find_elements(By.CSS_SELECTOR, "#inflight tbody tr"), timeout=20, what="all done")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#recent tbody tr")) == 100
    assert console_errors(browser) == []
