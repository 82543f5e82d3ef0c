"""The proxy's side of the zero-copy path: whether an upload's body may be spliced, and its counts when it is.

Theory of operation
-------------------
relay/proxy.py hands the upstream leg one body iterator. For a body relay/core/splicing.py lets through (and only
on the relay's own uvicorn glue, which offers `relay.take_body`), `outgoing` wraps it in a `SplicedBody`
(relay/zerocopy.py): the leg may then splice the client's socket to the upstream's, or iterate as usual. The
spliced bytes never pass the proxy's body generator, so what that generator does per chunk happens here per
splice instead: the inspector counts them (`UploadInspector.count`: limits, progress events), --client-min-rate is
checked, the byte counters are fed. A hashed body (the default sha256) is hashed by a thread from a tee'd copy
(relay/pipehash.py) into the inspector's own hash object, so `finish()` reports it as on the copying path.

The proxy's Upload is seen through `SplicedUpload`, the few attributes this needs.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from relay.core.digests import DigestChecker
from relay.core.events import Event
from relay.core.inspector import Hash, UploadInspector
from relay.core.splicing import may_splice
from relay.hashing import direct_hash
from relay.settings import Settings
from relay.zerocopy import SplicedBody, splice_supported, tee_supported

__all__ = ["SPLICE", "SPLICED_BYTES", "TAKE_BODY", "TEE", "SplicedUpload", "outgoing"]

# scope["extensions"] key set by the server glue (relay/protocol.py): take(scope) -> ClientSocket | None hands the
# client socket over for the spliced body of the request `scope` (relay/zerocopy.py); None for any other scope.
TAKE_BODY = "relay.take_body"
SPLICED_BYTES = "relay.spliced_bytes"  # scope["extensions"] key: the body bytes that were spliced, not received
SPLICE = splice_supported()
TEE = tee_supported()  # a hashed body may be spliced too (relay/pipehash.py)


class SplicedUpload(Protocol):
    """What of relay/proxy.py's Upload the splice needs."""

    scope: Any
    inspector: UploadInspector | None
    digests: DigestChecker | None
    content_length: int | None
    body_hash: Hash | None
    body_done: bool
    unreported_received: int

    @property
    def settings(self) -> Settings: ...

    def emit_all(self, events: list[Event]) -> None: ...

    def check_rate(self) -> None: ...

    def note_forwarded(self, size: int) -> None: ...

    def report_bytes(self) -> None: ...


def outgoing(upload: SplicedUpload, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`body`, or the same wrapped so the upstream leg may splice it."""
    inspector = upload.inspector
    assert inspector is not None
    take = upload.scope.get("extensions", {}).get(TAKE_BODY)
    if not SPLICE or take is None:
        return body
    if not may_splice(
        content_length=upload.content_length,
        digest=upload.settings.digest,
        multipart=inspector.is_multipart,
        digest_fields=upload.digests is not None,
        tee=TEE and upload.body_hash is not None,
    ):
        return body
    assert upload.content_length is not None
    body_hash = upload.body_hash
    return SplicedBody(
        body,
        digest=(lambda: direct_hash(body_hash)) if body_hash is not None else None,
        take=lambda: take(upload.scope),
        length=upload.content_length,
        client_idle=upload.settings.client_idle_timeout,
        on_received=lambda size: _received(upload, inspector, size),
        on_forwarded=upload.note_forwarded,
        on_end=lambda whole: _ended(upload, inspector, whole),
    )


def _received(upload: SplicedUpload, inspector: UploadInspector, size: int) -> None:
    """Bytes the kernel moved from the client: counted, limited and reported as a chunk of them would be."""
    upload.unreported_received += size
    upload.emit_all(inspector.count(size, time.time()))
    upload.check_rate()


def _ended(upload: SplicedUpload, inspector: UploadInspector, whole: bool) -> None:
    if whole:
        upload.body_done = True
        upload.emit_all(inspector.finish(time.time()))  # the hash thread is done: the sha256 is the body's
    upload.report_bytes()
    # The access log counts the bytes `receive()` returned, and a spliced body never passes there.
    upload.scope.setdefault("extensions", {})[SPLICED_BYTES] = inspector.bytes_received
