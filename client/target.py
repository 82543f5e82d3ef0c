"""Where a request goes: `--relay` + `--to` (a path, or a full URL that names the relay too), and the hints
for the two mistakes a new user makes first: a path the relay does not route, and a relay that is not running.

Every URL is checked here, once, where the arguments are resolved (`resolve_target`, `resolve_bench`,
`build_url`; `check_events_id` for the id that --events puts in its URL): httpx must parse it, it must be
http:// or https://, have a host, and a port (when given) of 1-65535. Anything else is a usage error
(ArgumentError, exit 2, one line) before a request is built, because httpx and the socket layer report such
URLs with exceptions (InvalidURL, ValueError, OverflowError) that are no network failure and would otherwise
end as a traceback. `url_problem` is the same check for URLs that come from elsewhere (a relay's Location,
the resume store), whose callers decide what a bad one means.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit

import httpx

from client.errors import ArgumentError

__all__ = [
    "DEFAULT_RELAY",
    "build_url",
    "check_events_id",
    "check_url",
    "connect_failure",
    "resolve_bench",
    "resolve_target",
    "route_hint",
    "url_problem",
]

DEFAULT_RELAY = "http://127.0.0.1:8000"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# The upload ids the relay takes (CONTRACT.md, relay-server, "Upload ids").
_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def url_problem(url: str) -> str | None:
    """Why the client cannot send a request to `url`, or None when it can."""
    try:
        parsed = httpx.URL(url)
        port = parsed.port
    except (httpx.InvalidURL, ValueError) as exc:  # InvalidURL is not a ValueError: both, to be sure
        return str(exc) or type(exc).__name__
    if parsed.scheme not in ("http", "https"):
        return "not an http:// or https:// URL"
    if not parsed.host:
        return "no host"
    if port is not None and not 1 <= port <= 65535:
        # httpx accepts any number; the socket layer then fails with OverflowError (or connects nowhere: 0).
        return f"port {port} is not in 1-65535"
    return None


def check_url(url: str, option: str) -> str:
    """`url` as given, or the usage error that names `option` and what is wrong with it."""
    problem = url_problem(url)
    if problem is not None:
        raise ArgumentError(f"{option} {url!r} is not a usable URL: {problem}")
    return url


def resolve_target(to: str, relay: str | None) -> tuple[str, str]:
    """(relay base URL, path and query) from `--to` and `--relay` (None: not given), both checked.

    `--to http://host:8000/upload/x` sets the relay too. Given with a `--relay` it must agree: either the URL
    starts with that relay's URL (a relay mounted under a path prefix), or it is an error.
    """
    if relay is not None:
        _check_relay(relay, "--relay")
    base, path = _split_target(to, relay)
    build_url(base, path, [])  # the whole URL once, so a path httpx refuses is a usage error here, not mid-run
    return base, path


def _split_target(to: str, relay: str | None) -> tuple[str, str]:
    if not _is_url(to):
        if _SCHEME.match(to):  # ftp://..., file:/...: a URL the client cannot speak, not a path
            raise ArgumentError(f"--to must be a path (/upload/x) or an http:// or https:// URL, not {to!r}")
        return relay or DEFAULT_RELAY, to
    check_url(to, "--to")
    try:
        parts = urlsplit(to)  # stricter than httpx in places: "http://a]b/" is a bad IPv6 URL to it
    except ValueError as exc:
        raise ArgumentError(f"--to {to!r} is not a usable URL: {exc}") from None
    if relay is None:
        path = parts.path or "/"
        return f"{parts.scheme.lower()}://{parts.netloc}", path + (f"?{parts.query}" if parts.query else "")
    base = relay.rstrip("/")
    if to.lower().startswith(base.lower() + "/"):
        return relay, to[len(base) :]
    raise ArgumentError(f"--to {to} names another relay than --relay {relay}: give the URL in one of them")


def resolve_bench(relay: str, to: str, direct: str | None) -> tuple[str, str, str | None]:
    """bench's `--relay`, `--to` (a path only: the same path is used on `--direct`) and `--direct`, checked."""
    if _SCHEME.match(to):
        raise ArgumentError(f"bench --to must be a path (/upload/bench), not {to!r}: give the relay with --relay")
    return _check_relay(relay, "--relay"), to, None if direct is None else _check_relay(direct, "--direct")


def build_url(relay: str, to: str, query: Sequence[tuple[str, str]]) -> str:
    """relay base + path + the encoded query (appended to any query already in `to`)."""
    _check_relay(relay, "--relay")
    path = to if to.startswith("/") else "/" + to
    url = relay.rstrip("/") + path
    if query:
        encoded = str(httpx.QueryParams(list(query)))
        url += ("&" if "?" in path else "?") + encoded
    # The base was fine, so what httpx refuses now (a control character, a URL over 64 KiB) came from --to.
    return check_url(url, "--to")


def check_events_id(headers: Sequence[tuple[str, str]]) -> None:
    """With --events, a `--header 'X-Upload-ID: ...'` of the user's becomes part of the events URL
    (/_relay/uploads/{id}/events): it must be an id the relay takes, or that URL is malformed or another one."""
    # Not httpx.Headers: it raises UnicodeEncodeError on a non-ASCII value. Several are joined, as httpx would.
    values = [value for name, value in headers if name.lower() == "x-upload-id"]
    upload_id = ", ".join(values) if values else None
    if upload_id is not None and not _UPLOAD_ID.fullmatch(upload_id):
        raise ArgumentError(f"--header X-Upload-ID {upload_id!r}: the relay takes only [A-Za-z0-9_-]{{1,64}}")


def _check_relay(url: str, option: str) -> str:
    if not _is_url(url):
        raise ArgumentError(f"{option} must be an http:// or https:// URL, not {url!r}")
    return check_url(url, option)


def connect_failure(relay: str, exc: Exception) -> str:
    """One line for a relay that cannot be reached: which URL, why, and what to do about it."""
    reason = str(exc) or type(exc).__name__
    return f"cannot connect to the relay at {relay} ({reason}); is it running? Start one with: relay-server"


async def route_hint(client: httpx.AsyncClient, relay: str, to: str) -> str | None:
    """After a 404 not_found: the relay's route prefixes (from /_relay/health) and the likely fix, or None."""
    try:
        response = await client.get(f"{relay.rstrip('/')}/_relay/health", timeout=5.0)
        routes = response.json().get("routes") if response.status_code == 200 else None
        prefixes = [str(route["prefix"]) for route in routes or []]
    except (httpx.HTTPError, ValueError, AttributeError, KeyError, TypeError):
        return None  # an older relay, or not a relay at all: no hint rather than a wrong one
    if not prefixes:
        return None
    path = to.split("?", 1)[0]
    path = path if path.startswith("/") else "/" + path
    routes_text = f"the relay routes {', '.join(prefixes)}"
    for prefix in prefixes:
        if path + "/" == prefix:
            return f"{routes_text}: did you mean --to {prefix} ?"
        if path.lower().startswith(prefix.lower()) and not path.startswith(prefix):
            return f"{routes_text} (case-sensitive): did you mean --to {prefix}{path[len(prefix) :]} ?"
    return routes_text
