"""Resumable uploads (tus 1.0.0 and the IETF draft): the glue around relay.core.resumable.

- store.py: every upload's state, one writer each, recovery after a restart, expiry.
- endpoints.py: the requests: creation on routed paths, HEAD/PATCH/DELETE/OPTIONS under the prefix.
- admission.py: each request parsed and admitted (token, CORS, the caps) before the handlers see it.
- appends.py: an append into the spool, ended as its decision says (the completing one by completion.py).
- completion.py: the completing append forwarded as it arrives (cut-through), or the whole file from the spool.
- live.py: one append's bytes from the client into the spool.
- forward.py: the finished file upstream, along a plain upload's path (and cut-through).
- answers.py: the request as the handlers see it, and how answers are written.
- shared.py: with `--redis`, the state documents, leases and fencing tokens every relay shares.
- concat.py: tus concatenation's final POST (partial uploads joined, forwarded as one file; relay/core/concat.py).
`open_resumable` builds them at start-up, on the spool the settings name, sharing the state through Redis when the
relay runs with `--redis` (the one choice; without it, everything stays in this process as before).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from relay.proxy_context import RelayContext
from relay.resumable.endpoints import ResumableEndpoints
from relay.resumable.store import ResumableStore
from relay.settings import Settings
from relay.spool.base import Spool

if TYPE_CHECKING:
    from relay.resumable.shared import RedisUploads  # imported only with --redis (relay/resumable/unavailable.py)

__all__ = ["ResumableEndpoints", "ResumableStore", "check_spool", "open_resumable", "open_spool"]


def open_spool(location: str, *, s3_endpoint: str | None = None) -> Spool:
    """The spool `--spool` names: a directory, or s3://BUCKET/PREFIX on S3-compatible storage (`--s3-endpoint`)."""
    if location.startswith("s3://"):
        from relay.spool.s3 import S3Spool

        return S3Spool.from_url(location, endpoint=s3_endpoint)
    from relay.spool.disk import DiskSpool

    return DiskSpool(location)


def check_spool(settings: Settings) -> None:
    """At start-up, before serving: an S3 spool must answer and its bucket exist (a one-line ValueError if not)."""
    if not settings.spool.startswith("s3://") or not any(route.resumable for route in settings.routes):
        return
    from relay.spool.s3 import S3Spool

    async def check() -> None:
        spool = S3Spool.from_url(settings.spool, endpoint=settings.s3_endpoint)
        try:
            await spool.connect()
        finally:
            await spool.close()

    asyncio.run(check())


def _shared(ctx: RelayContext, on_lost: Callable[[str], None]) -> RedisUploads | None:
    """With --redis, the Redis side of the uploads' state, on the shared state's client, prefix and relay id."""
    if ctx.settings.redis is None:
        return None
    from relay.resumable.shared import RedisUploads
    from relay.state.redis import RedisState

    state = ctx.shared
    if not isinstance(state, RedisState):  # a bus or registry given explicitly (tests, embedding): this process
        return None
    return RedisUploads(state.client, state.keys.prefix, state.relay_id, on_lost=on_lost)


async def open_resumable(ctx: RelayContext) -> ResumableEndpoints:
    """The store (recovered from the spool, or sharing Redis; its sweeper running) and the endpoints on it."""
    endpoints: list[ResumableEndpoints] = []
    stores: list[ResumableStore] = []
    spool = open_spool(ctx.settings.spool, s3_endpoint=ctx.settings.s3_endpoint)
    shared = _shared(ctx, lambda upload_id: stores[0].lost(upload_id))
    store = ResumableStore(spool, on_change=lambda upload: endpoints[0].note(upload), shared=shared)
    stores.append(store)
    endpoints.append(ResumableEndpoints(ctx, store))
    await store.start()
    return endpoints[0]
