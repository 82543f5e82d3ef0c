"""tus concatenation, the glue: the final POST, which creates the final upload and forwards it at once.

The protocol decisions (parsing `Upload-Concat`, which partial uploads a final upload may take, its length,
403 on a PATCH of a final upload) are relay/core/concat.py's, with its theory of operation. Here:

1. Each partial upload the final POST names is taken as a PATCH would take it (`store.begin(..., take=True)`:
   an append still open on it ends first; with `--redis` its lease, so a partial upload written on another
   relay is seen as Redis holds it, and its bytes are read from the shared spool), then the core decides.
2. The final upload is created (`receiving`, every byte in: it is counted and recorded like any creation),
   its partial uploads are claimed (saved with `final` set), their leases given back, and the upload goes
   `forwarding` and upstream along the ordinary completion path (relay/resumable/completion.py `forward`),
   whose body reads the partial uploads' spooled bytes one after the other (forward.py `FileBody` sources).
   The final POST is answered when the upstream has answered, as a completing append is.
3. What becomes of the partial uploads when the final upload ends (delivered, terminated, expired) is the
   store's (relay/resumable/store.py `save`: they are deleted, bytes and records).
4. Two final POSTs naming one partial upload: the second is refused (400), never a second file. Across relays
   the partial uploads' leases keep them apart until the claims are committed; on one relay without Redis
   the claims are recorded in memory right after the decision, with no await in between.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from relay.core import concat as core_concat
from relay.core.concat import Concat
from relay.core.resumable import ResumableUpload
from relay.resumable.answers import Request, respond
from relay.resumable.unavailable import StateUnavailable

if TYPE_CHECKING:
    from relay.resumable.endpoints import ResumableEndpoints

__all__ = ["FinalUploads"]


class FinalUploads:
    """The final POST of tus concatenation, on the endpoints' store and forwarding path."""

    def __init__(self, endpoints: ResumableEndpoints) -> None:
        self._endpoints = endpoints

    async def create(self, request: Request, upload_id: str, concat: Concat, target: bytes) -> None:
        """Decide, create, claim the partial uploads, forward (see the module docstring)."""
        endpoints = self._endpoints
        store = endpoints.store
        leases: list[tuple[str, int | None]] = []
        try:
            for part_id in concat.ids:  # Rule 1 of the store: no append open on it any more, anywhere
                leases.append((part_id, await store.begin(part_id, take=True)))
            # Read after the last await (Rule 4): while a later one settled, an append may have begun on an earlier
            # one; seen `appending` it is refused (not finished) rather than claimed under that append's feet.
            partials: list[ResumableUpload | None] = [store.get(part_id) for part_id in concat.ids]
            decision = core_concat.decide_final(
                request.req,
                concat,
                partials,
                upload_id=upload_id,
                route=request.route.prefix,
                target=target,
                now=time.time(),
                limits=request.route.limits,
                settings=endpoints.core,
            )
            final = decision.upload
            if final is None:  # refused: `respond` counts it
                await respond(
                    request, replace(decision, headers=(*decision.headers, (b"X-Upload-ID", upload_id.encode())))
                )
                return
            claimed = [core_concat.claim(partial, final) for partial in partials if partial is not None]
            if store.shared is None:  # Rule 4: claimed in memory at once, before any await (the leases do it
                for partial in claimed:  # across relays): a final POST racing this one is refused, not doubled
                    store.record(partial)
            created = False

            async def claim() -> None:  # the final upload exists: its partial uploads are its own now
                nonlocal created
                created = True
                for partial in claimed:
                    await store.save(partial)
                while leases:
                    part_id, lease = leases.pop()
                    await store.let_go(part_id, lease)

            try:
                await endpoints.created(request, decision, upload_id, before_act=claim)
            finally:
                if not created and store.shared is None:  # refused (id in use, cap, spool): the claims go back
                    for before in partials:
                        if before is not None:
                            store.record(before)
        except StateUnavailable as exc:
            if not request.answered:
                await endpoints.refuse(request, exc, upload_id=upload_id)
        finally:
            for part_id, lease in leases:
                await store.let_go(part_id, lease)
            await store.let_go(upload_id, request.lease)
