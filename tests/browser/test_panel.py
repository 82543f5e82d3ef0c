"""The upload panel in a real browser: tus-js-client uploads, pause/resume, resume after a cut or a reload.

Two targets. The stand-in (tus_stub.py: the real dashboard app plus a minimal tus server) always runs, so the
panel itself is tested. The real relay runs the same scenarios when it speaks tus (`OPTIONS /upload/` answers
with `Tus-Resumable`; CONTRACT.md "Resumable uploads") and is skipped, saying so, when it does not.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from relay.testing import RunningServer, start_relay, start_sink
from tests.browser.conftest import By, console_errors, save_screenshot, start_test_module, wait_for
from tests.browser.test_dashboard import MiB, make_file

THROTTLE = 4 * MiB  # bytes/s the browser may send while a cut is staged: a 24 MiB file takes ~6 s


# ---- helpers ------------------------------------------------------------------------------------------


def pick(driver: Any, *files: Path) -> None:
    """Choose files as the picker would (the real input is hidden behind the drop-zone button)."""
    picker = driver.find_element(By.ID, "upload-files")
    driver.execute_script("arguments[0].hidden = false", picker)
    picker.send_keys("\n".join(str(file) for file in files))
    driver.execute_script("arguments[0].hidden = true", picker)


def items(driver: Any) -> list[dict[str, Any]]:
    return driver.execute_script(
        """
        return [...document.querySelectorAll("#panel-files li")].map((item) => ({
          state: item.dataset.state,
          status: item.querySelector(".status").textContent,
          percent: parseFloat(item.querySelector(".bar > div").style.width || "0"),
          button: item.querySelector("button")?.textContent ?? null,
        }));
        """
    )


def wait_done(driver: Any, count: int = 1, timeout: float = 30) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        found = items(driver)
        failed = [item for item in found if item["state"] == "error"]
        assert not failed, failed
        return found if len(found) == count and all(item["state"] == "done" for item in found) else None

    return wait_for(done, timeout=timeout, what=f"{count} panel upload(s) to finish")


def wait_percent(driver: Any, at_least: float) -> None:
    wait_for(lambda: items(driver) and items(driver)[0]["percent"] >= at_least, timeout=20, what=f">= {at_least} %")


def open_panel(driver: Any, base_url: str, path: str = "/upload/panel/", token: str = "") -> None:
    driver.get(base_url + "/_relay/ui/")
    field = driver.find_element(By.ID, "upload-path")
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#route-list option"), what="the routes from health")
    field.clear()
    field.send_keys(path)
    if token:
        driver.find_element(By.ID, "upload-token").send_keys(token)


def throttle(driver: Any, upload: int | None) -> None:
    """Slow the browser's uploads (Chromium's network emulation), or lift it with None."""
    if upload is None:
        driver.delete_network_conditions()
    else:
        driver.set_network_conditions(latency=1, download_throughput=100 * MiB, upload_throughput=upload)


def speaks_tus(url: str) -> str | None:
    """None when OPTIONS /upload/ answers with Tus-Resumable; else what it answered."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        conn.request("OPTIONS", "/upload/", headers={"Tus-Resumable": "1.0.0"})
        response = conn.getresponse()
        response.read()
        if response.getheader("Tus-Resumable"):
            return None
        return f"OPTIONS /upload/ answered {response.status} without Tus-Resumable"
    finally:
        conn.close()


# ---- the scenarios, whatever serves them --------------------------------------------------------------


def upload_and_check(driver: Any, base_url: str, file: Path, sha256: str) -> str:
    open_panel(driver, base_url)
    pick(driver, file)
    [item] = wait_done(driver)
    assert f"sha256 {sha256}" in item["status"], item
    return str(item["status"])


def cut_mid_upload(driver: Any, base_url: str, file: Path, restart: Callable[[], None]) -> None:
    open_panel(driver, base_url)
    throttle(driver, THROTTLE)
    pick(driver, file)
    wait_percent(driver, 20)
    save_screenshot(driver, "panel-before-cut")
    restart()
    throttle(driver, None)
    wait_done(driver, timeout=60)


# ---- the stand-in -------------------------------------------------------------------------------------


