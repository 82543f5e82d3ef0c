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

from relay.proxy import RelayContext
from relay.resumable.endpoints import ResumableEndpoints
from relay.resumable.store import ResumableStore
from relay.spool.base import Spool

__all__ = ["ResumableEndpoints", "ResumableStore", "open_resumable"]


def open_spool(location: str) -> Spool:
    """The spool `--spool` names: a directory (S3-compatible storage comes with the scale-out work)."""
    if location.startswith("s3://"):
        raise ValueError("--spool s3://... is not supported yet; give a directory")
    from relay.spool.disk import DiskSpool

    return DiskSpool(location)


async def open_resumable(ctx: RelayContext) -> ResumableEndpoints:
    """The store (recovered from the spool, its sweeper running) and the endpoints on it."""
    endpoints: list[ResumableEndpoints] = []
    store = ResumableStore(open_spool(ctx.settings.spool), on_change=lambda upload: endpoints[0].note(upload))
    endpoints.append(ResumableEndpoints(ctx, store))
    await store.start()
    return endpoints[0]
