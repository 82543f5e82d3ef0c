"""Where webhooks go: `--webhook URL` (repeatable) with `--webhook-secret`, and `[[webhooks]]` config tables.

    [[webhooks]]
    url = "https://hooks.example/relay"
    events = ["upload.completed"]          # default: both events
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"   # default: --webhook-secret

Rules (SSRF care): URLs come only from here, never from a request; only `http://` and `https://` with a host;
each URL once (a delivery names its endpoint by URL, and the outbox outlives a configuration change: a pending
delivery whose URL is no longer configured is given up, never sent). Every endpoint needs a secret: an unsigned
webhook could be forged by anyone who can reach the receiver.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay.urls import http_url_problem
from relay.webhooks.signer import parse_secret

__all__ = ["EVENT_TYPES", "WebhookEndpoint", "webhook_endpoints"]

EVENT_TYPES = ("upload.completed", "upload.failed")
_TABLE_KEYS = {"url", "events", "secret"}


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookEndpoint:
    """One receiver: its URL, the event types it wants, the HMAC key its deliveries are signed with."""

    url: str
    key: bytes
    events: tuple[str, ...] = EVENT_TYPES

    def __post_init__(self) -> None:
        problem = http_url_problem(self.url)
        if problem is not None:
            raise ValueError(f"a webhook URL must be http:// or https:// with a host: {self.url!r} ({problem})")
        if not self.events or any(event not in EVENT_TYPES for event in self.events):
            raise ValueError(f"webhook events must be some of {', '.join(EVENT_TYPES)}: {list(self.events)!r}")
        if not self.key:
            raise ValueError(f"webhook {self.url} has no secret")

    def __repr__(self) -> str:  # never print the key
        return f"WebhookEndpoint(url={self.url!r}, events={self.events!r})"


def webhook_endpoints(
    urls: Iterable[str], secret: str | None, config: str | Path | None = None
) -> tuple[WebhookEndpoint, ...]:
    """The flags' endpoints, then the config file's `[[webhooks]]`; ValueError says which one is wrong."""
    default_key = parse_secret(secret) if secret else None
    endpoints: list[WebhookEndpoint] = []
    for url in urls:
        if default_key is None:
            raise ValueError(f"--webhook {url} needs --webhook-secret (or RELAY_WEBHOOK_SECRET)")
        endpoints.append(WebhookEndpoint(url=url, key=default_key))
    for number, table in enumerate(_tables(config), start=1):
        try:
            endpoints.append(_endpoint(table, default_key))
        except ValueError as exc:
            raise ValueError(f"{config}: [[webhooks]] #{number}: {exc}") from None
    seen: set[str] = set()
    for endpoint in endpoints:
        if endpoint.url in seen:
            raise ValueError(f"webhook {endpoint.url} is configured twice")
        seen.add(endpoint.url)
    return tuple(endpoints)


def _tables(config: str | Path | None) -> list[Any]:
    if not config:
        return []
    # The file was read and checked once already by relay/config.py; [[webhooks]] is read here.
    tables = tomllib.loads(Path(config).read_text()).get("webhooks", [])
    if not isinstance(tables, list) or not all(isinstance(table, dict) for table in tables):
        raise ValueError(f"{config}: [[webhooks]] must be an array of tables")
    return tables


def _endpoint(table: dict[str, Any], default_key: bytes | None) -> WebhookEndpoint:
    unknown = set(table) - _TABLE_KEYS
    if unknown:
        raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
    url, events, secret = table.get("url"), table.get("events", list(EVENT_TYPES)), table.get("secret")
    if not isinstance(url, str):
        raise ValueError("url: a URL is required")
    if not isinstance(events, list) or not all(isinstance(event, str) for event in events):
        raise ValueError(f"events: not a list of event types: {events!r}")
    if secret is not None and not isinstance(secret, str):
        raise ValueError("secret: not a string")
    key = parse_secret(secret) if secret else default_key
    if key is None:
        raise ValueError("secret: required (or --webhook-secret)")
    return WebhookEndpoint(url=url, key=key, events=tuple(events))
