"""Resumable uploads (tus 1.0.0 and the IETF draft): the glue around relay.core.resumable.

- store.py: every upload's state, one writer each, recovery after a restart, expiry.
- endpoints.py: the requests: creation on routed paths, HEAD/PATCH/DELETE/OPTIONS under the prefix.
- appends.py: an append into the spool, the completing one forwarded as it arrives (cut-through), retries.
- live.py: one append's bytes from the client into the spool.
- forward.py: the finished file upstream, along a plain upload's path (and cut-through).
- answers.py: the request as the handlers see it, and how answers are written.
`open_resumable` builds them at start-up, on the spool the settings name.
"""

from __future__ import annotations

import asyncio

from relay.proxy import RelayContext
from relay.resumable.endpoints import ResumableEndpoints
from relay.resumable.store import ResumableStore
from relay.settings import Settings
from relay.spool.base import Spool

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


async def open_resumable(ctx: RelayContext) -> ResumableEndpoints:
    """The store (recovered from the spool, its sweeper running) and the endpoints on it."""
    endpoints: list[ResumableEndpoints] = []
    spool = open_spool(ctx.settings.spool, s3_endpoint=ctx.settings.s3_endpoint)
    store = ResumableStore(spool, on_change=lambda upload: endpoints[0].note(upload))
    endpoints.append(ResumableEndpoints(ctx, store))
    await store.start()
    return endpoints[0]
