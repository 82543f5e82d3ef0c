"""Where a request goes: `--relay` + `--to` (a path, or a full URL that names the relay too), and the hints
for the two mistakes a new user makes first: a path the relay does not route, and a relay that is not running.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit

import httpx

from client.errors import ArgumentError

__all__ = ["DEFAULT_RELAY", "build_url", "connect_failure", "resolve_target", "route_hint"]

DEFAULT_RELAY = "http://127.0.0.1:8000"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def resolve_target(to: str, relay: str | None) -> tuple[str, str]:
    """(relay base URL, path and query) from `--to` and `--relay` (None: not given).

    `--to http://host:8000/upload/x` sets the relay too. Given with a `--relay` it must agree: either the URL
    starts with that relay's URL (a relay mounted under a path prefix), or it is an error.
    """
    if relay is not None and not _is_url(relay):
        raise ArgumentError(f"--relay must be an http:// or https:// URL, not {relay!r}")
    if not _is_url(to):
        if _SCHEME.match(to):  # ftp://..., file:/...: a URL the client cannot speak, not a path
            raise ArgumentError(f"--to must be a path (/upload/x) or an http:// or https:// URL, not {to!r}")
        return relay or DEFAULT_RELAY, to
    parts = urlsplit(to)
    if not parts.netloc:
        raise ArgumentError(f"--to {to!r} is not a valid URL")
    if relay is None:
        path = parts.path or "/"
        return f"{parts.scheme.lower()}://{parts.netloc}", path + (f"?{parts.query}" if parts.query else "")
    base = relay.rstrip("/")
    if to.lower().startswith(base.lower() + "/"):
        return relay, to[len(base) :]
    raise ArgumentError(f"--to {to} names another relay than --relay {relay}: give the URL in one of them")


def build_url(relay: str, to: str, query: Sequence[tuple[str, str]]) -> str:
    """relay base + path + the encoded query (appended to any query already in `to`)."""
    if not _is_url(relay):
        raise ArgumentError(f"--relay must be an http:// or https:// URL, not {relay!r}")
    path = to if to.startswith("/") else "/" + to
    url = relay.rstrip("/") + path
    if query:
        encoded = str(httpx.QueryParams(list(query)))
        url += ("&" if "?" in path else "?") + encoded
    return url


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
