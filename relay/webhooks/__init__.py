"""Signed webhooks when an upload ends: a durable outbox, and a deliverer that retries with backoff.

- endpoints.py: where webhooks go (`--webhook`, `--webhook-secret`, `[[webhooks]]`), checked at start-up.
- signer.py: Standard Webhooks signatures.
- base.py: the `OutboxStore` interface and the `Delivery` record.
- outbox.py: one JSON file per delivery under `<spool>/webhooks/`, written atomically and fsynced.
- redis_outbox.py: with `--redis`, one outbox in Redis for every relay, each delivery claimed by one relay.
- deliverer.py: terminal events from the bus into the outbox; attempts, backoff, metrics.

With `--redis`, the deliverer follows only the endings this relay saw (its own uploads, and those its sweeper
ended `relay_lost`), not every relay's events: each ending is added once, by the relay that holds its full
record, and the derived delivery id (relay/webhooks/base.py) makes a second add of it a no-op anyway.

`check_webhooks(settings)` before the server starts (relay/cli.py: a bad `RELAY_WEBHOOK_BACKOFF`, or an outbox
with nowhere to live, is one line and exit 2, never a failed app start-up); `start_webhooks(ctx)` at the app's
start-up and `stop_webhooks(ctx)` at shutdown; `webhook_deliveries(ctx)` is what `GET /_relay/webhooks` answers.
Nothing here waits on an upload's path: the deliverer follows the bus (as the bus hands it an ending, it only
keeps a reference to the upload's record: deliverer.py Rule 5).
The deliverer (and with it httpx, which loads rich and pygments for its command line) is imported only by a relay
with webhooks configured: 5 MiB of an idle relay's RSS otherwise (benchmarks/prototypes/rss_idle.py).

The retry schedule is the contract's (5 s, 30 s, 2 min, 10 min, 30 min, 1 h). `RELAY_WEBHOOK_BACKOFF`
(comma-separated seconds, e.g. `0.2,0.5,1`) replaces it, for tests and for operators who need another one; it
is deliberately not a flag.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relay.bus import Subscription
from relay.webhooks.base import BACKOFF, OutboxStore
from relay.webhooks.endpoints import EVENT_TYPES, WebhookEndpoint, webhook_endpoints
from relay.webhooks.outbox import Outbox

if TYPE_CHECKING:
    from relay.proxy_context import RelayContext
    from relay.settings import Settings
    from relay.uploads import UploadRecord
    from relay.webhooks.deliverer import Deliverer

__all__ = [
    "EVENT_TYPES",
    "WebhookEndpoint",
    "backoff_schedule",
    "check_webhooks",
    "outbox_directory",
    "start_webhooks",
    "stop_webhooks",
    "webhook_deliveries",
    "webhook_endpoints",
]

BACKOFF_ENV = "RELAY_WEBHOOK_BACKOFF"
# The running deliverer of each app (keyed by its context): the admin route finds it here.
_running: dict[int, Deliverer] = {}


def backoff_schedule(environ: Mapping[str, str] = os.environ) -> tuple[float, ...]:
    """The retry delays: the contract's, unless RELAY_WEBHOOK_BACKOFF names others."""
    text = environ.get(BACKOFF_ENV, "").strip()
    if not text:
        return BACKOFF
    try:
        delays = tuple(float(item) for item in text.split(","))
    except ValueError:
        raise ValueError(f"{BACKOFF_ENV} must be comma-separated seconds, not {text!r}") from None
    if any(not math.isfinite(delay) or delay < 0 for delay in delays):  # nan passes `< 0`
        raise ValueError(f"{BACKOFF_ENV} must hold finite, non-negative delays, not {text!r}")
    return delays


def outbox_directory(spool: str) -> Path:
    """`<spool>/webhooks/`: the outbox lives beside the resumable uploads' bytes, on the relay's own disk."""
    if spool.startswith("s3://"):
        raise ValueError(
            "webhooks keep their outbox in Redis or in a --spool directory, not in S3: with an s3:// --spool, "
            "use --redis or a directory --spool"
        )
    return Path(spool) / "webhooks"


def check_webhooks(settings: Settings) -> None:
    """Raise ValueError (one line) when the configured webhooks could not start: a bad RELAY_WEBHOOK_BACKOFF,
    or an s3:// spool without --redis (the file outbox needs a directory). A no-op without webhooks."""
    if not settings.webhooks:
        return
    backoff_schedule()
    if settings.redis is None:
        outbox_directory(settings.spool)


async def start_webhooks(ctx: RelayContext) -> None:
    """Open the outbox (pending deliveries of an earlier run included) and start delivering; a no-op without
    configured webhooks."""
    endpoints = ctx.settings.webhooks
    if not endpoints or id(ctx) in _running:
        return
    from relay.webhooks.deliverer import Deliverer, WebhookMetrics  # httpx: only when webhooks are configured

    outbox, follow, lookup = _shared_outbox(ctx) or _file_outbox(ctx)
    await outbox.open()

    deliverer = Deliverer(
        outbox=outbox,
        endpoints=endpoints,
        follow=follow,
        leave=ctx.bus.unsubscribe,
        record=lookup,
        metrics=WebhookMetrics(ctx.metrics.registry, outbox),
        backoff=backoff_schedule(),
    )
    deliverer.start()
    _running[id(ctx)] = deliverer


_Choice = tuple[OutboxStore, Callable[[], Subscription], Callable[[str], "UploadRecord | None"]]


def _file_outbox(ctx: RelayContext) -> _Choice:
    return Outbox(outbox_directory(ctx.settings.spool)), lambda: ctx.bus.subscribe(None), ctx.registry.get


def _shared_outbox(ctx: RelayContext) -> _Choice | None:
    """With --redis: the outbox in Redis, fed by this relay's own endings only (see the module docstring)."""
    if ctx.settings.redis is None or ctx.state is None:
        return None
    from relay.state.redis import RedisState  # only with --redis: plain relays never load redis-py
    from relay.webhooks.redis_outbox import RedisOutbox

    state = ctx.state
    if not isinstance(state, RedisState):
        return None
    return RedisOutbox(state.client, state.keys, state.link, state.relay_id), state.bus.subscribe_own, state.record


async def stop_webhooks(ctx: RelayContext) -> None:
    """Queue what the bus still holds, stop sending (attempts in flight stay pending for the next start)."""
    deliverer = _running.pop(id(ctx), None)
    if deliverer is not None:
        await deliverer.stop()


def webhook_deliveries(ctx: RelayContext, limit: int = 100) -> dict[str, Any]:
    """`GET /_relay/webhooks`: recent deliveries, newest first."""
    deliverer = _running.get(id(ctx))
    recent = deliverer.outbox.recent(limit) if deliverer is not None else []
    return {"webhooks": [delivery.describe() for delivery in recent]}
