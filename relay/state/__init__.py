"""Where shared state lives: in this process (relay/state/memory.py) or in Redis (relay/state/redis.py).

`open_state` is the one choice, made at start-up by relay/app.py: with a Redis URL every relay naming the same
URL and prefix shares the uploads registry, the events and the caps; without one, nothing changes. See
relay/state/base.py for the interface and relay/state/redis.py for how the Redis side keeps the data path free
of any wait on Redis.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from relay.bus import EventBus
from relay.state.base import FeedEntry, SharedState
from relay.state.memory import MemoryState
from relay.uploads import UploadRegistry

__all__ = ["FeedEntry", "MemoryState", "SharedState", "check_redis", "open_state"]


def open_state(
    redis_url: str | None,
    *,
    prefix: str,
    metrics: CollectorRegistry,
    max_concurrent: int | None,
    max_per_client: int | None,
    registry_size: int,
    registry_ttl: float,
    bus: EventBus | None = None,
    registry: UploadRegistry | None = None,
) -> SharedState:
    """The shared state for these settings (a bus or registry given explicitly wins: tests and embedding)."""
    if redis_url is None or bus is not None or registry is not None:
        return MemoryState(bus, registry or _memory_registry(registry_size, registry_ttl))
    from relay.state.redis import RedisState  # imported only when asked for: plain relays never load redis-py

    return RedisState(
        redis_url,
        prefix=prefix,
        metrics=metrics,
        max_concurrent=max_concurrent,
        max_per_client=max_per_client,
        registry_size=registry_size,
        registry_ttl=registry_ttl,
    )


def _memory_registry(size: int, ttl: float) -> UploadRegistry:
    from relay.uploads import InMemoryUploadRegistry

    return InMemoryUploadRegistry(max_finished=size, ttl=ttl)


def check_redis(url: str) -> None:
    """Before serving: raise ValueError (one line, without the URL's password) unless Redis answers a PING."""
    from relay.state.link import ERRORS, describe
    from relay.state.redis import ping

    parts = urlsplit(url)
    shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    try:
        asyncio.run(ping(url))
    except ERRORS + (ValueError,) as exc:
        raise ValueError(f"redis at {shown} does not answer ({describe(exc)})") from None
