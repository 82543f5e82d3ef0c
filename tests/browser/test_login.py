"""With --admin-token: the login form, a wrong token (the form again, no data), the session cookie, logout."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.adminauth import SESSION_COOKIE, SESSION_MAX_AGE, session_value
from relay.testing import RunningServer, start_relay
from tests.browser.conftest import By, console_errors, save_screenshot, wait_for

ADMIN_TOKEN = "correct horse battery staple"

# Status of a GET from inside the page (same origin, the browser's cookies); the body is not read, so an
# event stream that was let in is dropped at once.
STATUS_FROM_PAGE = """
const done = arguments[arguments.length - 1];
const controller = new AbortController();
fetch(arguments[0], { signal: controller.signal })
  .then((response) => { done(response.status); controller.abort(); })
  .catch((error) => done(String(error)));
"""


@pytest.fixture
def admin_relay(servers: list[RunningServer], tmp_path: Path) -> RunningServer:
    relay = start_relay("--admin-token", ADMIN_TOKEN, cwd=tmp_path)  # embedded sink, storing under tmp_path
    servers.append(relay)
    return relay


def upload_id_of_a_small_upload(relay: RunningServer, tmp_path: Path) -> str:
    note = tmp_path / "note.txt"
    note.write_text("only for the logged in\n")
    out = subprocess.run(
        [sys.executable, "-m", "client", str(note), "--to", "/upload/private", "--relay", relay.url, "--json", "-q"],
        capture_output=True,
        check=True,
        timeout=30,
    )
    return str(json.loads(out.stdout.splitlines()[-1])["upload_id"])


def status_from_page(driver: Any, path: str) -> Any:
    return driver.execute_async_script(STATUS_FROM_PAGE, path)


def login(driver: Any, token: str) -> None:
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()


def test_wrong_token_shows_the_form_and_no_data_then_login_and_logout(
    browser: Any, admin_relay: RunningServer, tmp_path: Path
) -> None:
    upload_id = upload_id_of_a_small_upload(admin_relay, tmp_path)
    browser.get(admin_relay.url + "/_relay/ui/")
    assert browser.find_elements(By.ID, "token"), "no login form"
    assert not browser.find_elements(By.ID, "recent") and not browser.find_elements(By.ID, "inflight")

    login(browser, "not the token")
    error = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".error"), what="the error message")
    assert "not the admin token" in error[0].text
    assert browser.find_elements(By.ID, "token"), "the form is shown again"
    assert not browser.find_elements(By.CSS_SELECTOR, "table, tbody tr")
    assert upload_id not in browser.page_source
    assert browser.get_cookie(SESSION_COOKIE) is None
    assert status_from_page(browser, "/_relay/events") == 401
    assert status_from_page(browser, "/_relay/uploads") == 401
    save_screenshot(browser, "login-wrong-token")

    login(browser, ADMIN_TOKEN)
    wait_for(lambda: browser.find_elements(By.ID, "live"), what="the dashboard")
    cookie = browser.get_cookie(SESSION_COOKIE)
    assert cookie is not None
    issued = int(cookie["value"].partition(".")[0]) / 1000  # its issue time, and an HMAC of it: not the token
    assert cookie["value"] == session_value(ADMIN_TOKEN, issued) and abs(issued - time.time()) < 60
    assert 0 < cookie["expiry"] - time.time() <= SESSION_MAX_AGE
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/_relay/"
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: no script can read it
    # The same cookie opens the admin endpoints: the stream goes live and the snapshot lists the upload.
    wait_for(lambda: browser.find_element(By.ID, "live").get_attribute("data-state") == "live", what="the stream")
    wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, f"#recent tr[data-id='{upload_id}']"), what="the upload's row"
    )

    copied = {"cookie": f"{SESSION_COOKIE}={cookie['value']}"}  # someone copied the cookie before the logout
    assert httpx.get(f"{admin_relay.url}/_relay/uploads/{upload_id}", headers=copied).status_code == 200

    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait_for(lambda: browser.find_elements(By.ID, "token"), what="the login form after logout")
    assert browser.get_cookie(SESSION_COOKIE) is None
    assert status_from_page(browser, "/_relay/uploads") == 401
    # The logout ended the session itself, not only the browser's cookie: the copy no longer opens anything.
    assert httpx.get(f"{admin_relay.url}/_relay/uploads/{upload_id}", headers=copied).status_code == 401
    assert 'name="token"' in httpx.get(f"{admin_relay.url}/_relay/ui/", headers=copied).text
    # Only the refusals this test asked for: no CSP violation, no script error.
    unexpected = [e for e in console_errors(browser) if "401 (Unauthorized)" not in e]
    assert unexpected == []
