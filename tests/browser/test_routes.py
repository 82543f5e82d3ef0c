"""The dashboard's HTTP side, without a browser: pages, static files, headers, login and logout.

Driven in-process through the relay's own ASGI app (relay.app routes /_relay/ui there); these answers are
small and whole, so httpx's ASGI transport (which collects bodies) is fine here.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from importlib.resources import files
from typing import Any

import httpx
import pytest

from relay.adminauth import SESSION_COOKIE, SESSION_MAX_AGE, session_value
from relay.app import RelayApp
from relay.settings import Settings
from relay.ui.routes import CSP, MAX_FORM_BYTES

TOKEN = "admin-secret"
STATIC = files("relay.ui") / "static"


def call(method: str, path: str, *, admin_token: str | None = TOKEN, **kwargs: Any) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=RelayApp(Settings(admin_token=admin_token)))
        async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(run())


def assert_secure_headers(response: httpx.Response) -> None:
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/_relay/ui/", 200),
        ("GET", "/_relay/ui", 303),
        ("GET", "/_relay/ui/static/app.js", 200),
        ("GET", "/_relay/ui/static/nope.js", 404),
        ("GET", "/_relay/ui/nope", 404),
        ("DELETE", "/_relay/ui/", 405),
        ("GET", "/_relay/ui/login", 405),
        ("POST", "/_relay/ui/login", 401),
        ("POST", "/_relay/ui/logout", 303),
    ],
)
def test_every_answer_carries_the_csp(method: str, path: str, status: int) -> None:
    response = call(method, path)
    assert response.status_code == status
    assert_secure_headers(response)


def test_the_csp_is_the_contracts() -> None:
    assert CSP == (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("app.js", "text/javascript; charset=utf-8"),
        ("panel.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("vendor/tus.min.js", "text/javascript; charset=utf-8"),
        ("vendor/tus-js-client.LICENSE", "text/plain; charset=utf-8"),
        ("vendor/VERSIONS.txt", "text/plain; charset=utf-8"),
    ],
)
def test_static_files_types_and_caching(name: str, content_type: str) -> None:
    response = call("GET", f"/_relay/ui/static/{name}", admin_token=None)
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.headers["cache-control"] == "no-cache"
    assert response.content == (STATIC / name).read_bytes()
    again = call("GET", f"/_relay/ui/static/{name}", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    head = call("HEAD", f"/_relay/ui/static/{name}")
    assert head.status_code == 200 and head.content == b""


@pytest.mark.parametrize(
    "path", ["/_relay/ui/static/../routes.py", "/_relay/ui/static/%2e%2e/routes.py", "/_relay/ui/static/"]
)
def test_nothing_outside_the_static_files(path: str) -> None:
    assert call("GET", path).status_code == 404


def test_without_a_session_only_the_login_form() -> None:
    response = call("GET", "/_relay/ui/")
    assert response.headers["cache-control"] == "no-store"
    assert 'name="token"' in response.text
    assert "inflight" not in response.text and "app.js" not in response.text


@pytest.mark.parametrize(
    "credentials",
    [
        {"headers": {"Cookie": f"{SESSION_COOKIE}={session_value(TOKEN)}"}},
        {"headers": {"Authorization": f"Bearer {TOKEN}"}},
    ],
)
def test_with_a_session_the_dashboard_and_logout(credentials: dict[str, Any]) -> None:
    response = call("GET", "/_relay/ui/", **credentials)
    assert response.status_code == 200
    assert 'id="inflight"' in response.text and 'action="/_relay/ui/logout"' in response.text


def test_head_has_no_body() -> None:
    for token in (TOKEN, None):
        response = call("HEAD", "/_relay/ui/", admin_token=token)
        assert response.status_code == 200 and response.content == b""
        assert int(response.headers["content-length"]) > 0


def test_a_wrong_cookie_is_no_session() -> None:
    response = call("GET", "/_relay/ui/", headers={"Cookie": f"{SESSION_COOKIE}={session_value('another token')}"})
    assert 'name="token"' in response.text and "inflight" not in response.text


def test_without_an_admin_token_no_login_at_all() -> None:
    response = call("GET", "/_relay/ui/", admin_token=None)
    assert 'id="inflight"' in response.text and "logout" not in response.text
    login = call("POST", "/_relay/ui/login", admin_token=None, data={"token": "x"})
    assert login.status_code == 303 and "set-cookie" not in login.headers


def test_login_sets_the_session_cookie() -> None:
    before = time.time()
    response = call("POST", "/_relay/ui/login", data={"token": TOKEN})
    assert response.status_code == 303 and response.headers["location"] == "/_relay/ui/"
    value, rest = response.headers["set-cookie"].split("; ", 1)
    assert rest == f"Max-Age={SESSION_MAX_AGE}; HttpOnly; SameSite=Strict; Path=/_relay/"
    name, _, session = value.partition("=")
    issued = int(session.partition(".")[0]) / 1000
    assert name == SESSION_COOKIE and before - 1 <= issued <= time.time() + 1
    assert session == session_value(TOKEN, issued)  # its issue time and the HMAC of it, never the token
    assert TOKEN not in response.headers["set-cookie"]


def test_a_session_expires() -> None:
    """A cookie is worth SESSION_MAX_AGE from its issue time, wherever it went (a copy, a stolen one)."""

    def page(session: str) -> httpx.Response:
        return call("GET", "/_relay/ui/", headers={"Cookie": f"{SESSION_COOKIE}={session}".encode()})

    now = time.time()
    assert 'id="inflight"' in page(session_value(TOKEN, now - SESSION_MAX_AGE + 60)).text
    for session in (
        session_value(TOKEN, now - SESSION_MAX_AGE - 1),  # too old
        session_value(TOKEN, now + 3600),  # from the future
        "9" + session_value(TOKEN, now),  # another issue time under the same HMAC
        hmac.new(TOKEN.encode(), b"upload-relay dashboard session v1", hashlib.sha256).hexdigest(),  # the old kind
        "１２." + session_value(TOKEN, now).partition(".")[2],  # not ASCII digits
    ):
        assert 'name="token"' in page(session).text, session
    uploads = call("GET", "/_relay/uploads", headers={"Cookie": f"{SESSION_COOKIE}={session_value(TOKEN, 0)}"})
    assert uploads.status_code == 401


@pytest.mark.parametrize(
    "form",
    [{"token": "wrong"}, {"token": ""}, {}, {"token": TOKEN + "x"}, {"token": TOKEN, "pad": "x" * MAX_FORM_BYTES}],
)
def test_a_wrong_login_gets_the_form_again(form: dict[str, str]) -> None:
    response = call("POST", "/_relay/ui/login", data=form)
    assert response.status_code == 401
    assert "set-cookie" not in response.headers
    assert 'name="token"' in response.text and 'role="alert"' in response.text
    assert "inflight" not in response.text


def test_a_cross_site_login_is_refused() -> None:
    response = call("POST", "/_relay/ui/login", data={"token": TOKEN}, headers={"Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 403 and "set-cookie" not in response.headers


def test_login_over_https_marks_the_cookie_secure() -> None:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=RelayApp(Settings(admin_token=TOKEN)))
        async with httpx.AsyncClient(transport=transport, base_url="https://relay.test") as client:
            return await client.post("/_relay/ui/login", data={"token": TOKEN})

    assert asyncio.run(run()).headers["set-cookie"].endswith("; Secure")


def test_logout_clears_the_cookie() -> None:
    response = call("POST", "/_relay/ui/logout", headers={"Cookie": f"{SESSION_COOKIE}={session_value(TOKEN)}"})
    assert response.status_code == 303
    assert response.headers["set-cookie"] == f"{SESSION_COOKIE}=; Max-Age=0; HttpOnly; SameSite=Strict; Path=/_relay/"


def test_logout_ends_the_session_not_just_the_cookie() -> None:
    """A copy of the cookie taken before the logout is refused after it (the page and the admin endpoints); a new
    login works. Logout ends sessions process-wide (relay.adminauth Rule 3), so this test has a token of its own."""
    token = "a token for the logout test"

    def with_cookie(method: str, path: str, session: str) -> httpx.Response:
        return call(method, path, admin_token=token, headers={"Cookie": f"{SESSION_COOKIE}={session}"})

    def logged_in() -> str:
        login = call("POST", "/_relay/ui/login", admin_token=token, data={"token": token})
        return login.headers["set-cookie"].split(";")[0].partition("=")[2]

    copied = logged_in()
    assert with_cookie("GET", "/_relay/uploads", copied).status_code == 200
    # Without a valid session, logout only clears the caller's cookie: anyone may POST here.
    call("POST", "/_relay/ui/logout", admin_token=token)
    call("POST", "/_relay/ui/logout", admin_token=token, headers={"Cookie": f"{SESSION_COOKIE}=0.junk"})
    assert with_cookie("GET", "/_relay/uploads", copied).status_code == 200

    assert with_cookie("POST", "/_relay/ui/logout", copied).status_code == 303
    assert with_cookie("GET", "/_relay/uploads", copied).status_code == 401
    assert 'name="token"' in with_cookie("GET", "/_relay/ui/", copied).text
    assert with_cookie("GET", "/_relay/uploads", logged_in()).status_code == 200


def test_no_inline_script_or_style_in_the_pages() -> None:
    for page in ("index.html", "login.html"):
        text = (files("relay.ui") / "pages" / page).read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), page
        assert "<style" not in text and not re.search(r"\sstyle=", text), page
        assert not re.search(r"\son[a-z]+=", text), page  # no inline event handlers
        assert "http://" not in text and "https://" not in text, page  # no other origin


def test_every_asset_the_page_names_is_package_data() -> None:
    index = (files("relay.ui") / "pages" / "index.html").read_text()
    named = re.findall(r'(?:src|href)="static/([^"]+)"', index)
    for script in ("app.js", "panel.js", "chart.js", "format.js"):
        named += re.findall(r'from "\./([^"]+)"', (STATIC / script).read_text())
    assert {"app.js", "style.css", "vendor/tus.min.js", "format.js", "chart.js", "panel.js"} <= set(named)
    for name in named:
        assert call("GET", f"/_relay/ui/static/{name}").status_code == 200, name


def test_the_vendored_tus_client_is_recorded() -> None:
    versions = (STATIC / "vendor" / "VERSIONS.txt").read_text()
    line = next(line for line in versions.splitlines() if line.startswith("tus-js-client"))
    _, version, file, sha256 = line.split()
    assert version.startswith("4.") and file == "tus.min.js"
    assert hashlib.sha256((STATIC / "vendor" / file).read_bytes()).hexdigest() == sha256
    assert "MIT" in (STATIC / "vendor" / "tus-js-client.LICENSE").read_text()