class Stub:
    def __init__(self, servers: list[RunningServer], folder: Path) -> None:
        self.servers, self.folder = servers, folder
        folder.mkdir()
        self.server = self._start("0")

    def _start(self, port: str) -> RunningServer:
        server = start_test_module("tus_stub", str(self.folder), port)
        self.servers.append(server)
        return server

    def restart(self) -> None:
        """kill -9, then the same folder and port again (tus-js-client's retries find it back)."""
        self.server.stop(signal.SIGKILL)
        self.server = self._start(str(self.server.port))

    def uploads(self) -> list[dict[str, Any]]:
        found = []
        for meta in sorted(self.folder.glob("*.json")):
            info = json.loads(meta.read_text())
            data = meta.with_suffix(".bin").read_bytes()
            found.append({**info, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        return found


@pytest.fixture
def stub(servers: list[RunningServer], tmp_path: Path) -> Stub:
    return Stub(servers, tmp_path / "stub")


def test_panel_uploads_byte_exact_with_the_token(browser: Any, stub: Stub, tmp_path: Path) -> None:
    files = [tmp_path / "one.bin", tmp_path / "two.bin"]
    digests = [make_file(files[0], 3 * MiB + 17, seed=5), make_file(files[1], 1 * MiB, seed=6)]
    open_panel(browser, stub.server.url, token="route-secret")
    pick(browser, *files)
    wait_done(browser, count=2)
    uploads = stub.uploads()
    assert sorted(u["sha256"] for u in uploads) == sorted(digests)
    assert {u["path"] for u in uploads} == {"/upload/panel/"}
    assert all(set(u["authorization"]) == {"Bearer route-secret"} for u in uploads), uploads
    assert console_errors(browser) == []


def test_panel_pause_and_resume(browser: Any, stub: Stub, tmp_path: Path) -> None:
    file = tmp_path / "pause.bin"
    sha256 = make_file(file, 24 * MiB, seed=7)
    open_panel(browser, stub.server.url)
    throttle(browser, THROTTLE)
    pick(browser, file)
    wait_percent(browser, 10)
    browser.find_element(By.CSS_SELECTOR, "#panel-files button").click()
    wait_for(lambda: items(browser)[0]["state"] == "paused" and items(browser)[0]["button"] == "Resume")
    paused_at = stub.uploads()[0]["size"]
    assert 0 < paused_at < 24 * MiB
    throttle(browser, None)
    browser.find_element(By.CSS_SELECTOR, "#panel-files button").click()
    wait_done(browser)
    [upload] = stub.uploads()
    assert upload["sha256"] == sha256 and len(upload["authorization"]) >= 3  # create, patch, head + patch
    assert console_errors(browser) == []


def test_panel_resumes_after_the_server_is_cut(browser: Any, stub: Stub, tmp_path: Path) -> None:
    file = tmp_path / "cut.bin"
    sha256 = make_file(file, 24 * MiB, seed=8)
    cut_mid_upload(browser, stub.server.url, file, stub.restart)
    [upload] = stub.uploads()  # one upload, resumed: not a second one started over
    assert upload["sha256"] == sha256
    assert len(upload["authorization"]) >= 4  # POST, the PATCH that was cut, HEAD, the PATCH that finished


def test_panel_resumes_after_a_page_reload(browser: Any, stub: Stub, tmp_path: Path) -> None:
    file = tmp_path / "reload.bin"
    sha256 = make_file(file, 24 * MiB, seed=9)
    open_panel(browser, stub.server.url)
    throttle(browser, THROTTLE)
    pick(browser, file)
    wait_percent(browser, 20)
    before = stub.uploads()[0]["size"]
    throttle(browser, None)
    browser.refresh()  # the upload is gone from the page; its URL stays in tus-js-client's URL storage
    open_panel(browser, stub.server.url)
    pick(browser, file)
    wait_done(browser)
    [upload] = stub.uploads()  # the same upload, found again in the URL storage
    assert upload["sha256"] == sha256 and before > 0
    assert len(upload["authorization"]) >= 4  # POST, the PATCH the reload ended, HEAD, the last PATCH


# ---- the real relay -----------------------------------------------------------------------------------


@pytest.fixture
def tus_relay(servers: list[RunningServer], tmp_path: Path) -> tuple[RunningServer, Path, Callable[[], None]]:
    received = tmp_path / "received"
    sink = start_sink(received)
    servers.append(sink)
    spool = tmp_path / "spool"
    args = ["--spool", str(spool)]
    relay = start_relay(*args, upstream=sink.url, cwd=tmp_path)
    servers.append(relay)
    refusal = speaks_tus(relay.url)
    if refusal is not None:
        pytest.skip(f"the relay has no resumable (tus) endpoints in this tree yet: {refusal}")
    holder = {"relay": relay}

    def restart() -> None:
        """Cut the relay (kill -9) and start it again on the same spool and port."""
        holder["relay"].stop(signal.SIGKILL)
        again = start_relay(*args, "--port", str(relay.port), upstream=sink.url, cwd=tmp_path)
        servers.append(again)
        holder["relay"] = again

    return relay, received, restart


def sink_file(received: Path, name: str) -> Path:
    return wait_for(lambda: next(iter(received.rglob(name)), None), what=f"{name} at the sink")


def test_relay_panel_upload_byte_exact(browser: Any, tus_relay: Any, tmp_path: Path) -> None:
    relay, received, _ = tus_relay
    file = tmp_path / "panel.bin"
    sha256 = make_file(file, 5 * MiB + 3, seed=10)
    upload_and_check(browser, relay.url, file, sha256)
    assert hashlib.sha256(sink_file(received, "panel.bin").read_bytes()).hexdigest() == sha256
    assert console_errors(browser) == []


def test_relay_cut_mid_upload_resumes_byte_exact(browser: Any, tus_relay: Any, tmp_path: Path) -> None:
    relay, received, restart = tus_relay
    file = tmp_path / "cut.bin"
    sha256 = make_file(file, 24 * MiB, seed=11)
    cut_mid_upload(browser, relay.url, file, restart)
    assert hashlib.sha256(sink_file(received, "cut.bin").read_bytes()).hexdigest() == sha256
    # The dashboard on the same page followed it through the restart (its stream reconnected by itself).
    row = wait_for(
        lambda: browser.find_elements(By.XPATH, f"//table[@id='recent']//tr[contains(., '{sha256}')]"),
        what="the dashboard's row with the file's sha256",
    )[0]
    assert "completed" in row.text
    save_screenshot(browser, "panel-after-cut")
