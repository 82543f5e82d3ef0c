"""Checking the http(s) URLs the relay is given (the upstream, webhook receivers) before it starts.

A URL that Python's `urlsplit` takes may still fail when it is first used (a port out of range, a port that is
not a number, a broken IPv6 literal): checked at start-up, it is a usage error (one line, exit 2) instead of a
failure at start-up or at every delivery.
"""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["http_url_problem"]


def http_url_problem(url: str) -> str | None:
    """Why `url` is not a usable http:// or https:// URL with a host (and a port in 1-65535 if given); None if it is."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range 0-65535", a port that is not a number
        return str(exc)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "it needs http:// or https:// and a host"
    if port == 0:
        return "port 0"
    return None
