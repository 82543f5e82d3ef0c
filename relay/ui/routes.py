"""The dashboard's HTTP side: the page, its static files, and the admin session (login and logout).

    GET  /_relay/ui/                 the dashboard, or only the login form when --admin-token is set and the
                                     request has no valid session
    GET  /_relay/ui/static/<file>    package data under relay/ui/static/ (read once at start-up)
    POST /_relay/ui/login            form field `token`: right -> 303 to /_relay/ui/ with the session cookie;
                                     wrong -> the login form again, 401, no data
    POST /_relay/ui/logout           clears the cookie, 303 to /_relay/ui/; with a valid session, also ends
                                     every session issued before it on this relay process (relay.adminauth
                                     Rule 3), so a copy of the cookie stops working too

Rules it keeps:
  Rule 1. Every response carries the same Content-Security-Policy (no inline script or style, no other
          origin), `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`.
  Rule 2. Only files that exist in the package at start-up are served: a request names a key of a dict, never
          a path on disk, so `..` and friends find nothing.
  Rule 3. The page itself holds no data: everything comes from /_relay/uploads, /_relay/events and
          /_relay/metrics, which check the same session (relay.adminauth). A wrong token gets the form again.

The session cookie holds `relay.adminauth.session_value(token)` (its issue time and an HMAC of the token and that
time, never the token), valid for SESSION_MAX_AGE at most; a browser's EventSource cannot send `Authorization`,
which is why there is a cookie at all.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from http.cookies import SimpleCookie
from importlib.resources import files
from importlib.resources.abc import Traversable
from urllib.parse import parse_qs

from relay.adminauth import SESSION_COOKIE, SESSION_MAX_AGE, admin_refusal, end_sessions, session_value
from relay.settings import Settings
from relay.types import Receive, Scope, Send

__all__ = ["CSP", "UI_PREFIX", "UIApp", "create_ui_app"]

UI_PREFIX = "/_relay/ui"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
MAX_FORM_BYTES = 4096  # a login form is one short field; anything longer is not a login
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".LICENSE": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
_SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
_TEXT = "text/plain; charset=utf-8"
_STATIC = UI_PREFIX + "/static/"
_LOGOUT_FORM = (
    '<form class="logout" method="post" action="/_relay/ui/logout"><button type="submit">Log out</button></form>'
)


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: bytes


def _content_type(name: str) -> str:
    suffix = name[name.rfind(".") :] if "." in name else ""
    return _CONTENT_TYPES.get(suffix, "application/octet-stream")


def _walk(folder: Traversable, prefix: str = "") -> dict[str, StaticFile]:
    """Every file under `folder`, keyed by its path relative to it (`vendor/tus.min.js`)."""
    found: dict[str, StaticFile] = {}
    for entry in folder.iterdir():
        name = prefix + entry.name
        if entry.is_dir():
            found.update(_walk(entry, name + "/"))
        elif not entry.name.startswith("."):
            body = entry.read_bytes()
            etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'
            found[name] = StaticFile(body, _content_type(entry.name), etag)
    return found


def _cookies(scope: Scope) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for key, value in scope["headers"]:
        if key == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # http.cookies raises CookieError on junk; a bad cookie is no session
                continue
    return {name: morsel.value for name, morsel in jar.items()}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


class UIApp:
    """ASGI app for everything under /_relay/ui; RelayApp sends it those paths."""

    def __init__(self, settings: Settings) -> None:
        self.admin_token = settings.admin_token
        package = files("relay.ui")
        self.static = _walk(package / "static")
        self.index_html = (package / "pages" / "index.html").read_text("utf-8")
        self.login_html = (package / "pages" / "login.html").read_text("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path in (UI_PREFIX, UI_PREFIX + "/index.html"):
            # Relative URLs in the page resolve against /_relay/ui/, so always serve it there.
            await self.redirect(send, UI_PREFIX + "/")
            return
        if path.startswith(_STATIC):
            if await self.allowed(scope, ("GET", "HEAD"), send):
                await self.static_file(scope, path[len(_STATIC) :], send)
            return
        routes = {
            UI_PREFIX + "/": (("GET", "HEAD"), self.page),
            UI_PREFIX + "/login": (("POST",), self.login),
            UI_PREFIX + "/logout": (("POST",), self.logout),
        }
        if path not in routes:
            await self.respond(send, 404, b"not found\n", _TEXT)
            return
        methods, handler = routes[path]
        if await self.allowed(scope, methods, send):
            await handler(scope, receive, send)

    async def allowed(self, scope: Scope, methods: tuple[str, ...], send: Send) -> bool:
        """True when the request's method is one of `methods`; else answer 405 and return False."""
        if scope["method"] in methods:
            return True
        await self.respond(send, 405, b"method not allowed\n", _TEXT, [(b"allow", ", ".join(methods).encode())])
        return False

    def signed_in(self, scope: Scope) -> bool:
        return admin_refusal(self.admin_token, _header(scope, b"authorization"), _cookies(scope)) is None

    async def page(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.signed_in(scope):
            await self.login_form(send, status=200, error="", head=scope["method"] == "HEAD")
            return
        logout = _LOGOUT_FORM if self.admin_token is not None else ""
        body = self.index_html.replace("<!--logout-->", logout).encode()
        await self.respond(send, 200, body, _CONTENT_TYPES[".html"], head=scope["method"] == "HEAD")

    async def login_form(self, send: Send, *, status: int, error: str, head: bool = False) -> None:
        message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
        body = self.login_html.replace("<!--error-->", message).encode()
        await self.respond(send, status, body, _CONTENT_TYPES[".html"], head=head)

    async def login(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _header(scope, b"sec-fetch-site") == "cross-site":
            # Another site posting a login form into this one: refuse (login CSRF).
            await self.respond(send, 403, b"cross-site login refused\n", _TEXT)
            return
        if self.admin_token is None:
            await self.redirect(send, UI_PREFIX + "/")
            return
        form = await _read_form(receive)
        token = (form or {}).get("token", [""])[0]
        if not token or admin_refusal(self.admin_token, f"Bearer {token}", {}) is not None:
            await self.login_form(send, status=401, error="That token is not the admin token.")
            return
        cookie = (
            f"{SESSION_COOKIE}={session_value(token)}; Max-Age={SESSION_MAX_AGE}; HttpOnly; SameSite=Strict; "
            "Path=/_relay/"
        )
        await self.redirect(send, UI_PREFIX + "/", cookie=cookie + self._secure(scope))

    async def logout(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Only a signed-in request ends sessions server-side: anyone may POST here (it needs no token), and
        # that must not log the admins out. SameSite=Strict keeps the cookie off another site's POST.
        if self.admin_token is not None and self.signed_in(scope):
            end_sessions(self.admin_token)
        cookie = f"{SESSION_COOKIE}=; Max-Age=0; HttpOnly; SameSite=Strict; Path=/_relay/"
        await self.redirect(send, UI_PREFIX + "/", cookie=cookie + self._secure(scope))

    @staticmethod
    def _secure(scope: Scope) -> str:
        # Secure only over HTTPS: on plain http://host a Secure cookie would be dropped and login would loop.
        return "; Secure" if scope.get("scheme") == "https" else ""

    async def static_file(self, scope: Scope, name: str, send: Send) -> None:
        found = self.static.get(name)
        if found is None:
            await self.respond(send, 404, b"not found\n", _TEXT)
            return
        # no-cache + ETag: the browser revalidates (a 304 costs nothing) and never runs a stale script after
        # the relay is upgraded; the file names carry no version to bust a long max-age with.
        extra = [(b"etag", found.etag), (b"cache-control", b"no-cache")]
        if _header(scope, b"if-none-match") == found.etag.decode():
            await self.respond(send, 304, b"", None, extra)
            return
        await self.respond(send, 200, found.body, found.content_type, extra, head=scope["method"] == "HEAD")

    async def redirect(self, send: Send, location: str, *, cookie: str | None = None) -> None:
        extra = [(b"location", location.encode())]
        if cookie is not None:
            extra.append((b"set-cookie", cookie.encode()))
        await self.respond(send, 303, b"", None, extra)

    async def respond(
        self,
        send: Send,
        status: int,
        body: bytes,
        content_type: str | None,
        extra: list[tuple[bytes, bytes]] | None = None,
        *,
        head: bool = False,
    ) -> None:
        headers = [*_SECURITY_HEADERS, *(extra or [])]
        if status != 304:
            headers.append((b"content-length", str(len(body)).encode()))
        if content_type is not None:
            headers.append((b"content-type", content_type.encode()))
        if not any(key == b"cache-control" for key, _ in headers):
            # Pages depend on the session (login form or dashboard): never cache them.
            headers.append((b"cache-control", b"no-store"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else body})


async def _read_form(receive: Receive) -> dict[str, list[str]] | None:
    """The urlencoded form body, or None when it is longer than MAX_FORM_BYTES."""
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > MAX_FORM_BYTES:
            return None
        if not message.get("more_body", False):
            break
    return parse_qs(body.decode("utf-8", "replace"))


def create_ui_app(settings: Settings) -> UIApp:
    """The dashboard app for `settings` (its admin token decides whether a login is needed)."""
    return UIApp(settings)
