"""The dashboard in real headless Chromium (Debian's `chromium` + `chromium-driver`), driven by selenium.

Without the browser, the driver or selenium, every test here that uses a browser is skipped with the reason,
unless the environment variable CI is set: on CI a missing browser fails them (scripts/ensure-browser installs
it). The HTTP-only tests (test_routes.py) run everywhere.

Each test gets its own browser (a fresh profile in a temporary folder), quit in a finally. Screenshots go
to $RELAY_SCREENSHOTS (default: a temporary folder, named in the test output).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.testing import RunningServer, start_process

ROOT = Path(__file__).resolve().parents[2]
_SCREENSHOTS: Path | None = None


def _find_chromium() -> str | None:
    # The real binary: Debian's /usr/bin/chromium is a launcher script; chromedriver wants the browser itself.
    for candidate in ("/usr/lib/chromium/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if _find_chromium() is None:
        return "chromium is not installed (bash scripts/ensure-browser, or apt-get install chromium chromium-driver)"
    if shutil.which("chromedriver") is None:
        return "chromedriver is not installed (bash scripts/ensure-browser, or apt-get install chromium-driver)"
    return None


@pytest.fixture(autouse=True)
def _browser_present(request: pytest.FixtureRequest) -> None:
    """Every browser test here: skipped with the reason when the browser is missing, failed instead on CI.
    (test_routes.py needs no browser and always runs.)"""
    if "browser" not in request.fixturenames:
        return
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"browser tests cannot run on CI: {reason}", pytrace=False)
    pytest.skip(f"browser tests skipped: {reason}")


class By:
    """selenium's locator strategies, which are plain strings: the test modules import nothing of selenium,
    so they are collected (and skipped with the reason) where selenium is not installed."""

    ID = "id"
    CSS_SELECTOR = "css selector"
    XPATH = "xpath"


def screenshot_dir() -> Path:
    global _SCREENSHOTS
    if _SCREENSHOTS is None:
        named = os.environ.get("RELAY_SCREENSHOTS")
        _SCREENSHOTS = Path(named) if named else Path(tempfile.mkdtemp(prefix="relay-screenshots-"))
        _SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return _SCREENSHOTS


def new_driver(width: int = 1280, height: int = 900) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _find_chromium() or "chromium"
    profile = tempfile.mkdtemp(prefix="relay-chromium-")
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root (CI) cannot use Chromium's sandbox
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--lang=en-US",
    ):
        options.add_argument(flag)
    # The browser console, read back with driver.get_log("browser") (CSP violations are SEVERE there).
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium then never tries to download one.
    service = Service(executable_path=shutil.which("chromedriver") or "chromedriver", log_output=os.devnull)
    driver = webdriver.Chrome(options=options, service=service)
    driver.profile_dir = profile
    return driver


@pytest.fixture
def browser() -> Iterator[Any]:
    driver = new_driver()
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(driver.profile_dir, ignore_errors=True)


def console_errors(driver: Any) -> list[str]:
    """SEVERE entries of the browser console since the last call (reading empties it)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def save_screenshot(driver: Any, name: str) -> Path:
    path = screenshot_dir() / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def wait_for(condition: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


def start_test_module(module: str, *args: str, env: dict[str, str] | None = None) -> RunningServer:
    """A helper server of this folder (`python -m tests.browser.<module>`)."""
    full_env = {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    return start_process([sys.executable, "-m", f"tests.browser.{module}", *args], cwd=ROOT, env=full_env)


@pytest.fixture
def servers() -> Iterator[list[RunningServer]]:
    """Servers a test starts; each stopped by PID at the end, whatever happened."""
    started: list[RunningServer] = []
    yield started
    for server in reversed(started):
        server.stop()
